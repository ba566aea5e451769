"""zstd: the zstandard entropy coder on one stream."""

from __future__ import annotations

import threading

import numpy as np
import zstandard

from zoo.errors import FormatError
from zoo.codecs.base import BytesCodec, Param

_local = threading.local()


def _compressor(level: int) -> zstandard.ZstdCompressor:
    # ZstdCompressor objects are not thread-safe; one per thread and level.
    cache = _local.__dict__.setdefault("compressors", {})
    if level not in cache:
        cache[level] = zstandard.ZstdCompressor(level=level)
    return cache[level]


class Zstd(BytesCodec):
    codec_id = "zstd"
    # zstd's own range: negative levels trade ratio for speed, 22 is its slowest.
    params = (Param("level", int, 3, -(1 << 17), zstandard.MAX_COMPRESSION_LEVEL, help="compression level"),)
    level: int

    def encode(self, data: bytes | np.ndarray) -> bytes:
        return _compressor(self.level).compress(data)

    def decode(self, data: bytes, decoded_size: int) -> bytes:
        try:
            out = zstandard.ZstdDecompressor().decompress(data, max_output_size=decoded_size)
        except zstandard.ZstdError as error:
            raise FormatError(f"zstd stream does not decode: {error}") from None
        if len(out) != decoded_size:
            raise FormatError(f"zstd stream decodes to {len(out)} bytes, expected {decoded_size}")
        return out
