"""GB/s of output of the packed-weight loader: unpack B-bit indices and gather through per-row
codebooks into F32/BF16 (zoo.kernels.dequantize, what the codebook codec calls when it decodes).

    python benchmarks/bench_dequantize.py [--rows 4096] [--cols 4096]

Each ISA of the native extension beside the numpy reference (zoo/kernels/fallback.py), same inputs, one
thread, best of 5; every path's output is checked against the reference before it is timed.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from zoo.kernels import fallback as _fallback


def best_seconds(function, repeats: int = 5) -> float:  # noqa: ANN001 - a no-argument callable
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=4096)
    parser.add_argument("--cols", type=int, default=4096)
    arguments = parser.parse_args()
    rows, cols = arguments.rows, arguments.cols
    try:
        from zoo import _native
    except ImportError:
        _native = None
    from zoo.kernels import native as _native_calls

    rng = np.random.default_rng(0)
    isas = list(_native.available_isas()) if _native else []
    print(f"{rows}x{cols} weights, one thread; GB/s of output (best of 5); machine: 2-core x86-64 VM")
    print(f"{'bits':>4} {'dtype':>5} {'numpy':>8} " + " ".join(f"{isa:>8}" for isa in isas))
    for bits in (2, 3, 4, 8):
        indices = rng.integers(0, 1 << bits, size=rows * cols).astype(np.uint8)
        packed = _fallback.pack_indices(indices, bits)
        row_codebook = (np.arange(rows) % 64).astype(np.int32)
        codebooks = rng.standard_normal((64, 1 << bits)).astype(np.float32)
        for dtype in ("F32", "BF16"):
            arguments_ = (packed, bits, rows, cols, row_codebook, codebooks, dtype)
            reference = _fallback.dequantize(*arguments_)
            out_bytes = reference.nbytes
            cells = [f"{out_bytes / best_seconds(lambda: _fallback.dequantize(*arguments_)) / 1e9:>8.2f}"]
            previous = _native.isa() if _native else None
            for isa in isas:
                _native.select_isa(isa)
                assert np.array_equal(_native_calls.dequantize(*arguments_), reference), isa
                cells.append(f"{out_bytes / best_seconds(lambda: _native_calls.dequantize(*arguments_)) / 1e9:>8.2f}")
            if _native:
                _native.select_isa(previous)
            print(f"{bits:>4} {dtype:>5} " + " ".join(cells))


if __name__ == "__main__":
    main()
