"""Two checkouts of zoo taking turns at one CLI command, from process start: the median of each and
of their differences, pair by pair. On a shared VM whose speed drifts by minutes, a difference
measured within each pair is steadier than two medians taken minutes apart.

    python benchmarks/bench_paired.py OLD_CHECKOUT NEW_CHECKOUT [--pairs 30] -- compress MODEL -o /dev/shm/x.zoo --force -t 1

Each checkout runs with its own folder first on PYTHONPATH, from a folder that holds no zoo (so
that Python's current folder does not decide which zoo is imported). `--clear PATH` removes PATH
before every run (a decompress's output folder)."""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run(checkout: Path, args: list[str], clear: Path | None, where: str) -> float:
    if clear is not None:
        shutil.rmtree(clear, ignore_errors=True)
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", "from zoo.cli import main; main()", *args], check=True, cwd=where, env=env,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old", type=Path)
    parser.add_argument("new", type=Path)
    parser.add_argument("--pairs", type=int, default=30)
    parser.add_argument("--clear", type=Path, default=None)
    if "--" not in sys.argv:
        parser.error("give the zoo command after --")
    split = sys.argv.index("--")
    options, command = parser.parse_args(sys.argv[1:split]), sys.argv[split + 1:]
    checkouts = [options.old.resolve(), options.new.resolve()]
    for checkout in checkouts:  # as an install leaves them: byte-compiled
        subprocess.run([sys.executable, "-m", "compileall", "-q", str(checkout / "zoo")], check=True)
    old, new = [], []
    with tempfile.TemporaryDirectory() as where:
        for pair in range(options.pairs):
            order = (0, 1) if pair % 2 == 0 else (1, 0)  # who goes first alternates
            times = {index: run(checkouts[index], command, options.clear, where) for index in order}
            old.append(times[0])
            new.append(times[1])
    differences = [b - a for a, b in zip(old, new)]
    print(f"zoo {' '.join(command)}: {options.pairs} pairs, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"  old {checkouts[0]}: median {statistics.median(old) * 1000:.0f} ms")
    print(f"  new {checkouts[1]}: median {statistics.median(new) * 1000:.0f} ms")
    print(f"  new - old, pair by pair: median {statistics.median(differences) * 1000:+.1f} ms")


if __name__ == "__main__":
    main()
