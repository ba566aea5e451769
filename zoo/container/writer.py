"""Building an archive: source segments -> array stages -> chunks encoded in parallel -> payload.

Memory stays bounded: sources are memory-mapped, chunks are encoded by a bounded window of
workers (zoo.kernels.parallel.ordered_map), and the pages of each chunk are released from this
process as soon as it is encoded, so the resident set does not grow with the model.
"""

from __future__ import annotations

import hashlib
import json
import math
import mmap
import os
import re
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np

from zoo import __version__
from zoo import kernels as _kernels
from zoo.kernels.parallel import InOrder, ordered_map
from zoo.codecs.base import TypedArray
from zoo.container.delta import Deltas
from zoo.container.objects import ObjectSink, Unit
from zoo.dtypes import DTYPES, storage_dtype
from zoo.errors import FormatError, InputError
from zoo.container import format as archive_format
from zoo.container.format import (HEADER_ALIGN, MAX_CHUNK_BYTES, PREAMBLE, PayloadWriter, content_digest, content_digest_later, crc32,
                                 sha256_file)
from zoo.codecs.pipeline import BLOB_SPEC, Pipeline
from zoo.codecs.selection import selected, tensor_label
from zoo.sources.segments import Segment, SourceFile, stamp_of

_PAGE = mmap.PAGESIZE
# Building into a zoo, tensors and runs of file bytes smaller than this stay in the model's own
# archive: an object costs a file and a header of its own, and sharing a few KiB saves little.
INLINE_BYTES = 16 << 10
# How far ahead of the coders a lossless build into a zoo hashes what it will name objects by.
HASH_AHEAD = 32 << 20


@dataclass
class _Job:
    """One chunk to encode: its leaf, the raw bytes, and the file range to release afterwards."""

    leaf: dict[str, Any]
    pipeline: Pipeline
    raw: np.ndarray
    count: int
    mapped: mmap.mmap | None = None
    file_offset: int = 0
    unit: Unit | None = None  # the object it goes into, when the build writes objects
    turn: tuple[_SourceDigest, int] | None = None  # its file's digest and its number in the file, when the coders hash
    source_bytes: int = 0  # the bytes of the source file it stands for, which progress counts (not its own: see _tensor_jobs)


class _SourceDigest:
    """A source file's sha256 over the chunks the coders read, passed on in the file's order by the
    threads that coded them while the bytes are in their caches (parallel.InOrder). Only while the
    chunks cover the file from its start, each a view of the mapped file; otherwise result() is None
    and the file is hashed by reading it. On two threads a thread of its own reading the file again
    cost 8% more CPU on a 512 MiB BF16 file (0.96-1.02 CPU-s against 0.90-0.92), and the compress
    took 577-598 ms against 522-556 (two cores, docs/performance.md)."""

    def __init__(self, size: int) -> None:
        self.size, self.end, self.covers = size, 0, True
        self.numbered = 0
        self._sha = hashlib.sha256()
        self._turns = InOrder(self._update)

    def turn(self) -> int:
        self.numbered += 1
        return self.numbered - 1

    def take(self, number: int, job: _Job) -> None:
        self._turns.take(number, job if job.count else None)

    def _update(self, job: _Job) -> None:
        self.covers &= job.mapped is not None and job.file_offset == self.end
        if self.covers:
            self._sha.update(job.raw)
            self.end += job.raw.nbytes
            # A chunk coded ahead of its turn was let go of by its coder and is read again here:
            # let go of once more (about a third of a large tensor's pages stayed resident).
            _release(job.mapped, job.file_offset, job.raw.nbytes)

    def result(self) -> str | None:
        return self._sha.hexdigest() if self.covers and self.end == self.size else None


def _job_bytes(job: _Job) -> int:
    """What a job's encoded chunk holds at most: its raw bytes (ordered_map's memory budget)."""
    return job.raw.nbytes


def _release(mapped: Any, offset: int, size: int) -> None:
    """Drop a range of a mapped source from our resident set; its pages stay in the page cache."""
    if mapped is not None and size:
        start = offset // _PAGE * _PAGE
        if isinstance(mapped, mmap.mmap):
            mapped.madvise(mmap.MADV_DONTNEED, start, offset + size - start)
        else:
            mapped.release(start, offset + size - start)


def _releaser(mapped: Any, offset: int) -> Callable[[int, int], None] | None:
    """For format.content_digest: the pages of a run of `mapped` starting at `offset`, let go of
    once hashed (None for bytes that are not a mapped file's)."""
    if mapped is None:
        return None
    return lambda start, length: _release(mapped, offset + start, length)


def _map(source: SourceFile) -> Any:
    """The file mapped read-only; unmapped when the last array viewing it is gone (a guarded one:
    when the build ends). Through the native extension's guarded maps where it can
    (native/mapping.c): a file cut short while it is read then gives zeros and marks the map
    damaged (the build refuses it at its end: _check_maps) instead of a SIGBUS that kills the process."""
    if source.size == 0:
        return None
    with open(source.path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size != source.size:
            raise InputError(f"{source.path}: file changed while being read")
        mapped = None
        if _kernels.map_file is not None and _kernels.maps_guarded():  # type: ignore[misc]
            with suppress(OSError):  # no map free, or another SIGBUS handler in place: a plain map
                mapped = _kernels.map_file(f.fileno(), size)  # type: ignore[misc]
        if mapped is not None:
            return mapped
        try:
            return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except OSError as error:  # ENOMEM under a limit on address space (ulimit -v): say which file would not map
            raise OSError(error.errno, f"{error.strerror} (mapping {size} bytes to read it)", str(source.path)) from None


def _check_unchanged(sources: list[SourceFile]) -> None:
    """Refuse a build whose source files were written while it read them (their stamps moved):
    the coder, the content keys and the sha256 each read a file on their own, and a file changed
    in place between them gave an archive, or zoo objects, that decode to bytes no key names. The
    work is the caller's to throw away: nothing has been published yet."""
    for source in stored_files(sources):
        if source.stamp is None:
            continue
        try:
            now = stamp_of(os.stat(source.path))
        except OSError:
            now = None
        if now != source.stamp:
            raise InputError(f"{source.path}: file changed while being read (written, or its inode changed: a new link, chmod); "
                             "nothing was stored (compress it again once it is written)")


# transformers' (and diffusers') own names for a model's weights, and for a variant of them
# (model.fp16.safetensors, pytorch_model.ema-00001-of-00002.bin, diffusion_pytorch_model.fp16.safetensors),
# which they load only when asked for that variant
_SHARD = r"(?:-\d{5}-of-\d{5})?"
WEIGHTS_FILE = re.compile(rf"(?:(?:diffusion_pytorch_)?model{_SHARD}\.safetensors|(?:diffusion_)?pytorch_model{_SHARD}\.bin)")
VARIANT_FILE = re.compile(rf"(?:model|(?:diffusion_)?pytorch_model)\.\w+{_SHARD}\.(?:safetensors|bin)")


def naming_order(files: Iterable[tuple[str, str]]) -> dict[str, tuple[int, bool, bool, bool, str]]:
    """(path, kind) of each file -> its place in the order tensor_keys gives names in: files nearer
    the top first; in one folder, the weights transformers loads: its weights files (safetensors
    before pytorch_model.bin) before other files (ema.safetensors, ema.pt), a variant of the
    weights files (model.fp16.safetensors beside model.safetensors) after them all; then
    safetensors before other files, then by path."""
    files = list(files)
    with_weights = {path.rpartition("/")[0] for path, _ in files if WEIGHTS_FILE.fullmatch(path.rpartition("/")[2])}
    order = {}
    for path, kind in files:
        folder, _, name = path.rpartition("/")
        variant = folder in with_weights and VARIANT_FILE.fullmatch(name) is not None
        order[path] = (path.count("/"), variant, WEIGHTS_FILE.fullmatch(name) is None, kind != "safetensors", path)
    return order


def tensor_keys(sources: list[SourceFile]) -> dict[tuple[str, str], str]:
    """The archive key of every tensor and view, by (file, name in the file): its name, or
    `path::name` when an earlier one already took the name, or `path::name#N` after that. Unique by
    construction, whatever the names hold. Files come in naming_order: a Trainer folder's
    model.safetensors keeps its names, and its checkpoint-N/ copies take the longer keys; the
    weights transformers loads keep theirs, as zoo.load_state_dict names them. By path alone (zoo
    before 2026-12-07) a variant or a checkpoint that sorts first (model.fp16.safetensors, ema.pt)
    had them, and zoo.open gave its tensor where the state dict gave the safetensors'."""
    return keys_of((source.relpath, source.kind, [*(segment.tensor for segment in source.segments if segment.tensor is not None),
                                                  *(view["name"] for view in source.views)]) for source in sources)


def keys_of(files: Iterable[tuple[str, str, list[str]]]) -> dict[tuple[str, str], str]:
    """tensor_keys' rule over (path, kind, the names in the file) of each file, for whoever lists
    the tensors of a folder apart from compress (zoo.evaluate names a model's tensors by it)."""
    files = list(files)
    order = naming_order((path, kind) for path, kind, _ in files)
    keys: dict[tuple[str, str], str] = {}
    used: set[str] = set()
    for path, _, names in sorted(files, key=lambda file: order[file[0]]):
        for name in names:
            key, number = name, 1
            if key in used:
                key = f"{path}::{name}"
            while key in used:
                number += 1
                key = f"{path}::{name}#{number}"
            used.add(key)
            keys[(path, name)] = key
    return keys


def stored_files(sources: list[SourceFile]) -> list[SourceFile]:
    """The sources that hold bytes (links, hard links and empty folders are recorded apart)."""
    return [source for source in sources if source.kind not in ("link", "hardlink", "folder")]


def _walk(sources: list[SourceFile]) -> Iterator[tuple[SourceFile, mmap.mmap | None, Segment, str | None, np.ndarray]]:
    """(file, its mapping, segment, tensor key or None for a blob, raw bytes) in archive order."""
    keys = tensor_keys(sources)
    for source in stored_files(sources):
        mapped = _map(source)
        for segment in source.segments:
            raw = np.frombuffer(mapped, np.uint8, segment.size, segment.offset) if segment.size else np.empty(0, np.uint8)
            key = keys[(source.relpath, segment.tensor)] if segment.tensor is not None else None
            yield source, mapped, segment, key, raw


def selectable(segment: Segment, key: str, pipeline: Pipeline | None) -> bool:
    """Whether lossy stages may see a tensor: model weights, and other tensors (optimizer moments)
    only where a stage's own include pattern names them; and not where a stage would touch it but
    not a tensor that views it (a tied lm_head that exclude= or the always-lossless names keep
    exact came back lossy as the embedding it shares)."""
    # a view's key is its name with the storage key's `path::` (docs/FORMAT.md); the patterns match both
    prefix = key[:-len(segment.tensor)] if segment.tensor and key.endswith(segment.tensor) else ""
    label = tensor_label(key, segment.tensor)
    if pipeline is not None and segment.viewed_as and any(
            selected(label, segment.dtype, segment.shape, getattr(stage, "include", None), getattr(stage, "exclude", None))
            and not selected(tensor_label(prefix + name, name), segment.dtype, segment.shape, getattr(stage, "include", None),
                             getattr(stage, "exclude", None))
            for stage in pipeline.array_stages for name in segment.viewed_as):
        return False
    if segment.weight:
        return True
    return pipeline is not None and any(
        getattr(stage, "include", None) and selected(label, segment.dtype, segment.shape, stage.include, None)
        for stage in pipeline.array_stages)


def _records_without_payload(sources: list[SourceFile]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The records of views (by key) and what else of the header holds no payload of its own
    (links, hard links, empty folders, folder modes, the features they need), as the build ends with them."""
    keys = tensor_keys(sources)
    views: dict[str, Any] = {}
    rest: dict[str, Any] = {}
    for source in sources:
        for view in source.views:
            views[keys[(source.relpath, view["name"])]] = {
                "name": view["name"], "file": source.relpath, "dtype": view["dtype"], "shape": view["shape"],
                "view": {"of": keys[(source.relpath, view["of"])], "offset": view["offset"], "stride": view["stride"]}}
            if view["dtype"] == "F4":  # counted in bytes (docs/FORMAT.md): readers that count values must refuse it
                rest["features"] = ["f4-views"]
    links = [{"path": s.relpath, "target": s.target} for s in sources if s.kind == "link"]
    hard_links = [{"path": s.relpath, "target": s.target} for s in sources if s.kind == "hardlink"]
    folders = [s.relpath for s in sources if s.kind == "folder" and s.empty]
    modes = {s.relpath: s.mode for s in sorted(sources, key=lambda s: s.relpath) if s.kind == "folder" and s.mode is not None}
    if links:
        rest["links"] = links
    if hard_links:  # a reader that would leave them out (and the files they are with them) must refuse the archive
        rest["hard_links"] = hard_links
        rest["features"] = sorted({*rest.get("features", []), "hard-links"})
    if folders:
        rest["folders"] = folders
    if modes:
        rest["folder_modes"] = modes
    return views, rest


_COMPACT = json.JSONEncoder(separators=(",", ":"))  # as format.encode_header writes a header: compact, ASCII


def _json_size(value: Any) -> int:
    """The bytes `value` takes in a header."""
    return len(_COMPACT.encode(value))


class Builder:
    def __init__(self, pipeline: Pipeline, chunk_bytes: int, metadata: dict[str, Any] | None, objects: ObjectSink | None = None) -> None:
        self.pipeline = pipeline
        self.objects = objects  # each tensor and blob becomes an object there (zoo.container.objects)
        self.plans: list[Any] | None = None  # what pipeline.survey() returned, when it was run (compress sets it)
        self.deltas: Deltas | None = None  # tensors stored against a base model (zoo.container.delta), when one is given
        self.root_mode: int | None = None  # the model folder's own permission bits (compress sets them), for decompress to give back
        self.leaf_pipeline = Pipeline((), pipeline.grouping, pipeline.bytes_stages)
        self.blob_pipeline = Pipeline.parse(BLOB_SPEC)
        if not isinstance(chunk_bytes, int) or not 1 <= chunk_bytes <= MAX_CHUNK_BYTES:
            raise InputError(f"chunk_bytes must be from 1 to {MAX_CHUNK_BYTES} (64 MiB), not {chunk_bytes!r}")
        self.chunk_bytes = chunk_bytes
        self._small: dict[tuple[Any, ...], dict[str, Any]] = {}  # leaves of the small tensors coded so far (into a zoo)
        self._digests: dict[int, tuple[np.ndarray, Callable[[], str]]] = {}  # digests started ahead, by id of the raw bytes
        self._source_digests: dict[str, _SourceDigest] = {}  # by file, when the coders hash the files they read
        self._maps: list[tuple[Any, Any]] = []  # (path, guarded map) of every source file this build read, for _check_maps
        self._uncounted = 0  # source bytes of what the build met but codes no chunk of, counted with the next chunk (_counted)
        self.header: dict[str, Any] = {
            "format": "zoo",
            "created_by": f"zoo {__version__}",
            "metadata": {**(metadata or {}), "pipeline": pipeline.spec()},  # the spec the payload was coded with, whatever a caller gave
            "files": [],
            "tensors": {},
        }

    def header_room(self, sources: list[SourceFile]) -> int:
        """Room to leave for preamble and header in front of the payload of a lossless build of
        `sources` into one archive (a multiple of HEADER_ALIGN), or 0 below ALIGN_FROM bytes of
        source. Judged from names and shapes before anything is coded, with some slack: a tensor's
        records take about 200 bytes beside its names in MiniLM's header (41 KB, in a room of 52 KiB).
        A header that outgrows it costs a copy of the payload, never a wrong byte (docs/FORMAT.md)."""
        if self.objects is not None or self.pipeline.array_stages or sum(source.size for source in sources) < archive_format.ALIGN_FROM:
            return 0
        keys = tensor_keys(sources)
        room = PREAMBLE.size + 512 + len(json.dumps(self.header["metadata"]))
        for source in stored_files(sources):
            room += 320 + len(source.relpath) + len(source.reason or "")
            for segment in source.segments:
                if segment.tensor is None:  # a blob: its leaf and pipeline, in the file's record
                    room += 256
                else:  # the tensor's key in the file's record, and its own record under "tensors"
                    key = keys[(source.relpath, segment.tensor)]
                    room += (16 + len(key)) + (224 + len(key) + len(segment.tensor) + len(source.relpath) + 16 * len(segment.shape))
            room += sum(256 + 2 * len(view["name"]) + len(source.relpath) + 16 * len(view["shape"]) for view in source.views)
        # no more than a header may take: padded to the end of a larger room, one under the cap went over it
        return min(-(-room // HEADER_ALIGN) * HEADER_ALIGN, archive_format.MAX_HEADER_BYTES // HEADER_ALIGN * HEADER_ALIGN)

    def refuse_oversized_header(self, sources: list[SourceFile], where: Any) -> None:
        """Refuse, before anything is coded, a build of `sources` whose header would be over the
        format's cap (archive_format.MAX_HEADER_BYTES): tens of thousands of tensors with long
        names make one, and the coding took minutes before encode_header found it. Judged by
        header_floor, so a header it lets through may still be refused there, after the coding."""
        floor = self.header_floor(sources)
        if floor > archive_format.MAX_HEADER_BYTES:
            tensors = sum(len(source.views) + sum(s.tensor is not None for s in source.segments) for source in sources)
            raise FormatError(f"{where}: archive header would be at least {floor} bytes ({tensors} tensors); "
                              f"the cap is {archive_format.MAX_HEADER_BYTES}")

    def header_floor(self, sources: list[SourceFile]) -> int:
        """The fewest bytes the header of this build of `sources` can take (as encode_header writes
        it), from what is known before coding: names, dtypes, shapes, chunk counts, files. Where the
        coding decides (the offsets and CRC-32s of chunk indexes, a lossy stage's tree, an object the
        zoo holds already, whose pipeline may be another) the least it can write is counted."""
        keys = tensor_keys(sources)
        views, rest = _records_without_payload(sources)
        if self.objects is not None:
            rest["features"] = sorted({*rest.get("features", []), "objects"})
        size = _json_size({**self.header, **rest, "files": [], "tensors": {}})
        tensors = [_json_size({key: record}) - 2 for key, record in views.items()]  # "key":record, without the braces
        # a record's pipeline is one of three lists: each is encoded once, the records with [] in its place
        configs = {"leaf": self.leaf_pipeline.configs(), "shorter": min(self.pipeline.configs(), self.leaf_pipeline.configs(), key=_json_size)}
        config_sizes = {which: _json_size(listed) - 2 for which, listed in configs.items()} | {None: 0}
        files = []
        for source in stored_files(sources):
            if not source.segments:  # no entry in "files": _jobs makes it at the file's first segment
                continue
            entry: dict[str, Any] = {"path": source.relpath, "size": source.size, "kind": source.kind, "segments": [], "lossless": True}
            if source.reason is not None:
                entry["opaque"] = source.reason
            if source.mode is not None:
                entry["mode"] = source.mode
            if source.kind == "torch":
                entry["storages"] = []
            for segment in source.segments:
                if segment.tensor is None:
                    entry["segments"].append({"blob": self._blob_floor(segment)})
                else:
                    key = keys[(source.relpath, segment.tensor)]
                    entry["segments"].append({"tensor": key})
                    if segment.storage:
                        entry["storages"].append(key)
                    record, which = self._tensor_floor(key, source, segment)
                    tensors.append(_json_size({key: record}) - 2 + config_sizes[which])  # "key":record
            files.append(_json_size(entry))
        return size + sum(tensors) + sum(files) + max(0, len(tensors) - 1) + max(0, len(files) - 1)  # and the commas between them

    def _tensor_floor(self, key: str, source: SourceFile, segment: Segment) -> tuple[dict[str, Any], str | None]:
        """The least of a tensor's record that _tensor_jobs and the coding can write, its pipeline
        left empty, and which of header_floor's lists goes there ("leaf", "shorter", or None: [])."""
        record: dict[str, Any] = {"name": segment.tensor, "file": source.relpath, "dtype": segment.dtype, "shape": list(segment.shape),
                                  "pipeline": []}
        dtype = DTYPES[segment.dtype]
        lossy_may_see = bool(dtype.storage) and selectable(segment, key, self.pipeline)  # the branches of _tensor_jobs
        if self.objects is not None and segment.size >= INLINE_BYTES:
            # an object: the zoo may hold it already, coded by another pipeline into another tree
            record["root"] = {}
            if not self.pipeline.array_stages:
                record["key"] = "0" * 64  # its content key (ObjectSink.unit)
            return record, None
        if lossy_may_see and self.pipeline.array_stages:
            # the lossy stages decide: whichever pipeline is the shorter, and a tree of which nothing is sure
            record["root"] = {}
            return record, "shorter"
        if dtype.bits % 8 and not lossy_may_see:  # values smaller than a byte, stored as their bytes
            record["root"] = {"leaf": self._leaf_floor("U8", [segment.size])}
        else:
            record["root"] = {"leaf": self._leaf_floor(segment.dtype, list(segment.shape))}
        return record, "leaf"

    def _blob_floor(self, segment: Segment) -> dict[str, Any]:
        """The least of a blob's record ({"pipeline", "leaf"}) that _jobs and the coding can write."""
        if self.objects is not None and segment.size >= INLINE_BYTES:
            return {"pipeline": [], "leaf": {"object": "0" * 64}}  # the zoo may hold it already, coded by another pipeline
        pipeline = self.blob_pipeline if segment.dtype == "U8" else self.leaf_pipeline
        return {"pipeline": pipeline.configs(), "leaf": self._leaf_floor(segment.dtype, [segment.size * 8 // DTYPES[segment.dtype].bits])}

    def _leaf_floor(self, dtype: str, shape: list[int]) -> dict[str, Any]:
        """A leaf as _chunk_jobs and the chunk index fill it in, its index's offset and CRC-32 at their shortest."""
        elements = max(1, self.chunk_bytes * 8 // DTYPES[dtype].bits)
        return {"dtype": dtype, "shape": shape, "chunk_elements": elements, "index": [0, -(-math.prod(shape) // elements)], "index_crc32": 0}

    def build(self, sources: list[SourceFile], payload: BinaryIO, threads: int, progress: Callable[[int], None] | None,
              hash_files: bool = True) -> dict[str, Any]:
        """Encode every source into `payload`; returns the archive header (whose files lack their
        sha256 without `hash_files`: a build that only wants some of its objects, zoo.batch)."""
        writer = PayloadWriter(payload)
        target, unit = writer, None  # where chunks go: the payload, or the object of `unit`
        # The coders hash each file as they read it where it is read whole and in order (a
        # lossless build into one archive); one thread of its own hashes it beside a lone coder.
        coders_hash = hash_files and threads > 1 and self.objects is None and not self.pipeline.array_stages
        self._source_digests = {s.relpath: _SourceDigest(s.size) for s in stored_files(sources)} if coders_hash else {}
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="zoo-sha256") as hasher:
            digests = ({s.relpath: hasher.submit(sha256_file, s.path).result for s in stored_files(sources)}
                       if hash_files and not coders_hash else {})
            current: dict[str, Any] | None = None
            chunks: list[tuple[int, int, int]] = []
            # Sized: up to BUDGET_ITEMS chunks a worker in flight, small ones batched. With the bare
            # two a worker the coders waited between chunks: MiniLM's BF16 chunks, coded alone on two
            # threads, went at 1.3-1.4 GB/s against 1.9-2.0 sized (AVX2 kernels, docs/performance.md).
            for job, encoded in ordered_map(self._encode, self._counted(self._jobs(sources)), threads, size=_job_bytes):
                if job.leaf is not current:
                    if current is not None:
                        current.update(target.write_index(chunks))
                    current, chunks = job.leaf, []
                if job.unit is not unit:
                    if unit is not None:
                        self.objects.finish(unit, target)  # type: ignore[union-attr, arg-type]
                    unit = job.unit
                    # a run of bytes too small to be an object of its own stays in the archive
                    target = self.objects.payload() if unit is not None else writer  # type: ignore[union-attr]
                if encoded is not None:
                    chunks.append((target.write(encoded), len(encoded), crc32(encoded)))
                if progress and job.source_bytes:
                    progress(job.source_bytes)
            if progress and self._uncounted:  # what the zoo held already, after the last chunk
                progress(self._uncounted)
            if current is not None:
                current.update(target.write_index(chunks))
            self._check_maps()
            if unit is not None:
                self.objects.finish(unit, target)  # type: ignore[union-attr, arg-type]
            if self.objects is not None:
                self.objects.resolve()
                self.header["features"] = ["objects"]
            for source in stored_files(sources) if coders_hash else ():
                digest = self._source_digests[source.relpath].result()
                digests[source.relpath] = (lambda found=digest: found) if digest else hasher.submit(sha256_file, source.path).result
            self._record_digests(digests)
        _check_unchanged(sources)
        self._record_rest(sources)
        return self.header

    def _check_maps(self) -> None:
        """Refuse the build when a source file was cut short while its map was read (the reads past
        its new end found zeros); the maps are let go either way."""
        maps, self._maps = self._maps, []
        for path, mapped in maps:
            if getattr(mapped, "damaged", False):
                raise InputError(f"{path}: file changed while being read (it shrank)")

    def _record_rest(self, sources: list[SourceFile]) -> None:
        """Views, links, hard links and empty folders: header records with no payload of their own."""
        views, rest = _records_without_payload(sources)
        self.header["tensors"].update(views)
        if self.root_mode is not None:
            rest["root_mode"] = self.root_mode
        if "features" in rest:
            rest["features"] = sorted({*self.header.get("features", []), *rest["features"]})
        self.header.update(rest)

    def _record_digests(self, digests: dict[str, Callable[[], str]]) -> None:
        for entry in self.header["files"]:
            if entry["path"] in digests:
                entry["sha256"] = digests[entry["path"]]()

    @staticmethod
    def _encode(job: _Job) -> tuple[_Job, bytes | None]:
        encoded = job.pipeline.encode_chunk(job.raw, job.leaf["dtype"]) if job.count else None
        if job.turn is not None:
            job.turn[0].take(job.turn[1], job)
        _release(job.mapped, job.file_offset, job.raw.nbytes)
        return job, encoded

    # -- planning ---------------------------------------------------------------------------

    @staticmethod
    def object_sizes(sources: list[SourceFile]) -> list[int]:
        """The size in the source of each object a build with an ObjectSink meets, in the order it
        asks the sink for them (ObjectSink.unit): every tensor and run of bytes of INLINE_BYTES or
        more. Reads no tensor's bytes."""
        return [segment.size for source in stored_files(sources) for segment in source.segments if segment.size >= INLINE_BYTES]

    @staticmethod
    def named_tensors(sources: list[SourceFile], pipeline: Pipeline | None = None) -> Iterator[tuple[str, str, str, TypedArray]]:
        """(key the build gives it, name in its file, the file's path, array) of every typed tensor
        the lossy stages of `pipeline` may see (model weights only without it)."""
        for source, _, segment, key, raw in _walk(sources):
            if key is not None and segment.tensor is not None and DTYPES[segment.dtype].storage and segment.size \
                    and selectable(segment, key, pipeline):
                array = TypedArray(raw.view(storage_dtype(segment.dtype)).reshape(segment.shape), segment.dtype)
                yield tensor_label(key, segment.tensor), segment.tensor, source.relpath, array  # the stages' patterns match both

    @staticmethod
    def tensors(sources: list[SourceFile], deltas: Deltas | None = None,
                pipeline: Pipeline | None = None) -> Iterator[tuple[str, TypedArray]]:
        """Every typed tensor by its key, as the array stages will see it, for a survey before the
        build: a tensor stored against a base is its float32 difference from the base."""
        for key, _, _, array in Builder.named_tensors(sources, pipeline):
            delta = deltas.delta(key, array) if deltas is not None else None
            yield key, array if delta is None else delta

    def _hashed_ahead(self, items: Iterator[tuple[SourceFile, mmap.mmap | None, Segment, str | None, np.ndarray]]) -> Iterator[Any]:
        """`items` as they come, each one's content digest started HASH_AHEAD bytes before the build
        reaches it: the hashers work beside the coders instead of holding up the queueing of chunks.
        Only in a lossless build without a float base, where every object is named by its bytes."""
        if self.objects is None or not self.objects.hash_ahead or self.pipeline.array_stages or self.deltas is not None:
            yield from items
            return
        window: deque[Any] = deque()
        ahead = 0
        for item in items:
            _, mapped, segment, _, raw = item
            if raw.nbytes >= INLINE_BYTES:
                self._digests[id(raw)] = (raw, content_digest_later(raw, self.objects.threads, _releaser(mapped, segment.offset)))
            window.append(item)
            ahead += raw.nbytes
            while len(window) > 1 and ahead - window[0][4].nbytes >= HASH_AHEAD:
                ahead -= window[0][4].nbytes
                yield window.popleft()
        yield from window

    def _digest_of(self, raw: np.ndarray, mapped: Any, offset: int) -> Callable[[], str]:
        """The content digest of `raw` (bytes of `mapped` at `offset`): the one _hashed_ahead
        started, else one computed when asked, the file's pages let go of as it goes."""
        started = self._digests.pop(id(raw), None)
        if started is not None and started[0] is raw:
            return started[1]
        return lambda: content_digest(raw, self.objects.threads if self.objects is not None else 1, _releaser(mapped, offset))

    def _counted(self, jobs: Iterator[_Job]) -> Iterator[_Job]:
        """`jobs`, each counting too the source bytes met since the one before that no chunk codes
        (a tensor or run of bytes the zoo holds already): progress counts to the source's size."""
        self._uncounted = 0
        for job in jobs:
            job.source_bytes += self._uncounted
            self._uncounted = 0
            yield job

    def _jobs(self, sources: list[SourceFile]) -> Iterator[_Job]:
        entry: dict[str, Any] = {}
        for source, mapped, segment, key, raw in self._hashed_ahead(_walk(sources)):
            if hasattr(mapped, "damaged") and (not self._maps or self._maps[-1][1] is not mapped):
                if self._maps:  # the file before: kept mapped for _check_maps, its pages let go (coded, or held by lossy stages)
                    _release(self._maps[-1][1], 0, len(self._maps[-1][1]))
                self._maps.append((source.path, mapped))
            if entry.get("path") != source.relpath:
                entry = {"path": source.relpath, "size": source.size, "kind": source.kind, "segments": [], "lossless": True}
                if source.reason is not None:
                    entry["opaque"] = source.reason
                if source.mode is not None:
                    entry["mode"] = source.mode
                if source.kind == "torch":
                    entry["storages"] = []  # the tensors that are no tensor of the checkpoint (docs/FORMAT.md)
                self.header["files"].append(entry)
            if key is None:
                # Unnamed bytes: plain blobs, or typed runs such as a torch checkpoint's storages.
                pipeline = self.blob_pipeline if segment.dtype == "U8" else self.leaf_pipeline
                leaf = {"dtype": segment.dtype, "shape": [segment.size * 8 // DTYPES[segment.dtype].bits]}
                blob = {"pipeline": pipeline.configs(), "leaf": leaf}
                entry["segments"].append({"blob": blob})
                unit = None
                if self.objects is not None and segment.size >= INLINE_BYTES:
                    unit = self.objects.unit(blob, segment.dtype, leaf["shape"], raw, lossless=True, blob=True,
                                             digest=self._digest_of(raw, mapped, segment.offset))
                    if unit is None:  # the zoo holds these bytes already
                        _release(mapped, segment.offset, segment.size)
                        self._uncounted += segment.size
                        continue
                yield from self._numbered(self._chunk_jobs(leaf, pipeline, raw, mapped, segment.offset, unit), source)
            else:
                entry["segments"].append({"tensor": key})
                if segment.storage:
                    entry["storages"].append(key)
                lossless = yield from self._numbered(self._tensor_jobs(key, source, segment, raw, mapped), source)
                entry["lossless"] &= lossless

    def _numbered(self, jobs: Iterator[_Job], source: SourceFile) -> Generator[_Job, None, Any]:
        """`jobs`, each with its turn in its file's digest when the coders hash the file; returns
        what `jobs` returns."""
        digest = self._source_digests.get(source.relpath)
        while True:
            try:
                job = next(jobs)
            except StopIteration as done:
                return done.value
            if digest is not None:
                job.turn = (digest, digest.turn())
            yield job

    def _tensor_jobs(self, key: str, source: SourceFile, segment: Segment, raw: np.ndarray, mapped: mmap.mmap | None) -> Iterator[_Job]:
        dtype = DTYPES[segment.dtype]
        record = {"name": segment.tensor, "file": source.relpath, "dtype": segment.dtype, "shape": list(segment.shape)}
        self.header["tensors"][key] = record
        delta = None
        if dtype.storage and selectable(segment, key, self.pipeline):
            array = TypedArray(raw.view(storage_dtype(segment.dtype)).reshape(segment.shape), segment.dtype)
            delta = self.deltas.delta(key, array) if self.deltas is not None and segment.size else None
            if delta is not None:
                record["base"] = self.deltas.record(key)
                self.header["base"] = {"hint": self.deltas.base.hint}
            root, leaves = self.pipeline.transform(tensor_label(key, segment.tensor), array if delta is None else delta, self.plans)
        elif dtype.bits % 8:  # values smaller than a byte (F4): stored as their bytes
            root = {"leaf": {"dtype": "U8", "shape": [segment.size]}}
            leaves = [(root["leaf"], TypedArray(raw, "U8"))]
        else:  # opaque dtypes, and tensors the lossy stages may not touch, go through the leaf stages as bytes
            root = {"leaf": {"dtype": segment.dtype, "shape": list(segment.shape)}}
            leaves = [(root["leaf"], TypedArray(raw, segment.dtype))]
        transformed = "leaf" not in root
        used = self.pipeline if transformed else self.leaf_pipeline
        record.update(pipeline=used.configs(), root=root)
        unit = None
        if self.objects is not None and segment.size >= INLINE_BYTES:
            unit = self.objects.unit(record, segment.dtype, list(segment.shape), raw, lossless=not transformed and delta is None,
                                     digest=self._digest_of(raw, mapped, segment.offset))
            if unit is None:  # the zoo holds this tensor already
                _release(mapped, segment.offset, segment.size)
                self._uncounted += segment.size
                return True
        elif self.objects is not None and segment.size and not transformed and delta is None:
            # Too small to be an object, but perhaps met before in this build (the same weights in
            # two formats): then its leaf is named again, and its chunks are stored once.
            same = (segment.dtype, tuple(segment.shape), json.dumps(record["pipeline"]), hashlib.sha256(raw).digest())
            if same in self._small:
                record["root"] = {"leaf": self._small[same]}
                self._uncounted += segment.size
                return True
            self._small[same] = root["leaf"]
        # Each chunk stands for its share of the tensor's bytes in the source: the parts a lossy
        # stage makes are fewer bytes (codebook's indices, an eighth at bits=4), a difference from
        # a base may be more (float32), and progress counted them, short of the source's size.
        stored = sum(part.data.nbytes for _, part in leaves)
        done = 0
        for leaf, part in leaves:
            part_raw = np.ascontiguousarray(part.data).reshape(-1).view(np.uint8)
            # Untransformed tensors are views of the mapped file: their pages can be released.
            for job in self._chunk_jobs(leaf, used, part_raw, None if transformed or delta is not None else mapped, segment.offset, unit):
                job.source_bytes = segment.size * (done + job.raw.nbytes) // stored - segment.size * done // stored if stored else 0
                done += job.raw.nbytes
                yield job
        if not stored:  # no bytes to code (a tensor of no elements)
            self._uncounted += segment.size
        return used.lossless and delta is None  # base + delta is not promised to give the bytes back

    def _chunk_jobs(self, leaf: dict[str, Any], pipeline: Pipeline, raw: np.ndarray, mapped: mmap.mmap | None, file_offset: int,
                    unit: Unit | None = None) -> Iterator[_Job]:
        bits = DTYPES[leaf["dtype"]].bits
        elements = max(1, self.chunk_bytes * 8 // bits)
        leaf["chunk_elements"] = elements
        count = math.prod(leaf["shape"])
        if count == 0:
            yield _Job(leaf, pipeline, raw[:0], 0, unit=unit)
        for first in range(0, count, elements):
            n = min(elements, count - first)
            begin, end = first * bits // 8, (first + n) * bits // 8
            yield _Job(leaf, pipeline, raw[begin:end], n, mapped, file_offset + begin, unit, source_bytes=end - begin)
