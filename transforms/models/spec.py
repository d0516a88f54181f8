"""Patch-model specs and the one model-name rule that the CLI, the specs and the templates share.

Five ways to ship a patch model (``model_format`` tells the first four apart by the URI):
  * a ``.pt2`` program saved with ``torch.export.save`` (self-contained);
  * a ``state_dict`` file plus an importable class (``model_class = "pkg.mod:Class"``);
  * an ``.onnx`` graph (run by onnxruntime; external weights as ``<file>.data`` beside it);
  * a Hugging Face vision folder written by ``save_pretrained`` (ViT, DINOv2, Swin, ConvNeXt...);
  * a timm ViT folder of a foundation model (UNI, Virchow2...), named by its ``--preset``.

And the kinds of output in ``models/kinds`` (``OUTPUT_KINDS``): class logits
(``classification``), one vector per patch (``embedding``), a class map per patch
(``segmentation``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from transforms.core.errors import ConfigError
from transforms.models.kinds import KINDS, OUTPUT_KINDS, OutputKind
from transforms.models.kinds.embedding import KIND as _EMBEDDING_KIND
from transforms.models.precision import GuardConfig, check_precision

MODEL_NAME_PATTERN = r"[A-Za-z][A-Za-z0-9_]{0,62}"
"""A model name starts with a letter and holds letters, digits and underscores, at most 63: it
becomes a stage label, a file name and a row value. The Flex Template metadata regexes embed this
same pattern (a test checks that they agree)."""
_MODEL_NAME = re.compile(MODEL_NAME_PATTERN)
EMBEDDING = _EMBEDDING_KIND.name

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
ACTIVATIONS = ("softmax", "sigmoid", "none")
INPUTS = ("rgb", "eho")
"""What a model is handed: the patch's RGB, or EHO stain channels (eosin, hematoxylin, optical
density; ``slides/stains.py``) scaled by its slide's stain basis."""
STAIN_METHODS = ("none", "macenko", "reinhard")
"""Stain normalisation of a model's patches (``slides/stain_norm.py``)."""


def stain_key(method: str, reference: Any) -> str:
    """The key of one normalisation (method and reference) among a slide's stain bases."""
    return f"{method}:{reference!r}"


FORMATS = ("pt2", "state_dict", "onnx", "huggingface", "timm")
MODALITIES = ("brightfield_he", "brightfield_ihc", "fluorescence", "any")
"""What a model was made for (its recipe's ``modality``): H&E or IHC brightfield,
fluorescence, or any slide (``recipe.modality_refuses``)."""
_WEIGHT_FILES = (".pth", ".pt", ".bin", ".safetensors", ".ckpt")


PATCH_PX_RANGE = (8, 8192)
"""A patch edge handed to a model, px (the job's ``--patch_px`` and a model's own)."""


def check_patch_size(field: str, patch_px: int | None, patch_mpp: float | None) -> None:
    """The one rule for a patch geometry's edge and resolution (job or model); ``ConfigError``
    naming ``field`` (e.g. ``patch_px`` or ``patch_px` of m``)."""
    low, high = PATCH_PX_RANGE
    if patch_px is not None and not low <= patch_px <= high:
        raise ConfigError(f"`{field}px` must be between {low} and {high}, got {patch_px}")
    if patch_mpp is not None and not 0 < patch_mpp < 1000:
        raise ConfigError(f"`{field}mpp` must be a positive micron size, got {patch_mpp}")


def model_format(uri: str, model_class: str | None) -> str:
    """The format of the model at ``uri`` (one of ``FORMATS``), from its name and ``model_class``.

    Raises ``ConfigError`` for a weights file without a class to load it into.
    """
    path = uri.rstrip("/")
    if model_class is not None:
        return "state_dict"
    if path.endswith(".pt2"):
        return "pt2"
    if path.endswith(".onnx"):
        return "onnx"
    if path.endswith(_WEIGHT_FILES):
        raise ConfigError(
            f"`uri` {uri}: a weights file needs `model_class` NAME=package.module:Class; or "
            "give a torch.export '.pt2' program, an '.onnx' graph or a Hugging Face folder"
        )
    return "huggingface"


def is_model_name(name: str) -> bool:
    """Whether ``name`` follows the model-name rule."""
    return _MODEL_NAME.fullmatch(name) is not None


def check_model_name(name: str) -> None:
    """Raise ``ConfigError`` (naming the ``name`` field) unless ``name`` follows the rule."""
    if not is_model_name(name):
        raise ConfigError(
            f"`name` {name!r} must start with a letter and hold only letters, digits and "
            "underscores (at most 63): it becomes a stage label, a file name and a row value"
        )


@dataclass(frozen=True)
class ModelRef:
    """What a model of any pipeline has: its name, where it is, which version, the precision it
    is asked to run in (fp32, bf16, fp16 or auto: ``precision.py``), and whether it must have a
    GPU. ``ModelSpec`` (patch models) and ``TextModelSpec`` add their own fields."""

    name: str
    uri: str
    version: str = "unversioned"
    require_gpu: bool = False
    precision: str = "fp32"

    def __post_init__(self) -> None:
        check_model_name(self.name)
        if not self.uri:
            raise ConfigError(f"`uri` of model {self.name}: the URI is empty")
        check_precision(self.name, self.precision, self.format)

    @property
    def format(self) -> str:
        """How the model is stored (``FORMATS``)."""
        return "huggingface"


@dataclass(frozen=True)
class ModelSpec(ModelRef):
    """One patch-model branch: where it is, which version, and how patches are prepared for it."""

    model_class: str | None = None
    mean: tuple[float, ...] | None = None
    """Input normalisation; None: the model folder's own (a Hugging Face image-processor
    config), else ImageNet's."""
    std: tuple[float, ...] | None = None
    activation: str = "softmax"
    output_kind: str = "classification"
    class_names: tuple[str, ...] = ()
    class_colours: tuple[str, ...] = ()
    """``#rrggbb`` per class for class maps (its recipe's), else the pictures' palette."""
    embedding_key: str = "auto"
    input: str = "rgb"
    compile: bool = False
    """``torch.compile`` the model at load, for batches of a fixed size (``torch_models``)."""
    patch_px: int | None = None
    """The model's own patch edge (None: the job's ``--patch_px``)."""
    patch_mpp: float | None = None
    """The model's own patch resolution (None: the job's ``--patch_mpp``)."""
    min_tissue: float | None = None
    """The smallest tissue fraction of the model's patches (None: the job's ``--min_tissue``)."""
    geometry: int = 0
    """Index of the model's patch geometry among the job's (set when the job is configured):
    models with one geometry share one decoded patch stream."""
    recipe: str | None = None
    """Where the model's recipe was read (``models/recipe.py``), if it has one."""
    overrides: tuple[str, ...] = ()
    """The recipe's fields a flag overrode, each said (``patch_px 200 overrides ... 320``)."""
    modality: str = "any"
    """What the model was made for (the recipe's ``modality``)."""
    licence: str | None = None
    citation: str | None = None
    stain_norm: str = "none"
    """Stain normalisation of its patches: none, macenko or reinhard (``slides/stain_norm.py``)."""
    preset: str | None = None
    """The foundation-model preset it was given (``presets.py``), whose recipe it takes."""
    mpp_tolerance: float | None = None
    """How much coarser than its patch mpp a slide may be (None: the job's 10%)."""
    guard: GuardConfig | None = None
    """Its own accuracy-guard tolerances (its recipe's ``guard``), else the job's."""
    stain_reference: Any = None
    """The stain it normalises towards (a ``slides.stain_norm.StainReference``), resolved at
    launch."""

    def __post_init__(self) -> None:
        if self.model_class is not None and ":" not in self.model_class:
            raise ConfigError(
                f"`model_class` {self.name}={self.model_class}: expected 'package.module:Class'"
            )
        super().__post_init__()  # the name, the URI, the format, the precision
        try:
            check_patch_size("patch_", self.patch_px, self.patch_mpp)
        except ConfigError as exc:
            raise ConfigError(f"{exc} (model {self.name})") from None
        if self.compile and self.format == "onnx":
            raise ConfigError(
                f"`compile` {self.name}: ONNX graphs are optimised by onnxruntime itself; "
                "compile applies to .pt2, state_dict and Hugging Face models"
            )
        if self.input not in INPUTS:
            raise ConfigError(f"`input` of {self.name}: one of {', '.join(INPUTS)}")
        if self.output_kind not in OUTPUT_KINDS:
            raise ConfigError(
                f"`output_kind` of {self.name}: one of {', '.join(OUTPUT_KINDS)}, "
                f"got {self.output_kind!r}"
            )
        if self.embedding_key != "auto" and self.output_kind != EMBEDDING:
            raise ConfigError(f"`embedding_key` of {self.name}: only for `output_kind` embedding")
        if len(set(self.class_names)) != len(self.class_names) or "" in self.class_names:
            raise ConfigError(f"`class_names` of {self.name}: distinct, non-empty names")
        if self.class_names and not self.kind.has_classes:
            raise ConfigError(
                f"`class_names` of {self.name}: a model of output kind {self.output_kind} has "
                "no classes"
            )
        if (self.mean is not None and len(self.mean) != 3) or (
            self.std is not None and (len(self.std) != 3 or min(self.std) <= 0)
        ):
            raise ConfigError(f"`mean`/`std` of {self.name}: need 3 values each, std > 0")
        if self.activation not in ACTIVATIONS:
            raise ConfigError(f"`activation` of {self.name}: one of {', '.join(ACTIVATIONS)}")
        if self.class_colours and len(self.class_colours) != len(self.class_names):
            raise ConfigError(
                f"`class_names` of {self.name}: {len(self.class_names)} names for "
                f"{len(self.class_colours)} colours (its recipe's class_colours)"
            )
        if self.modality not in MODALITIES:
            raise ConfigError(f"`modality` of {self.name}: one of {', '.join(MODALITIES)}")
        if self.min_tissue is not None and not 0.0 <= self.min_tissue <= 1.0:
            raise ConfigError(f"`min_tissue` of {self.name} must be in [0, 1]")
        if self.mpp_tolerance is not None and not 0.0 <= self.mpp_tolerance <= 1.0:
            raise ConfigError(f"`mpp_tolerance` of {self.name} must be in [0, 1]")
        if self.stain_norm not in STAIN_METHODS:
            raise ConfigError(
                f"`stain_norm` of {self.name}: one of {', '.join(STAIN_METHODS)}, "
                f"got {self.stain_norm!r}"
            )
        if (self.stain_norm == "none") != (self.stain_reference is None):
            raise ConfigError(f"`stain_reference` of {self.name}: only with a `stain_norm`")

    @property
    def needs_stains(self) -> bool:
        """Whether its patches need their slide's stain basis (EHO input, or normalisation)."""
        return self.input == "eho" or self.stain_norm != "none"

    @property
    def stain_target(self) -> tuple[str, Any] | None:
        """Its normalisation, where its EHO channels need the normalised slide's basis too."""
        if self.stain_norm == "none" or self.input != "eho":
            return None
        assert self.stain_reference is not None
        return self.stain_norm, self.stain_reference

    @property
    def stain_key(self) -> str:
        return stain_key(self.stain_norm, self.stain_reference)

    @property
    def kind(self) -> OutputKind:
        """The model's output kind (``models/kinds``)."""
        return KINDS[self.output_kind]

    @property
    def format(self) -> str:
        """One of ``FORMATS``: a preset's folder is its preset's (``timm`` or Hugging Face)."""
        if self.preset is not None:
            from transforms.models.presets import preset_format

            return preset_format(self.preset)
        return model_format(self.uri, self.model_class)

    def class_name(self, index: int) -> str:
        """The name of class ``index`` (``class_names``, else ``class <index>``)."""
        return self.class_names[index] if index < len(self.class_names) else f"class {index}"

    @property
    def shared_tag(self) -> str:
        """Key of the process-wide model cache: a new version or file is a new model."""
        return f"{self.name}|{self.version}|{self.uri}|{self.model_class}"
