"""Tensors stored as their difference from a base model (`zoo compress --base`).

A fine-tune differs from the model it was tuned from by far less than it weighs, so a lossy stage
given the difference (fine-tune minus base, in float32) spends its bits on what the fine-tune
changed. A tensor is stored that way when a lossy array stage of the pipeline selects it, the
base holds a tensor of the same name, dtype and shape, and neither holds a NaN or an infinity;
every other tensor is stored as usual. At load the base tensor is added back after the pipeline
has decoded the stored difference. The archive records the sha256 of each base tensor it used: a
different base is refused by name, never silently added. Spec: docs/FORMAT.md, "Tensors stored
against a base".
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from zoo.codecs.base import TypedArray
from zoo.dtypes import from_float32, saturated, to_float32
from zoo.errors import FormatError

DELTA_DTYPES = frozenset({"F32", "F16", "BF16"})  # float32 holds each of their values exactly
# The word and the exponent field of each: a value whose exponent bits are all set is an infinity or a NaN.
_EXPONENTS = {"F32": ("<u4", 0x7F800000), "F16": ("<u2", 0x7C00), "BF16": ("<u2", 0x7F80)}
_FINITE_BLOCK = 1 << 18  # words tested at a time: a mask of a whole F32 tensor is a quarter of its size
_SHA256 = re.compile(r"[0-9a-f]{64}")


def digest(array: TypedArray) -> str:
    """sha256 of a tensor's raw little-endian storage, as a safetensors file holds it."""
    return hashlib.sha256(np.ascontiguousarray(array.data).reshape(-1).view(np.uint8)).hexdigest()


def finite(array: TypedArray) -> bool:
    """Whether every value of an F32, F16 or BF16 tensor is finite, read from its bits."""
    word, exponent = _EXPONENTS[array.dtype]
    words = np.ascontiguousarray(array.data).reshape(-1).view(word)
    return not any(((words[first:first + _FINITE_BLOCK] & exponent) == exponent).any() for first in range(0, words.size, _FINITE_BLOCK))


def _storable_against(array: TypedArray, base: TypedArray) -> bool:
    """Whether `array` (finite) may be stored as its difference from `base`: the base finite too, and
    every difference finite in float32."""
    return finite(base) and _difference_fits(array, base)


def _difference_fits(array: TypedArray, base: TypedArray) -> bool:
    """Whether every finite value's difference from the base's is finite in float32: told from the
    largest magnitudes on both sides, which for real weights are far below float32's range; only
    where they are not is the difference taken."""
    limit = float(np.finfo(np.float32).max)
    largest = [float(np.abs(to_float32(side.data, side.dtype)).max(initial=0.0)) for side in (array, base)]
    if sum(largest) <= limit:
        return True
    with np.errstate(over="ignore"):
        return bool(np.isfinite(to_float32(array.data, array.dtype).reshape(-1) - to_float32(base.data, base.dtype).reshape(-1)).all())


def rebuild(delta: TypedArray, base: TypedArray, dtype: str) -> TypedArray:
    """The tensor: float32 base plus float32 difference, rounded to `dtype` (ties to even)."""
    values, change = to_float32(base.data, base.dtype).reshape(delta.shape), delta.data.astype(np.float32, copy=False)
    # invalid: an archive written before tensors holding infinities were stored whole may hold
    # -inf where the base holds inf (the fine-tune's value was finite): their sum is NaN, as it
    # was, without numpy's warning
    with np.errstate(over="ignore", invalid="ignore"):
        total = values + change
    # a finite weight rebuilt past the range (a lossy difference's overshoot at its edge) saturates
    # there; an infinity the base or the difference holds stays one
    total = saturated(total, dtype, where=np.isfinite(values) & np.isfinite(change))
    return TypedArray(from_float32(total, dtype).reshape(delta.shape), dtype)


def check_record(record: Any, what: str) -> dict[str, str]:
    """A tensor's `base` entry from an archive header: {"tensor": name, "sha256": hex}."""
    if not (isinstance(record, dict) and isinstance(record.get("tensor"), str) and isinstance(record.get("sha256"), str)
            and _SHA256.fullmatch(record["sha256"])):
        raise FormatError(f"{what} has a malformed base entry")
    return record


class Deltas:
    """Which tensors of a model are stored against `base`: decided once, before the survey and
    the build, from the pipeline's selection. `tensors` gives (key, name, file, array) of the
    model; a tensor is stored against the base's of its name, dtype and shape, in the file of the
    same path where the base holds one there (model.fp16.safetensors' against the F16 copy)."""

    def __init__(self, base: Any, pipeline: Any, tensors: Iterable[tuple[str, str, str, TypedArray]]) -> None:
        self.base = base
        self.names: dict[str, str] = {}  # tensor key -> name in the base
        self._wanted: dict[str, tuple[str, str, tuple[int, ...], str]] = {}  # tensor key -> base.read's arguments
        for key, name, file, array in tensors:
            wanted = (name, array.dtype, tuple(array.shape), file)
            # Where either holds a NaN or an infinity, the tensor is stored as itself: no difference
            # added to a base's infinity gives back the fine-tune's finite value there (inf - inf is NaN).
            # So is one whose difference float32 cannot hold (3e38 against -3e38): it came back an infinity.
            if (array.dtype in DELTA_DTYPES and any(stage.selects(key, array) for stage in pipeline.array_stages)
                    and base.holds(*wanted[:3]) and finite(array) and _storable_against(array, base.read(*wanted))):
                self.names[key], self._wanted[key] = name, wanted
        self._digests: dict[str, str] = {}

    def delta(self, key: str, array: TypedArray) -> TypedArray | None:
        """The float32 difference to store for tensor `key`, or None when it is stored as itself."""
        if key not in self.names:
            return None
        base = self.base.read(*self._wanted[key])
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
        base = self.base.read(*self._wanted[key])
        return to_float32(base.data, base.dtype)


__all__ = ["DELTA_DTYPES", "Deltas", "check_record", "digest", "finite", "rebuild"]
