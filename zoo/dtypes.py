"""The element types zoo knows, named as safetensors names them.

Every tensor travels through zoo as its raw storage: a numpy array of an unsigned or plain
numpy type (BF16 as uint16, the F8 types as uint8) plus the dtype name. Lossy codecs work in
float32 and hand back float32; `to_float32` and `from_float32` are the only conversions.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

import numpy as np

from zoo.errors import InputError


@dataclass(frozen=True)
class DType:
    name: str
    bits: int
    storage: str | None  # numpy dtype of the raw storage; None: opaque bytes only
    is_float: bool = False
    exponent_bits: int = 0

    @property
    def itemsize(self) -> int:
        return max(1, self.bits // 8)


_TABLE = [
    DType("F64", 64, "<f8", True, 11),
    DType("F32", 32, "<f4", True, 8),
    DType("F16", 16, "<f2", True, 5),
    DType("BF16", 16, "<u2", True, 8),
    DType("F8_E4M3", 8, "u1", True, 4),
    DType("F8_E5M2", 8, "u1", True, 5),
    DType("I64", 64, "<i8"),
    DType("I32", 32, "<i4"),
    DType("I16", 16, "<i2"),
    DType("I8", 8, "i1"),
    DType("U64", 64, "<u8"),
    DType("U32", 32, "<u4"),
    DType("U16", 16, "<u2"),
    DType("U8", 8, "u1"),
    DType("BOOL", 8, "u1"),
    # Known to safetensors, with no float model here: no lossy stage selects them, so they are kept
    # bit for bit (F4 packs two values a byte and has no numpy storage).
    DType("C64", 64, "<c8"),
    DType("F4", 4, None),  # two values a byte: the shape counts values
    DType("F8_E8M0", 8, "u1"),
    DType("F8_E4M3FNUZ", 8, "u1"),
    DType("F8_E5M2FNUZ", 8, "u1"),
]
DTYPES: dict[str, DType] = {d.name: d for d in _TABLE}
FLOAT_DTYPES = frozenset(d.name for d in _TABLE if d.is_float)


def get_dtype(name: str) -> DType:
    try:
        return DTYPES[name]
    except KeyError:
        raise InputError(f"unknown dtype {name!r}") from None


def storage_dtype(name: str) -> np.dtype:
    dtype = get_dtype(name)
    return np.dtype(dtype.storage or "u1")


def array_fits(shape: list[int] | tuple[int, ...], name: str) -> bool:
    """Whether numpy can hold an array of this shape and dtype: the product of its dimensions (a
    zero counted as one, as numpy checks) times the element size stays below 2^63, even when a
    zero makes the array empty."""
    size = storage_dtype(name).itemsize
    for dimension in shape:
        size *= max(dimension, 1)
    return size < 2**63


def _f8_table(exponent_bits: int) -> np.ndarray:
    """float32 value of each of the 256 codes of an fp8 format (E4M3 has no infinities: 0x7f/0xff are NaN)."""
    mantissa_bits = 7 - exponent_bits
    bias = (1 << (exponent_bits - 1)) - 1
    codes = np.arange(256, dtype=np.int64)
    sign = np.where(codes & 0x80, -1.0, 1.0)
    exponent = (codes >> mantissa_bits) & ((1 << exponent_bits) - 1)
    mantissa = codes & ((1 << mantissa_bits) - 1)
    normal = (1.0 + mantissa / (1 << mantissa_bits)) * np.exp2(exponent.astype(np.float64) - bias)
    subnormal = (mantissa / (1 << mantissa_bits)) * np.exp2(1.0 - bias)
    values = sign * np.where(exponent == 0, subnormal, normal)
    if exponent_bits == 4:
        values[(codes & 0x7F) == 0x7F] = np.nan
    else:
        top = exponent == (1 << exponent_bits) - 1
        values[top & (mantissa == 0)] = sign[top & (mantissa == 0)] * np.inf
        values[top & (mantissa != 0)] = np.nan
    return values.astype(np.float32)


_F8_VALUES = {"F8_E4M3": _f8_table(4), "F8_E5M2": _f8_table(5)}


def _fnuz_table(exponent_bits: int) -> np.ndarray:
    """float32 value of each code of a "fnuz" fp8 format (finite, no negative zero: 0x80 is the one
    NaN), whose exponent bias is one more than the IEEE-like formats'."""
    mantissa_bits = 7 - exponent_bits
    bias = 1 << (exponent_bits - 1)
    codes = np.arange(256, dtype=np.int64)
    exponent = (codes >> mantissa_bits) & ((1 << exponent_bits) - 1)
    mantissa = codes & ((1 << mantissa_bits) - 1)
    magnitude = np.where(exponent == 0, mantissa / (1 << mantissa_bits) * np.exp2(1.0 - bias),
                         (1.0 + mantissa / (1 << mantissa_bits)) * np.exp2(exponent.astype(np.float64) - bias))
    values = np.where(codes & 0x80, -magnitude, magnitude)
    values[0x80] = np.nan
    return values.astype(np.float32)


_E8M0_VALUES = np.append(np.exp2(np.arange(255.0) - 127).astype(np.float32), np.float32(np.nan))  # a power of two per code, 0xff NaN
# fp8 formats zoo reads (to float32) but no lossy stage writes
_READ_ONLY_F8 = {"F8_E4M3FNUZ": _fnuz_table(4), "F8_E5M2FNUZ": _fnuz_table(5), "F8_E8M0": _E8M0_VALUES}


def to_float32(raw: np.ndarray, dtype: str, copy: bool = True) -> np.ndarray:
    """The float32 values of a raw float storage array (exact for every float type but F64). With
    copy=False, F32 storage comes back as it is, for callers that only read it (a copy is the tensor
    again, on top of its mapped file)."""
    # worked on flat and shaped back: numpy makes a scalar of a 0-d array's shift or lookup
    if dtype == "BF16":
        return (raw.reshape(-1).astype(np.uint32) << 16).view(np.float32).reshape(raw.shape)
    if dtype in _F8_VALUES:
        return _F8_VALUES[dtype][raw.reshape(-1)].reshape(raw.shape)
    if dtype in _READ_ONLY_F8:
        return _READ_ONLY_F8[dtype][raw.reshape(-1)].reshape(raw.shape)
    if dtype in ("F16", "F32", "F64"):
        return raw.astype(np.float32, copy=copy)
    raise InputError(f"dtype {dtype} is not a float type")


EVEN = "even"  # an F8 node's "rounding" in an archive (docs/FORMAT.md)
_F8_RULE: ContextVar[str] = ContextVar("f8_rounding", default=EVEN)


@contextmanager
def f8_rounding(rule: str) -> Iterator[None]:
    """Within it, from_float32 rounds to F8 by `rule`: EVEN, or anything else for the rule of
    archives written before 2026-12-06 (_to_f8_before_even), so that their lossy F8 tensors decode
    to the bytes their manifests' sha256 name."""
    token = _F8_RULE.set(rule)
    try:
        yield
    finally:
        _F8_RULE.reset(token)


def _to_f8_before_even(values: np.ndarray, table: np.ndarray) -> np.ndarray:
    """The F8 rounding of zoo before 2026-12-06, kept to decode what it wrote: nearest, a tie to the
    lower value, and a value within half the smallest subnormal of zero to the zero whose code the
    stable sort put second (-0 above zero, +0 below)."""
    finite = np.where(np.isfinite(table), table, np.inf)
    order = np.argsort(finite, kind="stable")
    ordered = finite[order]
    position = np.clip(np.searchsorted(ordered, values), 1, len(ordered) - 1)
    lower, upper = ordered[position - 1], ordered[position]
    nearest = np.where(np.abs(values - lower) <= np.abs(upper - values), position - 1, position)
    return order[nearest].astype(np.uint8)


def _to_f8(values: np.ndarray, table: np.ndarray) -> np.ndarray:
    """The fp8 codes nearest to `values`, ties to the even code (the even mantissa), the sign kept
    (so -1e-9 is -0). Past the largest finite value a finite value saturates to it, where IEEE
    rounding would overflow: a lossy stage must not make an infinity of a large weight. An
    infinity stays one where the format has them (E5M2) and saturates where it has none (E4M3);
    NaN stays NaN. The positive codes 0x00 up to the largest finite one count up in magnitude."""
    magnitudes = table[:0x80]
    top = int(np.flatnonzero(np.isfinite(magnitudes))[-1])  # E4M3 0x7e (448), E5M2 0x7b (57344)
    size = np.abs(values)
    position = np.clip(np.searchsorted(magnitudes[:top + 1], size), 1, top)  # lower and upper: codes position - 1, position
    below, above = size - magnitudes[position - 1], magnitudes[position] - size
    codes = np.where(below < above, position - 1, position)
    codes = np.where(below == above, position & ~1, codes)  # a tie: of two neighbouring codes, the even one
    codes = np.where(size > magnitudes[top], top, codes)
    if np.isinf(magnitudes[top + 1]):
        codes = np.where(np.isinf(size), top + 1, codes)
    nan = np.flatnonzero(np.isnan(magnitudes))[0]
    codes = np.where(np.isnan(size), nan, codes)
    return (codes | (np.signbit(values).astype(np.int64) << 7)).astype(np.uint8)


FLOAT32_MAX = float(np.finfo(np.float32).max)
_LARGEST = {"F16": 65504.0, "BF16": float(np.uint32(0x7F7F0000).view(np.float32)), "F32": FLOAT32_MAX,
            "F64": FLOAT32_MAX}  # F64 as the float32 values of a lossy stage reach it


def fits_float32(values: np.ndarray) -> bool:
    """Whether F64 `values` keep their magnitude as float32, which the lossy stages compute in: no
    finite one past float32's largest (it would become an infinity), and not every nonzero one
    below float32's smallest normal number (they would come back as zeros). NaN and infinities are
    left to the stages' own refusal."""
    magnitudes = np.abs(values[np.isfinite(values)])
    largest = float(magnitudes.max()) if magnitudes.size else 0.0
    return largest <= FLOAT32_MAX and (largest == 0.0 or largest >= float(np.finfo(np.float32).tiny))


def saturated(values: np.ndarray, dtype: str, where: np.ndarray | None = None) -> np.ndarray:
    """float32 `values` of a lossy reconstruction (of weights that were finite), with those past the
    largest finite number `dtype` holds set to it, infinities among them (a float32 product or sum
    that overflowed): a weight at the edge of the range comes back at the edge, never as an
    infinity, as fp8's conversion always saturates. NaN stays NaN. With `where` (a mask), only
    there. In place where `values` is writable."""
    limit = _LARGEST.get(dtype)
    if limit is None:  # fp8: from_float32 saturates
        return values
    limit32 = np.float32(limit)
    if where is None:
        return np.clip(values, -limit32, limit32, out=values if values.flags.writeable else None)
    return np.where(where, np.clip(values, -limit32, limit32), values)


def from_float32(values: np.ndarray, dtype: str) -> np.ndarray:
    """Raw storage of `dtype` nearest to float32 `values` (round to nearest, ties to even)."""
    values = np.ascontiguousarray(values, dtype=np.float32)
    if dtype == "BF16":
        bits = values.view(np.uint32)
        rounding = ((bits >> 16) & 1) + 0x7FFF
        rounded = ((bits + rounding) >> 16).astype(np.uint16)
        nan = np.isnan(values)
        rounded[nan] = ((bits[nan] >> 16) | 0x40).astype(np.uint16)  # keep NaN a NaN
        return rounded
    if dtype in _F8_VALUES:
        return _to_f8(values, _F8_VALUES[dtype]) if _F8_RULE.get() == EVEN else _to_f8_before_even(values, _F8_VALUES[dtype])
    if dtype == "F16":
        return values.astype("<f2")
    if dtype == "F32":
        return values
    if dtype == "F64":
        return values.astype("<f8")
    raise InputError(f"dtype {dtype} is not a float type")
