"""Archive.iter_file's `in_order` (how decompress hashes a file: in file order, each piece by the
worker that decoded it where it can be): every piece goes through once and in order, on one
thread and several; a worker does not wait for a turn far ahead; a damaged chunk or a reader
closed early leaves no worker waiting for its turn. And the same on the way in: compress's coders
hash each file from the chunks they read, where those cover it in order."""

from __future__ import annotations

import hashlib
import threading

import numpy as np
import pytest

import zoo
from zoo.container import writer
from zoo.container.format import ArchiveFile
from zoo.container.reader import Archive
from zoo.errors import ChecksumError

from tests.conftest import damage_chunk, random_storage, write_safetensors


@pytest.fixture
def model(tmp_path):
    rng = np.random.default_rng(4)
    tensors = {
        "a.weight": ("BF16", random_storage("BF16", (96, 40), 1)),  # many 1 KiB chunks
        "b.weight": ("F32", random_storage("F32", (31, 11), 2)),  # a short last chunk
        "noise": ("U8", rng.integers(0, 256, size=(1500,), dtype=np.uint8)),  # stored raw
    }
    path = write_safetensors(tmp_path / "model.safetensors", tensors)
    zoo.compress(path, tmp_path / "m.zoo", chunk_bytes=1024)
    return tmp_path / "m.zoo", path.read_bytes()


def finishes(function, seconds: float = 60.0) -> None:
    """Run `function` on a thread and fail, rather than hang the suite, if it never returns."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            function()
        except BaseException as error:  # noqa: BLE001 - raised again below
            errors.append(error)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(seconds)
    assert not worker.is_alive(), "a worker is still waiting for its turn"
    if errors:
        raise errors[0]


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("span", [(0, None), (1000, 9001), (9, 10), (5000, 5000)])
def test_every_piece_goes_through_once_and_in_order(model, threads, span):
    archive, original = model
    start, end = span
    passed: list[bytes] = []
    with Archive(archive) as opened:
        yielded = [bytes(piece) for piece in opened.iter_file("model.safetensors", start, end, threads,
                                                              in_order=lambda piece: passed.append(bytes(piece)))]
    assert passed == yielded
    assert b"".join(passed) == original[start:end]


@pytest.mark.parametrize("threads", [2, 3])
def test_a_damaged_chunk_leaves_no_worker_waiting(model, threads):
    archive, _ = model
    damage_chunk(archive, "a.weight", 3)
    passed: list[bytes] = []

    def read() -> None:
        with Archive(archive) as opened, pytest.raises(ChecksumError):
            for _ in opened.iter_file("model.safetensors", threads=threads, in_order=lambda piece: passed.append(bytes(piece))):
                pass

    finishes(read)


@pytest.mark.parametrize("threads", [2, 3])
def test_a_reader_closed_early_leaves_no_worker_waiting(model, threads):
    archive, original = model
    passed: list[bytes] = []

    def read_two_pieces() -> None:
        with Archive(archive) as opened:
            pieces = opened.iter_file("model.safetensors", threads=threads, in_order=lambda piece: passed.append(bytes(piece)))
            next(pieces)
            next(pieces)
            pieces.close()

    finishes(read_two_pieces)
    assert original.startswith(b"".join(passed))  # a prefix, in order


def test_a_worker_does_not_wait_for_a_turn_far_ahead(model):
    """While the first piece is still being written, the other worker hands its pieces over and
    decodes more instead of waiting for their turns: the first piece's writer waits here for
    two more pieces to be written, which never happened when every worker waited for its turn."""
    archive, original = model
    written = threading.Semaphore(0)
    passed: list[bytes] = []

    def sink(offset: int, piece: memoryview) -> None:
        if offset == 0:
            assert written.acquire(timeout=30) and written.acquire(timeout=30), "the other worker waited"
        else:
            written.release()

    def read() -> None:
        with Archive(archive) as opened:
            for _ in opened.iter_file("model.safetensors", threads=2, sink=sink, in_order=lambda piece: passed.append(bytes(piece))):
                pass

    finishes(read)
    assert b"".join(passed) == original


def test_the_coders_hash_each_file_they_read(tiny_model, tmp_path, monkeypatch):
    """A lossless compress on several threads takes each file's sha256 from the chunks its coders
    read: the digests are the files' own, and the archive is the same bytes as when a thread of its
    own reads and hashes each file (one coder, or chunks that do not cover a file)."""
    digests = []
    taken = writer._SourceDigest.result
    monkeypatch.setattr(writer._SourceDigest, "result", lambda self: digests.append(taken(self)) or digests[-1])
    zoo.compress(tiny_model, tmp_path / "coders.zoo", threads=2, chunk_bytes=1024)
    assert len(digests) == 3 and all(digests)  # every file of the model, from its chunks
    opened = ArchiveFile(tmp_path / "coders.zoo")
    opened.close()
    assert {entry["path"]: entry["sha256"] for entry in opened.header["files"]} == {
        str(path.relative_to(tiny_model)): hashlib.sha256(path.read_bytes()).hexdigest() for path in tiny_model.rglob("*") if path.is_file()}
    monkeypatch.setattr(writer._SourceDigest, "result", lambda self: None)
    zoo.compress(tiny_model, tmp_path / "read.zoo", threads=2, chunk_bytes=1024)
    zoo.compress(tiny_model, tmp_path / "one.zoo", threads=1, chunk_bytes=1024)
    assert (tmp_path / "coders.zoo").read_bytes() == (tmp_path / "read.zoo").read_bytes() == (tmp_path / "one.zoo").read_bytes()


def test_chunks_that_do_not_cover_a_file_give_no_digest(tmp_path):
    """_SourceDigest hashes only chunks that are views of the file and follow each other from its
    start; a gap, a copy or a short end leaves it without a digest, never with a wrong one. (It
    lets each chunk's pages go once hashed: the file is mapped, as a build maps it.)"""
    import mmap

    (tmp_path / "file").write_bytes(bytes(range(100)))
    with open(tmp_path / "file", "rb") as stream:
        file = mmap.mmap(stream.fileno(), 0, access=mmap.ACCESS_READ)
    data = np.frombuffer(file, np.uint8)

    def job(start: int, end: int, mapped: object = file) -> writer._Job:
        return writer._Job({}, None, data[start:end], end - start, mapped, start)  # type: ignore[arg-type]

    def digest(jobs: list[writer._Job], size: int = 100) -> str | None:
        found = writer._SourceDigest(size)
        for job_ in jobs:
            found.take(found.turn(), job_)
        return found.result()

    assert digest([job(0, 40), job(40, 40), job(40, 100)]) == hashlib.sha256(data.tobytes()).hexdigest()
    assert digest([job(0, 40), job(50, 100)]) is None  # a gap
    assert digest([job(0, 40), job(40, 100, mapped=None)]) is None  # a copy, not the file's own bytes
    assert digest([job(0, 40)]) is None  # the file goes on
    assert digest([], size=0) == hashlib.sha256(b"").hexdigest()
