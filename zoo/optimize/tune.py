"""l2's tuning (`l2:tune=N`): the rounded weights trained against the original model's outputs.

Error-feedback rounding (zoo.optimize.refine) lowers each layer's own output error; the model's
user sees all layers at once. Tuning starts from the symbols encode would write and trains one
latent value per weight, in units of its tensor's step, on the teacher's distortion (the KL to
the original's outputs for an LM): the forward pass rounds the latents exactly as the quantizer
does, at the tensor's own step and dead zone, and the gradient goes through the rounding as if it
were not there (the straight-through estimator). The loss is L²'s: distortion plus a price per
bit times the rate. The rate is differentiable: each weight costs the code length of its symbol
under its tensor's symbol frequencies, interpolated linearly between the integers on either side
of its latent, so a rounding that saves distortion but costs bits is weighed against them. The
price starts at the slope at which the survey split the budget (distortion per bit) and then
follows the budget, a Lagrange multiplier: it rises while the symbols would code to more bits
than they started with and falls while to fewer, so the size the survey landed stays. A
weight the calibration text never exercises (the row of a token the text lacks) has no
distortion to set against its bits and keeps its rounding: the rate alone would pull it to zero,
and Adam, which scales every weight's steps alike, would let it.

What it costs: N forward and backward passes of the model on BATCH calibration sequences each,
in float32 on the CPU. What it risks: the latents fit the calibration text; the text should be
what the model will see, and more of it generalises better (SEQUENCES of the text are read).
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np

from zoo.codecs.base import StageProgress, step_reporter
from zoo.errors import ZooWarning

SEQUENCES = 512  # calibration sequences the teacher reads when tuning (MAX_SEQUENCES otherwise)
BATCH = 4  # sequences per iteration
LEARNING_RATE = 0.01  # Adam, in steps of the tensor's quantizer; decays to zero on a cosine
PRICE_RESPONSE = 100.0  # the price of a bit is multiplied by exp(this x the relative excess of bits)
PRICE_RANGE = 1e6  # ... and kept within this factor of the slope either way (no underflow to a price that cannot rise)
REFRESH = 25  # iterations between re-counts of the symbol frequencies the code lengths come from
# The code lengths are tabled by magnitude, 8 bytes each: a tensor whose symbols reach past this
# (an outlier's, where l2's step is the least it allows, symbols up to 2^30) keeps its rounding.
WIDEST_SYMBOL = 1 << 20


def code_lengths(symbols: np.ndarray) -> tuple[np.ndarray, int]:
    """Bits per symbol by magnitude (-log2 of the frequency of the magnitude, plus one bit of sign
    for a nonzero one), and the largest magnitude + 1; a magnitude never seen costs what one
    occurrence would."""
    magnitudes = np.abs(symbols.reshape(-1))
    counts = np.bincount(magnitudes, minlength=int(magnitudes.max(initial=0)) + 2).astype(np.float64)
    lengths = -np.log2(np.maximum(counts, 1.0) / magnitudes.size) + (np.arange(counts.size) > 0)
    return lengths, counts.size - 1


def tune(teacher: Any, symbols: dict[str, np.ndarray], steps: dict[str, tuple[float, float]], iterations: int,
         slope: float = 0.0, progress: StageProgress | None = None) -> dict[str, np.ndarray]:
    """New symbols for the tensors in `symbols` (int arrays, the tensors' shapes), trained for
    `iterations` steps on `teacher`'s distortion plus a price (starting at `slope`) times the
    bits they code to, at about the bits they started with; tensors the teacher's model lacks
    keep theirs. `progress("tuning roundings", done, iterations)` follows the iterations."""
    import torch

    latents: dict[str, Any] = {}
    grids: dict[str, tuple[float, float]] = {}
    tables: dict[str, tuple[Any, int]] = {}
    claimed: set[str] = set()
    for name, symbol in symbols.items():
        parameter = teacher.parameter(name)
        if parameter is None or parameter in claimed or teacher.parameter_names[parameter].numel() != symbol.size:
            continue
        if symbol.size and max(int(symbol.max()), -int(symbol.min())) > WIDEST_SYMBOL:
            warnings.warn(f"l2: tune leaves {name}'s roundings as they are: its symbols reach past {WIDEST_SYMBOL:,} "
                          "(a weight far larger than the rest)", ZooWarning, stacklevel=2)
            continue
        claimed.add(parameter)
        step, dead_zone = steps[name]
        # Start where encode's symbols dequantize to: |k| + d/s steps from zero, rounding back to k.
        start = np.sign(symbol) * (np.abs(symbol) + np.where(symbol != 0, dead_zone / step, 0.0))
        latents[name] = torch.tensor(start, dtype=torch.float32, requires_grad=True)
        grids[name] = (step, dead_zone)
        lengths, top = code_lengths(symbol)
        tables[name] = (torch.tensor(lengths, dtype=torch.float32), top)
    if not latents or iterations <= 0:
        return symbols

    def rounded(name: str) -> tuple[Any, Any]:
        """(value with a straight-through gradient, integer symbols) of a latent."""
        latent = latents[name]
        step, dead_zone = grids[name]
        k = torch.sign(latent) * torch.floor(torch.clamp(latent.abs() - dead_zone / step, min=0.0) + 0.5)
        k = k.detach()
        value = torch.sign(k) * (k.abs() * step + dead_zone * (k != 0))
        return latent * step + (value - latent * step).detach(), k

    def rate_gradient(name: str) -> Any:
        """d(code length)/d(latent): the code length is linear in each latent's magnitude between
        the two integer magnitudes around it (flat beyond the largest)."""
        step, dead_zone = grids[name]
        lengths, top = tables[name]
        latent = latents[name].detach()
        position = latent.abs() - dead_zone / step
        below = torch.clamp(torch.floor(position), min=0.0, max=float(top - 1)).long()
        inside = (position >= 0) & (position < top)
        return torch.sign(latent) * (lengths[below + 1] - lengths[below]) * inside

    def hard_bits() -> float:
        """What the current symbols cost at their own frequencies (their empirical entropy)."""
        total = 0.0
        for name in latents:
            k = rounded(name)[1].reshape(-1).long()
            counts = torch.bincount(k - k.min()).double()
            p = counts[counts > 0] / k.numel()
            total += float(-(p * torch.log2(p)).sum()) * k.numel()
        return total

    def overrides() -> dict[str, Any]:
        out = {}
        for name in latents:
            parameter = teacher.parameter(name)
            out[parameter] = rounded(name)[0].reshape(teacher.parameter_names[parameter].shape)
        return out

    optimiser = torch.optim.Adam(list(latents.values()), lr=LEARNING_RATE)
    exercised = {name: torch.zeros_like(latent, dtype=torch.bool) for name, latent in latents.items()}
    budget, price = hard_bits(), slope
    report = step_reporter(progress, "tuning roundings", iterations)
    for iteration in range(iterations):
        for group in optimiser.param_groups:
            group["lr"] = LEARNING_RATE * 0.5 * (1.0 + math.cos(math.pi * iteration / iterations))
        current = overrides()
        first = iteration * BATCH
        loss = sum(teacher.distortion(current, (first + j) % teacher.batches) for j in range(BATCH)) / BATCH
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        for name, latent in latents.items():
            if latent.grad is None:
                continue
            exercised[name] |= latent.grad != 0
            if slope > 0:
                latent.grad += price * rate_gradient(name) * exercised[name]
        optimiser.step()
        if slope > 0:
            # Symbols that start all alike in every tensor (all rounded to zero) code to no bits: any bit is over that budget.
            bits = hard_bits()
            excess = min(bits / budget - 1.0, 0.1) if budget > 0 else 0.1 if bits > 0 else 0.0
            price = min(max(price * math.exp(PRICE_RESPONSE * excess), slope / PRICE_RANGE), slope * PRICE_RANGE)
            if (iteration + 1) % REFRESH == 0:
                for name in latents:
                    lengths, top = code_lengths(rounded(name)[1].numpy().astype(np.int64))
                    tables[name] = (torch.tensor(lengths, dtype=torch.float32), top)
        report(iteration + 1)
    with torch.no_grad():
        tuned = dict(symbols)
        for name in latents:
            tuned[name] = rounded(name)[1].numpy().astype(np.int64).reshape(symbols[name].shape)
    return tuned
