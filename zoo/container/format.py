"""The .zoo archive: preamble, JSON header, payload region. Spec: docs/FORMAT.md."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import resource
import stat
import struct
import threading
from collections import OrderedDict
from contextlib import contextmanager, suppress
from pathlib import Path
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO

from zoo import kernels as _kernels
from zoo.errors import ChecksumError, FormatError, InputError, MissingObjectError, StorageError, UnreadableError, ZooError

MAGIC = b"\x89ZOO\r\n\x1a\n"
VERSION = 1
# Version 1 plus tensors stored against a base model: written only when the header has a "base"
# record, so that a version-1 reader refuses the archive instead of handing out the differences.
BASE_VERSION = 2
# Version 2 plus what a header's "features" list names: "objects" (leaves whose chunks live in
# object files of a zoo, docs/STORE.md) and "xor" (tensors stored as their bitwise difference from
# another), and "f4-views" (views of F4 tensors, their offsets and strides in bytes),
# "f64-product" and "f8-even" (coding trees whose nodes decode by a rule older readers do not
# follow: node_features), and "hard-links" (files of several names, each stored once: a reader that
# skipped the record would lose the other names). Written only when the list is not empty, so that
# older readers refuse the archive.
FEATURES_VERSION = 3
FEATURES = frozenset({"objects", "xor", "f4-views", "f64-product", "f8-even", "hard-links"})
VERSIONS = (VERSION, BASE_VERSION, FEATURES_VERSION)
# How deep tensors stored as an XOR against another may chain: reading one never decodes more.
MAX_XOR_DEPTH = 3
OBJECT_NAME = re.compile(r"[0-9a-f]{64}")
OBJECT_SUFFIX = ".zoo"
# Object files kept open in a process, for every archive reading them; past that the least recently
# used one no read holds is closed.
# Never more than an eighth of the process's descriptors (ulimit -n): under a low limit the idle
# ones took those a read needed, and the next object could not be opened (EMFILE).
OUT_OF_DESCRIPTORS = (errno.EMFILE, errno.ENFILE)  # the process's limit, or the system's


def open_files_share(most: int, least: int) -> int:
    """How many files a cache of this process may hold open: `most`, and never more than an
    eighth of `ulimit -n` (at least `least`)."""
    return min(most, max(least, resource.getrlimit(resource.RLIMIT_NOFILE)[0] // 8))


def out_of_descriptors(error: OSError, path: Any, why: str = "") -> OSError:
    """EMFILE or ENFILE said as the system's error with the limit in it, never as damage."""
    return OSError(error.errno, f"{error.strerror} (`ulimit -n` is {resource.getrlimit(resource.RLIMIT_NOFILE)[0]}{why})", str(path))


_OPEN_OBJECTS = open_files_share(64, 2)
MAX_HEADER_BYTES = 64 << 20
# A chunk's decoded size, checked before anything is allocated: the writer's default is 4 MiB, and
# whatever a header claims, decoding a chunk never takes more memory than this (plus its stored bytes).
MAX_CHUNK_BYTES = 64 << 20
MAX_DIMENSIONS = 64  # numpy's own limit on an array's dimensions
PREAMBLE = struct.Struct("<8sIIQ")  # magic, version, crc32 of header, header length
INDEX_RECORD = struct.Struct("<QII")  # chunk offset in the payload region, stored length, crc32


def crc32(data: bytes | memoryview) -> int:
    """zlib's CRC-32; the native kernel folds with carry-less multiplication (several times zlib's speed)."""
    return _kernels.crc32(data)


class PayloadWriter:
    """Appends blobs to a payload file and hands back their offsets."""

    def __init__(self, stream: BinaryIO) -> None:
        self.stream = stream
        self.size = 0

    def write(self, data: bytes | memoryview) -> int:
        offset = self.size
        self.stream.write(data)
        self.size += len(data)
        return offset

    def write_index(self, chunks: list[tuple[int, int, int]]) -> dict[str, Any]:
        """Write a leaf's chunk index; returns what the header keeps of it."""
        table = b"".join(INDEX_RECORD.pack(*chunk) for chunk in chunks)
        return {"index": [self.write(table), len(chunks)], "index_crc32": crc32(table)}


def encode_header(header: dict[str, Any]) -> bytes:
    body = json.dumps(header, separators=(",", ":"), sort_keys=True).encode()
    if len(body) > MAX_HEADER_BYTES:
        raise FormatError(f"archive header would be {len(body)} bytes; the cap is {MAX_HEADER_BYTES}")
    return body


def node_features(header: dict[str, Any]) -> set[str]:
    """The features the tensors' coding trees need (docs/FORMAT.md): "f64-product" for a lowrank
    node whose matrix is summed in float64 in a fixed order, "f8-even" for an F8 node rounded ties to
    even. A reader from before either rule would decode such a node by its own rule, to other bits
    than the sha256 a store recorded; with the feature listed it refuses the archive instead."""
    found: set[str] = set()

    def visit(node: Any) -> None:
        if not isinstance(node, dict) or "leaf" in node:
            return
        if node.get("rounding") == "even":
            found.add("f8-even")
        meta = node.get("meta")
        if isinstance(meta, dict) and meta.get("product") == "float64":
            found.add("f64-product")
        parts = node.get("parts")
        for child in parts.values() if isinstance(parts, dict) else ():
            visit(child)

    tensors = header.get("tensors")
    for info in tensors.values() if isinstance(tensors, dict) else ():
        if isinstance(info, dict):
            visit(info.get("root"))
    return found


def version_of(header: dict[str, Any]) -> int:
    if header.get("features"):
        return FEATURES_VERSION
    return BASE_VERSION if "base" in header else VERSION


DIGEST_BLOCK = 4 << 20


DIGEST_BLOCK_RELEASED = 64 << 20  # a run hashed from a mapped file: its pages let go of every this many bytes


def content_digest(raw: Any, threads: int = 1, release: Callable[[int, int], None] | None = None) -> str:
    """What names a run of bytes in a zoo: their BLAKE3 digest (hex). BLAKE3 hashes about 5 GB/s on
    one AVX-512 core here, against SHA-256's 1.1-2 GB/s with SHA-NI: beside coding at about 0.5 GB/s
    a core, naming every tensor costs a tenth of the work, not a third. A run of 64 MiB or more is
    hashed on `threads` threads (BLAKE3 is a tree). With `release(start, length)`, the run is
    hashed DIGEST_BLOCK_RELEASED bytes at a time, each block handed to `release` once hashed (a
    mapped file's pages leave the resident set: a 3 GB tensor held 3 GB while it was named, and the
    tensors hashed ahead of the coders theirs)."""
    import blake3

    data = memoryview(raw).cast("B")
    hasher = blake3.blake3(max_threads=threads if len(data) >= 64 << 20 else 1)
    if release is None:
        hasher.update(data)
        return hasher.hexdigest()
    for start in range(0, len(data), DIGEST_BLOCK_RELEASED):  # the same digest: BLAKE3 streams
        block = data[start:start + DIGEST_BLOCK_RELEASED]
        hasher.update(block)
        release(start, len(block))
    return hasher.hexdigest()


def content_digest_later(raw: Any, threads: int = 1, release: Callable[[int, int], None] | None = None) -> Callable[[], str]:
    """content_digest of `raw`, started now on the hashers' threads: the call returned waits for it."""
    # Hashers of their own, not the coders' pool: a build hashes a tensor while the coders work
    # through the chunks queued before it, and queued behind them the hashing would wait.
    return _hashers(threads).submit(content_digest, raw, threads, release).result


def content_digest_1(raw: Any) -> str:
    """The content digest of objects written before BLAKE3 (key scheme "zoo-object-1"): sha256 up to
    4 MiB, else the sha256 of the sha256 digests of the 4 MiB blocks in order. Read, never written."""
    data = memoryview(raw).cast("B")
    if len(data) <= DIGEST_BLOCK:
        return hashlib.sha256(data).hexdigest()
    blocks = (hashlib.sha256(data[start:start + DIGEST_BLOCK]).digest() for start in range(0, len(data), DIGEST_BLOCK))
    return hashlib.sha256(b"".join(blocks)).hexdigest()


_HASHERS: dict[int, Any] = {}


def _hashers(threads: int) -> Any:
    from concurrent.futures import ThreadPoolExecutor

    with _HASHERS_LOCK:
        if threads not in _HASHERS:
            _HASHERS[threads] = ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="zoo-hash")
        return _HASHERS[threads]


_HASHERS_LOCK = threading.Lock()
os.register_at_fork(after_in_child=_HASHERS.clear)  # a forked child has none of the parent's threads


def content_key(dtype: str, shape: list[int], digest: str, scheme: str = "zoo-object-2") -> str:
    """The name of the object holding a tensor (or a run of a file's bytes) coded without loss:
    what it decodes to, whatever pipeline coded it (docs/STORE.md). `digest` is its content_digest;
    scheme "zoo-object-1" names objects written before, by content_digest_1."""
    text = json.dumps([scheme, dtype, list(shape), digest], separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def object_path(root: Path, name: str) -> Path:
    """Where object `name` lies under a zoo's objects folder (`objects/sha256`)."""
    return root / name[:2] / f"{name}{OBJECT_SUFFIX}"


# An archive whose payload is at least this large has its header padded with spaces so that the
# payload starts on a HEADER_ALIGN boundary: the header can then be put in front of a payload
# written first, without copying it (put_header). Smaller ones are assembled by a copy.
ALIGN_FROM = 64 << 20
HEADER_ALIGN = 4096
_FALLOC_FL_INSERT_RANGE = 0x20


def _front(header: dict[str, Any], payload_size: int, room: int = 0) -> bytes:
    """Preamble and header of an archive whose payload is `payload_size` bytes. From ALIGN_FROM on,
    the header is followed by spaces (JSON allows them) up to the end of the `room` its writer left
    in front of the payload when it fits there, else up to the next HEADER_ALIGN boundary of the
    file. Whichever way the archive is then written, the same bytes on every file system. Padding
    that would take the header over MAX_HEADER_BYTES is left out: it is never what refuses one.
    The features the coding trees need are added to `header`'s list here, whoever built it."""
    needed = node_features(header)
    if needed - set(header.get("features") or []):
        header["features"] = sorted({*(header.get("features") or []), *needed})
    body = encode_header(header)
    if payload_size >= ALIGN_FROM:
        fits = PREAMBLE.size + len(body) <= room
        padded = body + b" " * (room - PREAMBLE.size - len(body) if fits else -(PREAMBLE.size + len(body)) % HEADER_ALIGN)
        if len(padded) <= MAX_HEADER_BYTES:
            body = padded
    return PREAMBLE.pack(MAGIC, version_of(header), crc32(body), len(body)) + body


_PROC_STATUS = "/proc/self/status"


def current_umask() -> int:
    """The process's umask, read without changing it. os.umask only sets it (and says what it
    was): between setting it and setting it back, a file another thread creates (the coders,
    the hashers) would take the mask set meanwhile. Linux shows it in /proc/self/status (the
    "Umask:" line, kernel 4.7 on); only where that is missing is it set and set back, set to 077
    meanwhile, so that such a file comes out private rather than open to all."""
    try:
        with open(_PROC_STATUS, "rb") as status:
            for line in status:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):  # no such file here (not Linux), or a line not as expected
        pass
    with _UMASK_LOCK:  # two threads at once: the second would read the 077 and set it back for good
        umask = os.umask(0o077)
        os.umask(umask)
    return umask


_UMASK_LOCK = threading.Lock()


def _write_all(descriptor: int, data: bytes | memoryview, offset: int | None = None) -> None:
    """All of `data` at the file's position, or at `offset`."""
    view, done = memoryview(data), 0
    while done < len(view):
        done += os.write(descriptor, view[done:]) if offset is None else os.pwrite(descriptor, view[done:], offset + done)


def put_header(path: Path, header: dict[str, Any], room: int = 0, durable: bool = True) -> bool:
    """Turn the payload that `path` holds behind `room` bytes into an archive in place, without
    copying it: the preamble and padded header are written into the room where they fit; with no
    room, room is first inserted at the file's start (fallocate FALLOC_FL_INSERT_RANGE: the file
    system moves extents, not bytes). False, with `path` untouched, for a payload under ALIGN_FROM
    (cheaper copied behind its header, by assemble), a header larger than its room, or a file
    system that cannot insert."""
    descriptor = os.open(path, os.O_RDWR)
    try:
        size = os.fstat(descriptor).st_size - room
        front = _front(header, size, room)
        if size < ALIGN_FROM or (len(front) != room if room else not _insert_range(descriptor, len(front))):
            return False
        _write_all(descriptor, front, 0)
        if durable:
            os.fsync(descriptor)
        return True
    finally:
        os.close(descriptor)


def _insert_range(descriptor: int, length: int) -> bool:
    try:
        import ctypes

        fallocate = ctypes.CDLL(None, use_errno=True).fallocate
        fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong]
        return fallocate(descriptor, _FALLOC_FL_INSERT_RANGE, 0, length) == 0
    except (OSError, AttributeError):  # no such call here (not Linux, or no glibc)
        return False


def assemble(destination: Path, header: dict[str, Any], payload_path: Path, payload_offset: int = 0, durable: bool = True) -> None:
    """Write preamble, header and payload into `destination` (a temporary name). The payload is
    `payload_path` from `payload_offset` on: an archive's own payload, when only its header changes.
    `durable`: fsync it (a caller writing many files syncs them together instead)."""
    with open(destination, "wb") as out, open(payload_path, "rb") as payload:
        remaining = os.fstat(payload.fileno()).st_size - payload_offset
        out.write(_front(header, remaining))
        out.flush()
        payload.seek(payload_offset)
        while remaining:
            try:
                sent = os.copy_file_range(payload.fileno(), out.fileno(), remaining)
            except OSError:
                sent = 0
            if sent == 0:  # not supported here: copy through user space
                out.seek(0, os.SEEK_END)
                while block := payload.read(8 << 20):
                    out.write(block)
                break
            remaining -= sent
        out.flush()
        if durable:
            os.fsync(out.fileno())


def write_archive(destination: Path, header: dict[str, Any], parts: list[bytes]) -> None:
    """Write preamble, header and a payload held in memory (`parts`, in order) into `destination`
    (a temporary name), not synced: what `assemble` does without a payload file to copy from."""
    descriptor = os.open(destination, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
    try:
        for data in (_front(header, sum(len(part) for part in parts)), *parts):
            _write_all(descriptor, data)
    finally:
        os.close(descriptor)


class _DuplicateKey(ValueError):
    pass


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object whose keys are unique: with two, a reader that keeps the first and one that
    keeps the last (Python's) would see two archives in one header."""
    found = dict(pairs)
    if len(found) != len(pairs):
        seen: set[str] = set()
        raise _DuplicateKey(next(key for key, _ in pairs if key in seen or seen.add(key)))
    return found


class ArchiveFile:
    """Random access to an archive's header and payload; safe to share between threads.

    With `mapped`, chunks are decoded straight out of the archive and object files mapped in
    memory (the native extension's map_file), not out of a copy that pread makes of each: for
    a process that reads the same archives over and over (`zoo serve`), where that copy was a
    sixth of the CPU a download took. The mapped pages are the page cache's, and count in the
    process's resident set while mapped. A file that cannot be mapped, and every file while a
    SIGBUS handler installed after zoo's displaces it (kernels.maps_guarded), is read with pread.
    With `read_once` as well (a reader that decodes each chunk once, as decompress does), each
    chunk's pages leave the process once it is decoded: the resident set stays that of the chunks
    in flight, however large the archive."""

    def __init__(self, path: str | os.PathLike[str], objects_root: str | os.PathLike[str] | None = None,
                 mapped: bool = False, read_once: bool = False) -> None:
        self.path = Path(path)
        self.mapped = mapped and _kernels.map_file is not None
        self.read_once = read_once
        self._map: Any = None  # the whole archive file mapped, once a chunk is read through it
        # Reads in flight: close() lets them finish and closes the file after the last one (its
        # descriptor, closed under a read in another thread, raised raw errors, or was reused).
        self._users, self._closing, self._users_lock = 0, False, threading.Lock()
        # Where the objects a version-3 archive names lie: a zoo keeps its archives among them. Made
        # absolute here, as the archive is opened here: an object read after os.chdir was "missing".
        self.objects_root = (Path(objects_root) if objects_root is not None else self.path.parent.parent).absolute()
        try:
            self._file = _open_regular(self.path)
        except FileNotFoundError:
            raise UnreadableError(f"{self.path}: no such archive") from None
        except IsADirectoryError:
            raise UnreadableError(f"{self.path}: is a folder, not a zoo archive") from None
        except OSError as error:
            if error.errno in OUT_OF_DESCRIPTORS:  # no damage of the archive's
                raise out_of_descriptors(error, self.path) from None
            raise UnreadableError(f"{self.path}: cannot open: {error.strerror}") from None
        try:
            self.header = self._read_header()
        except BaseException:
            self._file.close()
            raise

    def _read_header(self) -> dict[str, Any]:
        self.file_size = os.fstat(self._file.fileno()).st_size
        preamble = os.pread(self._file.fileno(), PREAMBLE.size, 0)
        if len(preamble) < PREAMBLE.size or preamble[:8] != MAGIC:
            raise UnreadableError(f"{self.path}: not a zoo archive")
        _, version, header_crc, length = PREAMBLE.unpack(preamble)
        if version not in VERSIONS:
            raise UnreadableError(f"{self.path}: archive format version {version}; this zoo reads versions {VERSION} to {FEATURES_VERSION}")
        if length > MAX_HEADER_BYTES:
            raise FormatError(f"{self.path}: header length {length} is over the cap of {MAX_HEADER_BYTES}")
        if PREAMBLE.size + length > self.file_size:
            raise FormatError(f"{self.path}: truncated archive (header runs past the end)")
        body = os.pread(self._file.fileno(), length, PREAMBLE.size)
        if crc32(body) != header_crc:
            raise ChecksumError(f"{self.path}: archive header is damaged (checksum mismatch)")
        try:
            header = json.loads(body.decode("utf-8"), object_pairs_hook=_unique_keys)  # bytes would also take UTF-16 and a BOM
        except _DuplicateKey as duplicate:
            raise FormatError(f"{self.path}: archive header has the key {duplicate.args[0]!r} twice in one object") from None
        except (ValueError, UnicodeDecodeError):
            raise FormatError(f"{self.path}: archive header is not valid JSON") from None
        except RecursionError:  # zoo writes a few levels; thousands are an attack or damage
            raise FormatError(f"{self.path}: archive header nests too deep to be a zoo header") from None
        if not isinstance(header, dict):
            raise FormatError(f"{self.path}: archive header is not a JSON object")
        metadata = header.get("metadata")
        if metadata is not None and not isinstance(metadata, dict):  # every reader takes it for an object, as FORMAT.md has it
            raise FormatError(f"{self.path}: archive header's metadata is not a JSON object")
        features = header.get("features", [])
        if not isinstance(features, list) or not all(isinstance(f, str) for f in features):
            raise FormatError(f"{self.path}: archive header has a malformed features list")
        unknown = sorted(set(features) - FEATURES)
        if unknown:
            raise UnreadableError(f"{self.path}: archive needs features this zoo lacks: {', '.join(unknown)}")
        if version != version_of(header):
            raise FormatError(f"{self.path}: a version {version} archive whose header is that of version {version_of(header)}")
        self.payload_start = PREAMBLE.size + length
        self.payload_size = self.file_size - self.payload_start
        return header

    @contextmanager
    def _descriptor(self) -> Iterator[int]:
        """The archive file's descriptor, open until the block ends even if close() comes meanwhile."""
        with self._users_lock:
            if self._closing:
                raise InputError(f"{self.path}: the archive is closed (read it inside its `with` block)")
            self._users += 1
        try:
            yield self._file.fileno()
        finally:
            with self._users_lock:
                self._users -= 1
                last = self._closing and self._users == 0
            if last:
                self._map = None  # one a read made as close() came: unmapped once its views are gone
                self._file.close()

    def read(self, offset: int, length: int, what: str, obj: str | None = None) -> bytes:
        """`length` bytes at `offset` of the payload region, or of object `obj`'s payload region."""
        if obj is None:
            start, size, where = self.payload_start, self.payload_size, self.path
        else:
            where = self.object_file(obj, what)
            remote = _remote(where)
            if remote is not None:  # a zoo on object storage: read by range
                return _read_remote(remote, offset, length, what)
        with (self._own_region() if obj is None else _OBJECT_FILES.held(where, self.path, what)) as (descriptor, start, size):
            if not _within(offset, length, size):
                raise FormatError(f"{where}: {what} lies outside the {'archive' if obj is None else 'object'} (truncated?)")
            data = os.pread(descriptor, length, start + offset)
        if len(data) != length:
            raise FormatError(f"{where}: {what} is truncated")
        return data

    @contextmanager
    def _own_region(self) -> Iterator[tuple[int, int, int]]:
        with self._descriptor() as descriptor:
            yield descriptor, self.payload_start, self.payload_size

    def object_file(self, name: str, what: str) -> Path:
        """Where object `name` lies, its name checked first (64 lowercase hex digits, nothing else)."""
        if not isinstance(name, str) or not OBJECT_NAME.fullmatch(name):
            raise FormatError(f"{self.path}: {what} names an object by something other than a sha256")
        return object_path(self.objects_root, name)

    def object_size(self, name: str, what: str) -> int:
        """The size of object `name`'s payload region."""
        where = self.object_file(name, what)
        remote = _remote(where)
        if remote is not None:
            return remote.region()[1]
        with _OBJECT_FILES.held(where, self.path, what) as (_, _, size):
            return size

    def read_index(self, leaf: dict[str, Any], what: str) -> list[tuple[int, int, int]]:
        return list(INDEX_RECORD.iter_unpack(self.index_table(leaf, what)))

    def index_table(self, leaf: dict[str, Any], what: str) -> bytes:
        """A leaf's chunk index as stored (INDEX_RECORD after INDEX_RECORD), checked against its CRC-32."""
        try:
            (offset, count), expected_crc = leaf["index"], leaf["index_crc32"]
        except (KeyError, TypeError, ValueError):
            raise FormatError(f"{self.path}: {what} has no chunk index") from None
        if any(type(number) is not int for number in (offset, count, expected_crc)):  # noqa: E721 - not 12.0, not true
            raise FormatError(f"{self.path}: {what} has a malformed chunk index")
        table = self.read(offset, count * INDEX_RECORD.size, f"chunk index of {what}", leaf.get("object"))
        if crc32(table) != expected_crc and self._bucket_changed(leaf.get("object"), what):
            table = self.read(offset, count * INDEX_RECORD.size, f"chunk index of {what}", leaf.get("object"))
        if crc32(table) != expected_crc:
            raise ChecksumError(f"{self.path}: chunk index of {what} is damaged (checksum mismatch)")
        return table

    def read_chunk(self, chunk: tuple[int, int, int], what: str, obj: str | None = None) -> bytes:
        offset, length, expected_crc = chunk
        data = self.read(offset, length, what, obj)
        if crc32(data) != expected_crc and self._bucket_changed(obj, what):
            data = self.read(offset, length, what, obj)
        self._check_crc(data, expected_crc, what, obj)
        return data

    def _bucket_changed(self, obj: str | None, what: str) -> bool:
        """Whether object `obj` is read from a bucket whose object under that name this process
        knew otherwise (_remote_changed): a read that failed its checksum is then read again."""
        return obj is not None and _remote_changed(self.object_file(obj, what))

    def _check_crc(self, data: bytes | memoryview, expected: int, what: str, obj: str | None) -> None:
        if crc32(data) != expected:
            where = self.path if obj is None else _where(self.object_file(obj, what))
            raise ChecksumError(f"{where}: {what} is damaged (checksum mismatch)")

    def decode_chunk(self, chunk: tuple[int, int, int], what: str, obj: str | None, decode: Callable[[bytes | memoryview], Any]) -> Any:
        """decode(the chunk as stored, checked against its CRC-32). A mapped archive hands over a
        view of the mapped file; should the file shrink meanwhile, the reads past its new end find
        zeros (native/mapping.c), and whatever decode made of them is refused here. What decode
        returns (a numpy array) must not point into the map (the caller keeps it): it is copied if it does."""
        mapped = self._mapped_view(chunk[0], chunk[1], what, obj) if self.mapped and _kernels.maps_guarded() else None  # type: ignore[misc]
        if mapped is None:
            return decode(self.read_chunk(chunk, what, obj))
        view, position = mapped
        mapping = view.obj
        try:
            self._check_crc(view, chunk[2], what, obj)
            out = decode(view)
            address = out.__array_interface__["data"][0]
            if mapping.address <= address < mapping.address + len(mapping):
                out = out.copy()  # before the check below: a copy made after it could read zeros unseen
        except BaseException:
            self._check_intact(mapping, what, obj)
            raise
        self._check_intact(mapping, what, obj)
        if self.read_once:
            _release_read(mapping, position, chunk[1])
        return out

    def _mapped_view(self, offset: int, length: int, what: str, obj: str | None) -> tuple[memoryview, int] | None:
        """[offset, offset + length) of the payload region through a map, with where it starts in
        the map, or None where there is none or the bytes lie outside it (read() then says what is
        wrong, or reads a file that grew)."""
        if obj is None:
            if self._map is None:
                with self._descriptor() as descriptor:
                    self._map = _map(descriptor, self.path) or False  # False: tried, and not mapped
            mapping, start, size = self._map or None, self.payload_start, self.payload_size
        else:
            where = self.object_file(obj, what)
            if _remote(where) is not None:
                return None
            with _OBJECT_FILES.held(where, self.path, what) as (descriptor, start, size):
                mapping = _OBJECT_FILES.mapping(where, descriptor)
        if mapping is None or not _within(offset, length, size) or start + offset + length > len(mapping):
            return None
        return memoryview(mapping)[start + offset:start + offset + length], start + offset

    def _check_intact(self, mapping: Any, what: str, obj: str | None) -> None:
        if not mapping.damaged:
            return
        where = self.path if obj is None else self.object_file(obj, what)
        if obj is None:
            if self._map is mapping:
                self._map = None  # the next read maps the file as it is now
        else:
            _OBJECT_FILES.forget_map(where, mapping)
        raise FormatError(f"{where}: the file shrank while {what} was read from it (truncated or damaged)")

    def close(self) -> None:
        """Closes the file once the reads in flight are done; reads after this are refused."""
        self._map = None  # unmapped once the last view of it is gone
        with self._users_lock:
            self._closing = True
            idle = self._users == 0
        if idle:
            self._file.close()

    def replaced(self) -> bool:
        """Whether the path no longer names the file this archive has open (removed, or replaced:
        zoo rm, compress --force, gc), so that a long-running reader lets go of its disk space."""
        with self._descriptor() as descriptor:
            return _not_the_file(self.path, descriptor)


def is_archive(path: Path) -> bool:
    """Whether `path` is a file that starts as a .zoo archive does."""
    if not path.is_file():
        return False
    with open(path, "rb") as f:
        return f.read(len(MAGIC)) == MAGIC


def refuse_an_archive(path: Path) -> None:
    """A .zoo archive given as the model to compress: stored as a plain file it would gain
    nothing; its model is what the user means, and decompressing gives it back. (An archive inside
    a folder is one of the folder's files, kept like any other.)"""
    try:
        archive = is_archive(path)
    except OSError:
        return  # said by the read that follows, as for any file
    if archive:
        raise InputError(f"{path}: a zoo archive already; `zoo decompress {path} -o FOLDER` gives back its model to compress anew")


HASH_BLOCK = 256 << 10


def sha256_file(path: Path) -> str:
    """sha256 of a file's bytes, read into one reused block that stays in the core's cache while it
    is hashed: 0.66 CPU-s per GiB here, against 0.77-0.89 for fresh 8 MiB blocks (each a new
    allocation the kernel zeroes, hashed from main memory) and 0.55 for hashing alone."""
    digest = hashlib.sha256()
    block = bytearray(HASH_BLOCK)
    view = memoryview(block)
    with open(path, "rb", buffering=0) as stream:
        while count := stream.readinto(block):
            digest.update(view[:count])
    return digest.hexdigest()


class _ObjectFiles:
    """Open object files shared by every archive of a process (objects are immutable, and many
    models name the same ones): at most _OPEN_OBJECTS stay open beyond those being read."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open: OrderedDict[Path, list[int]] = OrderedDict()  # path -> [descriptor, reads holding it]
        self._regions: dict[Path, tuple[int, int]] = {}
        self._maps: dict[Path, Any] = {}  # open objects that mapped archives read, mapped; closed with them
        self._retired: dict[Path, list[list[int]]] = {}  # forgotten while held: [descriptor, reads holding it]

    def acquire(self, path: Path, archive: Path, what: str) -> int:
        with self._lock:
            held = self._open.get(path)
            if held is not None:
                held[1] += 1
                self._open.move_to_end(path)
                return held[0]
        try:
            try:
                descriptor = _regular_descriptor(path)  # a pipe in an object's place would block for good
            except OSError as error:
                if error.errno not in OUT_OF_DESCRIPTORS or not self._close_idle():
                    raise
                descriptor = _regular_descriptor(path)  # once more, with the idle ones closed
        except FileNotFoundError:
            root = path.parent.parent
            # the archive is an object of that zoo (the root is absolute: ArchiveFile)
            if archive.absolute().parent.parent == root and root.parts[-2:] == ("objects", "sha256"):
                raise MissingObjectError(f"{archive}: {what} lies in object {path.stem[:16]}..., which is missing from the zoo at "
                                         f"{root.parent.parent} (removed since, or lost: `zoo doctor` names the models it breaks)") from None
            raise MissingObjectError(f"{archive}: {what} lies in object {path.stem[:16]}..., which is not in {root} "
                                     "(an archive of a zoo reads from its zoo; `zoo export --archive` makes one that stands alone)") from None
        except OSError as error:
            if error.errno in OUT_OF_DESCRIPTORS:  # no damage of the zoo's
                raise out_of_descriptors(error, archive, "; a model of a zoo reads an object file per tensor") from None
            raise FormatError(f"{path}: cannot open: {error.strerror}") from None
        with self._lock:
            held = self._open.get(path)
            if held is not None:  # another thread opened it meanwhile
                os.close(descriptor)
                held[1] += 1
                return held[0]
            self._open[path] = [descriptor, 1]
            self._trim()
            return descriptor

    @contextmanager
    def held(self, path: Path, archive: Path, what: str) -> Iterator[tuple[int, int, int]]:
        """(descriptor, payload start, payload size) of the object at `path`, open while the block runs."""
        descriptor = self.acquire(path, archive, what)
        try:
            yield (descriptor, *self.region(path, descriptor))
        finally:
            self.release(path, descriptor)

    def release(self, path: Path, descriptor: int) -> None:
        with self._lock:
            held = self._open.get(path)
            if held is None or held[0] != descriptor:  # forgotten while this read held it
                retired = self._retired[path]
                held = next(entry for entry in retired if entry[0] == descriptor)
                held[1] -= 1
                if not held[1]:
                    retired.remove(held)
                    if not retired:
                        del self._retired[path]
                    os.close(descriptor)
                return
            held[1] -= 1
            self._trim()

    def _trim(self) -> None:
        if len(self._open) <= _OPEN_OBJECTS:  # the common case, on every read: nothing to look through
            return
        for path in [p for p, (_, users) in self._open.items() if users == 0][:max(0, len(self._open) - _OPEN_OBJECTS)]:
            os.close(self._open.pop(path)[0])
            self._maps.pop(path, None)
            self._regions.pop(path, None)  # the file there may be another when it is opened again (stored anew)

    def _close_idle(self) -> bool:
        """Close the open objects no read holds; whether there was one."""
        with self._lock:
            idle = [(path, held[0]) for path, held in self._open.items() if held[1] == 0]
            for path, _ in idle:
                del self._open[path]
                self._maps.pop(path, None)
                self._regions.pop(path, None)
        for _, descriptor in idle:
            os.close(descriptor)
        return bool(idle)

    def let_go_of_replaced(self) -> None:
        """Let go of the open objects whose files were removed or replaced on disk: closed where no
        read holds one, else retired, as forget() does. A read holding one while another archive
        was opened kept it in _open, and the next read of that object, by the new archive, read
        the new file's offsets in the old file's bytes (a checksum error for a sound zoo)."""
        closing = []
        with self._lock:
            for path in [path for path, held in self._open.items() if _not_the_file(path, held[0])]:
                held = self._open.pop(path)
                self._maps.pop(path, None)
                self._regions.pop(path, None)
                if held[1]:
                    self._retired.setdefault(path, []).append(held)  # closed by the last release
                else:
                    closing.append(held[0])
        for descriptor in closing:
            os.close(descriptor)

    def forget(self, path: Path) -> None:
        """Let go of the object at `path`, replaced on disk (a damaged object the zoo repaired): the
        next read opens the new file. A read holding the old one keeps its descriptor open."""
        with self._lock:
            held = self._open.pop(path, None)
            self._maps.pop(path, None)
            self._regions.pop(path, None)
            if held is not None and held[1]:
                self._retired.setdefault(path, []).append(held)  # closed by the last release
                held = None
        if held is not None:
            os.close(held[0])

    def mapping(self, path: Path, descriptor: int) -> Any:
        """The object open as `descriptor` mapped (by a read that holds it), or None."""
        with self._lock:
            if not self._current(path, descriptor):  # retired while this read held it: mapped for this read alone
                return _map(descriptor, path) or None
            mapping = self._maps.get(path)
            if mapping is None:
                mapping = self._maps[path] = _map(descriptor, path) or False  # False: tried, and not mapped
            return mapping or None

    def _current(self, path: Path, descriptor: int) -> bool:
        """Whether `descriptor` is the one the object at `path` is open as now. The maps and regions
        are kept by path: one of a descriptor retired since (the file replaced) kept under it was
        handed to every later read of the new file, whose checksums then failed."""
        held = self._open.get(path)
        return held is not None and held[0] == descriptor

    def forget_map(self, path: Path, mapping: Any) -> None:
        with self._lock:
            if self._maps.get(path) is mapping:
                del self._maps[path]

    def region(self, path: Path, descriptor: int) -> tuple[int, int]:
        """(payload start, payload size) of the object open as `descriptor`."""
        with self._lock:
            region = self._regions.get(path) if self._current(path, descriptor) else None
        if region is None:
            preamble = os.pread(descriptor, PREAMBLE.size, 0)
            if len(preamble) < PREAMBLE.size or preamble[:8] != MAGIC or PREAMBLE.unpack(preamble)[1] not in VERSIONS:
                raise FormatError(f"{path}: object is not a zoo archive")
            start = PREAMBLE.size + PREAMBLE.unpack(preamble)[3]
            size = os.fstat(descriptor).st_size - start
            if size < 0:
                raise FormatError(f"{path}: truncated object")
            region = (start, size)
            with self._lock:
                if self._current(path, descriptor):
                    self._regions[path] = region
        return region


_OBJECT_FILES = _ObjectFiles()


def _not_the_file(path: Path, descriptor: int) -> bool:
    try:
        named, opened = os.stat(path), os.fstat(descriptor)
    except OSError:
        return True
    return (named.st_dev, named.st_ino) != (opened.st_dev, opened.st_ino)


def let_go_of_replaced_objects() -> None:
    """This process's open objects that were removed or replaced on disk let go of: the next read opens the file there now."""
    _OBJECT_FILES.let_go_of_replaced()


def object_replaced(path: Path) -> None:
    """Tell this process's readers that the object file at `path` was replaced (_ObjectFiles.forget)."""
    _OBJECT_FILES.forget(path)


def _open_regular(path: Path) -> BinaryIO:
    """`path` opened for reading if it is a regular file: a pipe would block the open (or the
    first read) until someone writes to it, and an archive is read at random offsets anyway."""
    descriptor = _regular_descriptor(path)
    try:
        return open(descriptor, "rb")
    except BaseException:
        os.close(descriptor)
        raise


def _regular_descriptor(path: Path) -> int:
    """A descriptor of `path` for reading, if it is a regular file (_open_regular)."""
    descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)  # a pipe's open does not wait for a writer
    try:
        mode = os.fstat(descriptor).st_mode
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(errno.EISDIR, "Is a directory", str(path))
        if not stat.S_ISREG(mode):
            raise UnreadableError(f"{path}: not a regular file (a pipe, a device or a socket); zoo reads archives from files")
        os.set_blocking(descriptor, True)
        return descriptor
    except BaseException:
        os.close(descriptor)
        raise


def _within(offset: Any, length: Any, size: int) -> bool:
    """Whether [offset, offset + length) are whole numbers inside a region of `size` bytes."""
    return isinstance(offset, int) and isinstance(length, int) and offset >= 0 and length >= 0 and offset + length <= size


# A page faulted in through a map comes with its neighbours in the same aligned window of 64 KiB
# (the kernel's default fault_around_bytes): a chunk's first read maps the tail of the chunk before
# it again. Each read chunk releases the windows it touched, whole.
_FAULT_AROUND = 64 << 10


def _release_read(mapping: Any, position: int, length: int) -> None:
    """Drops the pages of a chunk read through `mapping` from the process, with the rest of the
    windows they share (a neighbour still being read faults them in again)."""
    low = (mapping.address + position) & -_FAULT_AROUND
    high = -(-(mapping.address + position + length) // _FAULT_AROUND) * _FAULT_AROUND
    start = max(low - mapping.address, 0)
    with suppress(OSError):  # advice only: a locked map (mlockall) refuses it, and the pages stay
        mapping.release(start, min(high - mapping.address, len(mapping)) - start)


def _map(descriptor: int, path: Path) -> Any:
    """The whole file open as `descriptor` mapped read-only, or None where it cannot be (empty,
    or no map is free): its reads then take the copying path."""
    try:
        size = os.fstat(descriptor).st_size
        return _kernels.map_file(descriptor, size) if size else None  # type: ignore[misc]
    except OSError:
        return None


# A zoo whose objects live on object storage keeps a local folder (its index, the archives of its
# models); an object missing there is read by range through this hook, which zoo.hub.store sets:
# REMOTE_OBJECTS(path) gives an object with region() -> (payload start, payload size),
# read(offset, length) -> bytes, size() -> its bytes or None, forget() -> whether the object was
# replaced since region() and size() were taken (then taken anew), and `where`, its URL; or None
# when `path` belongs to no such zoo.
REMOTE_OBJECTS: Callable[[Path], Any] | None = None


def _remote(path: Path) -> Any:
    """The bucket's object for `path` where it names an object of a zoo on object storage, else None.
    The bucket is read even where this machine holds a copy (one a build fetched to reuse): a copy
    fetched before the object was collected and stored again by another pipeline is another
    coding of the same name, and a model stored since names the bucket's."""
    return None if REMOTE_OBJECTS is None else REMOTE_OBJECTS(path)


def _where(path: Path) -> Any:
    """What an error names for the object at `path`: its URL where it is read from a bucket (no
    file of this machine's)."""
    remote = _remote(path)
    return path if remote is None else remote.where


def _read_remote(remote: Any, offset: int, length: int, what: str) -> bytes:
    """`length` bytes at `offset` of a bucket object's payload region. The region is remembered
    from the object's first read: where the bytes lie outside it, the object may have been
    replaced since (collected, and stored again coded otherwise), and it is looked at once more."""
    for attempt in range(2):
        start, size = remote.region()
        if _within(offset, length, size):
            try:
                data = remote.read(start + offset, length)
            except StorageError:  # a range past the end of an object cut short since
                if attempt or not remote.forget():
                    raise
                continue
            if len(data) == length or attempt or not remote.forget():
                break
        elif attempt or not remote.forget():
            raise FormatError(f"{remote.where}: {what} lies outside the object (truncated?)")
    if len(data) != length:
        raise FormatError(f"{remote.where}: {what} is truncated")
    return data


def _remote_changed(path: Path) -> bool:
    """Whether the bucket's object for `path` was replaced since this process took its size and
    region (a decode that failed its checksum asks): they are taken again where so."""
    remote = _remote(path)
    return remote is not None and remote.forget()


def object_file_size(path: Path) -> int | None:
    """The bytes of the object file at `path`, on this machine or in the bucket of a zoo on object
    storage (that is read there, whatever copy this machine holds); None where it is missing."""
    remote = _remote(path)
    if remote is not None:
        try:
            return remote.size()
        except (OSError, ZooError):  # the bucket did not answer: reading the object says what is wrong
            return None
    try:
        return path.stat().st_size
    except OSError:
        return None


def parse_region(preamble: bytes, size: int, where: Any) -> tuple[int, int]:
    """(payload start, payload size) of an object of `size` bytes from its first PREAMBLE.size bytes."""
    if len(preamble) < PREAMBLE.size or preamble[:8] != MAGIC or PREAMBLE.unpack(preamble)[1] not in VERSIONS:
        raise FormatError(f"{where}: object is not a zoo archive")
    start = PREAMBLE.size + PREAMBLE.unpack(preamble)[3]
    if size < start:
        raise FormatError(f"{where}: truncated object")
    return start, size - start
