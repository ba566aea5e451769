"""Peak memory of the lossy codecs on one large tensor: what `zoo compress` needs above the process it
runs in, as a multiple of the tensor.

    python benchmarks/bench_lossy_memory.py [--mib 128] [--cols 4096] [--specs codebook:bits=4 ...] [--threads 1]

For each shape it writes one safetensors file holding a single F32 tensor of about --mib MiB with
--cols columns: a matrix of rank 256 with a decaying spectrum, plus noise (6% of the energy), so that
lowrank has something to keep and something to drop. Each spec then runs as
`python -m zoo compress FILE -o OUT.zoo --pipeline SPEC -t THREADS` in a fresh child, and the line
gives the child's peak resident set (its ru_maxrss, from wait4), the peak above the baseline as a
multiple of the tensor, the wall time, the archive's size and the relative Frobenius error of what
the archive decodes to (read back in a second child, after the timing).

The baseline is the same command on a 64 x 64 tensor: Python, numpy, the CLI and the codecs
imported, no large tensor. This script's own process never holds the matrix (a child writes it):
ru_maxrss counts what the parent held when the child forked, so the parent keeps small.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SPECS = ["codebook:bits=4", "lowrank:energy=0.9", "lowrank:ratio=0.5", "l2:target_ratio=8"]
NAME = "model.layers.0.mlp.weight"
SIGNAL_RANK = 256
NOISE = 0.25  # per element, beside a signal of variance 1: 6% of the energy


def write_tensor(path: str, rows: int, cols: int, seed: int = 0) -> None:
    """A rank-256 matrix whose singular values fall as 1/sqrt(k), plus Gaussian noise, row block by
    row block (the writer holds a few MiB, not the matrix)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    decay = 1 / np.sqrt(np.arange(1, SIGNAL_RANK + 1))
    decay *= np.sqrt(SIGNAL_RANK / np.sum(decay**2))  # signal of variance 1 per element
    right = rng.standard_normal((SIGNAL_RANK, cols), dtype=np.float32) / np.float32(np.sqrt(SIGNAL_RANK))
    header = json.dumps({NAME: {"dtype": "F32", "shape": [rows, cols], "data_offsets": [0, 4 * rows * cols]}}).encode()
    header += b" " * (-len(header) % 8)
    with open(path, "wb") as out:
        out.write(struct.pack("<Q", len(header)) + header)
        for first in range(0, rows, 1024):
            count = min(1024, rows - first)
            left = (rng.standard_normal((count, SIGNAL_RANK)) * decay).astype(np.float32)
            block = left @ right
            block += NOISE * rng.standard_normal((count, cols), dtype=np.float32)
            out.write(block.astype("<f4").tobytes())


def relative_error(source: str, archive: str) -> float:
    """||decoded - original|| / ||original||, accumulated row block by row block."""
    import numpy as np
    from safetensors.numpy import safe_open

    import zoo

    with safe_open(source, "numpy") as original, zoo.open(archive) as stored:
        want = original.get_tensor(NAME)
        got = stored.read_tensor(NAME).data
        error = energy = 0.0
        for first in range(0, want.shape[0], 1024):
            difference = got[first:first + 1024].astype(np.float64) - want[first:first + 1024]
            error += float(np.sum(difference**2))
            energy += float(np.sum(want[first:first + 1024].astype(np.float64) ** 2))
    return (error / energy) ** 0.5 if energy else 0.0


def run_child(arguments: list[str]) -> tuple[float, int, str]:
    """Seconds, peak RSS in bytes (ru_maxrss of this child alone, from wait4) and stdout of a child."""
    with tempfile.TemporaryFile("w+") as stdout, tempfile.TemporaryFile("w+") as stderr:
        started = time.perf_counter()
        child = subprocess.Popen(arguments, stdout=stdout, stderr=stderr)
        _, status, usage = os.wait4(child.pid, 0)
        seconds = time.perf_counter() - started
        child.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait again
        stdout.seek(0)
        stderr.seek(0)
        if child.returncode:
            raise SystemExit(f"child failed: {' '.join(arguments)}\n{stderr.read()}")
        return seconds, usage.ru_maxrss * 1024, stdout.read()


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mib", type=float, default=128, help="size of the F32 tensor")
    parser.add_argument("--cols", type=int, nargs="+", default=[4096], help="columns (one run per value); rows follow from --mib")
    parser.add_argument("--specs", nargs="+", default=SPECS)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--blas-threads", type=int, help="BLAS threads of each child (default: OpenBLAS's own, one per core); "
                        "1 keeps a loaded machine's timings steady")
    parser.add_argument("--write", nargs=3, metavar=("PATH", "ROWS", "COLS"), help=argparse.SUPPRESS)  # the writer child
    parser.add_argument("--error", nargs=2, metavar=("SOURCE", "ARCHIVE"), help=argparse.SUPPRESS)  # the checking child
    args = parser.parse_args()
    if args.write:
        write_tensor(args.write[0], int(args.write[1]), int(args.write[2]))
        return
    if args.error:
        print(relative_error(*args.error))
        return

    import resource

    if args.blas_threads:
        for variable in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[variable] = str(args.blas_threads)
    blas = f"{args.blas_threads} BLAS thread(s)" if args.blas_threads else "BLAS threads as OpenBLAS chooses"
    print(f"CPU: {cpu_name()} ({os.cpu_count()} cores); zoo compress -t {args.threads}; {blas}; python {platform.python_version()}; "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"{'spec':<22} {'shape':>12} {'peak RSS':>10} {'x tensor':>9} {'time s':>7} {'archive':>10} {'rel. error':>10}")
    with tempfile.TemporaryDirectory(dir=os.environ.get("ZOO_BENCH_DIR")) as scratch:
        tiny, tiny_out = Path(scratch) / "tiny.safetensors", Path(scratch) / "tiny.zoo"
        run_child([sys.executable, __file__, "--write", str(tiny), "64", "64"])
        options = {spec: ["--pipeline", spec, "-t", str(args.threads), "-f"] for spec in args.specs}
        baselines = {spec: run_child([sys.executable, "-m", "zoo", "compress", str(tiny), "-o", str(tiny_out), *options[spec]])[1]
                     for spec in args.specs}  # what each command holds with no large tensor: the same for every shape
        for cols in args.cols:
            rows = max(1, int(args.mib * 2**20) // (4 * cols))
            tensor_bytes = 4 * rows * cols
            source, archive = Path(scratch) / "model.safetensors", Path(scratch) / "model.zoo"
            run_child([sys.executable, __file__, "--write", str(source), str(rows), str(cols)])
            for spec in args.specs:
                seconds, peak, _ = run_child([sys.executable, "-m", "zoo", "compress", str(source), "-o", str(archive), *options[spec]])
                _, _, error = run_child([sys.executable, __file__, "--error", str(source), str(archive)])
                print(f"{spec:<22} {f'{rows}x{cols}':>12} {peak / 2**20:>7.0f}MiB {(peak - baselines[spec]) / tensor_bytes:>8.2f}x "
                      f"{seconds:>7.1f} {archive.stat().st_size / 2**20:>7.1f}MiB {float(error):>10.4f}", flush=True)
                archive.unlink()
            source.unlink()
        print(f"baseline (the same command on a 64x64 tensor): {', '.join(f'{b / 2**20:.0f}' for b in baselines.values())} MiB; "
              f"this script: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
