"""`zoo bench`: zoo's lossless coder beside zstd, ZipNN and blosc2 on the same tensors, in one
process, with the same thread count. Every coder's output is decoded and compared before its
figures count (chunked coders' chunks in a pass of their own: timed decoding drops each chunk
as a reader copying it into its tensor would; ZipNN decodes a whole blob, which it returns).
Speeds are the best of `repeat` runs in GB/s of original bytes: by the wall clock, and per
CPU-second of the whole process (all its threads), which a busy machine disturbs less. Every
coder writes into memory the process already has (recycled_memory), so none is timed for the
kernel zeroing fresh pages."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from zoo import kernels as _kernels
from zoo.allocator import DEFAULT_THRESHOLD, M_MMAP_THRESHOLD, M_TRIM_THRESHOLD, glibc_malloc
from zoo.kernels.parallel import for_each, ordered_map, resolve_threads
from zoo.dtypes import DTYPES, from_float32, storage_dtype, to_float32
from zoo.errors import InputError
from zoo.hub.manifest import size_ratio
from zoo.codecs.pipeline import DEFAULT_SPEC, Pipeline
from zoo.sources.folder import scan

CHUNK_BYTES = 4 << 20  # as zoo.compress cuts tensors
BENCH_DTYPES = ("BF16", "F16", "F32")
_ZIPNN_DTYPES = {"BF16": "bfloat16", "F16": "float16", "F32": "float32"}


@contextmanager
def recycled_memory() -> Iterator[bool]:
    """While open, glibc's malloc keeps what is freed for the next allocation, whatever its size.
    Under its defaults a block over 32 MiB is always a fresh mapping, whose pages the kernel zeroes
    when they are first written: ZipNN's output for a whole model is such a block and zoo's 4 MiB
    chunks are not, so every ZipNN decode was timed with the zeroing of its output and zoo's were
    not (ZipNN decoded MiniLM BF16 at 2.4-2.9 GB/s on two threads that way, at 4.4-4.6 with its
    output recycled; docs/performance.md). Yields False where the C library is not glibc. On
    leaving, glibc's starting thresholds are set again and free memory handed back, so what is
    timed after (an archive read back) gets fresh pages, as under the defaults."""
    found = glibc_malloc()
    if found is None:
        yield False
        return
    mallopt, malloc_trim = found
    recycled = bool(mallopt(M_MMAP_THRESHOLD, 1 << 30)) and bool(mallopt(M_TRIM_THRESHOLD, 1 << 30))
    try:
        yield recycled
    finally:
        mallopt(M_MMAP_THRESHOLD, DEFAULT_THRESHOLD)
        mallopt(M_TRIM_THRESHOLD, DEFAULT_THRESHOLD)
        malloc_trim(0)


@dataclass
class Figure:
    coder: str
    dtype: str
    original_bytes: int
    compressed_bytes: int
    compress_seconds: float
    decompress_seconds: float
    compress_cpu_seconds: float
    decompress_cpu_seconds: float

    @property
    def ratio(self) -> float:
        return size_ratio(self.compressed_bytes, self.original_bytes)

    def to_dict(self) -> dict[str, Any]:
        gbps = lambda seconds: self.original_bytes / seconds / 1e9 if seconds else None  # noqa: E731
        return {**asdict(self), "ratio": self.ratio, "compress_gbps": gbps(self.compress_seconds),
                "decompress_gbps": gbps(self.decompress_seconds), "compress_gbps_per_cpu": gbps(self.compress_cpu_seconds),
                "decompress_gbps_per_cpu": gbps(self.decompress_cpu_seconds)}


def load_float_tensors(source: str | os.PathLike[str]) -> list[tuple[np.ndarray, str]]:
    """Every float tensor of a model (folder, safetensors or PyTorch file): raw storage, mapped
    from disk, and its dtype."""
    from zoo.container.format import refuse_an_archive

    refuse_an_archive(Path(source))
    tensors = []
    for source_file in scan(source):
        for segment in source_file.segments:
            if segment.tensor is None or segment.dtype not in BENCH_DTYPES or segment.size == 0:
                continue
            raw = np.memmap(source_file.path, dtype=np.uint8, mode="r", offset=segment.offset, shape=(segment.size,))
            tensors.append((raw, segment.dtype))
    if not tensors:
        raise InputError(f"{source}: no BF16, F16 or F32 tensors to measure")
    return tensors


def as_dtype(tensors: list[tuple[np.ndarray, str]], dtype: str) -> list[np.ndarray]:
    """Raw storage bytes of each tensor in `dtype`: as stored, or cast (round to nearest even)."""
    out = []
    for raw, stored in tensors:
        if stored == dtype:
            out.append(np.asarray(raw))
            continue
        values = to_float32(raw.view(storage_dtype(stored)), stored)
        with np.errstate(over="ignore"):
            out.append(np.ascontiguousarray(from_float32(values, dtype)).view(np.uint8).reshape(-1))
    return out


def _chunks(tensors: list[np.ndarray], dtype: str) -> list[np.ndarray]:
    step = CHUNK_BYTES // DTYPES[dtype].itemsize * DTYPES[dtype].itemsize
    return [raw[first:first + step] for raw in tensors for first in range(0, len(raw), step)]


def _best(function: Callable[[], Any], repeat: int, prepare: Callable[[], Any] = lambda: None) -> tuple[float, float, Any]:
    """(fewest wall seconds, fewest CPU seconds, result) over `repeat` runs of function(prepare()),
    after one run that is not timed. A process's first runs of a coder fault in the pages of each
    of its threads' heaps: on MiniLM BF16, zoo's encoding on two threads took 22, 20 and 16 ms in
    its first three runs and 14-15 after, ZipNN's 36 and 24 before 23 (2026-12-05), so best of
    three or five timed the warming of the heaps as often as the coder."""
    wall, cpu, result = float("inf"), float("inf"), None
    for run in range(repeat + 1):
        argument = prepare()
        start, start_cpu = time.perf_counter(), time.process_time()
        result = function() if argument is None else function(argument)
        if run:
            wall, cpu = min(wall, time.perf_counter() - start), min(cpu, time.process_time() - start_cpu)
    return wall, cpu, result


def _chunked(name: str, dtype: str, chunks: list[np.ndarray], encode: Callable, decode: Callable, threads: int, repeat: int) -> Figure:
    # Encoded as zoo.compress sends chunks to its workers: sized, several a worker in flight.
    wall_in, cpu_in, coded = _best(lambda: list(ordered_map(encode, chunks, threads, size=lambda chunk: chunk.nbytes)), repeat)
    pairs = list(zip(coded, chunks))
    # Decoded chunks are dropped as they come, as a reader copying each into its tensor drops
    # them: keeping a multi-GB model's worth would time the kernel handing out fresh pages,
    # which on a VM costs more than decoding. They are checked in a pass of their own. They go
    # to the workers as the archive reader hands a tensor's chunks out (zoo.kernels.parallel.for_each;
    # encoding goes as zoo.compress sends it).
    def decode_all() -> None:
        for_each(lambda pair: decode(*pair), pairs, threads)

    wall_out, cpu_out, _ = _best(decode_all, repeat)
    for payload, chunk in pairs:
        if bytes(decode(payload, chunk)) != chunk.tobytes():
            raise RuntimeError(f"{name} did not give {dtype} back bit for bit")
    return Figure(name, dtype, sum(c.nbytes for c in chunks), sum(len(c) for c in coded), wall_in, wall_out, cpu_in, cpu_out)


def bench_zoo(dtype: str, chunks: list[np.ndarray], threads: int, repeat: int, spec: str = DEFAULT_SPEC) -> Figure:
    pipeline = Pipeline.parse(spec)
    itemsize = DTYPES[dtype].itemsize
    return _chunked(f"zoo {spec}", dtype, chunks, lambda chunk: pipeline.encode_chunk(chunk, dtype),
                    lambda payload, chunk: pipeline.decode_chunk(payload, dtype, chunk.nbytes // itemsize), threads, repeat)


def bench_zstd(dtype: str, chunks: list[np.ndarray], threads: int, repeat: int, level: int = 3) -> Figure:
    import zstandard

    return _chunked(f"zstd -{level}", dtype, chunks, lambda chunk: zstandard.ZstdCompressor(level=level).compress(chunk),
                    lambda payload, chunk: zstandard.ZstdDecompressor().decompress(payload), threads, repeat)


def bench_blosc2(dtype: str, chunks: list[np.ndarray], threads: int, repeat: int) -> Figure | None:
    try:
        import blosc2
    except ImportError:
        return None
    itemsize = DTYPES[dtype].itemsize
    # blosc2 splits each chunk over its own threads, so zoo's pool runs one at a time
    encode = lambda chunk: blosc2.compress2(chunk, typesize=itemsize, clevel=5, filters=[blosc2.Filter.SHUFFLE],  # noqa: E731
                                            codec=blosc2.Codec.ZSTD, nthreads=threads)
    decode = lambda payload, chunk: blosc2.decompress2(payload, nthreads=threads)  # noqa: E731
    return _chunked("blosc2 shuffle+zstd", dtype, chunks, encode, decode, 1, repeat)


def bench_zipnn(dtype: str, tensors: list[np.ndarray], threads: int, repeat: int) -> Figure | None:
    """ZipNN on the concatenated tensors: its own chunking and threads, its best case."""
    try:
        import zipnn
    except ImportError:
        return None
    blob = np.concatenate(tensors) if tensors else np.zeros(0, np.uint8)
    coder = zipnn.ZipNN(bytearray_dtype=_ZIPNN_DTYPES[dtype], threads=threads)
    # ZipNN rewrites its input buffer in place, so each run gets a fresh copy (not timed).
    wall_in, cpu_in, coded = _best(coder.compress, repeat, prepare=lambda: bytearray(blob.tobytes()))
    wall_out, cpu_out, decoded = _best(lambda: coder.decompress(coded), repeat)
    if bytes(decoded) != blob.tobytes():
        raise RuntimeError(f"ZipNN did not give {dtype} back bit for bit")
    return Figure("zipnn", dtype, blob.nbytes, len(coded), wall_in, wall_out, cpu_in, cpu_out)


def run(source: str | os.PathLike[str], threads: int | None = 2, dtypes: tuple[str, ...] = BENCH_DTYPES, repeat: int = 3,
        spec: str = DEFAULT_SPEC, anchors: bool = True) -> dict[str, Any]:
    """Figures for every coder and dtype, and the machine they were measured on."""
    threads = resolve_threads(threads)
    for dtype in dtypes:
        if dtype not in BENCH_DTYPES:
            raise InputError(f"zoo bench measures {', '.join(BENCH_DTYPES)}, not {dtype!r}")
    if Pipeline.parse(spec).array_stages:  # bench_zoo codes chunks with the lossless stages alone: it would label their figures so
        raise InputError(f"zoo bench measures lossless pipelines, and {spec!r} has lossy stages: `zoo sweep` measures those "
                         "(size and quality)")
    values = load_float_tensors(source)
    figures: list[Figure] = []
    with recycled_memory() as recycled:
        for dtype in dtypes:
            tensors = as_dtype(values, dtype)
            chunks = _chunks(tensors, dtype)
            figures.append(bench_zoo(dtype, chunks, threads, repeat, spec))
            if anchors:
                figures += [f for f in (bench_zipnn(dtype, tensors, threads, repeat), bench_zstd(dtype, chunks, threads, repeat),
                                        bench_blosc2(dtype, chunks, threads, repeat)) if f]
    return {"source": str(source), "threads": threads, "machine": machine(), "kernels": _kernels.PATH, "memory_recycled": recycled,
            "figures": [f.to_dict() for f in figures]}


def machine() -> str:
    return f"{os.cpu_count()}-core {os.uname().machine}, {_kernels.cpu_model()}"
