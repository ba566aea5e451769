"""A file streamed with a sink (as decompress writes it): every worker writes the pieces it decodes
at their offsets while the pieces still come out in order, on one thread and several, for the
whole file and for a range; and a damaged chunk, a wrong sha256 or a failed hashing thread still
stops decompress with nothing left behind."""

from __future__ import annotations

import hashlib
import os
import threading

import numpy as np
import pytest

import zoo
from zoo.container.reader import Archive, positioned_writer
from zoo.errors import ChecksumError

from tests.conftest import damage_chunk, random_storage, write_safetensors


@pytest.fixture
def model(tmp_path):
    rng = np.random.default_rng(3)
    tensors = {
        "a.weight": ("BF16", random_storage("BF16", (80, 48), 1)),  # many 1 KiB chunks
        "b.weight": ("F32", random_storage("F32", (29, 13), 2)),  # a short last chunk
        "noise": ("U8", rng.integers(0, 256, size=(2500,), dtype=np.uint8)),  # stored raw
    }
    path = write_safetensors(tmp_path / "model.safetensors", tensors)
    zoo.compress(path, tmp_path / "m.zoo", chunk_bytes=1024)
    return tmp_path / "m.zoo", path.read_bytes()


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("span", [(0, None), (1000, 9001), (9, 10), (5000, 5000)])
def test_sink_writes_each_piece_where_it_belongs(model, tmp_path, threads, span):
    archive, original = model
    start, end = span
    wanted = original[start:end]
    target = tmp_path / f"out-{threads}-{start}"
    with Archive(archive) as opened, open(target, "wb") as out:
        pieces = [bytes(piece) for piece in opened.iter_file("model.safetensors", start, end, threads, sink=positioned_writer(out.fileno()))]
    assert b"".join(pieces) == wanted
    assert target.read_bytes() == wanted


def test_positioned_writer_puts_pieces_in_place_in_any_order(tmp_path):
    """The later piece first, as a faster worker may: the hole it leaves is filled after."""
    data = os.urandom(3 << 20)
    target = tmp_path / "big"
    with open(target, "wb") as out:
        write = positioned_writer(out.fileno())
        write(1 << 20, memoryview(data)[1 << 20:])
        write(0, memoryview(data)[:1 << 20])
    assert hashlib.sha256(target.read_bytes()).digest() == hashlib.sha256(data).digest()


@pytest.mark.parametrize("threads", [1, 2])
def test_decompress_writes_the_file_and_checks_it(model, tmp_path, threads):
    archive, original = model
    zoo.decompress(archive, tmp_path / f"back{threads}", threads=threads)
    assert (tmp_path / f"back{threads}" / "model.safetensors").read_bytes() == original
    damage_chunk(archive, "a.weight", 2)
    with pytest.raises(ChecksumError):
        zoo.decompress(archive, tmp_path / f"damaged{threads}", threads=threads)
    assert not (tmp_path / f"damaged{threads}").exists()


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("beside", [False, True])
def test_a_file_whose_bytes_are_not_its_sha256_is_refused(model, tmp_path, monkeypatch, threads, beside):
    """Every chunk sound, but the header's sha256 is another file's: decompress refuses, whether
    the file is hashed by the workers or, one thread decoding a large file, by a thread beside it
    (api.HASH_BESIDE_BYTES), and nothing appears at the destination."""
    from zoo import api

    from tests.container.forge import forge

    archive, original = model
    monkeypatch.setattr(api, "HASH_BESIDE_BYTES", 0 if beside else 1 << 40)
    zoo.decompress(archive, tmp_path / "back", threads=threads)
    assert (tmp_path / "back" / "model.safetensors").read_bytes() == original
    forged = forge(archive, lambda header: header["files"][0].update(sha256=hashlib.sha256(b"another file").hexdigest()))
    with pytest.raises(ChecksumError, match="sha256 does not match"):
        zoo.decompress(forged, tmp_path / "forged", threads=threads)
    assert not (tmp_path / "forged").exists()


def test_a_hash_beside_that_fails_is_an_error_not_a_hang(model, tmp_path, monkeypatch):
    """The thread hashing beside a lone decoder fails: it still takes every piece (so the decoder
    never waits on a full queue), and the failure reaches the caller."""
    from zoo import api

    class Broken:
        def update(self, piece):
            raise MemoryError("hashing failed")

    monkeypatch.setattr(api, "HASH_BESIDE_BYTES", 0)
    monkeypatch.setattr(api._HashBeside, "DEPTH", 1)
    real = api._HashBeside.__init__

    def broken(self):
        real(self)
        self._sha = Broken()

    monkeypatch.setattr(api._HashBeside, "__init__", broken)
    archive, _ = model
    raised: list[BaseException] = []

    def run() -> None:
        try:
            zoo.decompress(archive, tmp_path / "back", threads=1)
        except BaseException as error:  # noqa: BLE001 - checked below
            raised.append(error)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(60)
    assert not worker.is_alive(), "decompress hung behind a failed hashing thread"
    assert len(raised) == 1 and isinstance(raised[0], MemoryError) and "hashing failed" in str(raised[0])
    assert not (tmp_path / "back").exists()


def test_a_model_holding_the_set_aside_folder_is_refused_where_it_would_be_taken_for_it(tmp_path):
    # decompress into an existing folder sets replaced files aside in its temporary's .zoo-old, and
    # skipped that folder when moving in: a model's own .zoo-old/ was dropped, with success reported
    # (and a killed run's sweep would take it for the files it must put back)
    from zoo.errors import OutputExistsError

    model = tmp_path / "model"
    (model / ".zoo-old").mkdir(parents=True)
    (model / ".zoo-old" / "x.txt").write_bytes(b"keep me")
    (model / "config.json").write_bytes(b"{}")
    zoo.compress(model, tmp_path / "m.zoo")
    into = tmp_path / "into"
    (into / ".zoo-old").mkdir(parents=True)
    (into / ".zoo-old" / "x.txt").write_bytes(b"theirs")
    for force in (False, True):
        with pytest.raises(OutputExistsError, match=r"the model holds \.zoo-old/, the name zoo sets replaced files aside under"):
            zoo.decompress(tmp_path / "m.zoo", into, force=force)
    assert (into / ".zoo-old" / "x.txt").read_bytes() == b"theirs" and sorted(p.name for p in into.iterdir()) == [".zoo-old"]
    zoo.decompress(tmp_path / "m.zoo", tmp_path / "new")  # into a new folder: nothing is set aside
    assert (tmp_path / "new" / ".zoo-old" / "x.txt").read_bytes() == b"keep me"


@pytest.mark.parametrize("threads", [1, 2])
def test_whole_blocks_of_zeros_come_back_as_holes(tmp_path, threads):
    """A sparse file (1 GiB of which 8 KiB were on disk) came back filling all of its size: a
    mostly empty file could fill the disk. Whole blocks of zeros are left as holes, as `cp
    --sparse=auto` leaves them, at any offset a piece begins and at the file's end; the bytes
    are the same."""
    probe = tmp_path / "probe"
    with open(probe, "wb") as out:
        out.seek(1 << 20)
        out.write(b"x")
    if probe.stat().st_blocks * 512 >= 1 << 20:
        pytest.skip("this file system keeps no holes")
    rng = np.random.default_rng(5)
    parts = [rng.bytes(100_003), bytes(1_000_000), rng.bytes(12_345), bytes(3), rng.bytes(9), bytes(700_001)]
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "weights.bin").write_bytes(b"".join(parts))
    zoo.compress(folder, tmp_path / "m.zoo", chunk_bytes=65_536 + 3)  # pieces that begin off the blocks
    zoo.decompress(tmp_path / "m.zoo", tmp_path / "out", threads=threads)
    written = tmp_path / "out" / "weights.bin"
    assert written.read_bytes() == b"".join(parts)
    assert written.stat().st_blocks * 512 < 160_000  # of 1.8 MB, 112 KB not zeros
