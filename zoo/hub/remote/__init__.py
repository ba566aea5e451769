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

import hashlib
import os
import re
from pathlib import Path
from typing import Any

from zoo.hub.remote.base import (
    ABSENT, ANY, GC_GRACE_SECONDS, PART_BYTES, READ_BLOCK_BYTES, REFRESH_SECONDS, KeyInfo, PublishConflict, Storage, StorageError,
    content_version, object_keys,
)
from zoo.hub.remote.bucket import FsspecStorage, fetch, storage_options
from zoo.hub.remote.folder import LocalFolder

__all__ = ["ABSENT", "ANY", "GC_GRACE_SECONDS", "PART_BYTES", "READ_BLOCK_BYTES", "REFRESH_SECONDS", "FsspecStorage", "KeyInfo",
           "LocalFolder", "PublishConflict", "Storage", "StorageError", "content_version", "fetch", "index_home", "is_url", "object_keys", "open_storage",
           "storage_options"]

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_url(location: str | os.PathLike[str]) -> bool:
    """True for `s3://...`, `gs://...`, `file://...`; a path (even one with a colon) is not a URL."""
    return isinstance(location, str) and bool(_URL.match(location))


READ_ONLY_PROTOCOLS = ("http", "https", "hf", "github", "zip", "tar", "libarchive")  # fsspec's, that no zoo can live on


def open_storage(location: str | os.PathLike[str], **options: Any) -> Storage:
    """The storage at `location`: a folder path or file:// URL (a LocalFolder, with its flock and
    renames), or any other fsspec URL. `options` go to the fsspec file system."""
    if is_url(location):
        text = str(location)
        protocol, _, rest = text.partition("://")
        if not rest.strip("/"):
            raise StorageError(f"{text}: the URL names no bucket or folder")
        if text.startswith("file://"):
            return LocalFolder(text[len("file://"):])
        if "//" in rest.rstrip("/") or rest.startswith("/"):  # s3://b//zoo: the bucket's listings drop the empty level, and
            raise StorageError(f"{text}: the URL has an empty part between slashes; "  # every key read back was "missing"
                               f"write it as {protocol}://{'/'.join(part for part in rest.split('/') if part)}")
        if protocol.lower() in READ_ONLY_PROTOCOLS:  # fsspec reads them, listing links in HTML pages, and writes nothing
            raise StorageError(f"{text}: zoo cannot keep a zoo over {protocol}, which cannot be listed or written; a zoo "
                               "lives in a folder or a bucket (s3://...), and `zoo serve` hands one out over HTTP")
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
