"""A bucket (s3://, and any fsspec URL) as a zoo's storage: conditional writes where S3 has them."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

from zoo.hub.remote.base import (
    ABSENT, ANY, PART_BYTES, READ_BLOCK_BYTES, REFRESH_SECONDS, KeyInfo, PublishConflict, Storage, StorageError, check_expectation,
    content_version,
)

# Object stores whose URL starts with a bucket (s3://BUCKET/prefix): a missing one is an error.
BUCKET_PROTOCOLS = ("s3", "s3a", "gs", "gcs", "az", "abfs", "abfss")


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
    """What a backend raises that is not an OSError: botocore's connection and client errors, and
    aiohttp's, which s3fs lets through from a body it streams (a connection cut mid-download gives
    ClientPayloadError), and a read that timed out."""
    import asyncio

    errors: tuple[type[BaseException], ...] = (asyncio.TimeoutError,)
    try:
        from botocore.exceptions import BotoCoreError, ClientError

        errors += (BotoCoreError, ClientError)
    except ImportError:
        pass
    try:
        from aiohttp import ClientError as ConnectionFailure

        errors += (ConnectionFailure,)
    except ImportError:
        pass
    return errors


def _addressable(key: str) -> bool:
    return bool(key) and not any(part in ("", ".", "..") for part in key.split("/"))


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
        except ValueError as error:  # "Protocol not known: foo"
            raise StorageError(f"{url}: {error}") from None
        self.root = self.root.rstrip("/")
        self.part_bytes = PART_BYTES
        self._bucket_seen = protocol not in BUCKET_PROTOCOLS  # a folder that is not there yet is an empty zoo

    def path(self, key: str) -> str:
        if not _addressable(key):
            raise StorageError(f"{key!r}: not a storage key")
        return f"{self.root}/{key}"

    def _key(self, path: str) -> str:
        return path[len(self.root) + 1:] if path.startswith(self.root + "/") else path

    def require_bucket(self) -> None:
        """A bucket that is not there is an error, not an empty zoo: a typo in ZOO_HOME would
        otherwise list as one, verify as healthy, and fail only at the first write. Asked once,
        when something was not found."""
        if self._bucket_seen:
            return
        bucket = self.root.split("/", 1)[0]
        try:
            found = self.fs.exists(bucket)
        except (OSError, ValueError, *_backend_errors()) as error:
            raise StorageError(f"{self.url}: cannot look at the bucket {bucket!r}: {error}") from None
        if not found:
            # ZOO_HOME is named only where it is this URL: `compress -o s3://...` names a bucket of its own
            named_by = "ZOO_HOME" if os.environ.get("ZOO_HOME", "").strip().rstrip("/") == self.url else "the URL"
            raise StorageError(f"{self.url}: the bucket {bucket!r} does not exist (create it, or check {named_by})")
        self._bucket_seen = True

    @contextmanager
    def _errors(self, key: str, doing: str) -> Iterator[None]:
        try:
            yield
        except FileNotFoundError:
            self.require_bucket()
            raise
        except PublishConflict:
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
                        self._renew(target)
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

    def _renew(self, target: str) -> None:
        """Give the object at `target` a new age by copying it onto itself in the store: its bytes
        stay the store's. The caller's file has the same name, not always the same bytes: a
        lossless tensor's name is what it decodes to, and two pipelines code it two ways, so
        putting it again replaced another model's coding with this one's. On S3 a copy onto itself
        must replace the (empty) metadata, and one of several parts is copied part by part, as it
        was put (the ETag stays the same)."""
        if self.conditional:
            self.fs.copy(target, target, preserve_etag=True, MetadataDirective="REPLACE")
        else:
            self.fs.copy(target, target)

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
                found = {}
            if not found:
                self.require_bucket()
        infos = [self._info(info) for info in found.values() if info.get("type") != "directory"]
        # a key with an empty, . or .. part (manifests//note.json) is none zoo writes or can address
        yield from sorted((info for info in infos if _addressable(info.key)), key=lambda info: info.key)

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
        check_expectation(key, self.read_versioned(key), data, expect)
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

    def delete(self, key: str, written_before: float | None = None) -> bool:
        found = self.stat(key)  # S3 answers a DELETE of a missing key as one that was there
        if found is None or (written_before is not None and found.modified >= written_before):
            return False
        with self._errors(key, "delete"):
            try:
                self.fs.rm_file(self.path(key))
            except FileNotFoundError:
                return False
        return True


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
