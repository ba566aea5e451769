"""The codec protocol.

A pipeline is a list of stages in three kinds, after Zarr v3:

* ``ArrayCodec`` (array -> array): lossy transforms that work on a whole tensor and return
  one or more *parts* (low-rank factors, codebook indices, ...). Later array stages apply to
  each part they select; the parts then go through the leaf stages.
* ``GroupingCodec`` (array -> streams): splits one chunk of raw storage into byte streams
  (exponent plane, mantissa planes). Exactly one per pipeline.
* ``BytesCodec`` (bytes -> bytes): entropy coders, applied to each stream. A stream that
  does not shrink is stored raw by the pipeline, so no codec has to handle that case.

A codec's constructor only stores its arguments; its config is exactly
``{"id": codec_id, **arguments}`` and holds JSON values only.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from zoo.codecs.selection import selected

# progress(stage, done, total): a long phase of a survey, e.g. ("tuning roundings", 40, 2000); each
# stage is reported at (0, total) when it starts and at done == total when it ends.
StageProgress = Callable[[str, int, int], None]
# measure(array): the bytes the pipeline's own leaf stages store for `array` left as it is, at the
# archive's chunk size, chunk index included; what a survey's size budget is counted in.
Measure = Callable[["TypedArray"], int]
REPORTS = 200  # reports over a stage of many quick steps, at most (a tiny model's training step takes milliseconds)


def step_reporter(progress: StageProgress | None, stage: str, total: int) -> Callable[[int], None]:
    """Reports `stage` at (0, total) now; the function returned takes the number of steps done
    and reports at most REPORTS of them, the last one always."""
    every = max(1, total // REPORTS)
    if progress:
        progress(stage, 0, total)

    def done(count: int) -> None:
        if progress and (count % every == 0 or count == total):
            progress(stage, count, total)

    return done


@dataclass(frozen=True)
class TypedArray:
    """A tensor's raw storage (see zoo.dtypes) and its dtype name."""

    data: np.ndarray
    dtype: str

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)


@dataclass
class Transformed:
    """What an ArrayCodec makes of one tensor.

    ``parts`` are stored (each through the rest of the pipeline); ``meta`` is small JSON kept
    in the archive header; parts named in ``final`` skip the later array stages.
    """

    parts: dict[str, TypedArray]
    meta: dict[str, Any] = field(default_factory=dict)
    final: frozenset[str] = frozenset()


class Codec:
    codec_id: ClassVar[str]
    lossless: ClassVar[bool] = True

    def get_config(self) -> dict[str, Any]:
        config: dict[str, Any] = {"id": self.codec_id}
        for name in inspect.signature(type(self).__init__).parameters:
            if name != "self":
                config[name] = getattr(self, name)
        return config

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Codec:
        arguments = {k: v for k, v in config.items() if k != "id"}
        return cls(**arguments)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Codec) and self.get_config() == other.get_config()

    def __hash__(self) -> int:
        return hash(repr(self))

    def __repr__(self) -> str:
        arguments = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items() if k != "id")
        return f"{type(self).__name__}({arguments})"


class ArrayCodec(Codec):
    """array -> array. Lossy codecs set ``lossless = False`` and declare ``tolerance``:
    the relative RMS error the shared round-trip test allows on a Gaussian matrix."""

    lossless: ClassVar[bool] = False
    tolerance: ClassVar[float] = 0.0

    def selects(self, name: str, array: TypedArray) -> bool:
        """Whether this stage transforms this tensor: float matrices and up, minus what
        zoo.codecs.selection always keeps lossless (norms, biases, position ids), filtered by the
        codec's ``include``/``exclude`` patterns when its constructor takes them."""
        include, exclude = getattr(self, "include", None), getattr(self, "exclude", None)
        return selected(name, array.dtype, array.data.ndim, array.data.size, include, exclude)

    def survey(self, tensors: Callable[[], Iterator[tuple[str, TypedArray]]], calibration: Any = None,
               progress: StageProgress | None = None, measure: Measure | None = None) -> Any:
        """A pass over the whole model before any tensor is encoded, for codecs that need one
        (a size budget shared across layers, activation statistics). `tensors` yields every
        tensor by name each time it is called; `calibration` is a zoo.optimize.calibration.Statistics
        or None; `progress` hears of the survey's long phases (see StageProgress); `measure` counts
        what the pipeline's later stages store (see Measure). What it
        returns comes back to encode_tensor as `plan`."""
        return None

    def encode_tensor(self, name: str, array: TypedArray, plan: Any = None) -> Transformed:
        """What the pipeline calls: codecs that need the name or the survey override this."""
        return self.encode(array)

    def encode(self, array: TypedArray) -> Transformed:
        raise NotImplementedError

    def decode(self, parts: dict[str, TypedArray], meta: dict[str, Any], dtype: str, shape: tuple[int, ...]) -> TypedArray:
        """Rebuild the tensor (as `dtype` storage of `shape`) from decoded parts."""
        raise NotImplementedError


class GroupingCodec(Codec):
    """array -> streams, on one chunk of raw storage bytes."""

    def encode(self, chunk: np.ndarray, dtype: str) -> list[np.ndarray | bytes]:
        raise NotImplementedError

    def decode(self, streams: list[bytes], dtype: str, n_elements: int) -> np.ndarray:
        """Raw storage bytes (uint8) of the chunk, ``n_elements`` elements long."""
        raise NotImplementedError

    def stream_sizes(self, dtype: str, n_elements: int) -> list[int] | None:
        """Decoded size of each stream when known from the chunk alone (used to bound decoders)."""
        return None


class BytesCodec(Codec):
    """bytes -> bytes, on one stream."""

    def encode(self, data: bytes | np.ndarray) -> bytes:
        raise NotImplementedError

    def decode(self, data: bytes, decoded_size: int) -> bytes:
        """Inverse of encode; must raise (never return short or long data) on a bad stream."""
        raise NotImplementedError


def element_count(shape: tuple[int, ...] | list[int]) -> int:
    return math.prod(shape)


def check_int(codec_id: str, name: str, value: Any, low: int, high: int) -> int:
    """A codec argument that must be an integer in low..high (JSON true/false are not integers)."""
    from zoo.errors import PipelineError

    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise PipelineError(f"{codec_id}: {name} must be an integer in {low}..{high}, got {value!r}")
    return value
