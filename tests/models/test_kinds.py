"""Every registered output kind keeps the contract the pipeline relies on: raw outputs of its
shape become one result per patch, a result becomes exactly its table's columns, the guard
passes a result against itself, and what it hands to summaries and QuPath fits its classes."""

from __future__ import annotations

import numpy as np
import pytest

from transforms.core.guard import GuardResult, merge, per_model
from transforms.io.schemas import RUN_COLUMNS
from transforms.models.kinds import KINDS, kind
from transforms.models.kinds.base import PATCH_BOX
from transforms.models.precision import GuardConfig
from transforms.models.spec import ModelSpec

N, C = 3, 4
RAW = {
    "classification": {"logits": np.random.default_rng(0).normal(size=(N, C))},
    "embedding": {"output": np.random.default_rng(1).normal(size=(N, 8))},
    "segmentation": {"logits": np.random.default_rng(2).normal(size=(N, C, 8, 8))},
}


@pytest.mark.parametrize("name", sorted(KINDS))
def test_each_kind_turns_raw_outputs_into_exactly_its_table_s_columns(name):
    out_kind = kind(name)
    assert name in RAW, f"give the new kind {name!r} a raw output here"
    spec = ModelSpec("m", "m.pt2", output_kind=name)
    results = out_kind.results(RAW[name], spec, N, None)
    assert len(results) == N
    box = {c.name for c in PATCH_BOX} | {c.name for c in RUN_COLUMNS}
    columns = {c.name for c in out_kind.table.columns}
    for result in results:
        assert set(out_kind.row(result)) == columns - box
    figures = out_kind.compare(results, results, GuardConfig())
    assert figures.passed
    row = out_kind.row(results[0])
    if out_kind.has_classes:
        assert out_kind.class_count(results[0]) == C == len(out_kind.slide_values(row))
        if out_kind.exports_qupath:  # detections; a class map's regions come from its mask
            assert len(out_kind.qupath_values(row)) == C
    else:
        assert out_kind.class_count(results[0]) is None and out_kind.qupath_values(row) is None
    assert out_kind.output and out_kind.help and out_kind.hf_auto_class


@pytest.mark.parametrize("name", sorted(KINDS))
def test_a_wrong_shape_names_the_model_and_the_kind(name):
    spec = ModelSpec("m", "m.pt2", output_kind=name)
    with pytest.raises(ValueError, match=rf"model 'm' \({name}\) returned"):
        kind(name).results({"logits": np.zeros((N + 1,))}, spec, N, None)


def test_an_unknown_kind_is_a_config_error_naming_the_field():
    from transforms.core.errors import ConfigError

    with pytest.raises(ConfigError, match="`output_kind`: one of classification"):
        kind("detection")


def test_guard_figures_merge_per_model_counts_add_and_the_worst_wins():
    a = GuardResult("bf16", 8, "m", 1.0, 0.01, None, True, 1.8)
    b = GuardResult("bf16", 24, "m", 0.875, 0.03, None, False, 1.2, kept=False)
    merged = merge(a, b)
    assert (merged.n, merged.agreement, merged.max_prob_diff) == (32, 0.90625, 0.03)
    assert not merged.passed and not merged.kept and merged.speedup == 1.2
    other = GuardResult("fp16", 4, "e", min_cosine=0.9999)
    rows = [r.__dict__ for r in (a, other, b)]
    assert [(g.model, g.n) for g in per_model(rows)] == [("e", 4), ("m", 32)]
