"""Activation statistics from calibration text, for the lossy stages that use them.

For every linear layer y = W x of a Hugging Face model, `collect` runs the model on the text
and keeps H = mean of x x^T over the tokens: the output error of a changed weight is then
(W - W_hat) H (W - W_hat)^T, so H tells a codec which input directions matter. A weight tied
to a linear layer (an embedding table that doubles as the output head) gets that layer's H.
torch and transformers are imported only when collect runs.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError

DEFAULT_TOKENS = 8192
WINDOW = 256
MAX_INPUTS = 8192  # wider inputs than this keep no statistics: H would take too much memory


class Statistics:
    """H per weight name (the tensor names of the model's files). `source` (the model folder) and
    `text` are kept for stages that run the whole model themselves (l2, pranc: zoo.codecs._teacher)."""

    def __init__(self, matrices: dict[str, np.ndarray], tokens: int, source: Path | None = None, text: str | None = None) -> None:
        self.matrices = matrices
        self.tokens = tokens
        self.source = source
        self.text = text

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


def collect(source: str | os.PathLike[str], text_path: str | os.PathLike[str], max_tokens: int = DEFAULT_TOKENS) -> Statistics:
    """Run the model at `source` on the text in `text_path`; H for every linear layer."""
    import torch

    try:
        text = Path(text_path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"{text_path}: cannot read calibration text ({error.__class__.__name__})") from None
    model, tokenizer = _load(_model_folder(source))
    ids = tokenizer(text, add_special_tokens=False)["input_ids"][:max_tokens]
    if len(ids) < 16:
        raise InputError(f"{text_path}: calibration text gives only {len(ids)} tokens; give at least a paragraph")
    window = min(WINDOW, int(getattr(model.config, "max_position_embeddings", WINDOW) or WINDOW))

    sums: dict[str, torch.Tensor] = {}
    linears = {name: module for name, module in model.named_modules() if isinstance(module, torch.nn.Linear) and module.in_features <= MAX_INPUTS}

    def hook(name: str) -> Any:
        def accumulate(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            flat = inputs[0].detach().reshape(-1, inputs[0].shape[-1]).to(torch.float64)
            product = flat.T @ flat
            sums[name] = sums[name] + product if name in sums else product

        return accumulate

    handles = [module.register_forward_hook(hook(name)) for name, module in linears.items()]
    try:
        with torch.no_grad():
            for start in range(0, len(ids), window):
                piece = torch.tensor([ids[start:start + window]])
                model(input_ids=piece, attention_mask=torch.ones_like(piece))
    finally:
        for handle in handles:
            handle.remove()

    tokens = len(ids)
    matrices = {f"{name}.weight": (total / tokens).numpy() for name, total in sums.items()}
    # Tied weights: the file stores one name (often the embedding); give it the head's H.
    by_storage: dict[int, list[str]] = {}
    for name, parameter in model.named_parameters(remove_duplicate=False):
        by_storage.setdefault(parameter.data_ptr(), []).append(name)
    for names in by_storage.values():
        known = [n for n in names if n in matrices]
        for name in names:
            if known and name not in matrices:
                matrices[name] = matrices[known[0]]
    return Statistics(matrices, tokens, _model_folder(source), text)
