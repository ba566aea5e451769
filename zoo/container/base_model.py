"""The base model that tensors stored against a base are added back to (`--base`): its tensors by
name, from a safetensors file or folder or from a .zoo archive, checked against what an archive
recorded of them. The arithmetic and the header records live in zoo.container.delta."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

import numpy as np

from zoo.codecs.base import TypedArray
from zoo.container.delta import digest
from zoo.container.format import is_archive
from zoo.container.reader import Archive
from zoo.dtypes import storage_dtype
from zoo.errors import InputError
from zoo.sources.folder import Segment, scan


class _Copy(NamedTuple):
    """One of a base's tensors of a name: a model may hold a name in several files
    (model.safetensors beside model.fp16.safetensors, a run's checkpoint-N/ folders)."""
    file: str | None  # its file's path inside the base, for a tensor of the same file to find it first
    path: Path  # the file it is read from: the safetensors file, or the archive
    segment: Segment  # where it lies there; an archive's by its key in `tensor`


class BaseModel:
    """A base model's tensors by name, read on demand: a .safetensors file, a folder of them, or a
    .zoo archive. A name held more than once (in several files) is the copy of the dtype and shape
    asked for, the one in a file of the same path first. `hint` is what the user called it (a zoo
    name, say: zoo.refs.open_base resolves those), for messages and the archive header."""

    def __init__(self, path: str | os.PathLike[str], hint: str | None = None) -> None:
        path = Path(path)
        self.hint = hint or str(path)
        self.path = path  # the file or folder given
        self._archive: Archive | None = None
        self._copies: dict[str, list[_Copy]] = {}  # name -> every tensor of that name, in the base's order
        # copy -> (the file's state when hashed, sha256): a base file changed since is hashed again
        self._digests: dict[tuple[Path, int, str | None], tuple[tuple[int, ...] | None, str]] = {}
        if not path.exists():
            raise InputError(f"base {self.hint}: no such file, folder or model in the zoo")
        if path.is_file() and is_archive(path):
            self._open_archive(path)
            return
        for file in scan(path):
            if file.kind == "safetensors":
                for segment in file.segments:
                    if segment.tensor is not None:
                        self._copies.setdefault(segment.tensor, []).append(_Copy(file.relpath, file.path, segment))
        if not self._copies:
            raise InputError(f"base {self.hint}: holds no safetensors tensors")

    def _open_archive(self, path: Path) -> None:
        self._archive = Archive(path)
        if self._archive.base_needed():
            self._archive.close()
            raise InputError(f"base {self.hint}: is itself stored against a base model; decompress it with its own base first")
        for key in self._archive.keys():
            info = self._archive.tensor_info(key)
            self._copies.setdefault(info.get("name", key), []).append(_Copy(info.get("file"), path, Segment(0, 0, key)))

    def _kind(self, copy: _Copy) -> tuple[str, tuple[int, ...]]:
        if self._archive is not None:
            info = self._archive.tensor_info(copy.segment.tensor)
            return info["dtype"], tuple(info["shape"])
        return copy.segment.dtype, tuple(copy.segment.shape)

    def _choices(self, name: str, dtype: str, shape: tuple[int, ...], file: str | None) -> list[_Copy]:
        """The base's tensors of `name` of `dtype` and `shape`, the one in `file` first."""
        same = [copy for copy in self._copies.get(name, []) if self._kind(copy) == (dtype, tuple(shape))]
        return sorted(same, key=lambda copy: copy.file != file)  # stable: else in the base's order

    def holds(self, name: str, dtype: str, shape: tuple[int, ...]) -> bool:
        """Whether the base has a tensor `name` of `dtype` and `shape`."""
        return bool(self._choices(name, dtype, shape, None))

    def read(self, name: str, dtype: str, shape: tuple[int, ...], file: str | None = None) -> TypedArray:
        """Base tensor `name` of `dtype` and `shape` (the one in `file`, a path like the base's own, where it has one there)."""
        return self._read(self._choices(name, dtype, shape, file)[0])[0]

    def _read(self, copy: _Copy) -> tuple[TypedArray, tuple[int, ...] | None]:
        """The tensor, and the state of the file it was read from (None for an archive's objects,
        which never change): a file rewritten between two reads of one open base is told apart."""
        path, segment = copy.path, copy.segment
        if self._archive is not None:
            return self._archive.read_tensor(segment.tensor), None
        raw = np.empty(segment.size, dtype=np.uint8)
        with open(path, "rb") as f:
            before = _state(os.fstat(f.fileno()))
            f.seek(segment.offset)
            if f.readinto(memoryview(raw)) != segment.size or _state(os.fstat(f.fileno())) != before:
                raise InputError(f"base {self.hint}: {path} changed while being read")
        return TypedArray(raw.view(storage_dtype(segment.dtype)).reshape(segment.shape), segment.dtype), before

    def matching(self, name: str, record: dict[str, str], dtype: str, shape: tuple[int, ...], made_against: str,
                 file: str | None = None) -> TypedArray:
        """Base tensor `name`, checked against what an archive made against `made_against` recorded
        of it: of the base's tensors of that name, dtype and shape, the one of the recorded sha256
        (looked for first in `file`, the path of the archive's tensor)."""
        where, needed = f"base {self.hint}", f"(the archive was made against {made_against!r})"
        copies = self._copies.get(name)
        if not copies:
            raise InputError(f"{where}: has no tensor {name!r}, which the archive needs {needed}")
        choices = self._choices(name, dtype, shape, file)
        if not choices:
            found = " and ".join(dict.fromkeys(f"{kind[0]}{list(kind[1])}" for kind in map(self._kind, copies)))
            raise InputError(f"{where}: tensor {name!r} is {found}, the archive needs {dtype}{list(shape)} {needed}")
        for copy in choices:
            array, state = self._read(copy)
            # one hash per tensor and state of its file: an evaluation checks the base, then decodes on it
            held = (copy.path, copy.segment.offset, copy.segment.tensor)
            if held not in self._digests or self._digests[held][0] != state:
                self._digests[held] = (state, digest(array))
            if self._digests[held][1] == record["sha256"]:
                return array
        raise InputError(f"{where}: tensor {name!r} is not the one the archive needs: its sha256 differs {needed}")

    def refuse_writing_over(self, outputs: Iterable[Path]) -> None:
        """Refuses files about to be written (`outputs`) when one of them is the base, lies inside
        its folder, or is a file it reads: the base would be replaced or changed, and with it what
        an archive made against it needs. An output is put in place by a rename: a link there is
        replaced, not followed."""
        root = Path(os.path.realpath(self.path))
        read = {Path(os.path.realpath(copy.path)) for copies in self._copies.values() for copy in copies}
        for output in outputs:
            real = Path(os.path.realpath(output.parent)) / output.name
            if real.is_relative_to(root) or real in read:
                raise InputError(f"{output}: output would overwrite its own base model ({self.hint}) or go into its folder; "
                                 "write it elsewhere")

    def close(self) -> None:
        if self._archive is not None:
            self._archive.close()

    def __enter__(self) -> BaseModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _state(status: os.stat_result) -> tuple[int, ...]:
    """What changes when a file is replaced or written to."""
    return (status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns, status.st_ctime_ns)
