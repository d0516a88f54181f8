"""What an ONNX graph says of itself, read without onnx or onnxruntime and without its weights.

An ``.onnx`` file is a protobuf ``ModelProto``. Its image input's shape (``graph.input``) and its
``metadata_props`` are a few hundred bytes, but they sit after the initializers (the weights),
which can be gigabytes in a self-contained graph. This reader walks the protobuf's fields and
seeks over every length-delimited field it does not need, so on ``gs://`` it reads only the
bytes it parses (a few ranged reads), and a launch can check a model before any worker starts.

Field numbers are those of ``onnx.proto`` (onnx/onnx, IR version 3 and later).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import IO, cast

_MODEL_GRAPH, _MODEL_METADATA = 7, 14
_GRAPH_INPUT = 11
_VALUE_NAME, _VALUE_TYPE = 1, 2
_TYPE_TENSOR = 1
_TENSOR_SHAPE = 2
_SHAPE_DIM = 1
_DIM_VALUE, _DIM_PARAM = 1, 2
_MAX_FIELD = 1 << 20
"""The largest field this reader parses in memory (graph input descriptions are small)."""


@dataclass(frozen=True)
class OnnxHeader:
    inputs: tuple[tuple[str, tuple[int | str, ...]], ...]
    """Each graph input: its name and shape (int, or a symbol). Graphs older than IR 4 list
    their initializers here too; ``image_size`` takes the one 4-D input."""
    metadata: dict[str, str]

    def image_size(self) -> tuple[int, int] | None:
        """The fixed H x W of its one 4-D input, or None where either is symbolic."""
        shapes = [s for _, s in self.inputs if len(s) == 4]
        if len(shapes) != 1:
            return None
        h, w = shapes[0][2], shapes[0][3]
        return (h, w) if isinstance(h, int) and isinstance(w, int) and h > 0 and w > 0 else None


def _varint(f: IO[bytes]) -> int | None:
    shift = result = 0
    while True:
        byte = f.read(1)
        if not byte:
            return None
        result |= (byte[0] & 0x7F) << shift
        if not byte[0] & 0x80:
            return result
        shift += 7
        if shift > 63:
            raise ValueError("malformed varint")


def _fields(f: IO[bytes], end: int | None, wanted: set[int]):  # noqa: ANN202 - generator
    """(field number, bytes) of each length-delimited field in ``wanted``, until ``end``; others
    are skipped (seeked over)."""
    while end is None or f.tell() < end:
        key = _varint(f)
        if key is None:
            return
        number, wire = key >> 3, key & 7
        if wire == 0:
            _varint(f)
        elif wire == 1:
            f.seek(8, 1)
        elif wire == 5:
            f.seek(4, 1)
        elif wire == 2:
            length = _varint(f) or 0
            if number in wanted:
                start = f.tell()
                yield number, start, length
                f.seek(start + length)
            else:
                f.seek(length, 1)
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")


def _sub(data: bytes) -> list[tuple[int, int | bytes]]:
    """The fields of a small message in memory: (number, int or bytes)."""
    import io

    out: list[tuple[int, int | bytes]] = []
    f = io.BytesIO(data)
    while f.tell() < len(data):
        key = _varint(f)
        if key is None:
            break
        number, wire = key >> 3, key & 7
        if wire == 0:
            out.append((number, _varint(f) or 0))
        elif wire == 2:
            length = _varint(f) or 0
            out.append((number, f.read(length)))
        elif wire in (1, 5):
            f.seek(8 if wire == 1 else 4, 1)
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
    return out


def _shape(value_info: bytes) -> tuple[str, tuple[int | str, ...]]:
    name, dims = "", cast(list[int | str], [])
    for number, value in _sub(value_info):
        if number == _VALUE_NAME and isinstance(value, bytes):
            name = value.decode("utf-8", "replace")
        elif number == _VALUE_TYPE and isinstance(value, bytes):
            for n2, tensor in _sub(value):
                if n2 != _TYPE_TENSOR or not isinstance(tensor, bytes):
                    continue
                for n3, shape in _sub(tensor):
                    if n3 != _TENSOR_SHAPE or not isinstance(shape, bytes):
                        continue
                    for n4, dim in _sub(shape):
                        if n4 != _SHAPE_DIM or not isinstance(dim, bytes):
                            continue
                        parts = dict(_sub(dim))
                        param, size = parts.get(_DIM_PARAM), parts.get(_DIM_VALUE)
                        if isinstance(size, int):
                            dims.append(size)
                        else:
                            dims.append(param.decode() if isinstance(param, bytes) else "?")
    return name, tuple(dims)


def read_header(f: IO[bytes]) -> OnnxHeader:
    """The inputs and metadata of the ONNX graph in the seekable binary file ``f``."""
    inputs: list[tuple[str, tuple[int | str, ...]]] = []
    metadata: dict[str, str] = {}
    for number, start, length in list(_fields(f, None, {_MODEL_GRAPH, _MODEL_METADATA})):
        if number == _MODEL_METADATA:
            f.seek(start)
            entry = dict(_sub(f.read(length)))
            key, value = entry.get(1, b""), entry.get(2, b"")
            if isinstance(key, bytes) and isinstance(value, bytes):
                metadata[key.decode("utf-8", "replace")] = value.decode("utf-8", "replace")
            continue
        f.seek(start)
        for _, s2, l2 in list(_fields(f, start + length, {_GRAPH_INPUT})):
            if l2 > _MAX_FIELD:
                raise ValueError(f"a graph input description of {l2} bytes")
            f.seek(s2)
            inputs.append(_shape(f.read(l2)))
    return OnnxHeader(tuple(inputs), metadata)


@functools.lru_cache(maxsize=64)
def onnx_header(uri: str) -> OnnxHeader:
    """The header of the ONNX graph at ``uri`` (local or an object store), read once per
    process. Raises ``ValueError`` for a file that is not an ONNX protobuf."""
    from transforms.core.remote_io import open_uri

    with open_uri(uri) as f:
        return read_header(f)
