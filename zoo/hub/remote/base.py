"""The storage interface (zoo.hub.remote's Storage), its errors and the figures both backends share."""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from zoo.errors import StorageError  # noqa: F401 - zoo.hub.remote gives it under its own name too

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

    def delete(self, key: str, written_before: float | None = None) -> bool:
        """Remove a key; False when it was not there, or, with `written_before` (Unix time), when
        its last write came after that (`zoo gc`: a writer renewed it since the listing)."""
        raise NotImplementedError


def content_version(data: bytes) -> str:
    """The version of a document where the backend keeps none of its own: its content's sha256."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def check_expectation(key: str, current: tuple[bytes, str] | None, data: bytes, expect: str | None) -> None:
    """Raise PublishConflict unless `current` meets `expect`. Writing what is already there
    succeeds whatever was expected: a retried put that had in fact landed must not fail."""
    if expect == ANY or (current is not None and current[0] == data):
        return
    if expect is ABSENT and current is not None:
        raise PublishConflict(f"{key}: already published by another writer")
    if expect is not ABSENT and (current is None or current[1] != expect):
        raise PublishConflict(f"{key}: changed by another writer since it was read")


# What zoo writes under objects/: objects/sha256/AB/NAME.zoo, NAME 64 hex digits that begin with AB.
OBJECT_KEY = re.compile(r"objects/sha256/([0-9a-f]{2})/\1[0-9a-f]{62}\.zoo")


def object_keys(storage: Storage) -> Iterator[KeyInfo]:
    """The objects a storage holds. A key of another shape under objects/ (a user's notes.txt) is
    not zoo's: counted, collected and checked by no command."""
    return (info for info in storage.list("objects/") if OBJECT_KEY.fullmatch(info.key))
