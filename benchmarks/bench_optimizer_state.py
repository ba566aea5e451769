"""A real AdamW optimizer state, compressed by zoo beside ZipNN and zstd.

The script trains a small language model (embedding, four 256-wide MLP blocks, output head: about
1.1M parameters) for a few hundred AdamW steps on random token sequences, saves the optimizer's
state_dict with torch.save (as a Trainer's optimizer.pt), and compresses that file with zoo's
default lossless pipeline, with ZipNN (float32 mode, on the whole file) and with zstd level 3.
Each figure is stored bytes over the file's bytes; zoo's are split by moment as well (exp_avg,
exp_avg_sq), from the archive's per-tensor report.

    python benchmarks/bench_optimizer_state.py [--steps 300] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from zoo.kernels import cpu_model  # noqa: E402


def train(steps: int, folder: Path) -> Path:
    import torch

    torch.manual_seed(0)
    torch.set_num_threads(1)  # the training only makes the data; one thread keeps it off the coders' cores
    vocab, width = 512, 256
    blocks = [torch.nn.Sequential(torch.nn.LayerNorm(width), torch.nn.Linear(width, width), torch.nn.GELU()) for _ in range(4)]
    model = torch.nn.Sequential(torch.nn.Embedding(vocab, width), *blocks, torch.nn.Linear(width, vocab))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    generator = torch.Generator().manual_seed(0)
    for _ in range(steps):
        tokens = torch.randint(0, vocab, (8, 33), generator=generator)
        logits = model(tokens[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, vocab), tokens[:, 1:].reshape(-1))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    path = folder / "optimizer.pt"
    torch.save(optimizer.state_dict(), path)
    return path


def timed(function, *args, **kwargs):
    started = time.perf_counter()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    options = parser.parse_args()

    import zstandard

    import zoo

    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        path, training = timed(train, options.steps, folder)
        raw = path.read_bytes()
        size = len(raw)
        print(f"AdamW state of a {options.steps}-step run: {size / 1e6:.2f} MB ({training:.1f} s of training)")
        print(f"CPU: {cpu_model()}, {options.threads} threads")
        rows = []

        report, seconds = timed(zoo.compress, path, folder / "optimizer.zoo", threads=options.threads)
        _, back = timed(zoo.decompress, folder / "optimizer.zoo", folder / "out", threads=options.threads)
        assert (folder / "out" / "optimizer.pt").read_bytes() == raw
        rows.append(("zoo (lossless)", report.compressed_bytes, seconds, back))
        by_moment: dict[str, list[int]] = {}
        for tensor in report.tensors:
            moment = tensor.name.rsplit(".", 1)[-1]
            sums = by_moment.setdefault(moment, [0, 0])
            sums[0] += tensor.original_bytes
            sums[1] += tensor.compressed_bytes

        try:
            import zipnn

            coder = zipnn.ZipNN(bytearray_dtype="float32", threads=options.threads)
            packed, seconds = timed(coder.compress, bytearray(raw))
            unpacked, back = timed(coder.decompress, packed)
            assert bytes(unpacked) == raw
            rows.append(("ZipNN (float32)", len(packed), seconds, back))
        except ImportError:
            print("ZipNN is not installed (pip install zipnn): left out")

        compressor = zstandard.ZstdCompressor(level=3, threads=options.threads)
        packed, seconds = timed(compressor.compress, raw)
        _, back = timed(zstandard.ZstdDecompressor().decompress, packed)
        rows.append(("zstd -3", len(packed), seconds, back))

        print(f"{'':18}{'ratio':>8}{'compress':>12}{'decompress':>12}")
        for name, stored, seconds, back in rows:
            print(f"{name:18}{stored / size:8.3f}{size / seconds / 1e6:9.0f} MB/s{size / back / 1e6:9.0f} MB/s")
        kinds = [f"{moment} {stored / original:.3f}" for moment, (original, stored) in sorted(by_moment.items()) if original]
        print("zoo by tensor kind:", ", ".join(kinds))


if __name__ == "__main__":
    main()
