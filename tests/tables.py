"""Every table the product writes, by name, for the tests (each lives with its owner: the output
kinds in ``transforms/models/kinds``, the text tasks in ``transforms/text/tasks.py``, the rest
in ``transforms/io/schemas.py``)."""

from __future__ import annotations

from transforms.io.schemas import BASE_TABLES
from transforms.models.kinds import KINDS
from transforms.text.tasks import TASKS

PATCH_PREDICTIONS = KINDS["classification"].table
PATCH_EMBEDDINGS = KINDS["embedding"].table
PATCH_SEGMENTATIONS = KINDS["segmentation"].table
SLIDE_EMBEDDINGS = KINDS["embedding"].slide_table
TEXT_ENTITIES = TASKS["token-classification"].table
TEXT_LABELS = TASKS["text-classification"].table
TEXT_EMBEDDINGS = TASKS["embedding"].table
ALL_TABLES = (
    *(k.table for k in KINDS.values()),
    *(k.slide_table for k in KINDS.values() if k.slide_table is not None),
    *(t.table for t in TASKS.values()),
    *BASE_TABLES,
)
