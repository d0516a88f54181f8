"""The output kinds of patch models, one object each (``base.OutputKind``), by name.

A new kind: a file here defining ``KIND``, and its line below.
"""

from __future__ import annotations

from transforms.core.errors import ConfigError
from transforms.models.kinds import classification, embedding, segmentation
from transforms.models.kinds.base import OutputKind

KINDS: dict[str, OutputKind] = {
    k.name: k for k in (classification.KIND, embedding.KIND, segmentation.KIND)
}
OUTPUT_KINDS = tuple(KINDS)


def kind(name: str) -> OutputKind:
    """The output kind called ``name``; ``ConfigError`` naming ``output_kind`` otherwise."""
    if name not in KINDS:
        raise ConfigError(f"`output_kind`: one of {', '.join(OUTPUT_KINDS)}, got {name!r}")
    return KINDS[name]
