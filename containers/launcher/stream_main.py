"""Flex Template entry point of the slide stream (FLEX_TEMPLATE_PYTHON_PY_FILE)."""

from pipelines.slide_stream import main

if __name__ == "__main__":
    main()
