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
from zoo.optimize.models import first_line, load_model, load_tokenizer
from zoo.refs import find_archive, not_found

KINDS = ("lossless", "causal-lm", "encoder", "classifier", "weights")
_CAUSAL_SUFFIXES = ("ForCausalLM", "LMHeadModel")
_MASKED_LM_SUFFIXES = ("ForMaskedLM", "ForPreTraining")
# A config with one of these parts is a model of images or sound besides text (CLIP, SigLIP, CLAP,
# LLaVA): its `*Model` is no text encoder, and a sentence alone does not run it.
_OTHER_MODALITIES = ("vision_config", "audio_config", "image_config", "speech_config")
# sentence-transformers' pooling modes, in the order it joins their vectors, and its older flags for them
_POOLING_MODES = ("cls", "max", "mean", "mean_sqrt_len_tokens", "weightedmean", "lasttoken")
_POOLING_FLAGS = (("pooling_mode_cls_token", "cls"), ("pooling_mode_max_tokens", "max"), ("pooling_mode_mean_tokens", "mean"),
                  ("pooling_mode_mean_sqrt_len_tokens", "mean_sqrt_len_tokens"), ("pooling_mode_weightedmean_tokens", "weightedmean"),
                  ("pooling_mode_lasttoken", "lasttoken"))
_SENTENCE_MODULES = ("Pooling", "Dense", "Normalize")  # what zoo runs after the Transformer (sentence_head)


def _activation(name: str) -> Any:
    """A Dense module's activation by its class's name (KeyError for one zoo does not know)."""
    import torch

    return {"Tanh": torch.tanh, "Identity": lambda x: x, "ReLU": torch.relu, "Sigmoid": torch.sigmoid,
            "GELU": torch.nn.functional.gelu, "SiLU": torch.nn.functional.silu}[name]


class Model:
    """One side of a comparison. Use as a context manager: it owns the temporary unpacked copy.

    `base` (a zoo.container.delta.BaseModel, owned by the caller) is what an archive stored against a base
    is rebuilt on. Such an archive is checked against it here, before any model runs, so that a
    missing or wrong base fails in one line and not after the other side has been evaluated.

    `selection` (include=, exclude=, follow_links=, as compress takes them) narrows a model folder
    to the files compress chose: the model an archive of them is compared with. Without it a folder
    holding the same weights twice (model.safetensors and pytorch_model.bin, one excluded) was
    compared whole, and the excluded file's tensors counted as the candidate's zeros."""

    def __init__(self, given: str | os.PathLike[str], base: Any = None, selection: dict[str, Any] | None = None) -> None:
        self.label = str(given)
        path = find_archive(given)
        if path is None:
            raise InputError(not_found(given))
        self.path = path
        self.archive = is_archive(path)
        self.needs_base = False
        self._base = base
        # a folder's own choice of files; an archive holds what was chosen, and scan refuses globs for one file
        self._selection = {key: [value] if isinstance(value, str) else value for key, value in (selection or {}).items()
                           if value is not None} if path.is_dir() and not self.archive else {}
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
                from zoo.sources.folder import selected_by

                names = (p.relative_to(self.path).as_posix() for p in _files_under(self.path))
                include, exclude = self._selection.get("include"), self._selection.get("exclude")
                self._names = sorted(name for name in names if selected_by(name, include, exclude))
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
            return [source.path for source in scan(self.folder(), **self._selection) if source.kind in ("safetensors", "torch")]

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
        # T5EncoderModel's config says is_encoder_decoder (T5Config's default) but it holds the encoder alone
        if config.get("is_encoder_decoder") and not any(a.endswith("EncoderModel") for a in architectures):
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
        unknown = _unknown_model_type(config)
        if unknown is not None:  # its code comes with it (trust_remote_code), which zoo does not run: loading it would fail
            return "weights", f"{self.label}: transformers does not know its model type {unknown!r}: weight-space figures only"
        if not self.has_tokenizer():
            return "weights", f"{self.label} has no tokenizer: weight-space figures only"
        unrun = self.unrun_module() if kind == "encoder" else None
        if unrun is not None:
            return "weights", f"{self.label}: zoo does not run its sentence-transformers module {unrun}: weight-space figures only"
        fed = _main_input(architectures)
        if fed != "input_ids":  # Wav2Vec2Model with its CTC tokenizer: sound in, not tokens
            return "weights", f"{self.label} takes {fed}, not text ({', '.join(architectures)}): weight-space figures only"
        return kind, None

    def has_masked_lm_head(self) -> bool:
        """ELECTRA's *ForPreTraining is its discriminator, which tells replaced tokens: no masked-LM head."""
        listed = (self.config() or {}).get("architectures")
        return isinstance(listed, list) and any(isinstance(a, str) and a.endswith(_MASKED_LM_SUFFIXES) and a != "ElectraForPreTraining"
                                                for a in listed)

    def pooling(self) -> tuple[str, ...]:
        """How sentence-transformers pools this model: the modes its Pooling config names (as
        `pooling_mode`, a name or a list, which sentence-transformers writes since its version 5, or
        as the older `pooling_mode_*` flags), their vectors joined in sentence-transformers' order;
        mean without a config."""
        for relpath in self.file_names():
            if not fnmatch(relpath, "*Pooling*/config.json"):
                continue
            settings: Any = {}
            with suppress(ValueError):
                settings = json.loads(self.read_text(relpath) or "{}")
            if not isinstance(settings, dict):
                continue
            named = settings.get("pooling_mode")
            named = [named] if isinstance(named, str) else named if isinstance(named, list) else []
            chosen = {str(mode).lower() for mode in named} | {mode for flag, mode in _POOLING_FLAGS if settings.get(flag) is True}
            unknown = chosen - set(_POOLING_MODES)
            if unknown:
                raise InputError(f"{self.label}: its Pooling config names a mode zoo does not know ({sorted(unknown)[0]})")
            if chosen:
                return tuple(mode for mode in _POOLING_MODES if mode in chosen)
        return ("mean",)

    def sentence_modules(self) -> list[tuple[str, str]]:
        """The sentence-transformers modules modules.json lists, in order: (the type's last name,
        its folder); none without the file. One that cannot be read is an error, as it is to
        sentence-transformers: read as none, its Dense layers were left out unseen."""
        text = self.read_text("modules.json")
        if text is None:
            return []
        try:
            listed = json.loads(text)
        except ValueError:
            listed = None
        if not isinstance(listed, list) or not all(isinstance(m, dict) and isinstance(m.get("type"), str) for m in listed):
            raise InputError(f"{self.label}: modules.json is not a list of sentence-transformers modules")
        return [(module["type"].rsplit(".", 1)[-1], str(module.get("path", ""))) for module in listed]

    def unrun_module(self) -> str | None:
        """The first sentence-transformers module zoo does not run as sentence-transformers would
        (a CNN before Pooling, a LayerNorm after it, a Dense of an activation zoo does not know),
        said as `type (folder)`; None when zoo runs them all."""
        modules = self.sentence_modules()
        for number, (kind, relpath) in enumerate(modules):
            if number == 0 and kind == "Transformer":
                continue
            if kind not in _SENTENCE_MODULES or (kind in ("Dense", "Normalize") and "Pooling" not in [k for k, _ in modules[:number]]):
                return f"{kind or '(no type)'} ({relpath or 'its own folder'})"
            activation, name = self._dense_settings(relpath) if kind == "Dense" else (True, "")
            if activation is None:
                return f"Dense ({relpath or 'its own folder'}) of activation {name!r}"
        return None

    def sentence_head(self) -> Any:
        """What sentence-transformers does to the pooled vector after Pooling: its Dense layers
        (a 2_Dense of MiniLM's kin) and Normalize, as a function of the pooled vectors. The cosine
        was of the pooled vector alone, and a Dense layer's changes counted nowhere but in the
        weights' figures. A module zoo does not run is an error here (with --kind encoder given;
        without it, kind() gives such a model weight figures)."""
        import torch

        unrun = self.unrun_module()
        if unrun is not None:
            raise InputError(f"{self.label}: zoo does not run its sentence-transformers module {unrun}: "
                             "leave out --kind for weight-space figures")
        steps = []
        pooled = False
        for kind, relpath in self.sentence_modules():
            if kind == "Normalize" and pooled:
                steps.append(lambda x: torch.nn.functional.normalize(x, dim=-1))
            elif kind == "Dense" and pooled:
                steps.append(self._dense(relpath))
            pooled = pooled or kind == "Pooling"

        def head(vectors: Any) -> Any:
            for step in steps:
                vectors = step(vectors)
            return vectors
        return head

    def _dense_settings(self, relpath: str) -> tuple[Any, str]:
        """A Dense module's activation function (None where zoo does not know it) and its name."""
        try:
            settings = json.loads(self.read_text(f"{relpath}/config.json" if relpath else "config.json") or "{}")
        except InputError:
            settings = {}
        name = str(settings.get("activation_function") if isinstance(settings, dict) else None).rsplit(".", 1)[-1]
        try:
            return _activation(name), name
        except KeyError:
            return None, name

    def _dense(self, relpath: str) -> Any:
        import torch

        folder = self.folder() / relpath
        activation = self._dense_settings(relpath)[0]
        try:
            if (folder / "model.safetensors").is_file():
                from safetensors.torch import load_file

                tensors = load_file(folder / "model.safetensors")
            else:
                tensors = torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)
            weight, bias = tensors["linear.weight"].float(), tensors.get("linear.bias")
        except Exception as error:  # noqa: BLE001 - safetensors, pickle and torch each raise their own for a damaged file
            raise InputError(f"{self.label}: its sentence-transformers layer {relpath} cannot be read: {first_line(error)}") from None
        return lambda x: activation(torch.nn.functional.linear(x, weight, None if bias is None else bias.float()))

    def multi_label(self) -> bool:
        return (self.config() or {}).get("problem_type") == "multi_label_classification"

    # -- loading ----------------------------------------------------------------------------

    def tokenizer(self) -> Any:
        return load_tokenizer(self.folder(), self.label)

    def load(self, kind: str, masked_lm: bool = False) -> Any:
        """The model in float32 on CPU, in eval mode. Refuses one whose weights do not all load."""
        return load_model(self.folder(), kind, masked_lm=masked_lm, label=self.label, require_all_weights=True)


def _unknown_model_type(config: dict[str, Any]) -> str | None:
    """The config's model_type where transformers does not know it (a model whose code comes with
    it, which transformers loads only with trust_remote_code); None where it does, or where the
    config names none (transformers may still know the model by its folder's name)."""
    named = config.get("model_type")
    if not isinstance(named, str):
        return None
    try:
        from transformers import CONFIG_MAPPING
    except ImportError:  # without transformers nothing runs, and the evaluation says so
        return None
    return None if named in CONFIG_MAPPING else named


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
