"""A safetensors file as segments: its header bytes (kept verbatim, padding included) followed by
its tensors in data order, so that decompression rebuilds it byte for byte.

Whatever the header claims, reading it costs bounded time and memory: the header is capped, parsing
stops at the cap on the tensor count, nesting and ranks are capped.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import numpy as np

from zoo.dtypes import DTYPES, array_fits
from zoo.errors import InputError
from zoo.sources.segments import Segment, is_utf8

MAX_HEADER = 100 << 20
MAX_TENSORS = 262_144  # the largest real checkpoints hold a few ten thousand per file
MAX_RANK = 64 if int(np.__version__.split(".")[0]) >= 2 else 32  # numpy's limit (32 before 2.0), the format's (64)
LFS_POINTER = b"version https://git-lfs.github.com/spec/"


class _TooMany(Exception):
    """Raised from inside json.loads once a header holds more objects than the cap."""


class UnknownDtype(InputError):
    """A tensor of a dtype zoo has no table entry for (the file is then kept as opaque bytes)."""

    def __init__(self, message: str, dtype: str) -> None:
        super().__init__(message)
        self.dtype = dtype


def is_lfs_pointer(path: Path, size: int) -> bool:
    """Whether the file is a git-lfs pointer (the real file was never downloaded)."""
    if size > 1024:
        return False
    with open(path, "rb") as f:
        return f.read(len(LFS_POINTER)) == LFS_POINTER


def parse_safetensors(path: Path, size: int) -> list[Segment]:
    """Segments of a safetensors file, after checking its header against its size."""
    if is_lfs_pointer(path, size):
        raise InputError(f"{path}: git-lfs pointer: the real file was never downloaded")
    with open(path, "rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            raise InputError(f"{path}: too short to be a safetensors file")
        (header_length,) = struct.unpack("<Q", prefix)
        if header_length > size - 8:
            raise InputError(f"{path}: safetensors header length {header_length} runs past the end of the file ({size} bytes)")
        if header_length > MAX_HEADER:
            raise InputError(f"{path}: safetensors header of {header_length} bytes is over the {MAX_HEADER} cap")
        raw = f.read(header_length)
    objects = 0

    def counted(pairs: list[tuple[str, object]]) -> dict[str, object]:
        # Each tensor is one JSON object: stopping at the cap keeps a hostile header from costing
        # gigabytes of parsed JSON (and minutes) before it is refused.
        nonlocal objects
        objects += 1
        if objects > MAX_TENSORS + 1:  # the tensors (__metadata__ counted among them) and the header itself
            raise _TooMany
        return dict(pairs)

    try:
        header = json.loads(raw, object_pairs_hook=counted)
    except _TooMany:
        raise InputError(f"{path}: safetensors header declares over {MAX_TENSORS} tensors") from None
    except RecursionError:
        raise InputError(f"{path}: safetensors header nests too deep") from None
    except (ValueError, UnicodeDecodeError):
        raise InputError(f"{path}: safetensors header is not valid JSON") from None
    if not isinstance(header, dict):
        raise InputError(f"{path}: safetensors header is not a JSON object")
    data_start = 8 + header_length
    data_size = size - data_start
    tensors: list[Segment] = []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        where = f"{path}: tensor {name!r}"
        if not name.isascii() and not is_utf8(name):  # JSON's "\ud800": no name safetensors itself reads
            raise InputError(f"{where}: a name that is not UTF-8 (a lone surrogate escape)")
        if not isinstance(entry, dict):
            raise InputError(f"{where}: entry is not an object")
        dtype_name, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
        if dtype_name not in DTYPES:
            raise UnknownDtype(f"{where}: unknown dtype {dtype_name!r}", str(dtype_name))
        if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
            raise InputError(f"{where}: shape {shape!r} is not a list of non-negative integers")
        if len(shape) > MAX_RANK:
            raise InputError(f"{where}: shape of {len(shape)} dimensions is over the {MAX_RANK} cap")
        if not array_fits(shape, dtype_name):
            raise InputError(f"{where}: shape {shape} is too large for any array")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)):
            raise InputError(f"{where}: data_offsets {offsets!r} is not two integers")
        begin, end = offsets
        if not 0 <= begin <= end <= data_size:
            raise InputError(f"{where}: data_offsets {offsets} lie outside the data ({data_size} bytes)")
        bits = math.prod(shape) * DTYPES[dtype_name].bits
        if bits % 8:
            raise InputError(f"{where}: shape {shape} of {dtype_name} does not fill whole bytes")
        if end - begin != bits // 8:
            raise InputError(f"{where}: shape {shape} of {dtype_name} needs {bits // 8} bytes, data_offsets give {end - begin}")
        tensors.append(Segment(data_start + begin, end - begin, name, dtype_name, tuple(shape)))
    tensors.sort(key=lambda s: (s.offset, s.size))
    position = data_start
    for segment in tensors:
        if segment.offset < position:
            raise InputError(f"{path}: tensor {segment.tensor!r} overlaps the tensor before it")
        if segment.offset > position:
            raise InputError(f"{path}: {segment.offset - position} bytes before tensor {segment.tensor!r} belong to no tensor")
        position = segment.offset + segment.size
    if position != size:
        raise InputError(f"{path}: {size - position} bytes after the last tensor belong to no tensor")
    return [Segment(0, data_start), *tensors]
