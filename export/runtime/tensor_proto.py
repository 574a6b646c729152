"""Read and write ONNX ``TensorProto`` files (``input_0.pb``) with numpy alone: a tiny protobuf codec.

Only the fields a test-data tensor needs are handled: ``dims`` (1), ``data_type`` (2), ``name`` (8)
and ``raw_data`` (9) when writing; when reading, also the typed ``float_data`` (4), ``int32_data``
(5), ``int64_data`` (7), ``double_data`` (10) and ``uint64_data`` (11) that other writers use.
Written bytes are identical to ``onnx.numpy_helper.from_array(a, name).SerializeToString()``.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Iterator
from typing import NamedTuple

import numpy as np

# ONNX TensorProto.DataType -> numpy dtype (little-endian, as raw_data stores it).
DATA_TYPES = {
    1: np.dtype("<f4"),
    2: np.dtype("u1"),
    3: np.dtype("i1"),
    4: np.dtype("<u2"),
    5: np.dtype("<i2"),
    6: np.dtype("<i4"),
    7: np.dtype("<i8"),
    9: np.dtype("?"),
    10: np.dtype("<f2"),
    11: np.dtype("<f8"),
    12: np.dtype("<u4"),
    13: np.dtype("<u8"),
}
_CODES = {dtype.newbyteorder("="): code for code, dtype in DATA_TYPES.items()}
# Which typed field holds the values of each data type when raw_data is absent.
_TYPED_FIELD = {1: 4, 11: 10, 7: 7, 12: 11, 13: 11, **{code: 5 for code in (2, 3, 4, 5, 6, 9, 10)}}
VARINT, FIXED64, LENGTH, FIXED32 = 0, 1, 2, 5
_MASK64 = (1 << 64) - 1


class TensorProtoError(ValueError):
    """A file is not a TensorProto this codec reads (truncated, another message, unsupported type)."""


class Tensor(NamedTuple):
    """A decoded tensor: its name (may be empty) and its values."""

    name: str
    array: np.ndarray


# -- protobuf wire format -------------------------------------------------------------------------
def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data):
            raise TensorProtoError("truncated protobuf varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value & _MASK64, pos
        shift += 7
        if shift >= 70:
            raise TensorProtoError("malformed protobuf varint")


def fields(data: bytes) -> Iterator[tuple[int, int, int | bytes]]:
    """Yield (field number, wire type, value) of a protobuf message: ints for scalars, bytes for the rest."""
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise TensorProtoError("malformed protobuf: field number 0")
        if wire == VARINT:
            value, pos = _varint(data, pos)
        elif wire in (FIXED64, FIXED32, LENGTH):
            if wire == LENGTH:
                size, pos = _varint(data, pos)
            else:
                size = 8 if wire == FIXED64 else 4
            if pos + size > len(data):
                raise TensorProtoError("truncated protobuf message")
            value = (
                data[pos : pos + size] if wire == LENGTH else int.from_bytes(data[pos : pos + size], "little")
            )
            pos += size
        else:
            raise TensorProtoError(f"unsupported protobuf wire type {wire}")
        yield number, wire, value


def _signed(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def _key(number: int, wire: int) -> bytes:
    return _encode_varint(number << 3 | wire)


def _encode_varint(value: int) -> bytes:
    value &= _MASK64
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


# -- TensorProto ----------------------------------------------------------------------------------
def encode_tensor(array: np.ndarray, *, name: str = "") -> bytes:
    """Serialize ``array`` as a TensorProto with ``raw_data`` (little-endian)."""
    array = np.asarray(array)
    code = _CODES.get(array.dtype.newbyteorder("="))
    if code is None:
        raise TensorProtoError(f"cannot write dtype {array.dtype}; supported: {_supported()}")
    parts = [_key(1, VARINT) + _encode_varint(dim) for dim in array.shape]
    parts.append(_key(2, VARINT) + _encode_varint(code))
    if name:
        encoded = name.encode()
        parts.append(_key(8, LENGTH) + _encode_varint(len(encoded)) + encoded)
    raw = np.ascontiguousarray(array, dtype=DATA_TYPES[code]).tobytes()
    parts.append(_key(9, LENGTH) + _encode_varint(len(raw)) + raw)
    return b"".join(parts)


def decode_tensor(data: bytes) -> Tensor:
    """Parse a serialized TensorProto into (name, array) with the tensor's dtype and shape."""
    dims: list[int] = []
    code, name, raw = None, "", None
    typed: dict[int, list] = {}
    for number, wire, value in fields(data):
        if number == 1:
            dims.extend(_ints(wire, value))
        elif number == 2 and wire == VARINT:
            code = value
        elif number == 8 and wire == LENGTH:
            name = value.decode("utf-8", errors="replace")
        elif number == 9 and wire == LENGTH:
            raw = value
        elif number in (4, 5, 7, 10, 11):
            typed.setdefault(number, []).append((wire, value))
        elif number == 14 and value == 1:
            raise TensorProtoError("tensors with external data are not supported")
    if code not in DATA_TYPES:
        raise TensorProtoError(
            f"unsupported or missing TensorProto data_type {code}; supported: {_supported()}"
        )
    if any(d < 0 or d >= 1 << 62 for d in dims):
        raise TensorProtoError(f"invalid dims {dims}")
    dtype = DATA_TYPES[code]
    count = int(np.prod(dims, dtype=np.int64))
    flat = _from_raw(raw, dtype, count) if raw is not None else _from_typed(typed, code, dtype)
    if flat.size != count:
        raise TensorProtoError(f"tensor {name!r} has {flat.size} values, its dims {dims} need {count}")
    return Tensor(name, flat.reshape(dims).astype(dtype.newbyteorder("="), copy=True))


def _ints(wire: int, value: int | bytes) -> list[int]:
    """The int64 values of a varint field, packed or not."""
    if wire == VARINT:
        return [_signed(value)]
    if wire != LENGTH:
        raise TensorProtoError(f"unexpected wire type {wire} for an integer field")
    out, pos = [], 0
    while pos < len(value):
        item, pos = _varint(value, pos)
        out.append(_signed(item))
    return out


def _from_raw(raw: bytes, dtype: np.dtype, count: int) -> np.ndarray:
    if len(raw) != count * dtype.itemsize:
        raise TensorProtoError(f"raw_data holds {len(raw)} bytes, expected {count * dtype.itemsize}")
    return np.frombuffer(raw, dtype=dtype)


def _from_typed(typed: dict[int, list], code: int, dtype: np.dtype) -> np.ndarray:
    entries = typed.get(_TYPED_FIELD[code], [])
    if code in (1, 11):  # float_data / double_data: fixed-width, packed or not
        width = dtype.itemsize
        chunks = [v if w == LENGTH else int(v).to_bytes(width, "little") for w, v in entries]
        payload = b"".join(chunks)
        if len(payload) % width:
            raise TensorProtoError("truncated float data")
        return np.frombuffer(payload, dtype=dtype)
    values = [item for wire, value in entries for item in _ints(wire, value)]
    if code == 10:  # float16 is stored as its bit pattern in int32_data
        return np.array(values, dtype=np.uint16).view(dtype)
    if code in (12, 13):
        return np.array([v & _MASK64 for v in values], dtype=np.uint64).astype(dtype)
    return np.array(values, dtype=np.int64).astype(dtype)


def _supported() -> str:
    return ", ".join(str(dtype.newbyteorder("=")) for dtype in DATA_TYPES.values())


# -- files ----------------------------------------------------------------------------------------
def read_tensor(path: str | os.PathLike[str]) -> Tensor:
    """Read a TensorProto ``.pb`` file; raises TensorProtoError naming the file when it cannot."""
    path = pathlib.Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise TensorProtoError(f"cannot read tensor file {path}: {exc.strerror or exc}") from exc
    try:
        return decode_tensor(data)
    except TensorProtoError as exc:
        raise TensorProtoError(f"{path} is not a readable TensorProto file: {exc}") from exc
