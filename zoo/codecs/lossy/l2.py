"""l2: a dead-zone uniform quantizer per tensor whose rate is allocated across the model.

After "Lossy and Lossless (L²) Post-training Model Size Compression" (Shi et al., 2023), written
from the paper's idea, not its code. Each selected tensor gets a step ``s`` and a dead zone
``d``: a weight ``w`` becomes the integer ``k = sign(w) * round(max(|w| - d, 0) / s)`` and
comes back as ``sign(k) * (|k| * s + d)`` (0 for k = 0). The integers are one part, stored as
I8 (or I16/I32 when they need it) so the lossless leaf stages entropy-code them; ``s`` and
``d`` are the node's meta.

``target_ratio=R`` asks for the model's tensors in 1/R of their float32 size (32/R bits per
weight; tensors the stage leaves alone count too). The survey (a pass over the whole model
before anything is written, see zoo.optimize.rate) spends that budget where it hurts least:
equal slope of distortion against rate in every tensor. Without a survey (one tensor alone)
each tensor gets 32/R bits by itself.

``tune=N`` (with calibration) then trains the roundings for N iterations against the original
model's outputs (zoo.optimize.tune); steps, dead zones and the format stay as they were.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np

from zoo.dtypes import from_float32, to_float32
from zoo.errors import FormatError, PipelineError
from zoo.codecs.lossy.deadzone import SYMBOL_DTYPES, Plan, dequantize, quantize, quantize_with_feedback, step_for_bits, symbols_array
from zoo.codecs.base import ArrayCodec, Measure, StageProgress, Transformed, TypedArray
from zoo.codecs.selection import check_patterns


class L2(ArrayCodec):
    codec_id = "l2"
    # The contract test's model is one 64x96 matrix: at target_ratio=10 its header entries, the
    # lossless bias and the coder's tables leave ~1.5 bits per weight, whence the loose bound
    # (tests/test_l2.py holds a real budget to a tight one).
    tolerance: ClassVar[float] = 0.75

    def __init__(self, target_ratio: float = 10.0, tune: int = 0, include: str | None = None, exclude: str | None = None) -> None:
        if isinstance(target_ratio, bool) or not isinstance(target_ratio, (int, float)) or not 1.0 < target_ratio <= 320.0:
            raise PipelineError(f"l2: target_ratio must be a number above 1 and at most 320 (0.1 bits per weight), got {target_ratio!r}")
        if isinstance(tune, bool) or not isinstance(tune, int) or not 0 <= tune <= 100_000:
            raise PipelineError(f"l2: tune is a number of iterations from 0 to 100000, got {tune!r}")
        check_patterns(include, exclude)
        self.target_ratio = target_ratio
        self.tune = tune
        self.include = include
        self.exclude = exclude

    def survey(self, tensors: Any, calibration: Any = None, progress: StageProgress | None = None, measure: Measure | None = None) -> Plan:
        from zoo.optimize.rate import allocate  # torch too when calibrating: imported only when a model is surveyed

        if measure is None:
            raise PipelineError("l2: a survey counts its budget in the pipeline's own coded bytes: run it through Pipeline.survey")
        return allocate(self, tensors, calibration, progress, measure)

    def encode_tensor(self, name: str, array: TypedArray, plan: Any = None) -> Transformed:
        values = to_float32(array.data, array.dtype)
        if not np.isfinite(values).all():
            raise PipelineError(f"l2: {name or 'a tensor'} holds NaN or infinity, which a uniform quantizer cannot store")
        if plan is not None and name in plan.steps:
            step, dead_zone = plan.steps[name]
        else:
            step, dead_zone = step_for_bits(values, 32.0 / self.target_ratio), 0.0
        hessian = plan.hessian(name, values) if plan is not None else None
        if plan is not None and name in plan.symbols:
            symbols = plan.symbols[name]
        elif hessian is None:
            symbols = quantize(values, step, dead_zone)
        else:
            symbols = quantize_with_feedback(values, step, dead_zone, hessian)
        return Transformed({"symbols": symbols_array(symbols)}, {"step": float(step), "dead_zone": float(dead_zone)})

    def encode(self, array: TypedArray) -> Transformed:
        return self.encode_tensor("", array)

    def decode(self, parts: dict[str, TypedArray], meta: dict[str, Any], dtype: str, shape: tuple[int, ...]) -> TypedArray:
        symbols = parts.get("symbols")
        if set(parts) != {"symbols"} or symbols is None or symbols.dtype not in dict(SYMBOL_DTYPES):
            raise FormatError(f"l2: archive holds a node with parts {sorted(parts)}; expected integer symbols")
        if tuple(symbols.shape) != tuple(shape):
            raise FormatError(f"l2: symbols have shape {list(symbols.shape)}, expected {list(shape)}")
        step, dead_zone = meta.get("step"), meta.get("dead_zone")
        if not all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in (step, dead_zone)) or step <= 0 or dead_zone < 0:
            raise FormatError(f"l2: bad step {step!r} or dead zone {dead_zone!r}")
        values = dequantize(symbols.data.astype(np.int64), step, dead_zone)
        return TypedArray(from_float32(values, dtype).reshape(shape), dtype)
