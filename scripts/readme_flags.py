"""Rewrite README's flag reference from the flag table: ``python scripts/readme_flags.py``.

A test (``test_readme_flag_reference_is_the_flag_table``) fails until it is run after a flag
changes; the Flex Template metadata is regenerated the same way (``python -m pipelines.flags``).
"""

from __future__ import annotations

from pathlib import Path

from pipelines.flags import markdown_reference

README = Path(__file__).resolve().parents[1] / "README.md"


def main() -> None:
    text = README.read_text()
    start = text.index("Every pipeline:\n")
    end = text.index("\n## ", start)  # the reference runs to the next section
    README.write_text(text[:start] + markdown_reference() + text[end:])


if __name__ == "__main__":
    main()
