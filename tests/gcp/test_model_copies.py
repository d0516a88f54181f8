"""Model copies from gs:// through a stalling server: each request times out and is retried,
and a copy that always hangs fails the job at setup, naming the model, in bounded time."""

from __future__ import annotations

import time
from pathlib import Path

import gcsfs
import pytest

from localgcp.fault_proxy import FaultProxy, is_object_read
from tests.gcp import route_gcs_through
from transforms.models.local_copy import local_copy, local_folder

pytestmark = [pytest.mark.pipeline, pytest.mark.gcp]

BUCKET = "gs://models-bucket"


@pytest.fixture(scope="module")
def gcs_models(local_gcp, tiny_models, tmp_path_factory) -> dict[str, str]:
    if local_gcp.storage().lookup_bucket("models-bucket") is None:
        local_gcp.storage().create_bucket("models-bucket")
    folder = tmp_path_factory.mktemp("hf_folder")
    (folder / "config.json").write_text('{"model_type": "bert"}')
    (folder / "weights.bin").write_bytes(bytes(range(256)) * 4096)  # 1 MiB
    return {
        "file": local_gcp.upload(Path(tiny_models["two"]), f"{BUCKET}/two.pt2"),
        "folder_config": local_gcp.upload(folder / "config.json", f"{BUCKET}/hf/config.json"),
        "folder_weights": local_gcp.upload(folder / "weights.bin", f"{BUCKET}/hf/weights.bin"),
        "local_folder": str(folder),
    }


def _first_read_of_each_object_stalls():
    seen: set[str] = set()

    def fault_on(method: str, path: str) -> bool:
        if not is_object_read(method, path):
            return False
        name = path.split("?")[0]
        first = name not in seen
        seen.add(name)
        return first

    return fault_on


def _through(proxy: FaultProxy, monkeypatch) -> None:
    """Route GCS through ``proxy``, with a 1 s request timeout."""
    monkeypatch.setenv("PATHBEAM_IO_TIMEOUT_S", "1")
    route_gcs_through(proxy, monkeypatch)


def test_stalled_model_copies_time_out_are_retried_and_arrive_whole(
    local_gcp, gcs_models, tiny_models, tmp_path, monkeypatch
):
    fault_on = _first_read_of_each_object_stalls()
    with FaultProxy(local_gcp.gcs_endpoint, fail_every=1, fault_on=fault_on, stall_s=30) as proxy:
        _through(proxy, monkeypatch)
        started = time.monotonic()
        copied = local_copy(gcs_models["file"], str(tmp_path / "cache"))
        folder = local_folder(f"{BUCKET}/hf", str(tmp_path / "cache"))
        elapsed = time.monotonic() - started
    gcsfs.GCSFileSystem.clear_instance_cache()
    assert proxy.faults["stall"] == 3  # the .pt2 and both files of the folder, once each
    assert Path(copied).read_bytes() == Path(tiny_models["two"]).read_bytes()
    source = Path(gcs_models["local_folder"])
    for name in ("config.json", "weights.bin"):
        assert (Path(folder) / name).read_bytes() == (source / name).read_bytes()
    assert elapsed < 60


def test_a_model_copy_that_always_hangs_fails_the_job_at_setup_naming_it(
    local_gcp, gcs_models, shared_data, tmp_path, monkeypatch
):
    from pipelines.slide_inference import run

    slides = tmp_path / "slides.csv"
    cmu1 = shared_data / "aperio_cmu1_small_region" / "CMU-1-Small-Region.svs"
    slides.write_text(f"slide_id,uri\ncmu1,{cmu1}\n")

    def model_reads(method: str, path: str) -> bool:
        return is_object_read(method, path) and "two.pt2" in path

    with FaultProxy(
        local_gcp.gcs_endpoint, fail_every=1, fault_on=model_reads, stall_s=60
    ) as proxy:
        _through(proxy, monkeypatch)
        started = time.monotonic()
        with pytest.raises(Exception) as failure:
            run(
                ["--slides", str(slides), "--model", f"two={gcs_models['file']}"]
                + ["--patch_px", "64", "--output", str(tmp_path / "out"), "--no_heatmaps"]
            )
        elapsed = time.monotonic() - started
    gcsfs.GCSFileSystem.clear_instance_cache()
    message = str(failure.value)
    assert "'two'" in message and gcs_models["file"] in message, message
    assert "RemoteIOError" in message and "on all 3 attempts" in message, message
    assert proxy.faults["stall"] >= 3  # every attempt of the copy was tried, and timed out
    assert elapsed < 120
    assert not list((tmp_path / "out").glob("patch_predictions/*.parquet"))


def test_onnx_and_hugging_face_models_load_from_gcs(local_gcp, shared_data, tmp_path):
    """The real ONNX graph with its external weights file, and a save_pretrained ViT folder,
    loaded from gs://, give the outputs of the same models loaded from local files; their
    weights' sha256 is the same from either place."""
    import numpy as np

    from tests.models_for_tests import tiny_vision_folder
    from transforms.io.runs import weights_sha256
    from transforms.models.loading import load_model, predict
    from transforms.models.spec import ModelSpec

    if local_gcp.storage().lookup_bucket("models-bucket") is None:
        local_gcp.storage().create_bucket("models-bucket")
    onnx = shared_data.parent / "models" / "lavlab_shell_0.9.1_v1" / "model_v1.onnx"
    if not onnx.exists():
        pytest.skip(f"{onnx} is absent")
    remote_onnx = local_gcp.upload(onnx, f"{BUCKET}/shell/model_v1.onnx")
    local_gcp.upload(Path(f"{onnx}.data"), f"{BUCKET}/shell/model_v1.onnx.data")
    vit = Path(tiny_vision_folder(str(tmp_path / "vit")))
    for file in vit.iterdir():
        local_gcp.upload(file, f"{BUCKET}/vit/{file.name}")
    cases = [
        ("seg", str(onnx), remote_onnx, "segmentation", 320),
        ("enc", str(vit), f"{BUCKET}/vit", "embedding", 64),
    ]
    rng = np.random.default_rng(0)
    for name, here, there, kind, px in cases:
        patches = list(rng.integers(0, 256, (2, px, px, 3), dtype=np.uint8))
        local = ModelSpec(name, here, output_kind=kind)
        remote = ModelSpec(name, there, output_kind=kind)
        a = np.stack([np.asarray(r) for r in predict(load_model(local), patches, local)])
        b = np.stack([np.asarray(r) for r in predict(load_model(remote), patches, remote)])
        np.testing.assert_array_equal(a, b)
        assert weights_sha256(here) == weights_sha256(there)
