"""Activation statistics from calibration text, for the lossy stages that use them.

For every linear layer y = W x of a Hugging Face model, `collect` runs the model on the text
and keeps H = mean of x x^T over the tokens: the output error of a changed weight is then
(W - W_hat) H (W - W_hat)^T, so H tells a codec which input directions matter. A weight tied
to a linear layer (an embedding table that doubles as the output head) gets that layer's H.

Inputs look like real ones: each carries the special tokens its tokenizer adds. For a bare
encoder (a sentence embedder, whose users mean-pool its output) the inputs are the text's
sentences and H is mostly the pooled statistic, the mean over sentences of m m^T with m a
sentence's mean input: the error that survives pooling. torch and transformers are imported
only when collect runs.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from zoo.codecs.base import StageProgress
from zoo.codecs.selection import inputs_of
from zoo.errors import InputError, ZooWarning
from zoo.optimize.models import kind_of, load_model, load_tokenizer, positions

DEFAULT_TOKENS = 8192
WINDOW = 256
MIN_WORDS = 6  # an encoder's calibration inputs are sentences of at least this many words
TOKEN_SHARE = 0.05  # of the per-token H added to an encoder's pooled statistics
MAX_INPUTS = 8192  # wider inputs than this keep no statistics: H would take too much memory
# An encoder's rounding fits the sentences it is calibrated on: MiniLM needed the 180 of the shipped
# text (69 were too few), so a text with fewer than this gets a warning.
FEW_SENTENCES = 150


class Statistics:
    """H per weight name (the tensor names of the model's files). `source` (the model folder) and
    `text` are kept for stages that run the whole model themselves (l2, pranc: zoo.optimize.teacher)."""

    def __init__(self, matrices: dict[str, np.ndarray], tokens: int, source: Path | None = None, text: str | None = None,
                 base: Any = None, model: Any = None) -> None:
        self.matrices = matrices
        self.model = model  # the loaded model, so that a teacher runs it without loading it again
        self.tokens = tokens
        self.source = source
        self.text = text
        self.base = base  # a zoo.container.delta base when the stages code differences from it: the teacher's student is base + candidate

    def hessian(self, name: str, cols: int) -> np.ndarray | None:
        matrix = self.matrices.get(name)
        if matrix is None:
            # Tensor names may carry a prefix the loaded module names lack, or the other way round.
            for known, candidate in self.matrices.items():
                if name.endswith("." + known) or known.endswith("." + name):
                    matrix = candidate
                    break
        if matrix is None or matrix.shape != (cols, cols):
            return None
        return matrix


class PartStatistics:
    """`statistics` as codebook and truncate look them up for each item they code: an earlier
    stage's part takes the H of the tensor whose inputs it takes (zoo.codecs.selection.Label:
    lowrank's dense part and right factor take their tensor's). Looked up by the part's own label,
    `NAME.dense`, they named nothing: --calib changed no byte of what lowrank made. A part whose
    inputs are another part's outputs (lowrank's left factor) has none, said once a run."""

    def __init__(self, statistics: Any, codec_id: str) -> None:
        self.statistics = statistics
        self.codec_id = codec_id
        self.said = False

    def hessian(self, name: str, cols: int) -> np.ndarray | None:
        tensor = inputs_of(name)
        if tensor is not None:
            return self.statistics.hessian(tensor, cols)
        if not self.said:
            self.said = True
            warnings.warn(f"{self.codec_id}: calibration (--calib) does not apply to {str(name)!r} or parts like it, whose inputs "
                          "are another part's outputs (a lowrank left factor's are the right factor's), which the statistics do not "
                          "describe: they are coded without it", ZooWarning, stacklevel=3)
        return None


def _model_folder(source: str | os.PathLike[str]) -> Path:
    path = Path(source)
    folder = path if path.is_dir() else path.parent
    if not (folder / "config.json").is_file():
        raise InputError(f"{source}: calibration needs a Hugging Face model folder (config.json, tokenizer, weights)")
    return folder


def _windows(tokenizer: Any, ids: list[int], window: int) -> Iterator[Any]:
    """The token ids cut into inputs of at most `window` tokens, each framed by the special tokens
    the tokenizer adds to a real input ([CLS] ... [SEP], <s> ...). Those tokens carry activations
    unlike any word's (attention sinks, outlier features), and every real input has them."""
    import torch

    prefix, suffix = special_frame(tokenizer)
    step = max(1, window - len(prefix) - len(suffix))
    for start in range(0, len(ids), step):
        yield torch.tensor([prefix + ids[start:start + step] + suffix])


def _mean_pooled(model: Any) -> bool:
    """Whether the model is a bare encoder, whose output users pool into one vector per input
    (sentence-transformers' mean pooling), rather than a model with a per-token or per-input head."""
    return kind_of(model.config) == "encoder"


def _sentences(tokenizer: Any, text: str, window: int, max_tokens: int) -> Iterator[Any]:
    """An encoder's inputs: the text's sentences (joined until each has a few words), framed by the
    special tokens as a real input is, at most `max_tokens` tokens in all."""
    import torch

    prefix, suffix = special_frame(tokenizer)
    budget, current = max_tokens, ""
    for sentence in re.split(r"(?<=[.!?])\s+|\n\s*\n", text):
        current = f"{current} {sentence.strip()}".strip()
        if len(current.split()) < MIN_WORDS:
            continue
        ids = tokenizer(current, add_special_tokens=False)["input_ids"][: max(1, window - len(prefix) - len(suffix))]
        current = ""
        if budget <= 0:
            return
        budget -= len(ids)
        yield torch.tensor([prefix + ids + suffix])


def special_frame(tokenizer: Any) -> tuple[list[int], list[int]]:
    """The ids the tokenizer puts before and after a text's own tokens (found by comparing one
    word tokenized with and without them); ([], []) when it adds none."""
    framed = list(tokenizer("a")["input_ids"])
    bare = list(tokenizer("a", add_special_tokens=False)["input_ids"])
    for start in range(len(framed) - len(bare) + 1):
        if framed[start:start + len(bare)] == bare:
            return framed[:start], framed[start + len(bare):]
    return [], []


class _Regrouped(Exception):
    """Layers that read one tensor on the first input did not on a later one."""


def _accumulate(model: Any, inputs: list[Any], linears: dict[str, Any], pooled: bool, share: bool,
                progress: Any) -> tuple[dict[str, Any], dict[str, Any], dict[str, str], int, int]:
    """Run the model on every input and sum x x^T (and, for a pooled encoder, m m^T) per linear
    layer: (sums, pooled sums, followers, tokens, inputs). Layers that read the very same tensor
    (q, k and v read one; so do a gated MLP's gate and up) have the same H, so with `share` the
    first input finds them and they keep one sum: `followers` maps each such layer to the one whose
    sum it shares. A later input that groups them otherwise raises _Regrouped."""
    import torch

    sums: dict[str, torch.Tensor] = {}
    pooled_sums: dict[str, torch.Tensor] = {}
    leaders: dict[str, str] = {}
    # This forward's inputs by id, each held until the forward ends so that no id is reused in it.
    read: dict[int, tuple[torch.Tensor, str]] = {}

    def hook(name: str) -> Any:
        def accumulate(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            source = inputs[0]
            first_reader = read.setdefault(id(source), (source, name))[1] if share else name
            if leaders.setdefault(name, first_reader) != first_reader:
                raise _Regrouped
            if first_reader != name:
                return
            flat = source.detach().reshape(-1, source.shape[-1]).to(torch.float64)
            product = flat.T @ flat
            if name in sums:
                sums[name].add_(product)
            else:
                sums[name] = product
            if pooled:
                mean = flat.mean(dim=0)
                outer = torch.outer(mean, mean)
                if name in pooled_sums:
                    pooled_sums[name].add_(outer)
                else:
                    pooled_sums[name] = outer

        return accumulate

    handles = [module.register_forward_hook(hook(name)) for name, module in linears.items()]
    tokens = pieces = 0
    if progress:
        progress("calibrating", 0, len(inputs))
    try:
        with torch.no_grad():
            for piece in inputs:
                model(input_ids=piece, attention_mask=torch.ones_like(piece))
                read.clear()
                tokens += piece.shape[1]
                pieces += 1
                if progress:
                    progress("calibrating", pieces, len(inputs))
    finally:
        for handle in handles:
            handle.remove()
    return sums, pooled_sums, {name: leader for name, leader in leaders.items() if leader != name}, tokens, pieces


def collect(source: str | os.PathLike[str], text_path: str | os.PathLike[str], max_tokens: int = DEFAULT_TOKENS,
            progress: StageProgress | None = None) -> Statistics:
    """Run the model at `source` on the text in `text_path`; H for every linear layer.
    `progress("calibrating", done, total)` counts the input sequences run."""
    import torch

    try:
        text = Path(text_path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"{text_path}: cannot read calibration text ({error.__class__.__name__})") from None
    folder = _model_folder(source)
    # most weights, not all: a checkpoint may lack the head its config names, which calibration does not need
    model, tokenizer = load_model(folder, label=f"calibration: {folder}", require_most_weights=True), load_tokenizer(folder)
    every = tokenizer(text, add_special_tokens=False)["input_ids"]
    ids = every[:max_tokens]
    if len(ids) < 16:
        raise InputError(f"{text_path}: calibration text gives only {len(ids)} tokens; give at least a paragraph")
    window = min(WINDOW, positions(model.config) or WINDOW)

    pooled = _mean_pooled(model)
    # A few thousand token ids at most: listing them first gives the progress its total.
    inputs = list(_sentences(tokenizer, text, window, max_tokens) if pooled else _windows(tokenizer, ids, window))
    if pooled and len(inputs) < FEW_SENTENCES:
        # more text helps only where the text ran out before the tokens calibration reads
        advice = (f"the {max_tokens} tokens calibration reads hold no more of them with this tokenizer: shorter sentences give more"
                  if len(every) > max_tokens else f"give {FEW_SENTENCES} or more (the text zoo ships has 180)")
        warnings.warn(f"{text_path}: {len(inputs)} sentences of {MIN_WORDS}+ words to calibrate an encoder on; its rounding fits "
                      f"the sentences it sees, so {advice}", ZooWarning, stacklevel=2)
    linears = {name: module for name, module in model.named_modules() if isinstance(module, torch.nn.Linear) and module.in_features <= MAX_INPUTS}
    try:
        sums, pooled_sums, followers, tokens, pieces = _accumulate(model, inputs, linears, pooled, True, progress)
    except _Regrouped:  # a model whose layers share inputs differently from one input to the next
        sums, pooled_sums, followers, tokens, pieces = _accumulate(model, inputs, linears, pooled, False, progress)

    matrices = {f"{name}.weight": total.div_(tokens).numpy() for name, total in sums.items()}
    if pooled:
        # What survives mean pooling is each input's mean activation: a weight error along it moves
        # the sentence embedding, one that differs token to token mostly averages away. Rounding
        # that lowers the per-token error alone barely moved MiniLM's embeddings; the small share
        # of per-token H keeps the matrix well conditioned (n sentences give a rank-n part). Rounding
        # fits the sentences it is given: MiniLM needed the 180 of the shipped text, 69 were too few.
        matrices = {f"{name}.weight": (pooled_sums[name] / pieces).numpy() + TOKEN_SHARE * matrices[f"{name}.weight"] for name in sums}
    for name, leader in followers.items():
        matrices[f"{name}.weight"] = matrices[f"{leader}.weight"]
    for matrix in matrices.values():
        matrix.setflags(write=False)  # one array may be the H of several layers
    # Tied weights: the file stores one name (often the embedding); give it the head's H.
    by_storage: dict[int, list[str]] = {}
    for name, parameter in model.named_parameters(remove_duplicate=False):
        by_storage.setdefault(parameter.data_ptr(), []).append(name)
    for names in by_storage.values():
        known = [n for n in names if n in matrices]
        for name in names:
            if known and name not in matrices:
                matrices[name] = matrices[known[0]]
    return Statistics(matrices, tokens, folder, text, model=model)
