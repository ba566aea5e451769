"""Clients that send their request slowly or not at all: uvicorn's httptools protocol has no limit
on the time a request's head takes, so zoo serve adds one (GuardedHttpProtocol). Raw sockets, a
real server on 127.0.0.1 with a one-second head timeout."""

from __future__ import annotations

import socket
import threading
import time
from contextlib import contextmanager

import pytest

from zoo.api import compress_into
from zoo.hub.serve import make_server
from zoo.hub.store import Store

from tests.hub.test_http_conformance import COMMIT, CONFIG, address, statuses

TRICKLE_SECONDS = 30  # far past the server's one-second timeout: the trickle ends only if nothing cuts it


@contextmanager
def server_with_head_timeout(store: Store, head_timeout: float):
    server = make_server(store, "127.0.0.1", 0, quiet=True, head_timeout=head_timeout)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.url
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


@pytest.fixture
def url(tiny_model, tmp_path):
    store = Store(tmp_path / "zoo")
    compress_into(store, tiny_model, "org/tiny", chunk_bytes=1024, commit=COMMIT)
    with server_with_head_timeout(store, head_timeout=1.0) as served:
        yield served


def trickle(connection: socket.socket, head: bytes) -> bytes:
    """Sends `head` one byte every 0.1 s, and then header bytes that never end a line, until the
    server answers or closes; what it answered (b"" when it closed without a word)."""
    connection.setblocking(False)
    pending = head + b"X-Slow: " + b"s" * TRICKLE_SECONDS * 10
    deadline = time.monotonic() + TRICKLE_SECONDS
    received = b""
    while pending and time.monotonic() < deadline:
        try:
            block = connection.recv(65536)
        except BlockingIOError:
            block = None
        except ConnectionResetError:
            return received
        if block is not None:
            if not block:
                return received  # closed
            received += block
            continue
        try:
            connection.send(pending[:1])
        except (BrokenPipeError, ConnectionResetError):
            return received
        pending = pending[1:]
        time.sleep(0.1)
    raise AssertionError(f"the server kept a trickling request open for {TRICKLE_SECONDS} s")


def test_a_trickled_request_head_gets_408_and_the_connection_closes(url):
    with socket.create_connection(address(url), timeout=5) as connection:
        answer = trickle(connection, b"GET %s HTTP/1.1\r\nHost: x\r\n" % CONFIG.encode())
    assert statuses(answer) == [408], answer
    assert b"connection: close" in answer.lower()


def test_the_second_request_on_a_kept_connection_is_timed_too(url):
    """The clock starts again with each request's first byte: a fast request, then a slow one."""
    with socket.create_connection(address(url), timeout=5) as connection:
        connection.sendall(b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % CONFIG.encode())
        first = b""
        while b"\r\n\r\n" not in first:
            first += connection.recv(65536)
        head, _, body = first.partition(b"\r\n\r\n")
        length = int(next(line for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")).split(b":")[1])
        while len(body) < length:
            body += connection.recv(65536)
        assert statuses(head) == [200]
        answer = trickle(connection, b"GET %s HTTP/1.1\r\n" % CONFIG.encode())
    assert statuses(answer) == [408], answer


def test_a_connection_that_sends_nothing_is_closed_without_an_answer(url):
    with socket.create_connection(address(url), timeout=TRICKLE_SECONDS) as connection:
        assert connection.recv(65536) == b""


def test_a_prompt_request_is_answered_after_the_timeout_has_passed_for_others(url):
    from tests.hub.test_serve import request

    with socket.create_connection(address(url), timeout=5) as slow:
        slow.sendall(b"GET %s HTTP/1.1\r\n" % CONFIG.encode())
        assert statuses(slow.recv(65536)) == [408]
    assert request(url, CONFIG)[0] == 200
