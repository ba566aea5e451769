"""The codec protocol.

A pipeline is a list of stages in three kinds, after Zarr v3:

* ``ArrayCodec`` (array -> array): lossy transforms that work on a whole tensor and return
  one or more *parts* (low-rank factors, codebook indices, ...). Later array stages apply to
  each part they select; the parts then go through the leaf stages.
* ``GroupingCodec`` (array -> streams): splits one chunk of raw storage into byte streams
  (exponent plane, mantissa planes). Exactly one per pipeline.
* ``BytesCodec`` (bytes -> bytes): entropy coders, applied to each stream. A stream that
  does not shrink is stored raw by the pipeline, so no codec has to handle that case.

A codec declares its parameters once (``params``, a tuple of Param: type, default, range); the
shared constructor checks each argument against its declaration and stores it, so the errors,
``zoo compress --help`` and the config agree. The config is exactly
``{"id": codec_id, **arguments}`` and holds JSON values only. The lossy array stages share
LossyCodec, which adds ``include``/``exclude`` and the tolerance the contract test reads.
"""

from __future__ import annotations

import difflib
import json
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from zoo.codecs.selection import check_patterns, part_label, selected
from zoo.dtypes import FLOAT_DTYPES

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
    in the archive header; parts named in ``final`` skip the later array stages. Parts named in
    ``inputs`` take the inputs the array took (lowrank's dense part and right factor), so that
    calibration statistics of its inputs describe theirs (zoo.codecs.selection.Label).
    """

    parts: dict[str, TypedArray]
    meta: dict[str, Any] = field(default_factory=dict)
    final: frozenset[str] = frozenset()
    inputs: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Param:
    """One constructor argument of a codec, declared once: the constructor's validation, the
    error messages, `zoo compress --help` and the codec's config all come from it.

    `kind` is int, float, bool or str; `low`/`high` bound a number (inclusive unless `open_low`);
    a parameter whose default is None may be left out (None then means "not given")."""

    name: str
    kind: type
    default: Any = None
    low: float | None = None
    high: float | None = None
    open_low: bool = False
    help: str = ""

    def bounds(self) -> str:
        """The range as text ("1..8", "(0, 1]", "at least 0"), or "" for an unbounded parameter."""
        if self.low is None and self.high is None:
            return ""
        if self.high is None:
            return f"{'above' if self.open_low else 'at least'} {self.low:g}"
        if self.kind is int:
            return f"{int(self.low)}..{int(self.high)}"
        return f"{'(' if self.open_low else '['}{self.low:g}, {self.high:g}]"

    def describe(self) -> str:
        """What a value must be, as an error message says it."""
        if self.kind is bool:
            return "true or false"
        if self.kind is str:
            return f"text ({self.help})" if self.help else "text"
        noun = "an integer" if self.kind is int else "a number"
        bounds = self.bounds()
        return f"{noun} {'' if bounds.startswith(('at', 'above')) else 'in '}{bounds}" if bounds else noun

    def check(self, codec_id: str, value: Any) -> Any:
        """`value` when it is one this parameter takes (an integer given for a float as that float),
        else a PipelineError; the same rule in every codec (JSON true/false are not numbers, NaN and infinity are in no range)."""
        from zoo.errors import PipelineError

        if value is None and self.default is None:
            return None
        if self.kind is bool:
            fits = isinstance(value, bool)
        elif self.kind is str:
            fits = isinstance(value, str)
        else:
            numbers = (int,) if self.kind is int else (int, float)
            # isfinite only on floats: an integer too large for a float is still compared exactly.
            fits = (not isinstance(value, bool) and isinstance(value, numbers) and (isinstance(value, int) or math.isfinite(value))
                    and (self.low is None or (value > self.low if self.open_low else value >= self.low))
                    and (self.high is None or value <= self.high))
        if fits and self.kind is float:
            try:  # one text for one value: `target_ratio=10` and `=10.0` are one pipeline, one variant in the zoo
                value = float(value)
            except OverflowError:
                fits = False
        if not fits:
            raise PipelineError(f"{codec_id}: {self.name} must be {self.describe()}, got {value!r}")
        return value

    def usage(self) -> str:
        """`name=default in range` for --help; a parameter with no default is shown by its name."""
        text = self.name if self.default is None else f"{self.name}={json.dumps(self.default)}"
        bounds = self.bounds()
        if not bounds:
            return text
        return f"{text} {bounds}" if bounds.startswith(("at", "above")) else f"{text} in {bounds}"


class Codec:
    """A stage of a pipeline. Subclasses declare `codec_id`, their `params` (see Param) and, when
    their survey reports long phases, `stages`: stage name -> what its count counts, in the order
    they run (zoo.api.COMPRESS_STAGES and the CLI's bars are built from these)."""

    codec_id: ClassVar[str]
    lossless: ClassVar[bool] = True
    params: ClassVar[tuple[Param, ...]] = ()
    stages: ClassVar[dict[str, str]] = {}

    def __init__(self, *positional: Any, **arguments: Any) -> None:
        declared = self.parameters()
        if len(positional) > len(declared):
            raise TypeError(f"{self.codec_id} takes at most {len(declared)} positional arguments")
        for param, value in zip(declared, positional):
            if param.name in arguments:
                raise TypeError(f"{self.codec_id}: {param.name} given twice")
            arguments[param.name] = value
        names = [param.name for param in declared]
        for name in arguments:
            if name not in names:
                raise unknown_parameter(self.codec_id, name, names)
        for param in declared:
            setattr(self, param.name, param.check(self.codec_id, arguments.get(param.name, param.default)))
        self.check()

    @classmethod
    def parameters(cls) -> tuple[Param, ...]:
        """Every constructor argument, in the order of the codec's config."""
        return cls.params

    def check(self) -> None:
        """Rules that tie parameters together; called once all of them passed their own check."""

    def get_config(self) -> dict[str, Any]:
        config: dict[str, Any] = {"id": self.codec_id}
        for param in self.parameters():
            config[param.name] = getattr(self, param.name)
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


def unknown_parameter(codec_id: str, name: str, names: list[str]) -> Exception:
    from zoo.errors import PipelineError

    if not names:
        return PipelineError(f"{codec_id} takes no parameters, got {name!r}")
    close = difflib.get_close_matches(name, names, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return PipelineError(f"{codec_id} has no parameter {name!r}{hint}; its parameters: {', '.join(names)}")


class ArrayCodec(Codec):
    """array -> array: a whole tensor into one or more parts."""

    lossless: ClassVar[bool] = False

    def selects(self, name: str, array: TypedArray) -> bool:
        """Whether this stage transforms this tensor."""
        return True

    def survey(self, tensors: Callable[[], Iterator[tuple[str, TypedArray]]], calibration: Any = None,
               progress: StageProgress | None = None, measure: Measure | None = None) -> Any:
        """A pass over the whole model before any tensor is encoded, for codecs that need one
        (a size budget shared across layers, activation statistics). `tensors` yields every
        tensor by name each time it is called; `calibration` is a zoo.optimize.calibration.Statistics
        or None; `progress` hears of the survey's long phases (see StageProgress; their names are
        the class's `stages`); `measure` counts what the pipeline's later stages store (see
        Measure). What it returns comes back to encode as `plan`."""
        return None

    def encode(self, array: TypedArray, name: str = "", plan: Any = None) -> Transformed:
        """The one entry point: `array` is the tensor (or an earlier stage's part) called `name`,
        `plan` what survey returned (None when no survey ran, e.g. one tensor alone)."""
        raise NotImplementedError

    def decode(self, parts: dict[str, TypedArray], meta: dict[str, Any], dtype: str, shape: tuple[int, ...]) -> TypedArray:
        """Rebuild the tensor (as `dtype` storage of `shape`) from decoded parts."""
        raise NotImplementedError


INCLUDE = Param("include", str, help="glob patterns of tensors to take, ';'-separated")
EXCLUDE = Param("exclude", str, help="glob patterns of tensors to leave lossless, ';'-separated")


class LossyCodec(ArrayCodec):
    """The lossy array stages' family: each takes `include`/`exclude` (see zoo.codecs.selection)
    after its own parameters, and declares ``tolerance``: the relative RMS error the shared
    round-trip test allows on a Gaussian matrix. `needs_one_of` names parameters of which a
    spec must give one (the stage has no sensible default that would not surprise). `dtypes` are
    those its decode rebuilds: it selects no tensor of another dtype, which the lossless stages
    then keep bit for bit."""

    tolerance: ClassVar[float] = 0.0
    dtypes: ClassVar[frozenset[str]] = FLOAT_DTYPES
    needs_one_of: ClassVar[tuple[str, ...]] = ()
    include: str | None
    exclude: str | None

    @classmethod
    def parameters(cls) -> tuple[Param, ...]:
        return (*cls.params, INCLUDE, EXCLUDE)

    def check(self) -> None:
        check_patterns(self.include, self.exclude)

    def selects(self, name: str, array: TypedArray) -> bool:
        """Matrices and up of the stage's `dtypes`, minus what zoo.codecs.selection always keeps
        lossless (norms, biases, position ids), filtered by the stage's include/exclude patterns;
        and no F64 tensor whose values float32, which the stages compute in, cannot hold (1e39
        was refused as infinite, 1e-50 came back as zeros): those stay lossless."""
        from zoo.dtypes import fits_float32

        return (array.dtype in self.dtypes and selected(name, array.dtype, array.data.shape, self.include, self.exclude)
                and (array.dtype != "F64" or fits_float32(array.data)))

    def check_finite(self, values: np.ndarray, name: str) -> np.ndarray:
        """`values`, or an error when they hold NaN or infinity, which no lossy stage stores (a fit
        or an SVD through one NaN makes the whole tensor NaN, or never converges): in survey and
        encode alike, before any work on them."""
        from zoo.errors import InputError

        if not np.isfinite(values).all():
            raise InputError(f"{self.codec_id}: tensor {name!r} holds NaN or infinite values; leave it out with exclude=...")
        return values


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

    def encode_after(self, header: bytes, chunk: np.ndarray, dtype: str) -> bytes | None:
        """`header` followed by the one stream encode() would return, with the two u32 lengths
        that end `header` (a stream header's, docs/FORMAT.md) both set to the stream's length, as
        they are where the header's flags say the stream is stored as it is; an empty `header`
        gets nothing filled in. None where the codec makes several streams of this chunk, or
        cannot. A pipeline without a bytes stage asks this first: a codec that overrides encode()
        must override this too (or return None here)."""
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


class Arrivals:
    """What array stage `index` of `pipeline` (a zoo.codecs.pipeline.Pipeline) is offered, for its
    survey (Pipeline.survey makes one per stage). Called, it yields (label, array) of each item the
    stage's encode will be handed: a tensor the earlier stages left alone, under its name, or an
    earlier stage's part, as ``tensor.part`` (the earlier stages encode the tensors with their
    `plans` to make them). `model` yields the model's own tensors, which a size
    target counts against (l2's target_ratio), and `parts` what becomes of one of them, the parts
    stored without reaching the stage (those an earlier stage marks final) included. The earlier
    stages' encode runs once more for it (lowrank's decompositions): what it makes is not kept."""

    def __init__(self, pipeline: Any, index: int, model: Callable[[], Iterator[tuple[str, TypedArray]]],
                 plans: tuple[Any, ...]) -> None:
        self.pipeline, self.index, self.model, self.plans = pipeline, index, model, plans

    @property
    def earlier(self) -> tuple[ArrayCodec, ...]:
        """The array stages before this one."""
        return self.pipeline.array_stages[:self.index]

    def __call__(self) -> Iterator[tuple[str, TypedArray]]:
        for name, array in self.model():
            yield from ((label, item) for label, item, arrives in self.parts(name, array) if arrives)

    def parts(self, name: str, array: TypedArray) -> Iterator[tuple[str, TypedArray, bool]]:
        """(label, array, whether it reaches the stage) of each item the earlier stages make of the
        model's tensor `name`: the tensor itself where none selects it."""
        return self._visit(name, array, 0)

    def _visit(self, label: str, item: TypedArray, first_stage: int) -> Iterator[tuple[str, TypedArray, bool]]:
        for index in range(first_stage, self.index):  # as Pipeline.transform visits it, up to this stage
            stage = self.pipeline.array_stages[index]
            if not stage.selects(label, item):
                continue
            result = stage.encode(item, label, self.plans[index])
            for part_name, part in result.parts.items():
                labelled = part_label(label, part_name, part_name in result.inputs)
                if part_name in result.final:
                    yield labelled, part, False
                else:
                    yield from self._visit(labelled, part, index + 1)
            return
        yield label, item, True
