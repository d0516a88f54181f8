"""Embedding, segmentation and ONNX models through the pipeline: rows equal a direct call of the
same model on the same pixels, whatever the batch size; tables, summaries and pictures per kind;
the accounting (patches planned = rows + dead letters) for every kind."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import tiffslide
import torch

from tests.models_for_tests import (
    SpatialOutput,
    TinyEncoder,
    export_onnx,
    export_pt2,
    tiny_net,
    tiny_vision_folder,
)
from tests.pixels import padded_patch
from transforms.models.spec import IMAGENET_MEAN, IMAGENET_STD

pytestmark = pytest.mark.pipeline


def run_cli(tmp_path, cmu1, *models: str, extra: tuple[str, ...] = ()):  # noqa: ANN001
    """The slide CLI over CMU-1 with ``--model``-style args ``models``; the output folder."""
    from pipelines.report import counters
    from pipelines.slide_inference import run

    tmp_path.mkdir(parents=True, exist_ok=True)
    manifest = tmp_path / "slides.csv"
    manifest.write_text(f"slide_id,uri\ncmu1,{cmu1}\n")
    out = tmp_path / "out"
    result = run(
        ["--slides", str(manifest), *models, "--patch_px", "64", "--patch_mpp", "0.5"]
        + ["--output", str(out), "--artifacts", str(tmp_path / "art"), *extra]
    )
    return out, counters(result)


def pixels_of(cmu1, rows: pd.DataFrame) -> np.ndarray:  # noqa: ANN001
    """The pixels of each row's patch, read directly (the slide is 0.499 µm/px: no resize)."""
    slide = tiffslide.TiffSlide(str(cmu1))
    return np.stack(
        [padded_patch(slide, int(r.x_px), int(r.y_px), int(r.size_px)) for r in rows.itertuples()]
    )[..., :3]


def normalised(pixels: np.ndarray, mean, std) -> torch.Tensor:  # noqa: ANN001
    x = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


@pytest.mark.parametrize(
    "kind, key, batch", [("vit", "auto", 1), ("vit", "cls", 7), ("dinov2", "mean", 32)]
)
def test_hugging_face_embeddings_equal_a_direct_encoder_call(
    kind, key, batch, cmu1, tmp_path, capsys
):
    import transformers

    folder = tiny_vision_folder(str(tmp_path / kind), kind)
    out, counted = run_cli(
        tmp_path,
        cmu1,
        "--model",
        f"enc={folder}",
        "--model_output",
        "enc=embedding",
        "--embedding_key",
        f"enc={key}",
        extra=("--batch_size", str(batch)),
    )
    rows = pd.read_parquet(out / "patch_embeddings").sort_values(["y_px", "x_px"])
    assert len(rows) == counted["patches_planned"] > 100
    encoder = transformers.AutoModel.from_pretrained(folder).eval()
    with torch.inference_mode():
        # Normalised by the folder's image-processor config (0.5, 0.5), not ImageNet's.
        result = encoder(pixel_values=normalised(pixels_of(cmu1, rows), [0.5] * 3, [0.5] * 3))
    hidden = result.last_hidden_state
    direct = {
        "auto": result.pooler_output if result.pooler_output is not None else hidden[:, 0],
        "cls": hidden[:, 0],
        "mean": hidden.mean(dim=1),
    }[key].numpy()
    got = np.stack(rows.embedding.to_numpy())
    assert got.dtype == np.float32 and got.shape == (len(rows), 32)
    np.testing.assert_allclose(got, direct, atol=1e-5, rtol=0)

    # One slide_embeddings row: the mean of the patch embeddings, and their count.
    slide = pd.read_parquet(out / "slide_embeddings").iloc[0]
    assert slide.patch_count == len(rows)
    # (summed in float64, as the pipeline sums: a float32 mean drifts by 1e-6 over 600 patches)
    np.testing.assert_allclose(slide.embedding, got.astype(np.float64).mean(axis=0), atol=1e-6)
    summary = pd.read_parquet(out / "slide_summaries").iloc[0]
    assert summary.patch_count == len(rows) and list(summary.class_mean_prob) == []
    assert pd.isna(summary.heatmap_uri)  # an embedding has no picture
    assert not (out / "patch_predictions").exists()
    # ... and no QuPath detections: the summary names no folder that was not written.
    assert "QuPath" not in capsys.readouterr().out and not (tmp_path / "art" / "qupath").exists()


def test_a_pt2_encoder_and_an_onnx_classifier_run_beside_a_classifier(cmu1, tmp_path):
    """Three models over one patch stream: a .pt2 encoder, a fixed-batch ONNX classifier and the
    same classifier as .pt2; each model's rows equal a direct call on the same pixels."""
    import onnxruntime as ort

    torch.manual_seed(3)
    encoder = TinyEncoder().eval()
    encoder_uri = export_pt2(encoder, str(tmp_path / "enc.pt2"))
    net = tiny_net(2, seed=0)
    onnx_uri = export_onnx(net, str(tmp_path / "two.onnx"), fixed_batch=3)
    out, counted = run_cli(
        tmp_path,
        cmu1,
        *("--model", f"enc={encoder_uri}", "--model_output", "enc=embedding"),
        *(
            "--model",
            f"onnx={onnx_uri}",
            "--model",
            f"pt2={export_pt2(net, str(tmp_path / 'two.pt2'))}",
        ),
        *("--class_names", "onnx=stroma,tumour"),
        extra=("--batch_size", "8"),
    )
    embeddings = pd.read_parquet(out / "patch_embeddings").sort_values(["y_px", "x_px"])
    predictions = pd.read_parquet(out / "patch_predictions")
    pixels = pixels_of(cmu1, embeddings)
    with torch.inference_mode():
        direct = encoder(normalised(pixels, IMAGENET_MEAN, IMAGENET_STD)).numpy()
    np.testing.assert_allclose(np.stack(embeddings.embedding.to_numpy()), direct, atol=1e-5)

    session = ort.InferenceSession(onnx_uri)
    x = normalised(pixels, IMAGENET_MEAN, IMAGENET_STD).numpy()
    padded = np.concatenate([x, x[: (-len(x)) % 3]])  # the graph takes batches of exactly 3
    logits = np.concatenate(
        [session.run(None, {"image": padded[i : i + 3]})[0] for i in range(0, len(padded), 3)]
    )[: len(x)]
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    onnx_rows = predictions[predictions.model_name == "onnx"].sort_values(["y_px", "x_px"])
    np.testing.assert_allclose(
        np.stack(onnx_rows.probs.to_numpy()), e / e.sum(1, keepdims=True), atol=1e-5
    )
    pt2_rows = predictions[predictions.model_name == "pt2"].sort_values(["y_px", "x_px"])
    np.testing.assert_allclose(
        np.stack(onnx_rows.probs.to_numpy()), np.stack(pt2_rows.probs.to_numpy()), atol=1e-5
    )
    # Accounting per model: patches planned = rows, for each model and kind.
    n = counted["patches_planned"]
    assert len(embeddings) == len(onnx_rows) == len(pt2_rows) == n > 100
    assert counted["patches_inferred"] == 3 * n
    summaries = pd.read_parquet(out / "slide_summaries").set_index("model_name")
    assert "segmentations" not in str(summaries.loc["onnx"].heatmap_uri)
    assert "/heatmaps/" in summaries.loc["onnx"].heatmap_uri


def test_a_segmentation_model_writes_class_fractions_areas_and_a_class_map(cmu1, tmp_path):
    """A 1x1-conv segmentation net (N x 2 x H x W logits): per patch, the share of its pixels
    that are tissue (by the slide's tissue rule) of each class equals the argmax of a direct
    call; the class areas add up to the tissue area within the patches."""
    from PIL import Image

    from transforms.slides.geometry import PatchingConfig
    from transforms.slides.survey import survey_or_failure

    torch.manual_seed(1)
    net = SpatialOutput().eval()
    uri = export_pt2(net, str(tmp_path / "seg.pt2"))
    out, counted = run_cli(
        tmp_path,
        cmu1,
        *("--model", f"seg={uri}", "--model_output", "seg=segmentation"),
        *("--class_names", "seg=stroma,epithelium"),
    )
    rows = pd.read_parquet(out / "patch_segmentations").sort_values(["y_px", "x_px"])
    assert len(rows) == counted["patches_planned"] > 100
    pixels = pixels_of(cmu1, rows)
    with torch.inference_mode():
        logits = net(normalised(pixels, IMAGENET_MEAN, IMAGENET_STD))
    row = {"slide_id": "cmu1", "uri": str(cmu1), "mpp": None, "metadata": {}}
    survey = survey_or_failure(row, [PatchingConfig(patch_px=64)], grid=True)
    tissue = np.stack([survey.appearance.tissue.mask(p) for p in pixels])
    valid = np.zeros_like(tissue)  # the part of each patch inside the slide: what counts
    for i, r in enumerate(rows.itertuples()):
        valid[i, : r.valid_height_px, : r.valid_width_px] = True
    tissue, valid = (tissue & valid).reshape(len(rows), -1), valid.reshape(len(rows), -1)
    labels = logits.argmax(dim=1).flatten(1).numpy()
    share = np.stack([((labels == c) & tissue).sum(axis=1) for c in (0, 1)], axis=1)
    share = share / valid.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(np.stack(rows.class_fractions.to_numpy()), share, atol=1e-9)
    np.testing.assert_allclose(rows.tissue_fraction, tissue.sum(1) / valid.sum(1), atol=1e-9)
    counts = np.stack(rows.argmax_counts.to_numpy())
    assert (counts.sum(axis=1) == tissue.sum(axis=1)).all()
    assert (rows.label.to_numpy() == counts.argmax(axis=1)).all()

    summary = pd.read_parquet(out / "slide_summaries").iloc[0]
    tissue_in_patches = tissue.sum(axis=1) * (summary.slide_mpp / 1000) ** 2
    assert sum(summary.class_area_mm2) == pytest.approx(tissue_in_patches.sum(), rel=1e-6)
    assert summary.analysed_tissue_mm2 == pytest.approx(tissue_in_patches.sum(), rel=1e-6)
    assert all(a > 0 for a in summary.class_area_mm2)
    assert "/segmentations/" in summary.heatmap_uri
    picture = Image.open(summary.heatmap_uri)
    assert picture.width > 300 and picture.height > 300


def test_the_real_onnx_segmentation_model_on_cmu1(shared_data, cmu1, tmp_path):
    """The lavlab-shell epithelium/stroma net (ONNX, EHO input at 2 µm/px) through the CLI:
    its rows equal a direct onnxruntime call on the EHO of the same patches; epithelium and
    stroma are both found; the class areas add up to the tissue area within the patches."""
    import onnxruntime as ort

    from transforms.models.kinds.base import activate
    from transforms.slides.geometry import PatchingConfig
    from transforms.slides.read_patches import cut_patch
    from transforms.slides.stains import eho
    from transforms.slides.survey import survey_or_failure

    model = shared_data.parent / "models" / "lavlab_shell_0.9.1_v1" / "model_v1.onnx"
    if not model.exists():
        pytest.skip(f"{model} is absent")
    out, counted = run_cli(
        tmp_path,
        cmu1,
        *("--model", f"shell={model}", "--model_output", "shell=segmentation"),
        *("--model_activation", "shell=sigmoid", "--model_input", "shell=eho"),
        *("--class_names", "shell=lumen,epithelium,stroma"),
        extra=("--patch_px", "320", "--patch_mpp", "2", "--min_tissue", "0.05"),
    )
    rows = pd.read_parquet(out / "patch_segmentations").sort_values(["y_px", "x_px"])
    assert len(rows) == counted["patches_planned"] >= 2
    row = {"slide_id": "cmu1", "uri": str(cmu1), "mpp": None, "metadata": {}}
    cfg = PatchingConfig(patch_px=320, patch_mpp=2, stain_basis=True)
    appearance = survey_or_failure(row, [cfg], grid=True).appearance
    pixels = [cut_patch(p, 0, 0, p.shape[0], 320) for p in pixels_of(cmu1, rows)]
    x = np.stack([eho(p, appearance.stains) for p in pixels]).astype(np.float32) / 255
    session = ort.InferenceSession(str(model))
    logits = session.run(None, {"input": x.transpose(0, 3, 1, 2)})[0]
    labels = activate(logits, "sigmoid").argmax(axis=1)
    for i, got in enumerate(rows.itertuples()):
        valid = np.zeros((320, 320), bool)  # the part inside the slide, at the map's pixels
        valid[
            : int(np.ceil(got.valid_height_px * 320 / got.size_px)),
            : int(np.ceil(got.valid_width_px * 320 / got.size_px)),
        ] = True
        tissue = appearance.tissue.mask(pixels[i]) & valid
        direct = [((labels[i] == c) & tissue).sum() / valid.sum() for c in range(3)]
        assert list(got.class_fractions) == pytest.approx(direct, abs=1e-9)

    summary = pd.read_parquet(out / "slide_summaries").iloc[0]
    lumen, epithelium, stroma = summary.class_area_mm2
    assert epithelium > 0.01 and stroma > 0.01  # mm², on an H&E slide
    # every tissue pixel once: the analysed tissue is the slide's, within the masks' difference
    assert lumen + epithelium + stroma == pytest.approx(summary.analysed_tissue_mm2, rel=1e-6)
    assert summary.analysed_tissue_mm2 == pytest.approx(summary.tissue_area_mm2, rel=0.05)


def test_models_with_their_own_patch_geometry_share_one_survey(cmu1, tiny_models, tmp_path):
    """A 64 px classifier at the job's 0.5 µm/px and a segmentation net at 128 px and 2 µm/px
    in one job: each slide is surveyed once, each model gets its own grid, and its rows equal
    those of a job with that model alone."""
    torch.manual_seed(1)
    seg = export_pt2(SpatialOutput().eval(), str(tmp_path / "seg.pt2"), patch_px=128)
    seg_args = ("--model", f"seg={seg}", "--model_output", "seg=segmentation")
    own = ("--model_patch_px", "seg=128", "--model_mpp", "seg=2")
    both_out, both = run_cli(
        tmp_path / "both", cmu1, "--model", f"two={tiny_models['two']}", *seg_args, *own
    )
    alone_out, alone = run_cli(
        tmp_path / "alone", cmu1, *seg_args, extra=("--patch_px", "128", "--patch_mpp", "2")
    )
    assert both["slides_opened"] == 1  # one survey for both geometries
    summaries = pd.read_parquet(both_out / "slide_summaries").set_index("model_name")
    seg_rows = pd.read_parquet(both_out / "patch_segmentations").sort_values(["y_px", "x_px"])
    seg_alone = pd.read_parquet(alone_out / "patch_segmentations").sort_values(["y_px", "x_px"])
    predictions = pd.read_parquet(both_out / "patch_predictions")
    assert set(seg_rows.size_px) == {round(128 * 2 / summaries.slide_mpp.iloc[0])}
    assert seg_rows[["x_px", "y_px", "size_px"]].values.tolist() == (
        seg_alone[["x_px", "y_px", "size_px"]].values.tolist()
    )
    for a, b in zip(seg_rows.class_fractions, seg_alone.class_fractions, strict=True):
        assert list(a) == pytest.approx(list(b), abs=1e-9)
    assert summaries.loc["seg"].patches_planned == len(seg_rows) == alone["patches_planned"]
    assert summaries.loc["two"].patches_planned == len(predictions) > len(seg_rows)
    assert both["patches_planned"] == len(predictions) + len(seg_rows)


def test_a_model_mpp_with_a_patch_manifest_is_a_config_error(cmu1, tiny_models, tmp_path):
    from transforms.core.errors import ConfigError

    patches = tmp_path / "patches.csv"
    patches.write_text("slide_id,x_px,y_px,size_px\ncmu1,0,0,256\n")
    with pytest.raises(ConfigError, match="--model_mpp two: a patch manifest"):
        run_cli(
            tmp_path,
            cmu1,
            "--model",
            f"two={tiny_models['two']}",
            extra=("--patches", str(patches), "--model_mpp", "two=1"),
        )


def test_a_patch_manifest_is_cut_to_each_models_patch_size(cmu1, tiny_models, tmp_path):
    """With a patch manifest, a model's own --model_patch_px resizes the same boxes for it."""
    torch.manual_seed(1)
    seg = export_pt2(SpatialOutput().eval(), str(tmp_path / "seg.pt2"), patch_px=32)
    patches = tmp_path / "patches.csv"
    patches.write_text("slide_id,x_px,y_px,size_px\ncmu1,0,0,256\ncmu1,982,1355,256\n")
    out, counted = run_cli(
        tmp_path,
        cmu1,
        *("--model", f"two={tiny_models['two']}", "--model", f"seg={seg}"),
        *("--model_output", "seg=segmentation", "--model_patch_px", "seg=32"),
        extra=("--patches", str(patches)),
    )
    segs = pd.read_parquet(out / "patch_segmentations")
    predictions = pd.read_parquet(out / "patch_predictions")
    assert sorted(segs.x_px) == sorted(predictions.x_px) == [0, 982]
    assert (np.stack(segs.argmax_counts.to_numpy()).sum(axis=1) <= 32 * 32).all()
    assert counted["patches_planned"] == 4  # two boxes, two geometries


def test_an_encoder_saved_without_a_pooler_embeds_its_cls_token(tmp_path):
    """AutoModel would give a pooler-less ViT a randomly initialised pooler; the loader drops
    it, so `auto` is the CLS token, the same on every worker. Other missing weights fail."""
    import safetensors.torch
    import transformers

    from tests.models_for_tests import tiny_vit_config
    from transforms.core.errors import ModelLoadError
    from transforms.models.loading import load_model, predict
    from transforms.models.spec import ModelSpec

    config = tiny_vit_config(num_hidden_layers=1)
    folder = tmp_path / "no_pooler"
    net = transformers.ViTModel(config, add_pooling_layer=False).eval()
    net.save_pretrained(folder)
    spec = ModelSpec("enc", str(folder), output_kind="embedding")
    patch = np.random.default_rng(0).integers(0, 256, (64, 64, 3), np.uint8)
    got = np.stack(predict(load_model(spec), [patch], spec))
    with torch.inference_mode():
        cls = net(pixel_values=normalised(patch[None], IMAGENET_MEAN, IMAGENET_STD))
    np.testing.assert_allclose(got, cls.last_hidden_state[:, 0].numpy(), atol=1e-5)

    weights = safetensors.torch.load_file(folder / "model.safetensors")
    del weights["layernorm.weight"]
    safetensors.torch.save_file(weights, folder / "model.safetensors")
    with pytest.raises(ModelLoadError, match="lacks weights the model needs.*layernorm.weight"):
        load_model(spec)
