"""The base model that tensors stored against a base are added back to (`--base`): its tensors by
name, from a safetensors file or folder or from a .zoo archive, checked against what an archive
recorded of them. The arithmetic and the header records live in zoo.container.delta."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from zoo.codecs.base import TypedArray
from zoo.container.delta import digest
from zoo.container.format import is_archive
from zoo.container.reader import Archive
from zoo.dtypes import storage_dtype
from zoo.errors import InputError
from zoo.sources.folder import Segment, scan


class BaseModel:
    """A base model's tensors by name, read on demand: a .safetensors file, a folder of them, or a
    .zoo archive. A name held twice counts at its first place. `hint` is what the user called it
    (a zoo name, say: zoo.refs.open_base resolves those), for messages and the archive header."""

    def __init__(self, path: str | os.PathLike[str], hint: str | None = None) -> None:
        path = Path(path)
        self.hint = hint or str(path)
        self._archive: Archive | None = None
        self._files: dict[str, tuple[Path, Segment]] = {}
        # name -> (the file's state when hashed, sha256): a base file changed since is hashed again
        self._digests: dict[str, tuple[tuple[int, ...] | None, str]] = {}
        if not path.exists():
            raise InputError(f"base {self.hint}: no such file, folder or model in the zoo")
        if path.is_file() and is_archive(path):
            self._open_archive(path)
            return
        for file in scan(path):
            if file.kind == "safetensors":
                for segment in file.segments:
                    if segment.tensor is not None:
                        self._files.setdefault(segment.tensor, (file.path, segment))
        if not self._files:
            raise InputError(f"base {self.hint}: holds no safetensors tensors")

    def _open_archive(self, path: Path) -> None:
        self._archive = Archive(path)
        if self._archive.base_needed():
            self._archive.close()
            raise InputError(f"base {self.hint}: is itself stored against a base model; decompress it with its own base first")
        for key in self._archive.keys():
            self._files.setdefault(self._archive.tensor_info(key).get("name", key), (path, Segment(0, 0, key)))

    def info(self, name: str) -> tuple[str, tuple[int, ...]] | None:
        """(dtype, shape) of a base tensor, or None when the base lacks it."""
        if name not in self._files:
            return None
        _, segment = self._files[name]
        if self._archive is not None:
            info = self._archive.tensor_info(segment.tensor)
            return info["dtype"], tuple(info["shape"])
        return segment.dtype, tuple(segment.shape)

    def read(self, name: str) -> TypedArray:
        return self._read(name)[0]

    def _read(self, name: str) -> tuple[TypedArray, tuple[int, ...] | None]:
        """The tensor, and the state of the file it was read from (None for an archive's objects,
        which never change): a file rewritten between two reads of one open base is told apart."""
        path, segment = self._files[name]
        if self._archive is not None:
            return self._archive.read_tensor(segment.tensor), None
        raw = np.empty(segment.size, dtype=np.uint8)
        with open(path, "rb") as f:
            before = _state(os.fstat(f.fileno()))
            f.seek(segment.offset)
            if f.readinto(memoryview(raw)) != segment.size or _state(os.fstat(f.fileno())) != before:
                raise InputError(f"base {self.hint}: {path} changed while being read")
        return TypedArray(raw.view(storage_dtype(segment.dtype)).reshape(segment.shape), segment.dtype), before

    def matching(self, name: str, record: dict[str, str], dtype: str, shape: tuple[int, ...], made_against: str) -> TypedArray:
        """Base tensor `name`, checked against what an archive made against `made_against` recorded of it."""
        where, needed = f"base {self.hint}", f"(the archive was made against {made_against!r})"
        found = self.info(name)
        if found is None:
            raise InputError(f"{where}: has no tensor {name!r}, which the archive needs {needed}")
        if found != (dtype, tuple(shape)):
            raise InputError(f"{where}: tensor {name!r} is {found[0]}{list(found[1])}, the archive needs {dtype}{list(shape)} {needed}")
        array, state = self._read(name)
        # one hash per tensor and state of its file: an evaluation checks the base, then decodes on it
        if name not in self._digests or self._digests[name][0] != state:
            self._digests[name] = (state, digest(array))
        if self._digests[name][1] != record["sha256"]:
            raise InputError(f"{where}: tensor {name!r} is not the one the archive needs: its sha256 differs {needed}")
        return array

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
