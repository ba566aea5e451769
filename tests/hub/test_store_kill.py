"""kill -9 at the worst moments (ZOO_KILL_AT names the point, zoo.hub.temporaries.kill_point), or
mid-write: what is left is always either the old or the new state, and the next run cleans up
exactly what killed runs of zoo left."""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import zoo
from zoo.api import compress_into
from zoo.hub.store import Store

from tests.conftest import a_file_has_bytes, named_objects, object_files, random_storage, write_safetensors
from tests.hub.test_store import hashes, zoo_cli


def killed(*args, home: Path, at: str, **env: str) -> None:
    done = zoo_cli(*args, home=home, env={"ZOO_KILL_AT": at, **env})
    assert done.returncode == -signal.SIGKILL, (done.returncode, done.stderr)


def test_a_compress_killed_after_its_manifest_is_listed(tiny_model, tmp_path):
    """Killed between the manifest and the index: the model is stored (the manifest is the
    record) and the next reader brings the index up to date."""
    home = tmp_path / "zoo"
    compress_into(Store(home), tiny_model, "before")
    killed("compress", tiny_model, "--name", "published", home=home, at="store-manifest")
    assert (home / "catalogue.behind").exists()
    assert sorted(e.name for e in Store(home).entries()) == ["before", "published"]
    assert not (home / "catalogue.behind").exists()
    assert zoo.verify(Store(home).resolve("published").archive) == []


def test_a_writer_that_finds_a_dead_writers_mark_under_the_lock_rebuilds_the_index(tiny_model, tmp_path):
    """A writer killed between its manifest and the index leaves the index marked behind. The next
    writer read the index while a third process held the lock (so it did not rebuild), then took
    the lock, added its own row and removed the mark: the dead writer's model vanished from `zoo
    ls`, export and rm ("no model of that name") until `zoo doctor`."""
    home = tmp_path / "zoo"
    compress_into(Store(home), tiny_model, "before")
    killed("compress", tiny_model, "--name", "published", home=home, at="store-manifest")
    with open(home / "lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # held by "another writer" while the next one starts
        writer = subprocess.Popen([sys.executable, "-m", "zoo", "compress", str(tiny_model), "--name", "next"],
                                  env={**os.environ, "ZOO_HOME": str(home)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 120
        while not any((home / "work").glob("job-*")) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(1.5)  # its coding done, it waits for the lock, the index read as it was
    assert writer.wait(timeout=120) == 0, writer.stderr.read()
    assert sorted(e.name for e in Store(home).entries()) == ["before", "next", "published"]
    assert not (home / "catalogue.behind").exists()


def test_ctrl_c_after_the_manifest_says_the_model_was_stored(tiny_model, tmp_path):
    """Ctrl-C between the manifest and the index: the command stops (130) and says the model is in
    the zoo, which it is, where a bare "interrupted" had the user think nothing was stored."""
    home = tmp_path / "zoo"
    done = zoo_cli("compress", tiny_model, "--name", "published", home=home, env={"ZOO_KILL_AT": "store-manifest:INT"})
    assert (done.returncode, done.stderr) == (130, "interrupted after published@main:lossless was stored in the zoo\n")
    assert [e.name for e in Store(home).entries()] == ["published"]
    assert list((home / "work").iterdir()) == []  # its work folder was removed all the same
    again = zoo_cli("compress", tiny_model, "--name", "published", home=home)
    assert again.returncode == 1 and "already in the zoo" in again.stderr


def test_ctrl_c_before_the_manifest_says_only_interrupted(tiny_model, tmp_path):
    home = tmp_path / "zoo"
    done = zoo_cli("compress", tiny_model, "--name", "unpublished", home=home, env={"ZOO_KILL_AT": "store-object:INT"})
    assert (done.returncode, done.stderr) == (130, "interrupted\n")
    assert Store(home).entries() == []


def test_ctrl_c_during_rm_lets_it_end_and_says_the_model_was_removed(tiny_model, tmp_path):
    """Ctrl-C while zoo rm removed objects: the model was gone, the command said only
    "interrupted" (130), and the objects it had not reached waited for `zoo gc`."""
    home = tmp_path / "zoo"
    store = Store(home)
    compress_into(store, tiny_model, "kept")
    compress_into(store, tiny_model, "gone", pipeline="truncate:bits=4")  # objects of its own
    compress_into(store, tiny_model, "gone")
    done = zoo_cli("rm", "gone", "--all", home=home, env={"ZOO_KILL_AT": "drop-object:INT"})
    assert (done.returncode, done.stderr) == (130, "interrupted after 2 models were removed from the zoo\n")
    assert [e.name for e in Store(home).entries()] == ["kept"]
    assert object_files(home) == named_objects(home)  # nothing left for gc
    assert Store(home).gc() == []


def test_rm_killed_midway_leaves_no_shell_for_doctor_to_bring_the_model_back_from(tmp_path):
    """Killed after its manifest went and amid its objects: the model's shell goes first, so what is
    left is objects no header names, for gc; doctor restores no manifest from a shell whose objects
    are half gone (a shell still there, all its objects with it, it gives back whole)."""
    home = tmp_path / "zoo"
    model = tmp_path / "model"
    model.mkdir()
    write_safetensors(model / "model.safetensors", {f"w{i}": ("F32", random_storage("F32", (64, 128), i)) for i in range(4)})
    shell = compress_into(Store(home), model, "gone").archive.name  # four tensors of 32 KiB: four objects and the shell
    killed("rm", "gone", home=home, at="drop-object")
    assert Store(home).entries() == [] and len(object_files(home)) == 4 and shell not in object_files(home)
    findings = Store(home).doctor()
    assert not any("restored" in finding for finding in findings), findings
    assert Store(home).entries() == []
    assert len(Store(home).gc()) == 4 and object_files(home) == set()


def test_gc_killed_midway_keeps_every_named_object(tiny_model, tmp_path):
    home = tmp_path / "zoo"
    store = Store(home)
    kept = compress_into(store, tiny_model, "kept")
    garbage = []
    for seed in range(3):
        path = home / "objects" / "sha256" / f"{seed:02x}" / (f"{seed:02x}" * 32 + ".zoo")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(1000))
        garbage.append(path)
    killed("gc", home=home, at="gc-object")
    assert sum(path.exists() for path in garbage) == 2  # one removed, then killed
    assert kept.archive.exists() and zoo.verify(kept.archive) == []
    done = zoo_cli("gc", home=home)
    assert done.returncode == 0 and "removed 2 objects" in done.stdout, done.stderr
    assert not any(path.exists() for path in garbage) and kept.archive.exists()
    assert [e.name for e in Store(home).entries()] == ["kept"]


@pytest.mark.parametrize("exchange", ["1", "0"], ids=["rename-exchange", "two-renames"])
@pytest.mark.parametrize("command", ["compress"])
def test_force_killed_between_renames_keeps_a_complete_output(tiny_model, tmp_path, exchange, command):
    """--force over an existing output: with RENAME_EXCHANGE there is no moment between the old
    and the new; with two renames a kill between them leaves the old output aside, and the next
    run beside it puts it back before anything else. (decompress replaces nothing whole: into an
    existing folder it merges file by file, and a file where its folder goes is refused.)"""
    archive = tmp_path / "m.zoo"
    zoo.compress(tiny_model, archive)
    out = tmp_path / ("out.zoo" if command == "compress" else "out")
    out.write_bytes(b"the old output")
    args = (tiny_model, "-o", out) if command == "compress" else (archive, "-o", out)
    home = tmp_path / "zoo"
    if exchange == "0":
        killed(command, *args, "--force", home=home, at="between-renames", ZOO_RENAME_EXCHANGE="0")
        [aside] = [p for p in tmp_path.iterdir() if p.name.startswith(f".{out.name}.zoo-old-")]
        assert not out.exists() and (aside / out.name).read_bytes() == b"the old output"
        refused = zoo_cli(command, *args, home=home)  # no --force: the old output is back, and kept
        assert refused.returncode == 1 and "--force" in refused.stderr
        assert out.read_bytes() == b"the old output"
    done = zoo_cli(command, *args, "--force", home=home, env={"ZOO_RENAME_EXCHANGE": exchange})
    assert done.returncode == 0, done.stderr
    if command == "compress":
        assert zoo.verify(out) == []
    else:
        assert hashes(out) == hashes(tiny_model)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_ctrl_c_between_the_renames_of_force_waits_for_the_second(tiny_model, tmp_path):
    """Ctrl-C after the old output was set aside and before the new one took its place (no rename
    exchange) left neither: the set-aside folder was removed, the old output with it."""
    out = tmp_path / "out.zoo"
    out.write_bytes(b"the old output")
    done = zoo_cli("compress", tiny_model, "-o", out, "--force", home=tmp_path / "zoo",
                   env={"ZOO_KILL_AT": "between-renames:INT", "ZOO_RENAME_EXCHANGE": "0"})
    assert (done.returncode, done.stderr) == (130, f"interrupted after {out} was written\n")
    assert zoo.verify(out) == []
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


@pytest.mark.slow
def test_temporaries_of_a_killed_compress_are_removed_by_the_next_run_only(tmp_path):
    """kill -9 mid-write leaves `.out.zoo.zoo-tmp-PID-*` and `.zoo-payload-PID-*`; the next run
    beside the same output removes them, and leaves alone what is not provably zoo's debris: a
    temporary whose writer still holds its lock, and a name zoo never makes."""
    source = tmp_path / "big.safetensors"
    write_safetensors(source, {f"w{i}": ("F32", random_storage("F32", (512, 1024), i)) for i in range(24)})
    out = tmp_path / "out.zoo"
    process = subprocess.Popen([sys.executable, "-m", "zoo", "compress", source, "-o", out, "--threads", "1"],
                               env={**os.environ, "ZOO_HOME": str(tmp_path / "zoo")}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not a_file_has_bytes(tmp_path, lambda p: p.name == "payload" and p.parent.name.startswith(".zoo-payload-")):
        assert time.monotonic() < deadline and process.poll() is None, "the compress finished before it could be killed"
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    left = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("."))
    assert [name.split(str(process.pid))[0] for name in left] == [".out.zoo.zoo-tmp-", ".zoo-payload-"]
    foreign = tmp_path / ".out.zoo.zoo-tmp-notours"
    foreign.write_text("a name zoo never makes")
    live = tmp_path / f".out.zoo.zoo-tmp-{os.getpid()}-0123abcd"
    live.write_text("a writer that is still running")
    with open(live) as holder:
        fcntl.flock(holder, fcntl.LOCK_EX)
        done = zoo_cli("compress", source, "-o", out, "--threads", "1", home=tmp_path / "zoo")
        assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == sorted([foreign.name, live.name])
    assert hashlib.sha256(foreign.read_bytes()).hexdigest() == hashlib.sha256(b"a name zoo never makes").hexdigest()
    assert zoo.verify(out) == []


def test_files_a_killed_move_into_a_folder_replaced_go_back(tmp_path):
    """decompress into an existing folder moves file by file, keeping each replaced file under
    the temporary's `.zoo-old` until all are in. Killed midway, the next sweep beside the folder puts
    the replaced files back before it removes the temporary."""
    out = tmp_path / "out"
    (out / "sub").mkdir(parents=True)
    (out / "keep.txt").write_text("the user's own file")
    script = (
        "import os, sys\n"
        "from pathlib import Path\n"
        "from zoo.hub import temporaries\n"
        "out = Path(sys.argv[1])\n"
        "with temporaries.locked_temporary(out.parent, temporaries.temporary_prefix(out), is_dir=True) as temporary:\n"
        "    aside = temporary / temporaries.SET_ASIDE / 'sub'\n"
        "    aside.mkdir(parents=True)\n"
        "    (aside / 'config.json').write_text('the old config')\n"
        "    (out / 'sub' / 'config.json').write_text('the new config')\n"
        "    os.kill(os.getpid(), 9)\n"
    )
    done = subprocess.run([sys.executable, "-c", script, str(out)], capture_output=True, check=False)
    assert done.returncode == -signal.SIGKILL, done.stderr
    from zoo.hub import temporaries

    assert len(temporaries.sweep_beside(out)) == 1
    assert (out / "sub" / "config.json").read_text() == "the old config"
    assert (out / "keep.txt").read_text() == "the user's own file"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_files_a_killed_move_from_inside_the_folder_replaced_go_back(tiny_model, tmp_path):
    """Into a folder whose parent may not be written (or that is a mount point), the temporary is
    made inside it. Killed midway, the next run into the folder puts the replaced files back: the
    sweep looked for that temporary beside the folder, or (for a mount point) put them back into
    a folder of the folder's name inside it, which is not there, and removed them with the temporary."""
    zoo.compress(tiny_model, tmp_path / "m.zoo")
    out = tmp_path / "out"
    zoo.decompress(tmp_path / "m.zoo", out)
    (out / "keep.txt").write_text("the user's own file")
    script = (
        "import os, sys\n"
        "from pathlib import Path\n"
        "from zoo.hub import temporaries\n"
        "out = Path(sys.argv[1])\n"
        "with temporaries.locked_temporary(out, temporaries.temporary_prefix(out), is_dir=True) as temporary:\n"
        "    aside = temporary / temporaries.SET_ASIDE / 'sub'\n"
        "    aside.mkdir(parents=True)\n"
        "    os.replace(out / 'sub' / 'notes.txt', aside / 'notes.txt')\n"
        "    (out / 'sub' / 'notes.txt').write_text('the new notes')\n"
        "    os.kill(os.getpid(), 9)\n"
    )
    done = subprocess.run([sys.executable, "-c", script, str(out)], capture_output=True, check=False)
    assert done.returncode == -signal.SIGKILL, done.stderr
    refused = zoo_cli("decompress", tmp_path / "m.zoo", "-o", out, home=tmp_path / "zoo")  # sweeps first, refused or not
    assert refused.returncode == 1 and "pass --force" in refused.stderr, refused.stderr
    assert (out / "sub" / "notes.txt").read_bytes() == (tiny_model / "sub" / "notes.txt").read_bytes()
    assert (out / "keep.txt").read_text() == "the user's own file"
    assert sorted(p.name for p in out.iterdir()) == sorted([p.name for p in tiny_model.iterdir()] + ["keep.txt"])


@pytest.mark.slow
def test_gc_beside_two_writers_never_takes_their_objects(tiny_model, tmp_path):
    """gc in a loop while two processes store models: a writer's object enters and is named under
    the same lock gc holds, so no object a manifest names is ever collected."""
    home = tmp_path / "zoo"
    Store(home)._make_folders()
    writer = (
        "import sys; from pathlib import Path; from zoo.api import compress_into; from zoo.hub.store import Store\n"
        "store = Store(sys.argv[1])\n"
        "for i in range(4):\n"
        "    (Path(sys.argv[2]) / 'extra.txt').write_text(f'{sys.argv[3]} {i}')  # other bytes each time: a new object\n"
        "    compress_into(store, sys.argv[2], f'{sys.argv[3]}-{i}')\n"
    )
    collector = "import sys; from zoo.hub.store import Store\nstore = Store(sys.argv[1])\nwhile True:\n    store.gc()\n"
    copies = []
    for name in ("a", "b"):
        copy = tmp_path / f"model-{name}"
        shutil.copytree(tiny_model, copy)
        copies.append(copy)
    gc_process = subprocess.Popen([sys.executable, "-c", collector, str(home)])
    try:
        writers = [subprocess.Popen([sys.executable, "-c", writer, str(home), str(copy), name]) for copy, name in zip(copies, "ab")]
        assert [w.wait(timeout=300) for w in writers] == [0, 0]
    finally:
        gc_process.kill()
        gc_process.wait()
    store = Store(home)
    assert sorted(e.name for e in store.entries()) == [f"{n}-{i}" for n in "ab" for i in range(4)]
    for entry in store.entries():
        assert zoo.verify(entry.archive) == []


def test_doctor_on_a_replacement_killed_before_its_manifest(tiny_model, tmp_path):
    """compress --force killed between its object and its manifest: the old model stays what the
    zoo holds, doctor names the new object as an unfinished copy, gc removes it."""
    home = tmp_path / "zoo"
    old = compress_into(Store(home), tiny_model, "model")
    (tiny_model / "extra.txt").write_text("new bytes")
    killed("compress", tiny_model, "--name", "model", "--force", home=home, at="store-object")
    unfinished = object_files(home) - named_objects(home)
    assert len(unfinished) == 1  # the new model's archive (its new file is small enough to lie in it)
    findings = zoo_cli("doctor", home=home).stdout
    [copy] = [line for line in findings.splitlines() if "a copy of model@main:lossless that its manifest does not name" in line]
    assert any(copy.startswith(str(old.archive.parent.parent / name[:2] / name)) for name in unfinished)
    assert Store(home).resolve("model").archive == old.archive
    assert "removed 1 object" in zoo_cli("gc", home=home).stdout
    assert object_files(home) == named_objects(home) and zoo.verify(old.archive) == []


def test_a_killed_decompress_into_a_folder_is_cleaned_up_by_the_next_one_even_when_it_is_refused(tiny_model, tmp_path):
    # a killed decompress --force into an existing folder left its temporary (the whole model);
    # a run without --force was refused before it swept, and left it there
    zoo.compress(tiny_model, tmp_path / "m.zoo")
    out = tmp_path / "out"
    zoo.decompress(tmp_path / "m.zoo", out)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a pid that no longer runs
    left = tmp_path / f".out.zoo-tmp-{dead.pid}-0123abcd"
    (left / "sub").mkdir(parents=True)
    (left / "sub" / "notes.txt").write_text("half a model")
    done = zoo_cli("decompress", tmp_path / "m.zoo", "-o", out, home=tmp_path / "zoo")
    assert done.returncode == 1 and "pass --force to replace them" in done.stderr, done.stderr
    assert not left.exists()


def test_a_signal_while_a_work_folder_is_removed_waits_until_it_is_gone(tmp_path, monkeypatch):
    # Ctrl-C landing in the rmtree of a job folder cut it short: the folder stayed until `zoo doctor`
    import shutil as shutil_module

    from zoo.hub import store as store_module

    store = Store(tmp_path / "zoo")
    real_rmtree = shutil_module.rmtree

    def rmtree_interrupted(path, **options):
        os.kill(os.getpid(), signal.SIGINT)  # mid-cleanup, as a user's Ctrl-C
        time.sleep(0.01)  # a handler would run here, between two bytecodes
        real_rmtree(path, **options)

    monkeypatch.setattr(store_module.shutil, "rmtree", rmtree_interrupted)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C as Python takes it, whatever ran before
    try:
        with pytest.raises(KeyboardInterrupt):
            with store.workspace() as folder:
                (folder / "objects").mkdir()
    finally:
        signal.signal(signal.SIGINT, previous)
    assert not folder.exists() and list((tmp_path / "zoo" / "work").iterdir()) == []


def test_a_signal_while_a_temporary_is_removed_waits_and_the_lock_is_always_let_go(tmp_path, monkeypatch):
    """Ctrl-C landing in the rmtree of a batch task's scratch folder cut it short and skipped the
    close of its lock: the process, holding its own lock, could not sweep it, waited out the
    batch's cancel time, and left it."""
    from zoo.hub import temporaries

    real_rmtree = shutil.rmtree
    how = []

    def rmtree_interrupted(path, **options):
        if how == ["signal"]:
            os.kill(os.getpid(), signal.SIGINT)  # mid-cleanup, as a user's Ctrl-C
            time.sleep(0.01)  # a handler would run here, between two bytecodes
        else:  # the removal failing however it may: the lock still goes
            raise KeyboardInterrupt
        real_rmtree(path, **options)

    monkeypatch.setattr(temporaries.shutil, "rmtree", rmtree_interrupted)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C as Python takes it, whatever ran before
    try:
        how.append("signal")
        with pytest.raises(KeyboardInterrupt):
            with temporaries.locked_temporary(tmp_path, ".m.zoo.zoo-tmp-", is_dir=True) as scratch:
                (scratch / "m.zoo").write_bytes(b"archive")
        assert not scratch.exists()
        how[:] = ["raise"]
        with pytest.raises(KeyboardInterrupt):
            with temporaries.locked_temporary(tmp_path, ".m.zoo.zoo-tmp-", is_dir=True) as scratch:
                pass
    finally:
        signal.signal(signal.SIGINT, previous)
    descriptor = os.open(scratch, os.O_RDONLY)  # left for a later run, which can take its lock
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(descriptor)

def test_ctrl_c_once_an_output_is_in_place_says_it_was_written(tiny_model, tmp_path):
    """A signal after compress -o (or decompress, or export) had put its output in place said a bare
    "interrupted": the user, told the run was cut short, found the output there, whole, and a run
    again without --force refused it. The zoo's own work files are no output of the user's."""
    archive, folder = tmp_path / "m.zoo", tmp_path / "out"
    done = zoo_cli("compress", tiny_model, "-o", archive, home=tmp_path / "zoo", env={"ZOO_KILL_AT": "output-placed:INT"})
    assert (done.returncode, done.stderr) == (130, f"interrupted after {archive} was written\n")
    assert zoo.verify(archive) == []
    done = zoo_cli("decompress", archive, "-o", folder, home=tmp_path / "zoo", env={"ZOO_KILL_AT": "output-placed:INT"})
    assert (done.returncode, done.stderr) == (130, f"interrupted after {folder} was written\n")
    assert sorted(p.name for p in folder.iterdir()) == sorted(p.name for p in tiny_model.iterdir())
    done = zoo_cli("compress", tiny_model, "--name", "m", home=tmp_path / "zoo", env={"ZOO_KILL_AT": "output-placed:INT"})
    assert (done.returncode, done.stderr) == (130, "interrupted\n")


def test_a_dead_runs_old_output_is_put_back_only_where_no_new_one_came(tmp_path):
    """The old output a killed --force had set aside goes back to its place when nothing is there;
    over a new output that a later run wrote, it would replace the user's newer file."""
    from zoo.hub.temporaries import aside_prefix, sweep_beside

    out = tmp_path / "out.zoo"
    aside = tmp_path / f"{aside_prefix(out)}999999-0123abcd"  # a writer that is gone: its lock is free
    aside.mkdir()
    (aside / out.name).write_bytes(b"the old output")
    out.write_bytes(b"the new output")
    sweep_beside(out)
    assert out.read_bytes() == b"the new output" and not aside.exists()
    aside.mkdir()
    (aside / out.name).write_bytes(b"the old output")
    out.unlink()
    sweep_beside(out)
    assert out.read_bytes() == b"the old output" and not aside.exists()


def test_adding_an_archive_under_a_name_the_zoo_holds_needs_force(tiny_model, tmp_path):
    from zoo.errors import OutputExistsError

    zoo.compress(tiny_model, tmp_path / "a.zoo")
    zoo.compress(tiny_model, tmp_path / "b.zoo", "truncate:bits=6|lossless")
    store = Store(tmp_path / "zoo")
    store.add(tmp_path / "a.zoo", "m")
    with pytest.raises(OutputExistsError, match="already in the zoo"):
        store.add(tmp_path / "a.zoo", "m")
    assert store.add(tmp_path / "a.zoo", "m", force=True).name == "m"


def test_a_rebuild_of_the_index_killed_midway_leaves_nothing_once_swept(tiny_model, tmp_path):
    """A killed rebuild left work/catalogue-PID-HEX and its -journal for good: no sweep knew the name."""
    home = tmp_path / "zoo"
    compress_into(Store(home), tiny_model, "kept")
    for _ in range(2):
        (home / "catalogue.sqlite").unlink(missing_ok=True)
        killed("ls", home=home, at="index-built")
    assert list((home / "work").iterdir())  # the killed runs' index, built and never put in place
    assert zoo_cli("gc", home=home).returncode == 0
    assert list((home / "work").iterdir()) == []
    assert [e.name for e in Store(home).entries()] == ["kept"]


def test_a_temporary_of_a_writer_killed_but_not_yet_reaped_is_stale(tmp_path):
    """A Ray worker killed -9 stays a zombie until the raylet reaps it, and kill(pid, 0) still
    answers for it: the sweep after a batch's last failed attempt took its temporary for a live
    writer's and left it in the user's -o folder (seen once in four CI runs)."""
    from zoo.hub.temporaries import is_stale, temporary_prefix

    writer = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        prefix = temporary_prefix(tmp_path / "model.zoo")
        left = tmp_path / f"{prefix}{writer.pid}-0123abcd"
        left.write_bytes(b"half an archive")
        assert not is_stale(left, prefix)  # its writer runs
        writer.kill()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and open(f"/proc/{writer.pid}/stat").read().rpartition(")")[2].split()[0] != "Z":
            time.sleep(0.01)
        assert is_stale(left, prefix)  # killed, not reaped yet: nothing of it holds the file
    finally:
        writer.kill()
        writer.wait()


def test_a_killed_writers_work_folder_is_swept_by_the_next_writer_before_its_work(tiny_model, tmp_path):
    """A writer killed while coding left its work folder, which only a publish that succeeded, gc or
    doctor swept: on a full disk every later compress failed for want of that room."""
    home = tmp_path / "zoo"
    killed("compress", tiny_model, "--name", "first", home=home, at="store-object")
    [left] = (home / "work").glob("job-*")
    with Store(home).workspace() as mine:  # where the next writer codes, before it publishes
        assert list((home / "work").glob("job-*")) == [mine]
    assert not left.exists()


def test_a_fifo_named_as_a_temporary_is_never_waited_on_and_a_dead_writers_link_is_removed(tmp_path):
    """Opening a FIFO of a temporary's name to lock it waited for a writer: anyone could make
    /tmp/zoo-sweep-1-00000000 and hang every sweep, or a FIFO beside an output hang compress."""
    from zoo.hub.temporaries import is_stale, sweep_beside, sweep_scratch, temporary_prefix

    final = tmp_path / "out.zoo"
    fifo = tmp_path / f"{temporary_prefix(final)}1-0123abcd"
    os.mkfifo(fifo)
    scratch = tmp_path / "zoo-sweep-1-0123abcd"
    os.mkfifo(scratch)
    link = tmp_path / f"{temporary_prefix(final)}99999999-0123abcd"  # of a process that is gone
    link.symlink_to(tmp_path / "elsewhere")
    (tmp_path / "elsewhere").mkdir()
    done = subprocess.run([sys.executable, "-c", "import sys, pathlib; from zoo.hub.temporaries import sweep_beside, sweep_scratch; "
                           "p = pathlib.Path(sys.argv[1]); sweep_beside(p / 'out.zoo'); sweep_scratch(p, 'zoo-sweep-')", str(tmp_path)],
                          timeout=30, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert not is_stale(fifo, temporary_prefix(final)) and fifo.exists() and scratch.exists()
    # a link at a temporary's name is the old output a --force exchanged out, its writer killed
    # before it removed it: removed (the link, not what it names)
    assert not link.is_symlink() and (tmp_path / "elsewhere").is_dir()
    assert sweep_beside(final) == [] and sweep_scratch(tmp_path, "zoo-sweep-") == tmp_path
