"""A client that half-closes after its request (shutdown(SHUT_WR), as `nc -N` and socat do) gets
its answer, as from http.server; one that then goes away mid-download is still noticed."""

from __future__ import annotations

import socket
import threading
import time

from zoo.api import compress_into
from zoo.hub.store import Store

from tests.conftest import random_storage, write_safetensors
from tests.hub.test_http_conformance import COMMIT, CONFIG, address
from tests.hub.test_serve import running_server


def half_closed(url: str, head: bytes) -> bytes:
    """What the server sends to a client that sends `head` and then shuts its sending side."""
    with socket.create_connection(address(url), timeout=30) as connection:
        connection.sendall(head)
        connection.shutdown(socket.SHUT_WR)
        received = b""
        while block := connection.recv(1 << 16):
            received += block
        return received


def test_a_half_closed_client_gets_its_answer_and_the_connection_closes(tiny_model, tmp_path):
    store = Store(tmp_path / "zoo")
    compress_into(store, tiny_model, "org/tiny", commit=COMMIT)
    config = (tiny_model / "config.json").read_bytes()
    with running_server(store) as url:
        received = half_closed(url, b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % CONFIG.encode())  # keep-alive asked: closed all the same
        assert received.startswith(b"HTTP/1.1 200 ") and received.endswith(b"\r\n\r\n" + config)
        two = half_closed(url, b"GET %s HTTP/1.1\r\nHost: x\r\n\r\nGET /nothing HTTP/1.1\r\nHost: x\r\n\r\n" % CONFIG.encode())
        assert two.count(b"HTTP/1.1 ") == 2 and b"HTTP/1.1 404 " in two  # pipelined: both answered
        assert half_closed(url, b"GET %s HTTP/1.1\r\nHo" % CONFIG.encode()) == b""  # half a request: nothing owed


def test_a_half_closed_client_that_goes_away_mid_download_is_noticed(tmp_path):
    folder = tmp_path / "big"
    folder.mkdir()
    write_safetensors(folder / "model.safetensors", {"w": ("F32", random_storage("F32", (1024, 4096), 5))})  # 16 MiB
    store = Store(tmp_path / "zoo")
    compress_into(store, folder, "big", chunk_bytes=256 << 10, commit=COMMIT)
    with running_server(store) as url:
        for _ in range(3):
            with socket.create_connection(address(url), timeout=30) as connection:
                connection.sendall(b"GET /big/resolve/%s/model.safetensors HTTP/1.1\r\nHost: x\r\n\r\n" % COMMIT.encode())
                connection.shutdown(socket.SHUT_WR)
                assert connection.recv(1 << 16).startswith(b"HTTP/1.1 200 ")
        deadline = time.monotonic() + 10
        while any(thread.name == "zoo-decode" for thread in threading.enumerate()) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(thread.name == "zoo-decode" for thread in threading.enumerate())
