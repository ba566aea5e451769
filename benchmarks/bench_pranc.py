"""PRANC on a small classifier, against storing the same model losslessly.

    python benchmarks/bench_pranc.py [--k 2000 --k 8000] [--steps 300]

The classifier (a 1-layer BERT, width 32, byte tokens) is trained here in a few seconds to tell
which of three texts a 64-byte window comes from (the first three pieces of zoo/data/calibration.txt,
its first 18 paragraphs: the text has grown since, and the task stays the one measured).
Each PRANC archive is decoded and run on held-out windows: label agreement with the original,
accuracy, and mean KL of the class distributions. The anchor is the lossless pipeline on the same
folder, measured in the same run.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

WINDOW = 64


def _windows(text: str, label: int, start: int, stride: int) -> list[tuple[list[int], int]]:
    data = text.encode("utf-8")
    return [(list(data[i:i + WINDOW]), label) for i in range(start, len(data) - WINDOW, stride)]


def task() -> tuple[list[tuple[list[int], int]], list[tuple[list[int], int]]]:
    """(training, held-out) windows labelled by which piece of calibration.txt they come from."""
    from zoo.optimize.teacher import default_text

    pieces = [p for p in default_text().split("\n\n") if p]
    texts = ["\n".join(pieces[:14]), "\n".join(pieces[14:17]), "\n".join(pieces[17:18])]
    train = [w for label, t in enumerate(texts) for w in _windows(t, label, 0, 8)]
    held_out = [w for label, t in enumerate(texts) for w in _windows(t, label, 4, 97)]
    return [w for w in train if w not in held_out], held_out


def train(model: object, windows: list[tuple[list[int], int]], steps: int, learning_rate: float, seed: int = 0) -> None:
    import torch

    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        batch = [windows[i] for i in torch.randint(len(windows), (32,), generator=generator).tolist()]
        ids, labels = torch.tensor([b[0] for b in batch]), torch.tensor([b[1] for b in batch])
        loss = model(input_ids=ids, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def build(folder: Path) -> tuple[object, object]:
    import torch
    import transformers

    training, held_out = task()
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=256, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                                     max_position_embeddings=WINDOW, num_labels=3)
    model = transformers.BertForSequenceClassification(config)
    train(model, training, 400, 3e-3)
    model.eval().save_pretrained(folder)
    return torch.tensor([w[0] for w in held_out]), torch.tensor([w[1] for w in held_out])


def distilled(folder: Path, spec: str) -> dict[str, object]:
    """The tensors a distilled PRANC stage decodes to, with the teacher built here: `zoo compress
    --calib` needs a tokenizer in the folder, and this classifier has none (bench_pranc_delta.py
    saves one and distills through zoo.compress)."""
    import torch
    from safetensors.numpy import load_file

    from zoo.optimize.teacher import Teacher, default_text
    from zoo.codecs.base import TypedArray
    from zoo.codecs.pipeline import Pipeline

    stage = Pipeline.parse(spec).array_stages[0]
    arrays = {n: TypedArray(v, "F32") for n, v in load_file(folder / "model.safetensors").items()}
    plan = stage.survey(lambda: iter(arrays.items()), Teacher(folder, default_text(), sequence_length=WINDOW))
    out = {}
    for name, array in arrays.items():
        if stage.selects(name, array):
            result = stage.encode(array, name, plan)
            out[name] = torch.from_numpy(stage.decode(result.parts, result.meta, "F32", array.shape).data.copy())
    return out


def quality(weights: dict[str, object], folder: Path, ids: object, labels: object) -> dict[str, float]:
    import torch
    import transformers

    original = transformers.AutoModelForSequenceClassification.from_pretrained(folder).eval()
    candidate = transformers.AutoModelForSequenceClassification.from_pretrained(folder).eval()
    candidate.load_state_dict(weights, strict=False)
    with torch.no_grad():
        reference = torch.log_softmax(original(input_ids=ids).logits.double(), -1)
        got = torch.log_softmax(candidate(input_ids=ids).logits.double(), -1)
    return {"agreement": float((reference.argmax(-1) == got.argmax(-1)).double().mean()),
            "accuracy": float((got.argmax(-1) == labels).double().mean()),
            "accuracy_original": float((reference.argmax(-1) == labels).double().mean()),
            "kl_mean": float((reference.exp() * (reference - got)).sum(-1).mean())}


def main() -> None:
    import zoo

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, action="append")
    parser.add_argument("--steps", type=int, default=300)
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch) / "classifier"
        ids, labels = build(folder)
        parameters = sum(p.numel() for p in __import__("safetensors.torch", fromlist=["load_file"]).load_file(folder / "model.safetensors").values())
        print(f"classifier: {parameters:,} weights, {len(labels)} held-out windows; threads=1; machine: {os.cpu_count()}-core x86-64 VM\n")
        print("| pipeline | archive bytes | × smaller than lossless | agreement | accuracy | KL mean | encode s |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        started = time.perf_counter()
        anchor = zoo.compress(folder, Path(scratch) / "lossless.zoo", "lossless", threads=1)
        rows = [("lossless", anchor, time.perf_counter() - started, zoo.load_state_dict(anchor.archive))]
        for k in arguments.k or [2000, 8000]:
            spec = f"pranc:k={k},steps=0"
            started = time.perf_counter()
            report = zoo.compress(folder, Path(scratch) / f"pranc-{k}.zoo", spec, threads=1)
            rows.append((spec + " (weight fit)", report, time.perf_counter() - started, zoo.load_state_dict(report.archive)))
            # Same coefficient count, so the same archive size; the fit is distilled on calibration.txt.
            started = time.perf_counter()
            weights = distilled(folder, f"pranc:k={k},steps={arguments.steps}")
            rows.append((f"pranc:k={k},steps={arguments.steps} (distilled)", report, time.perf_counter() - started, weights))
        for spec, report, seconds, weights in rows:
            q = quality(weights, folder, ids, labels)
            print(f"| `{spec}` | {report.compressed_bytes:,} | {anchor.compressed_bytes / report.compressed_bytes:.1f} | "
                  f"{q['agreement']:.3f} | {q['accuracy']:.3f} (original {q['accuracy_original']:.3f}) | {q['kl_mean']:.4f} | {seconds:.1f} |")


if __name__ == "__main__":
    main()
