"""Tensors stored as their difference from a base model (`zoo compress --base`).

A fine-tune differs from the model it was tuned from by far less than it weighs, so a lossy stage
given the difference (fine-tune minus base, in float32) spends its bits on what the fine-tune
changed. A tensor is stored that way when a lossy array stage of the pipeline selects it and the
base holds a tensor of the same name, dtype and shape; every other tensor is stored as usual. At
load the base tensor is added back after the pipeline has decoded the stored difference. The
archive records the sha256 of each base tensor it used: a different base is refused by name,
never silently added. Spec: docs/FORMAT.md, "Tensors stored against a base".
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .codecs.base import TypedArray
from .dtypes import from_float32, storage_dtype, to_float32
from .errors import FormatError, InputError
from .sources import Segment, scan

DELTA_DTYPES = frozenset({"F32", "F16", "BF16"})  # float32 holds each of their values exactly
_SHA256 = re.compile(r"[0-9a-f]{64}")


def digest(array: TypedArray) -> str:
    """sha256 of a tensor's raw little-endian storage, as a safetensors file holds it."""
    return hashlib.sha256(np.ascontiguousarray(array.data).reshape(-1).view(np.uint8)).hexdigest()


def rebuild(delta: TypedArray, base: TypedArray, dtype: str) -> TypedArray:
    """The tensor: float32 base plus float32 difference, rounded to `dtype` (ties to even)."""
    total = to_float32(base.data, base.dtype).reshape(delta.shape) + delta.data.astype(np.float32, copy=False)
    return TypedArray(from_float32(total, dtype).reshape(delta.shape), dtype)


def check_record(record: Any, what: str) -> dict[str, str]:
    """A tensor's `base` entry from an archive header: {"tensor": name, "sha256": hex}."""
    if not (isinstance(record, dict) and isinstance(record.get("tensor"), str) and isinstance(record.get("sha256"), str)
            and _SHA256.fullmatch(record["sha256"])):
        raise FormatError(f"{what} has a malformed base entry")
    return record


class BaseModel:
    """A base model's tensors by name, read on demand: a .safetensors file, a folder of them, or a
    .zoo archive (or a model in the zoo). A name held twice counts at its first place."""

    def __init__(self, source: str | os.PathLike[str]) -> None:
        self.hint = str(source)
        self._archive: Any = None
        self._files: dict[str, tuple[Path, Segment]] = {}
        self._digests: dict[str, str] = {}
        path = Path(source)
        if not path.exists() or (path.is_file() and _is_archive(path)):
            self._open_archive(source)
            return
        for file in scan(path):
            if file.kind == "safetensors":
                for segment in file.segments:
                    if segment.tensor is not None:
                        self._files.setdefault(segment.tensor, (file.path, segment))
        if not self._files:
            raise InputError(f"base {source}: holds no safetensors tensors")

    def _open_archive(self, source: str | os.PathLike[str]) -> None:
        from .archive import Archive
        from .store import resolve_archive

        path = Path(source) if Path(source).exists() else resolve_archive(str(source))
        if path is None:
            raise InputError(f"base {source}: no such file, folder or model in the zoo")
        self._archive = Archive(path)
        if self._archive.base_needed():
            self._archive.close()
            raise InputError(f"base {source}: is itself stored against a base model; decompress it with its own base first")
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
        path, segment = self._files[name]
        if self._archive is not None:
            return self._archive.read_tensor(segment.tensor)
        raw = np.empty(segment.size, dtype=np.uint8)
        with open(path, "rb") as f:
            f.seek(segment.offset)
            if f.readinto(memoryview(raw)) != segment.size:
                raise InputError(f"base {self.hint}: {path} changed while being read")
        return TypedArray(raw.view(storage_dtype(segment.dtype)).reshape(segment.shape), segment.dtype)

    def matching(self, name: str, record: dict[str, str], dtype: str, shape: tuple[int, ...], made_against: str) -> TypedArray:
        """Base tensor `name`, checked against what an archive made against `made_against` recorded of it."""
        where, needed = f"base {self.hint}", f"(the archive was made against {made_against!r})"
        found = self.info(name)
        if found is None:
            raise InputError(f"{where}: has no tensor {name!r}, which the archive needs {needed}")
        if found != (dtype, tuple(shape)):
            raise InputError(f"{where}: tensor {name!r} is {found[0]}{list(found[1])}, the archive needs {dtype}{list(shape)} {needed}")
        array = self.read(name)
        if name not in self._digests:  # one hash per tensor: an evaluation checks the base, then decodes on it
            self._digests[name] = digest(array)
        if self._digests[name] != record["sha256"]:
            raise InputError(f"{where}: tensor {name!r} is not the one the archive needs: its sha256 differs {needed}")
        return array

    def close(self) -> None:
        if self._archive is not None:
            self._archive.close()

    def __enter__(self) -> BaseModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _is_archive(path: Path) -> bool:
    from .format import MAGIC

    with open(path, "rb") as f:
        return f.read(len(MAGIC)) == MAGIC


class Deltas:
    """Which tensors of a model are stored against `base`: decided once, before the survey and
    the build, from the pipeline's selection. `tensors` gives (key, name, array) of the model."""

    def __init__(self, base: BaseModel, pipeline: Any, tensors: Iterable[tuple[str, str, TypedArray]]) -> None:
        self.base = base
        self.names: dict[str, str] = {}  # tensor key -> name in the base
        for key, name, array in tensors:
            if (array.dtype in DELTA_DTYPES and any(stage.selects(key, array) for stage in pipeline.array_stages)
                    and base.info(name) == (array.dtype, array.shape)):
                self.names[key] = name
        self._digests: dict[str, str] = {}

    def delta(self, key: str, array: TypedArray) -> TypedArray | None:
        """The float32 difference to store for tensor `key`, or None when it is stored as itself."""
        if key not in self.names:
            return None
        base = self.base.read(self.names[key])
        self._digests.setdefault(key, digest(base))
        return TypedArray(to_float32(array.data, array.dtype) - to_float32(base.data, base.dtype), "F32")

    def record(self, key: str) -> dict[str, str]:
        """What the header keeps of the base tensor under `key` (after `delta` was taken)."""
        return {"tensor": self.names[key], "sha256": self._digests[key]}

    def keys(self) -> Iterator[str]:
        return iter(self.names)

    def get(self, key: str) -> np.ndarray | None:
        """float32 values of the base tensor under `key`, for a teacher that runs base + delta."""
        if key not in self.names:
            return None
        base = self.base.read(self.names[key])
        return to_float32(base.data, base.dtype)


__all__ = ["DELTA_DTYPES", "BaseModel", "Deltas", "check_record", "digest", "rebuild"]
