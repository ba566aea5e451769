"""What a stored model is: its name, revision and variant, its files and the objects that hold
them, as one manifest (a JSON object; docs/STORE.md specifies it), and the rules for the names."""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import re
import sqlite3
import urllib.parse
from collections.abc import Iterable
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zoo.errors import InputError, ZooError
from zoo.sources.segments import is_utf8

LOSSLESS = "lossless"
DEFAULT_REVISION = "main"
LFS_MIN_BYTES = 10 << 20  # the Hub keeps files this large in LFS whatever their type
# The Hub's own rule for repo ids, so that every stored name can also be served.
NAME_PATTERN = re.compile(r"(?:[A-Za-z0-9](?:[\w.-]{0,94}[A-Za-z0-9])?/)?[A-Za-z0-9](?:[\w.-]{0,94}[A-Za-z0-9])?", re.ASCII)
_REVISION = re.compile(r"[\w.-]+(?:/[\w.-]+)*", re.ASCII)
# How to name a model whose own name the zoo refuses. --name names one model: with several SOURCEs
# or repositories it is refused, and "(choose one with --name)" led there.
_CHOOSE = "(choose another with --name, compressing or pulling this model on its own)"


class Damage(str):
    """A line of `zoo doctor`'s findings that it could not repair: a model cannot be read until
    someone acts (the CLI exits 1 on any)."""


def check_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name) or "--" in name or ".." in name or name.endswith(".git"):
        parts = name.split("/") if isinstance(name, str) else []
        if any(len(part) > 96 for part in parts) and NAME_PATTERN.fullmatch("/".join(part[:96] for part in parts)):
            raise InputError(f"'{name[:40]}'... is not a usable model name: 96 characters at most before and after its '/' {_CHOOSE}")
        # quoted, not repr'd: the CLI escapes a name's control characters and bytes that are not UTF-8
        # (\xe9), where repr had written the surrogate that holds such a byte (\udce9)
        shown = f"'{name}'" if isinstance(name, str) else repr(name)
        raise InputError(f"{shown} is not a usable model name: use 'name' or 'org/name' with letters, digits, '-', '_' or '.' {_CHOOSE}")
    return name


def check_revision(revision: str) -> str:
    if not isinstance(revision, str) or not _REVISION.fullmatch(revision) or ".." in revision:
        raise InputError(f"{revision!r} is not a usable revision name")
    return revision


def size_ratio(stored: int, original: int) -> float:
    """Stored bytes over original bytes; infinite for bytes stored of nothing (an empty file's
    archive), where 1.0 said it cost nothing."""
    if original:
        return stored / original
    return math.inf if stored else 1.0


def variant_of(pipeline_spec: str) -> str:
    """A short label for a pipeline: 'lossless' for the default, else its stages without unset
    parameters and without the default leaf stages ('truncate:bits=6')."""
    from zoo.codecs.pipeline import DEFAULT_SPEC, Pipeline, stage_spec

    pipeline, default = Pipeline.parse(pipeline_spec), Pipeline.parse(DEFAULT_SPEC)
    if pipeline == default:
        return LOSSLESS
    leaf_stages = (pipeline.grouping, *pipeline.bytes_stages)
    stages = pipeline.array_stages + (() if leaf_stages == (default.grouping, *default.bytes_stages) else leaf_stages)
    return "|".join(stage_spec(stage.get_config()) for stage in stages)  # values quoted as spec() quotes them: it parses back


def parse_ref(ref: str) -> tuple[str, str | None, str | None]:
    """NAME[@REVISION][:VARIANT] -> (name, revision, variant). Git refs cannot hold ':', names neither."""
    head, colon, variant = ref.partition(":")
    name, at, revision = head.partition("@")
    return name, (revision if at else None), (variant if colon else None)


def lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def git_blob_hasher(content_size: int) -> Any:
    """A sha1 primed the way git primes a blob's id; feed it the content to get the id."""
    return hashlib.sha1(f"blob {content_size}\0".encode())


@dataclass
class StoredFile:
    path: str
    size: int
    sha256: str  # of the original bytes
    served_sha256: str  # of the bytes the archive decodes to (the same when lossless)
    git_oid: str
    lfs: bool
    lossless: bool

    @property
    def pointer_size(self) -> int:
        return len(lfs_pointer(self.served_sha256, self.size))


@dataclass
class Entry:
    name: str
    revision: str
    variant: str
    commit: str
    archive: Path
    pipeline: str
    source: str | None
    original_bytes: int
    stored_bytes: int
    created: float
    quality: dict[str, Any] | None = None
    files: list[StoredFile] = field(default_factory=list)
    adds_bytes: int | None = None  # what it adds to the zoo: the bytes of the objects no other model names
    base: dict[str, Any] | None = None  # {"ref", "tensors", "needs", "commits"}: the model its tensors are stored as XORs against

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.revision}:{self.variant}"

    @property
    def ratio(self) -> float:
        return size_ratio(self.stored_bytes, self.original_bytes)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "revision": self.revision, "variant": self.variant, "commit": self.commit,
            "archive": str(self.archive), "pipeline": self.pipeline, "source": self.source,
            "original_bytes": self.original_bytes, "stored_bytes": self.stored_bytes, "ratio": self.ratio,
            "created": self.created, "quality": self.quality, "adds_bytes": self.adds_bytes, "base": self.base,
        }


MANIFEST_VERSION = 1
OBJECT_SUFFIX = ".zoo"
_SHA256 = re.compile(r"[0-9a-f]{64}")
_FILE_FIELDS = (("path", str), ("size", int), ("sha256", str), ("served_sha256", str), ("git_oid", str), ("lfs", bool),
                ("lossless", bool))
LEGACY_NAME = re.compile(r"(?P<name>.+)-[0-9a-f]{12}\.zoo")  # archives/NAME-RANDOM.zoo, '/' written '--'


def manifest_component(text: str) -> str:
    """One path component for a name, revision or variant: percent-encoded, never hidden or '.',
    never longer than a file system allows (the manifest itself holds the real text)."""
    quoted = urllib.parse.quote(text, safe="")
    if quoted.startswith("."):
        quoted = "%2E" + quoted[1:]
    if len(quoted) > 200:
        quoted = quoted[:120] + "~" + hashlib.sha256(text.encode()).hexdigest()[:32]
    return quoted


def file_record(stored: StoredFile) -> dict[str, Any]:
    return {"path": stored.path, "size": stored.size, "sha256": stored.sha256, "served_sha256": stored.served_sha256,
            "git_oid": stored.git_oid, "lfs": stored.lfs, "lossless": stored.lossless}


def record_names(record: dict[str, Any]) -> list[str]:
    """The names a manifest record holds as text in the index: its files' paths and its source."""
    return [*(item["path"] for item in record["files"]), record.get("source") or ""]


def first_not_utf8(names: Iterable[str]) -> str | None:
    """The first of `names` that is not UTF-8 (the index is SQLite text, UTF-8 only), as the user's
    shell would show its bytes: those that are not UTF-8 as \\xNN."""
    return next((repr(os.fsencode(name))[2:-1] for name in names if not is_utf8(name)), None)


def refuse_names_not_utf8(names: Iterable[str]) -> None:
    """Refuse what Store._publish would refuse of a model's names (its files' paths, its source),
    before the model is coded: the index cannot hold them."""
    odd = first_not_utf8(names)
    if odd is not None:
        raise InputError(f"{odd}: a name that is not UTF-8; the zoo holds UTF-8 names only (compress -o keeps it in an archive)")


def check_record(record: Any) -> dict[str, Any]:
    """A manifest as read from disk, or ValueError naming what is wrong with it."""
    if not isinstance(record, dict) or not (_count(record.get("manifest")) and record["manifest"] == MANIFEST_VERSION):
        raise ValueError(f"not a version-{MANIFEST_VERSION} zoo manifest")
    for key, kind in (("name", str), ("revision", str), ("variant", str), ("commit", str), ("pipeline", str), ("objects", list),
                      ("files", list), ("original_bytes", int), ("stored_bytes", int), ("created", float)):
        if not _is(record.get(key), kind):
            raise ValueError(f"{key!r} is missing or not a {'count' if kind is int else 'number' if kind is float else kind.__name__}")
    for item in record["objects"]:
        if not isinstance(item, dict) or item.get("role") not in ("archive", "object") or not _SHA256.fullmatch(str(item.get("sha256"))) \
                or not _count(item.get("size")):
            raise ValueError("it names an object without a role, sha256 or size")
    archives = [o for o in record["objects"] if isinstance(o, dict) and o.get("role") == "archive"]
    if len(archives) != 1 or not _SHA256.fullmatch(str(archives[0].get("sha256"))):
        raise ValueError("it names no archive object by sha256")
    for item in record["files"]:
        if not isinstance(item, dict) or any(not _is(item.get(key), kind) for key, kind in _FILE_FIELDS):
            raise ValueError("it lists a file without its path, size, hashes or flags")
    for key in ("source", "quality"):
        if record.get(key) is not None and not isinstance(record[key], str if key == "source" else dict):
            raise ValueError(f"{key!r} is not {'a str' if key == 'source' else 'an object'}")
    odd = first_not_utf8(record_names(record))
    if odd is not None:
        raise ValueError(f"{odd} is not a UTF-8 name, which the zoo's index cannot hold")
    base = record.get("base")
    if base is not None and not (isinstance(base, dict) and isinstance(base.get("ref"), str) and _count(base.get("tensors"))
                                 and (base.get("needs") is None or isinstance(base["needs"], list)
                                      and all(isinstance(ref, str) for ref in base["needs"]))):
        raise ValueError("'base' is not an object with its ref, tensors and needs")
    if base is not None and base.get("commits") is not None and not (
            isinstance(base["commits"], dict) and all(isinstance(value, str) for value in base["commits"].values())):
        raise ValueError("'base' has commits that are not an object of commits by ref")
    return record


def _count(value: Any) -> bool:
    """A JSON integer of at least 0: not true (Python's 1), not 1.0."""
    return type(value) is int and value >= 0


def _is(value: Any, kind: type) -> bool:
    """`value` is of the JSON kind a manifest field takes: int a count, float any finite number, bool
    true or false only."""
    if kind is int:
        return _count(value)
    if kind is float:
        return type(value) in (int, float) and math.isfinite(value)
    return type(value) is kind if kind is bool else isinstance(value, kind)


def describe_files(archive_path: Path, objects_root: Path | None = None) -> tuple[dict[str, Any], list[StoredFile]]:
    """The archive's metadata and, per file, the hashes the catalogue keeps. Files that decoding
    does not give back bit for bit, and small files (whose git id hashes their content), are
    decoded once here so that serving never has to hash them."""
    from zoo.container.reader import Archive

    described = []
    with Archive(archive_path, objects_root=objects_root) as archive:
        for entry in archive.files():
            lossless = bool(entry.get("lossless"))
            lfs = entry["kind"] != "blob" or entry["size"] >= LFS_MIN_BYTES
            served, oid = (entry["sha256"] if lossless else None), None
            if not lossless or not lfs:
                sha256, sha1 = hashlib.sha256(), git_blob_hasher(entry["size"])
                for piece in archive.iter_file(entry["path"]):
                    sha256.update(piece)
                    sha1.update(piece)
                served, oid = sha256.hexdigest(), sha1.hexdigest()
            if lfs:  # git stores the pointer, so the git id is the pointer's
                pointer = lfs_pointer(served, entry["size"])
                hasher = git_blob_hasher(len(pointer))
                hasher.update(pointer)
                oid = hasher.hexdigest()
            described.append(StoredFile(entry["path"], entry["size"], entry["sha256"], served, oid, lfs, lossless))
        return archive.metadata(), described


def record_of(metadata: dict[str, Any], files: list[StoredFile], name: str, revision: str, commit: str | None, source: str | None,
              created: float) -> dict[str, Any]:
    """A manifest, less its objects: everything an archive's header and its caller say of it."""
    pipeline = str(metadata.get("pipeline", ""))
    variant = variant_of(pipeline) if pipeline else LOSSLESS
    if variant != LOSSLESS or not (commit and re.fullmatch(r"[0-9a-f]{40}", commit)):
        # A lossy variant is other content than upstream's commit: give it a commit of its own.
        commit = derived_commit(name, revision, variant, files)
    quality = next((metadata[key] for key in ("quality", "verify") if isinstance(metadata.get(key), dict)), None)  # older archives: "verify"
    record = {"manifest": MANIFEST_VERSION, "name": name, "revision": revision, "variant": variant, "commit": commit, "pipeline": pipeline,
              "source": source, "original_bytes": sum(f.size for f in files), "stored_bytes": 0, "created": created, "quality": quality,
              "objects": [], "files": [file_record(f) for f in files]}
    base = (metadata.get("zoo") or {}).get("base") if isinstance(metadata.get("zoo"), dict) else None
    if isinstance(base, dict) and isinstance(base.get("ref"), str):
        # the model its tensors are stored as XORs against, and every model whose tensors they are against
        record["base"] = {"ref": base["ref"], "tensors": base.get("tensors"), "needs": base.get("needs") or [base["ref"]]}
        if isinstance(base.get("commits"), dict):
            record["base"]["commits"] = {ref: commit for ref, commit in base["commits"].items() if isinstance(commit, str)}
    return record


def stored_against(base: dict[str, Any] | None, ref: str, commit: str) -> bool:
    """Whether a model whose manifest says `base` was stored against the model `ref` is now, at
    `commit`: that is, needs it (`ref` is its base or one its base needs) and was stored against
    this very model, not one the name held before it was replaced (compress --force) or removed
    and stored again. Manifests older than the commits held only the refs: those count."""
    if not isinstance(base, dict) or ref not in (base.get("needs") or [base.get("ref")]):
        return False
    pinned = (base.get("commits") or {}).get(ref)
    return pinned is None or pinned == commit


def base_standing(base: dict[str, Any], commits: dict[str, str]) -> str:
    """'' while the model `base` names is the one it was stored against, else 'since replaced' or
    'since removed' (`commits`: the commit of every model in the zoo, by ref). Its tensors are
    whole either way: the objects its XORs need are its own to name."""
    current = commits.get(base["ref"])
    if current is None:
        return "since removed"
    return "" if stored_against(base, base["ref"], current) else "since replaced"


def legacy_records(path: Path) -> dict[str, dict[str, Any]]:
    """The old catalogue's rows by archive file name, as manifest records; {} when it is missing or damaged."""
    from zoo.hub.catalogue import file_uri

    rows: dict[str, dict[str, Any]] = {}
    try:
        with closing(sqlite3.connect(file_uri(path, "ro"), uri=True)) as connection:
            connection.row_factory = sqlite3.Row
            for row in connection.execute("SELECT * FROM models").fetchall():
                files = [{"path": f["path"], "size": f["size"], "sha256": f["sha256"], "served_sha256": f["served_sha256"],
                          "git_oid": f["git_oid"], "lfs": bool(f["lfs"]), "lossless": bool(f["lossless"])}
                         for f in connection.execute("SELECT * FROM files WHERE model_id = ? ORDER BY rowid", (row["id"],))]
                rows[row["archive"]] = {
                    "manifest": MANIFEST_VERSION, "name": row["name"], "revision": row["revision"], "variant": row["variant"],
                    "commit": row["commit_sha"], "pipeline": row["pipeline"], "source": row["source"],
                    "original_bytes": row["original_bytes"], "stored_bytes": row["stored_bytes"], "created": row["created"],
                    "quality": json.loads(row["quality"]) if row["quality"] else None, "objects": [], "files": files,
                }
    except (sqlite3.Error, OSError, ValueError, IndexError, KeyError):
        return {}
    return rows


def bit_exact(entry: Entry) -> bool:
    """Whether an entry's pipeline loses nothing: the default one (variant 'lossless') or another
    lossless one (`-p zstd`), whose files come back bit for bit all the same."""
    return entry.variant == LOSSLESS or _lossless_spec(entry.pipeline)


@functools.lru_cache(maxsize=256)
def _lossless_spec(spec: str) -> bool:
    from zoo.codecs.pipeline import Pipeline

    try:
        return Pipeline.parse(spec).lossless
    except (ZooError, ValueError, TypeError):  # a codec this zoo lacks: not known to be lossless
        return False


def quality_label(entry: Entry) -> str:
    """What `zoo ls` shows of an entry's quality: the evaluator's figures when it left some,
    'bit-exact' for a lossless variant (every file is checked against its sha256), else ''."""
    quality = entry.quality or {}
    figures = [f"{key} {value:.4g}" for key, value in quality.items() if isinstance(value, (int, float)) and not isinstance(value, bool)]
    if isinstance(quality.get("summary"), str):  # zoo.evaluate writes one line meant for listings
        label = quality["summary"]
    elif not quality and bit_exact(entry) and all(f.lossless for f in entry.files):
        label = "bit-exact"
    else:
        label = " ".join(figures) or str(quality.get("kind", ""))
    if quality.get("passed") is False:
        label += " (failed)"
    return label


@functools.lru_cache(maxsize=256)
def canonical_variant(label: str) -> str:
    """A variant, or a spec as the user typed it, as variant_of writes it now: `l2:target_ratio=8`
    is `l2:target_ratio=8.0,tune=0`, also where a zoo stored it before float parameters given as
    integers were written as floats. Text that is no spec zoo can read stays as it is."""
    if label == LOSSLESS:
        return label
    try:
        return variant_of(label)
    except (ZooError, ValueError, TypeError):
        return label


def variant_match(wanted: str, entry: Entry) -> bool:
    """Whether a ref's VARIANT names `entry`: its stored label, its full pipeline, or a spec as the
    user typed it (`l2:target_ratio=10` for the stored `l2:target_ratio=10.0,tune=0`)."""
    return wanted in (entry.variant, entry.pipeline) or canonical_variant(wanted) == canonical_variant(entry.variant)


def readable(found: list[Entry], ref: str, has_main: bool) -> list[Entry]:
    """Of the entries a ref matches (Store.matches), those a command that reads a model takes it
    to mean: without a revision, those at main where the model has any (`has_main`: another
    revision is never taken in main's place, for NAME:VARIANT either); less the lossy variants
    where the ref names no variant (nor a lossy variant's commit). A model stored only lossy is
    then no model by its bare name: its reader (a script on `zoo serve` among them) must name a
    variant, and never gets quantized weights it did not ask for. A variant of another lossless
    pipeline is the model itself, bit for bit (after the default one, Store.matches's order)."""
    _, revision, variant = parse_ref(ref)
    if revision is None and has_main:
        found = [e for e in found if e.revision == DEFAULT_REVISION]
    if variant is None and not any(e.commit == revision and not bit_exact(e) for e in found):
        return [e for e in found if bit_exact(e)]
    return found


def derived_commit(name: str, revision: str, variant: str, files: list[StoredFile]) -> str:
    digest = hashlib.sha1(json.dumps([name, revision, variant, [(f.path, f.served_sha256) for f in files]]).encode())
    return digest.hexdigest()


def human_size(size: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return str(size)


def needs_damaged(ref: str, objects: set[str]) -> list[str]:
    """verify's line for a model that needs damaged objects (each said on a line of its own):
    which models a damaged object costs, as the repair's refusal (zoo.container.objects) promises."""
    if not objects:
        return []
    shown = ", ".join(sorted(name[:16] + "..." for name in objects))
    return [f"{ref}: cannot be read whole: it needs the damaged object{'s' if len(objects) > 1 else ''} {shown}"]
