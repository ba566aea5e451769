"""A small causal language model for benchmarks, trained here on text every Python install has.

    from benchmarks.tiny_lm import load_or_train, texts
    model_dir = load_or_train("~/.cache/zoo-bench/tiny-lm")   # a Hugging Face folder (safetensors, tokenizer)
    train, calibration, evaluation = texts()

The text is the Python reference documentation that ships with CPython (pydoc_data.topics),
cut into blocks of about 1 KB: every tenth block is held out for evaluation, the one five
blocks later for calibration, the rest is for training; the three never overlap. The model is a
Llama-style decoder (4 layers, width 128, vocabulary 2048 byte-level BPE), trained once on CPU
(a few minutes on two cores) and cached: a folder that loads is reused as it is.

Run it directly to (re)build the cache: python benchmarks/tiny_lm.py [PATH] [--force]
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from pathlib import Path

# not under ~/.cache/zoo, the default zoo's own folder, where a model folder makes it "no zoo"
DEFAULT_PATH = Path.home() / ".cache" / "zoo-bench" / "tiny-lm"
VOCABULARY = 2048
WIDTH = 128
LAYERS = 4
CONTEXT = 128
STEPS = 500
BATCH = 16
SEED = 0
_BLOCK = 1024


def texts() -> tuple[str, str, str]:
    """(train, calibration, evaluation), disjoint blocks of the same documentation."""
    from pydoc_data.topics import topics

    corpus = "\n\n".join(topics[key].strip() for key in sorted(topics))
    blocks, start = [], 0
    while start < len(corpus):
        end = corpus.find("\n\n", start + _BLOCK)  # cut at paragraph ends
        end = len(corpus) if end < 0 else end
        blocks.append(corpus[start:end].strip())
        start = end
    train = [b for i, b in enumerate(blocks) if i % 10 not in (0, 5)]
    calibration = [b for i, b in enumerate(blocks) if i % 10 == 5]
    evaluation = [b for i, b in enumerate(blocks) if i % 10 == 0]
    return "\n\n".join(train), "\n\n".join(calibration), "\n\n".join(evaluation)


def _tokenizer(train: str):  # noqa: ANN202 - a transformers PreTrainedTokenizerFast
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCABULARY, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator([train], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|endoftext|>", bos_token="<|endoftext|>",
                                   unk_token="<|endoftext|>", model_max_length=CONTEXT * 4)


def _loads(path: Path) -> bool:
    try:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        AutoTokenizer.from_pretrained(path, local_files_only=True)
        AutoModelForCausalLM.from_pretrained(path, local_files_only=True)
        return (path / "model.safetensors").is_file()
    except Exception:  # anything that does not load is rebuilt
        return False


def train(path: Path, steps: int = STEPS, log=print) -> Path:  # noqa: ANN001
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(SEED)
    train_text, _, evaluation_text = texts()
    tokenizer = _tokenizer(train_text)
    ids = torch.tensor(tokenizer(train_text)["input_ids"])
    held_out = torch.tensor(tokenizer(evaluation_text)["input_ids"])
    config = LlamaConfig(vocab_size=VOCABULARY, hidden_size=WIDTH, intermediate_size=4 * WIDTH, num_hidden_layers=LAYERS,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=CONTEXT * 4,
                         tie_word_embeddings=False, bos_token_id=0, eos_token_id=0)
    model = LlamaForCausalLM(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.05, betas=(0.9, 0.95))
    generator = torch.Generator().manual_seed(SEED)
    started = time.perf_counter()
    model.train()
    for step in range(steps):
        learning_rate = 3e-3 * min(1.0, (step + 1) / 100) * 0.5 * (1 + math.cos(math.pi * step / steps))
        for group in optimizer.param_groups:
            group["lr"] = learning_rate
        starts = torch.randint(0, len(ids) - CONTEXT - 1, (BATCH,), generator=generator)
        batch = torch.stack([ids[s:s + CONTEXT] for s in starts.tolist()])
        loss = model(input_ids=batch, labels=batch).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if step % 200 == 0 or step == steps - 1:
            log(f"step {step}: train loss {loss.item():.3f} ({time.perf_counter() - started:.0f} s)")
    model.eval()
    with torch.no_grad():
        windows = held_out[: len(held_out) // CONTEXT * CONTEXT].reshape(-1, CONTEXT)
        held_out_loss = model(input_ids=windows, labels=windows).loss.item()
    log(f"held-out loss {held_out_loss:.3f} (perplexity {math.exp(held_out_loss):.1f})")

    staging = path.with_name(path.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging, safe_serialization=True)
    tokenizer.save_pretrained(staging)
    (staging / "training.json").write_text(json.dumps({"steps": steps, "held_out_loss": held_out_loss, "seed": SEED}))
    if path.exists():
        shutil.rmtree(path)
    staging.rename(path)
    return path


def load_or_train(path: str | Path = DEFAULT_PATH, force: bool = False, log=print) -> Path:  # noqa: ANN001
    """The model folder at `path`, trained first when it is missing or does not load."""
    path = Path(path).expanduser()
    if not force and _loads(path):
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    return train(path, log=log)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", nargs="?", default=str(DEFAULT_PATH))
    parser.add_argument("--force", action="store_true")
    arguments = parser.parse_args()
    print(load_or_train(arguments.path, arguments.force, log=lambda line: print(line, file=sys.stderr)))
