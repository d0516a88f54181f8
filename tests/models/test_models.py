"""Model loading (.pt2 and state_dict + class), device choice, and prediction shape checks."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from tests.models_for_tests import patches
from transforms.core.errors import ConfigError, ModelLoadError
from transforms.models.loading import load_model, predict
from transforms.models.spec import IMAGENET_MEAN, IMAGENET_STD, ModelSpec
from transforms.models.torch_models import select_device


def test_device_is_cpu_without_a_gpu_and_require_gpu_fails_clearly():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert select_device(require_gpu=False) == "cpu"
    with pytest.raises(ModelLoadError, match="--require_gpu"):
        select_device(require_gpu=True)


def test_require_gpu_fails_the_model_load_not_the_elements(tiny_models):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(ModelLoadError, match="--require_gpu"):
        load_model(ModelSpec("two", tiny_models["two"], require_gpu=True))


def test_pt2_and_state_dict_load_the_same_network(tiny_models):
    from tests.models_for_tests import tiny_net

    exported = load_model(ModelSpec("two", tiny_models["two"]))
    from_state = load_model(
        ModelSpec(
            "two", tiny_models["two_state_dict"], model_class="tests.models_for_tests:TinyPatchNet"
        )
    )
    batch = patches(5)
    spec = ModelSpec("two", tiny_models["two"])
    a, b = np.stack(predict(exported, batch, spec)), np.stack(predict(from_state, batch, spec))
    np.testing.assert_allclose(a, b, atol=1e-6)
    assert a.shape == (5, 2) and np.allclose(a.sum(1), 1, atol=1e-6)
    with torch.inference_mode():
        x = torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2).float() / 255
        x = (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(
            1, 3, 1, 1
        )
        direct = torch.softmax(tiny_net(2, seed=0)(x), 1).numpy()
    np.testing.assert_allclose(a, direct, atol=1e-5)


def test_missing_or_corrupt_model_names_the_model_and_uri(tmp_path):
    with pytest.raises(ModelLoadError, match=r"'tumor'.*nowhere\.pt2"):
        load_model(ModelSpec("tumor", str(tmp_path / "nowhere.pt2")))
    corrupt = tmp_path / "corrupt.pt2"
    corrupt.write_bytes(b"not a zip archive")
    with pytest.raises(ModelLoadError, match="corrupt.pt2"):
        load_model(ModelSpec("tumor", str(corrupt)))
    with pytest.raises(ModelLoadError, match="no_such_module"):
        load_model(ModelSpec("tumor", str(corrupt), model_class="no_such_module:Net"))


def test_wrong_output_shape_is_an_error(tmp_path):
    from tests.models_for_tests import export_pt2

    class Flat(torch.nn.Module):
        def forward(self, x):
            return x.mean(dim=(2, 3)).unsqueeze(-1)  # N x 3 x 1: not N x C

    path = export_pt2(Flat(), str(tmp_path / "flat.pt2"))
    spec = ModelSpec("flat", path)
    with pytest.raises(ValueError, match="expected"):
        predict(load_model(spec), patches(2), spec)


def test_version_is_part_of_the_shared_tag():
    a = ModelSpec("m", "x.pt2", version="1")
    b = ModelSpec("m", "x.pt2", version="2")
    assert a.shared_tag != b.shared_tag and "2" in b.shared_tag
    with pytest.raises(ConfigError):
        ModelSpec("m", "x.pt2", std=(0.0, 1.0, 1.0))


def test_remote_model_files_and_folders_are_copied_once_into_the_cache(tmp_path):
    import fsspec

    from transforms.models.local_copy import local_copy, local_folder

    fs = fsspec.filesystem("memory")
    fs.pipe("/bucket/m.pt2", b"weights")
    fs.pipe("/bucket/hf/config.json", b"{}")
    fs.pipe("/bucket/hf/tokenizer.json", b"{}")
    cache = str(tmp_path / "cache")
    path = local_copy("memory://bucket/m.pt2", cache)
    assert open(path, "rb").read() == b"weights" and path.startswith(cache)
    fs.pipe("/bucket/m.pt2", b"changed")
    assert open(local_copy("memory://bucket/m.pt2", cache), "rb").read() == b"weights"
    folder = local_folder("memory://bucket/hf", cache)
    assert sorted(os.listdir(folder)) == [".complete", "config.json", "tokenizer.json"]
    assert local_folder("memory://bucket/hf", cache) == folder
    assert local_copy(str(tmp_path / "x.pt2")) == str(tmp_path / "x.pt2")


def test_onnx_takes_the_cuda_provider_where_there_is_one(monkeypatch):
    import onnxruntime

    from transforms.models.onnx_models import CPU, CUDA, providers

    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: [CUDA, CPU])
    assert providers(require_gpu=True) == [CUDA, CPU]
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: [CPU])
    assert providers(require_gpu=False) == [CPU]
    with pytest.raises(ModelLoadError, match="onnxruntime-gpu"):
        providers(require_gpu=True)


def test_an_onnx_graph_of_a_fixed_patch_size_fails_at_setup_on_another(tmp_path):
    """A graph exported for 64 px patches cannot take 32 px ones: the handler's check batch
    fails the model's setup, naming the model and --patch_px, before any patch is read."""
    from tests.models_for_tests import export_onnx, tiny_net
    from transforms.slides.patch_handler import PatchModelHandler

    uri = export_onnx(tiny_net(2), str(tmp_path / "fixed64.onnx"), patch_px=64, fixed_batch=2)
    spec = ModelSpec("fixed", uri)
    model = PatchModelHandler(spec, 64).load_model()  # its own size: fine
    assert np.stack(predict(model, patches(3), spec)).shape == (3, 2)  # 3 through a batch of 2
    with pytest.raises(ModelLoadError, match=r"'fixed'.*fails on a 32x32 patch \(--patch_px 32\)"):
        PatchModelHandler(spec, 32).load_model()


def test_class_names_must_count_the_model_s_classes(tiny_models):
    """``--class_names tumor=a,b,c`` on a 2-class model fails at load, naming both counts; the
    right count loads."""
    from transforms.slides.patch_handler import PatchModelHandler

    wrong = ModelSpec("two", tiny_models["two"], class_names=("a", "b", "c"))
    with pytest.raises(ModelLoadError, match=r"gives 3 names \(a, b, c\), but the model has 2"):
        PatchModelHandler(wrong, 64).load_model()
    right = ModelSpec("two", tiny_models["two"], class_names=("stroma", "tumour"))
    assert PatchModelHandler(right, 64).load_model() is not None


def test_class_names_of_a_hugging_face_folder_are_checked_before_launch(tmp_path):
    """A Hugging Face classifier's labels (config.json) are checked before anything starts."""
    import transformers

    from pipelines.preflight import _check_model_format
    from tests.models_for_tests import tiny_vit_config

    folder = str(tmp_path / "vit")
    config = tiny_vit_config(num_hidden_layers=1, num_labels=2)
    transformers.ViTForImageClassification(config).save_pretrained(folder)
    spec = ModelSpec("vit", folder, class_names=("a", "b", "c"))
    with pytest.raises(ConfigError, match=r"gives 3 names .* has 2 classes .*id2label"):
        _check_model_format(spec)
    _check_model_format(ModelSpec("vit", folder, class_names=("a", "b")))
