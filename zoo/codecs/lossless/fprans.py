"""fprans: floats coded by an order-0 rANS model of their exponent and top mantissa bits.

Each float is rotated left one bit (sign lowest, as in bytegroup); its top bits (the exponent
and, for bf16 and fp32, two mantissa bits; for fp16 three) form one symbol, coded by rANS with a
table fitted to the chunk; the bits below are packed raw, without the trailing zero bits that
each block of 128 values shares (so fp32 holding bf16 values costs what bf16 does). Other types
are split into byte planes (as bytegroup does), each coded order-0; so is a chunk of floats where
that is smaller, which the coder asks only where one symbol holds a fifth of the words or more (a
constant tensor, zeros, a pruned one: their remainders are the same bits over and over, which the
words layout packs raw). Any section that would not shrink is stored raw. The stream format is in
docs/FORMAT.md; native/coder.c is the coder and zoo/kernels/fallback_coder.py its numpy twin.
"""

from __future__ import annotations

import struct

import numpy as np

from zoo import kernels as _kernels
from zoo.dtypes import get_dtype
from zoo.errors import FormatError
from zoo.codecs.base import GroupingCodec

WORDS, PLANES = 0, 1
# Top bits coded as one symbol: exponent plus the mantissa bits that still carry information
# (chosen by measuring the entropy of all-MiniLM-L6-v2 in each type).
SYMBOL_BITS = {"BF16": 10, "F16": 8, "F32": 10, "F8_E4M3": 8, "F8_E5M2": 8}
# A chunk of floats is also coded as byte planes, and the shorter kept, where its most frequent
# symbol has at least this share of the 4096 (a fifth). Dense weights' top symbol holds a tenth or
# less (all-MiniLM-L6-v2: at most 435 of 4096) and never pays for the second encoding (4x the
# first's time); at 50% zeros fp32 the planes are 30% shorter, for a constant 99.999%
# (docs/codecs.md). Trying every small chunk as well saved 0.004% of MiniLM and cost 5% of its
# encoding time (F16, F32).
SHARED_SYMBOL = 4096 // 5


def _layout(dtype: str) -> tuple[int, int]:
    """(layout, word bytes) for a dtype."""
    itemsize = get_dtype(dtype).itemsize
    return (WORDS, itemsize) if dtype in SYMBOL_BITS else (PLANES, itemsize)


class FpRans(GroupingCodec):
    codec_id = "fprans"

    def encode(self, chunk: np.ndarray, dtype: str) -> list[bytes]:
        words = self.encode_after(b"", chunk, dtype)
        return [words if words is not None else _planes(chunk, dtype)]

    def encode_after(self, header: bytes, chunk: np.ndarray, dtype: str) -> bytes | None:
        layout, word_bytes = _layout(dtype)
        if layout != WORDS:
            return None
        if header and len(header) < 8:
            raise ValueError("a header ends with its stream's two u32 lengths")
        lengths_at = len(header) - 8 if header else -1
        words = _kernels.encode_section(chunk, word_bytes, True, SYMBOL_BITS[dtype], prefix=header + bytes([WORDS]), lengths_at=lengths_at)
        if _top_frequency(words, len(header) + 1) < SHARED_SYMBOL:
            return words
        planes = _planes(chunk, dtype)
        if len(planes) >= len(words) - len(header):
            return words
        return header[:lengths_at] + struct.pack("<II", len(planes), len(planes)) + planes if header else planes

    def decode(self, streams: list[bytes], dtype: str, n_elements: int) -> np.ndarray:
        layout, word_bytes = _layout(dtype)
        if len(streams) != 1 or not streams[0] or streams[0][0] not in (layout, PLANES):  # floats may be either
            raise FormatError(f"fprans chunk does not hold a {dtype} layout")
        payload = streams[0]
        layout = payload[0]
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


def _planes(chunk: np.ndarray, dtype: str) -> bytes:
    """Layout 1: the chunk's byte planes, each a section of bytes."""
    planes = _kernels.split_planes(chunk, dtype)
    return bytes([PLANES, len(planes)]) + b"".join(_kernels.encode_section(plane, 1, False, 8) for plane in planes)


def _top_frequency(coded: bytes, at: int) -> int:
    """The largest of the 4096 frequencies of the section of words at `at` in `coded` (0 where it is
    stored verbatim). Its table's U pairs of LEB128 varints (symbol step, frequency - 1) are each at
    most two bytes, values below 4096: read with numpy, in half the time a Python loop took (9 us
    against 21 for a 4 MiB chunk's table, whose coding takes 450-900 us)."""
    if coded[at] == 0:
        return 0
    (count,) = struct.unpack_from("<H", coded, at + 2)
    if count == 1:
        return 4096
    table = np.frombuffer(coded, np.uint8, min(4 * count, len(coded) - at - 4), at + 4)
    ends = np.flatnonzero(table < 0x80)[1:2 * count:2]  # the last byte of each frequency
    first = table[ends - 1]  # its first byte where it has two (else the symbol step's last, below 0x80)
    high = table[ends].astype(np.int32)
    return int(np.where(first >= 0x80, (high << 7) | (first & 0x7F), high).max()) + 1
