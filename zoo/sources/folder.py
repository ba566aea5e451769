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

from zoo.dtypes import DTYPES, get_dtype
from zoo.errors import InputError

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


def torch_segments(path: Path, size: int) -> list[Segment]:
    """Segments of a PyTorch checkpoint, after checking it loads with weights_only=True.

    A zip checkpoint stores each storage uncompressed as its own member; those become typed
    segments (so floats get their byte planes grouped) and everything else stays a blob, which
    keeps the file byte-exact. Any other layout is one blob."""
    import zipfile

    storage_dtypes = _check_torch_pickle(path)
    if not storage_dtypes:
        return [Segment(0, size)]
    with zipfile.ZipFile(path) as archive, open(path, "rb") as f:
        typed = []
        for member in archive.infolist():
            folder, _, key = member.filename.rpartition("/")
            dtype = storage_dtypes.get(key)
            if not folder.endswith("data") or dtype is None or member.compress_type != zipfile.ZIP_STORED:
                continue
            f.seek(member.header_offset + 26)
            name_length, extra_length = struct.unpack("<HH", f.read(4))
            start = member.header_offset + 30 + name_length + extra_length
            itemsize = DTYPES[dtype].itemsize
            if member.file_size % itemsize == 0 and start + member.file_size <= size:
                typed.append(Segment(start, member.file_size, None, dtype, (member.file_size // itemsize,)))
    segments, position = [], 0
    for segment in sorted(typed, key=lambda s: s.offset):
        if segment.offset < position:
            return [Segment(0, size)]  # overlapping members: keep the file whole
        if segment.offset > position:
            segments.append(Segment(position, segment.offset - position))
        segments.append(segment)
        position = segment.offset + segment.size
    if position < size:
        segments.append(Segment(position, size - position))
    return segments


def _check_torch_pickle(path: Path) -> dict[str, str]:
    """Check the checkpoint with torch's weights_only unpickler; returns the dtype name of each
    storage key of a zip checkpoint (empty for the legacy layout)."""
    import pickle
    import zipfile

    import torch  # only a torch checkpoint pays for importing torch

    try:
        if not zipfile.is_zipfile(path):
            torch.load(path, map_location="cpu", weights_only=True)
            return {}
        return _zip_storage_dtypes(path)
    except pickle.UnpicklingError as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else "unsupported content"
        raise InputError(f"{path}: refusing a pickle that needs more than torch.load(weights_only=True): {first}") from None
    except Exception as error:  # torch raises many types for a file that is not a checkpoint
        raise InputError(f"{path}: not a readable PyTorch checkpoint: {type(error).__name__}: {error}") from None


def _zip_storage_dtypes(path: Path) -> dict[str, str]:
    """Run torch's weights_only unpickler over data.pkl, recording each storage's key and dtype
    instead of reading it: the allowlist is enforced without loading the weights."""
    import io
    import zipfile

    import torch
    from torch._weights_only_unpickler import Unpickler

    from zoo.torch_bridge import dtype_name

    with zipfile.ZipFile(path) as archive:
        pickles = [name for name in archive.namelist() if name.endswith("data.pkl") and name.count("/") == 1]
        if len(pickles) != 1:
            raise ValueError("expected one data.pkl")
        data = archive.read(pickles[0])
    dtypes: dict[str, str] = {}

    def persistent_load(saved_id: tuple) -> object:
        if not isinstance(saved_id, tuple) or len(saved_id) != 5:
            raise ValueError("unexpected storage reference")
        _, storage_type, key, _, numel = saved_id
        dtype = torch.uint8 if storage_type is torch.UntypedStorage else storage_type.dtype
        dtypes[str(key)] = dtype_name(dtype)
        # Unbacked until touched: rebuilding tensors over it costs no memory.
        untyped = torch.UntypedStorage(int(numel) * torch._utils._element_size(dtype))
        return torch.storage.TypedStorage(wrap_storage=untyped, dtype=dtype, _internal=True)

    unpickler = Unpickler(io.BytesIO(data), encoding="utf-8")
    unpickler.persistent_load = persistent_load
    unpickler.load()
    return dtypes


def _source_file(path: Path, relpath: str) -> SourceFile:
    size = path.stat().st_size
    if path.suffix == ".safetensors":
        return SourceFile(relpath, path, size, "safetensors", parse_safetensors(path, size))
    if path.suffix in TORCH_SUFFIXES:
        return SourceFile(relpath, path, size, "torch", torch_segments(path, size))
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
