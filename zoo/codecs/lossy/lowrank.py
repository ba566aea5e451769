"""lowrank: truncated SVD of each weight matrix (conv kernels as out x rest).

The rank comes from one of two rules:

* ``energy=E``: the smallest rank keeping a fraction E of the squared singular values.
* ``ratio=R``: a size budget over the whole model: the factors of all selected tensors may take
  at most R times their original size. After "Compressing Neural Networks: Towards Determining
  the Optimal Layer-wise Decomposition", the budget is spread so that the largest per-layer
  relative error is as small as possible: survey() finds, by bisection over the singular values
  of every layer, the smallest error bound whose ranks fit the budget; each layer then takes
  the smallest rank within that bound.

A layer whose factors would not be smaller than the matrix is left whole: one part ``dense``
that later stages treat like the original. Otherwise the parts are ``left`` (rows x rank,
U S^1/2) and ``right`` (rank x cols, S^1/2 V^T), in the tensor's dtype; neither is final, so
``lowrank|codebook`` quantizes the factors.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from zoo.dtypes import from_float32, to_float32
from zoo.errors import FormatError, PipelineError
from zoo.codecs.base import LossyCodec, Measure, Param, StageProgress, Transformed, TypedArray

_BISECTION_STEPS = 40


def _matrix(array: TypedArray) -> np.ndarray:
    return to_float32(np.asarray(array.data), array.dtype).reshape(array.shape[0], -1)


def relative_errors(singular_values: np.ndarray) -> np.ndarray:
    """errors[r]: relative Frobenius error of the best rank-r approximation, r = 0..len."""
    energy = singular_values.astype(np.float64) ** 2
    total = energy.sum()
    if total <= 0:
        return np.zeros(len(energy) + 1)
    tail = np.concatenate([np.cumsum(energy[::-1])[::-1], [0.0]])
    return np.sqrt(np.maximum(tail, 0) / total)


def rank_within(errors: np.ndarray, bound: float) -> int:
    """Smallest rank whose relative error is at most `bound`, and at least 1 for a matrix that is
    not all zeros: rank 0 keeps nothing of it (a budget of ratio=0.5 made a 2 x 12288 matrix zeros)."""
    return max(int(np.argmax(errors <= bound + 1e-12)), 1 if errors[0] > 0 else 0)


def _stored_elements(rank: int, rows: int, cols: int) -> int:
    factored = rank * (rows + cols)
    return factored if factored < rows * cols else rows * cols


class LowRank(LossyCodec):
    codec_id = "lowrank"
    tolerance: ClassVar[float] = 0.12  # energy=0.99 leaves a relative error of at most 0.1

    params = (
        Param("energy", float, None, 0.0, 1.0, open_low=True, help="fraction of the squared singular values kept"),
        Param("ratio", float, None, 0.0, 1.0, open_low=True, help="size of the factors / size of the matrices, over the model"),
    )
    # A spec names one: a silent default would change the weights the user did not ask to change.
    # (Archives written by `-p lowrank` before this rule hold neither and decode as energy=0.99.)
    needs_one_of = ("energy", "ratio")
    energy: float | None
    ratio: float | None

    def check(self) -> None:
        super().check()
        if self.energy is not None and self.ratio is not None:
            raise PipelineError("lowrank: give energy or ratio, not both")

    def survey(self, tensors: Any, calibration: Any = None, progress: StageProgress | None = None, measure: Measure | None = None) -> float | None:
        """The error bound that fits the ratio budget (None in energy mode)."""
        if self.ratio is None:
            return None
        layers = []
        for name, array in tensors():
            if self.selects(name, array):
                matrix = self.check_finite(_matrix(array), name)
                layers.append((relative_errors(np.linalg.svd(matrix, compute_uv=False)), *matrix.shape))
        if not layers:
            return None
        budget = self.ratio * sum(rows * cols for _, rows, cols in layers)

        def size(bound: float) -> int:
            return sum(_stored_elements(rank_within(errors, bound), rows, cols) for errors, rows, cols in layers)

        low, high = 0.0, 1.0  # at error 1 every rank is 1 (0 for a matrix of zeros): the smallest size there is
        for _ in range(_BISECTION_STEPS):
            middle = (low + high) / 2
            low, high = (low, middle) if size(middle) <= budget else (middle, high)
        return high

    def encode(self, array: TypedArray, name: str = "", plan: Any = None) -> Transformed:
        matrix = self.check_finite(_matrix(array), name)
        rows, cols = matrix.shape
        u, s, vt = np.linalg.svd(matrix, full_matrices=False)
        errors = relative_errors(s)
        if self.ratio is None:
            rank = rank_within(errors, float(np.sqrt(1 - (self.energy or 0.99))))
        elif plan is not None:
            rank = rank_within(errors, float(plan))
        else:  # no survey (a single tensor): the budget applies to this tensor alone
            rank = max(int(self.ratio * rows * cols // (rows + cols)), 1 if errors[0] > 0 else 0)
        if _stored_elements(rank, rows, cols) == rows * cols:
            return Transformed({"dense": array}, {"rank": None})
        root = np.sqrt(s[:rank])
        left = from_float32(u[:, :rank] * root[None, :], array.dtype)
        right = from_float32(root[:, None] * vt[:rank], array.dtype)
        return Transformed({"left": TypedArray(left, array.dtype), "right": TypedArray(right, array.dtype)}, {"rank": rank})

    def decode(self, parts: dict[str, TypedArray], meta: dict[str, Any], dtype: str, shape: tuple[int, ...]) -> TypedArray:
        rank = meta.get("rank")
        if rank is None and set(parts) == {"dense"}:
            return parts["dense"]
        if set(parts) != {"left", "right"} or not isinstance(rank, int) or len(shape) < 2:
            raise FormatError(f"lowrank: archive holds a {dtype}{list(shape)} node with parts {sorted(parts)}")
        rows, cols = shape[0], int(np.prod(shape[1:]))
        left, right = parts["left"], parts["right"]
        if left.data.size != rows * rank or right.data.size != rank * cols or left.dtype != dtype or right.dtype != dtype:
            raise FormatError(f"lowrank: factors {list(left.shape)} and {list(right.shape)} do not make {dtype}{list(shape)}")
        product = to_float32(left.data, dtype).reshape(rows, rank) @ to_float32(right.data, dtype).reshape(rank, cols)
        return TypedArray(from_float32(product, dtype).reshape(shape), dtype)
