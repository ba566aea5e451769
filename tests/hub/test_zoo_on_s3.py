"""The zoo with ZOO_HOME an s3:// URL, against a real S3-compatible server (moto on 127.0.0.1,
tests/services.py): objects and manifests in the bucket, each machine an index of its own, objects
read by range, two machines writing at once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import zoo
from zoo.api import compress_into
from zoo.hub.store import Store

from tests.hub.test_dedup import base_tensors, fine_tuned, write_model
from tests.hub.test_store import hashes

ROOT = Path(__file__).resolve().parents[2]


def machine(tmp_path: Path, name: str, url: str, monkeypatch: pytest.MonkeyPatch) -> Store:
    """A Store as one machine sees the zoo at `url`: its own index folder."""
    monkeypatch.setenv("ZOO_INDEX_HOME", str(tmp_path / f"{name}-index"))
    return Store(url)


def test_a_zoo_in_a_bucket_is_seen_whole_from_a_fresh_machine(bucket, tmp_path, monkeypatch):
    url = f"{bucket}/team/zoo"
    first = machine(tmp_path, "first", url, monkeypatch)
    base = write_model(tmp_path / "base", base_tensors())
    tuned = write_model(tmp_path / "tuned", fine_tuned(base_tensors(), 1, share=0.1), base_name="base")
    compress_into(first, base, "base")
    entry = compress_into(first, tuned, "tuned")
    assert entry.base["ref"] == "base@main:lossless"
    assert not list((first.home / "objects").rglob("*.zoo")) or all(
        p.stat().st_size < 64 << 10 for p in (first.home / "objects").rglob("*.zoo"))  # only the models' archives stay here

    fresh = machine(tmp_path, "fresh", url, monkeypatch)
    assert sorted(e.name for e in fresh.entries()) == ["base", "tuned"]
    found = fresh.resolve("tuned")
    zoo.decompress(found.archive, tmp_path / "out")  # its tensors read by range from the bucket
    assert hashes(tmp_path / "out") == hashes(tuned)
    with zoo.open(found.archive) as opened:
        assert sorted(opened.keys()) == sorted(base_tensors())
    fresh.remove("tuned")
    assert [e.name for e in machine(tmp_path, "third", url, monkeypatch).entries()] == ["base"]
    assert fresh.gc() == []  # what tuned alone named is younger than the grace period: kept for now


def test_two_machines_write_one_bucket_at_once(bucket, tmp_path, s3_server):
    url = f"{bucket}/zoo"
    models = {}
    for name in ("shared", "a", "b"):
        models[name] = write_model(tmp_path / name, base_tensors(seed={"shared": 0, "a": 10, "b": 20}[name]))
    script = ("import sys; from zoo.api import compress_into; from zoo.hub.store import Store; from zoo.errors import OutputExistsError\n"
              "store = Store(sys.argv[1])\n"
              "compress_into(store, sys.argv[2], sys.argv[3])\n"
              "try:\n    compress_into(store, sys.argv[4], 'shared')\nexcept OutputExistsError:\n    pass\n")
    environment = {**os.environ, **s3_server}
    writers = [subprocess.Popen([sys.executable, "-c", script, url, str(models[name]), name, str(models["shared"])],
                                env={**environment, "ZOO_INDEX_HOME": str(tmp_path / f"index-{name}")}, cwd=ROOT)
               for name in ("a", "b")]
    assert [w.wait(timeout=300) for w in writers] == [0, 0]
    for name in ("a", "b"):
        listed = subprocess.run([sys.executable, "-m", "zoo", "ls", "--json"], capture_output=True, text=True, cwd=ROOT,
                                env={**environment, "ZOO_HOME": url, "ZOO_INDEX_HOME": str(tmp_path / f"index-{name}")})
        assert sorted(m["name"] for m in json.loads(listed.stdout)["models"]) == ["a", "b", "shared"], listed.stderr
    reader = Store.__new__(Store)
    os.environ.update(s3_server)
    try:
        os.environ["ZOO_INDEX_HOME"] = str(tmp_path / "index-reader")
        reader = Store(url)
        for name in ("a", "b", "shared"):
            zoo.decompress(reader.resolve(name).archive, tmp_path / f"out-{name}")
            assert hashes(tmp_path / f"out-{name}") == hashes(models[name])
    finally:
        os.environ.pop("ZOO_INDEX_HOME", None)
        for key in s3_server:
            os.environ.pop(key, None)
