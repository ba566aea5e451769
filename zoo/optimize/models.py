"""The one way zoo loads a Hugging Face model folder with transformers: float32 on the CPU, in eval
mode, local files only, transformers' own logs and bars kept off stderr (zoo reports its stages
itself, and --json leaves stderr empty). Calibration, the teacher and evaluation all load here."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from zoo.errors import InputError

KINDS = ("causal-lm", "classifier", "encoder")


@contextmanager
def quiet_transformers() -> Iterator[None]:
    """transformers' info logs and loading bars off while zoo loads; the caller's bar setting comes back."""
    from transformers.utils import logging

    enabled = logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            logging.enable_progress_bar()


def kind_of(config: Any) -> str:
    """What a model is, from the architecture its config names: a causal LM, a classifier, or an
    encoder (anything else: its bare model's hidden states are what users take)."""
    architecture = (getattr(config, "architectures", None) or [""])[0]
    if architecture.endswith(("ForCausalLM", "LMHeadModel")):
        return "causal-lm"
    if architecture.endswith("ForSequenceClassification"):
        return "classifier"
    return "encoder"


def positions(config: Any) -> int | None:
    """How many positions a model's embeddings number, the fewest its config (a dict or a
    transformers config) gives under any of the names in use (GPT-2's n_positions and n_ctx, where
    most say max_position_embeddings); None where it gives none."""
    def given(key: str) -> Any:
        return config.get(key) if isinstance(config, dict) else getattr(config, key, None)

    found = [value for value in map(given, ("max_position_embeddings", "n_positions", "n_ctx")) if type(value) is int and value > 0]
    return min(found) if found else None


def first_line(error: BaseException) -> str:
    """An error's message on one line: its first, or all of them joined where the first ends in a
    colon ("... from one of:" and the list that is the point)."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    return " ".join(lines) if lines[0].endswith(":") else lines[0]


def _bare_model(transformers: Any, config: Any) -> Any:
    """The class of an encoder without its head: the one the config names where it is a bare
    model (T5EncoderModel: AutoModel would build the whole T5, decoder included), else AutoModel."""
    for name in getattr(config, "architectures", None) or []:
        found = getattr(transformers, name, None) if isinstance(name, str) and name.endswith("Model") else None
        if isinstance(found, type) and hasattr(found, "from_pretrained"):
            return found
    return transformers.AutoModel


def load_model(folder: str | Path, kind: str | None = None, *, masked_lm: bool = False, label: str | None = None,
               require_all_weights: bool = False, require_most_weights: bool = False) -> Any:
    """The model in `folder` in float32, in eval mode. `kind` picks the class transformers builds:
    None for the architecture the config names (its own head included), else one of KINDS (an
    encoder as its bare model, or with its masked-LM head when `masked_lm`). `require_all_weights`
    refuses a model whose files lack weights the class needs (position ids aside);
    `require_most_weights` one whose files hold fewer than half of them (a config that does not
    describe the files: transformers builds the model it names, randomly initialised)."""
    import torch
    import transformers

    folder = Path(folder)
    label = label or str(folder)
    if not (folder / "config.json").is_file():
        raise InputError(f"{label}: needs a model folder with a config.json that transformers can load")
    try:
        with quiet_transformers():
            config = transformers.AutoConfig.from_pretrained(folder, local_files_only=True)
            if kind is None:
                architecture = (getattr(config, "architectures", None) or [""])[0]
                model_class = getattr(transformers, architecture, None) or transformers.AutoModel
            else:
                model_class = {
                    "causal-lm": transformers.AutoModelForCausalLM,
                    "classifier": transformers.AutoModelForSequenceClassification,
                    "encoder": transformers.AutoModelForMaskedLM if masked_lm else _bare_model(transformers, config),
                }[kind]
            major, minor = (int(part) for part in transformers.__version__.split(".")[:2])
            dtype_argument = "dtype" if (major, minor) >= (4, 56) else "torch_dtype"  # renamed in 4.56
            model, info = model_class.from_pretrained(folder, local_files_only=True, output_loading_info=True,
                                                      **{dtype_argument: torch.float32})
    except Exception as error:  # noqa: BLE001 - transformers raises many types for a model it cannot load
        what = f" as {'an' if kind[0] in 'aeiou' else 'a'} {kind}" if kind else ""
        hint = "; `--kind weights` compares its weights alone" if kind else ""
        raise InputError(f"{label}: transformers cannot load it{what}: {first_line(error)}{hint}") from None
    missing = [key for key in info.get("missing_keys", []) if not key.endswith("position_ids")]
    if (require_all_weights and missing) or (require_most_weights and 2 * len(missing) > len(model.state_dict())):
        shown = ", ".join(sorted(missing)[:3]) + (", ..." if len(missing) > 3 else "")
        of = f" of the {len(model.state_dict())}" if not require_all_weights else ""
        raise InputError(f"{label}: {len(missing)}{of} weights the {kind or 'model'} needs are missing from its files ({shown})")
    return model.eval()


def load_tokenizer(folder: str | Path, label: str | None = None) -> Any:
    import transformers

    try:
        with quiet_transformers():
            tokenizer = transformers.AutoTokenizer.from_pretrained(Path(folder), local_files_only=True)
    except Exception as error:  # noqa: BLE001 - transformers raises many types for an unreadable tokenizer
        raise InputError(f"{label or folder}: cannot load its tokenizer: {first_line(error)}") from None
    if len(tokenizer) < 2:  # transformers makes an empty one where the folder has no tokenizer files: every text 0 tokens
        raise InputError(f"{label or folder}: no tokenizer in the folder (tokenizer.json, or the vocabulary files its config names)")
    return tokenizer
