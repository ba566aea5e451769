"""`zoo serve` as an HTTP server, against the cases a probe found open on http.server: request
framing, header limits, ranges, authentication, error bodies, damaged payloads, the access log,
IPv6, the listen backlog and Nagle. Raw sockets where a client library would hide the behaviour;
every server listens on 127.0.0.1 (or ::1) only and is stopped by its test."""

from __future__ import annotations

import hashlib
import http.client
import json
import re
import socket
import statistics
import time

import pytest

from zoo.api import compress_into
from zoo.hub.store import Store

from tests.conftest import largest_object, random_storage, write_safetensors
from tests.hub.test_serve import request, running_server

# The models here are stored at this commit, and their files asked for by it: a branch's file is a
# redirect to its commit's URL (tested in test_serve), and these tests are about the download.
COMMIT = "c0ffee" * 6 + "c0ff"
FILE = f"/org/tiny/resolve/{COMMIT}/model.safetensors"
CONFIG = f"/org/tiny/resolve/{COMMIT}/config.json"


@pytest.fixture
def served(tiny_model, tmp_path):
    store = Store(tmp_path / "zoo")
    compress_into(store, tiny_model, "org/tiny", chunk_bytes=1024, commit=COMMIT)
    with running_server(store) as url:
        yield url, store, tiny_model


def address(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    return host.strip("[]"), int(port)


def exchange(url: str, data: bytes, wait: float = 5.0) -> bytes:
    """Sends raw bytes and reads whatever comes back until the server closes or `wait` passes."""
    received = b""
    with socket.create_connection(address(url), timeout=wait) as connection:
        connection.sendall(data)
        deadline = time.monotonic() + wait
        try:
            while time.monotonic() < deadline and (block := connection.recv(65536)):
                received += block
        except (socket.timeout, ConnectionResetError):
            pass
    return received


def statuses(answer: bytes) -> list[int]:
    return [int(code) for code in re.findall(rb"HTTP/1\.1 (\d{3}) ", answer)]


# -- framing: nothing a request carries is ever read as a second request --------------------

SMUGGLED = b"GET /favicon.ico HTTP/1.1\r\nHost: x\r\n\r\n"  # a 404 if it were answered


@pytest.mark.parametrize("head", [
    b"GET %s HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (CONFIG.encode(), len(SMUGGLED)),
    b"GET %s HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n" % (CONFIG.encode(), len(SMUGGLED)),
    b"GET %s HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\nContent-Length: 5\r\n\r\n" % (CONFIG.encode(), len(SMUGGLED)),
    b"GET %s HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\nContent-Length: %d\r\n\r\n" % (CONFIG.encode(), len(SMUGGLED), len(SMUGGLED)),
    b"GET %s HTTP/1.1\r\nHost: x\r\nContent-Length: 0x10\r\n\r\n" % CONFIG.encode(),
    b"GET %s HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n" % CONFIG.encode(),
    b"GET %s HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n" % CONFIG.encode(),
    b"GET %s HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n" % CONFIG.encode(),
], ids=["get-body", "chunked-get", "conflicting-lengths", "duplicate-lengths", "hex-length", "negative-length",
        "two-hosts", "chunked-and-length"])
def test_ambiguous_framing_is_a_400_and_the_connection_ends(served, head):
    url, _, _ = served
    answer = exchange(url, head + SMUGGLED)
    assert statuses(answer) == [400], answer[:300]
    assert request(url, CONFIG)[0] == 200


def test_keep_alive_requests_are_answered_in_order(served):
    """The framing checks refuse only what is ambiguous: two plain GETs on one connection both get answers."""
    url, _, source = served
    answer = exchange(url, b"GET %s HTTP/1.1\r\nHost: x\r\n\r\nHEAD %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                      % (CONFIG.encode(), FILE.encode()))
    assert statuses(answer) == [200, 200]
    assert (source / "config.json").read_bytes() in answer


def test_header_block_over_the_limit_is_refused(served):
    url, _, _ = served
    assert statuses(exchange(url, b"GET %s HTTP/1.1\r\nHost: x\r\nX-Pad: %s\r\n\r\n" % (CONFIG.encode(), b"a" * (64 << 10)))) == [400]
    many = b"".join(b"X-Pad-%d: %s\r\n" % (number, b"b" * 100) for number in range(400))
    assert statuses(exchange(url, b"GET %s HTTP/1.1\r\nHost: x\r\n%s\r\n" % (CONFIG.encode(), many))) == [400]
    # sent slowly, in pieces: the server stops buffering at its limit instead of waiting for the end
    with socket.create_connection(address(url), timeout=5) as connection:
        connection.sendall(b"GET %s HTTP/1.1\r\nHost: x\r\n" % CONFIG.encode())
        for _ in range(40):
            try:
                connection.sendall(b"X-Pad: " + b"d" * 1000 + b"\r\n")
            except (BrokenPipeError, ConnectionResetError):
                break
            time.sleep(0.005)
        assert statuses(connection.recv(65536)) == [400]
    assert request(url, CONFIG, headers={"X-Pad": "c" * 8000})[0] == 200  # a large but sane header still works


@pytest.mark.parametrize("where", ["path", "query"])
def test_a_request_line_over_the_limit_is_refused_when_it_comes_in_one_read(served, where):
    """The protocol counts a head's bytes while it is incomplete; one arriving whole in a single read
    was past that count, and a 60 KB path was answered 404, echoed in the body and the log."""
    url, _, _ = served
    long = "a" * (17 << 10)
    target = f"/org/tiny/resolve/main/{long}" if where == "path" else f"{CONFIG}?{long}"
    assert statuses(exchange(url, b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % target.encode())) == [400]
    assert statuses(exchange(url, b"GET %s?%s HTTP/1.1\r\nHost: x\r\n\r\n" % (CONFIG.encode(), b"b" * 8000))) == [200]


def test_other_methods_get_405_with_allow(served):
    url, _, _ = served
    status, headers, _ = request(url, CONFIG, "DELETE")
    assert status == 405 and headers["allow"] == "GET, HEAD"


# -- ranges ---------------------------------------------------------------------------------

HUGE = "9" * 5000


@pytest.mark.parametrize("header, status, expected", [
    (f"bytes={HUGE}-", 416, None), (f"bytes={HUGE}-{HUGE}", 416, None), (f"bytes=0-{HUGE}", 206, slice(0, None)),
    (f"bytes=-{HUGE}", 206, slice(0, None)), (f"bytes=10-{'0' * 4000}20", 206, slice(10, 21)),
    ("Bytes=0-9", 206, slice(0, 10)), ("BYTES = 0-9", 206, slice(0, 10)),
    ("items=0-1", 200, slice(0, None)), ("bytes=0-1,5-6", 200, slice(0, None)), ("bytes=0-1, -3", 200, slice(0, None)),
])
def test_range_corners(served, header, status, expected):
    url, _, source = served
    original = (source / "model.safetensors").read_bytes()
    got, headers, body = request(url, FILE, headers={"Range": header})
    assert got == status, body[:200]
    if expected is not None:
        assert body == original[expected]
    if status == 416:
        assert headers["content-range"] == f"bytes */{len(original)}"


@pytest.mark.parametrize("if_range, status", [
    ("stale", 200), ('"0000000000000000000000000000000000000000000000000000000000000000"', 200),
    ("Wed, 21 Oct 2015 07:28:00 GMT", 200), ("current", 206),
])
def test_if_range(served, if_range, status):
    url, _, source = served
    original = (source / "model.safetensors").read_bytes()
    etag = f'"{hashlib.sha256(original).hexdigest()}"'
    value = {"stale": '"' + "1" * 64 + '"', "current": etag}.get(if_range, if_range)
    got, headers, body = request(url, FILE, headers={"Range": "bytes=10-19", "If-Range": value})
    assert got == status
    assert body == (original[10:20] if status == 206 else original)


@pytest.mark.parametrize("if_match, status", [
    ("current", 206), ("stale", 412), ("*", 206), ("weak", 412), ("stale, current", 206),
])
def test_if_match_is_held_before_a_range(served, if_match, status):
    """If-Match was not read: a client resuming a file stored anew since got the new bytes after
    its old ones (206), where RFC 9110 says 412."""
    url, _, source = served
    original = (source / "model.safetensors").read_bytes()
    etag = f'"{hashlib.sha256(original).hexdigest()}"'
    stale = '"' + "1" * 64 + '"'
    value = {"current": etag, "stale": stale, "weak": f"W/{etag}", "stale, current": f"{stale}, {etag}"}.get(if_match, if_match)
    got, headers, body = request(url, FILE, headers={"Range": "bytes=10-19", "If-Match": value})
    assert got == status, body[:200]
    assert headers["etag"] == etag
    if status == 206:
        assert body == original[10:20]
    else:
        assert "If-Match" in json.loads(body)["error"]


@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_if_none_match_of_the_current_version_is_304_without_a_body(served, method):
    url, _, source = served
    original = (source / "model.safetensors").read_bytes()
    etag = f'"{hashlib.sha256(original).hexdigest()}"'
    for value in (etag, f"W/{etag}", "*", f'"{"1" * 64}", {etag}'):
        got, headers, body = request(url, FILE, method, headers={"If-None-Match": value})
        assert (got, body, headers["etag"]) == (304, b"", etag), value
    got, _, body = request(url, FILE, method, headers={"If-None-Match": '"' + "1" * 64 + '"'})
    assert got == 200 and body == (b"" if method == "HEAD" else original)
    # a 304 says no length (uvicorn cut the connection for a body shorter than the length said),
    # and the connection serves the next request
    connection = http.client.HTTPConnection(*address(url), timeout=10)
    try:
        for headers, status, length in (({"If-None-Match": etag}, 304, None), ({}, 200, str(len(original))),
                                        ({"If-None-Match": etag}, 304, None), ({"If-Match": '"0"'}, 412, None)):
            connection.request(method, FILE, headers=headers)
            response = connection.getresponse()
            response.read()
            assert response.status == status and (status == 412 or response.getheader("content-length") == length), (headers, status)
    finally:
        connection.close()


def test_if_match_sent_over_two_lines_is_one_list(served):
    url, _, source = served
    original = (source / "model.safetensors").read_bytes()
    etag = f'"{hashlib.sha256(original).hexdigest()}"'
    host, port = address(url)
    with socket.create_connection((host, port), timeout=10) as connection:
        connection.sendall(f'GET {FILE} HTTP/1.1\r\nHost: x\r\nIf-Match: {etag}\r\nIf-Match: "{"1" * 64}"\r\n'
                           "Range: bytes=0-3\r\nConnection: close\r\n\r\n".encode())
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 206"), answer[:200]
    assert answer.endswith(original[:4])


def test_a_model_named_api_models_is_served(tiny_model, tmp_path):
    """A model named api/models was listed by the API, but its files' URLs were read as API routes: 404."""
    store = Store(tmp_path / "zoo")
    compress_into(store, tiny_model, "api/models")
    compress_into(store, tiny_model, "resolve")
    with running_server(store) as url:
        got, _, body = request(url, "/api/models/resolve/main/config.json")
        assert got == 200 and body == (tiny_model / "config.json").read_bytes()
        got, _, body = request(url, "/api/models/api/models")
        assert got == 200 and json.loads(body)["id"] == "api/models"
        got, _, body = request(url, "/api/models/resolve")  # the API's answer about the model named resolve
        assert got == 200 and json.loads(body)["id"] == "resolve"


# -- authentication -------------------------------------------------------------------------

def test_401_names_the_scheme_and_the_scheme_is_case_insensitive(tiny_model, tmp_path):
    store = Store(tmp_path / "zoo")
    compress_into(store, tiny_model, "org/tiny", commit=COMMIT)
    with running_server(store, token="s3cret") as url:
        status, headers, _ = request(url, CONFIG)
        assert status == 401 and headers["www-authenticate"].startswith("Bearer")
        assert request(url, CONFIG, headers={"Authorization": "bearer wrong"})[0] == 401
        assert request(url, CONFIG, headers={"Authorization": "Basic czNjcmV0"})[0] == 401
        for scheme in ("bearer", "BEARER", "Bearer"):
            assert request(url, CONFIG, headers={"Authorization": f"{scheme} s3cret"})[0] == 200


# -- failures -------------------------------------------------------------------------------

def test_500_answers_name_no_server_path(tiny_model, tmp_path):
    store = Store(tmp_path / "zoo")
    entry = compress_into(store, tiny_model / "config.json", "broken", commit=COMMIT)
    raw = bytearray(entry.archive.read_bytes())
    raw[30] ^= 0xFF  # inside the archive's JSON header
    entry.archive.write_bytes(bytes(raw))
    with running_server(store) as url:
        status, headers, body = request(url, f"/broken/resolve/{COMMIT}/config.json")
        assert status == 500 and json.loads(body)["error"]
        for text in (body.decode(), *headers.values()):
            assert str(tmp_path) not in text and "/zoo/" not in text and ".zoo" not in text and ".sqlite" not in text
        store.catalogue.write_bytes(b"not a database" * 100)
        status, headers, body = request(url, f"/broken/resolve/{COMMIT}/config.json")
        for text in (body.decode(), *headers.values()):
            assert str(tmp_path) not in text and ".sqlite" not in text


@pytest.fixture
def multi_chunk(tmp_path):
    """A 1 MiB file of random floats in 64 KiB chunks, and the archive that holds it."""
    folder = tmp_path / "big"
    folder.mkdir()
    write_safetensors(folder / "model.safetensors", {"w": ("F32", random_storage("F32", (512, 512), 5))})
    store = Store(tmp_path / "zoo")
    entry = compress_into(store, folder, "big", chunk_bytes=64 << 10, commit=COMMIT)
    return store, entry, (folder / "model.safetensors").read_bytes()


def test_a_payload_damaged_mid_file_never_arrives_as_a_success(multi_chunk, capfd, caplog):
    store, entry, original = multi_chunk
    damaged = largest_object(store, entry)
    data = bytearray(damaged.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 64] = bytes(64)
    damaged.write_bytes(bytes(data))
    with running_server(store, quiet=False) as url:
        connection = http.client.HTTPConnection(*address(url), timeout=30)
        connection.request("GET", f"/big/resolve/{COMMIT}/model.safetensors")
        response = connection.getresponse()
        assert response.status == 200 and int(response.headers["Content-Length"]) == len(original)
        with pytest.raises(http.client.IncompleteRead) as failure:
            response.read()  # read() checks the length (read(n) would not)
        received = failure.value.partial
        connection.close()
        # what did arrive is the file's own beginning, cut before the damaged chunk
        assert 0 < len(received) < len(original) // 2 + (64 << 10) and received == original[:len(received)]
    log = capfd.readouterr().err
    assert "damaged" in log and "cut after" in log
    assert not any("without completing" in record.getMessage() for record in caplog.records)


def test_a_damaged_first_chunk_is_a_clean_500(multi_chunk):
    """Random floats barely compress, so the archive's middle holds the chunk of the file's middle."""
    store, entry, original = multi_chunk
    middle = len(original) // 2
    path = f"/big/resolve/{COMMIT}/model.safetensors"
    with running_server(store) as url:
        assert request(url, path, headers={"Range": f"bytes={middle}-{middle}"})[0] == 206
        damaged = largest_object(store, entry)
        data = bytearray(damaged.read_bytes())
        data[len(data) // 2:len(data) // 2 + 64] = bytes(64)
        damaged.write_bytes(bytes(data))
        status, headers, body = request(url, path, headers={"Range": f"bytes={middle}-{middle}"})
        assert status == 500 and "damaged" in json.loads(body)["error"] and "content-range" not in headers
        status, _, body = request(url, path, headers={"Range": "bytes=0-99"})  # the chunks before it still serve
        assert status == 206 and body == original[:100]


def test_access_log_escapes_control_characters(served, capfd):
    _, store, _ = served
    with running_server(store, quiet=False) as url:
        request(url, "/org/tiny/resolve/main/%1b[2J%1b]0;pwned%07%0d%0a.bin")
        exchange(url, b"GET /a\x1b[2Jb HTTP/1.1\r\nHost: x\r\n\r\n", wait=2)
        exchange(url, b"GET /a\x85b HTTP/1.1\r\nHost: x\r\n\r\n", wait=2)
    log = capfd.readouterr().err
    assert "%1b[2J" in log and "404" in log
    assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]", log), repr(log)


# -- sockets --------------------------------------------------------------------------------

def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _has_ipv6_loopback(), reason="this machine has no IPv6 loopback")
def test_serves_on_ipv6_loopback(served):
    _, store, source = served
    with running_server(store, host="::1", quiet=True) as url:
        assert url.startswith("http://[::1]:")
        connection = http.client.HTTPConnection("::1", address(url)[1], timeout=30)
        connection.request("GET", CONFIG)
        response = connection.getresponse()
        assert response.status == 200 and response.read() == (source / "config.json").read_bytes()
        connection.close()


def test_two_hundred_sequential_connects_do_not_wait(served):
    """A short listen backlog makes the kernel drop SYNs while the server is busy: the client then
    waits a second to retry. Connections opened and held, one after another, must each be quick."""
    url, _, _ = served
    held, slowest = [], 0.0
    try:
        for _ in range(200):
            started = time.monotonic()
            held.append(socket.create_connection(address(url), timeout=5))
            slowest = max(slowest, time.monotonic() - started)
    finally:
        for connection in held:
            connection.close()
    assert slowest < 0.9, f"a connect took {slowest:.2f} s"
    assert request(url, CONFIG)[0] == 200


def test_keep_alive_gets_do_not_wait_for_delayed_acks(served):
    """Headers and body go out in separate writes; with Nagle on, each GET after the first on a
    connection waits about 40 ms for the client's delayed ACK."""
    url, _, _ = served
    connection = http.client.HTTPConnection(*address(url), timeout=30)
    times = []
    try:
        for _ in range(12):
            started = time.monotonic()
            connection.request("GET", CONFIG)
            response = connection.getresponse()
            response.read()
            assert response.status == 200
            times.append(time.monotonic() - started)
    finally:
        connection.close()
    assert statistics.median(times[1:]) < 0.030, times


@pytest.mark.slow
def test_a_client_that_reads_nothing_is_cut_off(tmp_path, capfd):
    """A stalled download holds its decoded chunks only until the stall timeout."""
    folder = tmp_path / "large"
    folder.mkdir()
    write_safetensors(folder / "model.safetensors", {"w": ("F32", random_storage("F32", (1024, 2048), 9))})  # 8 MiB
    store = Store(tmp_path / "zoo")
    compress_into(store, folder, "large", chunk_bytes=1 << 20, commit=COMMIT)
    with running_server(store, quiet=False, stall_timeout=1.0) as url, socket.socket() as connection:
        connection.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: a small window
        connection.connect(address(url))
        connection.sendall(f"GET /large/resolve/{COMMIT}/model.safetensors HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        time.sleep(3)
        received, deadline = 0, time.monotonic() + 10
        connection.settimeout(2)
        try:
            while time.monotonic() < deadline and (block := connection.recv(1 << 20)):
                received += len(block)
        except (ConnectionResetError, socket.timeout):
            pass
    assert received < (8 << 20)
    assert "connection cut" in capfd.readouterr().err


@pytest.mark.slow
def test_a_slow_client_that_keeps_reading_is_not_cut_off(tmp_path, capfd):
    """The stall timeout counts time with nothing taken, not the time one send takes: a client
    reading what its small window holds every 20 ms takes over a second to drain one 512 KiB piece."""
    folder = tmp_path / "slow"
    folder.mkdir()
    write_safetensors(folder / "model.safetensors", {"w": ("F32", random_storage("F32", (256, 1024), 3))})  # 1 MiB
    store = Store(tmp_path / "zoo")
    compress_into(store, folder, "slow", chunk_bytes=512 << 10, commit=COMMIT)
    original = (folder / "model.safetensors").read_bytes()
    received = bytearray()
    with running_server(store, quiet=False, stall_timeout=0.5) as url, socket.socket() as connection:
        connection.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: a small window
        connection.connect(address(url))
        connection.sendall(f"GET /slow/resolve/{COMMIT}/model.safetensors HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        connection.settimeout(10)
        while block := connection.recv(64 << 10):
            received += block
            time.sleep(0.02)
    assert received.endswith(original)
    assert "connection cut" not in capfd.readouterr().err


@pytest.mark.slow
def test_huggingface_hub_never_keeps_a_damaged_download(multi_chunk, tmp_path):
    """The real client: the download cut short fails (its resume lands on the damaged chunk and gets
    a 500), and nothing is left in its cache as the file."""
    from huggingface_hub import hf_hub_download

    store, entry, original = multi_chunk
    damaged = largest_object(store, entry)
    data = bytearray(damaged.read_bytes())
    data[len(data) // 2:len(data) // 2 + 64] = bytes(64)
    damaged.write_bytes(bytes(data))
    cache = tmp_path / "hf"
    with running_server(store) as url:
        with pytest.raises(Exception, match="complete message body|damaged"):  # httpx: a body short of its length
            hf_hub_download("big", "model.safetensors", endpoint=url, cache_dir=cache, etag_timeout=10)
    assert not [path for path in cache.rglob("model.safetensors")]
    assert not any(path.is_file() and path.stat().st_size == len(original) for path in cache.rglob("*"))
