"""L² against the lossless pipeline and the codebook codec on the tiny causal LM (benchmarks/tiny_lm.py).

    python benchmarks/bench_l2.py [--plot docs/rd_tiny_lm.png] [--threads 2] [--calibration train]

Every pipeline goes through zoo.evaluate.sweep: compress, read every tensor back, evaluate against the
original on the held-out evaluation text. The anchor is the lossless pipeline, measured in the
same run. Calibration is the calibration split (13.6 k tokens) or, with --calibration train, the
model's training text (what calibration usually is: text like the model's own; the evaluation
text stays unseen either way). Prints the table as Markdown (what docs/lossy.md quotes) and JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.tiny_lm import load_or_train, texts  # noqa: E402
from zoo.evaluate.sweep import plot, sweep  # noqa: E402

PIPELINES = [
    "lossless",
    "l2:target_ratio=8",
    "l2:target_ratio=10",
    "l2:target_ratio=10,tune=2000",
    "l2:target_ratio=12",
    "codebook:bits=3",
    "codebook:bits=4",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plot", type=Path, default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--pipeline", action="append", help="override the pipelines swept")
    parser.add_argument("--calibration", choices=("split", "train"), default="split", help="calibration text (see above)")
    arguments = parser.parse_args()
    model = load_or_train(log=lambda *a: print(*a, file=sys.stderr))
    train, calibration, evaluation = texts()
    if arguments.calibration == "train":
        calibration = train
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as handle:
        handle.write(calibration)
    try:
        points = sweep(model, arguments.pipeline or PIPELINES, calibration=handle.name, text=evaluation, threads=arguments.threads,
                       progress=lambda line: print(line, file=sys.stderr))
    finally:
        os.unlink(handle.name)
    if arguments.plot:
        plot(points, arguments.plot, title="tiny causal LM (benchmarks/tiny_lm.py): rate and distortion")
    print(f"model: {model}, {points[0].parameters:,} float weights; calibration: {arguments.calibration} text; threads={arguments.threads}; "
          f"machine: {os.cpu_count()}-core x86-64 VM\n")
    print("| pipeline | bits/weight | × vs fp32 | KL mean | ppl ratio | top-1 | encode s | decode s | frontier |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|:-:|")
    for p in points:
        m = p.metrics
        print(f"| `{p.pipeline}` | {p.bits_per_weight:.3f} | {p.ratio_fp32:.2f} | {m.get('kl_mean', float('nan')):.4f} | "
              f"{m.get('ppl_ratio', float('nan')):.4f} | {m.get('top1_agreement', float('nan')):.3f} | {p.encode_seconds:.1f} | "
              f"{p.decode_seconds:.2f} | {'*' if p.pareto else ''} |")
    print(json.dumps([p.to_dict() for p in points], default=str))


if __name__ == "__main__":
    main()
