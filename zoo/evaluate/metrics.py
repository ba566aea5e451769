"""Quality figures computed on torch tensors: log-probabilities, embeddings, weights.

Every function here takes plain tensors and returns tensors or floats, so codec benchmarks can
call them on whatever they produced without going through model loading. Sums and means are
taken in float64: the interesting differences (a KL of 1e-5, an SQNR of 40 dB) are well below
float32's relative precision once they are summed over thousands of tokens or millions of weights.
"""

from __future__ import annotations

import math
from typing import Any

import torch

WEIGHT_BLOCK = 1 << 22  # elements compared at a time, so a 2 GB embedding never needs a float64 copy


def log_softmax(logits: torch.Tensor) -> torch.Tensor:
    """float32 log-probabilities: what the reference cache keeps, so a candidate identical to its
    reference gives exactly the same numbers and a KL of exactly zero."""
    return torch.log_softmax(logits.float(), dim=-1)


def kl_divergence(reference_logprobs: torch.Tensor, candidate_logprobs: torch.Tensor) -> torch.Tensor:
    """Per-row KL(reference || candidate) over the full vocabulary, in nats."""
    reference_logprobs, candidate_logprobs = reference_logprobs.double(), candidate_logprobs.double()
    return (reference_logprobs.exp() * (reference_logprobs - candidate_logprobs)).sum(-1).clamp_min(0)


def top_k_kl_divergence(reference_top_logprobs: torch.Tensor, reference_top_indices: torch.Tensor,
                        candidate_logprobs: torch.Tensor) -> torch.Tensor:
    """Per-row KL(reference || candidate) from the reference's k most likely tokens only.

    The tokens outside the reference's top k are merged into one "rest" outcome on both sides.
    Merging outcomes never increases a KL divergence, so this is a lower bound of the full KL and
    equals it when k covers the vocabulary; with k in the hundreds the rest holds a tiny share of
    the mass for a trained model and the bound is tight.
    """
    reference_top = reference_top_logprobs.double()
    candidate_top = candidate_logprobs.gather(-1, reference_top_indices.long()).double()
    top = (reference_top.exp() * (reference_top - candidate_top)).sum(-1)
    if reference_top.shape[-1] == candidate_logprobs.shape[-1]:
        return top.clamp_min(0)
    # log(1 - sum p) through log1p keeps the rest's share accurate when it is tiny.
    reference_rest = torch.log1p(-reference_top.exp().sum(-1).clamp(max=1.0 - 1e-15))
    candidate_rest = torch.log1p(-candidate_top.exp().sum(-1).clamp(max=1.0 - 1e-15))
    rest = reference_rest.exp() * (reference_rest - candidate_rest)
    return (top + rest).clamp_min(0)


def distribution_stats(values: torch.Tensor, prefix: str) -> dict[str, float]:
    """Mean (with its standard error), median, 99th percentile and maximum of per-item figures."""
    import numpy as np

    values = values.double().reshape(-1).numpy()  # numpy's quantile has no size limit; torch's stops at 2**24
    if values.size == 0:
        return {}
    stderr = float(values.std(ddof=1)) / math.sqrt(values.size) if values.size > 1 else 0.0
    return {
        f"{prefix}_mean": float(values.mean()),
        f"{prefix}_mean_stderr": stderr,
        f"{prefix}_median": float(np.quantile(values, 0.5)),
        f"{prefix}_p99": float(np.quantile(values, 0.99)),
        f"{prefix}_max": float(values.max()),
    }


def perplexity(target_logprobs: torch.Tensor) -> float:
    """exp of the mean negative log-likelihood of the right tokens."""
    return math.exp(-target_logprobs.double().mean().item())


def top1_agreement(reference_argmax: torch.Tensor, candidate_scores: torch.Tensor) -> float:
    """Share of rows where the candidate's most likely outcome is the reference's."""
    if reference_argmax.numel() == 0:
        return float("nan")
    return (candidate_scores.argmax(-1) == reference_argmax.to(torch.long)).double().mean().item()


def delta_p(reference_target_logprobs: torch.Tensor, candidate_target_logprobs: torch.Tensor) -> dict[str, float]:
    """Mean and RMS of the change in the probability given to the right token."""
    change = candidate_target_logprobs.double().exp() - reference_target_logprobs.double().exp()
    return {"delta_p_mean": change.mean().item(), "delta_p_rms": change.square().mean().sqrt().item()}


def row_cosine(reference: torch.Tensor, candidate: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of matching rows; two zero rows count as identical."""
    reference, candidate = reference.double(), candidate.double()
    dot = (reference * candidate).sum(-1)
    norms = reference.norm(dim=-1) * candidate.norm(dim=-1)
    same = (reference == candidate).all(-1)
    return torch.where(same, torch.ones_like(dot), dot / norms.clamp_min(1e-300))


def weight_sums(reference: torch.Tensor, candidate: torch.Tensor) -> dict[str, float]:
    """The sums every weight-space figure is made of: signal, error and candidate energy, their dot.

    A NaN or an infinity the candidate holds exactly where the reference does (truncate keeps
    them) is reproduced, not an error of infinite size: such weights are left out of the sums.
    Any other non-finite weight, on either side, makes the sums NaN: no error figure is true then.
    """
    reference, candidate = reference.reshape(-1), candidate.reshape(-1)
    sums = {"signal": 0.0, "error": 0.0, "candidate": 0.0, "dot": 0.0, "max_abs_error": 0.0}
    for start in range(0, reference.numel(), WEIGHT_BLOCK):
        r = reference[start:start + WEIGHT_BLOCK].double()
        c = candidate[start:start + WEIGHT_BLOCK].double()
        kept_in_place = ~r.isfinite() & ((r == c) | (r.isnan() & c.isnan()))
        if bool(kept_in_place.any()):
            r, c = r[~kept_in_place], c[~kept_in_place]
        difference = c - r
        sums["signal"] += r.square().sum().item()
        sums["error"] += difference.square().sum().item()
        sums["candidate"] += c.square().sum().item()
        sums["dot"] += (r * c).sum().item()
        if difference.numel():
            largest = difference.abs().max().item()  # NaN where a difference is NaN
            sums["max_abs_error"] = math.nan if math.isnan(largest) or math.isnan(sums["max_abs_error"]) else max(sums["max_abs_error"], largest)
    return sums


def weight_figures(sums: dict[str, float]) -> dict[str, Any]:
    """Relative error (RMS error over RMS weight), SQNR in dB and cosine from `weight_sums`.

    SQNR is None (infinite) when the tensors are identical; against a reference of all zeros the
    relative error is infinite and the cosine 0 unless the candidate is all zeros too. Sums that
    are not finite (a NaN or an infinity not reproduced in place) give NaN figures, which fail
    every gate; JSON gets those as strings (result.json_safe).
    """
    signal, error = sums["signal"], sums["error"]
    if not all(math.isfinite(sums[name]) for name in ("signal", "error", "candidate", "dot")):
        return {"relative_error": math.nan, "sqnr_db": math.nan, "cosine": math.nan, "max_abs_error": sums["max_abs_error"]}
    relative = math.sqrt(error / signal) if signal > 0 else (0.0 if error == 0 else math.inf)
    sqnr = None if error == 0 else (10 * math.log10(signal / error) if signal > 0 else -math.inf)
    norms = math.sqrt(signal * sums["candidate"])
    cosine = 1.0 if error == 0 else (sums["dot"] / norms if norms > 0 else 0.0)
    return {"relative_error": relative, "sqnr_db": sqnr, "cosine": cosine, "max_abs_error": sums["max_abs_error"]}


def weight_totals(per_tensor: list[dict[str, Any]], reference_rms: float | None = None) -> dict[str, Any]:
    """Totals over tensors, each weighted by its element count.

    relative_error and cosine are size-weighted means; sqnr_db is the SQNR that the weighted
    relative error stands for (-20 log10 of it), so one untouched tensor does not make it infinite.
    A tensor whose reference is all zeros has no relative error of its own: given `reference_rms`
    (the RMS of every weight of the reference) and its `rms_error`, it counts with its RMS error
    over that, and the cosine that error stands for, so zero-initialised biases a fine-tune moved a
    little are a little error, not an infinite one.
    """
    counted = [t for t in per_tensor if t["relative_error"] is not None and t["elements"] > 0]
    elements = sum(t["elements"] for t in counted)
    if not elements:  # no float tensor, and no tensor that differs: the weights are identical
        return {"tensors": len(per_tensor), "elements": 0, "relative_error": 0.0, "sqnr_db": None, "cosine": 1.0}

    def figures(t: dict[str, Any]) -> tuple[float, float]:
        if t["relative_error"] == math.inf and t.get("rms_error") is not None and reference_rms:
            relative = t["rms_error"] / reference_rms
            return relative, 1 / math.sqrt(1 + relative * relative)
        return t["relative_error"], t["cosine"]

    weighted = [(figures(t), t["elements"]) for t in counted]
    relative = sum(r * n for (r, _), n in weighted) / elements
    cosine = sum(c * n for (_, c), n in weighted) / elements
    return {
        "tensors": len(per_tensor),
        "elements": elements,
        "relative_error": relative,
        "sqnr_db": None if relative == 0 else -20 * math.log10(relative),
        "cosine": cosine,
    }
