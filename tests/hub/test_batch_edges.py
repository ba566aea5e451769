"""zoo.batch without Ray, as `zoo compress A B` and `zoo pull A B` run it: a batch decides what a
command of one model decides (what the zoo already holds, what it refuses, what it leaves behind)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import zoo
from tests.conftest import random_storage, write_safetensors
from tests.hub.test_dedup import base_tensors, write_model
from tests.hub.test_serve import running_server
from tests.hub.test_store import hashes
from zoo import batch
from zoo.api import compress_into
from zoo.errors import InputError
from zoo.hub.store import Store

ROOT = Path(__file__).resolve().parents[2]
TERMINAL = {"FORCE_COLOR": "1", "COLUMNS": "100"}  # stderr counts as a terminal: the progress bar is drawn


def _model(folder: Path, seed: int) -> Path:
    folder.mkdir(parents=True)
    write_safetensors(folder / "model.safetensors", {"w": ("BF16", random_storage("BF16", (64, 32), seed))})
    (folder / "config.json").write_text(json.dumps({"model_type": "tiny", "seed": seed}))
    return folder


def _zoo(*args, env: dict | None = None, cwd: Path | None = None, as_another_user: bool = False) -> subprocess.CompletedProcess:
    """The zoo command in a subprocess; `as_another_user`: as root without its right to read and
    search what the permissions refuse (setpriv), so that a test's chmod applies to it."""
    command = [sys.executable, "-m", "zoo", *map(str, args)]
    if as_another_user and os.geteuid() == 0:
        command = ["setpriv", "--inh-caps=-dac_override,-dac_read_search", "--bounding-set=-dac_override,-dac_read_search", *command]
    environment = {key: value for key, value in os.environ.items() if key != "ZOO_DEBUG"}
    return subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=cwd, env={**environment, "PYTHONPATH": str(ROOT),
                                                                                            **(env or {})})


def _run_zoo_here(monkeypatch, *args) -> int:
    """The zoo command in this process (its real entry point), for a test that watches a library call."""
    from zoo.cli import main

    monkeypatch.setattr(sys, "argv", ["zoo", *map(str, args)])
    monkeypatch.delenv("ZOO_DEBUG", raising=False)
    try:
        main()
    except SystemExit as exit_:
        return exit_.code or 0
    return 0


@pytest.fixture
def two_repositories(tmp_path, monkeypatch):
    """A `zoo serve` on 127.0.0.1 holding org/a and org/b, and the environment of a client of it."""
    upstream = Store(tmp_path / "upstream")
    for seed, name in enumerate(("org/a", "org/b")):
        compress_into(upstream, _model(tmp_path / "models" / name, seed), name)
    with running_server(upstream) as url:
        for variable, value in {"HF_ENDPOINT": url, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_DISABLE_TELEMETRY": "1"}.items():
            monkeypatch.setenv(variable, value)
        yield ["org/a", "org/b"]


def test_a_batch_pull_of_other_files_than_the_zoo_holds_stores_them(two_repositories, tmp_path):
    """`zoo pull A B --include '*.json'` then `zoo pull A B` said "already in the zoo" and kept the
    config alone (the commit was the same), where `zoo pull A` stores the whole model; the other
    way round, a batch --include after a whole pull was skipped too."""
    store = Store(tmp_path / "zoo")

    def pulled(**globs):
        results = batch.pull_many(two_repositories, store=store, ray=None, **globs)
        assert all(result.ok for result in results), [result.error for result in results]
        held = {name: sorted(f.path for f in store.resolve(name, with_files=True).files) for name in two_repositories}
        return [result.unchanged for result in results], held

    assert pulled(include=["*.json"]) == ([False, False], {"org/a": ["config.json"], "org/b": ["config.json"]})
    whole = ["config.json", "model.safetensors"]
    assert pulled() == ([False, False], {"org/a": whole, "org/b": whole})
    assert pulled() == ([True, True], {"org/a": whole, "org/b": whole})  # the same commit and files: left as it is
    assert pulled(include=["*.json"]) == ([False, False], {"org/a": ["config.json"], "org/b": ["config.json"]})


@pytest.mark.skipif(os.geteuid() == 0 and shutil.which("setpriv") is None, reason="setpriv drops root's right to search any folder")
def test_a_source_with_a_subfolder_that_cannot_be_searched_does_not_stop_the_others(tmp_path):
    """The progress bar's total, counted for every source before the first, raised "Permission
    denied: M/sub/f": no model was compressed."""
    unreadable, readable = _model(tmp_path / "M", 0), _model(tmp_path / "N", 1)
    (unreadable / "sub").mkdir()
    (unreadable / "sub" / "f").write_text("data")
    (unreadable / "sub").chmod(0o644)  # listed, not searched
    try:
        done = _zoo("compress", unreadable, readable, "-o", f"{tmp_path / 'out'}/", as_another_user=True,
                    env={"ZOO_HOME": str(tmp_path / "zoo"), **TERMINAL})
    finally:
        (unreadable / "sub").chmod(0o755)
    assert done.stdout.startswith("2 models: "), done.stderr  # M lands or fails alone, as its own task finds it
    assert f"landed {tmp_path / 'out' / 'N.zoo'}: " in done.stderr and (tmp_path / "out" / "N.zoo").is_file(), done.stderr


def test_an_output_given_as_a_file_url_is_refused_where_its_folder_would_be(tmp_path, monkeypatch):
    """-o file://PATH is the folder PATH: the archives were written inside a model folder (a file of
    that model the next time it is compressed) and inside the zoo's own folder, which -o PATH refuses."""
    monkeypatch.setenv("ZOO_HOME", str(tmp_path / "zoo"))
    first, second = _model(tmp_path / "A", 0), _model(tmp_path / "B", 1)
    for output, said in ((f"file://{first}/", f"{first}: is the model folder {first}"),
                         (f"file://{tmp_path / 'zoo'}", f"{tmp_path / 'zoo'}: is the zoo's own folder")):
        with pytest.raises(InputError, match=re.escape(said)):
            batch.compress_many([str(first), str(second)], output, ray=None)
    assert sorted(path.name for path in first.iterdir()) == ["config.json", "model.safetensors"]
    assert not (tmp_path / "zoo").exists()


def test_a_bad_pipeline_is_said_once_and_makes_no_output_folder(tmp_path):
    """With -o, each task parsed the SPEC: a "failed" line per model, and the folder -o named left
    there, made and empty; into the zoo it was said once, up front."""
    first, second = _model(tmp_path / "A", 0), _model(tmp_path / "B", 1)
    for where in (["-o", f"{tmp_path / 'new' / 'deep'}/"], []):
        done = _zoo("compress", first, second, *where, "-p", "zstd:level=99", env={"ZOO_HOME": str(tmp_path / "zoo")})
        assert (done.returncode, done.stdout, done.stderr) == (1, "", "error: zstd: level must be an integer in -131072..22, got 99\n")
    assert not (tmp_path / "new").exists()


def test_an_output_folder_the_batch_made_goes_when_nothing_landed_in_it(tmp_path):
    """Every model failing (or a Ctrl-C before the first landed) left the folder -o named, made by
    the tasks and empty, where one model's compress leaves nothing; one that was there stays."""
    empty = [tmp_path / "E", tmp_path / "F"]
    for folder in empty:
        folder.mkdir()
    results = batch.compress_many([str(folder) for folder in empty], tmp_path / "x" / "deep", ray=None)
    assert [result.ok for result in results] == [False, False] and not (tmp_path / "x").exists()
    (tmp_path / "there").mkdir()
    batch.compress_many([str(folder) for folder in empty], tmp_path / "there", ray=None)
    assert (tmp_path / "there").is_dir()
    models = [_model(tmp_path / "A", 0), _model(tmp_path / "B", 1)]
    done = _zoo("compress", *models, "-o", f"{tmp_path / 'y' / 'deep'}/", env={"ZOO_HOME": str(tmp_path / "zoo"),
                                                                                "ZOO_KILL_AT": "batch-scratch:INT"})
    assert (done.returncode, done.stderr) == (130, "interrupted\n") and not (tmp_path / "y").exists()
    results = batch.compress_many([str(empty[0]), str(models[0])], tmp_path / "z" / "deep", ray=None)  # one landed: it stays
    assert [result.ok for result in results] == [False, True] and [p.name for p in (tmp_path / "z" / "deep").iterdir()] == ["A.zoo"]


def test_a_bad_glob_of_a_batch_pull_is_said_once_before_any_download(two_repositories, tmp_path):
    # each task downloaded with it, and reported that no file passed it
    with pytest.raises(InputError, match=r"^--include '\[abc' opens a '\[' that no '\]' closes$"):
        batch.pull_many(two_repositories, store=Store(tmp_path / "zoo"), include=["[abc"], ray=None)
    assert not (tmp_path / "hf").exists()


def test_ctrl_c_right_after_an_archive_replaced_the_old_says_it_was_written(tmp_path):
    """Under --force, a Ctrl-C after a task had put its archive in place, before the driver recorded
    it, said a bare "interrupted": the old archive was gone, replaced, and nothing said so."""
    models = [_model(tmp_path / "A", 0), _model(tmp_path / "B", 1)]
    (tmp_path / "out").mkdir()
    for model in models:
        (tmp_path / "out" / f"{model.name}.zoo").write_text("the old archive")
    done = _zoo("compress", *models, "-o", "out/", "--force", cwd=tmp_path, env={"ZOO_HOME": str(tmp_path / "zoo"),
                                                                                "ZOO_KILL_AT": "batch-placed:INT"})
    assert (done.returncode, done.stderr) == (130, "interrupted after out/A.zoo was written\n")
    assert (tmp_path / "out" / "B.zoo").read_text() == "the old archive"


# A task's process killed as ray.cancel(force=True) kills it, once it has copied a source into its
# scratch folder: its own cleanup never runs.
_KILLED_TASK = """
import os, signal, sys
from zoo import batch
held = batch._task_scratch(sys.argv[1])
scratch = held.__enter__()
(scratch / "copy.safetensors").write_bytes(bytes(4096))
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_stopped_batch_removes_what_its_killed_tasks_fetched(tmp_path, monkeypatch):
    """A batch stopped by a signal kills its Ray tasks, whose cleanup never runs: their copies of
    the sources given as URLs (or, -o a bucket, their archives) stayed in /tmp for good. A task on
    the driver's machine keeps them in the driver's scratch folder, which the driver removes once
    the task is gone; on a machine that cannot see it, in that machine's temporary folder, where
    the next task of a batch there removes them."""
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))

    def killed_task(driver_scratch: str) -> None:
        done = subprocess.run([sys.executable, "-c", _KILLED_TASK, driver_scratch], capture_output=True, text=True, timeout=120,
                              env={**os.environ, "PYTHONPATH": str(ROOT), "TMPDIR": str(tmp_path)})
        assert done.returncode == -9, done.stderr

    with pytest.raises(KeyboardInterrupt):
        with batch._batch_scratch() as scratch:
            killed_task(scratch)
            assert [len(list(task.iterdir())) for task in Path(scratch).iterdir()] == [1]
            raise KeyboardInterrupt  # the signal that stopped the batch
    assert list(tmp_path.iterdir()) == []
    elsewhere = str(tmp_path / "on-another-machine" / "zoo-batch-1-0123abcd")  # the driver's, which this machine does not see
    killed_task(elsewhere)
    [left] = tmp_path.iterdir()
    with batch._task_scratch(elsewhere) as scratch:
        assert list(tmp_path.iterdir()) == [scratch] != [left]
    assert list(tmp_path.iterdir()) == []


def test_a_source_given_as_a_url_is_named_as_its_path_is(tmp_path):
    # file:///.../lmfile.safetensors went into the zoo as lmfile.safetensors, where the path gives lmfile
    model = tmp_path / "lmfile.safetensors"
    write_safetensors(model, {"w": ("BF16", random_storage("BF16", (64, 32), 3))})
    [landed] = batch.compress_many([f"file://{model}"], store=Store(tmp_path / "zoo"), ray=None)
    assert landed.output == "lmfile@main:lossless" and batch.zoo_name(str(model)) == "lmfile", landed.error


def test_two_sources_of_one_name_are_refused_with_what_to_do(tmp_path):
    """"give them names of their own" said no way to: --name is refused with several SOURCEs."""
    first, second = _model(tmp_path / "a" / "llama", 0), _model(tmp_path / "b" / "llama", 1)
    home = {"ZOO_HOME": str(tmp_path / "zoo")}
    for where, how in (([], "--name NAME"), (["-o", f"{tmp_path / 'out'}/"], "-o DIR/NAME.zoo")):
        done = _zoo("compress", first, second, *where, env=home)
        assert (done.returncode, done.stderr) == (1, f"error: two sources would be stored as llama{'.zoo' if where else ''}: "
                                                     f"compress them one at a time, each with {how}\n")
    done = _zoo("compress", second, "--name", "llama-b", env=home)  # as it says
    assert done.returncode == 0, done.stderr


def test_several_models_here_get_the_threads_one_model_gets(tmp_path, monkeypatch, two_repositories):
    """Run here, one after another, each model of `zoo compress A B -o DIR/` or `zoo pull A B` was
    coded on 1 thread, where -t's default (up to 8, one per core) is what one model gets; on Ray,
    where they run side by side, 1 CPU each stays the default."""
    from zoo import api
    from zoo.kernels.parallel import resolve_threads

    seen = []
    for function in ("compress", "build_model"):  # the calls that code a model, -o and into the zoo
        real = getattr(api, function)
        monkeypatch.setattr(api, function, lambda *args, real=real, **options: seen.append(options["threads"]) or real(*args, **options))
    monkeypatch.setenv("ZOO_HOME", str(tmp_path / "zoo"))
    monkeypatch.setattr(os, "cpu_count", lambda: 4)  # where one core would make the default 1 too
    models = [_model(tmp_path / "A", 0), _model(tmp_path / "B", 1)]
    default = resolve_threads(None)
    assert _run_zoo_here(monkeypatch, "compress", *models, "-o", f"{tmp_path / 'out'}/") == 0
    assert _run_zoo_here(monkeypatch, "compress", *models, "-o", f"{tmp_path / 'three'}/", "-t", "3") == 0
    assert seen == [default, default, 3, 3]
    seen.clear()
    assert _run_zoo_here(monkeypatch, "pull", *two_repositories) == 0
    assert seen and set(seen) == {default}
    assert batch.threads_per_model(None, "127.0.0.1:6379") == 1 and batch.threads_per_model(4, "127.0.0.1:6379") == 4



def put_another_coding(store: Store, model: Path, folder: Path) -> None:
    """The objects of `model`'s tensors as another machine codes them (bytegroup|zstd) put in the
    bucket zoo `store`, its manifest not yet: a batch that looked at the zoo before saw no model."""
    other = Store(folder)
    theirs = compress_into(other, model, "m", pipeline="bytegroup|zstd")
    for path in other.objects.rglob("*.zoo"):
        if path.name != theirs.archive.name:
            store.storage.put(store.object_key(path.name.removesuffix(".zoo")), path)


@pytest.mark.parametrize("small_files", [True, False])
def test_a_batch_into_a_bucket_names_an_object_stored_meanwhile_coded_otherwise_as_the_bucket_codes_it(small_files, bucket, tmp_path,
                                                                                                      monkeypatch):
    """Another machine stores the same tensors with another lossless pipeline while a batch runs:
    a worker's put finds that coding under the name (a lossless tensor's object is named by what it
    decodes to) and leaves it, and the model's shell, put by the worker, named the worker's own
    coding, which the bucket does not hold. The driver's publish refused the model as damaged
    where it decodes a small file (its chunk indexes read), and published it, unreadable on every
    machine, where there is none (a model of large files alone). The worker now points the shell
    at the bucket's coding, as one model's publish does (Store._match_the_bucket)."""
    if not small_files:  # every file a large one: none is decoded at the publish
        monkeypatch.setattr("zoo.hub.manifest.LFS_MIN_BYTES", 0)
    monkeypatch.setenv("ZOO_INDEX_HOME", str(tmp_path / "indexes"))
    url = f"{bucket}/zoo"
    model = write_model(tmp_path / "model", base_tensors())
    store = Store(url)
    put_another_coding(store, model, tmp_path / "other-machine")
    [landed] = batch.compress_many([str(model)], store=store, names=["model"], ray=None)
    assert landed.ok, landed.error
    monkeypatch.setenv("ZOO_INDEX_HOME", str(tmp_path / "fresh-index"))  # a machine that ran none of it
    fresh = Store(url)
    zoo.decompress(fresh.resolve("model").archive, tmp_path / "out")
    assert hashes(tmp_path / "out") == hashes(model)
    [manifest] = [info.key for info in fresh.storage.list("manifests/model/")]
    record = json.loads(fresh.storage.read(manifest))
    assert {o["sha256"]: o["size"] for o in record["objects"]} == {
        o["sha256"]: fresh.storage.stat(fresh.object_key(o["sha256"])).size for o in record["objects"]}



def damage_an_object(store: Store, how: str) -> None:
    """The largest object of the zoo `store` holding a tensor (not a model's archive), damaged where
    the zoo keeps it: a byte of its payload flipped, or its end "cut short"."""
    archives = {entry.archive.name for entry in store.entries()}
    if store.storage is None:
        path = max((p for p in store.objects.rglob("*.zoo") if p.name not in archives), key=lambda p: p.stat().st_size)
        data = bytearray(path.read_bytes())
        os.chmod(path, 0o644)
        write = path.write_bytes
    else:
        key = max((i for i in store.storage.list("objects/") if i.key.rsplit("/", 1)[-1] not in archives), key=lambda i: i.size).key
        data = bytearray(store.storage.read(key))

        def write(damaged: bytes) -> None:
            store.storage.fs.pipe_file(store.storage.path(key), damaged)
    if how == "cut short":
        del data[-100:]
    else:
        data[len(data) // 2] ^= 0x10
    write(bytes(data))


@pytest.mark.parametrize("damage", ["flipped", "cut short"])
@pytest.mark.parametrize("into", ["bucket", "folder"])
def test_a_batch_repairs_an_object_damaged_in_the_zoo_as_one_model_does(into, damage, request, tmp_path, monkeypatch):
    """A model stored again (here a relative holding the same tensors) by a batch codes an object the
    zoo holds damaged again, as one model's build does (ObjectSink.repairs), but the batch handed
    those repairs to no one: into a bucket the worker put the new coding if absent, and a folder
    zoo's driver took in a sink without them, so the damaged object stayed. Bytes flipped, the
    model was published naming it; cut short, a bucket refused the model as "damaged, or changed
    while the model was stored". The batch now repairs it as one model's publish does."""
    monkeypatch.setenv("ZOO_INDEX_HOME", str(tmp_path / "writer-index"))
    url = f"{request.getfixturevalue('bucket')}/zoo" if into == "bucket" else str(tmp_path / "zoo")
    base = write_model(tmp_path / "base", base_tensors())
    compress_into(Store(url), base, "base")
    damage_an_object(Store(url), damage)
    monkeypatch.setenv("ZOO_INDEX_HOME", str(tmp_path / "batch-index"))  # another machine, driver and worker
    relative = write_model(tmp_path / "relative", base_tensors())
    [landed] = batch.compress_many([str(relative)], store=Store(url), names=["relative"], ray=None)
    assert landed.ok, landed.error
    here = Store(url)
    if here.storage is not None:  # the batch's machine keeps no copy of the damaged object it fetched to check
        assert all(path.read_bytes() == here.storage.read(here.object_key(path.name.removesuffix(".zoo")))
                   for path in here.objects.rglob("*.zoo"))
    monkeypatch.setenv("ZOO_INDEX_HOME", str(tmp_path / "fresh-index"))  # a machine that ran none of it
    fresh = Store(url)
    assert fresh.verify()[2] == []
    for name, model in [("base", base), ("relative", relative)]:
        zoo.decompress(fresh.resolve(name).archive, tmp_path / f"out-{name}")
        assert hashes(tmp_path / f"out-{name}") == hashes(model)
