"""What the CLI, the server and the evaluator call: compress, decompress, open, verify."""

from __future__ import annotations

import hashlib
import math
import mmap
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from ._parallel import ordered_map, resolve_threads
from .archive import Archive, leaf_bytes
from .codecs.base import TypedArray
from .dtypes import DTYPES, storage_dtype
from .errors import ChecksumError, InputError, OutputExistsError, ZooError
from .format import PayloadWriter, assemble
from .pipeline import BLOB_SPEC, DEFAULT_SPEC, Pipeline
from .sources import SourceFile, check_relpath, scan

CHUNK_BYTES = 4 << 20  # per chunk of raw storage: large enough for coder tables, small enough to stream
Progress = Callable[[int], None]


@dataclass
class TensorReport:
    name: str
    file: str
    dtype: str
    shape: list[int]
    original_bytes: int
    compressed_bytes: int
    pipeline: str

    @property
    def ratio(self) -> float:
        return self.compressed_bytes / self.original_bytes if self.original_bytes else 1.0

    @property
    def bits_per_weight(self) -> float:
        count = math.prod(self.shape)
        return 8 * self.compressed_bytes / count if count else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ratio": self.ratio, "bits_per_weight": self.bits_per_weight}


@dataclass
class Report:
    """Sizes of an archive: whole file, per tensor, per file."""

    archive: str
    original_bytes: int
    compressed_bytes: int
    parameters: int
    tensors: list[TensorReport] = field(default_factory=list)
    files: list[dict[str, Any]] = field(default_factory=list)
    seconds: float | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        return self.compressed_bytes / self.original_bytes if self.original_bytes else 1.0

    @property
    def bits_per_weight(self) -> float:
        """Whole archive, headers and non-weight files included, over the weight count."""
        return 8 * self.compressed_bytes / self.parameters if self.parameters else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "archive": self.archive,
            "original_bytes": self.original_bytes,
            "compressed_bytes": self.compressed_bytes,
            "ratio": self.ratio,
            "parameters": self.parameters,
            "bits_per_weight": self.bits_per_weight,
            "seconds": self.seconds,
            "metadata": self.metadata,
            "files": self.files,
            "tensors": [t.to_dict() for t in self.tensors],
        }


# -- output safety ---------------------------------------------------------------------------


def _refuse_existing(path: Path, force: bool) -> None:
    if (path.exists() or path.is_symlink()) and not force:
        raise OutputExistsError(f"{path} exists; pass --force to replace it")


@contextmanager
def _atomic_output(final: Path, force: bool, is_dir: bool) -> Iterator[Path]:
    """A temporary path beside `final`, renamed over it only when the body completes.
    On any error or Ctrl-C the temporary is removed and `final` is left as it was."""
    _refuse_existing(final, force)
    parent = final.parent
    if not parent.is_dir():
        raise InputError(f"{parent}: output folder does not exist")
    prefix = f".{final.name}.zoo-tmp-"
    if is_dir:
        temporary = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    else:
        handle, name = tempfile.mkstemp(prefix=prefix, dir=parent)
        os.close(handle)
        temporary = Path(name)
    # mkdtemp/mkstemp make private (0700/0600) paths; give the output the modes the umask allows.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(temporary, (0o777 if is_dir else 0o666) & ~umask)
    try:
        yield temporary
        if final.is_dir() and not final.is_symlink():
            old = Path(tempfile.mkdtemp(prefix=f".{final.name}.zoo-old-", dir=parent))
            os.replace(final, old / final.name)
            os.replace(temporary, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(temporary, final)
    except BaseException:
        if temporary.is_dir():
            shutil.rmtree(temporary, ignore_errors=True)
        else:
            temporary.unlink(missing_ok=True)
        raise


# -- compress --------------------------------------------------------------------------------


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(8 << 20):
            digest.update(block)
    return digest.hexdigest()


def _map_file(source: SourceFile) -> mmap.mmap | bytes:
    """The file mapped read-only; it is unmapped when the last array viewing it is gone."""
    if source.size == 0:
        return b""
    with open(source.path, "rb") as f:
        mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    if len(mapped) != source.size:
        raise InputError(f"{source.path}: file changed while being read")
    return mapped


def _chunk_elements(dtype: str, chunk_bytes: int) -> int:
    return max(1, chunk_bytes * 8 // DTYPES[dtype].bits)


def compress(
    source: str | os.PathLike[str],
    destination: str | os.PathLike[str],
    pipeline: str | Pipeline = DEFAULT_SPEC,
    *,
    threads: int | None = None,
    force: bool = False,
    metadata: dict[str, Any] | None = None,
    chunk_bytes: int = CHUNK_BYTES,
    progress: Progress | None = None,
) -> Report:
    """Compress a model folder or file into one archive at `destination`."""
    started = time.perf_counter()
    chosen = pipeline if isinstance(pipeline, Pipeline) else Pipeline.parse(pipeline)
    blob_pipeline = Pipeline.parse(BLOB_SPEC)
    sources = scan(source)
    destination = Path(destination)
    if destination.resolve() in {s.path.resolve() for s in sources}:
        raise InputError(f"{destination}: output would overwrite its own input")
    workers = resolve_threads(threads)
    header: dict[str, Any] = {
        "format": "zoo",
        "created_by": f"zoo {__version__}",
        "metadata": {"pipeline": chosen.spec(), **(metadata or {})},
        "files": [],
        "tensors": {},
    }
    sizes: dict[int, int] = {}  # id(leaf) -> stored bytes
    leaf_owner: dict[int, str] = {}

    with ExitStack() as stack, _atomic_output(destination, force, is_dir=False) as temporary:
        payload_path = Path(stack.enter_context(tempfile.TemporaryDirectory(dir=destination.parent, prefix=".zoo-payload-"))) / "payload"
        payload = stack.enter_context(open(payload_path, "wb"))
        writer = PayloadWriter(payload)
        hashes = {s.relpath: _sha256_file for s in sources}
        from concurrent.futures import ThreadPoolExecutor

        hasher = stack.enter_context(ThreadPoolExecutor(max_workers=1, thread_name_prefix="zoo-sha"))
        digests = {s.relpath: hasher.submit(hashes[s.relpath], s.path) for s in sources}
        leaves: list[tuple[dict[str, Any], TypedArray, Pipeline, str]] = []
        used_names: set[str] = set()

        def plan() -> Iterator[tuple[dict[str, Any], Pipeline, np.ndarray, str, int]]:
            """Chunks to encode, in archive order, as (leaf, pipeline, raw bytes, dtype, count)."""
            for source_file in sources:
                data = _map_file(source_file)
                entry: dict[str, Any] = {"path": source_file.relpath, "size": source_file.size, "kind": source_file.kind, "segments": []}
                header["files"].append(entry)
                file_lossless = True
                for segment in source_file.segments:
                    raw = np.frombuffer(data, dtype=np.uint8, count=segment.size, offset=segment.offset) if segment.size else np.empty(0, np.uint8)
                    if segment.tensor is None:
                        leaf = {"dtype": "U8", "shape": [segment.size]}
                        entry["segments"].append({"blob": {"pipeline": blob_pipeline.configs(), "leaf": leaf}})
                        yield from _chunks(leaf, blob_pipeline, TypedArray(raw, "U8"))
                        continue
                    key = segment.tensor if segment.tensor not in used_names else f"{source_file.relpath}::{segment.tensor}"
                    used_names.add(key)
                    entry["segments"].append({"tensor": key})
                    dtype = DTYPES[segment.dtype]
                    array = TypedArray(raw.view(storage_dtype(segment.dtype)).reshape(segment.shape) if dtype.storage else raw, segment.dtype)
                    root, tensor_leaves = chosen.transform(key, array) if dtype.storage else ({"leaf": {"dtype": segment.dtype, "shape": list(segment.shape)}}, [])
                    if not dtype.storage:
                        tensor_leaves = [(root["leaf"], array)]
                    used = chosen if "leaf" not in root else Pipeline(tuple(), chosen.grouping, chosen.bytes_stages)
                    file_lossless &= used.lossless
                    header["tensors"][key] = {
                        "name": segment.tensor, "file": source_file.relpath, "dtype": segment.dtype,
                        "shape": list(segment.shape), "pipeline": used.configs(), "root": root,
                    }
                    for leaf, part in tensor_leaves:
                        leaf_owner[id(leaf)] = key
                        yield from _chunks(leaf, used, part)
                entry["lossless"] = file_lossless

        def _chunks(leaf: dict[str, Any], leaf_pipeline: Pipeline, part: TypedArray) -> Iterator[tuple[dict[str, Any], Pipeline, np.ndarray, str, int]]:
            elements = _chunk_elements(leaf["dtype"], chunk_bytes)
            leaf["chunk_elements"] = elements
            leaf["_chunks"] = []
            raw = np.ascontiguousarray(part.data).reshape(-1).view(np.uint8)
            count = math.prod(leaf["shape"])
            bits = DTYPES[leaf["dtype"]].bits
            if count == 0:
                yield leaf, leaf_pipeline, raw[:0], leaf["dtype"], 0
            for first in range(0, count, elements):
                n = min(elements, count - first)
                yield leaf, leaf_pipeline, raw[first * bits // 8:(first + n) * bits // 8], leaf["dtype"], n

        def encode(job: tuple[dict[str, Any], Pipeline, np.ndarray, str, int]) -> tuple[dict[str, Any], bytes | None, int]:
            leaf, leaf_pipeline, raw, dtype, n = job
            return leaf, (leaf_pipeline.encode_chunk(raw, dtype) if n else None), raw.nbytes

        current: dict[str, Any] | None = None

        def close_leaf(leaf: dict[str, Any]) -> None:
            chunks = leaf.pop("_chunks")
            leaf.update(writer.write_index(chunks))
            sizes[id(leaf)] = sum(c[1] for c in chunks) + 16 * len(chunks)

        from .format import crc32

        for leaf, encoded, raw_bytes in ordered_map(encode, plan(), workers):
            if current is not None and leaf is not current:
                close_leaf(current)
            current = leaf
            if encoded is not None:
                leaf["_chunks"].append((writer.write(encoded), len(encoded), crc32(encoded)))
            if progress and raw_bytes:
                progress(raw_bytes)
        if current is not None:
            close_leaf(current)
        for entry in header["files"]:
            entry["sha256"] = digests[entry["path"]].result()
        payload.flush()
        payload.close()
        assemble(temporary, header, payload_path)

    report = report_of(destination)
    report.seconds = time.perf_counter() - started
    return report


# -- reading ---------------------------------------------------------------------------------


def open_archive(archive: str | os.PathLike[str]) -> Archive:
    """Open an archive for lazy, per-tensor reads (exported as zoo.open)."""
    return Archive(archive)


def report_of(archive: str | os.PathLike[str]) -> Report:
    """Sizes of an existing archive, from its header and chunk indexes."""
    with Archive(archive) as opened:
        tensors = []
        parameters = 0
        for key, info in opened._file.header["tensors"].items():
            stored = 0
            for leaf, what in _tensor_leaves(info):
                index, _, _ = opened._chunks(leaf, what)
                stored += sum(c[1] for c in index) + 16 * len(index)
            pipeline = opened.pipeline_of(info["pipeline"]).spec()
            tensors.append(TensorReport(key, info["file"], info["dtype"], list(info["shape"]), leaf_bytes(info), stored, pipeline))
            if info["dtype"] in DTYPES and DTYPES[info["dtype"]].is_float:
                parameters += math.prod(info["shape"])
        files = opened.files()
        return Report(
            archive=str(archive),
            original_bytes=sum(f["size"] for f in files),
            compressed_bytes=Path(archive).stat().st_size,
            parameters=parameters,
            tensors=tensors,
            files=files,
            metadata=opened.metadata(),
        )


def _tensor_leaves(info: dict[str, Any]) -> Iterator[tuple[dict[str, Any], str]]:
    def walk(node: dict[str, Any]) -> Iterator[tuple[dict[str, Any], str]]:
        if "leaf" in node:
            yield node["leaf"], f"tensor {info.get('name')!r}"
        else:
            for child in node.get("parts", {}).values():
                yield from walk(child)

    yield from walk(info["root"])


def verify(archive: str | os.PathLike[str], threads: int | None = None) -> list[str]:
    """Check every checksum and every recorded sha256; returns the problems found."""
    with Archive(archive) as opened:
        return opened.verify(resolve_threads(threads))


def decompress(
    archive: str | os.PathLike[str],
    destination: str | os.PathLike[str],
    *,
    threads: int | None = None,
    force: bool = False,
    progress: Progress | None = None,
) -> Report:
    """Write the model folder back out. Lossless files are checked against their sha256 before
    the folder appears; on any error nothing is left at `destination`."""
    started = time.perf_counter()
    destination = Path(destination)
    workers = resolve_threads(threads)
    with Archive(archive) as opened, _atomic_output(destination, force, is_dir=True) as temporary:
        for entry in opened.files():
            path = temporary / check_relpath(entry["path"])
            path.parent.mkdir(parents=True, exist_ok=True)
            digest = hashlib.sha256()
            with path.open("wb") as out:
                for piece in opened.iter_file(entry["path"], threads=workers):
                    out.write(piece)
                    digest.update(piece)
                    if progress:
                        progress(len(piece))
            if entry.get("lossless") and digest.hexdigest() != entry.get("sha256"):
                raise ChecksumError(f"{archive}: {entry['path']} decodes to bytes whose sha256 does not match the original")
    report = report_of(archive)
    report.seconds = time.perf_counter() - started
    return report


__all__ = ["Report", "TensorReport", "compress", "decompress", "open_archive", "report_of", "verify", "ZooError"]
