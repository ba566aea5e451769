"""rans: order-0 rANS over the bytes of one stream (the byte section of docs/FORMAT.md).

A bytes stage for any grouping, such as `bytegroup|rans`: faster than zstd to decode and as
tight on exponent planes, with no dictionary to find repeats (zstd still wins on those).
"""

from __future__ import annotations

import numpy as np

from zoo import kernels as _kernels
from zoo.errors import FormatError
from zoo.codecs.base import BytesCodec


class Rans(BytesCodec):
    codec_id = "rans"

    def encode(self, data: bytes | np.ndarray | memoryview) -> bytes:
        return _kernels.encode_section(data, 1, False, 8)

    def decode(self, data: bytes, decoded_size: int) -> bytes:
        try:
            out, end = _kernels.decode_section(data, 0, decoded_size, 1, False)
        except ValueError as error:
            raise FormatError(f"rans stream does not decode: {error}") from None
        if end != len(data):
            raise FormatError("rans stream has trailing bytes")
        return out.tobytes()
