"""lowrank: truncated SVD of each weight matrix (conv kernels as out x rest).

The rank comes from one of two rules:

* ``energy=E``: the smallest rank keeping a fraction E of the squared singular values.
* ``ratio=R``: a size budget over the whole model: the factors of all selected tensors may take
  at most R times their original size. After "Compressing Neural Networks: Towards Determining
  the Optimal Layer-wise Decomposition", the budget is spread so that the largest per-layer
  relative error is as small as possible: survey() finds, by bisection over the singular values
  of every layer, the smallest error bound whose ranks fit the budget; each layer then takes
  the smallest rank within that bound.

A budget below what rank 1 of every layer takes (or the layer whole, where rank 1 would not be
smaller) cannot be met: each layer then takes that, and a warning says the ratio asked and reached.

A layer whose factors would not be smaller than the matrix is left whole: one part ``dense``
that later stages treat like the original. Otherwise the parts are ``left`` (rows x rank,
U S^1/2) and ``right`` (rank x cols, S^1/2 V^T), in the tensor's dtype; neither is final, so
``lowrank|codebook`` quantizes the factors. The dense part and the right factor take the layer's
inputs (y = left (right x)), so a later stage's calibration statistics of the layer describe
theirs; the left factor's inputs are the right factor's outputs, which no statistics describe.
The factors' product is summed in float64 in a fixed order (zoo.kernels.product, meta
``product``), so an archive decodes to the same bits on every CPU: a BLAS's float32 matmul sums
in an order of its own per CPU, and the sha256 a store records of a decoded file would not hold
on the next machine.

The singular values and vectors come from the eigen-decomposition of the smaller Gram matrix (A^T A
or A A^T), in float32, with the tensor read a block at a time: numpy.linalg computes in float64
whatever it is given, and its SVD of a 128 MiB float32 matrix held 16 times the matrix (float64
copies, both full sets of singular vectors, LAPACK's workspace). The kept side is then A's own
projection (A V = U S), so the rebuilt matrix is A V V^T: as good as the vectors. The Gram matrix
squares the condition number: singular values below about 3e-4 of the largest come out to a digit
or two, and the vectors of small, close ones mix. On low-rank-plus-noise weights, and at energy=0.99
or below, the errors agree with the float64 SVD's to six digits; on a spectrum falling as 1/k,
energy=0.999 (rank 340 of 768) leaves 0.031560 where the SVD left 0.031546. Error bounds near 1e-3
(energy=0.999999) are finer than float32 eigenvalues resolve: the rank there may differ by a few.

The Gram matrix, the eigen-decomposition and the projection run on one BLAS thread (one_blas_thread):
OpenBLAS shares a product out among its threads and sums their shares in an order that depends on
how many there are, so the factors changed with OMP_NUM_THREADS, and a Ray worker (one thread)
stored other bytes than a run here. On one machine the archive is now the same whatever the thread
count; between CPUs whose BLAS kernels differ (AVX2, AVX-512) its last bits may still differ. The
cost is the BLAS's parallel eigen-decomposition on a machine of many idle cores; on a busy 2-core
machine one thread was the faster (a 4096 x 4096 encode took 8-11 s, on two threads 23-59 s).
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

import numpy as np

from zoo import kernels as _kernels
from zoo.dtypes import from_float32, saturated, storage_dtype, to_float32
from zoo.errors import FormatError, InputError, PipelineError, ZooWarning
from zoo.codecs.base import LossyCodec, Measure, Param, StageProgress, Transformed, TypedArray

try:  # numpy's own LAPACK loops, which keep float32 float32: numpy.linalg.eigh computes in float64
    from numpy.linalg._umath_linalg import eigh_lo as _eigh
    from numpy.linalg._umath_linalg import eigvalsh_lo as _eigvalsh
except ImportError:  # pragma: no cover - a numpy without them (private names): float64's results, at twice the memory
    _eigh, _eigvalsh = np.linalg.eigh, np.linalg.eigvalsh

_BISECTION_STEPS = 40
BLOCK_ELEMENTS = 1 << 22  # one block of the tensor read as float32: 16 MiB
_SAFE_MAGNITUDE = 2.0**40  # a Gram matrix of entries up to this, over up to 2^47 rows, stays within float32

_blas_lock = threading.RLock()


@contextmanager
def one_blas_thread() -> Iterator[None]:
    """BLAS and LAPACK on one thread while the block runs (see the module docstring), one thread's
    block at a time: the count is the process's, so a thread that gave it back while another still
    computed gave that one its threads back mid-way (and threadpoolctl lets only the thread that
    set OpenBLAS's count set it again until it gives it back)."""
    from threadpoolctl import threadpool_limits  # imported here: 10 ms that only lowrank needs

    with _blas_lock, threadpool_limits(limits=1, user_api="blas"):
        yield


class _Blocks:
    """A tensor as a float32 matrix read a block at a time along its longer side: blocks of rows
    when it has at least as many rows as columns ("tall"), else blocks of columns, transposed. F32
    storage is read in place; the Gram matrix is of the shorter side."""

    def __init__(self, array: TypedArray) -> None:
        self.data = np.asarray(array.data).reshape(array.shape[0], -1)
        self.dtype = array.dtype
        rows, cols = self.data.shape
        self.tall = rows >= cols
        self.long, self.short = (rows, cols) if self.tall else (cols, rows)
        self.exponent = 0  # blocks come scaled by 2**exponent (see check)

    def spans(self) -> list[slice]:
        # at least `short` long: adding each block's product into the Gram matrix then costs one
        # pass over the tensor, and the block is no larger than the Gram matrix
        step = max(self.short, BLOCK_ELEMENTS // self.short)
        return [slice(first, first + step) for first in range(0, self.long, step)]

    def read(self, span: slice) -> np.ndarray:
        """float32 (len(span), short): rows of the matrix, or its columns transposed."""
        raw = self.data[span] if self.tall else self.data[:, span].T
        block = to_float32(raw, self.dtype, copy=False)  # F32 storage is read in place
        return np.ldexp(block, self.exponent, dtype=np.float32) if self.exponent else block

    def check(self, codec: LossyCodec, name: str) -> None:
        """Refuse NaN and infinity; for entries far from 1 (never seen in a model), scale the blocks
        by an even power of two so that the Gram matrix neither overflows nor underflows."""
        largest = 0.0
        for span in self.spans():
            block = codec.check_finite(self.read(span), name)
            largest = max(largest, float(block.max(initial=0)), -float(block.min(initial=0)))
        if largest and not 1 / _SAFE_MAGNITUDE <= largest <= _SAFE_MAGNITUDE:
            self.exponent = -2 * round(np.log2(largest) / 2)

    def gram(self) -> np.ndarray:
        """X^T X of the (long, short) matrix X, float32 (short, short): numpy hands each block's
        product to BLAS's syrk."""
        gram = np.zeros((self.short, self.short), dtype=np.float32)
        product = np.empty_like(gram)
        with one_blas_thread():
            for span in self.spans():
                block = self.read(span)
                gram += np.matmul(block.T, block, out=product)
        return gram

    def project(self, basis: np.ndarray) -> np.ndarray:
        """X @ basis for tall matrices (rows x k: U S when basis is V), else its transpose (k x cols: S V^T)."""
        k = basis.shape[1]
        projected = np.empty((self.long, k) if self.tall else (k, self.long), dtype=np.float32)
        with one_blas_thread():
            for span in self.spans():
                if self.tall:
                    np.matmul(self.read(span), basis, out=projected[span])
                else:
                    projected[:, span] = (self.read(span) @ basis).T
        return projected


def _eigenvalues(gram: np.ndarray, name: str, vectors: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """Eigenvalues of a Gram matrix, largest first, none below zero; with the eigenvectors (columns,
    in the same order) when `vectors`."""
    try:
        with one_blas_thread(), np.errstate(invalid="ignore"):  # a LAPACK failure comes back as NaN (numpy.linalg's own functions raise): reported below
            values, basis = _eigh(gram) if vectors else (_eigvalsh(gram), None)
    except np.linalg.LinAlgError:
        values = np.full(1, np.nan)
    if not np.isfinite(values).all():
        raise InputError(f"lowrank: the singular values of tensor {name!r} did not converge; leave it out with exclude=...")
    return np.maximum(values[::-1], 0).astype(np.float32), (None if basis is None else basis[:, ::-1].astype(np.float32, copy=False))


def _stored(values: np.ndarray, dtype: str) -> np.ndarray:
    """from_float32 of a factor, a block of rows at a time: on BF16, its temporaries are three times
    the float32 factor."""
    if dtype == "F32":
        return from_float32(values, dtype)
    stored = np.empty(values.shape, dtype=storage_dtype(dtype))
    step = max(1, BLOCK_ELEMENTS // max(1, values.shape[1]))
    for first in range(0, values.shape[0], step):
        stored[first:first + step] = from_float32(values[first:first + step], dtype)
    return stored


def relative_errors(singular_values: np.ndarray) -> np.ndarray:
    """errors[r]: relative Frobenius error of the best rank-r approximation, r = 0..len."""
    energy = singular_values.astype(np.float64) ** 2
    total = energy.sum()
    if total <= 0:
        return np.zeros(len(energy) + 1)
    tail = np.concatenate([np.cumsum(energy[::-1])[::-1], [0.0]])
    return np.sqrt(np.maximum(tail, 0) / total)


def rank_within(errors: np.ndarray, bound: float) -> int:
    """Smallest rank whose relative error is at most `bound` (see at_least_one)."""
    return at_least_one(int(np.argmax(errors <= bound + 1e-12)), errors)


def at_least_one(rank: int, errors: np.ndarray) -> int:
    """`rank`, but at least 1 for a matrix that is not all zeros (errors[0] > 0): rank 0 keeps
    nothing of it (a budget of ratio=0.5 made a 2 x 12288 matrix zeros)."""
    return max(rank, 1 if errors[0] > 0 else 0)


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
        layers = []  # a vector of errors per layer: its Gram matrix goes once its eigenvalues are known
        names = []
        for name, array in tensors():
            if self.selects(name, array):
                matrix = _Blocks(array)
                matrix.check(self, name)
                layers.append((relative_errors(np.sqrt(_eigenvalues(matrix.gram(), name)[0])), *matrix.data.shape))
                names.append(str(name))
                del matrix
            del array  # before the next tensor is made: not two at once
        if not layers:
            return None
        whole = sum(rows * cols for _, rows, cols in layers)
        budget = self.ratio * whole

        def size(bound: float) -> int:
            return sum(_stored_elements(rank_within(errors, bound), rows, cols) for errors, rows, cols in layers)

        low, high = 0.0, 1.0  # at error 1 every rank is 1 (0 for a matrix of zeros): the smallest size there is
        for _ in range(_BISECTION_STEPS):
            middle = (low + high) / 2
            low, high = (low, middle) if size(middle) <= budget else (middle, high)
        if size(high) > budget:  # said once for the model, not per layer: it went 29 times over ratio=0.01, exit 0, unsaid
            self._out_of_reach(size(high) / whole, names)
        return high

    def _out_of_reach(self, reached: float, names: list[str]) -> None:
        """Say that the ratio asked is below the least the layers `names` can take, `reached`."""
        listed = " and ".join(repr(name) for name in names) if len(names) <= 3 else \
            f"{', '.join(repr(name) for name in names[:3])} and {len(names) - 3} more"
        their = "their" if len(names) > 1 else "its"
        digits = 3
        while f"{reached:.{digits}g}" == f"{self.ratio:.{digits}g}" and digits < 17:  # 0.50008 is not "0.5" when 0.5 was asked
            digits += 1
        warnings.warn(f"lowrank: ratio={self.ratio:g} is out of reach for {listed}: {their} factors take {reached:.{digits}g} of "
                      f"{their} size at rank 1, the least there is (a matrix whose rank 1 would not be smaller stays whole)",
                      ZooWarning, stacklevel=3)

    def encode(self, array: TypedArray, name: str = "", plan: Any = None) -> Transformed:
        matrix = _Blocks(array)
        matrix.check(self, name)
        rows, cols = matrix.data.shape
        gram = matrix.gram()
        if self.ratio is not None and plan is not None:
            # the survey's own eigenvalues, found without vectors (LAPACK's two ways differ in float32's
            # last digits): each layer then takes the rank that the budget was fitted with
            eigenvalues, basis = _eigenvalues(gram, name)
        else:
            eigenvalues, basis = _eigenvalues(gram, name, vectors=True)
        singular_values = np.sqrt(eigenvalues)
        errors = relative_errors(singular_values)
        if self.ratio is None:
            rank = rank_within(errors, float(np.sqrt(1 - (self.energy or 0.99))))
        elif plan is not None:
            rank = rank_within(errors, float(plan))
        else:  # no survey (a single tensor): the budget applies to this tensor alone
            rank = at_least_one(int(self.ratio * rows * cols // (rows + cols)), errors)
            if _stored_elements(rank, rows, cols) > self.ratio * rows * cols:
                self._out_of_reach(_stored_elements(rank, rows, cols) / (rows * cols), [str(name)])
        if _stored_elements(rank, rows, cols) == rows * cols:
            return Transformed({"dense": array}, {"rank": None}, inputs=frozenset({"dense"}))
        if basis is None:  # a layer the budget leaves whole never needs them
            basis = _eigenvalues(gram, name, vectors=True)[1]
        del gram
        kept = np.ascontiguousarray(basis[:, :rank])
        del basis  # as large as the matrix when it is square
        root = np.sqrt(singular_values[:rank])  # S^1/2
        projected = matrix.project(kept)  # U S (tall) or S V^T: divided by S^1/2, the product is A V V^T (or U U^T A)
        safe = np.where(root > 0, root, 1)  # a zero singular value: its projection is zero too
        if matrix.tall:
            left, right = np.divide(projected, safe, out=projected), np.multiply(kept.T, root[:, None], order="C")
        else:
            left, right = np.multiply(kept, root, out=kept), np.divide(projected, safe[:, None], out=projected)
        if matrix.exponent:  # the blocks were scaled by 2**exponent: half of it comes back from each factor
            np.ldexp(left, -matrix.exponent // 2, out=left)
            np.ldexp(right, -matrix.exponent // 2, out=right)
        return Transformed({"left": TypedArray(_stored(left, array.dtype), array.dtype),
                            "right": TypedArray(_stored(right, array.dtype), array.dtype)}, {"rank": rank, "product": "float64"},
                           inputs=frozenset({"right"}))

    def decode(self, parts: dict[str, TypedArray], meta: dict[str, Any], dtype: str, shape: tuple[int, ...]) -> TypedArray:
        rank = meta.get("rank")
        if rank is None and set(parts) == {"dense"}:
            return parts["dense"]
        if set(parts) != {"left", "right"} or type(rank) is not int or len(shape) < 2:  # not true for 1, as isinstance took it
            raise FormatError(f"lowrank: archive holds a {dtype}{list(shape)} node with parts {sorted(parts)} and rank {rank!r}")
        rows, cols = shape[0], int(np.prod(shape[1:]))
        left, right = parts["left"], parts["right"]
        if left.data.size != rows * rank or right.data.size != rank * cols or left.dtype != dtype or right.dtype != dtype:
            raise FormatError(f"lowrank: factors {list(left.shape)} and {list(right.shape)} do not make {dtype}{list(shape)}")
        factors = to_float32(left.data, dtype).reshape(rows, rank), to_float32(right.data, dtype).reshape(rank, cols)
        if meta.get("product") == "float64":  # summed in float64 in a fixed order: the same bits on every CPU
            product = _kernels.product(*factors)
        elif "product" not in meta:  # archives before it: numpy's float32 matmul, summed in its BLAS's order
            product = factors[0] @ factors[1]
        else:
            raise FormatError(f"lowrank: unknown product {meta['product']!r}")
        return TypedArray(from_float32(saturated(product, dtype), dtype).reshape(shape), dtype)
