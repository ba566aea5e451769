"""codebook: JLCM-style weight clustering ("Network Memory Footprint Compression Through Jointly
Learnable Codebooks and Mappings"), on 2-D views of weights (conv kernels: out x rest).

Each row is divided by its RMS (a per-row scale), rows are sorted by the shape of their
distribution (kurtosis) and cut into groups of `rows`; each group shares one codebook of
2**bits values found by k-means, and every weight becomes an index into its row's codebook.
With calibration statistics, k-means weighs each input column by its mean squared activation,
then assignments and codebooks are refined jointly to lower the layer's output error on the
calibration inputs (zoo.optimize.refine).

Parts: ``indices`` (bit-packed, or one byte each when ``pack`` is false so that an entropy
coder can take their skewed distribution), ``codebooks`` (F16, groups x 2**bits), ``groups``
(row -> codebook, bit-packed) and ``scales`` (per row, F16 or F32 where F16 cannot hold them). Every part
is final: a later codebook stage must not quantize this one's codebooks.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np

from zoo import kernels as _kernels
from zoo.dtypes import from_float32, saturated, to_float32
from zoo.errors import FormatError
from zoo.optimize import refine as _refine
from zoo.optimize.calibration import PartStatistics
from zoo.codecs.base import LossyCodec, Measure, Param, StageProgress, Transformed, TypedArray

_F16_NORMAL = (6.2e-5, 6.5e4)
BLOCK_ELEMENTS = 1 << 18  # in one block of rows of a temporary: 2 MiB of float64


def _row_blocks(n_rows: int, n_cols: int) -> list[slice]:
    """Consecutive row ranges of about BLOCK_ELEMENTS elements (at least one row each)."""
    step = max(1, BLOCK_ELEMENTS // max(1, n_cols))
    return [slice(first, first + step) for first in range(0, n_rows, step)]


def _row_means(values: Callable[[slice], np.ndarray], n_rows: int, n_cols: int, power: int) -> np.ndarray:
    """Mean of values**power along each row, in float64, block by block of rows."""
    means = np.empty(n_rows, dtype=np.float64)
    for rows in _row_blocks(n_rows, n_cols):
        means[rows] = np.mean(values(rows).astype(np.float64) ** power, axis=1)
    return means


def _group_rows(kurtosis: np.ndarray, rows_per_group: int) -> np.ndarray:
    """Row -> group, grouping rows whose value distributions look alike (by kurtosis)."""
    n_rows = kurtosis.shape[0]
    order = np.argsort(kurtosis, kind="stable")
    groups = np.empty(n_rows, dtype=np.int64)
    groups[order] = np.arange(n_rows) // rows_per_group
    return groups


def group_bits(n_groups: int) -> int:
    """Bits per row of the packed row -> group map (0: too many groups to pack, stored as U32)."""
    bits = max(1, int(n_groups - 1).bit_length())
    return bits if bits <= 16 else 0


class Codebook(LossyCodec):
    codec_id = "codebook"
    tolerance: ClassVar[float] = 0.12  # bits=4 on a Gaussian: k-means leaves about 0.1
    dtypes: ClassVar[frozenset[str]] = frozenset({"F32", "F16", "BF16"})  # what the dequantize kernel writes
    params = (
        Param("bits", int, 4, 1, 8, help="each codebook holds 2**bits values"),
        Param("rows", int, 64, 1, 1 << 20, help="rows sharing one codebook"),
        Param("pack", bool, True, help="bit-pack the indices (false: a byte each, for the entropy coder)"),
        Param("iterations", int, 100, 0, 1000, help="k-means iterations"),
    )
    stages = {"calibrating": "sequences"}  # with --calib (zoo.optimize.calibration)
    bits: int
    rows: int
    pack: bool
    iterations: int

    def selects(self, name: str, array: TypedArray) -> bool:
        # A tensor whose parts would take as many bytes as it does (a codebook per few short rows)
        # stays as it is, exact, as lowrank keeps a layer whose factors would not be smaller.
        return super().selects(name, array) and self.stored_bytes(array.shape) < array.data.nbytes

    def stored_bytes(self, shape: tuple[int, ...]) -> int:
        """What the parts of a tensor of `shape` take before the lossless stages: packed indices,
        an F16 codebook per group, an F16 scale per row and the row -> group map."""
        n_rows = shape[0]
        n_cols = math.prod(shape[1:])
        n_groups = -(-n_rows // self.rows)
        map_bits = group_bits(n_groups) or 32
        return -(-n_rows * n_cols * self.bits // 8) + 2 * n_groups * (1 << self.bits) + 2 * n_rows + -(-n_rows * map_bits // 8)

    def survey(self, tensors: Any, calibration: Any = None, progress: StageProgress | None = None, measure: Measure | None = None) -> Any:
        # only looked up per tensor, by the name of the tensor whose inputs it takes (a lowrank part's)
        return None if calibration is None else PartStatistics(calibration, self.codec_id)

    def encode(self, array: TypedArray, name: str = "", plan: Any = None) -> Transformed:
        # Blocks and groups of rows are read from the tensor as they are needed: a float32 copy of
        # the whole tensor, its float64 powers and int64 indices held 7 times a float32 tensor.
        data = np.asarray(array.data).reshape(array.shape[0], -1)
        n_rows, n_cols = data.shape
        hessian = plan.hessian(name, n_cols) if plan is not None else None

        scales = _row_scales(lambda rows: self.check_finite(to_float32(data[rows], array.dtype, copy=False), name), n_rows, n_cols)
        divisor = np.where(scales > 0, scales, 1)[:, None]

        def normalized(rows: slice | np.ndarray) -> np.ndarray:
            return to_float32(data[rows], array.dtype, copy=False) / divisor[rows]

        groups = _group_rows(_row_means(normalized, n_rows, n_cols, 4), self.rows)
        n_groups = int(groups.max()) + 1
        column_weight = np.diag(hessian).astype(np.float64) if hessian is not None else np.ones(n_cols)
        codebooks = np.empty((n_groups, 1 << self.bits), dtype=np.float32)
        # each group's rows in increasing order, as the mask groups == group picked them (a mask per
        # group read every row once per group: 2,000 times the 128,000 rows of an embedding)
        by_group = np.argsort(groups, kind="stable")
        for group, members in enumerate(np.split(by_group, np.cumsum(np.bincount(groups, minlength=n_groups))[:-1])):
            element_weight = (scales[members, None].astype(np.float64) ** 2) * column_weight[None, :]
            codebooks[group] = _refine.kmeans_1d(normalized(members).ravel(), element_weight.ravel(), 1 << self.bits, self.iterations)
        codebooks = codebooks.astype(np.float16).astype(np.float32)  # as stored, so the fit sees what decode will
        if hessian is not None:
            indices, codebooks = _refine.refine(to_float32(data, array.dtype, copy=False), scales, groups, codebooks, hessian)
            indices = indices.astype(np.uint8)
        else:
            row_codebooks = codebooks[groups]
            indices = np.empty((n_rows, n_cols), dtype=np.uint8)  # refine.nearest gives int64: a block at a time
            for rows in _row_blocks(n_rows, n_cols):
                indices[rows] = _refine.nearest(normalized(rows), row_codebooks[rows])
        return self._parts(indices, codebooks, groups, scales)

    def _parts(self, indices: np.ndarray, codebooks: np.ndarray, groups: np.ndarray, scales: np.ndarray) -> Transformed:
        n_rows = indices.shape[0]
        index_part = TypedArray(_kernels.pack_indices(indices, self.bits), "U8") if self.pack else TypedArray(indices, "U8")
        map_bits = group_bits(codebooks.shape[0])
        if map_bits:
            group_part = TypedArray(_kernels.pack_indices(groups.astype(np.uint8 if map_bits <= 8 else np.uint16), map_bits), "U8")
        else:
            group_part = TypedArray(groups.astype("<u4"), "U32")
        nonzero = scales[scales > 0]
        fits_f16 = nonzero.size == 0 or (nonzero.min() >= _F16_NORMAL[0] and nonzero.max() <= _F16_NORMAL[1])
        scale_dtype = "F16" if fits_f16 else "F32"
        parts = {
            "indices": index_part,
            "codebooks": TypedArray(codebooks.astype("<f2"), "F16"),
            "groups": group_part,
            "scales": TypedArray(from_float32(scales, scale_dtype).reshape(n_rows), scale_dtype),
        }
        return Transformed(parts, {"cols": int(indices.shape[1]), "groups": int(codebooks.shape[0])}, final=frozenset(parts))

    def decode(self, parts: dict[str, TypedArray], meta: dict[str, Any], dtype: str, shape: tuple[int, ...]) -> TypedArray:
        if dtype not in self.dtypes:
            raise FormatError(f"codebook: cannot rebuild a {dtype} tensor, only F32, F16 or BF16 ones; an older zoo quantized "
                              "it all the same: compress the original again")
        if set(parts) != {"indices", "codebooks", "groups", "scales"} or len(shape) < 2:
            raise FormatError(f"codebook: archive holds a {dtype}{list(shape)} node with parts {sorted(parts)}")
        n_rows = shape[0]
        n_cols = int(np.prod(shape[1:]))
        codebooks = to_float32(parts["codebooks"].data, parts["codebooks"].dtype).reshape(-1, 1 << self.bits)
        scales = to_float32(parts["scales"].data, parts["scales"].dtype).reshape(-1)
        # archives from before the row map was bit-packed (2026-11-22) have no meta `groups`: their
        # map is one unsigned number a row, and the codebooks' count is G
        legacy = "groups" not in meta and parts["groups"].dtype in ("U8", "U16", "U32")
        n_groups = codebooks.shape[0] if legacy else meta.get("groups")
        # integers as JSON writes them: 48.0 and true equal 48 and 1 in Python, and passed
        if (type(meta.get("cols")) is not int or meta["cols"] != n_cols or type(n_groups) is not int or codebooks.shape[0] != n_groups
                or scales.shape != (n_rows,)):
            raise FormatError(f"codebook: parts do not fit a {n_rows} x {n_cols} tensor")
        try:
            map_bits = 0 if legacy else group_bits(n_groups)
            groups = (_kernels.unpack_indices(parts["groups"].data.reshape(-1), map_bits, n_rows) if map_bits
                      else parts["groups"].data.reshape(-1)).astype(np.int64)
        except ValueError as error:
            raise FormatError(f"codebook: {error}") from None
        if groups.shape != (n_rows,) or (n_rows and groups.max() >= n_groups):
            raise FormatError("codebook: a row names a codebook the archive lacks")
        with np.errstate(over="ignore"):  # a large scale times a large entry: saturated below, as any overshoot
            row_codebooks = saturated(scales[:, None] * codebooks[groups], dtype)  # never an infinity from finite weights
        indices, bits = parts["indices"].data.reshape(-1), self.bits
        if not self.pack:
            if indices.size != n_rows * n_cols or (indices.size and int(indices.max()) >= 1 << self.bits):
                raise FormatError("codebook: indices do not fit the tensor or the codebook")
            row_codebooks = np.pad(row_codebooks, ((0, 0), (0, 256 - row_codebooks.shape[1])))
            bits = 8
        try:
            out = _kernels.dequantize(indices, bits, n_rows, n_cols, np.arange(n_rows, dtype=np.int32),
                                      np.ascontiguousarray(row_codebooks, dtype=np.float32), dtype)
        except ValueError as error:
            raise FormatError(f"codebook: {error}") from None
        if dtype == "F16":
            out = out.view("<f2")
        return TypedArray(out.reshape(shape), dtype)


def _row_scales(values: Callable[[slice], np.ndarray], n_rows: int, n_cols: int) -> np.ndarray:
    """Per-row RMS, rounded as it will be stored (F16 where every scale fits)."""
    scales = np.sqrt(_row_means(values, n_rows, n_cols, 2)).astype(np.float32)
    nonzero = scales[scales > 0]
    if nonzero.size == 0 or (nonzero.min() >= _F16_NORMAL[0] and nonzero.max() <= _F16_NORMAL[1]):
        return scales.astype(np.float16).astype(np.float32)
    return scales
