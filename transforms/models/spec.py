"""Patch-model specs and the one model-name rule that the CLI, the specs and the templates share.

Two ways to ship a patch model:
  * a ``.pt2`` program saved with ``torch.export.save`` (self-contained; the default), or
  * a ``state_dict`` file plus an importable class (``model_class = "pkg.mod:Class"``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from transforms.core.errors import ConfigError

MODEL_NAME_PATTERN = r"[A-Za-z][A-Za-z0-9_]{0,62}"
"""A model name starts with a letter and holds letters, digits and underscores, at most 63: it
becomes a stage label, a file name and a row value. The Flex Template metadata regexes embed this
same pattern (a test checks that they agree)."""
_MODEL_NAME = re.compile(f"^{MODEL_NAME_PATTERN}$")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
ACTIVATIONS = ("softmax", "sigmoid", "none")


def is_model_name(name: str) -> bool:
    """Whether ``name`` follows the model-name rule."""
    return bool(_MODEL_NAME.match(name))


def check_model_name(name: str) -> None:
    """Raise ``ConfigError`` (naming the ``name`` field) unless ``name`` follows the rule."""
    if not is_model_name(name):
        raise ConfigError(
            f"`name` {name!r} must start with a letter and hold only letters, digits and "
            "underscores (at most 63): it becomes a stage label, a file name and a row value"
        )


@dataclass(frozen=True)
class ModelSpec:
    """One patch-model branch: where it is, which version, and how patches are prepared for it."""

    name: str
    uri: str
    version: str = "unversioned"
    model_class: str | None = None
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    activation: str = "softmax"
    require_gpu: bool = False

    def __post_init__(self) -> None:
        check_model_name(self.name)
        if not self.uri:
            raise ConfigError(f"`uri` of model {self.name}: the URI is empty")
        if self.model_class is not None and ":" not in self.model_class:
            raise ConfigError(
                f"`model_class` {self.name}={self.model_class}: expected 'package.module:Class'"
            )
        if self.model_class is None and not self.uri.endswith(".pt2"):
            raise ConfigError(
                f"`uri` {self.name}={self.uri}: expected a torch.export '.pt2' program, or a "
                f"state_dict with `model_class` {self.name}=package.module:Class"
            )
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ConfigError(f"`mean`/`std` of {self.name}: need 3 values each, std > 0")
        if self.activation not in ACTIVATIONS:
            raise ConfigError(f"`activation` of {self.name}: one of {', '.join(ACTIVATIONS)}")

    @property
    def shared_tag(self) -> str:
        """Key of the process-wide model cache: a new version or file is a new model."""
        return f"{self.name}|{self.version}|{self.uri}|{self.model_class}"
