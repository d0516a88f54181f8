"""What a document file's rows must hold (``io.manifests.RowRule``), for the text pipeline."""

from __future__ import annotations

from typing import Any

from transforms.core.errors import ManifestError
from transforms.io.manifests import RowRule, extra_columns, text_cell

MAX_DOC_CHARS = 5_000_000
"""Documents longer than this are dead letters, not windows: 5 M characters is ~1,500 pages."""


def document_row(row: dict[str, Any], manifest_uri: str = "") -> dict[str, Any]:
    """A clean document row: ``doc_id, text, metadata, row``; raise ``ManifestError``."""
    doc_id = text_cell(row, "doc_id")
    text = row.get("text")
    if not isinstance(text, str):
        raise ManifestError(f"row {row.get('_row')}: column 'text' is missing or not a string")
    if not text.strip():
        raise ManifestError(f"row {row.get('_row')}: column 'text' is empty or only whitespace")
    if len(text) > MAX_DOC_CHARS:
        raise ManifestError(
            f"row {row.get('_row')}: text has {len(text):,} characters, over the "
            f"{MAX_DOC_CHARS:,} limit; split the document"
        )
    return {
        "doc_id": doc_id,
        "text": text,
        "metadata": extra_columns(row, ("doc_id", "text")),
        "row": row["_row"],
    }


DOCUMENT_ROWS = RowRule("documents", "doc_id", ("doc_id", "text"), document_row)
