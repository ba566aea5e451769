"""pranc: a tensor as k coefficients over pseudo-random basis vectors.

After "PRANC: Pseudo RAndom Networks for Compacting deep models" (Nooralinejad et al., 2023),
written from the paper's idea. A tensor of n weights is stored as ``w = sum_j c[j] * b_j``,
where basis vector ``b_j`` is ``philox_uniform(seed, stream, n, offset=j * n)``: zoo's own
counter-based generator (docs/FORMAT.md), so the same seed gives the same bits everywhere, and
the basis is generated on the fly at load, never stored.

Part ``coefficients`` (F32, k: fitted in float64, a tensor whose coefficients float32 cannot hold
is refused); meta ``seed``, ``stream``. ``k`` is the number of coefficients for the whole model,
shared out in proportion to tensor size. The survey fits them: first a
least-squares projection of each tensor onto its basis, then, when the model can be run on
calibration text, distillation: Adam on all coefficients at once to minimise the output KL to
the original. A trained network keeps little of itself in a few thousand numbers; PRANC is
meant for small models and for a fine-tune's difference from its base (`zoo compress --base`:
the stage then sees differences, and the teacher runs base + difference, see zoo.container.delta), and
says how well it did (zoo evaluate, zoo sweep), never more.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import numpy as np

from zoo import kernels as _kernels
from zoo.dtypes import from_float32, saturated, to_float32
from zoo.errors import FormatError, InputError
from zoo.codecs.base import LossyCodec, Measure, Param, StageProgress, Transformed, TypedArray, step_reporter

MAX_BASIS_ELEMENTS = 1 << 26  # k * n floats held while fitting (256 MiB): PRANC is for small models
MAX_K = 1 << 16


def basis(seed: int, stream: int, k: int, n: int) -> np.ndarray:
    """(k, n) float32: row j is philox_uniform(seed, stream, n, offset=j * n)."""
    return _kernels.philox_uniform(seed, stream, k * n, 0).reshape(k, n)


def combine(coefficients: np.ndarray, seed: int, stream: int, n: int) -> np.ndarray:
    """float32 sum of c[j] * b_j, accumulated in float64 one basis vector at a time in index
    order, so the result does not depend on a BLAS's summation order."""
    total = np.zeros(n, dtype=np.float64)
    for j, coefficient in enumerate(coefficients.astype(np.float64)):
        total += coefficient * _kernels.philox_uniform(seed, stream, n, j * n).astype(np.float64)
    with np.errstate(over="ignore"):  # past float32's range: an infinity, which decode saturates
        return total.astype(np.float32)


def project(values: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Least-squares coefficients: the projection of the tensor onto its basis rows, float64 (see
    stored)."""
    k = len(rows)
    rows = rows.astype(np.float64)
    gram = rows @ rows.T
    return np.linalg.solve(gram + 1e-9 * np.trace(gram) / k * np.eye(k), rows @ values.reshape(-1).astype(np.float64))


def stored(coefficients: Any, name: str) -> np.ndarray:
    """The coefficients as the archive holds them, float32, or an InputError where float32 cannot
    hold one: weights near float32's largest have coefficients past it (a basis of k near n is
    ill-conditioned), and an infinite coefficient decodes as inf - inf, NaN, for finite weights."""
    wide = np.asarray(coefficients, dtype=np.float64)
    with np.errstate(over="ignore"):
        narrow = wide.astype(np.float32)
    if not np.isfinite(narrow).all():
        reason = (f"reach {float(np.max(np.abs(wide))):.3g}, past float32's largest, which the archive stores them in"
                  if np.isfinite(wide).all() else "are not finite")
        raise InputError(f"pranc: the coefficients fitted to tensor {name!r} {reason}; leave it out with exclude=...")
    return narrow


def _held(k: int, sizes: dict[str, int]) -> int:
    """The basis values the fit holds at once for k coefficients over tensors of `sizes`."""
    counts = share(k, sizes)
    return sum(counts[name] * n for name, n in sizes.items())


def share(k: int, sizes: dict[str, int]) -> dict[str, int]:
    """k coefficients shared out in proportion to tensor size, at least one each, at most n."""
    total = sum(sizes.values())
    return {name: max(1, min(n, round(k * n / total))) for name, n in sizes.items()}


class Pranc(LossyCodec):
    codec_id = "pranc"
    # The basis spans a k-dimensional subspace; the least-squares fit is a projection onto it, so
    # the relative error of a weight-only fit is at most 1 (and near 1 on a random matrix).
    tolerance: ClassVar[float] = 1.0

    params = (
        Param("k", int, 1000, 1, MAX_K, help="coefficients over the whole model (about; at least one per tensor)"),
        Param("seed", int, 0, 0, (1 << 64) - 1, help="the random basis' seed"),
        Param("steps", int, 300, 0, 100000, help="distillation steps with --calib"),
    )
    stages = {"calibrating": "sequences", "running the original model": "sequences",  # zoo.optimize.teacher
              "distilling coefficients": "steps"}
    k: int
    seed: int
    steps: int

    def survey(self, tensors: Callable[[], Iterator[tuple[str, TypedArray]]], calibration: Any = None,
               progress: StageProgress | None = None, measure: Measure | None = None) -> dict[str, tuple[int, np.ndarray]]:
        from zoo.optimize import teacher as _teacher

        # sizes from the shapes first: float32 copies of a model too large for PRANC (a 7B model's
        # 28 GB) were made before it was refused
        sizes = {name: math.prod(array.shape) for name, array in tensors() if self.selects(name, array)}
        self._check_size(sizes)
        counts = share(self.k, sizes)
        values = {name: self.check_finite(to_float32(array.data, array.dtype), name) for name, array in tensors() if self.selects(name, array)}
        bases = {name: basis(self.seed, stream, counts[name], v.size) for stream, (name, v) in enumerate(values.items())}
        plan = {name: (stream, stored(project(v, bases[name]), name)) for stream, (name, v) in enumerate(values.items())}
        teacher = _teacher.load_teacher(calibration, progress=progress)
        if teacher is not None and self.steps:
            plan = self._distill(teacher, values, bases, plan, progress)
        return plan

    def _check_size(self, sizes: dict[str, int]) -> None:
        """An InputError where the fit would hold more than MAX_BASIS_ELEMENTS basis values, saying
        what would help: a smaller k where one fits, else fewer tensors (each takes at least one
        coefficient, so k=1 holds as many basis values as the tensors have weights)."""
        held = _held(self.k, sizes)
        if held <= MAX_BASIS_ELEMENTS:
            return
        weights = sum(sizes.values())
        if weights > MAX_BASIS_ELEMENTS:
            raise InputError(f"pranc: the {len(sizes):,} tensors it takes hold {weights:,} weights, and fitting even one coefficient "
                             f"to each needs that many basis values in memory (at most {MAX_BASIS_ELEMENTS:,}); take fewer tensors "
                             "with include=... or exclude=...: PRANC is for small models")
        low, high = 1, self.k  # held(low) fits, held(high) does not; held grows with k
        while high - low > 1:
            middle = (low + high) // 2
            low, high = (middle, high) if _held(middle, sizes) <= MAX_BASIS_ELEMENTS else (low, middle)
        raise InputError(f"pranc: fitting needs {held:,} basis values in memory (at most {MAX_BASIS_ELEMENTS:,}); "
                         f"use k={low} or less, or take fewer tensors with include=... or exclude=...: PRANC is for small models")

    def _distill(self, teacher: Any, values: dict[str, np.ndarray], bases: dict[str, np.ndarray],
                 plan: dict[str, tuple[int, np.ndarray]], progress: StageProgress | None = None) -> dict[str, tuple[int, np.ndarray]]:
        import torch

        fitted = {name: p for name, p in plan.items() if teacher.parameter(name)}
        coefficients = {name: torch.tensor(c, requires_grad=True) for name, (_, c) in fitted.items()}
        bases = {name: torch.from_numpy(bases[name]) for name in fitted}
        optimizer = torch.optim.Adam(list(coefficients.values()), lr=_learning_rate(coefficients))
        report = step_reporter(progress, "distilling coefficients", self.steps)
        for step in range(self.steps):
            overrides = {teacher.parameter(name): (coefficients[name] @ bases[name]).reshape(values[name].shape) for name in fitted}
            loss = teacher.distortion(overrides, step % teacher.batches)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            report(step + 1)
        return {**plan, **{name: (fitted[name][0], coefficients[name].detach().numpy().copy()) for name in fitted}}

    def encode(self, array: TypedArray, name: str = "", plan: Any = None) -> Transformed:
        if plan and name in plan:
            self.check_finite(to_float32(array.data, array.dtype), name)
            stream, coefficients = plan[name]
        else:
            n = math.prod(array.shape)
            k = min(self.k, n)
            if k * n > MAX_BASIS_ELEMENTS:  # before its float32 copy is made
                advice = f"use k={MAX_BASIS_ELEMENTS // n} or less, or leave it out" if n <= MAX_BASIS_ELEMENTS else "leave it out"
                raise InputError(f"pranc: {name or 'a tensor'} of {n:,} weights with k={k} is too large to fit; "
                                 f"{advice} with exclude=...: PRANC is for small models")
            values = self.check_finite(to_float32(array.data, array.dtype), name)
            stream, coefficients = 0, project(values, basis(self.seed, 0, k, n))
        parts = {"coefficients": TypedArray(stored(coefficients, name), "F32")}
        return Transformed(parts, {"seed": self.seed, "stream": stream}, final=frozenset(parts))

    def decode(self, parts: dict[str, TypedArray], meta: dict[str, Any], dtype: str, shape: tuple[int, ...]) -> TypedArray:
        coefficients = parts.get("coefficients")
        if set(parts) != {"coefficients"} or coefficients is None or coefficients.dtype != "F32" or coefficients.data.ndim != 1:
            raise FormatError(f"pranc: archive holds a node with parts {sorted(parts)}; expected F32 coefficients")
        seed, stream = meta.get("seed"), meta.get("stream")
        if not all(isinstance(x, int) and not isinstance(x, bool) and 0 <= x < 1 << 64 for x in (seed, stream)):
            raise FormatError(f"pranc: bad seed {seed!r} or stream {stream!r}")
        n = math.prod(shape)
        if coefficients.data.size * n >= 1 << 40:
            raise FormatError(f"pranc: {coefficients.data.size} coefficients over {n} weights is beyond any fitted model")
        values = saturated(combine(coefficients.data, seed, stream, n), dtype)
        return TypedArray(from_float32(values, dtype).reshape(shape), dtype)


def _learning_rate(coefficients: dict[str, Any]) -> float:
    # Coefficients start at the least-squares fit; steps of a few percent of their size move them.
    scale = float(np.mean([float(c.detach().abs().mean()) for c in coefficients.values()])) if coefficients else 1.0
    return max(1e-6, 0.05 * scale)
