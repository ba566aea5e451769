"""Peak memory of compress and decompress against model size: it must not grow with the model.

    python benchmarks/bench_memory.py [--sizes-gib 0.5 4] [--threads 2] [--tensor-mib 64]

Writes synthetic bf16 safetensors files (Gaussian weights, tensors of --tensor-mib, 64 MiB by
default; one tensor of the whole size with --tensor-mib 0) into a temporary folder, runs `zoo
compress` to an archive, into a zoo (`--name`) and `zoo decompress` on each in a child process, and
prints the child's peak resident set (VmHWM) and throughput. The files are deleted afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

TENSOR_ELEMENTS = 32 << 20  # 64 MiB of bf16 per tensor


def write_synthetic(path: Path, total_bytes: int, seed: int = 0, tensor_elements: int = TENSOR_ELEMENTS) -> None:
    tensor_elements = tensor_elements or max(4096, total_bytes // 2 // 4096 * 4096)  # 0: one tensor of the whole size
    count = max(1, total_bytes // (2 * tensor_elements))
    header, offset = {}, 0
    for index in range(count):
        header[f"layers.{index}.weight"] = {"dtype": "BF16", "shape": [4096, tensor_elements // 4096], "data_offsets": [offset, offset + 2 * tensor_elements]}
        offset += 2 * tensor_elements
    body = json.dumps(header).encode()
    body += b" " * (-len(body) % 8)
    rng = np.random.default_rng(seed)
    with open(path, "wb") as out:
        out.write(struct.pack("<Q", len(body)) + body)
        for _ in range(count):
            for start in range(0, tensor_elements, TENSOR_ELEMENTS):  # written 64 MiB at a time
                values = rng.standard_normal(min(TENSOR_ELEMENTS, tensor_elements - start), dtype=np.float32)
                values *= 0.02
                out.write(((values.view(np.uint32) + 0x8000) >> 16).astype(np.uint16).tobytes())


def run_child(code: str) -> tuple[float, int]:
    """Seconds and peak RSS (bytes) of a Python child running `code`. The peak is the child's own
    VmHWM: ru_maxrss would also count the parent's pages that the fork copied before exec."""
    started = time.perf_counter()
    probe = "import re; print(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1))"
    done = subprocess.run([sys.executable, "-c", f"{code}\n{probe}"], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"child failed: {done.stderr}")
    return time.perf_counter() - started, int(done.stdout.split()[-1]) * 1024


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes-gib", type=float, nargs="+", default=[0.5, 4.0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tensor-mib", type=int, default=64, help="size of each tensor; 0: one tensor of the whole size")
    args = parser.parse_args()
    _, baseline = run_child("import zoo.api")
    print(f"python + zoo imported: peak RSS {baseline / 2**20:.0f} MiB; threads {args.threads}; chunk 4 MiB")
    print(f"{'model':>10} {'compress s':>11} {'GB/s':>6} {'peak RSS':>10} {'into a zoo s':>13} {'peak RSS':>10} {'decompress s':>13} "
          f"{'GB/s':>6} {'peak RSS':>10} {'ratio':>6}")
    with tempfile.TemporaryDirectory(dir=os.environ.get("ZOO_BENCH_DIR")) as scratch:
        for gib in args.sizes_gib:
            source = Path(scratch) / "model.safetensors"
            write_synthetic(source, int(gib * 2**30), tensor_elements=args.tensor_mib << 19)
            size = source.stat().st_size
            archive, out = Path(scratch) / "model.zoo", Path(scratch) / "out"
            c_seconds, c_rss = run_child(f"import zoo; zoo.compress({str(source)!r}, {str(archive)!r}, threads={args.threads})")
            z_seconds, z_rss = run_child(f"from zoo.api import compress_into; from zoo.hub.store import Store; "
                                         f"compress_into(Store({str(Path(scratch) / 'zoo')!r}), {str(source)!r}, 'm', threads={args.threads})")
            d_seconds, d_rss = run_child(f"import zoo; zoo.decompress({str(archive)!r}, {str(out)!r}, threads={args.threads})")
            ratio = archive.stat().st_size / size
            print(f"{size / 2**30:>8.2f}GiB {c_seconds:>11.1f} {size / c_seconds / 1e9:>6.2f} {c_rss / 2**20:>7.0f}MiB "
                  f"{z_seconds:>13.1f} {z_rss / 2**20:>7.0f}MiB "
                  f"{d_seconds:>13.1f} {size / d_seconds / 1e9:>6.2f} {d_rss / 2**20:>7.0f}MiB {ratio:>6.3f}")
            shutil.rmtree(Path(scratch) / "zoo")
            for path in (source, archive, out / source.name):
                path.unlink(missing_ok=True)
            out.rmdir()


if __name__ == "__main__":
    main()
