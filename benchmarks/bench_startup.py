"""Time `zoo --help` (the CLI's start-up) beside a bare `python -c pass`, median of 15 runs each."""

import statistics
import subprocess
import sys
import time


def median_seconds(command: list[str], runs: int = 15) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


if __name__ == "__main__":
    bare = median_seconds([sys.executable, "-c", "pass"])
    helped = median_seconds([sys.executable, "-m", "zoo", "--help"])
    print(f"python -c pass: {bare * 1000:.0f} ms; zoo --help: {helped * 1000:.0f} ms (median of 15)")
