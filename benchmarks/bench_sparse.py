"""fprans on tensors of zeros, constants, pruned weights and a few values: one 4 MiB chunk of each, coded as zoo
codes it (the words layout, or byte planes where one symbol holds a fifth of the words and they come
out shorter), beside the words layout alone, zstd -3 and ZipNN (when installed) of the same bytes,
with zoo's decode time (best of --repeat, one thread, this process's kernels).

    python benchmarks/bench_sparse.py [--repeat 20]

Weights are N(0, 0.02) values, pruned at random (a share of them set to +0). The figures under
"Pruned and constant tensors" in docs/performance.md are this output.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import zstandard

from zoo import kernels
from zoo.codecs.lossless.fprans import SYMBOL_BITS, FpRans


ZIPNN_DTYPES = {"F32": "float32", "BF16": "bfloat16", "F16": "float16"}


def as_dtype(values: np.ndarray, dtype: str) -> np.ndarray:
    values = values.astype(np.float32)
    if dtype == "BF16":
        return ((values.view(np.uint32) + 0x8000) >> 16).astype(np.uint16).view(np.uint8)
    return values.astype({"F32": np.float32, "F16": np.float16}[dtype]).view(np.uint8)


def cases(count: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    weights = rng.normal(0, 0.02, count)
    found = {"dense": weights}
    for share in (0.25, 0.5, 0.9, 0.99, 0.999):
        found[f"{share:.1%} zeros"] = np.where(rng.random(count) >= share, weights, 0.0)  # +0 (a product with a mask gives -0 too)
    found["90% -0 and +0"] = weights * (rng.random(count) >= 0.9)  # a product with a pruning mask: negative weights give -0
    found["16 values"] = rng.normal(0, 0.02, 16)[rng.integers(0, 16, count)]  # a dequantized tensor
    found["all zeros"] = np.zeros(count)
    found["constant 0.1"] = np.full(count, 0.1)
    return found


def best_of(repeat: int, run) -> float:
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - started)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    try:
        import zipnn
    except ImportError:
        zipnn = None
    info = kernels.info()
    print(f"{kernels.cpu_model()}, kernels {info['kernels']}; one 4 MiB chunk per row, sizes in bytes, decode best of {args.repeat} on one thread")
    print(f"{'dtype':5} {'tensor':14} {'layout':>6} {'zoo':>9} {'words':>9} {'zstd -3':>9} {'ZipNN':>9}  {'decode ms':>9}")
    codec = FpRans()
    for dtype in ("F32", "BF16", "F16"):
        word_bytes = 4 if dtype == "F32" else 2
        for name, values in cases((4 << 20) // word_bytes).items():
            chunk = as_dtype(values, dtype)
            stream = codec.encode(chunk, dtype)[0]
            words = len(kernels.encode_section(chunk, word_bytes, True, SYMBOL_BITS[dtype])) + 1
            zstd = len(zstandard.ZstdCompressor(level=3).compress(chunk.tobytes()))
            theirs = len(zipnn.ZipNN(bytearray_dtype=ZIPNN_DTYPES[dtype], threads=1).compress(chunk.tobytes())) if zipnn else None
            seconds = best_of(args.repeat, lambda: codec.decode([stream], dtype, len(chunk) // word_bytes))
            assert codec.decode([stream], dtype, len(chunk) // word_bytes).tobytes() == chunk.tobytes()
            layout = "planes" if stream[0] else "words"
            print(f"{dtype:5} {name:14} {layout:>6} {len(stream):9d} {words:9d} {zstd:9d} {theirs if theirs is not None else '-':>9}  "
                  f"{seconds * 1e3:9.2f}")


if __name__ == "__main__":
    main()
