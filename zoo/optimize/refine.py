"""The fitting behind the codebook codec: 1-D k-means, nearest-entry assignment, and the joint
refinement of assignments and codebooks against a layer's output error.

The output error of a linear layer y = W x over calibration inputs is, per row r of the error
E = W - W_hat, e_r^T H e_r with H = mean of x x^T (zoo.optimize.calibration). The refinement alternates
(1) assignments given codebooks, chosen column by column with the error so far pushed onto the
columns not yet assigned through the Cholesky factor of H^-1 (the error feedback of GPTQ and
OBQ, here onto a codebook rather than a uniform grid), and (2) codebooks given assignments, by
preconditioned gradient steps with exact line search on the same quadratic. It keeps the best
pair seen, so it never does worse than plain k-means on the calibration objective.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

_BLOCK = 128  # columns per lazy update of the rest of the matrix
_DAMPING = 0.01  # of the mean diagonal, so that H is safely invertible
_CODEBOOK_STEPS = 6
_ROUNDS = 2


def kmeans_1d(values: np.ndarray, weights: np.ndarray, k: int, iterations: int) -> np.ndarray:
    """Weighted Lloyd's algorithm in one dimension; sorted centres (k,) float32.

    The values are sorted once; each cluster is then a contiguous run, and every iteration is
    a search of k-1 boundaries plus prefix-sum differences, whatever the number of values."""
    if values.size == 0:
        return np.zeros(k, dtype=np.float32)
    order = np.argsort(values, kind="stable")
    ordered = values[order].astype(np.float64)
    weight = np.maximum(weights[order].astype(np.float64), 0) + 1e-12
    cumulative_weight = np.concatenate([[0.0], np.cumsum(weight)])
    cumulative_moment = np.concatenate([[0.0], np.cumsum(weight * ordered)])
    centres = _companded_quantiles(ordered, weight, k)
    for _ in range(iterations):
        boundaries = np.searchsorted(ordered, (centres[1:] + centres[:-1]) / 2)
        starts = np.concatenate([[0], boundaries])
        ends = np.concatenate([boundaries, [ordered.size]])
        mass = cumulative_weight[ends] - cumulative_weight[starts]
        moment = cumulative_moment[ends] - cumulative_moment[starts]
        updated = np.where(mass > 1e-11, moment / np.maximum(mass, 1e-300), centres)
        updated.sort()
        if np.array_equal(updated, centres):
            break
        centres = updated
    return centres.astype(np.float32)


def _companded_quantiles(ordered: np.ndarray, weight: np.ndarray, k: int) -> np.ndarray:
    """Starting centres spread as density**(1/3), the high-resolution optimum for squared error:
    plain quantiles leave the tails, where the large weights are, with too few centres, and
    Lloyd's iterations move them out only slowly."""
    bins = min(4096, max(4 * k, int(np.sqrt(ordered.size))))
    mass, edges = np.histogram(ordered, bins=bins, weights=weight)
    width = np.maximum(np.diff(edges), 1e-300)
    companded = np.cbrt(mass / width) * width
    cumulative = np.concatenate([[0.0], np.cumsum(companded)])
    if cumulative[-1] <= 0:
        return np.full(k, ordered[0])
    return np.interp((np.arange(k) + 0.5) / k * cumulative[-1], cumulative, edges)


def nearest(values: np.ndarray, row_codebooks: np.ndarray) -> np.ndarray:
    """Index of the nearest entry of each row's codebook, for values (rows, cols)."""
    order = np.argsort(row_codebooks, axis=1, kind="stable")
    ordered = np.take_along_axis(row_codebooks, order, axis=1)
    midpoints = (ordered[:, 1:] + ordered[:, :-1]) / 2
    out = np.empty(values.shape, dtype=np.int64)
    step = max(1, (1 << 22) // max(1, values.shape[1] * max(1, midpoints.shape[1])))
    for first in range(0, values.shape[0], step):
        block = values[first:first + step]
        rank = (block[:, :, None] > midpoints[first:first + step, None, :]).sum(axis=2)
        out[first:first + step] = np.take_along_axis(order[first:first + step], rank, axis=1)
    return out


def _reconstruct(scales: np.ndarray, row_codebooks: np.ndarray, indices: np.ndarray) -> np.ndarray:
    return scales[:, None].astype(np.float64) * np.take_along_axis(row_codebooks, indices, axis=1)


def output_error(weights: np.ndarray, approximation: np.ndarray, hessian: np.ndarray) -> float:
    error = weights - approximation
    return float(np.sum((error @ hessian) * error))


def inverse_factor(hessian: np.ndarray) -> np.ndarray:
    """Upper Cholesky factor of the (damped) inverse of H: row i spreads column i's error."""
    n_cols = hessian.shape[0]
    diagonal = np.diag(hessian).copy()
    damped = hessian + np.eye(n_cols) * _DAMPING * max(float(np.mean(diagonal)), 1e-12)
    dead = diagonal <= 0  # inputs that never fire: their weights cannot matter
    damped[dead, dead] = 1.0
    return np.linalg.cholesky(np.linalg.inv(damped)).T


def feedback(weights: np.ndarray, hessian: np.ndarray, round_column: Callable[[int, np.ndarray], np.ndarray]) -> np.ndarray:
    """GPTQ-style rounding: column by column, `round_column(j, values)` puts column j (float64,
    one value per row) on the codec's grid, and the rounding error is pushed onto the columns not
    yet rounded through the Cholesky factor of H^-1, so that they make up for it in the layer's
    output. Columns go in order of falling H diagonal (GPTQ's act-order): the inputs that carry the
    most energy are rounded first, while the most columns remain to absorb their error. Returns
    the rounded matrix (float64)."""
    order = np.argsort(-np.diag(hessian), kind="stable")
    upper = inverse_factor(hessian[np.ix_(order, order)])
    n_cols = weights.shape[1]
    work = weights[:, order].astype(np.float64)
    rounded = np.empty_like(work)
    for first in range(0, n_cols, _BLOCK):
        last = min(first + _BLOCK, n_cols)
        block = work[:, first:last].copy()
        errors = np.empty_like(block)
        factor = upper[first:last, first:last]
        for column in range(last - first):
            value = block[:, column]
            quantized = round_column(int(order[first + column]), value)
            rounded[:, first + column] = quantized
            error = (value - quantized) / factor[column, column]
            block[:, column:] -= error[:, None] * factor[column, column:][None, :]
            errors[:, column] = error
        work[:, last:] -= errors @ upper[first:last, last:]
    restored = np.empty_like(rounded)
    restored[:, order] = rounded
    return restored


def assign_with_feedback(weights: np.ndarray, scales: np.ndarray, row_codebooks: np.ndarray, hessian: np.ndarray) -> np.ndarray:
    """Codebook assignments by `feedback`, each value to the nearest entry of its row's codebook."""
    n_rows, n_cols = weights.shape
    safe_scales = np.where(scales > 0, scales, 1.0).astype(np.float64)
    order = np.argsort(row_codebooks, axis=1, kind="stable")
    ordered = np.take_along_axis(row_codebooks, order, axis=1).astype(np.float64)
    midpoints = (ordered[:, 1:] + ordered[:, :-1]) / 2
    indices = np.empty((n_rows, n_cols), dtype=np.int64)
    rows = np.arange(n_rows)

    def nearest_entry(column: int, value: np.ndarray) -> np.ndarray:
        rank = (value[:, None] / safe_scales[:, None] > midpoints).sum(axis=1)
        indices[:, column] = order[rows, rank]
        return scales * ordered[rows, rank]

    feedback(weights, hessian, nearest_entry)
    return indices


def update_codebooks(weights: np.ndarray, scales: np.ndarray, groups: np.ndarray, codebooks: np.ndarray,
                     indices: np.ndarray, hessian: np.ndarray) -> np.ndarray:
    """Codebooks that lower the output error for fixed assignments (Jacobi-preconditioned
    steepest descent with exact line search on the quadratic)."""
    n_groups, k = codebooks.shape
    slots = (groups[:, None] * k + indices).ravel()  # which codebook entry each weight uses
    scale_column = scales[:, None].astype(np.float64)
    curvature = np.bincount(slots, weights=(scale_column**2 * np.diag(hessian)[None, :]).ravel(), minlength=n_groups * k)
    current = codebooks.astype(np.float64).copy()
    for _ in range(_CODEBOOK_STEPS):
        error = weights - _reconstruct(scales, current[groups], indices)
        pull = np.bincount(slots, weights=(scale_column * (error @ hessian)).ravel(), minlength=n_groups * k)
        direction = np.where(curvature > 0, pull / np.maximum(curvature, 1e-300), 0.0).reshape(n_groups, k)
        change = _reconstruct(scales, direction[groups], indices)
        denominator = float(np.sum((change @ hessian) * change))
        if denominator <= 0:
            break
        step = float(np.sum(direction.ravel() * pull)) / denominator
        current += step * direction
    return current.astype(np.float32)


def refine(weights: np.ndarray, scales: np.ndarray, groups: np.ndarray, codebooks: np.ndarray,
           hessian: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(indices, codebooks) lowering tr(E H E^T); codebooks as float32 values exact in F16."""
    weights = weights.astype(np.float64)
    safe = np.where(scales > 0, scales, 1)[:, None]
    candidates = []
    indices = nearest(weights / safe, codebooks[groups])
    candidates.append((output_error(weights, _reconstruct(scales, codebooks[groups], indices), hessian), indices, codebooks))
    for _ in range(_ROUNDS):
        indices = assign_with_feedback(weights, scales, codebooks[groups], hessian)
        candidates.append((output_error(weights, _reconstruct(scales, codebooks[groups], indices), hessian), indices, codebooks))
        codebooks = update_codebooks(weights, scales, groups, codebooks, indices, hessian).astype(np.float16).astype(np.float32)
        if not np.isfinite(codebooks).all():
            break
    _, best_indices, best_codebooks = min(candidates, key=lambda candidate: candidate[0])
    return best_indices, best_codebooks
