"""The original model as a teacher: loaded in torch, run on calibration text, and asked how far
a candidate set of weights moves its outputs. Used by l2 (sensitivities) and pranc (distillation).

What "how far" means depends on the head the checkpoint names in its config:
- a causal LM or a classifier: mean KL(original || candidate) over positions (or examples), nats;
- anything else (an encoder such as MiniLM): the squared change of the last hidden state, relative
  to its mean squared size.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from zoo.codecs.base import StageProgress
from zoo.errors import InputError
from zoo.optimize.models import kind_of, load_model, load_tokenizer, positions

SEQUENCE_LENGTH = 128
MAX_SEQUENCES = 16
REFERENCE_BYTES = 256 << 20  # the original's outputs kept in memory; further ones are recomputed when asked for


SHIPPED_TEXT = Path(__file__).resolve().parent.parent / "data" / "calibration.txt"


def default_text() -> str:
    """Calibration text shipped with zoo. Not the evaluation text: fitting to the text the
    evaluator then reads would flatter every codec that calibrates."""
    return SHIPPED_TEXT.read_text(encoding="utf-8")


def read_text(calib: str | Path | None) -> str:
    if calib is None:
        return default_text()
    path = Path(calib)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"{path}: cannot read calibration text ({type(error).__name__})") from None
    if not text.strip():
        raise InputError(f"{path}: calibration text is empty")
    return text


def _token_ids(folder: Path, text: str, vocab_size: int) -> list[int]:
    has_tokenizer = any((folder / name).exists() for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json"))
    if has_tokenizer:
        tokenizer = load_tokenizer(folder)
        return [i for i in tokenizer(text, add_special_tokens=False)["input_ids"] if i < vocab_size]
    # A model with no tokenizer (a byte-level toy): bytes are the tokens.
    return [b % vocab_size for b in text.encode("utf-8")]


class Teacher:
    """A model folder (config.json + weights) and its outputs on calibration text.

    `base` (a zoo.container.delta.Deltas) names the tensors stored as their difference from a base model:
    a candidate for one of them is a difference, and the student runs base + candidate."""

    def __init__(self, folder: str | Path, text: str, sequence_length: int = SEQUENCE_LENGTH, max_sequences: int = MAX_SEQUENCES,
                 base: Any = None, progress: StageProgress | None = None, model: Any = None) -> None:
        """`model`, when given, is the folder's model as zoo.optimize.models.load_model(folder)
        loaded it (calibration did): it is run, never changed, instead of loading it again."""
        import torch

        folder = Path(folder)
        if not (folder / "config.json").is_file():
            raise InputError(f"{folder}: calibration needs a model folder with a config.json that transformers can load")
        if model is None:
            model = load_model(folder, label=f"calibration: {folder}")
        config = model.config
        self.kind = kind_of(config)
        # an encoder's users take its bare model's hidden states, whatever head it was saved with
        self.model = model.base_model if self.kind == "encoder" else model
        for parameter in self.model.parameters():
            parameter.requires_grad_(False)
        vocab_size = int(getattr(config, "vocab_size", 256) or 256)
        ids = _token_ids(folder, text, vocab_size)
        limit = positions(config) or sequence_length
        length = max(2, min(sequence_length, limit))
        count = min(max_sequences, len(ids) // length)
        if count == 0:
            raise InputError(f"calibration text gives {len(ids)} tokens; at least {length} are needed")
        self.inputs = torch.tensor(ids[: count * length], dtype=torch.long).reshape(count, length)
        self.parameter_names = dict(self.model.named_parameters())
        self._prefix = getattr(self.model, "base_model_prefix", "") or ""
        self._base = base
        self._offsets: dict[str, Any] | None = None  # parameter name -> base values, read on first use
        self.reference: list[Any] = []
        if progress:
            progress("running the original model", 0, count)
        with torch.no_grad():
            for index in range(count):
                self.reference.append(self._outputs(None, index))
                if progress:
                    progress("running the original model", index + 1, count)
                if len(self.reference) * self.reference[0].numel() * self.reference[0].element_size() >= REFERENCE_BYTES:
                    break
        if progress and len(self.reference) < count:  # the rest are run when asked for: this stage is over
            progress("running the original model", len(self.reference), len(self.reference))

    @property
    def batches(self) -> int:
        return len(self.inputs)

    def parameter(self, tensor_name: str) -> str | None:
        """The model parameter a checkpoint tensor loads into, or None."""
        prefix = self._prefix + "."
        for candidate in (tensor_name, tensor_name.removeprefix(prefix), prefix + tensor_name):
            if candidate in self.parameter_names:
                return candidate
        return None

    def _outputs(self, overrides: dict[str, Any] | None, index: int) -> Any:
        import torch
        from torch.func import functional_call

        inputs = self.inputs[index:index + 1]
        output = functional_call(self.model, overrides or {}, (inputs,)) if overrides else self.model(inputs)
        if self.kind == "encoder":
            return output.last_hidden_state.reshape(-1, output.last_hidden_state.shape[-1])
        logits = output.logits
        return torch.log_softmax(logits.reshape(-1, logits.shape[-1]).float(), dim=-1)

    def _student(self, overrides: dict[str, Any]) -> dict[str, Any]:
        """Candidate parameters, with the base added to those stored as differences."""
        import torch

        if self._base is None or not overrides:
            return overrides
        if self._offsets is None:
            self._offsets = {}
            for key in self._base.keys():
                parameter = self.parameter(key)
                if parameter is not None:
                    self._offsets[parameter] = torch.from_numpy(self._base.get(key)).reshape(self.parameter_names[parameter].shape)
        return {name: value + self._offsets[name] if name in self._offsets else value for name, value in overrides.items()}

    def reference_outputs(self, index: int) -> Any:
        """The original's outputs on calibration sequence `index`."""
        import torch

        if index < len(self.reference):
            return self.reference[index]
        with torch.no_grad():
            return self._outputs(None, index)

    def distortion(self, overrides: dict[str, Any], index: int) -> Any:
        """Differentiable distance of the candidate from the original on calibration sequence `index`."""
        candidate = self._outputs(self._student(overrides), index)
        reference = self.reference_outputs(index)
        if self.kind == "encoder":
            return ((candidate - reference) ** 2).sum(-1).mean() / (reference**2).sum(-1).mean()
        return (reference.exp() * (reference - candidate)).sum(-1).mean()

    def mean_distortion(self, overrides: dict[str, Any], batches: int | None = None) -> float:
        """Distortion averaged over the first `batches` calibration sequences (default: all)."""
        import torch

        with torch.no_grad():
            return float(np.mean([float(self.distortion(overrides, i)) for i in range(min(self.batches, batches or self.batches))]))

    def sensitivities(self, tensor_names: list[str], seed: int = 0, batches: int | None = None,
                      progress: StageProgress | None = None) -> dict[str, np.ndarray]:
        """Per weight, the curvature of the distortion: distortion ~ sum(s * (w' - w)**2).

        For KL it is half the diagonal Fisher, estimated with labels drawn from the model's own
        outputs (their gradients have mean zero, so the square of a sequence's summed gradient
        is an unbiased sum of per-position Fisher terms); for an encoder, the diagonal of J^T J
        by random projections of the hidden state. Both averaged over the positions of the first
        `batches` calibration sequences (default: all); `progress("measuring sensitivities", ...)`
        counts them."""
        import torch

        count = min(self.batches, batches or self.batches)
        if progress:
            progress("measuring sensitivities", 0, count)

        generator = torch.Generator().manual_seed(seed)
        mapped = {name: self.parameter(name) for name in tensor_names}
        wanted = {p for p in mapped.values() if p}
        for name, parameter in self.parameter_names.items():
            parameter.requires_grad_(name in wanted)
        squares = {p: torch.zeros_like(self.parameter_names[p]) for p in wanted}
        unused: set[str] = set()  # weights the output does not depend on (an encoder's pooler, say)
        positions = 0
        try:
            for index in range(count):
                output = self._outputs(None, index)
                if self.kind == "encoder":
                    projection = torch.randn(output.shape, generator=generator)
                    objective = (output * projection).sum()
                else:
                    labels = torch.multinomial(output.detach().exp(), 1, generator=generator).squeeze(-1)
                    objective = output.gather(-1, labels[:, None]).sum()
                positions += output.shape[0]
                gradients = torch.autograd.grad(objective, [self.parameter_names[p] for p in wanted], allow_unused=True)
                for p, gradient in zip(wanted, gradients):
                    if gradient is None:
                        unused.add(p)
                    else:
                        squares[p] += gradient.detach() ** 2
                if progress:
                    progress("measuring sensitivities", index + 1, count)
        finally:
            for parameter in self.parameter_names.values():
                parameter.requires_grad_(False)
        if self.kind == "encoder":
            # over batches, the sum of per-position means
            scale = 1.0 / float(sum((self.reference_outputs(i) ** 2).sum(-1).mean() for i in range(count)))
            scale *= 1.0 / positions * count
        else:
            scale = 0.5 / positions
        result = {p: (squares[p] * scale).numpy().astype(np.float64) for p in wanted}
        used = [result[p] for p in wanted if p not in unused]
        # This output does not see them, but a user of the model may: weigh them like an average
        # weight rather than let the allocation starve them.
        typical = float(np.mean([values.mean() for values in used])) if used else 1.0
        for p in unused:
            result[p] = np.full(result[p].shape, typical)
        return {name: result[p] for name, p in mapped.items() if p}


def load_teacher(calibration: Any, max_sequences: int = MAX_SEQUENCES, progress: StageProgress | None = None) -> Teacher | None:
    """The teacher a survey's calibration argument describes: anything with a `source` model
    folder, optional `text` and optional `base` (see Teacher), or a Teacher already."""
    if calibration is None or isinstance(calibration, Teacher):
        return calibration
    source = getattr(calibration, "source", None)
    if source is None or not (Path(source) / "config.json").is_file():
        return None
    text = getattr(calibration, "text", None) or default_text()
    return Teacher(Path(source), text, max_sequences=max_sequences, base=getattr(calibration, "base", None), progress=progress,
                   model=getattr(calibration, "model", None))


__all__ = ["Teacher", "default_text", "load_teacher", "read_text"]
