"""The evaluation's reference cache on disk: bounded, least recently used out first, and only its
own files touched."""

from __future__ import annotations

import os

import torch

from zoo.evaluate.cache import ReferenceCache, cache_key


def entry(values: int) -> dict[str, torch.Tensor]:
    return {"top_logprobs": torch.arange(values, dtype=torch.float32)}


def age(cache: ReferenceCache, key: str, seconds_ago: float) -> None:
    path = cache._path(key)
    stamp = path.stat().st_mtime - seconds_ago
    os.utime(path, (stamp, stamp))


def test_least_recently_used_entries_go_first(tmp_path):
    writer = ReferenceCache(tmp_path, limit=10_000)
    keys = [cache_key(f"reference {i}") for i in range(3)]
    for number, key in enumerate(keys[:2]):
        writer.put(key, entry(1000))  # ~4 KB each: two fit under the limit
        age(writer, key, 100 - number)
    # a fresh process reads the oldest one: that use makes it the most recent
    assert ReferenceCache(tmp_path, limit=10_000).get(keys[0]) is not None
    writer.put(keys[2], entry(1000))
    on_disk = {path.name for path in tmp_path.iterdir()}
    assert on_disk == {f"{keys[0]}.safetensors", f"{keys[2]}.safetensors"}


def test_an_entry_over_the_limit_is_kept_and_other_files_are_left_alone(tmp_path):
    mine = tmp_path / "model.safetensors"
    mine.write_bytes(b"x" * 50_000)
    cache = ReferenceCache(tmp_path, limit=1_000)
    key = cache_key("big reference")
    cache.put(key, entry(1000))
    assert mine.read_bytes() == b"x" * 50_000
    assert (tmp_path / f"{key}.safetensors").exists()
    assert torch.equal(ReferenceCache(tmp_path, limit=1_000).get(key)["top_logprobs"], entry(1000)["top_logprobs"])


def test_a_cache_folder_whose_disk_is_full_costs_only_time(tmp_path):
    # safetensors says a write that fails (a full disk) as SafetensorError, not OSError: `--eval`
    # and `zoo eval` ended in "unexpected SafetensorError (a bug in zoo)". A file size limit makes
    # the write fail as a full disk does.
    import subprocess
    import sys

    script = f"""
import pathlib, resource, signal, torch
from zoo.evaluate.cache import ReferenceCache, cache_key
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
cache = ReferenceCache(pathlib.Path({str(tmp_path)!r}), limit=1 << 30)
key = cache_key("reference")
cache.put(key, {{"top_logprobs": torch.arange(100_000, dtype=torch.float32)}})
assert cache.get(key) is not None  # kept in memory for this run
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []
