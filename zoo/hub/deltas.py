"""Tensors stored as their bitwise XOR against a base model's tensor of the same name, dtype and
shape, when that codes smaller: how a fine-tune or a later checkpoint costs little more than what
changed. Lossless: the tensor is the XOR of the two, bit for bit (docs/STORE.md).

The base is named (`--base NAME`), or found: config.json's `_name_or_path`, the model card's
`base_model`, or the stored lossless model that holds most of the new model's tensor names.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from zoo.codecs.pipeline import CHUNK_BYTES, Pipeline
from zoo.container.format import MAX_XOR_DEPTH, ArchiveFile, assemble, content_digest, object_path
from zoo.container.objects import ObjectSink, encode_object, object_names, read_object_header
from zoo.container.reader import Archive, xor_dtype
from zoo.dtypes import DTYPES
from zoo.errors import InputError, MissingObjectError, ZooError
from zoo.hub.manifest import LOSSLESS, Entry, bit_exact, parse_ref
from zoo.kernels.parallel import for_each

# A stored model is taken for the base, when none is named, only if it holds at least this share
# of the new model's tensors under the same name, dtype and shape.
MIN_SHARED_NAMES = 0.5


@dataclass
class DeltaReport:
    base: str  # the base's ref
    tensors: int  # tensors stored as an XOR against it
    saved: int  # bytes the XOR saved against coding them whole


def delta_key(target: str, base: str) -> str:
    """The name of the object holding tensor `target` (a content key) XOR tensor `base`."""
    return hashlib.sha256(json.dumps(["zoo-xor-1", target, base]).encode()).hexdigest()


def _candidates_by_name(archive: Archive) -> dict[str, list[tuple[str, dict[str, Any]]]]:
    """Lossless tensors whose bytes are addressable (a content key), by name, each name's in
    archive order: [(key in the archive, info)]. A model may hold a name in several files
    (model.safetensors beside model.fp16.safetensors, a run's checkpoint-N/ folders)."""
    found: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for key in archive.keys():
        info = archive.tensor_info(key)
        if isinstance(info.get("key"), str) and "view" not in info and "base" not in info:
            found.setdefault(info["name"], []).append((key, info))
    return found


def _tensors_by_name(archive: Archive) -> dict[str, tuple[str, dict[str, Any]]]:
    """The first of each name's _candidates_by_name."""
    return {name: candidates[0] for name, candidates in _candidates_by_name(archive).items()}


def _base_for(info: dict[str, Any], candidates: list[tuple[str, dict[str, Any]]]) -> tuple[str, dict[str, Any]] | None:
    """Of the base's tensors of `info`'s name, the one in the file of the same path, dtype and shape,
    else the first of its dtype and shape: the first of the name alone stored the F32 copy of a
    model that also holds an F16 one whole, the F16 file coming first."""
    same = [candidate for candidate in candidates if (candidate[1]["dtype"], candidate[1]["shape"]) == (info["dtype"], info["shape"])]
    return next((candidate for candidate in same if candidate[1].get("file") == info.get("file")), same[0] if same else None)


def _named_bases(source: Path) -> list[str]:
    """What the source says it was made from: config.json's `_name_or_path`, the model card's `base_model`."""
    folder = source if source.is_dir() else source.parent
    names = []
    try:
        named = json.loads((folder / "config.json").read_text(encoding="utf-8")).get("_name_or_path")
        if isinstance(named, str) and named.strip():
            names.append(named.strip())
    except (OSError, ValueError, AttributeError):
        pass
    try:
        card = (folder / "README.md").read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        card = ""
    # YAML front matter: `base_model: org/name`, `base_model: [a, b]`, or a list of `- org/name`
    # lines, indented or not (the Hub's own form); CRLF line ends too
    front = re.match(r"---[ \t]*\n(.*?)\n---", card.replace("\r\n", "\n"), re.S)
    if front:
        block = re.search(r"^base_model:[ \t]*(.*)$((?:\n[ \t]*-[ \t]*.*)*)", front.group(1), re.M)
        if block:
            inline = block.group(1).strip()
            given = inline[1:-1].split(",") if inline.startswith("[") and inline.endswith("]") else [inline]
            given += re.findall(r"^[ \t]*-[ \t]*(.*)$", block.group(2), re.M)
            names += [name for name in (item.strip().strip("'\"").strip() for item in given) if name]
    return names


def find_base(store: Any, source: Path, shell: Archive, replacing: str | None, among: set[str] | None = None) -> Entry | None:
    """The stored lossless model to store `shell`'s tensors against, or None; only one of the refs
    `among`, when given (zoo.batch: the models the zoo held when the batch began). Never a variant
    of the NAME@REVISION being stored: one made from the same weights shares its objects anyway,
    and one made from others is what a --force leaves behind, which zoo warns of and `zoo rm`
    should be free to remove. Nor a model stored against one (its chain needs it): the model
    stored now would need what needs it, and `zoo rm` could remove neither."""
    storing = shell.metadata().get("zoo") or {}
    sibling = (storing.get("name"), storing.get("revision"))
    candidates = [e for e in store.entries() if bit_exact(e) and e.ref != replacing and (e.name, e.revision) != sibling
                  and not any(parse_ref(need)[:2] == sibling for need in needs(e))
                  and (among is None or e.ref in among) and store.is_composed(e)]  # last: it opens the archive
    for named in _named_bases(source):
        for wanted in (named, Path(named).name):
            found = [e for e in candidates if e.name == wanted]
            if found:
                return sorted(found, key=lambda e: (e.revision != "main", e.variant != LOSSLESS, -e.created))[0]
    ours = {name: shape for name, shape in ((info["name"], (info["dtype"], info["shape"])) for _, info in _tensors_by_name(shell).values())}
    if not ours:
        return None
    best, best_count = None, 0
    for entry in candidates:
        try:
            with Archive(entry.archive) as opened:
                theirs = {info["name"]: (info["dtype"], info["shape"]) for _, info in _tensors_by_name(opened).values()}
        except ZooError:
            continue
        count = sum(1 for name, kind in ours.items() if theirs.get(name) == kind)
        # ties: the default lossless variant, then the newest
        if count > best_count or (count == best_count and best is not None and count
                                  and (entry.variant == LOSSLESS, entry.created) > (best.variant == LOSSLESS, best.created)):
            best, best_count = entry, count
    return best if best is not None and best_count >= MIN_SHARED_NAMES * len(ours) else None


def resolve_base(store: Any, ref: str, storing: str | None = None) -> Entry:
    """The zoo model `--base` names, for a lossless pipeline: it must be a stored lossless model,
    neither `storing` (the ref being stored) nor one whose chain of bases needs it."""
    found = [e for e in store.matches(ref) if bit_exact(e)]
    if not found:
        raise InputError(f"--base {ref}: no lossless model of that name in the zoo at {store.location}; the zoo stores tensors as "
                         "differences from a model it holds (store the base first)")
    if not store.is_composed(found[0]):
        raise InputError(f"--base {ref}: stored by an older zoo as one archive; store it again to use it as a base")
    if found[0].ref == storing:
        raise InputError(f"--base {ref}: that is {storing}, the model being stored; a model cannot be stored against itself")
    if storing in needs(found[0]):
        raise InputError(f"--base {ref}: {found[0].ref} needs {storing}, the model being stored, as a base; stored against it in turn, "
                         "each would need the other")
    return found[0]


def store_as_deltas(shell_path: Path, sink: ObjectSink, base: Entry, existing: Any, threads: int,
                    chunk_bytes: int = CHUNK_BYTES) -> DeltaReport:
    """Recode `shell_path`'s newly coded tensors as XORs against `base`'s tensors of the same
    name, dtype and shape where that is smaller; rewrites the shell's header. `existing(name)` is
    the zoo's object of that name, or None."""
    with Archive(shell_path, objects_root=sink.root) as ours, Archive(base.archive) as theirs:
        header = json.loads(json.dumps(ours.header()))
        base_tensors = _candidates_by_name(theirs)
        groups: dict[str, list[str]] = {}  # content key -> our tensors holding it
        against: dict[str, tuple[str, dict[str, Any]]] = {}  # our tensor -> the base's it is stored against
        for key in ours.keys():
            info = header["tensors"][key]
            root = info.get("root") or {}
            found = _base_for(info, base_tensors.get(info.get("name"), []))
            if not isinstance(info.get("key"), str) or "leaf" not in root or info["key"] not in sink.written or found is None:
                continue
            if DTYPES[info["dtype"]].storage is None:  # F4, stored as its bytes: no XOR of it can be read (Archive._check_xor)
                continue
            if info["key"] in sink.repairs:  # coded again in place of the zoo's damaged object: kept, it mends the models naming it
                continue
            base_info = found[1]
            if base_info["key"] == info["key"] and "xor" not in base_info:  # the zoo holds it whole: reused, not coded
                continue
            groups.setdefault(info["key"], []).append(key)
            against[key] = found
        decided: dict[str, tuple[dict[str, Any], int]] = {}

        def recode(target: str) -> None:
            first = header["tensors"][groups[target][0]]
            base_key, base_info = against[groups[target][0]]
            if base_info["key"] == target:
                # The base holds these very bytes, stored as XORs against its own base: the zoo has no
                # whole object of them, so this build coded one. Name what the base names instead.
                same = _chain(base_info)
                for needed in object_names({"tensors": {"t": {"xor": same}}}):
                    if not sink.link(needed):
                        raise MissingObjectError(f"its object {needed[:16]}... is missing from the zoo, or damaged")
                decided[target] = (same, sink.written[target] - sink.reused[_bottom_key(same)])
                return
            level = {k: base_info[k] for k in ("pipeline", "root", "xor") if k in base_info}
            while _depth(level) > MAX_XOR_DEPTH:  # never chain deeper: take the tensor at the bottom
                while "xor" in level:
                    level = level["xor"]
            name = delta_key(target, base_info["key"] if level.get("root") == base_info["root"] else _bottom_key(level))
            whole = sink.written[target]
            pipeline = Pipeline.from_configs(first["pipeline"])
            # none in the zoo, or one damaged there (link refuses it): coded here, and put in the damaged
            # one's place when it comes out the same (ObjectSink.finish), mending the models naming it
            if existing(name) is None or not sink.link(name):
                words = ours.read_tensor(groups[target][0]).data.reshape(-1).view(np.uint8)
                words = words if words.flags.writeable else words.copy()
                np.bitwise_xor(words, _level_bytes(theirs, base_key, level), out=words)
                # coded as unsigned integers: byte planes, whose high bytes are mostly zero, not as floats
                twin = xor_dtype(first["dtype"])
                about = {"lossless": True, "key": name, "dtype": twin, "shape": first["shape"],
                         "blake3": content_digest(words, threads), "xor_of": target}
                record = encode_object(sink, pipeline, twin, first["shape"], words, chunk_bytes, about, name)
                size = sink.written[name]
                if size >= whole:  # not smaller: keep the tensor whole
                    object_path(sink.root, name).unlink()
                    del sink.written[name]
                    return
            else:
                entry = read_object_header(object_path(sink.root, name))["tensors"]["tensor"]
                record = {"pipeline": entry["pipeline"], "root": {"leaf": {**entry["root"]["leaf"], "object": name}}}
                size = sink.reused[name]
            chain = _chain(level)
            for needed in object_names({"tensors": {"t": {"xor": chain}}}):
                if not sink.link(needed):  # the base's objects come along, so the new model owns all it names
                    # removed (`zoo rm` of the base while this model was coded) or damaged: build_model stores it whole
                    raise MissingObjectError(f"its object {needed[:16]}... is missing from the zoo, or damaged")
            decided[target] = ({"pipeline": record["pipeline"], "root": record["root"], "xor": chain}, whole - size)

        for_each(recode, list(groups), threads)
        for target, (stored, _) in decided.items():
            for key in groups[target]:
                header["tensors"][key].update(stored)
        still_named = object_names(header)  # a tensor of the same bytes under a name the base lacks keeps its object
        for target in decided:
            if target not in still_named:
                object_path(sink.root, target).unlink()
                del sink.written[target]
        if decided:
            header["features"] = sorted({*header.get("features", []), "xor"})
            if isinstance(header.get("metadata", {}).get("zoo"), dict):  # so that `zoo doctor` can restore the manifest whole
                header["metadata"]["zoo"]["base"] = {"ref": base.ref, "tensors": sum(len(groups[t]) for t in decided), "needs": needs(base),
                                                     "commits": commits(base)}
    held = ArchiveFile(shell_path)
    try:
        start = held.payload_start  # the small tensors and runs of bytes the archive holds itself
    finally:
        held.close()
    fresh = shell_path.with_name(shell_path.name + ".new")
    assemble(fresh, header, shell_path, start)
    fresh.replace(shell_path)
    return DeltaReport(base.ref, sum(len(groups[t]) for t in decided), sum(saved for _, saved in decided.values()))


def needs(base: Entry) -> list[str]:
    """The models that tensors stored as XORs against `base` are stored against, for `zoo rm`:
    `base`, and what it needs in turn (a chain cut at its depth limit ends on one of those). Not
    every model that names the chains' objects: every other model stored against the same base
    names them too, and was taken for a base of this one."""
    below = base.base or {}
    return sorted({base.ref, *(below.get("needs") or ([below["ref"]] if below.get("ref") else []))})


def commits(base: Entry) -> dict[str, str]:
    """The commit of each model needs(base) names, as the zoo holds it now: `zoo rm` and `zoo ls`
    tell by it a base since replaced under its name from the one these tensors were stored against."""
    below = (base.base or {}).get("commits") or {}
    return {**{ref: commit for ref, commit in below.items() if ref in needs(base)}, base.ref: base.commit}


def _depth(level: dict[str, Any]) -> int:
    depth = 0
    while "xor" in level:
        level, depth = level["xor"], depth + 1
    return depth + 1  # storing against `level` adds one


def _bottom_key(level: dict[str, Any]) -> str:
    """The content key of a tensor stored whole: its object's name."""
    return level["root"]["leaf"]["object"]


def _chain(level: dict[str, Any]) -> dict[str, Any]:
    chained = {"pipeline": level["pipeline"], "root": level["root"]}
    if "xor" in level:
        chained["xor"] = _chain(level["xor"])
    return chained


def _level_bytes(archive: Archive, key: str, level: dict[str, Any]) -> np.ndarray:
    """The raw bytes of base tensor `key` at `level` of its chain (the tensor itself, or its bottom)."""
    info = archive.tensor_info(key)
    if level.get("root") == info.get("root"):
        return archive.read_tensor(key).data.reshape(-1).view(np.uint8)
    return archive._xor_base(level, key, 1)  # noqa: SLF001 - the reader's own decoding of a chain level
