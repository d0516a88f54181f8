"""Flex Template entry point of the text pipeline (FLEX_TEMPLATE_PYTHON_PY_FILE)."""

from pipelines.text_inference import main

if __name__ == "__main__":
    main()
