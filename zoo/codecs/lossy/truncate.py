"""truncate: NeuZip's lossy mode. Keep `bits` of the mantissa, rounded to nearest even. A
subnormal value's leading mantissa bits are zeros, so it keeps fewer significant bits (and may
round to zero): its error is bounded by the step of the smallest normal values, not relative.

Rounding works on the magnitude's bit pattern, so a carry out of the mantissa lands in the
exponent (1.111b rounds up to 10.00b) exactly as float rounding does. A finite value never
rounds to infinity (it is truncated instead) and a NaN stays a NaN.

Two parts: ``exponent`` (one byte per weight; low entropy, left to the lossless stages) and
``sign_mantissa`` (sign then the kept mantissa bits, ``bits + 1`` per weight, bit-packed,
near random, so later stages store it raw).
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from zoo import kernels as _kernels
from zoo.dtypes import from_float32, to_float32
from zoo.errors import FormatError
from zoo.optimize import refine as _refine
from zoo.optimize.calibration import PartStatistics
from zoo.codecs.base import LossyCodec, Measure, Param, StageProgress, Transformed, TypedArray

# dtype -> (storage word, exponent bits, mantissa bits)
_LAYOUT = {"F32": (np.uint32, 8, 23), "BF16": (np.uint16, 8, 7), "F16": (np.uint16, 5, 10)}
MAX_BITS = 15  # sign + mantissa must fit the 16-bit packer
BLOCK = 1 << 20  # values rounded (or rebuilt) at a time: their 32-bit temporaries stay a few MiB


class Truncate(LossyCodec):
    codec_id = "truncate"
    tolerance: ClassVar[float] = 0.05  # bits=3: relative error at most 2**-4 per normal weight (subnormals: the same absolute step)
    dtypes: ClassVar[frozenset[str]] = frozenset(_LAYOUT)
    params = (Param("bits", int, 3, 1, MAX_BITS, help="mantissa bits kept"),)
    stages = {"calibrating": "sequences"}  # with --calib (zoo.optimize.calibration)
    bits: int

    def selects(self, name: str, array: TypedArray) -> bool:
        # Where `bits` keeps the whole mantissa there is nothing to drop: the tensor stays as it is.
        return super().selects(name, array) and self.bits < _LAYOUT[array.dtype][2]

    def survey(self, tensors: Any, calibration: Any = None, progress: StageProgress | None = None, measure: Measure | None = None) -> Any:
        # only looked up per tensor, by the name of the tensor whose inputs it takes (a lowrank part's)
        return None if calibration is None else PartStatistics(calibration, self.codec_id)

    def encode(self, array: TypedArray, name: str = "", plan: Any = None) -> Transformed:
        """With calibration statistics, each matrix's values are first moved onto the kept-bits grid
        column by column with the rounding error fed forward (zoo.optimize.refine.feedback): round
        to nearest is the best choice per weight, not for the layer's output. The values are then
        on the grid, so encode's own rounding leaves them as they are."""
        hessian = plan.hessian(name, array.shape[-1]) if plan is not None and array.data.ndim == 2 else None
        if hessian is not None:
            values = to_float32(np.asarray(array.data), array.dtype)
            if np.isfinite(values).all():
                moved = _refine.feedback(values, hessian, lambda _, column: self.round_values(column, array.dtype))
                array = TypedArray(from_float32(moved.astype(np.float32), array.dtype).reshape(array.shape), array.dtype)
        return self._split(array)

    def round_values(self, values: np.ndarray, dtype: str) -> np.ndarray:
        """float64 `values` as they come back from a `dtype` tensor with `bits` mantissa bits kept."""
        storage = from_float32(np.asarray(values, dtype=np.float32), dtype)
        sign, kept = self._round(storage, dtype)
        return to_float32(self._assemble(sign, kept, dtype), dtype).astype(np.float64)

    def _round(self, storage: np.ndarray, dtype: str) -> tuple[np.ndarray, np.ndarray]:
        """(sign, magnitude with `bits` mantissa bits) of each value's bit pattern, rounded to nearest even."""
        word, exponent_bits, mantissa_bits = _LAYOUT[dtype]
        width = 8 * np.dtype(word).itemsize
        dropped = mantissa_bits - self.bits
        bits = np.ascontiguousarray(storage).view(word).reshape(-1).astype(np.uint32)
        sign = bits >> np.uint32(width - 1)
        magnitude = bits & np.uint32((1 << (width - 1)) - 1)
        all_ones = (1 << exponent_bits) - 1
        special = (magnitude >> np.uint32(mantissa_bits)) == all_ones  # inf or NaN

        lowest_kept = (magnitude >> np.uint32(dropped)) & np.uint32(1)
        rounded = (magnitude + np.uint32((1 << (dropped - 1)) - 1) + lowest_kept) >> np.uint32(dropped)
        kept = np.where(special | ((rounded >> np.uint32(self.bits)) == all_ones), magnitude >> np.uint32(dropped), rounded)
        mantissa_mask = np.uint32((1 << self.bits) - 1)
        lost_nan = special & ((magnitude & np.uint32((1 << mantissa_bits) - 1)) != 0) & ((kept & mantissa_mask) == 0)
        return sign, np.where(lost_nan, kept | np.uint32(1 << (self.bits - 1)), kept)

    def _split(self, array: TypedArray) -> Transformed:
        """The parts of `array` with its mantissas rounded to `bits`, BLOCK values at a time: the
        rounding's 32-bit temporaries of a whole tensor took about ten times its size (4.9 GB for
        a 512 MiB one)."""
        values = np.ascontiguousarray(array.data).reshape(-1)
        exponent = np.empty(values.size, np.uint8)
        sign_mantissa = np.empty(values.size, np.uint8 if self.bits < 8 else np.uint16)
        mantissa_mask = np.uint32((1 << self.bits) - 1)
        for first in range(0, values.size, BLOCK):
            sign, kept = self._round(values[first:first + BLOCK], array.dtype)
            exponent[first:first + BLOCK] = kept >> np.uint32(self.bits)
            sign_mantissa[first:first + BLOCK] = (sign << np.uint32(self.bits)) | (kept & mantissa_mask)
        packed = _kernels.pack_indices(sign_mantissa, self.bits + 1)
        parts = {"exponent": TypedArray(exponent.reshape(array.shape), "U8"), "sign_mantissa": TypedArray(packed, "U8")}
        return Transformed(parts, {}, final=frozenset(parts))

    def decode(self, parts: dict[str, TypedArray], meta: dict[str, Any], dtype: str, shape: tuple[int, ...]) -> TypedArray:
        if dtype not in _LAYOUT or set(parts) != {"exponent", "sign_mantissa"}:
            raise FormatError(f"truncate: archive holds a {dtype} node with parts {sorted(parts)}")
        exponent = parts["exponent"].data.reshape(-1)
        count = exponent.size
        if tuple(parts["exponent"].shape) != tuple(shape):
            raise FormatError(f"truncate: exponent part has shape {list(parts['exponent'].shape)}, expected {list(shape)}")
        packed, width = parts["sign_mantissa"].data.reshape(-1), self.bits + 1
        needed = -(-count * width // 8)
        if parts["sign_mantissa"].dtype != "U8" or packed.size != needed:
            # another length is another `bits` (or damage): read with this one, most weights came back wrong, unsaid
            raise FormatError(f"truncate: sign_mantissa part is {parts['sign_mantissa'].dtype}[{packed.size}]; "
                              f"{count} weights of {width} bits take U8[{needed}]")
        storage = np.empty(count, _LAYOUT[dtype][0])
        for first in range(0, count, BLOCK):  # BLOCK values a time (a multiple of 8: each block starts on a byte)
            number = min(BLOCK, count - first)
            block = packed[first * width // 8:-(-(first + number) * width // 8)]
            try:
                sign_mantissa = _kernels.unpack_indices(block, width, number).astype(np.uint32)
            except ValueError as error:
                raise FormatError(f"truncate: {error}") from None
            sign = sign_mantissa >> np.uint32(self.bits)
            kept = (exponent[first:first + number].astype(np.uint32) << np.uint32(self.bits)) | (sign_mantissa & np.uint32((1 << self.bits) - 1))
            storage[first:first + number] = self._words(sign, kept, dtype)
        return TypedArray(self._typed(storage, dtype).reshape(shape), dtype)

    def _assemble(self, sign: np.ndarray, kept: np.ndarray, dtype: str) -> np.ndarray:
        """Storage words (F16 and F32 as their float types) from sign and kept magnitude bits."""
        return self._typed(self._words(sign, kept, dtype), dtype)

    def _words(self, sign: np.ndarray, kept: np.ndarray, dtype: str) -> np.ndarray:
        word, _, mantissa_bits = _LAYOUT[dtype]
        width = 8 * np.dtype(word).itemsize
        return ((sign << np.uint32(width - 1)) | (kept << np.uint32(mantissa_bits - self.bits))).astype(word)

    @staticmethod
    def _typed(storage: np.ndarray, dtype: str) -> np.ndarray:
        if dtype == "F16":
            return storage.view("<f2")
        if dtype == "F32":
            return storage.view("<f4")
        return storage
