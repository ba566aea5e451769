"""The kernel contract over zoo._native: the same checks and messages as zoo/kernels/fallback.py, then
one call into C (which checks its arguments again, and releases the GIL for the work)."""

from __future__ import annotations

import numpy as np

from zoo.kernels import fallback as _fallback  # type: ignore[attr-defined]

from zoo import _native
from zoo.dtypes import FLOAT_DTYPES, get_dtype

_KIND = {"F32": 0, "F16": 1, "BF16": 2}
_OUT = {"F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "BF16": np.dtype("<u2")}


def _bytes_of(buffer: bytearray) -> np.ndarray:
    return np.frombuffer(buffer, dtype=np.uint8)


def split_planes(chunk: np.ndarray, dtype: str) -> list[np.ndarray]:
    chunk = _fallback._as_bytes(chunk, "chunk")
    itemsize = get_dtype(dtype).itemsize
    if itemsize not in (1, 2, 4, 8):
        return [chunk.copy()]
    if len(chunk) % itemsize:
        raise ValueError(f"chunk of {len(chunk)} bytes is not whole {dtype} elements")
    return [_bytes_of(plane) for plane in _native.split_planes(chunk, itemsize, dtype in FLOAT_DTYPES)]


def merge_planes(planes: list[np.ndarray], dtype: str) -> np.ndarray:
    planes = [_fallback._as_bytes(plane, "plane") for plane in planes]
    itemsize = get_dtype(dtype).itemsize
    expected = itemsize if itemsize in (1, 2, 4, 8) else 1
    if len(planes) != expected or len({len(plane) for plane in planes}) > 1:
        raise ValueError(f"{dtype} takes {expected} planes of one length, got {[len(p) for p in planes]}")
    if itemsize not in (1, 2, 4, 8):
        return planes[0].copy()
    return _bytes_of(_native.merge_planes(planes, itemsize, dtype in FLOAT_DTYPES))


def pack_indices(indices: np.ndarray, bits: int) -> np.ndarray:
    indices, bits = _fallback.checked_indices(indices, bits)
    return _bytes_of(_native.pack_indices(indices, indices.itemsize, bits))


def unpack_indices(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
    bits = _fallback._check_bits(bits)
    packed = _fallback._as_bytes(packed, "packed")
    if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 0:
        raise ValueError(f"count must be a non-negative integer, got {count!r}")
    count = int(count)
    if len(packed) < _fallback.packed_size(count, bits):
        raise ValueError(f"{count} indices of {bits} bits need {_fallback.packed_size(count, bits)} bytes, got {len(packed)}")
    return np.frombuffer(_native.unpack_indices(packed, bits, count), dtype=np.uint8 if bits <= 8 else np.uint16)


def dequantize(packed: np.ndarray, bits: int, rows: int, cols: int, row_codebook: np.ndarray,
               codebooks: np.ndarray, dtype: str) -> np.ndarray:
    packed, bits, rows, cols, row_codebook, codebooks = _fallback.check_dequantize(packed, bits, rows, cols, row_codebook, codebooks, dtype)
    out = _native.dequantize(packed, bits, rows, cols, row_codebook, codebooks, codebooks.shape[0], _KIND[dtype])
    return np.frombuffer(out, dtype=_OUT[dtype]).reshape(rows, cols)


def philox_uniform(seed: int, stream: int, count: int, offset: int = 0) -> np.ndarray:
    seed, stream, count, offset = _fallback.check_philox(seed, stream, count, offset)
    return np.frombuffer(_native.philox_uniform(seed, stream, count, offset), dtype=np.float32)


def product(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    left, right = _fallback.check_product(left, right)
    (rows, rank), cols = left.shape, right.shape[1]
    return np.frombuffer(_native.product(left, right, rows, rank, cols), dtype=np.float32).reshape(rows, cols)


def crc32(data: bytes | memoryview | np.ndarray, value: int = 0) -> int:
    return _native.crc32(data, value)


def encode_section(words: np.ndarray | bytes | memoryview, word_bytes: int, is_float: bool, symbol_bits: int, prefix: bytes = b"",
                   lengths_at: int = -1) -> bytes:
    return _native.encode_section(words, word_bytes, is_float, symbol_bits, prefix, lengths_at)


def decode_section(payload: bytes | memoryview, offset: int, count: int, word_bytes: int, is_float: bool) -> tuple[np.ndarray, int]:
    out, end = _native.decode_section(payload, offset, count, word_bytes, is_float)
    return _bytes_of(out), end
