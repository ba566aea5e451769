"""Milliseconds of lowrank's rebuild of a matrix from its factors (zoo.kernels.product: float64 sums
in a fixed order, the same bits on every CPU) beside numpy's float32 matmul (its BLAS's order).

    python benchmarks/bench_product.py [--rows 384] [--rank 64] [--cols 1536]

Each ISA of the native extension and the numpy reference (zoo/kernels/fallback.py), same inputs,
best of 5 after one warm-up call; every path's output is checked against the reference first. The
BLAS uses its own threads (OPENBLAS_NUM_THREADS), zoo's product one.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from zoo.kernels import cpu_model, fallback as _fallback


def best_ms(function, repeats: int = 5) -> float:  # noqa: ANN001 - a no-argument callable
    function()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return 1e3 * min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=384)
    parser.add_argument("--rank", type=int, default=64)
    parser.add_argument("--cols", type=int, default=1536)
    arguments = parser.parse_args()
    rng = np.random.default_rng(0)
    left = rng.standard_normal((arguments.rows, arguments.rank)).astype(np.float32)
    right = rng.standard_normal((arguments.rank, arguments.cols)).astype(np.float32)
    reference = _fallback.product(left, right)
    print(f"{arguments.rows} x {arguments.rank} x {arguments.cols}, {cpu_model()}; ms, best of 5")
    print(f"{'numpy (fixed order)':>24} {best_ms(lambda: _fallback.product(left, right)):8.2f}")
    try:
        from zoo import _native
        from zoo.kernels import native as _native_calls
    except ImportError:
        _native = None
    if _native is not None:
        previous = _native.isa()
        for isa in _native.available_isas():
            _native.select_isa(isa)
            assert _native_calls.product(left, right).tobytes() == reference.tobytes(), isa
            print(f"{isa + ' (fixed order)':>24} {best_ms(lambda: _native_calls.product(left, right)):8.2f}")
        _native.select_isa(previous)
    print(f"{'numpy float32 matmul':>24} {best_ms(lambda: left @ right):8.2f}")


if __name__ == "__main__":
    main()
