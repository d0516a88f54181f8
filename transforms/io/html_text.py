"""Text into HTML, escaped: the one rule the report and its parts share."""

from __future__ import annotations

import html
from typing import Any

from transforms.core.errors import printable


def e(value: Any) -> str:
    """``value`` as escaped HTML text (None: an en dash)."""
    return "–" if value is None else html.escape(printable(str(value)), quote=True)
