"""The reference's outputs, kept so that scoring many candidates against one reference runs the
reference once. Entries live in memory for the process and on disk as safetensors files named by
a hash of everything they depend on (the reference's fingerprint, the tokens, the settings).
The folder is kept under DISK_LIMIT bytes: writing an entry removes the least recently used ones
(a read touches its file) until the rest fit."""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

MEMORY_ENTRIES = 4
# A causal LM's entry is its top-256 log-probs per token (about 2 KB a token): 2 GiB holds the
# references of many models at the default --max-tokens, and an evaluation loop no longer grows
# ~/.cache without end.
DISK_LIMIT = 2 << 30
_ENTRY_NAME = re.compile(r"[0-9a-f]{64}\.safetensors")


def is_reference_file(name: str) -> bool:
    """Whether a file's name is one this cache gives a reference's outputs."""
    return bool(_ENTRY_NAME.fullmatch(name))


def cache_dir() -> Path:
    """$ZOO_EVAL_CACHE, else $XDG_CACHE_HOME/zoo/eval, else ~/.cache/zoo/eval."""
    if os.environ.get("ZOO_EVAL_CACHE"):
        return Path(os.environ["ZOO_EVAL_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "zoo" / "eval"


def cache_key(*parts: str | bytes) -> str:
    digest = hashlib.sha256()
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    return digest.hexdigest()


class ReferenceCache:
    def __init__(self, folder: Path | None = None, disk: bool = True, limit: int = DISK_LIMIT) -> None:
        self.folder = folder
        self.disk = disk
        self.limit = limit
        self._memory: OrderedDict[str, dict[str, Any]] = OrderedDict()

    def _path(self, key: str) -> Path:
        return (self.folder or cache_dir()) / f"{key}.safetensors"

    def get(self, key: str) -> dict[str, Any] | None:
        if key in self._memory:
            self._memory.move_to_end(key)
            return self._memory[key]
        if not self.disk:
            return None
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        path = self._path(key)
        try:
            entry = load_file(path)
        except (OSError, SafetensorError):  # absent, or damaged: computing it again is the cure
            return None
        try:
            os.utime(path)  # recently used: the last to be evicted
        except OSError:
            pass
        self._remember(key, entry)
        return entry

    def put(self, key: str, entry: dict[str, Any]) -> None:
        self._remember(key, entry)
        if not self.disk:
            return
        from safetensors import SafetensorError
        from safetensors.torch import save_file

        path = self._path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
            os.close(handle)
            try:
                save_file({name: tensor.contiguous() for name, tensor in entry.items()}, temporary)
                os.replace(temporary, path)
            finally:
                Path(temporary).unlink(missing_ok=True)
            self._evict(keep=path)
        except (OSError, SafetensorError):  # safetensors says a full disk as SafetensorError, not OSError
            pass  # a read-only or full cache folder only costs the next run some time

    def _evict(self, keep: Path) -> None:
        """Remove the least recently used entries until the folder holds at most `limit` bytes
        (the entry just written stays, even alone over the limit). Only files named as entries
        (a sha256 in hex) are counted or removed: $ZOO_EVAL_CACHE may name a folder that holds
        other things."""
        entries = []
        for path in keep.parent.glob("*.safetensors"):
            if not _ENTRY_NAME.fullmatch(path.name):
                continue
            try:
                stat = path.stat()
            except OSError:  # removed meanwhile by another process
                continue
            entries.append((stat.st_mtime, stat.st_size, path))
        total = sum(size for _, size, _ in entries)
        for _, size, path in sorted(entries, key=lambda entry: entry[0]):
            if total <= self.limit:
                break
            if path != keep:
                path.unlink(missing_ok=True)
                total -= size

    def _remember(self, key: str, entry: dict[str, Any]) -> None:
        self._memory[key] = entry
        self._memory.move_to_end(key)
        while len(self._memory) > MEMORY_ENTRIES:
            self._memory.popitem(last=False)


SHARED = ReferenceCache()
