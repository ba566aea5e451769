"""The zoo loses nothing: a catalogue truncated, damaged, missing or unopenable is rebuilt from the
manifests (or read around), a zoo of the old layout is migrated, a failed or killed write leaves
no half-model, and no command deletes what it cannot prove is an unfinished write of its own."""

from __future__ import annotations

import json
import os
import resource
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import pytest

import zoo
from zoo.api import compress_into
from zoo.codecs.pipeline import DEFAULT_SPEC
from zoo.errors import ZooError
from zoo.hub import catalogue
from zoo.hub.store import Store

from tests.conftest import largest_object, named_objects, object_files, random_storage, write_safetensors, write_tiny_llama
from tests.hub.test_store import zoo_cli

# The catalogue schema of the layout before manifests (archives/*.zoo; the catalogue was the record).
OLD_SCHEMA = """
CREATE TABLE models (id INTEGER PRIMARY KEY, name TEXT NOT NULL, revision TEXT NOT NULL, variant TEXT NOT NULL,
    commit_sha TEXT NOT NULL, archive TEXT NOT NULL UNIQUE, pipeline TEXT NOT NULL, source TEXT, original_bytes INTEGER NOT NULL,
    stored_bytes INTEGER NOT NULL, created REAL NOT NULL, quality TEXT, UNIQUE (name, revision, variant));
CREATE TABLE files (model_id INTEGER NOT NULL REFERENCES models(id) ON DELETE CASCADE, path TEXT NOT NULL, size INTEGER NOT NULL,
    sha256 TEXT NOT NULL, served_sha256 TEXT NOT NULL, git_oid TEXT NOT NULL, lfs INTEGER NOT NULL, lossless INTEGER NOT NULL,
    PRIMARY KEY (model_id, path));
PRAGMA user_version = 1;
"""


def objects(home: Path) -> list[Path]:
    return sorted((home / "objects").rglob("*.zoo"))


def listed(home: Path) -> list[str]:
    done = zoo_cli("ls", "--json", home=home)
    assert done.returncode == 0, done.stderr
    return sorted(f"{m['name']}@{m['revision']}:{m['variant']}" for m in json.loads(done.stdout)["models"])


def one_line_error(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert done.stderr.startswith("error: ") and done.stderr.strip().count("\n") == 0, done.stderr
    assert "unexpected" not in done.stderr and "a bug in zoo" not in done.stderr, done.stderr
    return done.stderr


@pytest.fixture
def two_models(tiny_model, tmp_path):
    home = tmp_path / "zoo"
    compress_into(Store(home), tiny_model, "org/first")
    compress_into(Store(home), tiny_model, "second", pipeline="truncate:bits=5")
    return home


def test_a_zero_byte_catalogue_loses_nothing(two_models, tiny_model):
    """The issue's scenario: the catalogue truncated to 0 bytes; `zoo ls` still lists every model
    and the next compress deletes no archive."""
    home = two_models
    before = objects(home)
    (home / "catalogue.sqlite").write_bytes(b"")
    assert listed(home) == ["org/first@main:lossless", "second@main:truncate:bits=5"]
    (home / "catalogue.sqlite").write_bytes(b"")
    done = zoo_cli("compress", tiny_model, "--name", "third", home=home)
    assert done.returncode == 0, done.stderr
    assert set(before) < set(objects(home))
    assert listed(home) == ["org/first@main:lossless", "second@main:truncate:bits=5", "third@main:lossless"]
    for entry in Store(home).entries():
        assert zoo.verify(entry.archive) == []


@pytest.mark.parametrize("damage", ["garbage", "half", "missing"])
def test_a_damaged_catalogue_is_rebuilt_and_doctor_says_so(two_models, damage):
    home = two_models
    catalogue = home / "catalogue.sqlite"
    if damage == "garbage":
        catalogue.write_bytes(b"this is not a database, it is a text file " * 100)
    elif damage == "half":
        catalogue.write_bytes(catalogue.read_bytes()[: catalogue.stat().st_size // 2])
    else:
        catalogue.unlink()
    doctor = zoo_cli("doctor", home=home)
    assert doctor.returncode == 0, doctor.stderr
    [finding] = doctor.stdout.strip().splitlines()
    assert finding.startswith(str(catalogue)) and "rebuilt from 2 manifests" in finding
    assert listed(home) == ["org/first@main:lossless", "second@main:truncate:bits=5"]
    assert "no problems found" in zoo_cli("doctor", home=home).stdout
    if damage != "garbage":
        return
    catalogue.write_bytes(b"\0" * 4096)  # and without doctor: every command just works
    for command in (("ls",), ("info", "org/first"), ("verify", "org/first")):
        done = zoo_cli(*command, home=home)
        assert done.returncode == 0 and "unexpected" not in done.stderr, (command, done.stderr)


@pytest.mark.parametrize("row", ["org/first", "second"])
def test_an_index_row_that_disagrees_with_its_manifest_never_chooses_what_rm_removes(two_models, row):
    """A flipped byte in a row (org/first read as org/x) passed the quick check and the count:
    doctor found no problem, `ls` listed org/x, and `rm org/x --all` removed the other model."""
    home = two_models
    with closing(sqlite3.connect(home / "catalogue.sqlite")) as connection, connection:
        connection.execute("UPDATE models SET name = 'org/x' WHERE name = ?", (row,))
    store = Store(home)
    with pytest.raises(ZooError, match=r"'org/x' is not in the zoo"):
        store.remove("org/x", every=True)
    assert listed(home) == ["org/first@main:lossless", "second@main:truncate:bits=5"]  # the index rebuilt on the way
    with closing(sqlite3.connect(home / "catalogue.sqlite")) as connection, connection:
        connection.execute("UPDATE models SET name = 'org/x' WHERE name = ?", (row,))
    doctor = zoo_cli("doctor", home=home)
    assert doctor.returncode == 0 and "its rows disagree with the manifests; rebuilt from 2 manifests" in doctor.stdout, doctor.stdout
    assert listed(home) == ["org/first@main:lossless", "second@main:truncate:bits=5"]
    assert [e.ref for e in Store(home).remove("org/first")] == ["org/first@main:lossless"]
    assert listed(home) == ["second@main:truncate:bits=5"]


def test_export_of_a_model_whose_archive_is_missing_says_so(two_models, tmp_path):
    """It said "<the archive's path>: no such file, and no model of that name in the zoo" of a
    model `zoo ls` lists."""
    home = two_models
    Store(home).resolve("org/first").archive.unlink()
    for command in (("export", "org/first", "-o", tmp_path / "out"), ("info", "org/first")):
        message = one_line_error(zoo_cli(*command, home=home))
        assert message.startswith("error: org/first@main:lossless: its archive ") and "is missing from the zoo" in message, message
    assert not (tmp_path / "out").exists()


def test_info_of_a_model_whose_manifest_is_damaged_says_so_not_zero_objects(two_models):
    """It printed "0 of its 0 objects (0 B) ... it adds 0 B" for a model the index still listed."""
    home = two_models
    Store(home).manifest_path("org/first", "main", "lossless").write_text("{ not json")
    message = one_line_error(zoo_cli("info", "org/first", home=home))
    assert message.startswith("error: org/first@main:lossless: its manifest cannot be read"), message


def test_verify_of_a_missing_file_names_it(two_models):
    (two_models / "catalogue.sqlite").write_bytes(b"not a database" * 100)
    message = one_line_error(zoo_cli("verify", "/nonexistent.zoo", home=two_models))
    assert "/nonexistent.zoo: no such file" in message


def test_an_unopenable_catalogue_is_read_around(two_models):
    """A catalogue that cannot be opened or rebuilt (here a folder in its place; the same path
    as a disk I/O error): the manifests are read instead, and doctor reports it among its findings
    (before, as an error that cut the findings short: a manifest it had restored went unsaid)."""
    catalogue = two_models / "catalogue.sqlite"
    catalogue.unlink()
    catalogue.mkdir()
    assert listed(two_models) == ["org/first@main:lossless", "second@main:truncate:bits=5"]
    assert zoo_cli("export", "org/first", "-o", two_models.parent / "out", home=two_models).returncode == 0
    manifest = Store(two_models).manifest_path("org/first", "main", "lossless")
    manifest.unlink()  # its shell is named by no manifest: doctor restores it, then fails to index
    doctor = zoo_cli("doctor", home=two_models)
    assert doctor.returncode == 1 and "unexpected" not in doctor.stderr, doctor.stderr
    lines = doctor.stdout.splitlines()
    assert any(line.endswith("its header says it is org/first@main:lossless: manifest restored") for line in lines), lines
    assert "cannot rebuild the catalogue" in lines[-1] and lines[-1].endswith("commands read the manifests meanwhile"), lines
    assert listed(two_models) == ["org/first@main:lossless", "second@main:truncate:bits=5"]


def test_a_catalogue_that_cannot_be_put_in_place_is_named_not_the_temporary(two_models):
    """A rename's error names its destination second (OSError.filename2): with a folder in the
    catalogue's place, doctor said "Is a directory: .../work/.catalogue.zoo-tmp-...", a file of
    its own that no one knows, gone by then."""
    catalogue = two_models / "catalogue.sqlite"
    catalogue.unlink()
    catalogue.mkdir()
    findings = Store(two_models).doctor()
    assert f"cannot rebuild the catalogue: Is a directory: {catalogue} (" in findings[-1], findings
    assert "tmp" not in findings[-1].replace(str(two_models), ""), findings
    from zoo.hub.store import _reason

    # where either side of a rename may be at fault (a folder that may not be written), both are said
    assert _reason(PermissionError(13, "Permission denied", "archives/x.zoo", None, "unreadable/x.zoo")) == \
        "Permission denied: archives/x.zoo -> unreadable/x.zoo"


def _no_bigger_files_than(limit: int):
    def apply() -> None:
        import signal

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def test_ls_on_a_full_disk_reads_the_manifests(two_models):
    """No file may grow (as on a full disk): the damaged catalogue cannot be rebuilt, `zoo ls`
    still answers from the manifests."""
    (two_models / "catalogue.sqlite").write_bytes(b"")
    done = subprocess.run([sys.executable, "-m", "zoo", "ls", "--json"], capture_output=True, text=True, check=False, timeout=120,
                          env={**os.environ, "ZOO_HOME": str(two_models)}, preexec_fn=_no_bigger_files_than(0))
    assert done.returncode == 0, done.stderr
    assert len(json.loads(done.stdout)["models"]) == 2
    doctor = subprocess.run([sys.executable, "-m", "zoo", "doctor"], capture_output=True, text=True, check=False, timeout=120,
                            env={**os.environ, "ZOO_HOME": str(two_models)}, preexec_fn=_no_bigger_files_than(0))
    assert doctor.returncode == 1 and "cannot rebuild the catalogue" in doctor.stdout and "unexpected" not in doctor.stderr, doctor.stderr


def test_export_of_a_standalone_archive_onto_a_full_disk_names_its_output(two_models, tmp_path):
    # `zoo export NAME --archive -o full/x.zoo` said "error: No space left on device", no path
    done = subprocess.run([sys.executable, "-m", "zoo", "export", "org/first", "--archive", "-o", tmp_path / "x.zoo"], capture_output=True,
                          text=True, check=False, timeout=120, env={**os.environ, "ZOO_HOME": str(two_models)},
                          preexec_fn=_no_bigger_files_than(1024))
    assert one_line_error(done).strip().endswith(f"File too large: {tmp_path / 'x.zoo'}"), done.stderr
    assert not (tmp_path / "x.zoo").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".x.zoo")]


def test_a_write_whose_manifest_fails_leaves_no_object(tiny_model, tmp_path):
    home = tmp_path / "zoo"
    store = Store(home)
    compress_into(store, tiny_model, "kept")
    (home / "manifests" / "blocked").write_text("a file where the model's manifest folder must go")
    with pytest.raises(ZooError, match="cannot store blocked@main:truncate:bits=5 .*nothing was stored"):
        compress_into(store, tiny_model, "blocked", pipeline="truncate:bits=5")
    assert object_files(home) == named_objects(home)
    assert [e.name for e in store.entries()] == ["kept"]
    assert not list((home / "work").iterdir())


def _old_layout(home: Path, tiny_model: Path) -> dict[str, Path]:
    """A zoo as the code before manifests left it: archives/NAME-RANDOM.zoo and a catalogue of schema 1."""
    (home / "archives").mkdir(parents=True)
    archives = {}
    for name, spec in (("org/old", DEFAULT_SPEC), ("lossy", "truncate:bits=5")):
        path = home / "archives" / f"{name.replace('/', '--')}-{os.urandom(6).hex()}.zoo"
        zoo.compress(tiny_model, path, spec, metadata={"source": "somewhere"})
        archives[name] = path
    with sqlite3.connect(home / "catalogue.sqlite") as connection:
        connection.executescript(OLD_SCHEMA)
        path = archives["org/old"]
        cursor = connection.execute(
            "INSERT INTO models (name, revision, variant, commit_sha, archive, pipeline, source, original_bytes, stored_bytes, created,"
            " quality) VALUES ('org/old', 'v1', 'lossless', ?, ?, '', 'from the row', 10, ?, 1000.0, ?)",
            ("c" * 40, path.name, path.stat().st_size, json.dumps({"kind": "model", "kl": 0.5})))
        connection.execute("INSERT INTO files VALUES (?, 'model.safetensors', 10, ?, ?, ?, 1, 1)",
                           (cursor.lastrowid, "a" * 64, "a" * 64, "b" * 40))
    return archives


def test_an_old_layout_zoo_is_migrated_from_rows_and_headers(tiny_model, tmp_path):
    """One archive keeps its catalogue row; the other's row is gone and comes back from its header
    and file name. Nothing is deleted, archives/ is empty afterwards."""
    home = tmp_path / "zoo"
    archives = _old_layout(home, tiny_model)
    sizes = {name: path.stat().st_size for name, path in archives.items()}
    assert listed(home) == ["lossy@main:truncate:bits=5", "org/old@v1:lossless"]
    assert not (home / "archives").exists()
    store = Store(home)
    old = store.resolve("org/old@v1")
    assert (old.commit, old.source, old.quality, old.created) == ("c" * 40, "from the row", {"kind": "model", "kl": 0.5}, 1000.0)
    lossy = store.resolve("lossy", with_files=True)
    assert lossy.source == "somewhere" and lossy.stored_bytes == sizes["lossy"] and lossy.files[0].path == "config.json"
    assert sorted(p.stat().st_size for p in objects(home)) == sorted(sizes.values())
    for entry in store.entries():
        assert zoo.verify(entry.archive) == []


def test_an_old_layout_zoo_whose_catalogue_was_deleted_is_still_a_zoo(tiny_model, tmp_path):
    """archives/*.zoo beside the work/ an old zoo always made, its catalogue deleted: the check for a
    folder of the user's refused it, ls said it was empty and doctor could not run."""
    home = tmp_path / "zoo"
    _old_layout(home, tiny_model)
    (home / "catalogue.sqlite").unlink()
    (home / "work").mkdir(exist_ok=True)
    assert listed(home) == ["lossy@main:truncate:bits=5", "org/old@main:lossless"]  # named from their headers and file names
    (tmp_path / "project" / "archives").mkdir(parents=True)  # a project's archives beside its README stay a project
    (tmp_path / "project" / "archives" / "mine.zoo").write_bytes(objects(home)[0].read_bytes())
    (tmp_path / "project" / "README.md").write_text("mine")
    done = zoo_cli("ls", home=tmp_path / "project")
    assert (done.returncode, "is no zoo (it holds 'README.md'" in done.stderr) == (1, True), done.stderr
    assert sorted(p.name for p in (tmp_path / "project").rglob("*")) == ["README.md", "archives", "mine.zoo"]


def test_an_old_layout_zoo_with_a_zero_byte_catalogue_keeps_every_archive(tiny_model, tmp_path):
    home = tmp_path / "zoo"
    archives = _old_layout(home, tiny_model)
    (home / "catalogue.sqlite").write_bytes(b"")
    done = zoo_cli("compress", tiny_model, "--name", "new", home=home)  # once the step that deleted every archive
    assert done.returncode == 0, done.stderr
    assert listed(home) == ["lossy@main:truncate:bits=5", "new@main:lossless", "org/old@main:lossless"]
    assert object_files(home) == named_objects(home) and len(named_objects(home, Store(home).resolve("lossy"))) == 1
    assert all(not path.exists() for path in archives.values())


def test_a_manifest_naming_an_archive_that_is_not_there_gets_its_model_back_not_collected(two_models, tmp_path):
    """One wrong hex digit in a manifest's archive name: doctor called the real archive "a copy
    ... `zoo gc` removes it", gc removed it, and the model was lost for good."""
    home = two_models
    store = Store(home)
    manifest = store.manifest_path("org/first", "main", "lossless")
    archive = store.resolve("org/first").archive.name.removesuffix(".zoo")
    wrong = archive[:10] + ("0" if archive[10] != "0" else "1") + archive[11:]
    manifest.write_text(manifest.read_text().replace(archive, wrong))
    before = objects(home)
    done = zoo_cli("gc", home=home)
    assert done.returncode == 0, done.stderr
    assert objects(home) == before  # the archive, and every object it names, kept for doctor
    doctor = zoo_cli("doctor", home=home)
    assert "its header says it is org/first@main:lossless: damaged manifest replaced" in doctor.stdout, doctor.stdout
    zoo.decompress(Store(home).resolve("org/first").archive, tmp_path / "out")
    assert "no problems found" in zoo_cli("doctor", home=home).stdout
    assert zoo_cli("gc", home=home).returncode == 0 and objects(home) == before


def test_doctor_gives_an_object_back_its_manifest(tiny_model, tmp_path):
    """Manifests lost but objects kept: compress_into writes the name into each archive's header,
    so doctor restores the manifest; an object whose header names nothing is left for gc."""
    home = tmp_path / "zoo"
    store = Store(home)
    entry = compress_into(store, tiny_model, "org/restored", "v2")
    manifest = store.manifest_path("org/restored", "v2", "lossless")
    manifest.unlink()
    stray = home / "objects" / "sha256" / "ff" / ("f" * 64 + ".zoo")
    stray.parent.mkdir(parents=True)
    zoo.compress(tiny_model, stray)
    findings = zoo_cli("doctor", home=home).stdout.strip().splitlines()
    assert any(line.startswith(str(entry.archive)) and "org/restored@v2:lossless: manifest restored" in line for line in findings), findings
    assert any(line.startswith(str(stray)) and "`zoo gc` removes it" in line for line in findings), findings
    assert sum("`zoo gc` removes it" in line for line in findings) == 1  # the restored manifest names the model's objects again
    restored = Store(home).resolve("org/restored@v2")
    assert (restored.commit, restored.stored_bytes) == (entry.commit, entry.stored_bytes)
    assert "removed 1 object" in zoo_cli("gc", home=home).stdout
    assert not stray.exists() and entry.archive.exists()


def test_doctor_tells_a_model_by_its_metadata_however_far_into_its_header(tmp_path):
    """Header keys are sorted, so `files` and `tensors` come before `metadata`: in a model of many
    files the name lies past the first 64 KiB, where doctor looked, and every object the model
    names was reported as `zoo gc`'s before its manifest was given back in the same run."""
    home = tmp_path / "zoo"
    store = Store(home)
    folder = tmp_path / "shards"
    folder.mkdir()
    for shard in range(200):
        tensors = {f"layers.{shard}.w{i}": ("F32", random_storage("F32", (64, 64), shard * 2 + i)) for i in range(2)}
        write_safetensors(folder / f"model-{shard:05d}.safetensors", tensors)
    entry = compress_into(store, folder, "shards")
    assert entry.archive.read_bytes().find(b'"zoo":{') > 1 << 16
    store.manifest_path("shards", "main", "lossless").unlink()
    findings = zoo_cli("doctor", home=home).stdout.strip().splitlines()
    assert not [line for line in findings if "`zoo gc` removes it" in line], findings[:3]
    assert any("shards@main:lossless: manifest restored" in line for line in findings), findings[-3:]
    assert object_files(home) == named_objects(home)


@pytest.fixture
def small_disk(tmp_path):
    """A 4 MiB tmpfs: a file system that really fills up. Needs the right to mount (root in a
    container usually has it); skipped elsewhere, the RLIMIT_FSIZE tests above cover the rest."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount_point)], capture_output=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def test_a_disk_that_fills_before_the_manifest_leaves_no_object(tiny_model, small_disk):
    """ENOSPC when the manifest is written (the disk fills after the archive is made): one
    clear error, no orphan object, the models already there untouched; and `zoo ls` still answers."""
    home = small_disk / "zoo"
    store = Store(home)
    kept = compress_into(store, tiny_model, "kept")

    def fill_the_disk(archive: Path) -> None:
        with open(small_disk / "filler", "wb", buffering=0) as filler:  # nothing left in a buffer for close() to fail on
            try:
                while True:
                    filler.write(b"\0" * 65536)
                    filler.flush()
            except OSError:
                pass

    with pytest.raises(ZooError, match="No space left on device.*nothing was stored"):
        compress_into(store, tiny_model, "full", pipeline="truncate:bits=5", check=fill_the_disk)
    assert object_files(home) == named_objects(home)
    assert [e.name for e in store.entries()] == ["kept"]
    (home / "catalogue.sqlite").write_bytes(b"")  # and an index lost on a full disk: read around
    done = zoo_cli("ls", "--json", home=home)
    assert done.returncode == 0 and [m["name"] for m in json.loads(done.stdout)["models"]] == ["kept"], done.stderr
    assert zoo.verify(kept.archive) == []


def test_a_damaged_manifest_stops_gc_and_doctor_restores_it(two_models):
    """gc refuses while a manifest cannot be read (what it names is unknown); doctor rewrites it
    from the header of the object it named."""
    store = Store(two_models)
    first = store.resolve("org/first", with_files=True)
    manifest = store.manifest_path("org/first", "main", "lossless")
    manifest.write_text('{"manifest": 1, "name": "org/fir')
    assert "damaged manifest" in one_line_error(zoo_cli("gc", home=two_models))
    assert first.archive.exists()
    doctor = zoo_cli("doctor", home=two_models)
    assert doctor.returncode == 0, doctor.stdout  # repaired: nothing is left for the user to do
    findings = doctor.stdout.strip().splitlines()
    assert findings[0].startswith(f"{manifest}: damaged manifest")
    kept = two_models / "unreadable" / "org%2Ffirst@main@lossless.json"  # what it was is kept for a person, never lost
    assert findings[1].startswith(str(first.archive))
    assert findings[1].endswith(f"org/first@main:lossless: damaged manifest replaced (the old one kept as {kept})")
    assert kept.read_text() == '{"manifest": 1, "name": "org/fir'
    restored = Store(two_models).resolve("org/first", with_files=True)
    assert (restored.commit, restored.files, restored.archive) == (first.commit, first.files, first.archive)
    assert "removed 0 objects" in zoo_cli("gc", home=two_models).stdout


def test_a_manifest_that_leaves_out_objects_its_archive_names_loses_none_of_them(tmp_path):
    """A manifest cut down to its archive (valid JSON, a sound record): verify said ok, doctor
    offered its objects to gc as no model's, and gc removed them: the model was lost. Now gc keeps
    what a model's archive names, verify says the manifest leaves it out, and doctor lists it again."""
    home = tmp_path / "zoo"
    model = tmp_path / "model"
    model.mkdir()
    write_safetensors(model / "model.safetensors",
                      {name: ("F32", random_storage("F32", (128, 64), seed)) for seed, name in enumerate("abc")})
    store = Store(home)
    compress_into(store, model, "org/first")
    first = store.resolve("org/first")
    manifest = store.manifest_path("org/first", "main", "lossless")
    record = json.loads(manifest.read_bytes())
    whole = record["objects"]
    assert len(whole) > 1
    record["objects"] = [item for item in whole if item["role"] == "archive"]
    record["stored_bytes"] = record["objects"][0]["size"]
    manifest.write_text(json.dumps(record))
    before = objects(home)
    assert "removed 0 objects" in zoo_cli("gc", home=home).stdout
    assert objects(home) == before
    verify = zoo_cli("verify", home=home)
    assert verify.returncode == 1 and (f"org/first@main:lossless: its manifest leaves out {len(whole) - 1} of the objects its "
                                       "archive names") in verify.stdout + verify.stderr, verify.stdout + verify.stderr
    doctor = zoo_cli("doctor", home=home)
    assert doctor.returncode == 0 and f"{manifest}: the manifest of org/first@main:lossless left out {len(whole) - 1} of the " \
        "objects its archive names: listed again" in doctor.stdout, doctor.stdout
    assert sorted(map(str, json.loads(manifest.read_bytes())["objects"])) == sorted(map(str, whole))
    assert zoo_cli("verify", home=home).returncode == 0
    assert zoo.verify(first.archive) == [] and named_objects(home, first) <= {p.name for p in objects(home)}


def test_doctor_exits_1_while_a_model_cannot_be_read(two_models):
    """An object cut short or gone is damage doctor cannot repair: named, exit 1; once the model is
    removed, doctor is content again."""
    store = Store(two_models)
    first, second = store.resolve("org/first"), store.resolve("second")
    own = named_objects(two_models, first) - named_objects(two_models, second)
    victim = max((p for p in objects(two_models) if p.name in own), key=lambda path: path.stat().st_size)
    with open(victim, "r+b") as cut:
        cut.truncate(victim.stat().st_size - 1)
    doctor = zoo_cli("doctor", home=two_models)
    assert doctor.returncode == 1 and f"{victim}: " in doctor.stdout and "damaged" in doctor.stdout, doctor.stdout
    assert "no problems found" not in doctor.stdout
    victim.unlink()
    doctor = zoo_cli("doctor", home=two_models)
    assert doctor.returncode == 1 and f"{victim}: missing; org/first@main:lossless cannot be read" in doctor.stdout
    assert zoo_cli("rm", "org/first", "--force", home=two_models).returncode == 0
    doctor = zoo_cli("doctor", home=two_models)
    assert doctor.returncode == 0 and "no problems found" in doctor.stdout, doctor.stdout


def test_a_model_missing_a_tensor_object_says_so_when_read(tmp_path):
    """Not that its archive was copied out of its zoo, nor that it is damaged: an object is gone."""
    from tests.hub.test_dedup import base_tensors, write_model

    home = tmp_path / "zoo"
    entry = compress_into(Store(home), write_model(tmp_path / "model", base_tensors()), "org/first")
    victim = next(p for p in objects(home) if p.name != entry.archive.name)
    victim.unlink()
    for command in (["export", "org/first", "-o", tmp_path / "out"], ["decompress", "org/first", "-o", tmp_path / "out"]):
        done = zoo_cli(*command, home=home)
        assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr
        assert f"lies in object {victim.stem[:16]}..., which is missing from the zoo at {home} " in done.stderr, done.stderr
        assert "damaged" not in done.stderr and "stands alone" not in done.stderr
        assert not (tmp_path / "out").exists()


def test_one_object_for_the_same_bytes_kept_until_its_last_name_goes(tiny_model, tmp_path):
    archive = tmp_path / "m.zoo"
    zoo.compress(tiny_model, archive)
    store = Store(tmp_path / "zoo")
    one, two = store.add(archive, "one"), store.add(archive, "two")
    assert one.archive == two.archive and len(objects(store.home)) == 1
    store.remove("one")
    assert two.archive.exists() and zoo.verify(two.archive) == []
    store.remove("two")
    assert objects(store.home) == []


def test_a_migration_killed_midway_is_resumed(tiny_model, tmp_path):
    home = tmp_path / "zoo"
    _old_layout(home, tiny_model)
    done = zoo_cli("ls", home=home, env={"ZOO_KILL_AT": "migrate-archive"})
    assert done.returncode == -9
    assert len(list((home / "archives").glob("*.zoo"))) == 2  # its manifest was written, the archive not yet moved out
    assert listed(home) == ["lossy@main:truncate:bits=5", "org/old@v1:lossless"]
    assert not (home / "archives").exists() and len(objects(home)) == 2


def test_a_migration_keeps_what_it_cannot_read(tiny_model, tmp_path):
    home = tmp_path / "zoo"
    _old_layout(home, tiny_model)
    (home / "archives" / "broken-0123456789ab.zoo").write_bytes(b"not an archive at all")
    (home / "archives" / "notes.txt").write_text("someone's notes")
    findings = zoo_cli("doctor", home=home).stdout
    assert "broken-0123456789ab.zoo: not a readable archive" in findings and "notes.txt: not an archive" in findings
    assert (home / "unreadable" / "broken-0123456789ab.zoo").read_bytes() == b"not an archive at all"
    assert (home / "unreadable" / "notes.txt").read_text() == "someone's notes"
    assert listed(home) == ["lossy@main:truncate:bits=5", "org/old@v1:lossless"]


def test_a_zoo_in_a_folder_whose_name_looks_like_a_uri(tiny_model, tmp_path):
    """SQLite opens the index by URI: '?', '#' and '%' in ZOO_HOME are quoted, not read as its syntax."""
    home = tmp_path / "odd ?name#x%20y"
    compress_into(Store(home), tiny_model, "tiny")
    (home / "catalogue.sqlite").write_bytes(b"")
    assert listed(home) == ["tiny@main:lossless"]
    with closing(catalogue.connect(home / "catalogue.sqlite")) as index:  # rebuilt, and opened where it is
        assert [row[0] for row in index.execute("SELECT name FROM models")] == ["tiny"]
    assert sorted(p.name for p in home.iterdir()) == ["catalogue.sqlite", "catalogue.stamp", "lock", "manifests", "objects", "work"]


def test_an_old_catalogue_without_its_archives_is_kept(tiny_model, tmp_path):
    """The rows of an old catalogue were the record: when its archives are not there to migrate,
    the file is kept as catalogue-v1.sqlite rather than replaced by the rebuilt index."""
    home = tmp_path / "zoo"
    _old_layout(home, tiny_model)
    for path in (home / "archives").iterdir():
        path.rename(tmp_path / path.name)  # moved elsewhere by hand
    (home / "archives").rmdir()
    assert listed(home) == []
    with closing(sqlite3.connect(home / "catalogue-v1.sqlite")) as old:
        assert [row[0] for row in old.execute("SELECT name FROM models")] == ["org/old"]


def test_a_zoo_home_that_is_a_file_is_an_error_not_an_empty_zoo(tmp_path):
    home = tmp_path / "zoo"
    home.write_text("a file where the zoo should be")
    for command in (["ls"], ["verify"], ["doctor"], ["gc"]):
        assert "is a file, not a zoo's folder" in one_line_error(zoo_cli(*command, home=home))
    assert home.read_text() == "a file where the zoo should be"


def test_a_damaged_chunk_of_an_object_names_the_object(tmp_path):
    """The error named the zoo's objects folder, where the user looks for the file to remove."""
    model = tmp_path / "model"
    model.mkdir()
    write_safetensors(model / "model.safetensors", {"w": ("F32", random_storage("F32", (256, 64), 1))})
    entry = compress_into(Store(tmp_path / "zoo"), model, "m")
    [victim] = [path for path in objects(tmp_path / "zoo") if path != entry.archive]
    victim.chmod(0o644)
    data = bytearray(victim.read_bytes())
    data[-100] ^= 0xFF  # inside the tensor's last chunk
    victim.write_bytes(bytes(data))
    problems = zoo.verify(entry.archive)
    assert problems and problems[0].endswith(f"{victim}: tensor 'w', chunk 0 is damaged (checksum mismatch)"), problems
    # the whole zoo's verify names the object, then the models that need it (the repair's refusal says it does)
    with pytest.raises(ZooError, match="`zoo verify` names the models that need it"):
        compress_into(Store(tmp_path / "zoo"), model, "again", pipeline="bytegroup|zstd")
    _, _, problems = Store(tmp_path / "zoo").verify()
    name = victim.name[:16]
    assert problems[0].endswith("chunk 0 is damaged (checksum mismatch)") and problems[1:] == [
        f"m@main:lossless: cannot be read whole: it needs the damaged object {name}..."], problems


def _model_with_objects(tmp_path: Path) -> Path:
    model = tmp_path / "model"
    model.mkdir()
    write_safetensors(model / "model.safetensors",
                      {name: ("F32", random_storage("F32", (256, 64), seed)) for seed, name in enumerate("ab")})
    return model


def _flip_a_byte(path: Path) -> None:
    path.chmod(0o644)
    data = bytearray(path.read_bytes())
    data[-100] ^= 0x10  # inside the last chunk
    path.write_bytes(bytes(data))
    path.chmod(0o444)


def test_storing_a_model_again_repairs_a_damaged_object_it_holds(tmp_path):
    """A damaged object was reused as it was by every later model holding its bytes: they were
    reported stored and could not be read, and storing the original again (--force) repaired
    nothing. An object is now checked (its checksums, nothing decoded) before it is named again;
    a damaged one is coded anew and replaces the zoo's, which mends the models that named it."""
    model = _model_with_objects(tmp_path)
    store = Store(tmp_path / "zoo")
    first = compress_into(store, model, "first")
    [victim, *_] = sorted((p for p in objects(tmp_path / "zoo") if p != first.archive), key=lambda p: -p.stat().st_size)
    _flip_a_byte(victim)
    assert zoo.verify(first.archive) != []
    second = compress_into(store, model, "second")
    assert zoo.verify(second.archive) == [] and zoo.verify(first.archive) == []
    assert store.verify()[2] == []


def test_a_damaged_object_coded_otherwise_is_refused_not_named(tmp_path):
    """A damaged object another pipeline coded cannot be replaced by this build's coding (the
    shells naming it copy its chunk indexes): the build is refused, and nothing is stored."""
    model = _model_with_objects(tmp_path)
    store = Store(tmp_path / "zoo")
    first = compress_into(store, model, "first")
    [victim, *_] = sorted((p for p in objects(tmp_path / "zoo") if p != first.archive), key=lambda p: -p.stat().st_size)
    _flip_a_byte(victim)
    damaged = victim.read_bytes()
    with pytest.raises(ZooError, match=f"{victim}: an object of the zoo this model holds too is damaged .*chunk 0 is damaged"):
        compress_into(store, model, "second", pipeline="bytegroup|zstd")
    assert [entry.name for entry in store.entries()] == ["first"] and victim.read_bytes() == damaged


def test_an_object_replaced_while_a_read_holds_it_is_closed_by_that_read(tmp_path):
    """The process's shared descriptors of object files: one forgotten (its file replaced) while a
    read holds it is closed when that read lets go, and the next read opens the new file."""
    from zoo.container import format as archive_format

    path = tmp_path / "object.zoo"
    path.write_bytes(b"old")
    files = archive_format._ObjectFiles()
    descriptor = files.acquire(path, tmp_path / "shell.zoo", "a tensor")
    files.forget(path)
    replacement = tmp_path / "new"
    replacement.write_bytes(b"new")
    os.replace(replacement, path)
    fresh = files.acquire(path, tmp_path / "shell.zoo", "a tensor")
    assert os.pread(descriptor, 3, 0) == b"old" and os.pread(fresh, 3, 0) == b"new"
    files.release(path, descriptor)
    with pytest.raises(OSError):
        os.fstat(descriptor)  # closed by its last release
    files.release(path, fresh)
    assert os.pread(fresh, 3, 0) == b"new"  # still the shared, open one


def test_a_store_or_rm_whose_index_cannot_be_written_has_still_done_its_work(tmp_path):
    """A folder in the catalogue's place: `zoo compress --name` and `zoo rm` said `error: ... cannot
    rebuild the catalogue` and exited 1 after the manifest was published or removed. A retry then
    found the model stored (or gone), and the rm left its objects for doctor to bring the model back.
    Now both succeed with a warning, and readers go to the manifests."""
    home = tmp_path / "zoo"
    models = {}
    for seed, name in enumerate(("a", "b")):
        models[name] = tmp_path / name
        models[name].mkdir()
        write_safetensors(models[name] / "model.safetensors", {"w": ("F32", random_storage("F32", (128, 64), seed))})
    assert zoo_cli("compress", models["a"], "--name", "a", home=home).returncode == 0
    kept = objects(home)
    (home / "catalogue.sqlite").unlink()
    (home / "catalogue.sqlite").mkdir()
    done = zoo_cli("compress", models["b"], "--name", "b", home=home)
    assert done.returncode == 0 and "stored b@main:lossless" in done.stdout, done.stderr
    assert "warning: " in done.stderr and "the index is behind" in done.stderr
    assert [line.split()[0] for line in zoo_cli("ls", home=home).stdout.splitlines()[2:]] == ["a", "b"]
    done = zoo_cli("rm", "a", home=home)
    assert done.returncode == 0 and "removed a@main:lossless" in done.stdout, done.stderr
    assert not set(kept) & set(objects(home))  # what only `a` named went with it
    assert "a@main" not in zoo_cli("doctor", home=home).stdout
    assert zoo_cli("verify", home=home).returncode == 0


def test_a_zoo_whose_only_manifest_is_damaged_is_not_called_empty(tmp_path):
    # with the index rebuilt from the manifests, a damaged one was left out without a word, and
    # `zoo ls` said the zoo was empty ("zoo pull or zoo compress fill it"), exit 0
    home = tmp_path / "home"
    source = write_safetensors(tmp_path / "m.safetensors", {"w": ("F32", random_storage("F32", (64, 64), 1))})
    compress_into(Store(home), source, "a/b")
    [manifest] = home.glob("manifests/*/*/*.json")
    manifest.write_text("{bad")
    (home / "catalogue.sqlite").unlink()
    done = zoo_cli("ls", home=home)
    assert done.returncode == 0 and "damaged manifest" in done.stderr and "left out of the index" in done.stderr, done.stderr
    assert "lists no model, but holds manifests it cannot read: `zoo doctor` says which" in done.stderr and "is empty" not in done.stderr
    done = zoo_cli("ls", home=home)  # the index made: the warning is not said again, the listing still is
    assert "holds manifests it cannot read" in done.stderr and "damaged manifest" not in done.stderr, done.stderr


def test_a_migration_run_by_any_command_says_what_it_did(tiny_model, tmp_path):
    # the first command to open an old-layout zoo (`zoo ls`, say) migrated it without a word: files
    # kept aside in unreadable/ and models named from their headers went unsaid, and doctor, run
    # later, found nothing left to say
    home = tmp_path / "zoo"
    _old_layout(home, tiny_model)
    (home / "archives" / "notes.txt").write_text("someone's notes")
    done = zoo_cli("ls", home=home)
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    assert lines[0] == f"warning: {home}: the zoo's old layout was moved to objects and manifests (docs/STORE.md): 2 models, 2 to look at:"
    assert any("notes.txt: not an archive; kept as" in line for line in lines)
    assert any("(its catalogue row was gone: read from its header)" in line for line in lines)
    assert "old layout" not in zoo_cli("ls", home=home).stderr  # once


def test_doctor_on_a_full_disk_leaves_a_damaged_manifest_where_it_was(two_models):
    # it moved the damaged manifest aside, then could not write the new one: the manifests folder
    # lost it, `zoo ls` called the zoo empty, and doctor said only "No space left on device"
    store = Store(two_models)
    manifest = store.manifest_path("org/first", "main", "lossless")
    manifest.write_text("garbage")
    (two_models / "catalogue.behind").touch()
    doctor = subprocess.run([sys.executable, "-m", "zoo", "doctor"], capture_output=True, text=True, check=False, timeout=120,
                            env={**os.environ, "ZOO_HOME": str(two_models)}, preexec_fn=_no_bigger_files_than(0))
    assert doctor.returncode == 1 and "unexpected" not in doctor.stderr, doctor.stderr
    assert "named by no manifest; cannot restore its manifest: File too large" in doctor.stdout, doctor.stdout
    assert manifest.read_text() == "garbage" and not list((two_models / "unreadable").glob("*"))
    assert zoo_cli("doctor", home=two_models).returncode == 0  # with room, it is restored
    assert listed(two_models) == ["org/first@main:lossless", "second@main:truncate:bits=5"]
    assert [p.read_text() for p in (two_models / "unreadable").iterdir()] == ["garbage"]


def test_a_folder_or_nothing_in_archives_is_no_migration_said_every_time(tiny_model, tmp_path):
    # a folder inside archives/ was never moved, so archives/ stayed and every command migrated
    # again and warned "0 models"; an empty archives/ warned it once
    home = tmp_path / "zoo"
    compress_into(Store(home), tiny_model, "one")
    (home / "archives" / "sub").mkdir(parents=True)
    (home / "archives" / "sub" / "x").write_text("kept")
    first = zoo_cli("ls", home=home)
    assert "archives/sub: not an archive; kept as" in first.stderr, first.stderr
    assert (home / "unreadable" / "sub" / "x").read_text() == "kept" and not (home / "archives").exists()
    assert "warning" not in zoo_cli("ls", home=home).stderr
    (home / "archives").mkdir()
    assert "warning" not in zoo_cli("ls", home=home).stderr and not (home / "archives").exists()


def test_doctor_moves_a_folder_that_sits_where_a_manifest_goes(two_models):
    # a copy kept the damaged manifest aside before its replacement was written; a folder cannot be
    # copied: "cannot restore its manifest: Is a directory", every time, and the model was lost to ls
    manifest = Store(two_models).manifest_path("org/first", "main", "lossless")
    manifest.unlink()
    manifest.mkdir()
    (manifest / "inside").write_text("someone's")
    doctor = zoo_cli("doctor", home=two_models)
    assert doctor.returncode == 0, (doctor.stdout, doctor.stderr)
    assert listed(two_models) == ["org/first@main:lossless", "second@main:truncate:bits=5"]
    assert (two_models / "unreadable" / "org%2Ffirst@main@lossless.json" / "inside").read_text() == "someone's"


def test_a_thing_in_archives_that_cannot_be_moved_is_a_finding_not_the_end_of_doctor(two_models, monkeypatch):
    # a folder in archives/ whose move aside failed (permissions) ended doctor, and every command's
    # migration, with "Permission denied"
    (two_models / "archives" / "sub").mkdir(parents=True)
    store = Store(two_models)

    def refuse(path, name=None, copy=False):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(Store, "_keep_aside", staticmethod(refuse))
    findings = store.doctor()
    assert any(line.endswith("archives/sub: not an archive, and it cannot be moved to unreadable/ (Permission denied: "
                             f"{two_models / 'archives' / 'sub'}); it stays where it is") for line in findings), findings
    assert [e.ref for e in store.entries()] == ["org/first@main:lossless", "second@main:truncate:bits=5"]


def test_a_zoo_home_that_holds_a_users_files_is_refused_and_left_as_it_was(tiny_model, tmp_path):
    """ZOO_HOME pointed at a folder of the user's own (a home folder): compress deleted the folders
    under its work/ an hour old, as a dead job's debris, and even `zoo ls` moved the files under its
    archives/ to unreadable/, as an old zoo's layout."""
    home = tmp_path / "mine"
    (home / "work" / "thesis").mkdir(parents=True)
    (home / "work" / "thesis" / "ch1.tex").write_text("chapter one")
    os.utime(home / "work" / "thesis", (1e9, 1e9))
    (home / "archives").mkdir()
    (home / "archives" / "taxes.pdf").write_text("figures")
    before = {p.relative_to(home): p.read_bytes() if p.is_file() else None for p in home.rglob("*")}
    for args in (["compress", tiny_model, "--name", "org/m"], ["ls"], ["gc"], ["doctor"], ["verify"], ["rm", "org/m"]):
        done = zoo_cli(*args, home=home)
        assert done.returncode in (0, 1) and "Traceback" not in done.stderr, (args, done.stderr)
        if args[0] in ("compress", "gc", "doctor"):
            assert (done.returncode, done.stderr) == (1, f"error: {home}: is no zoo (it holds 'archives', and no catalogue, lock or objects): "
                                                         "point ZOO_HOME at a zoo, or at a new or empty folder\n"), args
    assert {p.relative_to(home): p.read_bytes() if p.is_file() else None for p in home.rglob("*")} == before


def test_a_folder_is_a_zoo_by_what_only_a_zoo_makes(tiny_model, tmp_path):
    """A user's manifests/ or work/ made a folder pass for a zoo: `zoo ls` moved its archives/ files
    aside, and compress swept its work/job-applications/ as a dead job's; a project's archives/*.zoo
    beside its README was migrated as an old zoo. A folder another command is making into a zoo,
    or a fresh disk's lost+found, is one."""
    zoo.compress(tiny_model, tmp_path / "m.zoo")
    for name, files in (("k8s", {"manifests/prod/app.yaml": b"kind: Deployment", ".git/HEAD": b"ref"}),
                        ("home", {"work/job-applications/letter.txt": b"dear", ".config/x": b""}),
                        ("project", {"archives/mine.zoo": (tmp_path / "m.zoo").read_bytes(), "README.md": b"hi"})):
        home = tmp_path / name
        for path, content in files.items():
            (home / path).parent.mkdir(parents=True, exist_ok=True)
            (home / path).write_bytes(content)
        if name == "home":  # an hour old and more: what the sweep took for a dead job's
            os.utime(home / "work" / "job-applications", (1e9, 1e9))
        before = sorted(p.relative_to(home) for p in home.rglob("*"))
        for args in (["compress", tiny_model, "--name", "org/m"], ["ls"], ["gc"]):
            done = zoo_cli(*args, home=home)
            assert done.returncode in (0, 1) and "Traceback" not in done.stderr, done.stderr
        assert "is no zoo (it holds " in zoo_cli("compress", tiny_model, "--name", "org/m", home=home).stderr
        assert sorted(p.relative_to(home) for p in home.rglob("*")) == before, name
    for made in (["objects"], ["lost+found", ".DS_Store"]):
        fresh = tmp_path / "-".join(made)
        for name in made:
            (fresh / name).mkdir(parents=True)
        compress_into(Store(fresh), tiny_model, "org/m")
        assert [e.name for e in Store(fresh).entries()] == ["org/m"]


def test_a_folder_in_the_zoos_work_folder_that_no_job_made_is_never_swept(tiny_model, tmp_path):
    store = Store(tmp_path / "zoo")
    compress_into(store, tiny_model, "org/m")
    for name in ("kept", "job-applications", "job-ab12cd_4"):  # the last as workspace() names them
        (store.work / name).mkdir()
        os.utime(store.work / name, (1e9, 1e9))
    store.gc()
    assert sorted(p.name for p in store.work.iterdir() if p.is_dir()) == ["job-applications", "kept"]


def test_a_folder_of_the_users_files_is_no_zoo_to_a_command_that_reads_either(tiny_model, tmp_path):
    """A ZOO_HOME holding only a README was an empty zoo to ls ("`zoo compress FOLDER` fill it"),
    verify ("ok"), doctor, gc and serve, while the compress ls pointed to refused the folder."""
    home = tmp_path / "project"
    home.mkdir()
    (home / "README.md").write_text("mine")
    refusal = (f"error: {home}: is no zoo (it holds 'README.md', and no catalogue, lock or objects): "
               "point ZOO_HOME at a zoo, or at a new or empty folder\n")
    for args in (["ls"], ["verify"], ["doctor"], ["gc"], ["rm", "org/m"], ["serve", "--port", "0"], ["compress", tiny_model, "--name", "org/m"]):
        done = zoo_cli(*args, home=home)
        assert (done.returncode, done.stderr) == (1, refusal), (args, done.stderr)
    assert [p.name for p in home.iterdir()] == ["README.md"]
    # a command about a path says what is wrong with the path, not with ZOO_HOME
    (tmp_path / "m").mkdir()
    assert zoo_cli("info", tmp_path / "m", home=home).stderr == f"error: {tmp_path / 'm'}: is a folder, not a zoo archive\n"
    assert zoo_cli("info", "nosuch.zoo", home=home).stderr == f"error: nosuch.zoo: no such file (and {home} is no zoo to hold a model of that name)\n"
    done = zoo_cli("compress", tiny_model, "-o", tmp_path / "x.zoo", "--base", "org/m", home=home)
    assert done.stderr == f"error: base org/m: no such file or folder (and {home} is no zoo to hold a model of that name)\n", done.stderr
    # eval/ is the eval cache's only in the default zoo's folder: elsewhere it is the user's
    (home / "README.md").unlink()
    (home / "eval").mkdir()
    (home / "eval" / "run_eval.py").write_text("print(1)")
    done = zoo_cli("compress", tiny_model, "--name", "org/m", home=home)
    assert done.returncode == 1 and "is no zoo (it holds 'eval'" in done.stderr, done.stderr
    (home / "eval" / "run_eval.py").unlink()
    (home / "eval").rmdir()
    (home / "README.md").write_text("mine")
    (home / "manifests").mkdir()  # a user's own manifests/ beside the README: verify said ok
    for args in (["verify"], ["ls"]):
        done = zoo_cli(*args, home=home)
        assert (done.returncode, done.stderr) == (1, refusal), (args, done.stderr)
    (home / "manifests").rmdir()
    (tmp_path / "empty").mkdir()
    for fresh in (tmp_path / "empty", tmp_path / "not-yet"):  # an empty folder, or none, is an empty zoo
        assert "is empty" in zoo_cli("ls", home=fresh).stderr
        assert zoo_cli("verify", home=fresh).returncode == 0


def test_the_default_zoo_holding_only_evals_references_is_a_zoo(tiny_model, tmp_path):
    """`zoo eval` keeps its references under the default zoo's folder (~/.cache/zoo/eval): after a
    first eval, every command on the default zoo said it was no zoo (it holds 'eval')."""
    environment = {k: v for k, v in os.environ.items() if k not in ("ZOO_HOME", "ZOO_EVAL_CACHE")}
    environment["XDG_CACHE_HOME"] = str(tmp_path / "cache")
    text = "the zoo keeps the models small and the reference close at hand. " * 8
    llama = write_tiny_llama(tmp_path / "llama", text, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                             num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64)
    candidate = zoo.compress(llama, tmp_path / "t.zoo", pipeline="truncate:bits=4").archive
    done = subprocess.run([sys.executable, "-m", "zoo", "eval", candidate, "-r", llama, "--max-tokens", "32"], capture_output=True,
                          text=True, env=environment, timeout=300)
    assert done.returncode == 0, done.stderr
    assert [p.name for p in (tmp_path / "cache" / "zoo").iterdir()] == ["eval"]
    # whichever cache a later command is pointed at (ZOO_EVAL_CACHE), eval/ of references is the zoo's own
    for args, cache in ((["ls"], None), (["compress", tiny_model, "--name", "org/m"], tmp_path / "elsewhere"), (["verify"], None)):
        done = subprocess.run([sys.executable, "-m", "zoo", *map(str, args)], capture_output=True, text=True, timeout=300,
                              env={**environment, **({"ZOO_EVAL_CACHE": str(cache)} if cache else {})})
        assert done.returncode == 0 and "is no zoo" not in done.stderr, (args, done.stderr)


def test_a_pipe_in_an_objects_place_is_refused_not_waited_on(tmp_path):
    """The archive itself was opened without blocking and checked to be a file; the objects it
    reads from were opened plainly, and a FIFO there hung info, verify and decompress for good."""
    home, model = tmp_path / "zoo", tmp_path / "model"
    model.mkdir()
    write_safetensors(model / "model.safetensors", {"w": ("F32", random_storage("F32", (128, 96), 1))})
    entry = compress_into(Store(home), model, "org/first")
    victim = largest_object(Store(home), entry)
    assert victim != entry.archive  # an object the archive reads from
    victim.unlink()
    os.mkfifo(victim)
    for command in (["verify", "org/first"], ["export", "org/first", "-o", tmp_path / "out"], ["verify", entry.archive]):
        done = subprocess.run([sys.executable, "-m", "zoo", *map(str, command)], capture_output=True, text=True, timeout=60,
                              env={**os.environ, "ZOO_HOME": str(home)})
        assert done.returncode == 1 and "not a regular file" in done.stdout + done.stderr, (command, done.stdout, done.stderr)
    assert not (tmp_path / "out").exists()


def test_verify_of_the_whole_zoo_takes_nothing_removed_meanwhile_for_damage(tmp_path, monkeypatch):
    """`zoo verify` beside `zoo gc` or `zoo rm` (it takes no lock): the objects they removed after
    verify listed them were 'damaged: ... no such archive', and a model removed after verify read
    its manifest was 'damaged: ... missing'; exit 1 for a sound zoo."""
    import zoo.hub.store as store_module

    home, model = tmp_path / "zoo", tmp_path / "model"
    model.mkdir()
    write_safetensors(model / "model.safetensors", {f"w{i}": ("F32", random_storage("F32", (64, 32), i)) for i in range(4)})
    store = Store(home)
    compress_into(store, model, "keep")
    compress_into(store, model, "gone", pipeline="truncate:bits=5")
    real_problems, real_manifests = store_module.object_problems, Store._all_manifests

    removals: list[str] = []

    def objects_collected_meanwhile(path, name, shown):  # `zoo rm gone` lands once verify has listed the objects
        if not removals:
            removals.append("gone")
            store.remove("gone")
        return real_problems(path, name, shown)

    monkeypatch.setattr(store_module, "object_problems", objects_collected_meanwhile)
    assert store.verify()[2] == []
    monkeypatch.setattr(store_module, "object_problems", real_problems)
    compress_into(store, model, "gone", pipeline="truncate:bits=5")

    def removed_after_its_manifest_was_read(self, problems=None):
        found = real_manifests(self, problems)
        if len(removals) == 1:
            removals.append("gone again")
            self.remove("gone")
        return found

    monkeypatch.setattr(Store, "_all_manifests", removed_after_its_manifest_was_read)
    assert store.verify()[2] == []
    monkeypatch.setattr(Store, "_all_manifests", real_manifests)
    victim = largest_object(store, store.resolve("keep"))
    victim.chmod(0o644)
    data = bytearray(victim.read_bytes())
    data[-20] ^= 0xFF
    victim.write_bytes(bytes(data))
    assert store.verify()[2]  # damage is still damage


def test_doctor_on_a_full_disk_says_what_it_could_not_mend_among_the_rest(two_models, tmp_path):
    """A manifest that leaves out objects, and another out of its place: on a full disk doctor
    stopped at the first with a bare "No space left on device", every other finding lost."""
    store = Store(two_models)
    model = tmp_path / "model"
    model.mkdir()
    write_safetensors(model / "model.safetensors", {name: ("F32", random_storage("F32", (128, 64), seed)) for seed, name in enumerate("abc")})
    compress_into(store, model, "org/first", force=True)
    manifest = store.manifest_path("org/first", "main", "lossless")
    record = json.loads(manifest.read_bytes())
    left_out = len(record["objects"]) - 1
    record["objects"] = [item for item in record["objects"] if item["role"] == "archive"]
    record["stored_bytes"] = record["objects"][0]["size"]
    manifest.write_text(json.dumps(record))
    second = store.manifest_path("second", "main", "truncate:bits=5")
    moved = second.parent / "elsewhere.json"
    os.replace(second, moved)
    doctor = subprocess.run([sys.executable, "-m", "zoo", "doctor"], capture_output=True, text=True, check=False, timeout=120,
                            env={**os.environ, "ZOO_HOME": str(two_models)}, preexec_fn=_no_bigger_files_than(0))
    assert doctor.returncode == 1 and "unexpected" not in doctor.stderr, doctor.stderr
    assert (f"{manifest}: the manifest of org/first@main:lossless left out {left_out} of the objects its archive names; cannot list "
            "them again: File too large") in doctor.stdout, doctor.stdout
    assert f"{moved}: the manifest of second@main:truncate:bits=5, out of its place; moved back" in doctor.stdout, doctor.stdout
    assert zoo_cli("doctor", home=two_models).returncode == 0  # with room, mended
    assert zoo_cli("verify", home=two_models).returncode == 0
