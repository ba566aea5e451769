"""The store's lifecycle under a hostile user: manifests edited or moved by hand, damage that every
command must report in one line and that `zoo doctor` repairs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.hub.test_dedup import base_tensors, write_model
from tests.hub.test_store import zoo_cli
from tests.hub.test_zoo_on_s3 import _zoo, machine
from zoo.api import compress_into
from zoo.hub.store import Store


def _healthy(done: subprocess.CompletedProcess) -> None:
    assert done.returncode in (0, 1), (done.returncode, done.stderr)
    assert "unexpected" not in done.stderr and "Traceback" not in done.stderr, done.stderr
    if done.stderr.startswith("error: "):
        assert done.stderr.strip().count("\n") == 0, done.stderr


@pytest.fixture
def two_models(tiny_model, tmp_path):
    home = tmp_path / "zoo"
    compress_into(Store(home), tiny_model, "first")
    compress_into(Store(home), tiny_model, "second", pipeline="truncate:bits=5")
    return home


def _edit(path: Path, change) -> None:
    record = json.loads(path.read_text())
    change(record)
    path.write_text(json.dumps(record))


@pytest.mark.parametrize("change", [
    lambda r: r.update(files=[{}]),
    lambda r: r.update(files=[1]),
    lambda r: r["files"][0].update(size="big"),
    lambda r: r.update(base="first"),
    lambda r: r.update(base={"ref": 1}),
    lambda r: r.update(base={"ref": "second@main:truncate:bits=5", "tensors": 1, "needs": 5}),
    lambda r: r.update(quality="good"),
    lambda r: r.update(source=5),
    lambda r: r.update(manifest=True),  # Python's True == 1 and 1.0 == 1 let these pass for version 1
    lambda r: r.update(manifest=1.0),
    lambda r: r.update(original_bytes=True),
    lambda r: r["files"][0].update(size=True),
    lambda r: r["files"][0].update(lfs=1),
    lambda r: r["objects"][0].update(size=-1),
], ids=["file-empty", "file-number", "file-size", "base-text", "base-ref", "base-needs", "quality-text", "source-number", "version-true",
        "version-float", "original-true", "file-size-true", "file-lfs-number", "object-size-negative"])
def test_a_manifest_edited_by_hand_is_damage_every_command_reports_and_doctor_repairs(two_models, tmp_path, change):
    """A manifest of the right version whose files, base or quality are malformed is a damaged
    manifest: no traceback from any command, and doctor rewrites it from its archive's header."""
    store = Store(two_models)
    first = store.resolve("first", with_files=True)
    manifest = store.manifest_path("first", "main", "lossless")
    _edit(manifest, change)
    (two_models / "catalogue.sqlite").unlink()  # the index is rebuilt from the manifests
    for command in (("ls",), ("ls", "--json"), ("verify",), ("gc",), ("info", "second"), ("rm", "second", "--force"),
                    ("export", "first", "-o", tmp_path / "out")):
        _healthy(zoo_cli(*command, home=two_models))
    doctor = zoo_cli("doctor", home=two_models)
    assert doctor.returncode == 0, (doctor.stdout, doctor.stderr)
    assert "damaged manifest replaced" in doctor.stdout, doctor.stdout
    restored = Store(two_models).resolve("first", with_files=True)
    assert (restored.commit, restored.files, restored.archive) == (first.commit, first.files, first.archive)
    assert "no problems found" in zoo_cli("doctor", home=two_models).stdout
    assert zoo_cli("verify", home=two_models).returncode == 0


def test_a_manifest_renamed_by_hand_does_not_pass_for_another_model(two_models, tiny_model):
    """A manifest edited to name another model (or copied to another model's folder) is not listed
    twice, does not come back once that model is removed, and doctor puts each manifest where its
    name says; the model the edit lost is restored from its archive's header."""
    store = Store(two_models)
    compress_into(store, tiny_model, "third")
    first = store.resolve("first", with_files=True)
    _edit(store.manifest_path("first", "main", "lossless"), lambda r: r.update(name="third"))
    (two_models / "catalogue.sqlite").unlink()
    done = zoo_cli("ls", "--json", home=two_models)
    assert done.returncode == 0, done.stderr
    assert sorted(m["name"] for m in json.loads(done.stdout)["models"]) == ["second", "third"]
    assert zoo_cli("rm", "third", home=two_models).returncode == 0
    done = zoo_cli("ls", "--json", home=two_models)
    assert sorted(m["name"] for m in json.loads(done.stdout)["models"]) == ["second"]
    doctor = zoo_cli("doctor", home=two_models)
    assert doctor.returncode == 0, (doctor.stdout, doctor.stderr)
    assert "manifest restored" in doctor.stdout or "manifest replaced" in doctor.stdout, doctor.stdout
    assert "no problems found" in zoo_cli("doctor", home=two_models).stdout
    restored = Store(two_models).resolve("first", with_files=True)
    assert (restored.commit, restored.files, restored.archive) == (first.commit, first.files, first.archive)
    # rm collects no object while a manifest is in doubt, but the removed model's shell, which
    # only its own manifest names, went: doctor gives back first, never the third it was told to remove,
    # and the edited manifest, whose archive's header names first, never took third's empty place
    assert {e.name for e in Store(two_models).entries()} == {"first", "second"}
    assert zoo_cli("verify", home=two_models).returncode == 0


def test_doctor_moves_a_manifest_to_where_its_name_says(two_models):
    store = Store(two_models)
    manifest = store.manifest_path("first", "main", "lossless")
    moved = manifest.parent.parent.parent / "elsewhere" / "main" / "lossless.json"
    moved.parent.mkdir(parents=True)
    original = manifest.read_bytes()
    manifest.rename(moved)
    copy = manifest.parent.parent.parent / "copy" / "main" / "lossless.json"
    copy.parent.mkdir(parents=True)
    copy.write_bytes(moved.read_bytes())
    assert "damaged manifest" in zoo_cli("gc", home=two_models).stderr  # what it names is in doubt: nothing collected
    doctor = zoo_cli("doctor", home=two_models)
    assert doctor.returncode == 0, (doctor.stdout, doctor.stderr)
    assert manifest.is_file() and not moved.exists() and not copy.exists(), doctor.stdout
    # its archive's header names that model: the manifest itself went back (its `created` too), nothing set aside
    assert manifest.read_bytes() == original and "moved back to" in doctor.stdout and not (two_models / "unreadable").exists()
    assert "no problems found" in zoo_cli("doctor", home=two_models).stdout
    assert sorted(e.name for e in Store(two_models).entries()) == ["first", "second"]
    assert "removed 0 objects" in zoo_cli("gc", home=two_models).stdout


def test_a_manifest_out_of_its_place_in_a_bucket_is_damage(bucket, tmp_path, monkeypatch):
    """On a bucket, a manifest copied or edited to a key its name does not say is reported by verify
    and doctor, and stops gc (what it stands for is in doubt); it is never listed as another model."""
    url = f"{bucket}/zoo"
    store = machine(tmp_path, "writer", url, monkeypatch)
    compress_into(store, write_model(tmp_path / "base", base_tensors()), "base")
    store.storage.publish("manifests/other/main/lossless.json", store.storage.read("manifests/base/main/lossless.json"))
    done = _zoo(url, tmp_path / "verifier", "verify")
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert done.stderr.strip() == (f"damaged: {url}/manifests/other/main/lossless.json: damaged manifest (it names base@main:lossless, "
                                   "whose manifest is manifests/base/main/lossless.json)")
    done = _zoo(url, tmp_path / "doctor", "doctor")
    assert done.returncode == 1 and f"{url}/manifests/other/main/lossless.json: damaged manifest (" in done.stdout, done.stdout
    assert done.stdout.strip().splitlines()[-1].startswith(f"{url}: 1 model;")
    done = _zoo(url, tmp_path / "doctor", "gc")
    assert done.returncode == 1 and "damaged manifest" in done.stderr and "nothing was collected" in done.stderr, done.stderr
    done = _zoo(url, tmp_path / "lister", "ls", "--json")
    assert [m["name"] for m in json.loads(done.stdout)["models"]] == ["base"], done.stderr


def test_a_name_too_long_is_refused_for_its_length(tiny_model, tmp_path):
    done = zoo_cli("compress", tiny_model, "--name", "x" * 97, home=tmp_path / "zoo")
    assert done.returncode == 1 and "96 characters at most" in done.stderr, done.stderr
    assert done.stderr.count("\n") == 1 and "x" * 97 not in done.stderr
    assert zoo_cli("compress", tiny_model, "--name", "x" * 96, home=tmp_path / "zoo").returncode == 0
    for other in ("a b", "a--b", "a.git"):
        assert "letters, digits" in zoo_cli("compress", tiny_model, "--name", other, home=tmp_path / "zoo").stderr


def test_a_name_no_model_can_have_is_not_found_not_a_crash(tiny_model, tmp_path):
    """A name that is not UTF-8 (a shell's $'\\xff') reached the catalogue's query and failed to encode."""
    home = tmp_path / "zoo"
    assert zoo_cli("compress", tiny_model, "--name", "m", home=home).returncode == 0
    done = subprocess.run([sys.executable, "-m", "zoo", "info", os.fsdecode(b"nope\xff")], capture_output=True, text=True,
                          env={**os.environ, "ZOO_HOME": str(home)}, timeout=120)
    assert done.returncode == 1 and "no model of that name in the zoo" in done.stderr and "unexpected" not in done.stderr, done.stderr


def test_a_file_name_that_is_not_utf8_is_refused_before_the_zoo_holds_it(tiny_model, tmp_path):
    """Its manifest was written, then the index (SQLite text) refused it, and from then on every
    command of that zoo failed with an unexpected UnicodeEncodeError."""
    home = tmp_path / "zoo"
    compress_into(Store(home), tiny_model, "good")
    odd = tmp_path / "odd"
    odd.mkdir()
    (odd / os.fsdecode(b"bad\xff.txt")).write_bytes(b"y")
    done = zoo_cli("compress", odd, "--name", "odd", home=home)
    assert done.returncode == 1 and done.stderr == ("error: bad\\xff.txt: a name that is not UTF-8; the zoo holds UTF-8 names only "
                                                    "(compress -o keeps it in an archive)\n"), done.stderr
    assert not (home / "manifests" / "odd").exists()
    for command in (("ls",), ("verify",), ("doctor",), ("gc",)):
        done = zoo_cli(*command, home=home)
        assert done.returncode == 0, (command, done.stderr)
    # a manifest that holds one all the same (written by hand, or before this check) is damage, not a crash
    manifest = Store(home).manifest_path("good", "main", "lossless")
    record = json.loads(manifest.read_text())
    record["files"][0]["path"] = os.fsdecode(b"bad\xff.txt")
    manifest.write_text(json.dumps(record))
    (home / "catalogue.sqlite").unlink()
    for command in (("ls",), ("verify",), ("gc",), ("doctor",)):
        _healthy(zoo_cli(*command, home=home))
    assert "no problems found" in zoo_cli("doctor", home=home).stdout


def test_a_zoo_home_whose_path_is_not_utf8_works(tiny_model, tmp_path):
    """The index's SQLite URI quoted str(path), which a surrogate escape cannot be encoded from:
    every store command of such a ZOO_HOME failed with an unexpected UnicodeEncodeError."""
    home = tmp_path / os.fsdecode(b"zoo\xe9")

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "zoo", *args], capture_output=True, text=True, errors="surrogateescape",
                              env={**os.environ, "ZOO_HOME": str(home)}, timeout=300)

    assert run("compress", str(tiny_model), "--name", "org/m").returncode == 0
    for command in (("ls",), ("verify",), ("doctor",), ("gc",), ("info", "org/m")):
        done = run(*command)
        assert done.returncode == 0 and "unexpected" not in done.stderr, (command, done.stderr)
    assert "org/m" in run("ls").stdout
    (home / "catalogue.sqlite").unlink()  # the index is rebuilt from the manifests, at that path too
    done = run("ls")
    assert done.returncode == 0 and "org/m" in done.stdout, done.stderr


def test_a_float_parameter_written_as_an_integer_names_the_same_variant(tiny_model, tmp_path):
    """`-p l2:target_ratio=4` kept the integer, so the zoo stored the pipeline of `-p
    l2:target_ratio=4.0` a second time under a variant of its own, and `NAME:l2:target_ratio=3`
    found no `3.0`."""
    home = tmp_path / "zoo"
    assert zoo_cli("compress", tiny_model, "--name", "m", "-p", "l2:target_ratio=4.0", home=home).returncode == 0
    again = zoo_cli("compress", tiny_model, "--name", "m", "-p", "l2:target_ratio=4", home=home)
    assert again.returncode == 1 and "already in the zoo" in again.stderr, again.stderr
    assert zoo_cli("compress", tiny_model, "--name", "v", "-p", "l2:target_ratio=3.0", home=home).returncode == 0
    for ref in ("v:l2:target_ratio=3", "v:l2:target_ratio=3.0", "v:l2:target_ratio=3.0,tune=0"):
        done = zoo_cli("info", ref, home=home)
        assert done.returncode == 0, (ref, done.stderr)


def test_a_variant_stored_with_an_integer_for_a_float_is_still_found():
    """Zoos written before floats were written as floats hold labels such as `target_ratio=8,tune=0`."""
    from zoo.hub.manifest import Entry, variant_match

    old = Entry("m", "main", "l2:target_ratio=8,tune=0", "0" * 40, Path("x"), "l2:target_ratio=8,tune=0|fprans", None, 1, 1, 0.0)
    assert all(variant_match(wanted, old) for wanted in ("l2:target_ratio=8", "l2:target_ratio=8.0", "l2:target_ratio=8,tune=0"))
    assert not variant_match("l2:target_ratio=9", old)


def test_a_pipeline_an_older_zoo_stored_under_its_integer_label_is_not_stored_twice(tiny_model, tmp_path):
    """Lookups matched `l2:target_ratio=3,tune=0` (an older zoo's label) with `...=3.0,...`, but
    the check for an existing model did not: compress stored the same pipeline a second time, and
    --force added a third entry instead of replacing it."""
    home = tmp_path / "zoo"
    assert zoo_cli("compress", tiny_model, "--name", "m", "-p", "l2:target_ratio=3", home=home).returncode == 0
    store = Store(home)
    new = store.manifest_path("m", "main", "l2:target_ratio=3.0,tune=0")
    old = store.manifest_path("m", "main", "l2:target_ratio=3,tune=0")  # as an older zoo wrote it
    old.parent.mkdir(parents=True, exist_ok=True)
    record = json.loads(new.read_text())
    record["variant"] = "l2:target_ratio=3,tune=0"
    old.write_text(json.dumps(record))
    new.unlink()
    (home / "catalogue.sqlite").unlink()
    again = zoo_cli("compress", tiny_model, "--name", "m", "-p", "l2:target_ratio=3", home=home)
    assert again.returncode == 1 and "m@main:l2:target_ratio=3,tune=0 is already in the zoo" in again.stderr, again.stderr
    assert zoo_cli("compress", tiny_model, "--name", "m", "-p", "l2:target_ratio=3.0", "--force", home=home).returncode == 0
    assert [e.variant for e in Store(home).entries("m")] == ["l2:target_ratio=3,tune=0"]  # replaced, not added beside it


def test_a_model_removed_beside_a_damaged_manifest_does_not_come_back(tiny_model, tmp_path):
    """With another model's manifest unreadable, rm collected none of the removed model's objects,
    its shell among them, and `zoo doctor` then restored the removed model from that shell."""
    home = tmp_path / "zoo"
    assert zoo_cli("compress", tiny_model, "--name", "gone", home=home).returncode == 0
    assert zoo_cli("compress", tiny_model, "--name", "kept", "-p", "truncate:bits=5", home=home).returncode == 0
    Store(home).manifest_path("kept", "main", "truncate:bits=5").write_text('{"manifest": 1, "name": ')
    done = zoo_cli("rm", "gone", home=home)
    assert done.returncode == 0 and "holds a manifest it cannot read" in done.stderr, done.stderr
    assert zoo_cli("doctor", home=home).returncode == 0
    listed = zoo_cli("ls", "--json", home=home)
    assert [m["name"] for m in json.loads(listed.stdout)["models"]] == ["kept"], listed.stdout


def test_a_files_sha256_edited_in_its_manifest_is_found_by_verify(two_models):
    """A manifest whose sha256 of a file (what zoo serve announces as its ETag) was edited passed
    `zoo verify`, `zoo verify NAME` and doctor: only the files' paths and sizes were compared."""
    manifest = Store(two_models).manifest_path("first", "main", "lossless")

    def zeroed(record):
        record["files"][0].update(sha256="0" * 64, served_sha256="0" * 64)

    _edit(manifest, zeroed)
    (two_models / "catalogue.sqlite").unlink()  # the index is rebuilt from the manifests
    done = zoo_cli("verify", home=two_models)
    assert done.returncode == 1 and "damaged: first@main:lossless: its manifest's record of " in done.stderr, done.stderr
    done = zoo_cli("verify", "first", home=two_models)
    assert done.returncode == 1 and "its manifest records another sha256 than its archive's" in done.stderr, done.stderr
    assert zoo_cli("verify", "second:truncate:bits=5", home=two_models).returncode == 0


def test_a_files_losslessness_edited_in_its_manifest_is_named_as_such(two_models):
    """verify found a manifest that calls a lossless file lossy, but said its sha256 was wrong."""
    manifest = Store(two_models).manifest_path("first", "main", "lossless")
    _edit(manifest, lambda record: record["files"][0].update(lossless=False))
    (two_models / "catalogue.sqlite").unlink()
    done = zoo_cli("verify", home=two_models)
    assert done.returncode == 1, done.stderr
    assert "its manifest's record of " in done.stderr and "(sha256, or whether it is lossless)" in done.stderr, done.stderr
