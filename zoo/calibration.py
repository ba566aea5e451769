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

import json
import os
import re
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError

DEFAULT_TOKENS = 8192
WINDOW = 256
MIN_WORDS = 6  # an encoder's calibration inputs are sentences of at least this many words
TOKEN_SHARE = 0.05  # of the per-token H added to an encoder's pooled statistics
MAX_INPUTS = 8192  # wider inputs than this keep no statistics: H would take too much memory


class Statistics:
    """H per weight name (the tensor names of the model's files). `source` (the model folder) and
    `text` are kept for stages that run the whole model themselves (l2, pranc: zoo.codecs._teacher)."""

    def __init__(self, matrices: dict[str, np.ndarray], tokens: int, source: Path | None = None, text: str | None = None,
                 base: Any = None) -> None:
        self.matrices = matrices
        self.tokens = tokens
        self.source = source
        self.text = text
        self.base = base  # a zoo.delta base when the stages code differences from it: the teacher's student is base + candidate

    def hessian(self, name: str, cols: int) -> np.ndarray | None:
        known = _match(name, self.matrices)
        matrix = self.matrices[known] if known is not None else None
        if matrix is None or matrix.shape != (cols, cols):
            return None
        return matrix


def _model_folder(source: str | os.PathLike[str]) -> Path:
    path = Path(source)
    folder = path if path.is_dir() else path.parent
    if not (folder / "config.json").is_file():
        raise InputError(f"{source}: calibration needs a Hugging Face model folder (config.json, tokenizer, weights)")
    return folder


def _load(folder: Path) -> tuple[Any, Any]:
    import torch
    import transformers

    transformers.utils.logging.set_verbosity_error()
    try:
        config = json.loads((folder / "config.json").read_text())
        architecture = config["architectures"][0]
        model_class = getattr(transformers, architecture)
        model = model_class.from_pretrained(folder, local_files_only=True, torch_dtype=torch.float32).eval()
        tokenizer = transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except Exception as error:  # transformers raises many types for a model it cannot load
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise InputError(f"{folder}: calibration cannot load the model with transformers: {message}") from None
    return model, tokenizer


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
    from .codecs._teacher import _model_class

    return _model_class(model.config)[1] == "encoder"


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


def _inputs(model: Any, tokenizer: Any, text: str, max_tokens: int, origin: str) -> list[Any]:
    """The calibration inputs for this model (see the module docstring); `origin` names the text in errors."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"][:max_tokens]
    if len(ids) < 16:
        raise InputError(f"{origin}: calibration text gives only {len(ids)} tokens; give at least a paragraph")
    window = min(WINDOW, int(getattr(model.config, "max_position_embeddings", WINDOW) or WINDOW))
    return list(_sentences(tokenizer, text, window, max_tokens) if _mean_pooled(model) else _windows(tokenizer, ids, window))


class _Enough(Exception):
    """Raised by the last layer a pass needs, so that the rest of the model is not run."""


def _second_moments(model: Any, inputs: list[Any], linears: dict[str, Any], last: Any = None) -> tuple[dict[str, np.ndarray], int]:
    """(H per `linears` weight name, tokens seen) over `inputs`; a pass stops once `last` has run."""
    import torch

    pooled = _mean_pooled(model)
    sums: dict[str, torch.Tensor] = {}
    pooled_sums: dict[str, torch.Tensor] = {}

    def hook(name: str) -> Any:
        def accumulate(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            flat = inputs[0].detach().reshape(-1, inputs[0].shape[-1]).to(torch.float64)
            product = flat.T @ flat
            sums[name] = sums[name] + product if name in sums else product
            if pooled:
                mean = flat.mean(dim=0)
                outer = torch.outer(mean, mean)
                pooled_sums[name] = pooled_sums[name] + outer if name in pooled_sums else outer
            if module is last:
                raise _Enough

        return accumulate

    handles = [module.register_forward_hook(hook(name)) for name, module in linears.items()]
    tokens = 0
    try:
        with torch.no_grad():
            for piece in inputs:
                try:
                    model(input_ids=piece, attention_mask=torch.ones_like(piece))
                except _Enough:
                    pass
                tokens += piece.shape[1]
    finally:
        for handle in handles:
            handle.remove()

    matrices = {f"{name}.weight": (total / tokens).numpy() for name, total in sums.items()}
    if pooled:
        # What survives mean pooling is each input's mean activation: a weight error along it moves
        # the sentence embedding, one that differs token to token mostly averages away. Rounding
        # that lowers the per-token error alone barely moved MiniLM's embeddings; the small share
        # of per-token H keeps the matrix well conditioned (72 calibration sentences give a rank-72 part).
        matrices = {f"{name}.weight": (pooled_sums[name] / len(inputs)).numpy() + TOKEN_SHARE * matrices[f"{name}.weight"] for name in sums}
    return matrices, tokens


def _linears(model: Any) -> dict[str, Any]:
    import torch

    return {name: module for name, module in model.named_modules() if isinstance(module, torch.nn.Linear) and module.in_features <= MAX_INPUTS}


def _share_tied(model: Any, matrices: dict[str, np.ndarray]) -> None:
    """Tied weights: the file stores one name (often the embedding); give it the head's H."""
    for names in _tied_names(model).values():
        known = [n for n in names if n in matrices]
        for name in names:
            if known and name not in matrices:
                matrices[name] = matrices[known[0]]


def _tied_names(model: Any) -> dict[int, list[str]]:
    """Parameter names by storage: names that share one list are one tied tensor."""
    by_storage: dict[int, list[str]] = {}
    for name, parameter in model.named_parameters(remove_duplicate=False):
        by_storage.setdefault(parameter.data_ptr(), []).append(name)
    return by_storage


def _read_text(text_path: str | os.PathLike[str]) -> str:
    try:
        return Path(text_path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"{text_path}: cannot read calibration text ({error.__class__.__name__})") from None


def collect(source: str | os.PathLike[str], text_path: str | os.PathLike[str], max_tokens: int = DEFAULT_TOKENS) -> Statistics:
    """Run the model at `source` on the text in `text_path`; H for every linear layer."""
    text = _read_text(text_path)
    model, tokenizer = _load(_model_folder(source))
    inputs = _inputs(model, tokenizer, text, max_tokens, str(text_path))
    matrices, tokens = _second_moments(model, inputs, _linears(model))
    _share_tied(model, matrices)
    return Statistics(matrices, tokens, _model_folder(source), text)


def sequential(statistics: Statistics, names: Iterable[str], round_tensor: Callable[[str, np.ndarray | None], np.ndarray],
               max_tokens: int = DEFAULT_TOKENS) -> Statistics:
    """Round the model's tensors in the order it runs them, each linear layer against inputs from
    the layers before it already rounded (GPTQ's sequential order): a layer's H then describes the
    inputs it will really get, upstream errors included, instead of the original model's.

    `round_tensor(name, H)` rounds one of `names` (the model's file tensor names) and returns the
    values the model runs with from then on (float32, the tensor's shape). Tensors no linear layer
    uses (embedding tables) come first, with H None; then each group of linear layers that read
    one input (q, k and v) gets one pass over the calibration inputs, stopped once the group has
    run. A weight tied to a linear layer is rounded with that layer. Returns the H each layer was
    rounded with."""
    import torch

    model, tokenizer = _load(statistics.source)
    inputs = _inputs(model, tokenizer, statistics.text or "", max_tokens, "calibration text")
    parameters = dict(model.named_parameters(remove_duplicate=False))
    tied = {name: group for group in _tied_names(model).values() for name in group}
    owner: dict[str, str] = {}  # parameter name -> the file tensor it loads
    for name in names:
        parameter = _match(name, parameters)
        for alias in tied.get(parameter, []):
            owner[alias] = name
    done: set[str] = set()

    def apply(name: str, hessian: np.ndarray | None) -> None:
        if name in done:
            return
        done.add(name)
        values = torch.from_numpy(np.asarray(round_tensor(name, hessian), dtype=np.float32))
        with torch.no_grad():
            for parameter, file_name in owner.items():
                if file_name == name:
                    parameters[parameter].copy_(values.reshape(parameters[parameter].shape))

    linears = _linears(model)
    feeds_linear = {owner[f"{layer}.weight"] for layer in linears if f"{layer}.weight" in owner}
    for name in dict.fromkeys(owner.values()):
        if name not in feeds_linear:
            apply(name, None)
    matrices: dict[str, np.ndarray] = {}
    tokens = 0
    for group, called_once in _groups_in_order(model, inputs[0], linears):
        wanted = {layer: linears[layer] for layer in group if f"{layer}.weight" in owner}
        if not wanted:
            continue
        found, tokens = _second_moments(model, inputs, wanted, last=list(wanted.values())[-1] if called_once else None)
        matrices.update(found)
        for layer in wanted:
            apply(owner[f"{layer}.weight"], found.get(f"{layer}.weight"))
    for name in owner.values():
        apply(name, None)  # linear layers the calibration inputs never reached
    _share_tied(model, matrices)
    return Statistics(matrices, tokens, statistics.source, statistics.text)


def _match(name: str, known: dict[str, Any]) -> str | None:
    """The key of `known` that file tensor `name` stands for: prefixes may differ either way."""
    if name in known:
        return name
    for candidate in known:
        if name.endswith("." + candidate) or candidate.endswith("." + name):
            return candidate
    return None


def _groups_in_order(model: Any, piece: Any, linears: dict[str, Any]) -> list[tuple[list[str], bool]]:
    """The linear layers in the order one input runs them, consecutive layers that read the same
    tensor grouped, each group with whether its layers ran once only (so a pass may stop after it)."""
    import torch

    calls: list[tuple[str, Any]] = []  # the inputs themselves: kept alive, no two share an address

    def hook(name: str) -> Any:
        def record(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            calls.append((name, inputs[0]))

        return record

    handles = [module.register_forward_hook(hook(name)) for name, module in linears.items()]
    try:
        with torch.no_grad():
            model(input_ids=piece, attention_mask=torch.ones_like(piece))
    finally:
        for handle in handles:
            handle.remove()
    counts = {name: sum(1 for called, _ in calls if called == name) for name, _ in calls}
    groups: list[tuple[list[str], Any]] = []
    for name, source in calls:
        if any(name in group for group, _ in groups):
            continue
        if groups and groups[-1][1] is source:
            groups[-1][0].append(name)
        else:
            groups.append(([name], source))
    return [(group, all(counts[name] == 1 for name in group)) for group, _ in groups]
