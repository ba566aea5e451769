"""The dead-zone uniform quantizer behind the l2 codec: quantize, dequantize, rounding with error
feedback, entropy estimates, and the Plan the rate allocation (zoo.optimize.rate) hands each tensor.
Apart from the codec so that the allocation can use it without importing the codec that calls it."""

from __future__ import annotations

import math
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


def quantize(values: np.ndarray, step: float, dead_zone: float) -> np.ndarray:
    """int64 symbols of float32 `values`."""
    magnitude = np.maximum(np.abs(values.astype(np.float64)) - dead_zone, 0.0) / step
    return (np.floor(magnitude + 0.5) * np.sign(values)).astype(np.int64)


def dequantize(symbols: np.ndarray, step: float, dead_zone: float) -> np.ndarray:
    """float32 values; float32 arithmetic in a fixed order so every platform gives the same bits."""
    magnitude = np.abs(symbols).astype(np.float32)
    values = magnitude * np.float32(step) + np.where(magnitude > 0, np.float32(dead_zone), np.float32(0))
    return np.where(symbols < 0, -values, values).astype(np.float32)


def quantize_with_feedback(values: np.ndarray, step: float, dead_zone: float, hessian: np.ndarray) -> np.ndarray:
    """Symbols of a matrix rounded column by column with each column's error fed forward onto the
    columns not yet rounded (zoo.optimize.refine.feedback): the layer's output error on the
    calibration inputs, not each weight's, is what the rounding lowers."""
    def grid(_: int, column: np.ndarray) -> np.ndarray:
        return dequantize(quantize(column, step, dead_zone), step, dead_zone).astype(np.float64)

    rounded = refine.feedback(values.reshape(values.shape[0], -1), hessian, grid)
    return quantize(rounded, step, dead_zone).reshape(values.shape)


def entropy_bits(symbols: np.ndarray) -> float:
    """Empirical entropy of the symbols, in bits per symbol."""
    flat = symbols.reshape(-1)
    if flat.size == 0:
        return 0.0
    counts = np.bincount(flat - flat.min())
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
    low, high = (int(symbols.min()), int(symbols.max())) if symbols.size else (0, 0)
    for name, numpy_type in SYMBOL_DTYPES:
        if np.iinfo(numpy_type).min <= low and high <= np.iinfo(numpy_type).max:
            return TypedArray(symbols.astype(numpy_type), name)
    raise PipelineError("l2: a step this small needs symbols wider than 32 bits")


@dataclass
class Plan:
    """What the survey hands each tensor: its (step, dead zone), the calibration statistics
    whose H, where a matrix has one, guides the rounding, and the symbols themselves where the
    survey decided them (tuning). `slope` is the distortion per bit at which the budget was split."""

    steps: dict[str, tuple[float, float]]
    statistics: Any = None
    symbols: dict[str, np.ndarray] = field(default_factory=dict)
    slope: float = 0.0

    def hessian(self, name: str, values: np.ndarray) -> np.ndarray | None:
        if self.statistics is None or values.ndim != 2 or not hasattr(self.statistics, "hessian"):
            return None
        return self.statistics.hessian(name, values.shape[1])
