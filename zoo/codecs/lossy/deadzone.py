"""The dead-zone uniform quantizer behind the l2 codec: quantize, dequantize, rounding with error
feedback, entropy estimates, and the Plan the rate allocation (zoo.optimize.rate) hands each tensor.
Apart from the codec so that the allocation can use it without importing the codec that calls it."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from zoo.codecs.base import TypedArray
from zoo.errors import PipelineError
from zoo.optimize import refine

SYMBOL_DTYPES = (("I8", np.int8), ("I16", np.int16), ("I32", np.int32))
# The fewest bits per weight l2 codes what it selects at (its highest target_ratio, 320): below it
# a matrix is all but wiped, and zoo.optimize.rate refuses a target that would leave less.
LOWEST_BITS = 0.1
# The largest symbol a step is chosen for: half of what I32 holds, as error feedback may round a
# weight a step or two past its own value.
LARGEST_SYMBOL = 1 << 30
# Weights per block where a whole tensor is quantized, dequantized or counted: the float64 and int64
# temporaries of 2^18 weights are 2 MiB, where those of the whole tensor were up to twice its size each.
BLOCK = 1 << 18


def blocks(size: int) -> Iterator[slice]:
    """Slices of BLOCK weights covering a flat tensor of `size`."""
    return (slice(first, min(first + BLOCK, size)) for first in range(0, size, BLOCK))


def _quantize_block(values: np.ndarray, step: float, dead_zone: float) -> np.ndarray:
    """float64 symbols (whole numbers) of a block of `values`, in place in one float64 copy."""
    magnitude = values.astype(np.float64)
    np.abs(magnitude, out=magnitude)
    magnitude -= dead_zone
    np.maximum(magnitude, 0.0, out=magnitude)
    magnitude /= step
    magnitude += 0.5
    np.floor(magnitude, out=magnitude)
    magnitude *= np.sign(values)
    return magnitude


def quantize(values: np.ndarray, step: float, dead_zone: float) -> np.ndarray:
    """int64 symbols of float32 `values`."""
    return _quantize_block(values, step, dead_zone).astype(np.int64)


def quantize_stored(values: np.ndarray, step: float, dead_zone: float) -> TypedArray:
    """symbols_array(quantize(values, step, dead_zone)), block by block into the narrowest integer:
    no int64 or float64 copy of the whole tensor. The quantizer is monotone in the value, so the
    least and greatest symbols are those of the least and greatest values, which fix the dtype."""
    flat = values.reshape(-1)
    extremes = quantize(np.array([flat.min(), flat.max()]) if flat.size else np.zeros(2, values.dtype), step, dead_zone)
    name, numpy_type = _narrowest(int(extremes[0]), int(extremes[1]))
    symbols = np.empty(flat.size, numpy_type)
    for block in blocks(flat.size):
        symbols[block] = _quantize_block(flat[block], step, dead_zone)
    return TypedArray(symbols.reshape(values.shape), name)


def dequantize(symbols: np.ndarray, step: float, dead_zone: float) -> np.ndarray:
    """float32 values of symbols of any integer dtype; float32 arithmetic in a fixed order so every
    platform gives the same bits. Block by block: the int64 and float32 temporaries of the whole
    tensor were four times its float32 size."""
    flat = symbols.reshape(-1)
    values = np.empty(flat.size, np.float32)
    for block in blocks(flat.size):
        signed = flat[block].astype(np.int64)  # the magnitude of int8's -128 overflows in int8
        magnitude = np.abs(signed).astype(np.float32)
        with np.errstate(over="ignore"):  # a large step times a large symbol is infinite in float32, as the format computes it
            part = magnitude * np.float32(step) + np.where(magnitude > 0, np.float32(dead_zone), np.float32(0))
        values[block] = np.where(signed < 0, -part, part)
    return values.reshape(symbols.shape)


def quantize_with_feedback(values: np.ndarray, step: float, dead_zone: float, hessian: np.ndarray) -> np.ndarray:
    """Symbols of a matrix rounded column by column with each column's error fed forward onto the
    columns not yet rounded (zoo.optimize.refine.feedback): the layer's output error on the
    calibration inputs, not each weight's, is what the rounding lowers."""
    def grid(_: int, column: np.ndarray) -> np.ndarray:
        return dequantize(quantize(column, step, dead_zone), step, dead_zone).astype(np.float64)

    rounded = refine.feedback(values.reshape(values.shape[0], -1), hessian, grid)
    return quantize(rounded, step, dead_zone).reshape(values.shape)


def entropy_bits(symbols: np.ndarray) -> float:
    """Empirical entropy of the symbols (any integer dtype), in bits per symbol; counted block by
    block (shifting the whole tensor to non-negative int64 took twice its int32 size)."""
    flat = symbols.reshape(-1)
    if flat.size == 0:
        return 0.0
    low, high = int(flat.min()), int(flat.max())
    if high - low >= max(flat.size, BLOCK):  # a few symbols far out (an outlier's): the ones present counted, not the range
        found = [np.unique(flat[block], return_counts=True) for block in blocks(flat.size)]
        _, where = np.unique(np.concatenate([present for present, _ in found]), return_inverse=True)
        counts = np.bincount(where, weights=np.concatenate([tally for _, tally in found]))
    else:
        counts = np.zeros(high - low + 1, np.int64)
        for block in blocks(flat.size):
            counts += np.bincount(flat[block].astype(np.int64) - low, minlength=counts.size)
    p = counts[counts > 0] / flat.size
    return float(-(p * np.log2(p)).sum())


def step_for_bits(values: np.ndarray, bits: float) -> float:
    """A step at which the plain uniform quantizer spends about `bits` per weight (bisection on
    the empirical entropy, which falls as the step grows)."""
    sample = values.reshape(-1)[:: max(1, values.size // 65536)]
    scale = float(np.sqrt(np.mean(sample.astype(np.float64) ** 2))) or 1.0
    low, high = math.log2(scale) - 16, math.log2(scale) + 4
    for _ in range(40):
        middle = (low + high) / 2
        if entropy_bits(quantize(sample, 2.0**middle, 0.0)) > bits:
            low = middle
        else:
            high = middle
    return 2.0**high


def symbols_array(symbols: np.ndarray) -> TypedArray:
    """The narrowest signed integer storage that holds every symbol."""
    name, numpy_type = _narrowest(*((int(symbols.min()), int(symbols.max())) if symbols.size else (0, 0)))
    return TypedArray(symbols.astype(numpy_type), name)


def _narrowest(low: int, high: int) -> tuple[str, type]:
    for name, numpy_type in SYMBOL_DTYPES:
        if np.iinfo(numpy_type).min <= low and high <= np.iinfo(numpy_type).max:
            return name, numpy_type
    raise PipelineError("l2: a step this small needs symbols wider than 32 bits")


@dataclass
class Plan:
    """What the survey hands each tensor: its (step, dead zone), the calibration statistics
    whose H, where a matrix has one, guides the rounding, and the symbols themselves where the
    survey decided them (tuning). `slope` is the distortion per bit at which the budget was split.
    `aliases` names, for an earlier stage's part that is its tensor's weights as they are
    (lowrank's `dense`), the tensor whose statistics it takes."""

    steps: dict[str, tuple[float, float]]
    statistics: Any = None
    symbols: dict[str, np.ndarray] = field(default_factory=dict)
    slope: float = 0.0
    aliases: dict[str, str] = field(default_factory=dict)
    least_steps: dict[str, float] = field(default_factory=dict)  # by tensor: the least step its largest weight allows

    def scaled(self, name: str, scale: float = 1.0) -> tuple[float, float]:
        """`name`'s (step, dead zone), both times `scale`, but the step never under its least (the
        dead zone kept in proportion): there the largest weight's symbol would not fit 32 bits."""
        step, dead_zone = self.steps[name]
        factor = max(scale, self.least_steps.get(name, 0.0) / step) if step > 0 else scale
        return step * factor, dead_zone * factor

    def hessian(self, name: str, values: np.ndarray) -> np.ndarray | None:
        if self.statistics is None or values.ndim != 2 or not hasattr(self.statistics, "hessian"):
            return None
        return self.statistics.hessian(self.aliases.get(name, name), values.shape[1])
