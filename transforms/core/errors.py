"""One exception hierarchy and the dead-letter record every stage emits.

A dead letter is a plain dict with the columns of the ``errors`` table (see ``sinks.ERRORS``):
``stage, key, error_type, message, input``. Every DoFn that can fail on one element emits one on
the ``DEAD_LETTER`` tagged output instead of raising, so the rest of the run completes.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

DEAD_LETTER = "dead_letters"
"""Tag of the tagged output that carries dead letters."""

_MAX_INPUT_CHARS = 4000
MAX_MESSAGE_CHARS = 2000
"""A dead letter's message, a run's error: longer ones are cut, with their length and a hash."""
MAX_KEY_CHARS = 300
"""A dead letter's key (a slide or document id, a row): longer ones are cut the same way."""


class PipelineError(Exception):
    """Base class of every error this project raises on purpose."""


class ConfigError(PipelineError):
    """Bad configuration: raised before the pipeline starts. The message names the flag."""


class ManifestError(PipelineError):
    """A manifest row that cannot be used (missing column, bad value, duplicate)."""


class SlideError(PipelineError):
    """A slide that cannot be opened, read or tiled."""


class UnsupportedFormatError(SlideError):
    """A slide file in a format the reader does not support (e.g. DICOM for tiffslide)."""


class OutOfBoundsError(SlideError):
    """A patch that lies (partly) outside its slide."""


class RemoteIOError(PipelineError):
    """An object-store operation that timed out or lost its connection on every attempt."""


class ResponseTooLarge(RemoteIOError):
    """A response past the bytes its request could need (not retried: the server would send as
    much again)."""

    def __init__(self, what: str, cap_bytes: int) -> None:
        super().__init__(
            f"{what}: the response passed {cap_bytes:,} bytes, more than what was asked for can "
            "hold; the server sends too much"
        )


class ModalityMismatch(PipelineError):
    """A slide of another kind (fluorescence, brightfield) than its model's recipe takes: a
    dead letter for that model only."""


class ResolutionError(SlideError):
    """A slide too coarse for a patch geometry (more upsampling than its tolerance): a dead
    letter for the models of that geometry, or for the slide when no geometry can be cut."""


class ModelLoadError(PipelineError):
    """A model that cannot be loaded: fatal for the job, raised from ``setup()``."""


class ModelOutputError(PipelineError):
    """A model output that is not a usable prediction (wrong shape, NaN or infinite)."""


_SECRETS = (
    # signed-URL and OAuth query parameters: keep the name, drop the value
    (
        re.compile(
            r"(?i)([?&](?:x-goog-signature|x-goog-credential|x-amz-signature|x-amz-credential|"
            r"signature|sig|token|access_token|id_token|key|api_key|apikey|code)=)[^&\s\"']+"
        ),
        r"\1REDACTED",
    ),
    (re.compile(r"(?i)(bearer\s{1,8})[a-z0-9._~+/=-]+"), r"\1REDACTED"),
    # user:password@host in any URL. Every run is bounded (a scheme of at most 32 characters,
    # user and password of at most 256): unbounded runs made this pattern quadratic (8.8 s on a
    # 60 KB cell), bounded ones keep redact() linear in its input.
    (
        re.compile(r"(?i)(\b[a-z][a-z0-9+.-]{0,31}://[^/:@\s\"']{1,256}:)[^@\s\"'/]{1,256}(@)"),
        r"\1REDACTED\2",
    ),
    (re.compile(r"(\bya29\.)[A-Za-z0-9._-]+"), r"\1REDACTED"),  # Google OAuth access tokens
)


def redact(text: str) -> str:
    """``text`` with credentials, signed-URL signatures and bearer tokens replaced."""
    for pattern, replacement in _SECRETS:
        text = pattern.sub(replacement, text)
    return text


def shorten(text: str, limit: int) -> str:
    """``text`` if it fits ``limit`` characters, else its start, its length and a hash of the
    whole (so two long ids that share a start stay apart)."""
    if len(text) <= limit:
        return text
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:10]
    tail = f"...({len(text):,} characters, sha256 {digest})"
    return text[: max(limit - len(tail), 0)] + tail


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_CONTROL_OR_NEWLINE = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def printable(text: str, newlines: bool = True) -> str:
    """``text`` safe for a terminal or a page: control characters (ESC, BEL, CR, NUL, ...) are
    shown as ``\\xNN`` escapes instead of acting; tabs and newlines stay unless ``newlines``
    is false (one value on one line)."""
    pattern = _CONTROL if newlines else _CONTROL_OR_NEWLINE
    return pattern.sub(lambda m: f"\\x{ord(m[0]):02x}", text)


def printable_values(value: Any) -> Any:
    """``value`` (a record: dicts, lists, strings) with every string one printable line."""
    if isinstance(value, str):
        return printable(value, newlines=False)
    if isinstance(value, dict):
        return {k: printable_values(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [printable_values(v) for v in value]
    return value


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items() if k != "pixels"}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, str | int | bool) or value is None:
        return value
    if isinstance(value, float):
        return value if value == value else None  # NaN -> null
    return repr(value)


def dead_letter(stage: str, key: str, error: BaseException | str, element: Any = None) -> dict:
    """Build one dead-letter row.

    Args:
      stage: the named pipeline stage that failed (``ReadManifest``, ``PlanPatches``, ...).
      key: what failed, as a user finds it again: a ``slide_id``, ``slide_id@x,y`` or ``row 12``.
      error: the exception, or a message when there was none.
      element: the input that failed, stored as JSON (pixels and other bulk data are dropped).
    """
    if isinstance(error, BaseException):
        error_type, message = type(error).__name__, str(error) or repr(error)
    else:
        error_type, message = "Rejected", error
    text = redact(json.dumps(_jsonable(element), sort_keys=True, default=repr))
    if len(text) > _MAX_INPUT_CHARS:
        text = text[:_MAX_INPUT_CHARS] + "...(truncated)"
    return {
        "stage": stage,
        "key": shorten(redact(str(key)), MAX_KEY_CHARS),
        "error_type": error_type,
        "message": shorten(redact(message), MAX_MESSAGE_CHARS),
        "input": text,
    }


def patch_dead_letter(stage: str, row: dict[str, Any], error: BaseException | str) -> dict:
    """The dead letter of one patch (a manifest row or a planned box), keyed ``slide_id@x,y``."""
    return dead_letter(stage, f"{row['slide_id']}@{row['x_px']},{row['y_px']}", error, row)
