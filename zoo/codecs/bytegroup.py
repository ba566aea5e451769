"""bytegroup: split each element into byte planes, most significant first.

Floats are first rotated left by one bit so that the sign moves to the lowest bit and the
exponent fills the top byte (bf16 and fp32: the whole exponent; fp16: exponent and 3 mantissa
bits). The exponent plane then carries the low entropy an entropy coder can take, while the
mantissa planes, close to random, are usually stored raw.
"""

from __future__ import annotations

import numpy as np

from ..dtypes import FLOAT_DTYPES, get_dtype
from .base import GroupingCodec

_WORD = {1: np.uint8, 2: np.dtype("<u2"), 4: np.dtype("<u4"), 8: np.dtype("<u8")}


def _rotates(dtype: str) -> bool:
    return dtype in FLOAT_DTYPES


def split_planes(chunk: np.ndarray, dtype: str) -> list[np.ndarray]:
    """Byte planes of a chunk of raw storage bytes (uint8, whole elements)."""
    itemsize = get_dtype(dtype).itemsize
    if itemsize not in _WORD:
        return [chunk]
    words = chunk.view(_WORD[itemsize])
    if _rotates(dtype):
        bits = itemsize * 8
        words = (words << words.dtype.type(1)) | (words >> words.dtype.type(bits - 1))
    if itemsize == 1:
        return [np.ascontiguousarray(words)]
    as_bytes = words.view(np.uint8).reshape(-1, itemsize)
    return [np.ascontiguousarray(as_bytes[:, itemsize - 1 - plane]) for plane in range(itemsize)]


def merge_planes(planes: list[np.ndarray], dtype: str) -> np.ndarray:
    """Inverse of split_planes: the raw storage bytes."""
    itemsize = get_dtype(dtype).itemsize
    if itemsize not in _WORD:
        return planes[0]
    if itemsize == 1:
        words = planes[0].copy()
    else:
        as_bytes = np.empty((len(planes[0]), itemsize), dtype=np.uint8)
        for plane, values in enumerate(planes):
            as_bytes[:, itemsize - 1 - plane] = values
        words = as_bytes.reshape(-1).view(_WORD[itemsize])
    if _rotates(dtype):
        bits = itemsize * 8
        words = (words >> words.dtype.type(1)) | (words << words.dtype.type(bits - 1))
    return words.view(np.uint8).reshape(-1)


class ByteGroup(GroupingCodec):
    codec_id = "bytegroup"

    def __init__(self) -> None:
        pass

    def encode(self, chunk: np.ndarray, dtype: str) -> list[np.ndarray]:
        return split_planes(chunk, dtype)

    def decode(self, streams: list[bytes], dtype: str, n_elements: int) -> np.ndarray:
        planes = [np.frombuffer(stream, dtype=np.uint8) for stream in streams]
        return merge_planes(planes, dtype)

    def stream_sizes(self, dtype: str, n_elements: int) -> list[int]:
        itemsize = get_dtype(dtype).itemsize
        if itemsize not in _WORD:
            return [n_elements * itemsize]
        if itemsize == 1:
            return [n_elements]
        return [n_elements] * itemsize
