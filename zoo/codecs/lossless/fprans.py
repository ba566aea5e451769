"""fprans: floats coded by an order-0 rANS model of their exponent and top mantissa bits.

Each float is rotated left one bit (sign lowest, as in bytegroup); its top bits (the exponent
and, for bf16 and fp32, two mantissa bits; for fp16 three) form one symbol, coded by rANS with a
table fitted to the chunk; the bits below are packed raw, without the trailing zero bits that
each block of 128 values shares (so fp32 holding bf16 values costs what bf16 does). Other types
are split into byte planes (as bytegroup does), each coded order-0. Any section that would not
shrink is stored raw. The stream format is in docs/FORMAT.md; native/coder.c is the coder and
zoo/kernels/fallback_coder.py its numpy twin.
"""

from __future__ import annotations

import numpy as np

from zoo import kernels as _kernels
from zoo.dtypes import get_dtype
from zoo.errors import FormatError
from zoo.codecs.base import GroupingCodec

WORDS, PLANES = 0, 1
# Top bits coded as one symbol: exponent plus the mantissa bits that still carry information
# (chosen by measuring the entropy of all-MiniLM-L6-v2 in each type).
SYMBOL_BITS = {"BF16": 10, "F16": 8, "F32": 10, "F8_E4M3": 8, "F8_E5M2": 8}


def _layout(dtype: str) -> tuple[int, int]:
    """(layout, word bytes) for a dtype."""
    itemsize = get_dtype(dtype).itemsize
    return (WORDS, itemsize) if dtype in SYMBOL_BITS else (PLANES, itemsize)


class FpRans(GroupingCodec):
    codec_id = "fprans"

    def encode(self, chunk: np.ndarray, dtype: str) -> list[bytes]:
        words = self.encode_after(b"", chunk, dtype)
        if words is not None:
            return [words]
        planes = _kernels.split_planes(chunk, dtype)
        return [bytes([PLANES, len(planes)]) + b"".join(_kernels.encode_section(plane, 1, False, 8) for plane in planes)]

    def encode_after(self, header: bytes, chunk: np.ndarray, dtype: str) -> bytes | None:
        layout, word_bytes = _layout(dtype)
        if layout != WORDS:
            return None
        if header and len(header) < 8:
            raise ValueError("a header ends with its stream's two u32 lengths")
        lengths_at = len(header) - 8 if header else -1
        return _kernels.encode_section(chunk, word_bytes, True, SYMBOL_BITS[dtype], prefix=header + bytes([WORDS]), lengths_at=lengths_at)

    def decode(self, streams: list[bytes], dtype: str, n_elements: int) -> np.ndarray:
        layout, word_bytes = _layout(dtype)
        if len(streams) != 1 or not streams[0] or streams[0][0] != layout:
            raise FormatError(f"fprans chunk does not hold a {dtype} layout")
        payload = streams[0]
        try:
            if layout == WORDS:
                out, end = _kernels.decode_section(payload, 1, n_elements, word_bytes, True)
            else:
                n_planes = word_bytes if word_bytes in (1, 2, 4, 8) else 1
                if len(payload) < 2 or payload[1] != n_planes:
                    raise ValueError(f"chunk holds the wrong number of byte planes for {dtype}")
                planes, end = [], 2
                for _ in range(n_planes):
                    plane, end = _kernels.decode_section(payload, end, n_elements * word_bytes // n_planes, 1, False)
                    planes.append(plane)
                out = _kernels.merge_planes(planes, dtype)
        except ValueError as error:
            raise FormatError(f"fprans chunk does not decode: {error}") from None
        if end != len(payload):
            raise FormatError("fprans chunk has trailing bytes")
        return out
