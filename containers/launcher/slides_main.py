"""Flex Template entry point of the slide pipeline (FLEX_TEMPLATE_PYTHON_PY_FILE)."""

from pipelines.slide_inference import main

if __name__ == "__main__":
    main()
