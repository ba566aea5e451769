"""A PyTorch checkpoint (.bin, .pt, .pth, .ckpt; zip or legacy layout) as named tensors.

The checkpoint's pickle is run through torch's own weights-only unpickler, with storages that
are placeholders on the meta device: the allowlist is enforced and every tensor's name, storage,
offset, shape and stride are learnt without reading a weight or executing anything. Each storage
is then found in the file (a zip member stored uncompressed, or a run of the legacy stream) and
becomes a segment named after the tensor that covers it whole; tensors that view part of a storage,
or share it (tied weights), are recorded as views of that segment. Everything else (the pickle, zip
headers) stays opaque bytes, so the file is rebuilt byte for byte.

The layout is decided as torch decides it (a zip only when the file starts with a zip local
header), so a file torch would read as a pickle is never called a zip checkpoint here.
"""

from __future__ import annotations

import io
import math
import pickle
import re
import struct
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from zoo.errors import InputError, ZooWarning
from zoo.sources.segments import Segment, SourceFile, is_utf8

SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
MAX_PICKLE = 64 << 20  # about 100 bytes a tensor: room for half a million tensors in one file
MAX_DEPTH = 64
# A storage only viewed in part is a flat tensor named for its first tensor (NAME.__storage__), or
# for its key when no tensor of a known dtype uses it (docs/FORMAT.md)
STORAGE_SUFFIX = ".__storage__"
STORAGE_PREFIX = "__storage__."
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_ZIP_MAGIC = b"PK\x03\x04"


class UnsafePickle(InputError):
    """A pickle that torch.load(weights_only=True) does not read: one that needs globals
    (`needs_globals`), or one of an opcode it does not take, or no pickle at all."""

    def __init__(self, message: str, needs_globals: bool) -> None:
        super().__init__(message)
        self.needs_globals = needs_globals


@dataclass
class _Tensor:
    name: str
    storage: str
    dtype: str
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    offset: int
    weight: bool


def unreadable(path: Path, error: Exception) -> InputError:
    """The error for a file torch could not read as a checkpoint. One that starts as no pickle of
    protocol 2 or later does (text, another format) is said to be none, rather than by what the
    unpickler made of its first bytes ("KeyError: 101"): a legacy checkpoint starts with its
    magic number, pickled so (torch.load(weights_only=True) reads no older protocol)."""
    with open(path, "rb") as f:
        start = f.read(2)
    # an empty file is said to end early, a damaged or cut zip by what its reader found
    if start[:1] not in (pickle.PROTO, b"") and start != _ZIP_MAGIC[:2]:
        return InputError(f"{path}: neither a zip nor a legacy PyTorch checkpoint (no pickle of protocol 2 or later at its start)")
    return InputError(f"{path}: not a readable PyTorch checkpoint: {_described(error)}")


def checkpoint(path: Path, relpath: str, size: int) -> SourceFile:
    """The file as a torch checkpoint; InputError (UnsafePickle for the allowlist) when it is not one."""
    import torch  # noqa: F401 - without torch, the CLI names the extra to install before anything is read

    with open(path, "rb") as f:
        is_zip = f.read(4) == _ZIP_MAGIC  # exactly torch's own test (torch.serialization._is_zipfile)
    try:
        if is_zip:
            return _zip_checkpoint(path, relpath, size)
        return _legacy_checkpoint(path, relpath, size)
    except InputError:
        raise
    except pickle.UnpicklingError as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else "unsupported content"
        first = re.split(r"\s+(?:Please|Check|You can)\b", first)[0]  # torch's advice is for code that calls torch.load
        if "global" in first.lower():  # torch's "Unsupported global: GLOBAL module.name ..."
            raise UnsafePickle(f"{path}: refusing a pickle that needs more than torch.load(weights_only=True): {first}", True) from None
        # an opcode the weights-only reader does not take (pickle protocol 4's FRAME), or no pickle at all
        raise UnsafePickle(f"{path}: not a pickle torch.load(weights_only=True) reads: {first}", False) from None
    except ImportError:
        raise
    except Exception as error:  # noqa: BLE001 - torch and zipfile raise many types for a file that is not a checkpoint
        raise unreadable(path, error) from None


def _described(error: Exception) -> str:
    """An error of torch or zipfile in one short line: torch's own run to dozens of lines."""
    first = str(error).strip().split("\n")[0]
    first = re.split(r"(?<=\.)\s", first)[0][:200]
    if first:
        return f"{type(error).__name__}: {first}"
    return f"{type(error).__name__} (the file ends early)" if isinstance(error, EOFError) else type(error).__name__


class _Storages:
    """persistent_load for the weights-only unpickler: a meta-device placeholder per storage key."""

    def __init__(self) -> None:
        import torch

        self.torch = torch
        self.by_key: dict[str, Any] = {}
        self.dtypes: dict[str, str] = {}
        self.numel: dict[str, int] = {}  # elements of the storage's own dtype, as pickled
        self.nbytes: dict[str, int] = {}

    def __call__(self, saved_id: Any) -> Any:
        torch = self.torch
        if not isinstance(saved_id, tuple) or len(saved_id) not in (5, 6) or saved_id[0] != "storage":
            raise pickle.UnpicklingError("unexpected storage reference")
        storage_type, key, numel = saved_id[1], str(saved_id[2]), int(saved_id[4])
        if len(saved_id) == 6 and saved_id[5] is not None:
            raise pickle.UnpicklingError("legacy storage views are not supported")
        if key not in self.by_key:
            dtype = torch.uint8 if storage_type is torch.UntypedStorage else storage_type.dtype
            nbytes = numel * torch._utils._element_size(dtype)
            untyped = torch.UntypedStorage(nbytes, device="meta")
            self.by_key[key] = torch.storage.TypedStorage(wrap_storage=untyped, dtype=dtype, _internal=True)
            # a dtype zoo has no name for (complex128) is kept as its bytes
            self.dtypes[key], self.numel[key], self.nbytes[key] = _zoo_dtype(dtype) or "U8", numel, nbytes
        return self.by_key[key]


def _zoo_dtype(dtype: Any) -> str | None:
    """zoo's name of a torch dtype, or None where it has none (complex128, complex32, bits8)."""
    from zoo.torch_bridge import dtype_name

    name = dtype_name(dtype)
    return name if name != "U8" or str(dtype) == "torch.uint8" else None


def _unpickle(stream: BinaryIO, storages: _Storages | None = None) -> Any:
    from torch._weights_only_unpickler import Unpickler

    unpickler = Unpickler(stream, encoding="utf-8")
    if storages is not None:
        unpickler.persistent_load = storages
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torch's note on pickle protocols: the file is kept whatever it is
        return unpickler.load()


def _named_tensors(obj: Any, storages: _Storages, path: Path) -> list[_Tensor]:
    """Every tensor in the unpickled object, named by its path of keys (`state.0.exp_avg`)."""
    torch = storages.torch
    found: list[_Tensor] = []
    by_storage: dict[int, str] = {storage._untyped_storage._cdata: key for key, storage in storages.by_key.items()}

    def walk(node: Any, prefix: str, depth: int, weight: bool) -> None:
        if depth > MAX_DEPTH:
            raise InputError(f"{path}: checkpoint nests deeper than {MAX_DEPTH} levels")
        if isinstance(node, torch.Tensor):
            key = by_storage.get(node.untyped_storage()._cdata)
            if key is not None:
                found.append(_Tensor(prefix, key, _zoo_dtype(node.dtype) or str(node.dtype), tuple(node.shape), tuple(node.stride()),
                                     node.storage_offset(), weight))
            else:  # pickled without a storage: a tensor on the meta device, which holds no values
                valueless.append(prefix)
        elif isinstance(node, dict):
            # An optimizer's state_dict: its moments are not model weights.
            optimizer = weight and "state" in node and "param_groups" in node
            for key, child in node.items():
                walk(child, f"{prefix}.{key}" if prefix else str(key), depth + 1, weight and not optimizer)
        elif isinstance(node, (list, tuple)):
            for index, child in enumerate(node):
                walk(child, f"{prefix}.{index}" if prefix else str(index), depth + 1, weight)

    valueless: list[str] = []
    walk(obj, "", 0, True)
    if valueless:
        shown = ", ".join(valueless[:8]) + (f" and {len(valueless) - 8} more" if len(valueless) > 8 else "")
        warnings.warn(f"{path}: {shown} (on the meta device: no values) kept in the file's bytes only, not as "
                      f"{'a tensor' if len(valueless) == 1 else 'tensors'}", ZooWarning, stacklevel=2)
    for tensor in found:
        if not tensor.name.isascii() and not is_utf8(tensor.name):  # a key such as "\ud800": no name an archive can hold
            raise InputError(f"{path}: checkpoint names a tensor {tensor.name!r}, which is not UTF-8 (a lone surrogate)")
    # {"a.b": x, "a": {"b": y}} gives two paths the same name: the later ones get "#2", "#3"...
    seen: dict[str, int] = {}
    for tensor in found:
        base = tensor.name
        while tensor.name in seen:
            seen[base] = seen.get(base, 1) + 1
            tensor.name = f"{base}#{seen[base]}"
        seen.setdefault(tensor.name, 1)
    return found


def _data_offset(f: BinaryIO, member: zipfile.ZipInfo) -> int:
    """Where a zip member's bytes start: after its local header, whose name and extra field may
    differ in length from the central directory's."""
    f.seek(member.header_offset + 26)
    name_length, extra_length = struct.unpack("<HH", f.read(4))
    return member.header_offset + 30 + name_length + extra_length


def _member_bytes(archive: zipfile.ZipFile, f: BinaryIO, member: zipfile.ZipInfo, limit: int) -> bytes:
    """Up to `limit` + 1 bytes of a member. A stored one is read from its place, as torch reads it,
    unchecked against its CRC-32: `torch.save` with `compute_crc32=False` writes zeros there, and
    zipfile refused such a file as damaged."""
    if member.compress_type != zipfile.ZIP_STORED:
        with archive.open(member) as opened:
            return opened.read(limit + 1)
    f.seek(_data_offset(f, member))
    return f.read(min(member.file_size, limit + 1))


def _zip_checkpoint(path: Path, relpath: str, size: int) -> SourceFile:
    with zipfile.ZipFile(path) as archive, open(path, "rb") as f:
        pickles = [info for info in archive.infolist() if info.filename.endswith("/data.pkl") and info.filename.count("/") == 1]
        if len(pickles) != 1:
            raise InputError(f"{path}: a zip checkpoint holds one data.pkl, this one {len(pickles)}")
        if pickles[0].file_size > MAX_PICKLE:
            raise InputError(f"{path}: data.pkl of {pickles[0].file_size} bytes is over the {MAX_PICKLE} cap")
        data = _member_bytes(archive, f, pickles[0], MAX_PICKLE)  # the declared size may lie
        if len(data) > MAX_PICKLE:
            raise InputError(f"{path}: data.pkl inflates past the {MAX_PICKLE} cap")
        folder = pickles[0].filename.rpartition("/")[0]
        byteorder = next((info for info in archive.infolist() if info.filename == f"{folder}/byteorder"), None)
        if byteorder is not None:  # none: written little-endian, before torch said
            _little_endian(path, _member_bytes(archive, f, byteorder, 16).strip() == b"little")
        storages = _Storages()
        tensors = _named_tensors(_unpickle(io.BytesIO(data), storages), storages, path)
        placed: dict[str, tuple[int, int]] = {}
        for member in archive.infolist():
            parent, _, key = member.filename.rpartition("/")
            if parent != f"{folder}/data" or key not in storages.dtypes:
                continue
            if member.compress_type != zipfile.ZIP_STORED:
                continue  # stays inside the opaque bytes
            placed[key] = (_data_offset(f, member), member.file_size)
    return _source(path, relpath, size, storages, tensors, placed)


def _legacy_checkpoint(path: Path, relpath: str, size: int) -> SourceFile:
    with open(path, "rb") as f:
        # its magic number is a pickle of protocol 2: a file that starts otherwise (text, another
        # format) is none, said so rather than by what the unpickler made of its first bytes
        if _unpickle(f) != _LEGACY_MAGIC:
            raise InputError(f"{path}: neither a zip nor a legacy PyTorch checkpoint")
        _unpickle(f)  # protocol version
        sys_info = _unpickle(f)
        _little_endian(path, not (isinstance(sys_info, dict) and sys_info.get("little_endian") is False))
        storages = _Storages()
        tensors = _named_tensors(_unpickle(f, storages), storages, path)
        keys = _unpickle(f)
        if not isinstance(keys, list) or any(str(key) not in storages.dtypes for key in keys):
            raise InputError(f"{path}: legacy checkpoint lists storages its pickle never named")
        placed: dict[str, tuple[int, int]] = {}
        position = f.tell()
        for key in map(str, keys):
            numel_bytes = f.read(8)
            if len(numel_bytes) < 8:
                raise InputError(f"{path}: legacy checkpoint ends inside its storages")
            (numel,) = struct.unpack("<q", numel_bytes)
            nbytes = storages.nbytes[key]
            if numel != storages.numel[key] or position + 8 + nbytes > size:
                raise InputError(f"{path}: legacy storage {key} does not match its size")
            placed[key] = (position + 8, nbytes)
            position += 8 + nbytes
            f.seek(position)
    return _source(path, relpath, size, storages, tensors, placed)


def _little_endian(path: Path, little: bool) -> None:
    """Refuse a checkpoint whose storages torch wrote big-endian: torch.load swaps their bytes,
    and read as zoo reads values (little-endian) every one would be wrong."""
    if not little:
        raise InputError(f"{path}: a big-endian checkpoint (torch.load swaps its bytes); zoo reads little-endian storages only")


def _unique(name: str, taken: set[str]) -> str:
    """`name`, or `name#2`, `name#3`... where the checkpoint already has a tensor of that name."""
    found, number = name, 1
    while found in taken:
        number += 1
        found = f"{name}#{number}"
    taken.add(found)
    return found


def _source(path: Path, relpath: str, size: int, storages: _Storages, tensors: list[_Tensor],
            placed: dict[str, tuple[int, int]]) -> SourceFile:
    from zoo.dtypes import DTYPES

    users: dict[str, list[_Tensor]] = {}
    for tensor in tensors:
        users.setdefault(tensor.storage, []).append(tensor)
    typed: list[Segment] = []
    views: list[dict[str, Any]] = []
    taken = {tensor.name for tensor in tensors}  # a storage's own name must be no tensor's: `x.__storage__` may be a key
    kept: set[str] = set()  # the tensors that the archive holds, as segments or views
    for key, (start, nbytes) in placed.items():
        if nbytes != storages.nbytes[key]:
            raise InputError(f"{path}: storage {key} holds {nbytes} bytes, its pickle says {storages.nbytes[key]} bytes")
        if start < 0 or start + nbytes > size:  # a zip directory that names bytes past the file's end (a cut or forged file)
            raise InputError(f"{path}: storage {key} runs past the end of the file ({start + nbytes} of {size} bytes)")
        named = users.get(key, [])
        candidates = [t for t in named if t.dtype in DTYPES]  # the others' bytes are kept, never read as another dtype
        dtype = _element_dtype(storages.dtypes[key], nbytes, candidates)
        numel = nbytes * 8 // DTYPES[dtype].bits
        owner = next((t for t in candidates if t.offset == 0 and t.dtype == dtype and _contiguous(t) and _values(t) == numel
                      and (t.shape or dtype != "F4")), None)  # a 0-d F4 tensor holds two values: no zoo shape says so
        if owner is not None:
            segment = Segment(start, nbytes, owner.name, dtype, _zoo_shape(owner), owner.weight)
            kept.add(owner.name)
        else:  # only parts of it are used, or by no tensor: a flat tensor named after the storage
            name = _unique(f"{named[0].name}{STORAGE_SUFFIX}" if named else f"{STORAGE_PREFIX}{key}", taken)
            segment = Segment(start, nbytes, name, dtype, (numel,), False, storage=True)
        typed.append(segment)
        # F4's offsets and strides count bytes (pairs of values), as torch's do; the storage holds numel / 2 of them
        elements = numel // 2 if dtype == "F4" else numel
        for tensor in candidates:
            if tensor is owner:
                continue
            if dtype == "F4" and not tensor.shape:  # one byte of two values: no zoo shape says so
                warnings.warn(f"{path}: {tensor.name} (a 0-d F4 tensor) is kept in the file's bytes, not as a tensor",
                              ZooWarning, stacklevel=2)
                continue
            end = tensor.offset + sum((d - 1) * s for d, s in zip(tensor.shape, tensor.stride)) + 1
            if tensor.dtype != dtype or tensor.offset < 0 or (math.prod(tensor.shape) and end > elements) or any(s < 0 for s in tensor.stride):
                continue  # torch would refuse it too; its bytes are kept all the same
            views.append({"name": tensor.name, "of": segment.tensor, "dtype": dtype, "shape": list(_zoo_shape(tensor)),
                          "stride": list(tensor.stride), "offset": tensor.offset})
            segment.viewed_as += (tensor.name,)
            kept.add(tensor.name)
    left = [tensor for tensor in tensors if tensor.name not in kept and not (tensor.dtype == "F4" and not tensor.shape)]
    if left:  # (a 0-d F4 tensor was named above)
        shown = ", ".join(f"{tensor.name} ({_why_left(tensor, placed, DTYPES)})" for tensor in left[:8])
        more = f" and {len(left) - 8} more" if len(left) > 8 else ""
        which = "it" if len(left) == 1 else "them"
        warnings.warn(f"{path}: {shown}{more} kept in the file's bytes only, not as {'a tensor' if len(left) == 1 else 'tensors'} "
                      f"(zoo.load_state_dict leaves {which} out)", ZooWarning, stacklevel=2)
    segments: list[Segment] = []
    position = 0
    for segment in sorted(typed, key=lambda s: s.offset):
        if segment.offset < position:
            raise InputError(f"{path}: two storages overlap in the file")
        if segment.offset > position:
            segments.append(Segment(position, segment.offset - position))
        segments.append(segment)
        position = segment.offset + segment.size
    if position < size:
        segments.append(Segment(position, size - position))
    return SourceFile(relpath, path, size, "torch", segments, views=views)


def _why_left(tensor: _Tensor, placed: dict[str, tuple[int, int]], dtypes: dict[str, Any]) -> str:
    if tensor.storage not in placed:
        return "its storage is compressed inside the zip"
    if tensor.dtype not in dtypes:
        return tensor.dtype.removeprefix("torch.")
    return "not readable as a view of its storage"


def is_storage_name(name: str) -> bool:
    """Whether a tensor of a torch file is a storage that no tensor covers whole (named for one
    that views part of it, or for its key), as archives that do not list their storages
    (`storages` of a file's entry, docs/FORMAT.md) tell it: by the name alone."""
    return name.endswith(STORAGE_SUFFIX) or name.startswith(STORAGE_PREFIX)


def _element_dtype(stored: str, nbytes: int, tensors: list[_Tensor]) -> str:
    """The dtype a storage holds. torch saves one of a newer dtype (float8, uint16, float4) as
    untyped bytes, and the tensors on it name the dtype: then theirs, when they agree and it fits."""
    from zoo.dtypes import DTYPES

    found = {tensor.dtype for tensor in tensors}
    if stored != "U8" or len(found) != 1:
        return stored
    dtype = found.pop()
    return dtype if nbytes * 8 % DTYPES[dtype].bits == 0 else stored


def _values(tensor: _Tensor) -> int:
    """How many values zoo counts in the tensor: torch counts F4 by pairs, a byte each."""
    return math.prod(tensor.shape) * (2 if tensor.dtype == "F4" else 1)


def _zoo_shape(tensor: _Tensor) -> tuple[int, ...]:
    """The tensor's shape as zoo records it: F4's last dimension counts values, not pairs."""
    if tensor.dtype == "F4":
        return (*tensor.shape[:-1], 2 * tensor.shape[-1])
    return tensor.shape


def _contiguous(tensor: _Tensor) -> bool:
    expected = 1
    for dim, stride in reversed(list(zip(tensor.shape, tensor.stride))):
        if dim != 1 and stride != expected:
            return False
        expected *= dim
    return True
