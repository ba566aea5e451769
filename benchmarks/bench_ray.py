"""zoo.batch on Ray beside the same work in one process: a sharded synthetic BF16 checkpoint (one task
per shard) and a batch of small models, on 1 and 2 Ray workers; then the shards read from and written
to a bucket of a local S3-compatible server (moto), to see where a task's time goes.

    python benchmarks/bench_ray.py [--shards 4] [--shard-mib 256] [--small 16] [--task-mib 256] [--no-bucket] [--json out.json]

Every figure is one run (wall clock) unless --repeat says otherwise; the load average is printed
beside it, since this machine is shared. Ray's start-up is timed apart and not counted in a job. With
-o, the shards are compressed each to its own archive; into a zoo, the sharded folder is one model,
split by Ray into tasks of whole tensors of --task-mib (zoo.batch.TASK_BYTES) and a last task that
builds the model, against compress_into of the same folder in this process. The anchors compress the
same files in this process, one after another, one thread each, and the whole folder as one archive
on 1 and 2 threads.
docs/scale-out.md quotes this output.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_lossless import write_synthetic_bf16  # noqa: E402

import zoo  # noqa: E402
from zoo import batch  # noqa: E402
from zoo.api import compress_into  # noqa: E402
from zoo.hub.store import Store  # noqa: E402


def load() -> str:
    return "load {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())


def make_shards(folder: Path, count: int, mib: int) -> list[Path]:
    """`count` safetensors files of about `mib` MiB each, as a sharded checkpoint's files."""
    folder.mkdir(parents=True)
    shards = []
    for number in range(count):
        scratch = folder / f"scratch-{number}"
        scratch.mkdir()
        path = write_synthetic_bf16(scratch, mib / 1024, seed=number)  # one 128 MiB tensor per 128 MiB
        shard = folder / f"model-{number + 1:05d}-of-{count:05d}.safetensors"
        path.rename(shard)
        scratch.rmdir()
        shards.append(shard)
    return shards


def make_small_models(folder: Path, count: int) -> list[Path]:
    import numpy as np

    from tests.conftest import random_storage, write_safetensors

    models = []
    for number in range(count):
        model = folder / f"small-{number:02d}"
        model.mkdir(parents=True)
        write_safetensors(model / "model.safetensors", {f"layer.{i}.weight": ("BF16", random_storage("BF16", (512, 512), number * 8 + i))
                                                        for i in range(4)} | {"steps": ("I64", np.arange(8, dtype=np.int64))})
        (model / "config.json").write_text(json.dumps({"model_type": "small", "number": number}))
        models.append(model)
    return models


def mib(paths: list[Path]) -> float:
    return sum(p.stat().st_size if p.is_file() else sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) for p in paths) / 2**20


def timed(label: str, megabytes: float, work) -> dict:  # noqa: ANN001
    started, cpu = time.perf_counter(), time.process_time()
    results = work()
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    figures = {"label": label, "seconds": seconds, "mib_s": megabytes / seconds, "load": os.getloadavg()[0], "cpu_seconds": cpu}
    if isinstance(results, list) and results and isinstance(results[0], batch.Landed):
        failed = [r.error for r in results if not r.ok]
        if failed:
            raise SystemExit(f"{label}: {failed}")
        steps = sorted({step for r in results for step in r.seconds})
        figures["task_seconds"] = {step: sum(r.seconds.get(step, 0.0) for r in results) for step in steps}
        figures["nodes"] = len({r.node for r in results})
        if any(r.node for r in results):  # on Ray this process only waits: the tasks' own CPU time counts (a split model's parts too)
            figures["cpu_seconds"] = figures["task_seconds"]["compress_cpu"] + figures["task_seconds"].get("parts compress_cpu", 0.0)
    figures["mib_per_cpu_s"] = megabytes / figures["cpu_seconds"]
    spent = ", ".join(f"{step} {value:.2f}" for step, value in figures.get("task_seconds", {}).items())
    print(f"{label:<44} {seconds:7.2f} s {figures['mib_s']:7.1f} MiB/s {figures['mib_per_cpu_s']:7.1f} MiB/CPU-s   {load()}"
          + (f"   task s: {spent}" if spent else ""), flush=True)
    return figures


def start_ray(cpus: int) -> float:
    """A fresh local Ray of `cpus` CPUs (RAY_ADDRESS is unset here); returns its start-up time."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
    started = time.perf_counter()
    batch.connect(None, num_cpus=cpus)
    return time.perf_counter() - started


def start_moto() -> tuple[object, dict[str, str]]:
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # a line per request otherwise

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    return server, {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
                    "AWS_DEFAULT_REGION": "us-east-1"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--shard-mib", type=int, default=256, help="a multiple of 128 (one tensor per 128 MiB)")
    parser.add_argument("--small", type=int, default=16)
    parser.add_argument("--task-mib", type=int, default=batch.TASK_BYTES >> 20, help="the size of a split model's tasks")
    parser.add_argument("--no-bucket", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    os.environ.pop("RAY_ADDRESS", None)  # this benchmark starts its own Ray with 1, then 2 CPUs
    repository = str(Path(__file__).resolve().parent.parent)  # the workers import zoo from this checkout
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [repository, os.environ.get("PYTHONPATH")]))
    rows = []
    root = Path(tempfile.mkdtemp(prefix="zoo-bench-ray-"))
    try:
        shards = make_shards(root / "sharded", args.shards, args.shard_mib)
        small = make_small_models(root / "small", args.small)
        size, small_size = mib(shards), mib(small)
        print(f"{len(shards)} shards, {size:.0f} MiB; {len(small)} small models, {small_size:.1f} MiB; {os.cpu_count()} cores; {load()}")
        sources = [str(s) for s in shards]

        def out(name: str) -> Path:
            shutil.rmtree(root / name, ignore_errors=True)
            return root / name

        rows.append(timed("one archive, this process, 1 thread", size,
                          lambda: zoo.compress(root / "sharded", out("whole-1.zoo"), threads=1)))
        rows.append(timed("one archive, this process, 2 threads", size,
                          lambda: zoo.compress(root / "sharded", out("whole-2.zoo"), threads=2)))
        rows.append(timed("shard archives, this process, 1 thread", size,
                          lambda: batch.compress_many(sources, out("local"), ray=None, threads=1)))
        rows.append(timed("small models, this process, 1 thread", small_size,
                          lambda: batch.compress_many([str(m) for m in small], out("small-local"), ray=None, threads=1)))
        rows.append(timed("one model into a zoo, this process, 1 thread", size,
                          lambda: [compress_into(Store(out("zoo-local")), root / "sharded", "sharded", threads=1)]))
        for cpus in (1, 2):
            started = start_ray(cpus)
            print(f"Ray with {cpus} CPU(s) started in {started:.2f} s")
            rows.append({"label": f"ray start, {cpus} cpus", "seconds": started})
            batch.compress_many([str(small[0])], out("warm"), ray="local")  # workers are started by the first tasks: not counted
            rows.append(timed(f"shard archives, Ray, {cpus} worker(s)", size,
                              lambda: batch.compress_many(sources, out(f"ray-{cpus}"), ray="local", threads=1)))
            rows.append(timed(f"small models, Ray, {cpus} worker(s)", small_size,
                              lambda: batch.compress_many([str(m) for m in small], out(f"small-ray-{cpus}"), ray="local", threads=1)))
            rows.append(timed(f"one model into a zoo, Ray, {cpus} worker(s)", size,
                              lambda: batch.compress_many([str(root / "sharded")], store=Store(out(f"zoo-ray-{cpus}")), ray="local",
                                                          threads=1, task_bytes=args.task_mib << 20)))
        if not args.no_bucket:
            server, environment = start_moto()
            os.environ.update(environment)
            try:
                import ray

                ray.shutdown()  # workers must see the endpoint: a new Ray started with it in the environment
                start_ray(2)
                from zoo.hub.remote import open_storage

                import s3fs

                # without a region: s3fs would send us-east-1 as a location constraint, which S3 refuses
                s3fs.S3FileSystem(client_kwargs={"endpoint_url": environment["AWS_ENDPOINT_URL"]}, skip_instance_cache=True).mkdir("bench")
                storage = open_storage("s3://bench")
                for shard in shards:
                    storage.put(f"sources/{shard.name}", shard)
                batch.compress_many([str(small[0])], "s3://bench/warm", ray="local")
                rows.append(timed("shards bucket -> bucket, Ray, 2 workers", size,
                                  lambda: batch.compress_many([f"s3://bench/sources/{s.name}" for s in shards], "s3://bench/archives",
                                                              ray="local", threads=1)))
            finally:
                server.stop()
        import ray

        ray.shutdown()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
