"""Archives whose tensors live in objects: what the zoo stores (docs/STORE.md, docs/FORMAT.md).

An *object* is a small archive (version 1, or 3 where its nodes need a feature) holding one
tensor (or one run of a file's bytes, as a tensor of its dtype) and no files. Coded without loss,
it is named by content_key(dtype, shape, BLAKE3 of the bytes), so every model holding those bytes
names the same object whatever coded it; coded with loss, by the sha256 of its own bytes. A model
is a version-3 archive whose leaves name objects (the header's "objects" feature) and whose own
payload holds only what is too small to be an object: its *shell*.

ObjectSink writes the objects of one build into a folder laid out as a zoo's objects/sha256, and
lets the build skip what `existing` (the zoo) or the build itself already holds.
"""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from zoo import __version__
from zoo.codecs.pipeline import CHUNK_BYTES
from zoo.container.format import (
    OUT_OF_DESCRIPTORS, ArchiveFile, PayloadWriter, assemble, content_digest, content_digest_1, content_key, object_path, put_header, sha256_file,
    write_archive,
)
from zoo.errors import FormatError, ZooError

OBJECT_TENSOR = "tensor"  # the key of the one tensor an object holds


def object_header(entry: dict[str, Any], about: dict[str, Any]) -> dict[str, Any]:
    """The header of an object holding `entry` (a tensor record: dtype, shape, pipeline, root)."""
    return {"format": "zoo", "created_by": f"zoo {__version__}", "metadata": {"object": about}, "files": [],
            "tensors": {OBJECT_TENSOR: entry}}


def read_object_header(path: Path) -> dict[str, Any]:
    opened = ArchiveFile(path)
    try:
        header = opened.header
    finally:
        opened.close()
    entry = (header.get("tensors") or {}).get(OBJECT_TENSOR)
    if not isinstance(entry, dict) or not isinstance(entry.get("root"), dict) or not isinstance(entry.get("pipeline"), list):
        raise FormatError(f"{path}: not a zoo object (no tensor {OBJECT_TENSOR!r})")
    return header


def with_object(node: Any, name: str) -> Any:
    """A copy of a root node whose every leaf names object `name`."""
    if isinstance(node, dict) and "leaf" in node:
        return {**node, "leaf": {**node["leaf"], "object": name}}
    if isinstance(node, dict):
        return {**node, "parts": {part: with_object(child, name) for part, child in (node.get("parts") or {}).items()}}
    return node


class Unit:
    """One object to be: a tensor record or a file's blob record (`holder`, whose "pipeline" and
    "root" or "leaf" the build fills in), and its content key when coded without loss."""

    def __init__(self, holder: dict[str, Any], key: str | None, about: dict[str, Any]) -> None:
        self.holder, self.key, self.about = holder, key, about


class ObjectPayload(PayloadWriter):
    """The payload of one object being coded: held in memory up to `limit` bytes, so the object is
    written once, header and all, when it ends; past the limit it goes to a file in `folder`, in
    front of which the header is then put (format.put_header, or a copy where that fails)."""

    LIMIT = 64 << 20

    def __init__(self, folder: Path) -> None:
        super().__init__(None)  # type: ignore[arg-type] - no stream until the payload spills
        self.folder, self.limit = folder, self.LIMIT
        self.parts: list[bytes] = []

    def write(self, data: bytes | memoryview) -> int:
        if self.stream is None and self.size + len(data) > self.limit:
            self.stream = tempfile.NamedTemporaryFile(dir=self.folder, prefix=".payload-", delete=False)  # noqa: SIM115 - closed by ObjectSink.finish
            for part in self.parts:
                self.stream.write(part)
            self.parts = []
        if self.stream is None:
            offset = self.size
            self.parts.append(bytes(data))  # kept until the object is written: never a view of a reused buffer (bytes: not copied)
            self.size += len(data)
            return offset
        return super().write(data)


class ObjectSink:
    """Where a build writes its objects: `root` (a folder laid out as objects/sha256). `existing(key)`
    gives the path of an object the zoo already holds, or None; such an object is hard-linked into
    `root` (copied where links fail), so the build owns every object it names until it is published."""

    hash_ahead = True  # the build may start each object's content digest before it asks for the unit

    def __init__(self, root: Path, existing: Callable[[str], Path | None] = lambda key: None, threads: int = 1) -> None:
        self.root = root
        self.threads = threads  # for hashing what the build meets
        self.existing = existing
        self.written: dict[str, int] = {}  # objects this build coded, and their sizes
        self.reused: dict[str, int] = {}  # objects it found, in the zoo or earlier in the build
        self._placeholders: list[tuple[dict[str, Any], str, bool]] = []
        self._pending: set[str] = set()
        self.damaged: dict[str, Path] = {}  # objects the zoo holds damaged, by name: coded again
        self.repairs: set[str] = set()  # those coded again into the same object: to replace the zoo's
        self._lock = threading.Lock()
        self._staged = itertools.count()

    # -- before coding ----------------------------------------------------------------------

    def unit(self, holder: dict[str, Any], dtype: str, shape: list[int], raw: Any, lossless: bool, blob: bool = False,
             digest: Callable[[], str] | None = None) -> Unit | None:
        """The unit to code `raw` into, or None when an object with these bytes exists already
        (in the zoo or earlier in this build): `holder` then names it once the build ends.
        `digest`: the content digest of `raw`, started earlier (format.content_digest_later)."""
        if not lossless:
            return Unit(holder, None, {"lossless": False})
        blake3 = digest() if digest is not None else content_digest(raw, self.threads)
        key = content_key(dtype, shape, blake3)
        if not blob:
            holder["key"] = key
        about = {"lossless": True, "key": key, "dtype": dtype, "shape": list(shape), "blake3": blake3}
        with self._lock:
            if key in self._pending or key in self.written or key in self.reused or self._link(key):
                self._placeholders.append((holder, key, blob))
                return None
            self._pending.add(key)
        return Unit(holder, key, about)

    def link(self, key: str) -> bool:
        """Take object `key` from the zoo into the build; False when the zoo lacks it."""
        with self._lock:
            return key in self.reused or self._link(key)

    def _link(self, key: str) -> bool:
        found = self.existing(key)
        if found is None:
            return False
        if checksum_problems(found):
            if not os.path.lexists(found):  # collected meanwhile (zoo rm, gc), not damaged: coded again
                return False
            # Damaged in the zoo: coded again by this build, which puts it in the damaged one's place
            # where it comes out as the same object (finish), so the models naming it are whole again.
            self.damaged[key] = found
            return False
        target = object_path(self.root, key)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(found, target)
        except FileExistsError:
            pass
        except FileNotFoundError:
            return False  # collected meanwhile: code it again
        except OSError:
            shutil.copyfile(found, target)
        self.reused[key] = target.stat().st_size
        return True

    # -- after coding -----------------------------------------------------------------------

    def payload(self) -> ObjectPayload:
        """A fresh payload for the next object."""
        self.root.mkdir(parents=True, exist_ok=True)
        return ObjectPayload(self.root)

    def finish(self, unit: Unit, payload: ObjectPayload) -> str:
        """Write the object `unit` was coded into `payload`; returns its name."""
        holder = unit.holder
        entry = ({"dtype": holder["leaf"]["dtype"], "shape": holder["leaf"]["shape"], "pipeline": holder["pipeline"],
                  "root": {"leaf": holder["leaf"]}} if "leaf" in holder else
                 {"dtype": holder["dtype"], "shape": holder["shape"], "pipeline": holder["pipeline"], "root": holder["root"]})
        header = object_header(entry, unit.about)
        staged = self.root / f".object-{next(self._staged)}"  # the build's own folder: a count is unique
        # not synced: the store syncs a build's objects together
        if payload.stream is None:
            write_archive(staged, header, payload.parts)
            payload.parts = []
        else:
            payload.stream.close()
            spilled = Path(payload.stream.name)
            try:
                if put_header(spilled, header, durable=False):
                    os.replace(spilled, staged)
                else:
                    assemble(staged, header, spilled, durable=False)
            finally:
                spilled.unlink(missing_ok=True)
        key = unit.key or sha256_file(staged)
        if key in self.damaged:
            self._check_repair(key, staged, header)
        final = object_path(self.root, key)
        final.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(staged, 0o444)
        os.replace(staged, final)
        with self._lock:
            self.written[key] = final.stat().st_size
            self._pending.discard(key)
        if "leaf" in holder:
            holder["leaf"]["object"] = key
        else:
            holder["root"] = with_object(holder["root"], key)
        return key

    def _check_repair(self, key: str, staged: Path, header: dict[str, Any]) -> None:
        """The object a damaged one of the zoo is to be replaced by must be that object: the same
        record of its tensor (pipeline, chunk indexes and their CRC-32s, which the shells of the
        models naming it copy). Else the damaged one stays, and the build is refused: it cannot
        name an object it cannot read. Its size is no test: a record pins its payload's layout (the
        index's CRC-32 holds every chunk's offset and length), and a file cut short or lengthened
        differs from it by its damage alone. A damaged one whose header cannot be read says nothing
        here; the store holds the new object to the record the models' shells keep of it, and to
        the size their manifests keep, before it takes the damaged one's place (Store._publish)."""
        damaged = self.damaged[key]
        if not os.path.lexists(damaged):  # collected since (zoo rm, gc): nothing to repair, the new object goes in as any does
            with self._lock:
                del self.damaged[key]
            return
        try:
            opened = ArchiveFile(damaged)
        except (ZooError, OSError) as error:
            _raise_a_limit(error)
            same = True  # no record of its own left to compare: the store's check decides
        else:
            try:
                same = opened.header.get("tensors") == header["tensors"]
            finally:
                opened.close()
        if not same:
            problem = next(iter(checksum_problems(damaged)), "its checksums do not hold")
            raise FormatError(f"{damaged}: an object of the zoo this model holds too is damaged ({problem}), and coded otherwise "
                              "than this build codes it, so it cannot be repaired from here; `zoo verify` names the models that need it")
        with self._lock:
            self.repairs.add(key)

    def resolve(self) -> None:
        """Name the objects the build found instead of coding: each placeholder takes the object's
        pipeline and leaves."""
        headers: dict[str, dict[str, Any]] = {}
        for holder, key, blob in self._placeholders:
            if key not in headers:
                headers[key] = read_object_header(object_path(self.root, key))["tensors"][OBJECT_TENSOR]
            entry = headers[key]
            holder["pipeline"] = entry["pipeline"]
            if blob:
                holder["leaf"] = {**entry["root"]["leaf"], "object": key}
            else:
                holder["root"] = with_object(entry["root"], key)

    def names(self) -> dict[str, int]:
        """Every object the build names, with its size."""
        return {**self.reused, **self.written}


def object_names(header: dict[str, Any]) -> set[str]:
    """Every object a header's leaves name, XOR levels included."""
    names: set[str] = set()

    def visit(node: Any) -> None:
        if isinstance(node, dict) and "leaf" in node:
            if isinstance(node["leaf"], dict) and isinstance(node["leaf"].get("object"), str):
                names.add(node["leaf"]["object"])
        elif isinstance(node, dict):
            for child in (node.get("parts") or {}).values():
                visit(child)

    for info in (header.get("tensors") or {}).values():
        level = info
        while isinstance(level, dict):
            visit(level.get("root"))
            level = level.get("xor")
    for entry in header.get("files") or []:
        for segment in entry.get("segments") or []:
            if isinstance(segment, dict) and isinstance(segment.get("blob"), dict):
                visit({"leaf": segment["blob"].get("leaf")})
    return names


def _records_naming(header: dict[str, Any], name: str) -> Iterator[tuple[dict[str, Any], bool]]:
    """Each record of a model's shell whose coding is object `name`'s (a tensor's, an XOR level's,
    with "pipeline" and "root"; a file's blob, with "pipeline" and "leaf": whether it is a blob),
    as ObjectSink.resolve fills them in: every leaf under it names that object."""
    def only(node: Any) -> bool:
        names = object_names({"tensors": {"t": {"root": node}}})
        return names == {name}

    for info in (header.get("tensors") or {}).values():
        level = info
        while isinstance(level, dict):
            if "pipeline" in level and only(level.get("root")):
                yield level, False
            level = level.get("xor")
    for entry in header.get("files") or []:
        for segment in entry.get("segments") or []:
            blob = segment.get("blob") if isinstance(segment, dict) else None
            if isinstance(blob, dict) and "pipeline" in blob and only({"leaf": blob.get("leaf")}):
                yield blob, True


def _as_named(entry: dict[str, Any], name: str, blob: bool) -> dict[str, Any]:
    """What a shell's record of object `name` holds where the object's tensor record is `entry`."""
    if blob:
        return {"pipeline": entry["pipeline"], "leaf": {**entry["root"]["leaf"], "object": name}}
    return {"pipeline": entry["pipeline"], "root": with_object(entry["root"], name)}


def names_otherwise(header: dict[str, Any], name: str, entry: dict[str, Any]) -> bool:
    """Whether a model's shell names object `name` coded otherwise than `entry` (an object's tensor
    record: its pipeline, chunk indexes and their CRC-32s), which it copied from the object it was
    built with."""
    return any({key: record.get(key) for key in ("pipeline", "leaf" if blob else "root")} != _as_named(entry, name, blob)
               for record, blob in _records_naming(header, name))


def name_as_coded(header: dict[str, Any], entries: dict[str, dict[str, Any]]) -> None:
    """Point each record of a model's shell that names one of the objects of `entries` (name ->
    that object's tensor record) at that coding of it, as ObjectSink.resolve names an object a
    build found: the store's, where another writer stored the same bytes coded by another pipeline
    while this build coded them."""
    for name, entry in entries.items():
        for record, blob in list(_records_naming(header, name)):
            record.update(_as_named(entry, name, blob))


def encode_leaf(writer: PayloadWriter, pipeline: Any, dtype: str, shape: list[int], raw: Any, chunk_bytes: int) -> dict[str, Any]:
    """Code `raw` (the bytes of a tensor of `dtype` and `shape`) through the leaf stages of
    `pipeline` into `writer`; returns the leaf."""
    from zoo.container.format import crc32
    from zoo.dtypes import DTYPES

    bits = DTYPES[dtype].bits
    elements = max(1, chunk_bytes * 8 // bits)
    count = 1
    for dimension in shape:
        count *= dimension
    chunks = []
    for first in range(0, count, elements):
        n = min(elements, count - first)
        encoded = pipeline.encode_chunk(raw[first * bits // 8:(first + n) * bits // 8], dtype)
        chunks.append((writer.write(encoded), len(encoded), crc32(encoded)))
    return {"dtype": dtype, "shape": list(shape), "chunk_elements": elements, **writer.write_index(chunks)}


def encode_object(sink: ObjectSink, pipeline: Any, dtype: str, shape: list[int], raw: Any, chunk_bytes: int,
                  about: dict[str, Any], key: str | None) -> dict[str, Any]:
    """Code `raw` into an object of `sink` named `key` (by its bytes when None); returns the tensor
    record (dtype, shape, pipeline, root) whose leaf names it."""
    payload = sink.payload()
    leaf = encode_leaf(payload, pipeline, dtype, shape, raw, chunk_bytes)
    record = {"dtype": dtype, "shape": list(shape), "pipeline": pipeline.configs(), "root": {"leaf": leaf}}
    sink.finish(Unit(record, key, about), payload)
    return record


def standalone(opened: Any, stream: BinaryIO, chunk_bytes: int = CHUNK_BYTES) -> dict[str, Any]:
    """The header of an archive that holds everything `opened` (an Archive) reads from objects: each
    leaf's chunks are copied, as coded, into `stream` (the new payload)."""
    import copy

    from zoo.container.format import crc32

    header = copy.deepcopy(opened.header())
    writer = PayloadWriter(stream)

    def move(leaf: dict[str, Any], what: str) -> None:
        chunks = []
        for data in opened.stored_chunks(leaf, what):
            chunks.append((writer.write(data), len(data), crc32(data)))
        leaf.pop("object", None)
        leaf.update(writer.write_index(chunks))

    def visit(node: Any, what: str) -> None:
        if isinstance(node, dict) and "leaf" in node:
            move(node["leaf"], what)
        elif isinstance(node, dict):
            for part, child in (node.get("parts") or {}).items():
                visit(child, f"{what} part {part!r}")

    # leaves are read through the header the archive checked, then written into the copy; a tensor
    # stored as an XOR is coded whole again (its base would cost more than the XOR saves)
    for key, info in header["tensors"].items():
        if "xor" in info:
            words = opened.read_tensor(key).data.reshape(-1).view("u1")
            pipeline = opened.pipeline_of(info["pipeline"])
            info["root"] = {"leaf": encode_leaf(writer, pipeline, info["dtype"], info["shape"], words, chunk_bytes)}
            del info["xor"]
        elif isinstance(info.get("root"), dict):
            visit(info["root"], f"tensor {key!r}")
    for entry in header["files"]:
        for segment in entry["segments"]:
            if "blob" in segment:
                move(segment["blob"]["leaf"], f"file {entry['path']!r}")
    features = [f for f in header.get("features", []) if f not in ("objects", "xor")]
    if features:
        header["features"] = features
    else:
        header.pop("features", None)
    return header


def _raise_a_limit(error: BaseException) -> None:
    """Too many open files (ulimit -n) says nothing of the object: raised, never called its damage."""
    if isinstance(error, OSError) and error.errno in OUT_OF_DESCRIPTORS:
        raise error


def checksum_problems(path: Path) -> list[str]:
    """What is wrong with object file `path` by its checksums alone (Archive.checksum_problems);
    a file that cannot be read is a problem too."""
    from zoo.container.reader import Archive

    try:
        with Archive(path) as held:
            return held.checksum_problems()
    except (ZooError, OSError) as error:
        _raise_a_limit(error)
        return [str(error)]


def object_problems(path: Path, name: str, shown: str) -> list[str]:
    """What is wrong with the object file `path`, stored under `name` (shown as `shown`): one
    coded without loss is decoded and checked against the digest it records (BLAKE3, or the sha256
    of objects written before) and against its name, any other object (a model's archive among
    them) against the sha256 of its bytes."""
    from zoo.container.reader import Archive

    try:
        opened = ArchiveFile(path)
        try:
            about = (opened.header.get("metadata") or {}).get("object")
        finally:
            opened.close()
        if not isinstance(about, dict):
            return [] if sha256_file(path) == name else [f"{shown}: its bytes do not match its name"]  # a model's archive
        if about.get("lossless"):
            kind, scheme, digest_of = ("blake3", "zoo-object-2", content_digest) if "blake3" in about else \
                ("sha256", "zoo-object-1", content_digest_1)
            with Archive(path) as held:
                info = held.tensor_info(OBJECT_TENSOR)
                digest = digest_of(held.read_tensor(OBJECT_TENSOR).data.reshape(-1).view("u1"))
            if digest != about.get(kind):
                return [f"{shown}: decodes to bytes whose {kind} is not the recorded one"]
            if "xor_of" not in about and content_key(info["dtype"], info["shape"], digest, scheme) != name:
                return [f"{shown}: holds other bytes than its name says"]
        elif sha256_file(path) != name:
            return [f"{shown}: its bytes do not match its name"]
    except (ZooError, OSError) as error:
        _raise_a_limit(error)
        message = str(error).replace(str(path), shown)  # the reader's errors name the file they read
        return [message if message.startswith(shown) else f"{shown}: {message}"]
    return []
