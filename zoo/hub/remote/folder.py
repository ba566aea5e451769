"""A folder on this machine (or a shared file system) as a zoo's storage: links, renames and a flock."""

from __future__ import annotations

import builtins
import errno
import fcntl
import os
import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, BinaryIO

from zoo.hub.remote.base import ABSENT, REFRESH_SECONDS, KeyInfo, Storage, StorageError, check_expectation, content_version
from zoo.hub.temporaries import locked_temporary, temporary_prefix

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
        with locked_temporary(final.parent, temporary_prefix(final), is_dir=False) as temporary:
            shutil.copyfile(path, temporary)
            fsync_path(temporary)
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
        fsync_path(path)
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
            check_expectation(key, current, data, expect)
            if current is not None and current[0] == data:
                return current[1]
            final.parent.mkdir(parents=True, exist_ok=True)
            with locked_temporary(final.parent, temporary_prefix(final), is_dir=False) as temporary:
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

    def delete(self, key: str, written_before: float | None = None) -> bool:
        try:
            if written_before is not None and self.path(key).stat().st_mtime >= written_before:
                return False
            self.path(key).unlink()
        except FileNotFoundError:
            return False
        _fsync_folder(self.path(key).parent)
        return True


def fsync_path(path: Path) -> None:
    """fsync a file, or a folder's entries."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _fsync_folder(path: Path) -> None:
    with suppress(OSError):  # some file systems refuse fsync on a folder; the rename is done either way
        fsync_path(path)
