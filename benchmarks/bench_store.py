"""What the content-addressed store costs a model that shares nothing with the zoo: compressing
into it (each tensor hashed and written as an object, objects fsynced and renamed in, the base
looked for, the shell archive and manifest published, index updated) beside compressing to a
plain file.

    python benchmarks/bench_store.py [--megabytes 256 | --model DIR] [--repeat 3] [--manifests 500]

The model is made up (bf16 weights in 16 MiB tensors), or a real folder with --model (a model of
many small tensors makes many objects). Anchor: `zoo.compress(SRC, OUT.zoo)`, the same pipeline
and threads writing a plain archive; each `compress_into` goes into a fresh zoo, so nothing is
found and every tensor is coded. The two take turns, --repeat rounds each, and the best round of
each is printed with its CPU seconds (this process's, all threads): on a shared VM whose disk
absorbs writes at a varying speed the CPU figure moves less. Where the time goes: one more
`compress_into` with the store's steps wrapped in timers (seconds inside each, summed over the
threads that ran it, and calls), and the sha256 and BLAKE3 of the weights alone, since hashing is
the part that grows with the model. Then the index: rebuilding it from --manifests manifests (as after a
0-byte catalogue) and one `Store.entries()` with a current index. The page cache is warm for both
sides; the load average is printed beside the figures.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import blake3
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import zoo  # noqa: E402
from zoo.api import compress_into  # noqa: E402
from zoo.hub.store import Store  # noqa: E402
from zoo.kernels import cpu_model  # noqa: E402
from zoo.kernels.parallel import resolve_threads  # noqa: E402

# The store's own steps in compress_into, as (module, owner, attribute, what to call it).
STEPS = [
    ("zoo.container.objects", "ObjectSink", "unit", "BLAKE3 of each tensor's original bytes (its object's name), waited for"),
    ("zoo.container.objects", "ObjectSink", "finish", "each object assembled from its payload, renamed in the build"),
    ("zoo.hub.deltas", None, "find_base", "looking for a base among the stored models"),
    ("zoo.hub.store", None, "describe_files", "the files' hashes for the manifest"),
    ("zoo.hub.store", None, "_sync_files", "syncfs of the new objects and the shell, then of the folders they enter"),
    ("zoo.hub.store", "Store", "_publish", "objects renamed into the zoo, manifest written, index updated"),
    ("shutil", None, "rmtree", "the work folder removed afterwards (a folder per object-name prefix)"),
    ("os", None, "fsync", "  every fsync, inside the steps above (the manifest, the index)"),
]


def write_model(folder: Path, megabytes: int) -> Path:
    """bf16 weights as a trained model's look (normal, small), in 16 MiB tensors."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    tensors, header, offset = [], {}, 0
    for index in range(max(1, megabytes // 16)):
        values = (rng.standard_normal(8 << 20) * 0.02).astype(np.float32)
        raw = (values.view(np.uint32) >> 16).astype(np.uint16).tobytes()
        header[f"layer{index}.weight"] = {"dtype": "BF16", "shape": [2048, 4096], "data_offsets": [offset, offset + len(raw)]}
        tensors.append(raw)
        offset += len(raw)
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)
    with open(folder / "model.safetensors", "wb") as out:
        out.write(len(encoded).to_bytes(8, "little") + encoded)
        for raw in tensors:
            out.write(raw)
    (folder / "config.json").write_text('{"model_type": "bench"}')
    return folder


@contextmanager
def timers() -> Iterator[dict[str, list[float]]]:
    """[seconds, calls] inside each of STEPS while the block runs, seconds summed over threads."""
    import importlib

    spent = {what: [0.0, 0] for *_, what in STEPS}
    lock = threading.Lock()
    restore = []
    for module_name, owner_name, attribute, what in STEPS:
        module = importlib.import_module(module_name)
        owner = getattr(module, owner_name) if owner_name else module
        original = owner.__dict__[attribute] if owner_name else getattr(module, attribute)
        function = original.__func__ if isinstance(original, staticmethod) else original

        def timed(*args, _function=function, _what=what, **kwargs):  # noqa: ANN002, ANN003, ANN202
            started = time.perf_counter()
            try:
                return _function(*args, **kwargs)
            finally:
                with lock:
                    spent[_what][0] += time.perf_counter() - started
                    spent[_what][1] += 1

        setattr(owner, attribute, staticmethod(timed) if isinstance(original, staticmethod) else timed)
        restore.append((owner, attribute, original))
    try:
        yield spent
    finally:
        for owner, attribute, original in restore:
            setattr(owner, attribute, original)


def best(repeat: int, run) -> float:
    times = []
    for round_number in range(repeat):
        started = time.perf_counter()
        run(round_number)
        times.append(time.perf_counter() - started)
    return min(times)


def alternating(repeat: int, first, second) -> tuple[tuple[float, float], tuple[float, float]]:
    """Best wall-clock seconds of each of two runs taking turns, each with the CPU seconds of its best round."""
    rounds: list[list[tuple[float, float]]] = [[], []]
    for round_number in range(repeat):
        for side, run in enumerate((first, second)):
            started, cpu = time.perf_counter(), time.process_time()
            run(round_number)
            rounds[side].append((time.perf_counter() - started, time.process_time() - cpu))
    return min(rounds[0]), min(rounds[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--manifests", type=int, default=500)
    parser.add_argument("--model", help="a model folder to measure instead of the made-up bf16 one (e.g. MiniLM's)")
    options = parser.parse_args()
    threads = resolve_threads(None)
    print(f"CPU: {cpu_model()}, {os.cpu_count()} logical cores, zoo threads {threads}")
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        model = Path(options.model) if options.model else write_model(root / "model", options.megabytes)
        size = sum(p.stat().st_size for p in model.rglob("*") if p.is_file())
        tensors = zoo.compress(model, root / "survey.zoo").tensors  # also warms the page cache
        print(f"model: {options.model or 'made-up bf16 weights'}, {size / 2**20:.0f} MiB, {len(tensors)} tensors")
        # the two take turns, so that what the disk still holds to write from one run weighs on both
        plain, into = alternating(options.repeat, lambda n: zoo.compress(model, root / f"plain{n}.zoo", force=True),
                                  lambda n: compress_into(Store(root / f"zoo{n}"), model, "bench", force=True))
        store = Store(root / "zoo0")
        load = " ".join(f"{x:.2f}" for x in os.getloadavg())
        with timers() as spent:
            started = time.perf_counter()
            compress_into(Store(root / "timed"), model, "bench")
            timed_run = time.perf_counter() - started

        def digest(hasher) -> None:
            for path in model.rglob("*.safetensors"):
                with open(path, "rb") as stream:
                    while block := stream.read(8 << 20):
                        hasher.update(block)

        hashing = best(options.repeat, lambda n: digest(hashlib.sha256()))
        hashing_blake3 = best(options.repeat, lambda n: digest(blake3.blake3()))
        print(f"compress to a file (anchor)  {plain[0]:7.2f} s  {size / plain[0] / 2**20:7.1f} MiB/s  {plain[1]:6.2f} CPU-s")
        print(f"compress into the zoo        {into[0]:7.2f} s  {size / into[0] / 2**20:7.1f} MiB/s  {into[1]:6.2f} CPU-s  "
              f"({into[0] / plain[0]:.3f}x the anchor's time, {into[1] / plain[1]:.3f}x its CPU; {store.total_bytes() / 2**20:.0f} MiB stored)")
        print(f"  load average {load}")
        print(f"  where the time goes, in one more run ({timed_run:.2f} s; seconds inside each step, summed over threads):")
        for what, (seconds, calls) in spent.items():
            print(f"    {seconds:6.2f} s  {calls:4d} calls  {what}")
        print(f"  the weights alone (*.safetensors, one thread): sha256 {hashing:.2f} s (each file's, which compress takes), "
              f"BLAKE3 {hashing_blake3:.2f} s (each tensor's, which naming its object takes)")

        # the index: a zoo of many small manifests, its catalogue lost
        record = json.loads(store.manifest_path("bench", "main", "lossless").read_text())
        many = Store(root / "many")
        many._make_folders()
        for index in range(options.manifests):
            copy = {**record, "name": f"model-{index}"}
            path = many.manifest_path(copy["name"], "main", "lossless")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(copy))
        rebuild = best(options.repeat, lambda n: (many.catalogue.unlink(missing_ok=True), many.entries()))
        listing = best(options.repeat, lambda n: many.entries())
        print(f"index rebuilt from {options.manifests} manifests  {rebuild * 1000:7.1f} ms;  entries() with a current index "
              f"{listing * 1000:.1f} ms")


if __name__ == "__main__":
    main()
