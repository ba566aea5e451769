"""PRANC over a fine-tune's difference from its base (`zoo compress --base`), against storing the
fine-tune, or the difference, losslessly.

    python benchmarks/bench_pranc_delta.py [--k 500 --k 2000] [--steps 300] [--tune-steps 400]

The base is bench_pranc.py's classifier (a 1-layer BERT, width 32, byte tokens, three classes:
which piece of calibration.txt a window comes from). The fine-tune trains it 400 more steps
on a shifted task with the same head: which of zoo's three text files a window comes from. Every
archive is decoded against the base and scored on held-out windows (the last fifth of each file)
against the fine-tune: label agreement, accuracy, mean KL of the class distributions.
Anchors, measured in the same run: "base alone" (store nothing: the do-nothing answer), the
fine-tune stored losslessly, and its float32 difference from the base stored losslessly.
Distillation (`--calib`) reads the fine-tune's training text, never the scored windows; the model
folders carry a byte-level tokenizer so that `--calib` can run them.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import bench_pranc  # noqa: E402


def save_byte_tokenizer(folder: Path) -> None:
    """One token per character, its code point: the byte ids the classifier reads, for ASCII text."""
    import transformers
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers

    vocabulary = {chr(i): i for i in range(1, 256)} | {"\x00": 0}
    tokenizer = Tokenizer(models.WordLevel(vocabulary, unk_token="\x00"))
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    transformers.PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="\x00").save_pretrained(folder)


def shifted_task() -> tuple[list[tuple[list[int], int]], list[tuple[list[int], int]], str]:
    """The fine-tune's task: which of zoo's three text files (calibration text, evaluation text,
    evaluation sentences) a window comes from. Each gives its first 80% to training (and to
    distillation, as text) and its last 20% to scoring."""
    data = HERE.parent / "zoo" / "data"
    texts = [(data / name).read_text(encoding="utf-8") for name in ("calibration.txt", "eval_text.txt", "eval_sentences.txt")]
    texts = [text[:min(map(len, texts))] for text in texts]  # as much of each: chance is one in three
    training, held_out = [], []
    for label, text in enumerate(texts):
        cut = len(text) * 4 // 5
        training += bench_pranc._windows(text[:cut], label, 0, 8)
        held_out += bench_pranc._windows(text[cut:], label, 0, 16)
    return training, held_out, "\n\n".join(text[:len(text) * 4 // 5] for text in texts)


def fine_tune(base: Path, folder: Path, steps: int) -> tuple[object, object, str]:
    """The base trained `steps` more steps on the shifted task: held-out (ids, labels) and the
    training text."""
    import torch
    import transformers

    training, held_out, text = shifted_task()
    model = transformers.AutoModelForSequenceClassification.from_pretrained(base)
    bench_pranc.train(model.train(), training, steps, 3e-3, seed=1)
    model.eval().save_pretrained(folder)
    save_byte_tokenizer(folder)
    return torch.tensor([w[0] for w in held_out]), torch.tensor([w[1] for w in held_out]), text


def lossless_delta(base: Path, fine_tuned: Path, scratch: Path) -> object:
    """The fine-tune folder with its weights replaced by their float32 difference from the base,
    stored losslessly by zoo (the zoo.api.Report)."""
    import shutil

    import zoo
    from safetensors.numpy import load_file, save_file

    folder = scratch / "delta"
    shutil.copytree(fine_tuned, folder)
    before, after = load_file(base / "model.safetensors"), load_file(fine_tuned / "model.safetensors")
    save_file({name: after[name] - before[name] for name in after}, folder / "model.safetensors")
    return zoo.compress(folder, scratch / "delta.zoo", "lossless", threads=1)


def main() -> None:
    import torch

    import zoo

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, action="append")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--tune-steps", type=int, default=400)
    arguments = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as scratch_name:
        scratch = Path(scratch_name)
        base, tuned = scratch / "base", scratch / "tuned"
        bench_pranc.build(base)
        ids, labels, text = fine_tune(base, tuned, arguments.tune_steps)
        calibration = scratch / "calibration.txt"
        calibration.write_text(text, encoding="utf-8")
        weights = __import__("safetensors.torch", fromlist=["load_file"]).load_file
        parameters = sum(p.numel() for p in weights(tuned / "model.safetensors").values())
        print(f"fine-tune: {parameters:,} weights, {len(labels)} held-out windows; threads=1; "
              f"machine: {os.cpu_count()}-core x86-64 VM\n")
        print("| stored | archive bytes | of which tensors | × smaller than lossless fine-tune | agreement | accuracy | "
              "KL mean vs fine-tune | encode s |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|")
        started = time.perf_counter()
        anchor = zoo.compress(tuned, scratch / "lossless.zoo", "lossless", threads=1)
        rows = [("fine-tune, `lossless`", anchor, time.perf_counter() - started, zoo.load_state_dict(anchor.archive))]
        started = time.perf_counter()
        delta = lossless_delta(base, tuned, scratch)
        rows.append(("difference from the base, `lossless` (rebuilds the fine-tune)", delta, time.perf_counter() - started,
                     zoo.load_state_dict(anchor.archive)))
        rows.append(("nothing: base alone", None, 0.0, weights(base / "model.safetensors")))
        for k in arguments.k or [500, 2000]:
            for steps, options in ((0, {}), (arguments.steps, {"calibration": calibration})):
                spec = f"pranc:k={k},steps={steps}"
                started = time.perf_counter()
                report = zoo.compress(tuned, scratch / f"{k}-{steps}.zoo", spec, threads=1, base=base, **options)
                label = f"`--base` `{spec}`" + (" `--calib`" if options else " (weight fit)")
                rows.append((label, report, time.perf_counter() - started, zoo.load_state_dict(report.archive, base=base)))
        for label, report, seconds, state in rows:
            q = bench_pranc.quality(state, tuned, ids, labels)
            size = report.compressed_bytes if report else 0
            tensors = sum(t.compressed_bytes for t in report.tensors) if report else 0
            ratio = f"{anchor.compressed_bytes / size:.1f}" if size else "–"
            print(f"| {label} | {size:,} | {tensors:,} | {ratio} | {q['agreement']:.3f} | {q['accuracy']:.3f} "
                  f"(fine-tune {q['accuracy_original']:.3f}) | {q['kl_mean']:.4f} | {seconds:.1f} |")


if __name__ == "__main__":
    main()
