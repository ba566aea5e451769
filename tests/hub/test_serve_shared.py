"""Downloads of one file at the same time share its decoded pieces (SharedPieces): each piece is
decoded once, every download still gets exactly its own bytes, and a damaged chunk fails each of
them. Real archives; the downloads through a real server on 127.0.0.1."""

from __future__ import annotations

import http.client
import random
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from zoo.api import compress_into
from zoo.container.reader import Archive
from zoo.hub.serve import GATHER_BYTES, DecodeThread, SharedPieces, make_server
from zoo.hub.store import Store

from tests.conftest import largest_object, random_storage, write_safetensors
from tests.hub.test_http_conformance import COMMIT, address

PATH = f"/big/resolve/{COMMIT}/model.safetensors"


@pytest.fixture
def big(tmp_path):
    """A 1 MiB file in 16 KiB chunks (64 pieces), its archive and its bytes."""
    folder = tmp_path / "big"
    folder.mkdir()
    write_safetensors(folder / "model.safetensors", {"w": ("F32", random_storage("F32", (512, 512), 11))})
    store = Store(tmp_path / "zoo")
    entry = compress_into(store, folder, "big", chunk_bytes=16 << 10, commit=COMMIT)
    return store, entry, (folder / "model.safetensors").read_bytes()


def test_a_download_behind_another_takes_its_pieces_instead_of_decoding_them(big):
    _, entry, original = big
    archive, shared = Archive(entry.archive), SharedPieces(64 << 20)
    leader = shared.pieces(archive, "model.safetensors", 0, len(original), len(original))
    follower = shared.pieces(archive, "model.safetensors", 0, len(original), len(original))
    led, followed = [next(leader)], [next(follower)]  # each started alone: both decoded the first piece
    while True:
        piece = next(leader, None)
        if piece is None:
            break
        led.append(piece)
        followed.append(next(follower))
    followed.extend(follower)
    assert b"".join(led) == b"".join(followed) == original
    assert led[0] is not followed[0]
    assert all(mine is theirs for mine, theirs in zip(led[1:], followed[1:]))  # the very same objects: decoded once
    assert shared._bytes == 0 and not shared._pieces  # both done: nothing kept


def test_a_lone_download_keeps_nothing(big):
    _, entry, original = big
    shared = SharedPieces(64 << 20)
    pieces = shared.pieces(Archive(entry.archive), "model.safetensors", 0, len(original), len(original))
    first = next(pieces)
    assert not shared._pieces
    assert bytes(first) + b"".join(pieces) == original


def test_overlapping_ranges_at_once_each_get_their_own_bytes(big):
    """Ranges that start and end inside pieces, beside whole-file downloads, thirty at a time."""
    store, _, original = big
    rng = random.Random(3)
    ranges = [None] * 6 + [tuple(sorted(rng.sample(range(len(original)), 2))) for _ in range(24)]
    server = make_server(store, "127.0.0.1", 0, quiet=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()

    def fetch(selected):
        connection = http.client.HTTPConnection(*address(server.url), timeout=30)
        connection.request("GET", PATH, headers={"Range": f"bytes={selected[0]}-{selected[1]}"} if selected else {})
        response = connection.getresponse()
        body = response.read()
        connection.close()
        return response.status, body

    try:
        with ThreadPoolExecutor(30) as pool:
            answers = list(pool.map(fetch, ranges))
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)
    for selected, (status, body) in zip(ranges, answers):
        if selected is None:
            assert (status, body == original) == (200, True)
        else:
            assert (status, body == original[selected[0]:selected[1] + 1]) == (206, True), selected


def test_a_damaged_chunk_fails_every_download_sharing_it(big):
    store, entry, original = big
    damaged = largest_object(store, entry)  # where the model's chunks lie
    data = bytearray(damaged.read_bytes())
    data[len(data) // 2:len(data) // 2 + 64] = bytes(64)
    damaged.write_bytes(bytes(data))
    server = make_server(store, "127.0.0.1", 0, quiet=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()

    def fetch(_):
        connection = http.client.HTTPConnection(*address(server.url), timeout=30)
        connection.request("GET", PATH)
        response = connection.getresponse()
        try:
            response.read()
        except http.client.IncompleteRead as cut:
            return response.status, cut.partial
        finally:
            connection.close()
        return response.status, None

    try:
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(fetch, range(8)))
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)
    for status, received in answers:
        assert status == 200 and received is not None  # cut short of its Content-Length
        assert len(received) < len(original) and received == original[:len(received)]


def test_small_pieces_go_out_together_and_a_failure_after_them_comes_after_them():
    def pieces(*sizes, fail=False):
        for size in sizes:
            yield bytes([size % 251]) * size
        if fail:
            raise ValueError("damaged")

    small, big = GATHER_BYTES // 4, GATHER_BYTES
    batch, error = DecodeThread._gather(b"a", pieces(small, small, big, 1))
    assert error is None and [len(part) for part in batch] == [1 + 2 * small, big]  # the big one is not copied
    assert bytes(batch[0]) == b"a" + bytes([small % 251]) * (2 * small)
    batch, error = DecodeThread._gather(b"a", pieces(small))
    assert error is None and len(batch[0]) == 1 + small and batch[1] is None  # the end of the file
    batch, error = DecodeThread._gather(b"a", pieces(small, fail=True))
    assert isinstance(error, ValueError) and [len(part) for part in batch] == [1 + small]
    batch, error = DecodeThread._gather(b"a", pieces(small, small, small, small))  # past GATHER_BYTES: not joined
    assert error is None and [len(part) for part in batch] == [1 + 3 * small, small]


def test_the_first_piece_goes_out_alone_so_the_head_need_not_wait_for_more():
    """The response's head waits for the first hand-over: it is the first piece alone (a
    safetensors header, say), not joined with the small pieces and the chunk after it."""
    import asyncio

    small = GATHER_BYTES // 8
    sizes = [small, small, small, GATHER_BYTES * 2, small]

    async def batches() -> list[list[int]]:
        stream = DecodeThread(asyncio.get_running_loop(), lambda: (bytes(size) for size in sizes), threading.Semaphore(4))
        seen = []
        try:
            while True:
                batch = await stream.next()
                seen.append([-1 if piece is None else len(piece) for piece in batch])
                stream.release()
                if batch[-1] is None:
                    return seen
        finally:
            stream.stop()

    seen = asyncio.run(batches())
    assert seen[0] == [small]
    assert seen[1] == [2 * small, GATHER_BYTES * 2]  # then small pieces go together again
    assert sum(size for batch in seen for size in batch if size > 0) == sum(sizes)
