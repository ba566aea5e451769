"""Where a zoo's bytes live: a local folder, or an fsspec URL (s3://bucket/prefix, gs://, ...).

The store needs few operations from its storage, and every one of them is "write a new key whole"
or "read": objects are put once under their content key and never changed, a manifest is replaced
whole (conditionally where the backend can), and nothing is renamed in place. The same store code
then runs on a folder and on a bucket (docs/STORE.md, docs/scale-out.md)::

    storage = open_storage("s3://team-zoo/models")      # or a folder, or file:///srv/zoo
    storage.put("objects/sha256/ab/ab12....zoo", local_file)          # True: written, False: there
    version = storage.publish("manifests/m/main/lossless.json", data) # only if absent (ABSENT)
    data, version = storage.read_versioned("manifests/m/main/lossless.json")
    storage.publish("manifests/m/main/lossless.json", new_data, expect=version)  # compare-and-swap

Keys are '/'-separated paths relative to the storage's root. Credentials and the endpoint come from
the usual variables (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION,
or whatever the fsspec backend reads). What each backend guarantees is in docs/scale-out.md.
"""

from __future__ import annotations

import builtins
import errno
import fcntl
import hashlib
import os
import re
import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from zoo.errors import ZooError
from zoo.hub.temporaries import locked_temporary

ABSENT = None  # publish(expect=ABSENT): only when the key does not exist yet (S3: If-None-Match: *)
ANY = "*"  # publish(expect=ANY): replace whatever is there (--force)

# `zoo gc` on object storage spares objects younger than this: a writer's objects precede its
# manifest. A writer that finds its object already there (an identical model, or one a dead writer
# left) refreshes the object's age when it is older than REFRESH_SECONDS, so that it cannot be
# collected before this writer's manifest names it, as long as the writer publishes within
# GC_GRACE_SECONDS - REFRESH_SECONDS (18 hours) of that check.
GC_GRACE_SECONDS = 24 * 3600
REFRESH_SECONDS = 6 * 3600

# S3 allows a single PUT of 5 GiB and 10,000 parts of 5 MiB to 5 GiB per multipart upload. 64 MiB
# parts reach 625 GiB per object, far above an object of zoo (a tensor's payload, an archive).
PART_BYTES = 64 * 2**20
READ_BLOCK_BYTES = 8 * 2**20  # what a remote open() fetches per range request


class StorageError(ZooError):
    """The zoo's storage cannot be reached, read or written (credentials, network, permissions)."""


class PublishConflict(StorageError):
    """A conditional publish lost: the key exists (expect=ABSENT) or holds another version."""


@dataclass(frozen=True)
class KeyInfo:
    key: str
    size: int
    modified: float  # Unix time of the last write
    version: str | None = None  # what publish(expect=...) compares: an S3 ETag, else None until read


class Storage:
    """What the store asks of where its bytes live. Both implementations are safe to use from many
    threads and processes (and, for a bucket, machines) at once."""

    url: str

    def put(self, key: str, path: str | os.PathLike[str], *, if_absent: bool = True,
            refresh_after: float | None = REFRESH_SECONDS, move: bool = False) -> bool:
        """Write the local file `path` under `key`, whole or not at all. With if_absent (an object
        under its content key), an existing key is left as it is and False returned; when that key
        is older than `refresh_after` seconds its age is renewed (see GC_GRACE_SECONDS). Two writers
        putting one key at once both succeed, one of them writing it. Without if_absent the key is
        replaced (a standalone archive with --force). With `move` the caller gives the file up: a
        folder on the same file system links or renames it into place instead of copying it."""
        raise NotImplementedError

    def read(self, key: str) -> bytes:
        raise NotImplementedError

    def read_range(self, key: str, start: int, length: int) -> bytes:
        """`length` bytes from `start` (fewer at the end of the object)."""
        raise NotImplementedError

    def open(self, key: str) -> BinaryIO:
        """A seekable binary file over the object, reading by range as it goes."""
        raise NotImplementedError

    def download(self, key: str, path: str | os.PathLike[str]) -> None:
        raise NotImplementedError

    def stat(self, key: str) -> KeyInfo | None:
        raise NotImplementedError

    def list(self, prefix: str = "") -> Iterator[KeyInfo]:
        """Every key under `prefix` (a folder-like prefix: 'manifests/'), with size and age, sorted."""
        raise NotImplementedError

    def publish(self, key: str, data: bytes, *, expect: str | None = ABSENT) -> str:
        """Put a small document (a manifest) whole and atomically, on a condition: expect=ABSENT,
        only if the key does not exist; expect=VERSION (from read_versioned), only if the key holds
        that version; expect=ANY, whatever is there. Returns the new version; raises
        PublishConflict when the condition does not hold."""
        raise NotImplementedError

    def read_versioned(self, key: str) -> tuple[bytes, str] | None:
        """A document and its version (what publish(expect=) compares), read together; None when absent."""
        raise NotImplementedError

    def delete(self, key: str) -> bool:
        """Remove a key; False when it was not there."""
        raise NotImplementedError


def content_version(data: bytes) -> str:
    """The version of a document where the backend keeps none of its own: its content's sha256."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


# -- a local folder ------------------------------------------------------------------------------


class LocalFolder(Storage):
    """A folder on this machine (or a shared file system): objects enter by link or rename, so a key
    appears whole; documents are replaced by rename under the folder's flock `lock`, which is the
    lock the store itself holds to publish (docs/STORE.md)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).expanduser()
        self.url = str(self.root)
        self._held = 0  # how deep this instance holds the lock: flock is per open file, not reentrant
        self._held_file: Any = None
        self._guard = threading.RLock()

    def path(self, key: str) -> Path:
        parts = key.split("/")
        if not key or any(part in ("", ".", "..") for part in parts):
            raise StorageError(f"{key!r}: not a storage key")
        return self.root.joinpath(*parts)

    @contextmanager
    def lock(self) -> Iterator[None]:
        """The folder's publish lock, reentrant within this instance (and its threads, one at a time)."""
        with self._guard:
            if self._held == 0:
                self.root.mkdir(parents=True, exist_ok=True)
                self._held_file = builtins.open(self.root / "lock", "a")  # noqa: SIM115 - held across the body
                fcntl.flock(self._held_file, fcntl.LOCK_EX)
            self._held += 1
            try:
                yield
            finally:
                self._held -= 1
                if self._held == 0:
                    self._held_file.close()
                    self._held_file = None

    def put(self, key: str, path: str | os.PathLike[str], *, if_absent: bool = True,
            refresh_after: float | None = REFRESH_SECONDS, move: bool = False) -> bool:
        final = self.path(key)
        if if_absent and self._refresh(final, refresh_after):
            return False
        final.parent.mkdir(parents=True, exist_ok=True)
        if move:
            try:
                return self._move_in(Path(path), final, if_absent)
            except OSError as error:
                if error.errno != errno.EXDEV:  # another file system: copied below
                    raise
        with locked_temporary(final.parent, f".{final.name}.zoo-tmp-", is_dir=False) as temporary:
            shutil.copyfile(path, temporary)
            _fsync_file(temporary)
            os.chmod(temporary, 0o444 if if_absent else 0o644)
            if if_absent:
                try:
                    os.link(temporary, final)  # atomic, and fails when another writer got there first
                except FileExistsError:
                    return False
            else:
                os.replace(temporary, final)
        _fsync_folder(final.parent)
        return True

    @staticmethod
    def _move_in(path: Path, final: Path, if_absent: bool) -> bool:
        _fsync_file(path)
        os.chmod(path, 0o444 if if_absent else 0o644)
        if if_absent:
            try:
                os.link(path, final)
            except FileExistsError:
                return False
        else:
            os.replace(path, final)
        _fsync_folder(final.parent)
        return True

    @staticmethod
    def _refresh(final: Path, refresh_after: float | None) -> bool:
        try:
            age = time.time() - final.stat().st_mtime
        except FileNotFoundError:
            return False
        if refresh_after is not None and age > refresh_after:
            with suppress(OSError):
                os.utime(final)
        return True

    def read(self, key: str) -> bytes:
        try:
            return self.path(key).read_bytes()
        except (FileNotFoundError, StorageError):
            raise
        except OSError as error:
            raise StorageError(f"{self.path(key)}: cannot read: {error.strerror or error}") from None

    def read_range(self, key: str, start: int, length: int) -> bytes:
        with builtins.open(self.path(key), "rb") as stream:
            stream.seek(start)
            return stream.read(length)

    def open(self, key: str) -> BinaryIO:
        return builtins.open(self.path(key), "rb")

    def download(self, key: str, path: str | os.PathLike[str]) -> None:
        shutil.copyfile(self.path(key), path)

    def stat(self, key: str) -> KeyInfo | None:
        try:
            status = self.path(key).stat()
        except FileNotFoundError:
            return None
        return KeyInfo(key, status.st_size, status.st_mtime)

    def list(self, prefix: str = "") -> Iterator[KeyInfo]:
        base = self.root / prefix.rstrip("/") if prefix.strip("/") else self.root
        if not base.is_dir():
            return
        found = []
        for folder, subfolders, names in os.walk(base):
            subfolders[:] = [name for name in subfolders if not name.startswith(".")]
            for name in names:
                if name.startswith("."):  # a temporary (.NAME.zoo-tmp-PID-RANDOM) is no key yet
                    continue
                path = Path(folder) / name
                with suppress(FileNotFoundError):
                    status = path.stat()
                    found.append(KeyInfo(path.relative_to(self.root).as_posix(), status.st_size, status.st_mtime))
        yield from sorted(found, key=lambda info: info.key)

    def publish(self, key: str, data: bytes, *, expect: str | None = ABSENT) -> str:
        final = self.path(key)
        with self.lock():
            current = self.read_versioned(key)
            _check_expectation(key, current, data, expect)
            if current is not None and current[0] == data:
                return current[1]
            final.parent.mkdir(parents=True, exist_ok=True)
            with locked_temporary(final.parent, f".{final.name}.zoo-tmp-", is_dir=False) as temporary:
                with builtins.open(temporary, "wb") as stream:
                    stream.write(data)
                    stream.flush()
                    os.fsync(stream.fileno())
                os.chmod(temporary, 0o644)
                os.replace(temporary, final)
            _fsync_folder(final.parent)
        return content_version(data)

    def read_versioned(self, key: str) -> tuple[bytes, str] | None:
        try:
            data = self.path(key).read_bytes()
        except FileNotFoundError:
            return None
        return data, content_version(data)

    def delete(self, key: str) -> bool:
        try:
            self.path(key).unlink()
        except FileNotFoundError:
            return False
        _fsync_folder(self.path(key).parent)
        return True


def _check_expectation(key: str, current: tuple[bytes, str] | None, data: bytes, expect: str | None) -> None:
    """Raise PublishConflict unless `current` meets `expect`. Writing what is already there
    succeeds whatever was expected: a retried put that had in fact landed must not fail."""
    if expect == ANY or (current is not None and current[0] == data):
        return
    if expect is ABSENT and current is not None:
        raise PublishConflict(f"{key}: already published by another writer")
    if expect is not ABSENT and (current is None or current[1] != expect):
        raise PublishConflict(f"{key}: changed by another writer since it was read")


def _fsync_file(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _fsync_folder(path: Path) -> None:
    with suppress(OSError):  # some file systems refuse fsync on a folder; the rename is done either way
        _fsync_file(path)


# -- an fsspec URL -------------------------------------------------------------------------------


def storage_options(protocol: str) -> dict[str, Any]:
    """fsspec options from the environment: for S3, AWS_ENDPOINT_URL (an S3-compatible server such as
    MinIO or moto) and AWS_DEFAULT_REGION; credentials are read by botocore itself. Listings are never
    cached: another machine may have published since."""
    options: dict[str, Any] = {"use_listings_cache": False, "skip_instance_cache": True}
    if protocol in ("s3", "s3a"):
        client: dict[str, Any] = {}
        if os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL"):
            client["endpoint_url"] = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ["AWS_ENDPOINT_URL"]
        if os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION"):
            client["region_name"] = os.environ.get("AWS_DEFAULT_REGION") or os.environ["AWS_REGION"]
        options["client_kwargs"] = client
    return options


def _precondition_failed(error: BaseException) -> bool:
    """s3fs reports S3's 412 (and 409 ConditionalRequestConflict, two conditional writes at once)
    as FileExistsError or as an OSError whose cause is botocore's ClientError."""
    if isinstance(error, FileExistsError):
        return True
    cause = error.__cause__
    code = getattr(cause, "response", {}).get("Error", {}).get("Code") if cause is not None else None
    return code in ("PreconditionFailed", "ConditionalRequestConflict", "412", "409")


def _backend_errors() -> tuple[type[BaseException], ...]:
    """What a backend raises that is not an OSError: botocore's connection and client errors."""
    try:
        from botocore.exceptions import BotoCoreError, ClientError
    except ImportError:
        return ()
    return (BotoCoreError, ClientError)


class FsspecStorage(Storage):
    """A bucket or any fsspec file system. On S3 (and S3-compatible servers) a put-if-absent and a
    publish are conditional writes evaluated by the server (If-None-Match: *, If-Match: ETag);
    elsewhere they are a check followed by a write (docs/scale-out.md says what that allows)."""

    def __init__(self, url: str, **options: Any) -> None:
        import fsspec

        self.url = url.rstrip("/")
        protocol = fsspec.core.split_protocol(self.url)[0] or "file"
        self.protocol = protocol
        self.conditional = protocol in ("s3", "s3a")
        try:
            self.fs, self.root = fsspec.core.url_to_fs(self.url, **{**storage_options(protocol), **options})
        except ImportError as error:
            raise StorageError(f"{url}: {error} (pip install 'zoo[cloud]')") from None
        self.root = self.root.rstrip("/")
        self.part_bytes = PART_BYTES

    def path(self, key: str) -> str:
        if not key or any(part in ("", ".", "..") for part in key.split("/")):
            raise StorageError(f"{key!r}: not a storage key")
        return f"{self.root}/{key}"

    def _key(self, path: str) -> str:
        return path[len(self.root) + 1:] if path.startswith(self.root + "/") else path

    @contextmanager
    def _errors(self, key: str, doing: str) -> Iterator[None]:
        try:
            yield
        except (FileNotFoundError, PublishConflict):
            raise
        except (OSError, ValueError, *_backend_errors()) as error:
            raise StorageError(f"{self.url}/{key}: cannot {doing}: {error}") from None

    def put(self, key: str, path: str | os.PathLike[str], *, if_absent: bool = True,
            refresh_after: float | None = REFRESH_SECONDS, move: bool = False) -> bool:
        target = self.path(key)  # `move` changes nothing here: the upload is a copy either way
        with self._errors(key, "write"):
            if if_absent:
                existing = self.stat(key)
                if existing is not None:
                    if refresh_after is not None and time.time() - existing.modified > refresh_after:
                        self.fs.put_file(os.fspath(path), target, chunksize=self.part_bytes)  # the same bytes: only its age changes
                    return False
                if self.conditional:
                    try:
                        self.fs.put_file(os.fspath(path), target, mode="create", chunksize=self.part_bytes)
                    except OSError as error:
                        if _precondition_failed(error):
                            return False  # another writer put it between our look and our write
                        raise
                    return True
            # Elsewhere a second writer of the same content key may write it again: the same bytes.
            self.fs.put_file(os.fspath(path), target, **({"chunksize": self.part_bytes} if self.conditional else {}))
        return True

    def read(self, key: str) -> bytes:
        with self._errors(key, "read"):
            return self.fs.cat_file(self.path(key))

    def read_range(self, key: str, start: int, length: int) -> bytes:
        with self._errors(key, "read"):
            return self.fs.cat_file(self.path(key), start=start, end=start + length)

    def open(self, key: str) -> BinaryIO:
        with self._errors(key, "open"):
            return self.fs.open(self.path(key), "rb", block_size=READ_BLOCK_BYTES, cache_type="readahead")

    def download(self, key: str, path: str | os.PathLike[str]) -> None:
        with self._errors(key, "read"):
            self.fs.get_file(self.path(key), os.fspath(path))

    def stat(self, key: str) -> KeyInfo | None:
        try:
            info = self.fs.info(self.path(key))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, *_backend_errors()) as error:
            raise StorageError(f"{self.url}/{key}: cannot look at it: {error}") from None
        return None if info.get("type") == "directory" else self._info(info)

    def _info(self, info: dict[str, Any]) -> KeyInfo:
        modified = info.get("LastModified") or info.get("mtime") or info.get("updated") or info.get("created") or 0
        if hasattr(modified, "timestamp"):
            modified = modified.timestamp()
        elif isinstance(modified, str):
            from datetime import datetime

            modified = datetime.fromisoformat(modified.replace("Z", "+00:00")).timestamp()
        version = info.get("ETag") or info.get("etag")
        return KeyInfo(self._key(info["name"]), int(info.get("size") or 0), float(modified), version)

    def list(self, prefix: str = "") -> Iterator[KeyInfo]:
        base = f"{self.root}/{prefix.strip('/')}" if prefix.strip("/") else self.root
        with self._errors(prefix or "/", "list"):
            try:
                found = self.fs.find(base, detail=True)
            except FileNotFoundError:
                return
        infos = [self._info(info) for info in found.values() if info.get("type") != "directory"]
        yield from sorted(infos, key=lambda info: info.key)

    def publish(self, key: str, data: bytes, *, expect: str | None = ABSENT) -> str:
        target = self.path(key)
        with self._errors(key, "publish"):
            if not self.conditional:
                return self._publish_by_check(key, data, expect)
            condition = {} if expect == ANY else {"mode": "create"} if expect is ABSENT else {"IfMatch": expect}
            try:
                response = self.fs.pipe_file(target, data, **condition)
            except OSError as error:
                gone = isinstance(error, FileNotFoundError) and expect not in (ABSENT, ANY)  # If-Match on a missing key: 404
                if not (gone or _precondition_failed(error)):
                    raise
                current = self.read_versioned(key)
                if current is not None and current[0] == data:  # a retried put whose first try had landed
                    return current[1]
                raise PublishConflict(f"{self.url}/{key}: " + ("already published by another writer" if expect is ABSENT
                                                              else "changed by another writer since it was read")) from None
            version = (response or {}).get("ETag") if isinstance(response, dict) else None
            return version or self.stat(key).version

    def _publish_by_check(self, key: str, data: bytes, expect: str | None) -> str:
        """Where the server evaluates no condition: look, then write. Two writers can both pass the
        look; the later write wins whole (never a mix), and docs/scale-out.md says how to avoid it."""
        _check_expectation(key, self.read_versioned(key), data, expect)
        self.fs.pipe_file(self.path(key), data)
        return content_version(data)

    def read_versioned(self, key: str) -> tuple[bytes, str] | None:
        with self._errors(key, "read"):
            if not self.conditional:
                try:
                    data = self.fs.cat_file(self.path(key))
                except FileNotFoundError:
                    return None
                return data, content_version(data)
            return self._get_with_etag(key)

    def _get_with_etag(self, key: str) -> tuple[bytes, str] | None:
        """One GET returns the bytes and the ETag of the same version (two calls could straddle a publish)."""
        from fsspec.asyn import sync

        bucket, object_key, _ = self.fs.split_path(self.path(key))

        async def get() -> tuple[bytes, str] | None:
            try:
                response = await self.fs._call_s3("get_object", Bucket=bucket, Key=object_key)
            except FileNotFoundError:
                return None
            async with response["Body"] as body:
                return await body.read(), response["ETag"]

        return sync(self.fs.loop, get)

    def delete(self, key: str) -> bool:
        existed = self.stat(key) is not None  # S3 answers a DELETE of a missing key as one that was there
        with self._errors(key, "delete"):
            try:
                self.fs.rm_file(self.path(key))
            except FileNotFoundError:
                return False
        return existed


# -- choosing one, and where a remote zoo's index lives --------------------------------------------


_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_url(location: str | os.PathLike[str]) -> bool:
    """True for `s3://...`, `gs://...`, `file://...`; a path (even one with a colon) is not a URL."""
    return isinstance(location, str) and bool(_URL.match(location))


def open_storage(location: str | os.PathLike[str], **options: Any) -> Storage:
    """The storage at `location`: a folder path or file:// URL (a LocalFolder, with its flock and
    renames), or any other fsspec URL. `options` go to the fsspec file system."""
    if is_url(location):
        text = str(location)
        if text.startswith("file://"):
            return LocalFolder(text[len("file://"):])
        return FsspecStorage(text, **options)
    return LocalFolder(location)


def index_home(location: str) -> Path:
    """The local folder for a remote zoo's SQLite index and work files: ZOO_INDEX_HOME, else
    zoo-indexes/ under the user's cache (XDG_CACHE_HOME, else ~/.cache), one folder per zoo keyed by
    its URL and, for S3, its endpoint (the same bucket name on two servers is two zoos). Kept
    out of ~/.cache/zoo, the default local zoo, so that its `zoo doctor` never meets them."""
    root = os.environ.get("ZOO_INDEX_HOME")
    if not root:
        cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        root = os.path.join(cache, "zoo-indexes")
    url = location.rstrip("/")
    identity = url
    if url.startswith(("s3://", "s3a://")):
        identity += " " + (os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or "aws")
    readable = re.sub(r"[^A-Za-z0-9._-]+", "-", url.split("://", 1)[-1]).strip("-")[:80]
    return Path(root) / f"{readable}-{hashlib.sha256(identity.encode()).hexdigest()[:16]}"


def fetch(url: str, destination: str | os.PathLike[str]) -> Path:
    """Copy a source given as a URL (a model folder or one file in a bucket) to `destination`, a
    local folder, and return the local path of what was fetched: how a worker reads `zoo compress
    s3://bucket/model-folder` until the sources read by range themselves."""
    import fsspec

    protocol = fsspec.core.split_protocol(url)[0] or "file"
    fs, path = fsspec.core.url_to_fs(url.rstrip("/"), **storage_options(protocol))
    target = Path(destination) / (path.rstrip("/").rsplit("/", 1)[-1] or "model")
    try:
        if fs.isdir(path):
            for remote in fs.find(path):
                local = target / remote[len(path.rstrip("/")) + 1:]
                local.parent.mkdir(parents=True, exist_ok=True)
                fs.get_file(remote, os.fspath(local))
        else:
            fs.get_file(path, os.fspath(target))
    except FileNotFoundError:
        raise StorageError(f"{url}: no such file or folder") from None
    except OSError as error:
        raise StorageError(f"{url}: cannot read: {error}") from None
    return target
