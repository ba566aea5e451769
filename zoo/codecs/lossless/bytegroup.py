"""bytegroup: split each element into byte planes, most significant first.

Floats are first rotated left by one bit so that the sign moves to the lowest bit and the
exponent fills the top byte (bf16 and fp32: the whole exponent; fp16: exponent and 3 mantissa
bits). The exponent plane then carries the low entropy an entropy coder can take, while the
mantissa planes, close to random, are usually stored raw.
"""

from __future__ import annotations

import numpy as np

from zoo import kernels as _kernels
from zoo.dtypes import get_dtype
from zoo.codecs.base import GroupingCodec

_WORD_SIZES = (1, 2, 4, 8)


class ByteGroup(GroupingCodec):
    codec_id = "bytegroup"

    def encode(self, chunk: np.ndarray, dtype: str) -> list[np.ndarray]:
        return _kernels.split_planes(chunk, dtype)

    def decode(self, streams: list[bytes], dtype: str, n_elements: int) -> np.ndarray:
        planes = [np.frombuffer(stream, dtype=np.uint8) for stream in streams]
        return _kernels.merge_planes(planes, dtype)

    def stream_sizes(self, dtype: str, n_elements: int) -> list[int]:
        itemsize = get_dtype(dtype).itemsize
        if itemsize not in _WORD_SIZES:
            return [n_elements * itemsize]
        if itemsize == 1:
            return [n_elements]
        return [n_elements] * itemsize
