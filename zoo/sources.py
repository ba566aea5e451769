"""What zoo compresses: a model folder or a single file, cut into segments.

A safetensors file becomes its header bytes (kept verbatim, padding included) followed by
its tensors in data order, so that decompression rebuilds it byte for byte. Every other file
is one blob segment. PyTorch pickles are checked with ``torch.load(weights_only=True)`` first
and refused if they need more.
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from .dtypes import DTYPES, get_dtype
from .errors import InputError

SAFETENSORS_MAX_HEADER = 100 << 20
TORCH_SUFFIXES = (".bin", ".pt", ".pth")
SKIPPED_FOLDERS = {".git", ".cache"}  # version control and huggingface_hub's download bookkeeping


@dataclass
class Segment:
    offset: int
    size: int
    tensor: str | None = None  # None: an opaque blob
    dtype: str = "U8"
    shape: tuple[int, ...] = ()


@dataclass
class SourceFile:
    relpath: str
    path: Path
    size: int
    kind: str = "blob"
    segments: list[Segment] = field(default_factory=list)


def check_relpath(relpath: str) -> str:
    """A path inside a model folder: relative, no '..', no empty or odd parts."""
    if not isinstance(relpath, str) or not relpath or "\\" in relpath or "\x00" in relpath:
        raise InputError(f"refusing file name {relpath!r}")
    posix = PurePosixPath(relpath)
    if posix.is_absolute() or any(part in ("", ".", "..") for part in relpath.split("/")):
        raise InputError(f"refusing file name {relpath!r}: it would land outside the output folder")
    return relpath


def parse_safetensors(path: Path, size: int) -> list[Segment]:
    """Segments of a safetensors file, after checking its header against its size."""
    with open(path, "rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            raise InputError(f"{path}: too short to be a safetensors file")
        (header_length,) = struct.unpack("<Q", prefix)
        if header_length > size - 8:
            raise InputError(f"{path}: safetensors header length {header_length} runs past the end of the file ({size} bytes)")
        if header_length > SAFETENSORS_MAX_HEADER:
            raise InputError(f"{path}: safetensors header of {header_length} bytes is over the {SAFETENSORS_MAX_HEADER} cap")
        raw = f.read(header_length)
    try:
        header = json.loads(raw)
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
        if not isinstance(entry, dict):
            raise InputError(f"{where}: entry is not an object")
        dtype_name, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
        if dtype_name not in DTYPES:
            raise InputError(f"{where}: unknown dtype {dtype_name!r}")
        if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
            raise InputError(f"{where}: shape {shape!r} is not a list of non-negative integers")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)):
            raise InputError(f"{where}: data_offsets {offsets!r} is not two integers")
        begin, end = offsets
        if not 0 <= begin <= end <= data_size:
            raise InputError(f"{where}: data_offsets {offsets} lie outside the data ({data_size} bytes)")
        dtype = get_dtype(dtype_name)
        expected = math.prod(shape) * dtype.bits // 8
        if end - begin != expected:
            raise InputError(f"{where}: shape {shape} of {dtype_name} needs {expected} bytes, data_offsets give {end - begin}")
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


def check_torch_pickle(path: Path) -> None:
    import pickle

    import torch  # only a torch checkpoint pays for importing torch

    try:
        torch.load(path, map_location="cpu", weights_only=True, mmap=False)
    except pickle.UnpicklingError as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else "unsupported content"
        raise InputError(f"{path}: refusing a pickle that needs more than torch.load(weights_only=True): {first}") from None
    except Exception as error:  # torch raises many types for a file that is not a checkpoint
        raise InputError(f"{path}: not a readable PyTorch checkpoint: {type(error).__name__}") from None


def _source_file(path: Path, relpath: str) -> SourceFile:
    size = path.stat().st_size
    if path.suffix == ".safetensors":
        return SourceFile(relpath, path, size, "safetensors", parse_safetensors(path, size))
    if path.suffix in TORCH_SUFFIXES:
        check_torch_pickle(path)
        return SourceFile(relpath, path, size, "torch", [Segment(0, size)])
    return SourceFile(relpath, path, size, "blob", [Segment(0, size)])


def scan(source: str | os.PathLike[str]) -> list[SourceFile]:
    """The files of a model folder (recursively, sorted) or a single file."""
    root = Path(source)
    if not root.exists():
        raise InputError(f"{root}: no such file or folder")
    if root.is_file():
        return [_source_file(root, check_relpath(root.name))]
    if not root.is_dir():
        raise InputError(f"{root}: neither a file nor a folder")
    files = []
    for folder, subfolders, names in os.walk(root, followlinks=False):
        subfolders[:] = sorted(d for d in subfolders if d not in SKIPPED_FOLDERS)
        for name in sorted(names):
            path = Path(folder) / name
            if not path.is_file():  # broken links, sockets, ...
                continue
            relpath = path.relative_to(root).as_posix()
            files.append(_source_file(path, check_relpath(relpath)))
    if not files:
        raise InputError(f"{root}: folder holds no files")
    return files
