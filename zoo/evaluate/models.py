"""Finding, unpacking and loading the models that are compared.

A model is given as a zoo name, a .zoo archive, a model folder or a single weights file. An
archive is decompressed into a temporary folder the first time something needs its files, so
the rest of the evaluator only ever sees folders.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from contextlib import suppress
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

from zoo.errors import InputError, ZooWarning
from zoo.container.format import is_archive
from zoo.optimize.models import load_model, load_tokenizer
from zoo.refs import find_archive, not_found

KINDS = ("lossless", "causal-lm", "encoder", "classifier", "weights")
_CAUSAL_SUFFIXES = ("ForCausalLM", "LMHeadModel")
_MASKED_LM_SUFFIXES = ("ForMaskedLM", "ForPreTraining")
# A config with one of these parts is a model of images or sound besides text (CLIP, SigLIP, CLAP,
# LLaVA): its `*Model` is no text encoder, and a sentence alone does not run it.
_OTHER_MODALITIES = ("vision_config", "audio_config", "image_config", "speech_config")
_POOLING_MODES = ("cls", "max", "mean", "lasttoken", "weightedmean")
_POOLING_FLAGS = (("pooling_mode_cls_token", "cls"), ("pooling_mode_max_tokens", "max"), ("pooling_mode_lasttoken", "lasttoken"),
                  ("pooling_mode_weightedmean_tokens", "weightedmean"))
_SENTENCE_MODULES = ("Dense", "Normalize")  # what zoo runs after Pooling (sentence_head)


def _activation(name: str) -> Any:
    """A Dense module's activation by its class's name (KeyError for one zoo does not know)."""
    import torch

    return {"Tanh": torch.tanh, "Identity": lambda x: x, "ReLU": torch.relu, "Sigmoid": torch.sigmoid,
            "GELU": torch.nn.functional.gelu, "SiLU": torch.nn.functional.silu}[name]


class Model:
    """One side of a comparison. Use as a context manager: it owns the temporary unpacked copy.

    `base` (a zoo.container.delta.BaseModel, owned by the caller) is what an archive stored against a base
    is rebuilt on. Such an archive is checked against it here, before any model runs, so that a
    missing or wrong base fails in one line and not after the other side has been evaluated."""

    def __init__(self, given: str | os.PathLike[str], base: Any = None) -> None:
        self.label = str(given)
        path = find_archive(given)
        if path is None:
            raise InputError(not_found(given))
        self.path = path
        self.archive = is_archive(path)
        self.needs_base = False
        self._base = base
        self._unpacked: tempfile.TemporaryDirectory[str] | None = None
        self._names: list[str] | None = None
        if self.archive:
            from zoo.api import open_archive

            with open_archive(path, base) as opened:
                self.needs_base = opened.base_needed() is not None
                opened.require_base()

    def __enter__(self) -> Model:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._unpacked is not None:
            self._unpacked.cleanup()
            self._unpacked = None

    # -- files ------------------------------------------------------------------------------

    def folder(self) -> Path:
        """A folder holding the model's files (the archive decoded on first call)."""
        if not self.archive:
            return self.path if self.path.is_dir() else self.path.parent
        if self._unpacked is None:
            from zoo.api import decompress

            self._unpacked = tempfile.TemporaryDirectory(prefix="zoo-eval-")
            target = Path(self._unpacked.name) / "model"
            decompress(self.path, target, base=self._base if self.needs_base else None)
        return Path(self._unpacked.name) / "model"

    def file_names(self) -> list[str]:
        """The model's files as relative paths; an archive is not decoded for this."""
        if self._names is None:
            if self.archive:
                from zoo.api import open_archive

                with open_archive(self.path) as opened:
                    self._names = [entry["path"] for entry in opened.files()]
            elif self.path.is_file():
                self._names = [self.path.name]
            else:
                self._names = sorted(p.relative_to(self.path).as_posix() for p in _files_under(self.path))
        return self._names

    def read_text(self, relpath: str) -> str | None:
        """One small file's text (None when the model has no such file), read without decoding a
        whole archive."""
        if relpath not in self.file_names():
            return None
        try:
            if self.archive and self._unpacked is None:
                from zoo.api import open_archive

                with open_archive(self.path) as opened:
                    return opened.read_file(relpath).decode()
            return (self.folder() / relpath).read_text()
        except (UnicodeDecodeError, OSError):
            raise InputError(f"{self.label}: {relpath} is not readable text") from None

    def weight_files(self) -> list[Path]:
        """The files that hold tensors, in the order zoo.sources.folder lists them."""
        if not self.archive and self.path.is_file():
            return [self.path]
        from zoo.sources.folder import scan

        with warnings.catch_warnings():
            if self.archive:  # its files, decoded into a temporary folder: what they hold was said when it was compressed
                warnings.simplefilter("ignore", ZooWarning)
            return [source.path for source in scan(self.folder()) if source.kind in ("safetensors", "torch")]

    def lone_file(self) -> bool:
        """A weights file given alone (not an archive, not a folder)."""
        return not self.archive and self.path.is_file()

    def fingerprint(self) -> str:
        """Changes whenever the model does. For an archive, its header: it holds the CRC-32 of every
        chunk index, which holds the CRC-32 of every chunk (the recorded sha256 of the files would
        not do: a lossy archive records the sha256 of the files it was made from). For anything
        else, each file's size and modification time, as make and pip's caches trust them."""
        digest = hashlib.sha256()
        if self.archive:
            from zoo.container.format import ArchiveFile

            opened = ArchiveFile(self.path)
            try:
                digest.update(json.dumps(opened.header, sort_keys=True).encode())
            finally:
                opened.close()
        else:
            digest.update(f"{self.path.resolve()}\0".encode())
            paths = [self.path] if self.path.is_file() else sorted(_files_under(self.path))
            for path in paths:
                stat = path.stat()
                digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\0".encode())
        return digest.hexdigest()

    # -- what it is -------------------------------------------------------------------------

    def config(self) -> dict[str, Any] | None:
        text = self.read_text("config.json")
        if text is None:
            return None
        try:
            config = json.loads(text)
        except ValueError:
            raise InputError(f"{self.label}: config.json is not valid JSON") from None
        return config if isinstance(config, dict) else None

    def has_tokenizer(self) -> bool:
        return any(name in self.file_names() for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "tokenizer.model"))

    def kind(self) -> tuple[str, str | None]:
        """The kind of evaluation the model supports, and why it fell back to weights if it did."""
        config = self.config()
        if config is None:
            return "weights", f"{self.label} has no config.json: weight-space figures only"
        listed = config.get("architectures")
        architectures = [a for a in listed if isinstance(a, str)] if isinstance(listed, list) else []
        if config.get("is_encoder_decoder"):
            return "weights", f"{self.label} is an encoder-decoder model: weight-space figures only"
        if any(isinstance(config.get(part), dict) for part in _OTHER_MODALITIES):  # CLIPModel: text and images
            named = ", ".join(architectures) or "no architecture given"
            return "weights", f"{self.label} is a model of more than text ({named}): weight-space figures only"
        if any(a.endswith(_CAUSAL_SUFFIXES) for a in architectures):
            kind = "causal-lm"
        elif any(a.endswith("ForSequenceClassification") for a in architectures):
            kind = "classifier"
        elif any(a.endswith(("Model", *_MASKED_LM_SUFFIXES)) for a in architectures):
            kind = "encoder"
        else:
            return "weights", f"{self.label}: no evaluation for architecture {', '.join(architectures) or '(none given)'}: weight-space figures only"
        if not self.has_tokenizer():
            return "weights", f"{self.label} has no tokenizer: weight-space figures only"
        others = [f"{kind_} ({relpath})" for kind_, relpath in self.after_pooling() if kind_ not in _SENTENCE_MODULES]
        if kind == "encoder" and others:
            return "weights", f"{self.label}: zoo does not run its sentence-transformers module {others[0]}: weight-space figures only"
        fed = _main_input(architectures)
        if fed != "input_ids":  # Wav2Vec2Model with its CTC tokenizer: sound in, not tokens
            return "weights", f"{self.label} takes {fed}, not text ({', '.join(architectures)}): weight-space figures only"
        return kind, None

    def has_masked_lm_head(self) -> bool:
        """ELECTRA's *ForPreTraining is its discriminator, which tells replaced tokens: no masked-LM head."""
        listed = (self.config() or {}).get("architectures")
        return isinstance(listed, list) and any(isinstance(a, str) and a.endswith(_MASKED_LM_SUFFIXES) and a != "ElectraForPreTraining"
                                                for a in listed)

    def pooling(self) -> str:
        """How sentence-transformers pools this model: mean unless its Pooling config says cls, max,
        lasttoken or weightedmean (as `pooling_mode`, which sentence-transformers writes since its
        version 5, or as the older `pooling_mode_*_token(s)` flags)."""
        for relpath in self.file_names():
            if not fnmatch(relpath, "*Pooling*/config.json"):
                continue
            with suppress(ValueError, InputError, AttributeError):
                settings = json.loads(self.read_text(relpath) or "{}")
                named = settings.get("pooling_mode")
                if isinstance(named, str) and named.lower() in _POOLING_MODES:
                    return named.lower()
                for flag, mode in _POOLING_FLAGS:
                    if settings.get(flag):
                        return mode
        return "mean"

    def after_pooling(self) -> list[tuple[str, str]]:
        """The sentence-transformers modules after Pooling, as modules.json lists them: (the type's
        last name, its folder), in order."""
        try:
            listed = json.loads(self.read_text("modules.json") or "[]")
        except ValueError:
            return []
        found, pooled = [], False
        for module in listed if isinstance(listed, list) else []:
            kind = str(module.get("type", "")).rsplit(".", 1)[-1] if isinstance(module, dict) else ""
            if pooled:
                found.append((kind, str(module.get("path", ""))))
            pooled = pooled or kind == "Pooling"
        return found

    def sentence_head(self) -> Any:
        """What sentence-transformers does to the pooled vector after Pooling: its Dense layers
        (a 2_Dense of MiniLM's kin) and Normalize, as a function of the pooled vectors. The cosine
        was of the pooled vector alone, and a Dense layer's changes counted nowhere but in the
        weights' figures."""
        import torch

        steps = []
        for kind, relpath in self.after_pooling():
            if kind == "Normalize":
                steps.append(lambda x: torch.nn.functional.normalize(x, dim=-1))
            elif kind == "Dense":
                steps.append(self._dense(relpath))

        def head(vectors: Any) -> Any:
            for step in steps:
                vectors = step(vectors)
            return vectors
        return head

    def _dense(self, relpath: str) -> Any:
        import torch

        folder = self.folder() / relpath
        try:
            settings = json.loads((folder / "config.json").read_text())
            activation = _activation(str(settings.get("activation_function", "")).rsplit(".", 1)[-1])
            if (folder / "model.safetensors").is_file():
                from safetensors.torch import load_file

                tensors = load_file(folder / "model.safetensors")
            else:
                tensors = torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)
            weight, bias = tensors["linear.weight"].float(), tensors.get("linear.bias")
        except (OSError, ValueError, KeyError, RuntimeError) as error:
            raise InputError(f"{self.label}: its sentence-transformers layer {relpath} cannot be read: {error}") from None
        return lambda x: activation(torch.nn.functional.linear(x, weight, None if bias is None else bias.float()))

    def multi_label(self) -> bool:
        return (self.config() or {}).get("problem_type") == "multi_label_classification"

    # -- loading ----------------------------------------------------------------------------

    def tokenizer(self) -> Any:
        return load_tokenizer(self.folder(), self.label)

    def load(self, kind: str, masked_lm: bool = False) -> Any:
        """The model in float32 on CPU, in eval mode. Refuses one whose weights do not all load."""
        return load_model(self.folder(), kind, masked_lm=masked_lm, label=self.label, require_all_weights=True)


def _main_input(architectures: list[str]) -> str:
    """What the first architecture transformers knows takes in (input_ids for text)."""
    import transformers

    for name in architectures:
        with suppress(Exception):  # a name transformers does not know, or a class it cannot import here
            found = getattr(transformers, name, None)
            if found is not None:
                return str(getattr(found, "main_input_name", "input_ids"))
    return "input_ids"


def _files_under(folder: Path) -> list[Path]:
    """The files a model folder holds, skipping the folders zoo.sources.folder skips (.git, caches)."""
    from zoo.sources.folder import SKIPPED_FOLDERS

    return [p for p in folder.rglob("*") if p.is_file() and not SKIPPED_FOLDERS.intersection(p.relative_to(folder).parts[:-1])]
