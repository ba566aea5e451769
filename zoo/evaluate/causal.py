"""Causal language models: perplexity and the distance between next-token distributions.

The text is tokenized once, cut into windows of at most CONTEXT tokens (each starting with the
beginning-of-sequence token when the tokenizer has one), and every token after the first of a
window is predicted from the tokens before it in that window. The figures and their names follow
llama.cpp's perplexity tool with --kl-divergence.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch

from zoo.errors import InputError
from zoo.evaluate import metrics
from zoo.evaluate.cache import ReferenceCache, cache_key
from zoo.evaluate.models import Model
from zoo.optimize.models import positions

CONTEXT = 512  # tokens per window, as llama.cpp's default; shorter when the model allows less
TOP_K = 256  # reference log-probs kept per token; see metrics.top_k_kl_divergence
Progress = Callable[[str, int, int], None]


def _same_top(top_logprobs: torch.Tensor, top_indices: torch.Tensor, logprobs: torch.Tensor) -> torch.Tensor:
    """Per position, whether every token the candidate puts on top is one the reference puts on
    top. Of tokens tied for the top, topk and argmax may pick different ones (a copy of the
    reference agreed on 0%); and the reference's top token among the candidate's best was not
    enough: a candidate of flat outputs ties every token, and agreed on 100%."""
    best = logprobs == logprobs.max(-1, keepdim=True).values
    reference_best = top_logprobs == top_logprobs[:, :1]
    shared = (best.gather(-1, top_indices.long()) & reference_best).sum(-1)
    # where the reference ties every token it kept (its top 256), more may tie beyond them, which
    # the cache does not hold: the reference's top token among the candidate's best is all that
    # can be asked (a copy of a flat reference of 300 tokens agreed on 0% without this)
    unseen = reference_best.all(-1) & (best.sum(-1) > shared)
    return (shared == best.sum(-1)) | (unseen & best.gather(-1, top_indices[:, :1].long()).squeeze(-1))


def windows(model: Model, text: str, max_tokens: int) -> list[torch.Tensor]:
    tokenizer = model.tokenizer()
    ids = tokenizer(text, add_special_tokens=False)["input_ids"][:max_tokens]
    config = model.config() or {}
    limit = min(CONTEXT, positions(config) or CONTEXT)
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    step = limit - len(bos)
    if step < 1:
        raise InputError(f"{model.label}: context of {limit} tokens is too short to score text")
    pieces = [torch.tensor(bos + ids[start:start + step]) for start in range(0, len(ids), step)]
    pieces = [piece for piece in pieces if piece.numel() >= 2]
    if not pieces:
        raise InputError("the text is too short to score: it needs at least two tokens")
    return pieces


def _logprobs(model: Any, pieces: list[torch.Tensor], stage: str, progress: Progress | None) -> Iterator[torch.Tensor]:
    """Per window, the log-probabilities of the next token at every position but the last."""
    total = sum(piece.numel() for piece in pieces)
    done = 0
    with torch.inference_mode():
        for piece in pieces:
            logits = model(input_ids=piece.unsqueeze(0)).logits[0, :-1]
            yield metrics.log_softmax(logits)
            done += piece.numel()
            if progress:
                progress(stage, done, total)


def reference_outputs(reference: Model, pieces: list[torch.Tensor], cache: ReferenceCache, progress: Progress | None) -> dict[str, torch.Tensor]:
    """Top-k log-probs, their token ids and the right token's log-prob, per predicted position."""
    key = cache_key("causal-lm", reference.fingerprint(), str(TOP_K), *(piece.numpy().tobytes() + b"|" for piece in pieces))
    cached = cache.get(key)
    if cached is not None:
        return cached
    model = reference.load("causal-lm")
    top_logprobs, top_indices, target = [], [], []
    for piece, logprobs in zip(pieces, _logprobs(model, pieces, "reference", progress)):
        values, indices = logprobs.topk(min(TOP_K, logprobs.shape[-1]), dim=-1)
        top_logprobs.append(values.float())
        top_indices.append(indices.int())
        target.append(logprobs.gather(-1, piece[1:].unsqueeze(-1)).squeeze(-1))
    entry = {
        "top_logprobs": torch.cat(top_logprobs),
        "top_indices": torch.cat(top_indices),
        "target_logprobs": torch.cat(target),
        "vocabulary": torch.tensor([logprobs.shape[-1]]),
    }
    cache.put(key, entry)
    return entry


def evaluate_causal_lm(candidate: Model, reference: Model | None, text: str, max_tokens: int,
                       cache: ReferenceCache, progress: Progress | None) -> dict[str, Any]:
    pieces = windows(candidate, text, max_tokens)
    base = reference_outputs(reference, pieces, cache, progress) if reference is not None else None
    model = candidate.load("causal-lm")
    target, kl, agree = [], [], []
    position = 0
    for piece, logprobs in zip(pieces, _logprobs(model, pieces, "candidate", progress)):
        count = logprobs.shape[0]
        target.append(logprobs.gather(-1, piece[1:].unsqueeze(-1)).squeeze(-1))
        if base is not None:
            if logprobs.shape[-1] != int(base["vocabulary"][0]):
                raise InputError(f"{candidate.label} has a vocabulary of {logprobs.shape[-1]} tokens, "
                                 f"its reference {int(base['vocabulary'][0])}: they cannot be compared")
            top_logprobs = base["top_logprobs"][position:position + count]
            top_indices = base["top_indices"][position:position + count]
            kl.append(metrics.top_k_kl_divergence(top_logprobs, top_indices, logprobs))
            agree.append(_same_top(top_logprobs, top_indices, logprobs))
        position += count
    candidate_target = torch.cat(target)
    figures: dict[str, Any] = {"tokens": int(candidate_target.numel()), "windows": len(pieces), "ppl": metrics.perplexity(candidate_target)}
    if base is None:
        return figures
    reference_target = base["target_logprobs"]
    ln_ratio = (reference_target.double() - candidate_target.double()).mean().item()
    figures.update({
        "ppl_reference": metrics.perplexity(reference_target),
        "ln_ppl_ratio": ln_ratio,
        "ppl_ratio": float(torch.tensor(ln_ratio, dtype=torch.float64).exp()),
        **metrics.distribution_stats(torch.cat(kl), "kl"),
        "top1_agreement": torch.cat(agree).double().mean().item(),
        **metrics.delta_p(reference_target, candidate_target),
        "top_k": int(base["top_indices"].shape[-1]),
    })
    return figures
