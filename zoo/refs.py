"""The one place where what a user typed, a path or a zoo name (NAME[@REVISION][:VARIANT]), becomes
a file. Entry points (zoo.api, zoo.evaluate, the CLI) call it; the archive reader and the codecs
never consult the zoo."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from zoo.container.base_model import BaseModel
from zoo.errors import InputError

# A hub id: ORG/NAME, letters, digits and -_. only, optionally @REVISION; never a path.
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*(@[\w./-]+)?")


def looks_like_path(text: str) -> bool:
    """Whether `text` can only be meant as a local path: it starts with `./`, `../`, `/` or `~`,
    ends in a file suffix zoo reads, or has no hub-id shape (ORG/NAME[@REVISION])."""
    if text.startswith(("./", "../", "/", "~")) or text in (".", ".."):
        return True
    if Path(text).suffix.lower() in (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".zoo", ".gguf", ".onnx"):
        return True
    return _HUB_ID.fullmatch(text) is None  # one `/` before any `@`: a revision may hold more (refs/pr/1)


# Folder (and file) names that say nothing about the model inside: such a folder is stored under
# the name the model carries, where it carries one.
_GENERIC = {"model", "models", "weights", "checkpoint", "checkpoints", "snapshot", "files", "hf", "output", "out", "final", "pytorch_model"}
_SNAPSHOT = re.compile(r"[0-9a-f]{40}")
_MODEL_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")  # of a file whose name says nothing: `model.bin`


def model_name(path: str | os.PathLike[str]) -> tuple[str, str]:
    """The name a local model is stored under when none is given, and where it came from: the
    folder's (or file's) own name, unless that is generic (`model`, `pytorch_model.bin`, a cache
    snapshot's commit); then config.json's `_name_or_path`, else the ORG/NAME of a Hugging Face
    cache folder (models--ORG--NAME/snapshots/COMMIT), else the nearest folder with a telling name:
    a file's own folder first. A file keeps its own name, not its link's target's (a cache
    snapshot's files are links to blobs named by their hash)."""
    import json

    given = Path(path)
    if given.is_file():
        folder = given.parent.resolve()
        own = given.name.removesuffix(".safetensors") or given.name
        stem = next((given.name.removesuffix(suffix) for suffix in _MODEL_SUFFIXES if given.name.endswith(suffix)), given.name)
        telling = (folder, *folder.parents)
    else:
        folder = given.resolve()
        own = stem = folder.name
        telling = folder.parents
    if stem.lower() not in _GENERIC and not _SNAPSHOT.fullmatch(stem):
        return own, "its own name"
    try:
        named = json.loads((folder / "config.json").read_text(encoding="utf-8")).get("_name_or_path")
    except (OSError, ValueError, AttributeError):
        named = None
    if isinstance(named, str) and named.strip("/ "):
        candidate = named.strip() if _HUB_ID.fullmatch(named.strip()) else Path(named.strip()).name
        if candidate and candidate.lower() not in _GENERIC:
            return candidate, "config.json's _name_or_path"
    for parent in (folder, *folder.parents):
        if parent.parent.name == "snapshots" and parent.parent.parent.name.startswith("models--"):
            return parent.parent.parent.name.removeprefix("models--").replace("--", "/", 1), "its Hugging Face cache folder"
    for parent in telling:
        if parent.name and parent.name.lower() not in _GENERIC and not _SNAPSHOT.fullmatch(parent.name) and parent.name != "snapshots":
            return parent.name, "the folder it sits in"
    return own, "its own name"


# What a `base=` is, as check_path names it.
BASE_MODEL = "the base model (a safetensors file or folder, an archive or a zoo name)"


def check_path(value: Any, what: str) -> None:
    """A path or name the Python API was handed is a str or an os.PathLike: anything else (None,
    a number, a list, bytes) is said as such, not as a TypeError from deep inside."""
    if not isinstance(value, (str, os.PathLike)):
        raise InputError(f"{what} is a str or an os.PathLike path, not {type(value).__name__}")
    path = value.__fspath__() if isinstance(value, os.PathLike) else value
    if not isinstance(path, str):  # bytes, refused as a bytes path is: pathlib took it, and failed further on
        raise InputError(f"{what} is a str or an os.PathLike path, not {type(path).__name__} (from {type(value).__name__}.__fspath__)")


def find_archive(ref: str | os.PathLike[str], what: str = "the model to read (an archive or a zoo name)") -> Path | None:
    """The archive `ref` names: an existing path as it is, else a model in the zoo; None when neither.
    `what` is what the caller took it for, as a ref of the wrong type is said."""
    check_path(ref, what)
    if not os.fspath(ref):  # Path("") is the current folder
        raise InputError("no archive given: name a .zoo file or a model in the zoo")
    path = Path(ref)
    try:
        os.stat(path)
        exists = True
    except PermissionError:  # in a folder this user cannot enter: said so, not "no such file"
        raise InputError(f"{path}: permission denied (a folder on its way cannot be entered)") from None
    except (OSError, ValueError):  # a name longer than a file name may be (a long variant's ref): no such file
        exists = False
    if exists:
        return path
    from zoo.hub.store import resolve_archive  # the catalogue only when the path does not exist

    return resolve_archive(str(ref))


def archive_path(ref: str | os.PathLike[str]) -> Path:
    """Like find_archive, for a command that reads an archive: a folder that has the name of a
    model in the zoo gives way to the model (`zoo compress mymodel` names it after the folder,
    and `zoo info mymodel` beside the folder means the model), and a ref that names nothing is
    one clear error."""
    found = find_archive(ref)
    if found is not None and found.is_dir():
        from zoo.hub.store import resolve_archive

        found = resolve_archive(str(ref)) or found  # no such model: the folder, refused as no archive
    if found is None:
        raise InputError(not_found(ref))
    return found


def not_found(ref: str | os.PathLike[str]) -> str:
    """The message for a ref that names nothing, the same in every command. When the zoo holds the
    name under other revisions or variants, it lists them."""
    from zoo.hub.manifest import bit_exact
    from zoo.hub.store import NotAZooError, Store, parse_ref

    store = Store()
    name, revision, variant = parse_ref(str(ref))
    try:
        stored = store.entries(name)
    except NotAZooError:  # what is wrong is the path first: the folder is said to be no zoo, not blamed alone
        return f"{ref}: no such file (and {store.location} is no zoo to hold a model of that name)"
    there = [e for e in stored if e.revision == (revision or "main") or e.commit == revision]
    if there and variant is None and not any(bit_exact(e) for e in there):
        listed = ", ".join(e.ref for e in there[:8]) + (f" and {len(there) - 8} more" if len(there) > 8 else "")
        return f"{ref}: the zoo at {store.location} holds {name}@{revision or 'main'} only as lossy variants ({listed}): name one, as NAME:VARIANT"
    if stored:
        listed = ", ".join(e.ref for e in stored[:8]) + (f" and {len(stored) - 8} more" if len(stored) > 8 else "")
        return f"{ref}: no such file, and no such revision or variant in the zoo at {store.location}, which holds {listed} (see `zoo ls`)"
    return f"{ref}: no such file, and no model of that name in the zoo at {store.location} (see `zoo ls`)"


def zoo_entry(ref: str) -> Any:
    """The zoo.hub.store.Entry a zoo name resolves to (the best of its matches); one clear error,
    not_found's, when it names nothing."""
    from zoo.hub.store import Store, require_archive

    if not ref:
        raise InputError("no model given: name a model in the zoo (see `zoo ls`)")
    store = Store()
    found = store.readable(ref)
    if not found:
        raise InputError(not_found(ref))
    require_archive(store, found[0])  # its archive here (fetched from a bucket), or said missing
    return found[0]


def open_base(ref: BaseModel | str | os.PathLike[str]) -> BaseModel:
    """The base model a `--base` names: a safetensors file or folder, an archive, or a zoo name."""
    if isinstance(ref, BaseModel):
        return ref
    path = find_archive(ref, BASE_MODEL)  # a ref of the wrong type said of the base, not of the archive that needs it
    if path is None:
        from zoo.hub.store import NotAZooError, Store

        store = Store()
        try:
            store.exists()
        except NotAZooError:  # the folder is said to be no zoo, as not_found says it
            raise InputError(f"base {ref}: no such file or folder (and {store.location} is no zoo to hold a model of that name)") from None
        raise InputError(f"base {ref}: no such file, folder or model in the zoo")
    return BaseModel(path, hint=str(ref))
