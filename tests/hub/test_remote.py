"""zoo.hub.remote: the same contract on a local folder and on a bucket of a real S3-compatible server
(moto on 127.0.0.1, tests/services.py), including two processes writing one key at once."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import pytest

from zoo.hub.remote import (
    ABSENT, ANY, FsspecStorage, LocalFolder, PublishConflict, Storage, StorageError, content_version, fetch, index_home, is_url,
    open_storage,
)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(params=["folder", "bucket"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    if request.param == "folder":
        return open_storage(tmp_path / "zoo")
    return open_storage(request.getfixturevalue("bucket") + "/team/zoo")


def _file(folder: Path, name: str, data: bytes) -> Path:
    path = folder / name
    path.write_bytes(data)
    return path


def test_open_storage_chooses_by_location(tmp_path: Path) -> None:
    assert isinstance(open_storage(tmp_path), LocalFolder)
    assert isinstance(open_storage(f"file://{tmp_path}"), LocalFolder)
    assert open_storage(f"file://{tmp_path}").root == tmp_path
    assert is_url("s3://bucket/prefix") and is_url("gs://bucket") and not is_url("C:/models") and not is_url("models/a")


@pytest.mark.parametrize("url, error", [
    ("https://zoo.invalid/team", "zoo cannot keep a zoo over https"),  # verify and doctor said ok of a host never reached
    ("foo://x", "Protocol not known: foo"),  # was "unexpected ValueError (a bug in zoo)"
    ("s3://", "the URL names no bucket or folder"),  # was the local folder `s3:`
    ("s3://team//zoo", "an empty part between slashes; write it as s3://team/zoo"),  # listed as empty, verify said ok
    ("s3:///team/zoo", "an empty part between slashes; write it as s3://team/zoo"),
])
def test_a_url_no_zoo_can_live_at_is_one_error(url: str, error: str, tmp_path: Path) -> None:
    with pytest.raises(StorageError, match=error):
        open_storage(url)
    for command in (["ls"], ["verify"], ["doctor"]):
        done = subprocess.run([sys.executable, "-m", "zoo", *command], capture_output=True, text=True, cwd=tmp_path,
                              env={**os.environ, "ZOO_HOME": url, "ZOO_INDEX_HOME": str(tmp_path / "indexes")}, check=False)
        assert done.returncode == 1 and done.stderr.count("\n") == 1 and error in done.stderr, (command, done.stderr)


def test_an_archive_url_without_a_folder_is_refused(tmp_path: Path) -> None:
    """`-o foo://x.zoo`: the archive's folder `foo:/` was taken for a local folder, made and written."""
    done = subprocess.run([sys.executable, "-m", "zoo", "compress", ROOT / "README.md", "-o", "foo://x.zoo"], capture_output=True,
                          text=True, cwd=tmp_path, check=False)
    assert done.returncode == 1 and "the URL names no bucket or folder" in done.stderr and list(tmp_path.iterdir()) == []


def test_put_if_absent_read_and_ranges(storage: Storage, tmp_path: Path) -> None:
    data = os.urandom(100_000)
    key = f"objects/sha256/ab/{hashlib.sha256(data).hexdigest()}.zoo"
    assert storage.stat(key) is None
    assert storage.put(key, _file(tmp_path, "object", data)) is True
    assert storage.put(key, _file(tmp_path, "again", data)) is False  # a content key is written once
    assert storage.read(key) == data
    assert storage.read_range(key, 1000, 4096) == data[1000:5096]
    assert storage.read_range(key, 99_990, 100) == data[99_990:]  # short at the end
    with storage.open(key) as stream:
        stream.seek(50_000)
        assert stream.read(10) == data[50_000:50_010]
    info = storage.stat(key)
    assert info.size == len(data) and abs(info.modified - time.time()) < 600
    storage.download(key, tmp_path / "copy")
    assert (tmp_path / "copy").read_bytes() == data


def test_put_replaces_only_when_asked(storage: Storage, tmp_path: Path) -> None:
    assert storage.put("archives/a.zoo", _file(tmp_path, "one", b"one")) is True
    assert storage.put("archives/a.zoo", _file(tmp_path, "two", b"two")) is False
    assert storage.read("archives/a.zoo") == b"one"
    assert storage.put("archives/a.zoo", _file(tmp_path, "two", b"two"), if_absent=False) is True
    assert storage.read("archives/a.zoo") == b"two"


def test_an_old_object_found_again_is_made_young(storage: Storage, tmp_path: Path) -> None:
    """A writer relying on an object that is already there renews its age, so that `zoo gc`'s grace
    period covers this writer's manifest too."""
    key = "objects/sha256/cd/cd.zoo"
    storage.put(key, _file(tmp_path, "object", b"payload"))
    first = storage.stat(key).modified
    time.sleep(1.1)  # S3 keeps whole seconds
    assert storage.put(key, tmp_path / "object", refresh_after=None) is False
    assert storage.stat(key).modified == first
    assert storage.put(key, tmp_path / "object", refresh_after=0) is False
    assert storage.stat(key).modified > first
    assert storage.read(key) == b"payload"


def test_renewing_an_objects_age_keeps_the_stores_bytes(storage: Storage, tmp_path: Path) -> None:
    """A lossless tensor's object is named by what it decodes to, so two pipelines put two codings
    under one name: the bucket renewed an old object's age by putting the caller's file again, and
    replaced another model's coding with this one's (that model then failed its checksums on every
    machine). The age is renewed, the store's bytes kept, a multipart object's ETag too."""
    key = "objects/sha256/cd/cd.zoo"
    storage.put(key, _file(tmp_path, "theirs", b"coded by zstd"))
    first = storage.stat(key)
    time.sleep(1.1)  # S3 keeps whole seconds
    assert storage.put(key, _file(tmp_path, "ours", b"coded otherwise"), refresh_after=0) is False
    assert storage.stat(key).modified > first.modified
    assert storage.read(key) == b"coded by zstd"
    if isinstance(storage, FsspecStorage):
        storage.part_bytes = 5 * 2**20  # S3's smallest part
        data = os.urandom(11 * 2**20)
        big = "objects/sha256/ce/ce.zoo"
        storage.put(big, _file(tmp_path, "big", data))
        before = storage.stat(big)
        time.sleep(1.1)
        assert storage.put(big, _file(tmp_path, "other", os.urandom(11 * 2**20)), refresh_after=0) is False
        after = storage.stat(big)
        assert after.modified > before.modified and after.version == before.version and after.version.endswith('-3"')
        assert storage.read(big) == data


def test_list_gives_keys_sizes_and_ages(storage: Storage, tmp_path: Path) -> None:
    for key, data in {"manifests/a/main/lossless.json": b"{}", "manifests/b/main/lossless.json": b"{1}",
                      "objects/sha256/ab/ab.zoo": b"12345"}.items():
        storage.put(key, _file(tmp_path, "f", data), if_absent=False)
    listed = list(storage.list("manifests/"))
    assert [(i.key, i.size) for i in listed] == [("manifests/a/main/lossless.json", 2), ("manifests/b/main/lossless.json", 3)]
    assert all(abs(i.modified - time.time()) < 600 for i in listed)
    assert [i.key for i in storage.list()] == [i.key for i in listed] + ["objects/sha256/ab/ab.zoo"]
    assert list(storage.list("nothing/here")) == []


def test_publish_is_conditional(storage: Storage) -> None:
    key = "manifests/m/main/lossless.json"
    assert storage.read_versioned(key) is None
    first = storage.publish(key, b'{"v": 1}')  # expect=ABSENT by default
    with pytest.raises(PublishConflict):
        storage.publish(key, b'{"v": 2}')
    assert storage.publish(key, b'{"v": 1}') == first  # what is there already: a retried publish succeeds
    data, version = storage.read_versioned(key)
    assert (data, version) == (b'{"v": 1}', first)
    second = storage.publish(key, b'{"v": 2}', expect=version)
    assert second != first
    with pytest.raises(PublishConflict):  # compare-and-swap against a version that is gone
        storage.publish(key, b'{"v": 3}', expect=first)
    assert storage.read(key) == b'{"v": 2}'
    storage.publish(key, b'{"v": 4}', expect=ANY)
    assert storage.read(key) == b'{"v": 4}'
    assert storage.delete(key) is True and storage.delete(key) is False
    with pytest.raises(PublishConflict):
        storage.publish(key, b'{"v": 5}', expect=second)  # it was deleted: not that version any more
    storage.publish(key, b'{"v": 5}', expect=ABSENT)


def test_bad_keys_are_refused(storage: Storage) -> None:
    for key in ("", "a//b", "../escape", "a/./b"):
        with pytest.raises(StorageError):
            storage.stat(key)


def test_a_big_object_goes_up_in_parts(bucket: str, tmp_path: Path) -> None:
    storage = open_storage(bucket)
    assert isinstance(storage, FsspecStorage)
    storage.part_bytes = 5 * 2**20  # S3's smallest part
    data = os.urandom(11 * 2**20 + 7)  # three parts
    key = f"objects/sha256/ee/{hashlib.sha256(data).hexdigest()}.zoo"
    assert storage.put(key, _file(tmp_path, "big", data)) is True
    assert storage.stat(key).version.endswith('-3"')  # S3's ETag of a three-part upload
    assert storage.read_range(key, 5 * 2**20 - 3, 6) == data[5 * 2**20 - 3:5 * 2**20 + 3]
    assert hashlib.sha256(storage.read(key)).hexdigest() == key.rsplit("/", 1)[1][:-4]


RACE = """
import json, sys, time
from zoo.hub.remote import PublishConflict, open_storage
location, source, start, manifest, number = sys.argv[1:6]
storage = open_storage(location)
if hasattr(storage, "part_bytes"):
    storage.part_bytes = 5 * 2**20
while time.time() < float(start):
    time.sleep(0.001)
written = storage.put("objects/sha256/ff/same.zoo", source)
try:
    storage.publish(manifest, json.dumps({"writer": number}).encode())
    won = True
except PublishConflict:
    won = False
print(json.dumps({"written": written, "won": won}))
"""


@pytest.mark.parametrize("where", ["folder", "bucket"])
def test_two_processes_write_one_key_at_once(where: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    """Two writers put the same object and publish the same manifest at the same moment: the object
    is whole, written by one of them or both (same bytes); exactly one publish wins."""
    location = str(tmp_path / "zoo") if where == "folder" else request.getfixturevalue("bucket")
    data = os.urandom(12 * 2**20)
    source = _file(tmp_path, "object", data)
    start = time.time() + 3  # both interpreters are up by then
    environment = {**os.environ, "PYTHONPATH": str(ROOT)}
    writers = [subprocess.Popen([sys.executable, "-c", RACE, location, str(source), str(start), "manifests/m/main/v.json", str(n)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=environment, text=True) for n in range(2)]
    results = []
    for writer in writers:
        out, err = writer.communicate(timeout=120)
        assert writer.returncode == 0, err
        results.append(json.loads(out))
    storage = open_storage(location)
    assert storage.read("objects/sha256/ff/same.zoo") == data
    assert any(r["written"] for r in results)
    assert sorted(r["won"] for r in results) == [False, True]
    winner = [n for n, r in enumerate(results) if r["won"]][0]
    assert json.loads(storage.read("manifests/m/main/v.json")) == {"writer": str(winner)}


def test_local_publish_shares_the_store_lock(tmp_path: Path) -> None:
    """A folder's publish takes ZOO_HOME/lock, the lock zoo.hub.store holds; reentrant in one instance."""
    import fcntl

    storage = LocalFolder(tmp_path)
    with storage.lock():
        storage.publish("manifests/a.json", b"{}")  # the lock is already ours: no deadlock
        with open(tmp_path / "lock", "a") as other, pytest.raises(BlockingIOError):
            fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
    assert storage.read_versioned("manifests/a.json") == (b"{}", content_version(b"{}"))
    assert [i.key for i in storage.list()] == ["lock", "manifests/a.json"]


def test_index_home_is_per_url_and_endpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ZOO_INDEX_HOME", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9000")
    first = index_home("s3://team-zoo/models")
    assert first.parent == tmp_path / "zoo-indexes" and first.name.startswith("team-zoo-models-")
    assert index_home("s3://team-zoo/models/") == first
    assert index_home("s3://team-zoo/other") != first
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9001")
    assert index_home("s3://team-zoo/models") != first  # same bucket name, another server: another zoo
    monkeypatch.setenv("ZOO_INDEX_HOME", str(tmp_path / "indexes"))
    assert index_home("s3://team-zoo/models").parent == tmp_path / "indexes"


def test_fetch_a_source_folder_from_a_bucket(bucket: str, tiny_model: Path, tmp_path: Path) -> None:
    storage = open_storage(bucket)
    for path in sorted(p for p in tiny_model.rglob("*") if p.is_file()):
        storage.put(f"models/tiny/{path.relative_to(tiny_model).as_posix()}", path)
    local = fetch(f"{bucket}/models/tiny", tmp_path / "fetched")
    assert local == tmp_path / "fetched" / "tiny"
    assert sorted(p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file()) == \
        sorted(p.relative_to(tiny_model).as_posix() for p in tiny_model.rglob("*") if p.is_file())
    assert (local / "model.safetensors").read_bytes() == (tiny_model / "model.safetensors").read_bytes()
    with pytest.raises(StorageError, match="no such"):
        fetch(f"{bucket}/models/missing", tmp_path / "fetched")


def test_an_unreachable_endpoint_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.services import S3_CREDENTIALS, free_port

    for name, value in S3_CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    storage = open_storage("s3://nowhere", config_kwargs={"retries": {"max_attempts": 1}, "connect_timeout": 2})
    with pytest.raises(StorageError, match="cannot"):
        storage.read("manifests/a.json")


@contextmanager
def cutting_proxy(port: int, limit: int) -> Iterator[int]:
    """A TCP proxy on 127.0.0.1 to `port` that closes each connection once it has passed `limit`
    bytes of the server's answer (the endpoint going down mid-download); yields its port."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)

    def pipe(source: socket.socket, sink: socket.socket, left: int | None) -> None:
        with suppress(OSError):
            while data := source.recv(65536):
                if left is not None and len(data) >= left:
                    sink.sendall(data[:left])
                    break
                sink.sendall(data)
                left = None if left is None else left - len(data)
        for end in (source, sink):
            with suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)
            end.close()

    def accept() -> None:
        with suppress(OSError):
            while True:
                client, _ = listener.accept()
                server = socket.create_connection(("127.0.0.1", port))
                threading.Thread(target=pipe, args=(client, server, None), daemon=True).start()
                threading.Thread(target=pipe, args=(server, client, limit), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield listener.getsockname()[1]
    finally:
        listener.close()


def test_a_connection_cut_mid_download_is_one_clear_error(bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """aiohttp's ClientPayloadError (a body cut short) went past the storage's errors: the command
    said "unexpected ClientPayloadError ... (a bug in zoo)"."""
    key = "objects/sha256/ab/cut.zoo"
    open_storage(bucket).put(key, _file(tmp_path, "object", os.urandom(3 << 20)))
    with cutting_proxy(int(os.environ["AWS_ENDPOINT_URL"].rsplit(":", 1)[1]), 1 << 20) as port:
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
        with pytest.raises(StorageError, match=f"{bucket}/{key}: cannot read: Response payload is not completed"):
            open_storage(bucket).read(key)


def test_a_missing_bucket_of_another_url_than_zoo_home_does_not_name_zoo_home(bucket: str, tmp_path: Path) -> None:
    """`zoo compress m -o s3://nosuch/m.zoo` said "check ZOO_HOME", which plays no part there."""
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    done = subprocess.run([sys.executable, "-m", "zoo", "compress", str(model), "-o", f"{bucket}-missing/arch/m.zoo"], capture_output=True,
                          text=True, cwd=tmp_path, env={**os.environ, "ZOO_HOME": str(tmp_path / "zoo")}, check=False, timeout=120)
    assert done.returncode == 1 and "does not exist (create it, or check the URL)" in done.stderr, done.stderr


def test_delete_spares_a_key_written_after_the_time_given(storage: Storage, tmp_path: Path) -> None:
    """`zoo gc` deletes an object only if its last write is still older than the grace period when
    it goes, in the one look the delete takes."""
    key = "objects/sha256/ef/ef.zoo"
    storage.put(key, _file(tmp_path, "object", b"payload"))
    assert storage.delete(key, written_before=time.time() - 3600) is False
    assert storage.read(key) == b"payload"
    assert storage.delete(key, written_before=time.time() + 60) is True
    assert storage.stat(key) is None and storage.delete(key) is False
