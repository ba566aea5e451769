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

from typing import Any, ClassVar

import numpy as np

from zoo import kernels as _kernels
from zoo.dtypes import from_float32, to_float32
from zoo.errors import FormatError
from zoo.optimize import refine as _refine
from zoo.codecs.base import LossyCodec, Measure, Param, StageProgress, Transformed, TypedArray

_F16_NORMAL = (6.2e-5, 6.5e4)


def as_matrix(array: TypedArray) -> np.ndarray:
    """float32 (rows, cols) view of a tensor of two or more dimensions."""
    values = to_float32(np.asarray(array.data), array.dtype)
    return values.reshape(array.shape[0], -1)


def _group_rows(normalized: np.ndarray, rows_per_group: int) -> np.ndarray:
    """Row -> group, grouping rows whose value distributions look alike (by kurtosis)."""
    n_rows = normalized.shape[0]
    kurtosis = np.mean(normalized.astype(np.float64) ** 4, axis=1)
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

    def survey(self, tensors: Any, calibration: Any = None, progress: StageProgress | None = None, measure: Measure | None = None) -> Any:
        return calibration  # only looked up per tensor, by name

    def encode(self, array: TypedArray, name: str = "", plan: Any = None) -> Transformed:
        weights = self.check_finite(as_matrix(array), name)
        n_rows, n_cols = weights.shape
        hessian = plan.hessian(name, n_cols) if plan is not None else None

        scales = _row_scales(weights)
        normalized = weights / np.where(scales > 0, scales, 1)[:, None]
        groups = _group_rows(normalized, self.rows)
        n_groups = int(groups.max()) + 1
        column_weight = np.diag(hessian).astype(np.float64) if hessian is not None else np.ones(n_cols)
        codebooks = np.empty((n_groups, 1 << self.bits), dtype=np.float32)
        for group in range(n_groups):
            members = groups == group
            element_weight = (scales[members, None].astype(np.float64) ** 2) * column_weight[None, :]
            codebooks[group] = _refine.kmeans_1d(normalized[members].ravel(), element_weight.ravel(), 1 << self.bits, self.iterations)
        codebooks = codebooks.astype(np.float16).astype(np.float32)  # as stored, so the fit sees what decode will
        if hessian is not None:
            indices, codebooks = _refine.refine(weights, scales, groups, codebooks, hessian)
        else:
            indices = _refine.nearest(normalized, codebooks[groups])
        return self._parts(indices.astype(np.uint8), codebooks, groups, scales)

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
        n_groups = meta.get("groups")
        codebooks = to_float32(parts["codebooks"].data, parts["codebooks"].dtype).reshape(-1, 1 << self.bits)
        scales = to_float32(parts["scales"].data, parts["scales"].dtype).reshape(-1)
        if meta.get("cols") != n_cols or not isinstance(n_groups, int) or codebooks.shape[0] != n_groups or scales.shape != (n_rows,):
            raise FormatError(f"codebook: parts do not fit a {n_rows} x {n_cols} tensor")
        try:
            map_bits = group_bits(n_groups)
            groups = (_kernels.unpack_indices(parts["groups"].data.reshape(-1), map_bits, n_rows) if map_bits
                      else parts["groups"].data.reshape(-1)).astype(np.int64)
        except ValueError as error:
            raise FormatError(f"codebook: {error}") from None
        if groups.shape != (n_rows,) or (n_rows and groups.max() >= n_groups):
            raise FormatError("codebook: a row names a codebook the archive lacks")
        row_codebooks = scales[:, None] * codebooks[groups]
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


def _row_scales(weights: np.ndarray) -> np.ndarray:
    """Per-row RMS, rounded as it will be stored (F16 where every scale fits)."""
    scales = np.sqrt(np.mean(weights.astype(np.float64) ** 2, axis=1)).astype(np.float32)
    nonzero = scales[scales > 0]
    if nonzero.size == 0 or (nonzero.min() >= _F16_NORMAL[0] and nonzero.max() <= _F16_NORMAL[1]):
        return scales.astype(np.float16).astype(np.float32)
    return scales
