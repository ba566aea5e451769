"""zoo.batch on a real Ray cluster (a head and a joined worker node, tests/services.py): many models
as tasks, the same bytes as a local run, a dead worker retried, a bad model reported without losing
the others, archives written to a bucket of a real S3-compatible server."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

import zoo
from tests.conftest import random_storage, write_safetensors
from zoo import batch
from zoo.api import compress_into
from zoo.hub.remote import open_storage
from zoo.hub.store import Store

from tests.hub.test_hub import hub, tiny_bert  # noqa: F401 - fixtures: a real `zoo serve` as the hub

ROOT = Path(__file__).resolve().parents[2]


def _models(folder: Path, count: int) -> list[Path]:
    made = []
    for number in range(count):
        model = folder / f"model-{number}"
        model.mkdir(parents=True)
        write_safetensors(model / "model.safetensors", {
            "embed.weight": ("BF16", random_storage("BF16", (128, 64), 10 + number)),
            "layer.weight": ("F32", random_storage("F32", (64, 64), 20 + number)),
            "steps": ("I64", np.arange(8, dtype=np.int64)),
        })
        (model / "config.json").write_text(json.dumps({"model_type": "tiny", "number": number}))
        made.append(model)
    return made


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_many_models_on_ray_are_the_bytes_of_a_local_run(ray_cluster: str, tmp_path: Path) -> None:
    sources = _models(tmp_path / "models", 3)
    broken = tmp_path / "models" / "broken.safetensors"
    broken.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    landed = []
    results = batch.compress_many([*map(str, sources), str(broken)], tmp_path / "out", ray=ray_cluster, on_landed=landed.append)
    assert [r.name for r in results] == ["model-0.zoo", "model-1.zoo", "model-2.zoo", "broken.zoo"]
    assert sorted(r.name for r in landed) == sorted(r.name for r in results)  # each reported as it landed
    assert [r.ok for r in results] == [True, True, True, False]
    assert "broken.safetensors" in results[3].error
    assert not (tmp_path / "out" / "broken.zoo").exists()
    for source, result in zip(sources, results):
        local = tmp_path / "local" / f"{source.name}.zoo"
        local.parent.mkdir(exist_ok=True)
        zoo.compress(source, local, threads=1)
        assert _sha256(tmp_path / "out" / result.name) == _sha256(local) == result.sha256
        assert result.original_bytes > result.stored_bytes > 0 and result.node
        assert set(result.seconds) == {"compress", "compress_cpu", "hash", "put"}
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["model-0.zoo", "model-1.zoo", "model-2.zoo"]  # no debris
    import ray

    # SPREAD places tasks on both nodes when both have room; on a loaded machine Ray may keep them on one
    cluster = {node["NodeID"][:12] for node in ray.nodes() if node["Alive"]}
    assert len(cluster) == 2 and {r.node for r in results[:3]} <= cluster


def test_into_a_zoo_workers_write_and_the_driver_publishes(ray_cluster: str, tmp_path: Path) -> None:
    sources = _models(tmp_path / "models", 2)
    broken = tmp_path / "models" / "broken.safetensors"
    broken.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    store = Store(tmp_path / "zoo")
    results = batch.compress_many([*map(str, sources), str(broken)], store=store, ray=ray_cluster)
    assert [r.output for r in results[:2]] == ["model-0@main:lossless", "model-1@main:lossless"]
    assert not results[2].ok and "broken.safetensors" in results[2].error  # reported; the others stored
    assert all("publish" in r.seconds for r in results[:2])
    local = Store(tmp_path / "local-zoo")
    for source in sources:
        compress_into(local, source, source.name, source_label=str(source.resolve()), threads=2)
    for mine, theirs in zip(store.entries(with_files=True), local.entries(with_files=True)):
        assert (mine.name, mine.archive.name, mine.files, mine.source) == (theirs.name, theirs.archive.name, theirs.files, theirs.source)
    assert list((tmp_path / "zoo" / "work").iterdir()) == []  # the private zoos went with the job's work folder
    with pytest.raises(zoo.ZooError, match="already in the zoo; pass --force"):
        batch.compress_many([str(sources[0])], store=store, ray=ray_cluster)
    again = batch.compress_many([str(sources[0])], store=store, ray=ray_cluster, force=True)
    assert again[0].ok and [e.ref for e in store.entries()] == ["model-0@main:lossless", "model-1@main:lossless"]


def _family(folder: Path) -> list[Path]:
    """A base model, a fine-tune of it (a few low bits changed: XORs against the base code smaller)
    in two files, and a third model sharing one tensor with the fine-tune."""
    base = {f"layer{n}.weight": ("BF16", random_storage("BF16", (256, 64), 30 + n)) for n in range(4)}
    tuned = {}
    for key, (dtype, values) in base.items():
        changed = values.copy()
        changed.reshape(-1)[::7] ^= 1
        tuned[key] = (dtype, changed)
    models = []
    for name, files in (("base", {"model.safetensors": base}),
                        ("tuned", {"model-1.safetensors": dict(list(tuned.items())[:2]), "model-2.safetensors": dict(list(tuned.items())[2:])}),
                        ("other", {"model.safetensors": {"layer0.weight": tuned["layer0.weight"],
                                                         "head.weight": ("F32", random_storage("F32", (64, 128), 40))}})):
        model = folder / name
        model.mkdir(parents=True)
        for file, tensors in files.items():
            write_safetensors(model / file, tensors)
        (model / "config.json").write_text(json.dumps({"model_type": "tiny", "name": name, "padding": "x" * 20000}))  # a run of bytes as an object
        models.append(model)
    return models


def _contents(home: Path) -> tuple[list[str], list[dict]]:
    """A zoo's object names and its manifests, less their times."""
    objects = sorted(path.name for path in (home / "objects" / "sha256").rglob("*.zoo"))
    manifests = [{k: v for k, v in json.loads(path.read_text()).items() if k != "created"} for path in sorted((home / "manifests").rglob("*.json"))]
    return objects, manifests


def test_into_a_zoo_on_ray_the_zoo_holds_what_a_local_run_stores(ray_cluster: str, tmp_path: Path) -> None:
    """A base already in each zoo; then a fine-tune split into tasks of whole tensors, and a model
    sharing a tensor with it, on Ray into one zoo and here into the other: the same objects (shared,
    XORs against the base) and manifests, and exports that give the sources back bit for bit."""
    base, tuned, other = _family(tmp_path / "models")
    zoos = {"ray": Store(tmp_path / "on-ray"), "here": Store(tmp_path / "here")}
    for store in zoos.values():
        compress_into(store, base, "base", source_label=str(base.resolve()), threads=1)
    on_ray = batch.compress_many([str(tuned), str(other)], store=zoos["ray"], ray=ray_cluster, task_bytes=40 << 10)
    here = batch.compress_many([str(tuned), str(other)], store=zoos["here"], ray=None)
    assert [r.ok for r in on_ray + here] == [True] * 4, [r.error for r in on_ray + here]
    assert [r.tasks for r in on_ray] == [4, 3]  # 5 objects of 20-32 KiB as 3 parts and a build; 3 objects as 2 parts and a build
    assert [(r.output, r.stored_bytes, r.sha256) for r in on_ray] == [(r.output, r.stored_bytes, r.sha256) for r in here]
    assert _contents(tmp_path / "on-ray") == _contents(tmp_path / "here")
    objects, manifests = _contents(tmp_path / "on-ray")
    tuned_manifest = next(m for m in manifests if m["name"] == "tuned")
    assert tuned_manifest["base"]["ref"] == "base@main:lossless" and tuned_manifest["base"]["tensors"] == 4
    named = [o["sha256"] for m in manifests for o in m["objects"]]
    assert len(set(named)) == len(objects) < len(named)  # every object named, some by several models
    assert list((tmp_path / "on-ray" / "work").iterdir()) == []
    (tmp_path / "exports").mkdir()
    for model in (tuned, other):
        out = tmp_path / "exports" / model.name
        zoo.decompress(zoos["ray"].resolve(model.name).archive, out)
        assert {p.name: _sha256(p) for p in out.iterdir()} == {p.name: _sha256(p) for p in model.iterdir()}


def test_into_a_zoo_in_a_bucket_workers_put_the_objects(ray_cluster: str, bucket: str, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """ZOO_HOME=s3://...: the tasks put the objects in the bucket, the driver only the manifest (and
    the shell it fetched once); the bucket holds what a local run leaves in a folder zoo."""
    monkeypatch.setenv("ZOO_INDEX_HOME", str(tmp_path / "indexes"))  # passed on: the workers' copies of the zoo stay in the test's folder
    base, tuned, other = _family(tmp_path / "models")
    remote, here = Store(f"{bucket}/zoo"), Store(tmp_path / "here")
    for store in (remote, here):
        compress_into(store, base, "base", source_label=str(base.resolve()), threads=1)
    on_ray = batch.compress_many([str(tuned), str(other)], store=remote, ray=ray_cluster, task_bytes=40 << 10)
    locally = batch.compress_many([str(tuned), str(other)], store=here, ray=None)
    assert [r.ok for r in on_ray + locally] == [True] * 4, [r.error for r in on_ray + locally]
    assert all(r.seconds["put"] >= 0 and "publish" in r.seconds for r in on_ray)
    storage = open_storage(f"{bucket}/zoo")
    objects = sorted(info.key.rsplit("/", 1)[-1] for info in storage.list("objects/"))
    manifests = [{k: v for k, v in json.loads(storage.read(info.key)).items() if k != "created"} for info in storage.list("manifests/")]
    local_objects, local_manifests = _contents(tmp_path / "here")
    assert [m["name"] for m in manifests] == [m["name"] for m in local_manifests]
    for mine, theirs in zip(manifests, local_manifests):
        assert {k: v for k, v in mine.items() if v != theirs.get(k)} == {k: v for k, v in theirs.items() if v != mine.get(k)}
    # the whole objects of the fine-tune's tensors, put by its part tasks before its build stored
    # them as XORs against the base, are named by no manifest: `zoo gc` takes them after its grace
    extra = set(objects) - set(local_objects)
    assert set(local_objects) <= set(objects) and len(extra) == 4
    assert not extra & {f"{o['sha256']}.zoo" for m in manifests for o in m["objects"]}
    assert list((remote.home / "work").iterdir()) == []
    out = tmp_path / "exported"
    zoo.decompress(Store(f"{bucket}/zoo").resolve("tuned").archive, out)
    assert {p.name: _sha256(p) for p in out.iterdir()} == {p.name: _sha256(p) for p in tuned.iterdir()}


def test_a_worker_that_dies_is_retried(ray_cluster: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sources = _models(tmp_path / "models", 2)
    monkeypatch.setenv("ZOO_KILL_AT", "batch-task-once")  # each task's first attempt is killed -9
    results = batch.compress_many([str(s) for s in sources], tmp_path / "out", ray=ray_cluster)
    assert [r.ok for r in results] == [True, True], [r.error for r in results]
    monkeypatch.delenv("ZOO_KILL_AT")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["model-0.zoo", "model-1.zoo"]  # the killed attempts' temporaries swept
    for source, result in zip(sources, results):
        zoo.compress(source, tmp_path / "local.zoo", threads=1, force=True)
        assert result.sha256 == _sha256(tmp_path / "local.zoo") == _sha256(tmp_path / "out" / result.name)


def test_a_task_whose_worker_dies_every_time_leaves_no_temporary(ray_cluster: str, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The retries swept what an earlier attempt left, but nothing swept the last one's: a failed
    model's temporary stayed in the user's -o folder after the command had ended."""
    sources = _models(tmp_path / "models", 1)
    monkeypatch.setenv("ZOO_KILL_AT", "batch-scratch")  # every attempt killed -9 once its temporary is there
    results = batch.compress_many([str(s) for s in sources], tmp_path / "out", ray=ray_cluster, retries=1)
    assert [r.ok for r in results] == [False] and "died" in results[0].error, results[0].error
    assert not (tmp_path / "out").exists()  # nor the folder the batch made for it, with nothing landed there


def test_a_split_model_whose_tasks_die_is_retried(ray_cluster: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each part task and the model's build killed -9 on its first attempt: the retries' objects are
    the model's, and the zoo holds what a local run stores."""
    _, tuned, _ = _family(tmp_path / "models")
    monkeypatch.setenv("ZOO_KILL_AT", "batch-task-once")
    results = batch.compress_many([str(tuned)], store=Store(tmp_path / "on-ray"), ray=ray_cluster, task_bytes=80 << 10)
    monkeypatch.delenv("ZOO_KILL_AT")
    assert results[0].ok and results[0].tasks == 3, results[0].error
    compress_into(Store(tmp_path / "here"), tuned, "tuned", source_label=str(tuned.resolve()), threads=1)
    assert _contents(tmp_path / "on-ray") == _contents(tmp_path / "here")


def test_a_split_model_into_a_bucket_names_each_object_as_the_bucket_codes_it(ray_cluster: str, bucket: str, tmp_path: Path,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Another machine stored the model's tensors with another pipeline: each part task's put finds
    that coding there and leaves it, and the model's build takes the bucket's copy of each part's
    object (ModelSink.fetch), so its shell names the bucket's coding: every machine reads the model.
    (A model coded by one task named its own coding: test_batch_edges.)"""
    from tests.hub.test_batch_edges import put_another_coding

    monkeypatch.setenv("ZOO_INDEX_HOME", str(tmp_path / "indexes"))
    [model] = _models(tmp_path / "models", 1)
    store = Store(f"{bucket}/zoo")
    put_another_coding(store, model, tmp_path / "other-machine")
    [landed] = batch.compress_many([str(model)], store=store, names=["model"], ray=ray_cluster, task_bytes=8 << 10)
    assert landed.ok and landed.tasks > 2, (landed.error, landed.tasks)
    monkeypatch.setenv("ZOO_INDEX_HOME", str(tmp_path / "fresh-index"))
    zoo.decompress(Store(f"{bucket}/zoo").resolve("model").archive, tmp_path / "out")
    assert {p.name: _sha256(p) for p in (tmp_path / "out").iterdir()} == {p.name: _sha256(p) for p in model.iterdir()}


@pytest.mark.parametrize("into", ["bucket", "folder"])
def test_a_split_model_repairs_an_object_damaged_in_the_zoo(into: str, ray_cluster: str, request: pytest.FixtureRequest, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """A part task takes an object the zoo holds as found, damaged or not (PartSink: it names
    nothing), so the model's build meets the damaged one, codes it again, and its task hands that
    repair on as one model's task does (test_batch_edges): every machine reads both models."""
    from tests.hub.test_batch_edges import damage_an_object

    monkeypatch.setenv("ZOO_INDEX_HOME", str(tmp_path / "indexes"))
    url = f"{request.getfixturevalue('bucket')}/zoo" if into == "bucket" else str(tmp_path / "zoo")
    [model] = _models(tmp_path / "models", 1)
    compress_into(Store(url), model, "first")
    damage_an_object(Store(url), "flipped")
    [landed] = batch.compress_many([str(model)], store=Store(url), names=["again"], ray=ray_cluster, task_bytes=8 << 10)
    assert landed.ok and landed.tasks > 2, (landed.error, landed.tasks)
    monkeypatch.setenv("ZOO_INDEX_HOME", str(tmp_path / "fresh-index"))
    fresh = Store(url)
    assert fresh.verify()[2] == []
    for name in ("first", "again"):
        zoo.decompress(fresh.resolve(name).archive, tmp_path / name)
        assert {p.name: _sha256(p) for p in (tmp_path / name).iterdir()} == {p.name: _sha256(p) for p in model.iterdir()}


def test_sources_and_archives_in_a_bucket(ray_cluster: str, bucket: str, tmp_path: Path) -> None:
    """Workers fetch a source from the bucket and put their archives there; the bytes match a local run."""
    [source] = _models(tmp_path / "models", 1)
    storage = open_storage(bucket)
    for path in source.iterdir():
        storage.put(f"sources/{source.name}/{path.name}", path)
    results = batch.compress_many([f"{bucket}/sources/{source.name}"], f"{bucket}/archives", ray=ray_cluster)
    assert results[0].ok, results[0].error
    assert set(results[0].seconds) == {"fetch", "compress", "compress_cpu", "hash", "put"}
    zoo.compress(source, tmp_path / "local.zoo", threads=1)
    assert hashlib.sha256(storage.read(f"archives/{source.name}.zoo")).hexdigest() == _sha256(tmp_path / "local.zoo")


def test_without_ray_the_same_job_runs_here(tmp_path: Path) -> None:
    sources = _models(tmp_path / "models", 2)
    results = batch.compress_many([str(s) for s in sources], tmp_path / "out", ray=None)
    assert [r.ok for r in results] == [True, True] and all(r.node is None for r in results)
    with pytest.raises(zoo.ZooError, match="already in"):
        batch.compress_many([str(s) for s in sources], tmp_path / "out", ray=None)
    with pytest.raises(zoo.ZooError, match="two sources would be stored as model-0.zoo"):
        batch.compress_many([str(sources[0]), str(sources[0])], tmp_path / "other", ray=None)


def _zoo(*args: object, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run([sys.executable, "-m", "zoo", *map(str, args)], capture_output=True, text=True, env=environment, timeout=300,
                          cwd=cwd)


def test_the_cli_on_a_cluster(ray_cluster: str, tmp_path: Path) -> None:
    sources = _models(tmp_path / "models", 2)
    done = _zoo("compress", *sources, tmp_path / "missing-model", "--ray", ray_cluster, "-o", tmp_path / "out")
    assert done.returncode == 1 and "missing-model: no such file or folder" in done.stderr  # refused before any work
    done = _zoo("compress", *sources, "--ray", ray_cluster, "-o", tmp_path / "out", env={"ZOO_HOME": str(tmp_path / "zoo")})
    assert done.returncode == 0, done.stderr
    assert done.stdout == "2 models: 2 stored\n"
    assert sorted(line.split(":")[0] for line in done.stderr.splitlines() if line.startswith("landed")) == \
        sorted(f"landed {tmp_path / 'out' / s.name}.zoo" for s in sources)
    done = _zoo("compress", *sources, "--ray", "--json", env={"ZOO_HOME": str(tmp_path / "zoo"), "RAY_ADDRESS": ray_cluster})
    assert done.returncode == 0, done.stderr
    assert [m["output"] for m in json.loads(done.stdout)["models"]] == ["model-0@main:lossless", "model-1@main:lossless"]
    done = _zoo("compress", sources[0], "--ray", ray_cluster, "--calib", "-o", tmp_path / "x.zoo")
    assert done.returncode == 1 and "--calib is not available with --ray yet: compress such a model on its own" in done.stderr


def test_relative_paths_are_the_drivers_on_a_cluster(ray_cluster: str, tmp_path: Path) -> None:
    """A task runs in its worker's folder, which on a cluster that --ray joins is not the driver's:
    a relative SOURCE was read there ("no such file", or another model at that path), and a
    relative -o DIR written there, while the line said it had landed in the user's folder."""
    _models(tmp_path / "models", 1)
    into = f"out-{tmp_path.name}"  # its own name: an archive written in a worker's folder is removed below
    try:
        done = _zoo("compress", "models/model-0", "--ray", ray_cluster, "-o", f"{into}/", cwd=tmp_path)
        assert done.returncode == 0 and done.stderr.startswith(f"landed {into}/model-0.zoo: "), done.stderr
        assert [path.name for path in (tmp_path / into).iterdir()] == ["model-0.zoo"]
        done = _zoo("compress", "models/model-0", "--ray", ray_cluster, "--json", cwd=tmp_path, env={"ZOO_HOME": str(tmp_path / "zoo")})
        assert done.returncode == 0, done.stderr
        [model] = json.loads(done.stdout)["models"]
        assert (model["source"], model["output"]) == ("models/model-0", "model-0@main:lossless")
        assert Store(tmp_path / "zoo").resolve("model-0").source == str(tmp_path / "models" / "model-0")
    finally:
        if Path.cwd() != tmp_path:  # the folder the cluster's nodes were started in, where the workers run
            shutil.rmtree(Path.cwd() / into, ignore_errors=True)


def test_a_worker_that_dies_leaves_stdout_to_the_command(ray_cluster: str, tmp_path: Path) -> None:
    """Ray printed "(raylet) A worker died ..." on the driver's stdout, ahead of the --json
    document, which no JSON reader could then parse."""
    sources = _models(tmp_path / "models", 2)
    done = _zoo("compress", *sources, "--ray", ray_cluster, "--json", "-o", tmp_path / "out", env={"ZOO_KILL_AT": "batch-task-once"})
    assert done.returncode == 0, done.stderr
    assert [m["ok"] for m in json.loads(done.stdout)["models"]] == [True, True], done.stdout


@pytest.mark.slow
def test_bare_ray_starts_a_local_one(tmp_path: Path) -> None:
    """No RAY_ADDRESS and no address: zoo starts a Ray of its own (and never joins the session's)."""
    [source] = _models(tmp_path / "models", 1)
    done = _zoo("compress", source, "--ray", "-o", tmp_path / "m.zoo", env={"RAY_ADDRESS": ""})
    assert done.returncode == 0, done.stderr
    zoo.compress(source, tmp_path / "local.zoo", threads=1)
    assert _sha256(tmp_path / "m.zoo") == _sha256(tmp_path / "local.zoo")


def _large_models(folder: Path, count: int) -> list[Path]:
    """Models of 64 MiB of F32 weights each: a task takes some tenths of a second to code one."""
    folder.mkdir(parents=True)
    made = []
    for number in range(count):
        model = folder / f"large-{number}.safetensors"
        write_safetensors(model, {f"layer.{i}.weight": ("F32", random_storage("F32", (4096, 1024), 50 + 4 * number + i)) for i in range(4)})
        made.append(model)
    return made


def _as_a_terminal_starts_it() -> None:
    for number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(number, signal.SIG_DFL)


def _wait_for(condition, process: subprocess.Popen, what: str) -> None:  # noqa: ANN001 - a callable
    deadline = time.monotonic() + 120
    while not condition():
        assert process.poll() is None, f"it ended before {what}: {process.communicate()}"
        assert time.monotonic() < deadline, f"no {what} in 120 s"
        time.sleep(0.005)


@pytest.mark.slow
def test_a_batch_stopped_by_sigterm_says_so_and_leaves_no_copy_of_a_source(tmp_path: Path) -> None:
    """SIGTERM while the tasks of a batch into the zoo code sources given as URLs: Ray raised a
    plain KeyboardInterrupt for zoo's handler's Terminated ("interrupted", 130), and the tasks,
    killed by the cancel, left the copies they had fetched in the temporary folder for good. A
    Ray of zoo's own (bare --ray), so that its workers' temporary folder is this test's."""
    sources = _large_models(tmp_path / "models", 2)
    temporary = Path(tempfile.mkdtemp(prefix="zoo-t-", dir="/tmp"))  # short: Ray's sockets sit in it
    environment = {**os.environ, "PYTHONPATH": str(ROOT), "TMPDIR": str(temporary), "RAY_ADDRESS": "", "ZOO_HOME": str(tmp_path / "zoo")}
    environment.pop("ZOO_DEBUG", None)
    process = subprocess.Popen([sys.executable, "-m", "zoo", "compress", *(f"file://{source}" for source in sources), "--ray"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment,
                               preexec_fn=_as_a_terminal_starts_it)
    try:
        _wait_for(lambda: any(path.is_file() and path.stat().st_size for path in temporary.glob("zoo-batch-*/**/*")), process,
                  "copy of a source")
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=120)
        assert (process.returncode, stderr) == (143, "terminated (SIGTERM)\n")
        assert list(temporary.glob("zoo-batch-*")) == []
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        shutil.rmtree(temporary, ignore_errors=True)


def test_an_archive_put_in_place_as_a_signal_stopped_the_batch_is_named(ray_cluster: str, tmp_path: Path) -> None:
    """A task records what it put in place in its own process: on Ray, an archive that landed
    while the driver had not heard of it yet went unsaid when a signal stopped the batch ("terminated
    (SIGTERM)" alone), though it was there, whole. The driver is frozen while its tasks land."""
    sources = _large_models(tmp_path / "models", 2)
    out = tmp_path / "out"
    process = subprocess.Popen([sys.executable, "-m", "zoo", "compress", *sources, "--ray", ray_cluster, "-o", f"{out}/"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=_as_a_terminal_starts_it,
                               env={**os.environ, "PYTHONPATH": str(ROOT), "ZOO_HOME": str(tmp_path / "zoo")})
    try:
        _wait_for(lambda: out.is_dir() and any(".zoo-tmp-" in path.name for path in out.iterdir()), process, "temporary")
        process.send_signal(signal.SIGSTOP)

        def landed() -> bool:  # each task in flight has put its archive in place
            names = [path.name for path in out.iterdir()]
            return bool(names) and not any(".zoo-tmp-" in name for name in names)

        _wait_for(landed, process, "archive")
        process.send_signal(signal.SIGTERM)
        process.send_signal(signal.SIGCONT)
        _, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    archives = sorted(str(path) for path in out.iterdir())
    said = f"{archives[0]} was written" if len(archives) == 1 else f"{len(archives)} outputs were written"
    assert (process.returncode, stderr) == (143, f"terminated (SIGTERM) after {said}\n")


def test_a_sweep_on_ray_gives_the_points_of_a_local_sweep(ray_cluster: str, tmp_path: Path) -> None:
    from zoo.evaluate.sweep import sweep

    [model] = _models(tmp_path / "models", 1)
    pipelines = ["lossless", "truncate:bits=6", "codebook:bits=4"]
    said = []
    points, failures = batch.sweep(model, pipelines, ray=ray_cluster, progress=said.append)
    assert failures == [] and len(said) == 3
    local = sweep(model, pipelines, threads=1)
    assert [(p.pipeline, p.archive_bytes, p.metrics, p.pareto) for p in points] == \
        [(p.pipeline, p.archive_bytes, p.metrics, p.pareto) for p in local]
    done = _zoo("sweep", model, "-p", "lossless", "-p", "truncate:bits=6", "--ray", ray_cluster, "--json")
    assert done.returncode == 0, done.stderr
    assert [p["archive_bytes"] for p in json.loads(done.stdout)["points"]] == [p.archive_bytes for p in local[:2]]


def test_many_repositories_pulled_on_ray(ray_cluster: str, hub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    """Two repositories from a real `zoo serve` (HF_ENDPOINT, passed on to the workers) and one the hub
    lacks: the two stored as a local pull stores them, the third reported; a second pull changes nothing."""
    from zoo.hub.pull import pull

    url, upstream, env = hub
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    store = Store(tmp_path / "second")
    results = batch.pull_many(["org/tiny-bert", "org/nowhere"], store=store, ray=ray_cluster)
    assert [r.ok for r in results] == [True, False] and "org/nowhere" in results[1].error
    assert results[0].output == "org/tiny-bert@main:lossless" and not results[0].unchanged
    local_entry, _ = pull("org/tiny-bert", store=Store(tmp_path / "third"), progress_bars=False)
    mine = store.resolve("org/tiny-bert", with_files=True)
    assert (mine.archive.name, mine.commit, mine.source, mine.files) == (local_entry.archive.name, local_entry.commit, local_entry.source,
                                                                         local_entry.files)
    assert _contents(tmp_path / "second") == _contents(tmp_path / "third")  # its objects are in the zoo, as a local pull leaves them
    zoo.decompress(mine.archive, tmp_path / "exported")
    assert {p.name: _sha256(p) for p in (tmp_path / "exported").iterdir()} == \
        {name: sha256 for name, sha256 in ((f.path, f.sha256) for f in local_entry.files)}
    again = batch.pull_many(["org/tiny-bert"], store=store, ray=ray_cluster)
    assert again[0].unchanged and again[0].output == "org/tiny-bert@main:lossless"
    done = _zoo("pull", "org/tiny-bert", "org/nowhere", "--ray", ray_cluster, env=env)
    assert done.returncode == 1 and "failed org/nowhere" in done.stderr and done.stdout == "2 repositories: 1 in the zoo, 1 failed\n"


def test_a_repository_pulled_on_ray_into_a_bucket_zoo(ray_cluster: str, hub, bucket: str, tmp_path: Path,  # noqa: F811
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker puts the pulled model's objects in the bucket, the driver its manifest: the bucket
    then holds what a local pull leaves in a folder zoo."""
    from zoo.hub.pull import pull

    _, _, env = hub
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("ZOO_INDEX_HOME", str(tmp_path / "indexes"))
    results = batch.pull_many(["org/tiny-bert"], store=Store(f"{bucket}/zoo"), ray=ray_cluster)
    assert results[0].ok and "put" in results[0].seconds, results[0].error
    pull("org/tiny-bert", store=Store(tmp_path / "here"), progress_bars=False)
    storage = open_storage(f"{bucket}/zoo")
    objects = sorted(info.key.rsplit("/", 1)[-1] for info in storage.list("objects/"))
    manifests = [{k: v for k, v in json.loads(storage.read(info.key)).items() if k != "created"} for info in storage.list("manifests/")]
    assert (objects, manifests) == _contents(tmp_path / "here")


def test_a_model_is_split_into_runs_of_whole_objects() -> None:
    assert batch.split([10, 10, 10], 15) == [(0, 2), (2, 3)]
    assert batch.split([100, 1, 1], 15) == [(0, 1), (1, 3)]  # an object larger than a task is a task of its own
    assert batch.split([1, 1], 100) == [(0, 2)] and batch.split([], 100) == [(0, 0)]  # one task: not split


def test_a_bare_ray_flag_gets_the_default_address() -> None:
    from zoo.cli import bare_ray

    assert bare_ray(["zoo", "compress", "a", "b", "--ray"]) == ["zoo", "compress", "a", "b", "--ray", "default"]
    assert bare_ray(["zoo", "compress", "a", "--ray", "-o", "out"]) == ["zoo", "compress", "a", "--ray", "default", "-o", "out"]
    assert bare_ray(["zoo", "compress", "--ray", "model-a", "-o", "out"])[3:5] == ["default", "model-a"]  # a source, not an address
    for address in ("10.0.0.5:6379", "ray://head:10001", "auto", "local", "default"):
        assert bare_ray(["zoo", "compress", "a", "--ray", address]) == ["zoo", "compress", "a", "--ray", address]


def test_a_split_model_with_a_name_that_is_not_utf8_is_refused_before_its_parts_are_coded(ray_cluster: str, bucket: str, tmp_path: Path,
                                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A model larger than a task is coded by part tasks first, which put their objects in the
    bucket: the name the zoo cannot hold was refused only after them, and the objects stayed."""
    monkeypatch.setenv("ZOO_INDEX_HOME", str(tmp_path / "indexes"))
    model = tmp_path / "model"
    model.mkdir()
    write_safetensors(model / "model.safetensors", {f"w{i}": ("F32", random_storage("F32", (64, 256), i)) for i in range(4)})
    (model / os.fsdecode(b"notes-\xff.txt")).write_bytes(b"odd name\n")
    results = batch.compress_many([str(model)], store=Store(f"{bucket}/zoo"), ray=ray_cluster, task_bytes=40 << 10)
    assert not results[0].ok and "not UTF-8" in results[0].error, results[0].error
    storage = open_storage(f"{bucket}/zoo")
    assert list(storage.list("objects/")) == [] and list(storage.list("manifests/")) == []


def test_an_address_where_no_ray_answers_is_refused_in_bounded_time(tmp_path: Path) -> None:
    # ray.init waited without end on 127.0.0.1:1, a warning every 30 s; :99999 went to Ray too
    from tests.services import free_port

    [source] = _models(tmp_path / "models", 1)
    nobody = f"127.0.0.1:{free_port()}"
    done = _zoo("compress", source, "--ray", nobody, "-o", tmp_path / "out/")
    assert done.returncode == 1 and done.stderr == f"error: --ray {nobody}: no Ray cluster answers there (Connection refused)\n", done.stderr
    done = _zoo("compress", source, "--ray", "ray://127.0.0.1:99999", "-o", tmp_path / "out/")
    assert done.returncode == 1 and done.stderr == "error: --ray ray://127.0.0.1:99999: 99999 is no port (1 to 65535)\n", done.stderr
    for address in ("localhost", ":"):  # Ray's "Invalid address format" came out as a bug of zoo's (after Ray's traceback, for ":")
        done = _zoo("compress", source, f"--ray={address}", "-o", tmp_path / "out/")
        assert (done.returncode, done.stderr) == (1, f"error: --ray {address}: not a Ray address: HOST:PORT, ray://HOST:PORT, auto or local\n")
    assert not (tmp_path / "out").exists()


def test_joining_a_cluster_keeps_the_callers_signal_handlers(ray_cluster: str) -> None:
    # ray.init put its own SIGTERM handler in place of zoo's: a batch stopped by SIGTERM dumped a
    # stack and exited 1 (or 15), not 143 with its line; SIGHUP exited 130 as if interrupted
    script = ("import signal, sys\nfrom zoo import batch\n"
              "def mine(*_): pass\n"
              "for number in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):\n    signal.signal(number, mine)\n"
              "batch.connect(sys.argv[1])\n"
              "print([signal.getsignal(number) is mine for number in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)])\n")
    done = subprocess.run([sys.executable, "-c", script, ray_cluster], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0 and done.stdout.strip() == "[True, True, True]", done.stderr


def test_a_batch_says_which_files_it_kept_as_bytes(tmp_path: Path) -> None:
    # one model alone said "kept as bytes, not read as tensors"; in a batch it went unsaid, exit 0
    good, bad = _models(tmp_path / "models", 2)
    (bad / "model.safetensors").write_bytes(b"\x10" + bytes(7) + b'{"a":1}')
    for where in (("-o", f"{tmp_path / 'out'}/"), ()):
        done = _zoo("compress", good, bad, *where, env={"ZOO_HOME": str(tmp_path / "zoo")})
        assert done.returncode == 0, done.stderr
        kept = [line for line in done.stderr.splitlines() if "kept as bytes" in line]
        assert kept == ["  kept as bytes, not read as tensors: model.safetensors (safetensors header length 16 runs past the end of the "
                        "file (15 bytes))"], done.stderr


def test_an_interrupt_before_the_output_folder_exists_stays_an_interrupt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the cleanup listed the folder -o named, not made yet: "error: No such file or directory", exit 1
    [source] = _models(tmp_path / "models", 1)

    def interrupted(*_: object) -> None:
        raise KeyboardInterrupt  # Ctrl-C while Ray starts, before any task made the folder

    monkeypatch.setattr(batch, "_run", interrupted)
    with pytest.raises(KeyboardInterrupt):
        batch.compress_many([str(source)], tmp_path / "new" / "folder", ray=None)
