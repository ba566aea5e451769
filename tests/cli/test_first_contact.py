"""What a newcomer meets first (issue 20), each through the real entry point: `python -m zoo`."""

import json
import os
import subprocess
import sys

from tests.conftest import damage_chunk


def zoo_cli(*args, home=None, env=None, cwd=None):
    environment = {k: v for k, v in os.environ.items() if k not in ("ZOO_DEBUG", "HF_ENDPOINT")}
    environment.update(env or {})
    if home is not None:
        environment["ZOO_HOME"] = str(home)
    return subprocess.run([sys.executable, "-m", "zoo", *map(str, args)], capture_output=True, text=True, env=environment, cwd=cwd,
                          timeout=300)


def ok(done):
    assert done.returncode == 0, done.stderr
    return done


# -- nothing the user had is lost ------------------------------------------------------------


def test_decompress_into_a_folder_keeps_files_zoo_never_wrote(tiny_model, tmp_path):
    archive = tmp_path / "m.zoo"
    ok(zoo_cli("compress", tiny_model, "-o", archive))
    mine = tmp_path / "mine"
    mine.mkdir()
    ok(zoo_cli("decompress", archive, "-o", mine))  # an empty folder is fine without --force
    (mine / "notes.txt").write_text("my notes")
    (mine / "config.json").write_text("edited")

    refused = zoo_cli("decompress", archive, "-o", mine)
    assert refused.returncode == 1 and refused.stderr.count("\n") == 1
    assert "config.json" in refused.stderr and "--force" in refused.stderr
    assert (mine / "config.json").read_text() == "edited"

    ok(zoo_cli("decompress", archive, "-o", mine, "--force"))
    assert (mine / "notes.txt").read_text() == "my notes"
    assert (mine / "config.json").read_bytes() == (tiny_model / "config.json").read_bytes()
    assert (mine / "sub" / "notes.txt").read_bytes() == (tiny_model / "sub" / "notes.txt").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.zoo", "mine", "tiny"]  # no temporary left beside it


def test_a_folder_with_other_files_only_needs_no_force_and_a_folder_is_never_removed(tiny_model, tmp_path):
    archive = tmp_path / "m.zoo"
    ok(zoo_cli("compress", tiny_model, "-o", archive))
    mine = tmp_path / "mine"
    (mine / "config.json").mkdir(parents=True)  # a folder where the model has a file
    (mine / "config.json" / "keep.txt").write_text("keep")
    refused = zoo_cli("decompress", archive, "-o", mine, "--force")
    assert refused.returncode == 1 and "config.json (a folder)" in refused.stderr
    assert (mine / "config.json" / "keep.txt").read_text() == "keep"

    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    ok(zoo_cli("decompress", archive, "-o", other))
    assert (other / "notes.txt").read_text() == "mine" and (other / "model.safetensors").exists()


def test_export_into_a_folder_replaces_only_the_models_files(tiny_model, tmp_path):
    home = tmp_path / "zoo"
    ok(zoo_cli("compress", tiny_model, "--name", "tiny", home=home))
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("my notes")
    (mine / "model.safetensors").write_text("old weights")
    assert zoo_cli("export", "tiny", "-o", mine, home=home).returncode == 1
    ok(zoo_cli("export", "tiny", "-o", mine, "--force", home=home))
    assert (mine / "notes.txt").read_text() == "my notes"
    assert (mine / "model.safetensors").read_bytes() == (tiny_model / "model.safetensors").read_bytes()


def test_a_failed_decompress_leaves_the_old_files(tiny_model, tmp_path):
    archive = tmp_path / "m.zoo"
    ok(zoo_cli("compress", tiny_model, "-o", archive, "-p", "bytegroup|zstd"))
    mine = tmp_path / "mine"
    ok(zoo_cli("decompress", archive, "-o", mine))
    before = {p.relative_to(mine): p.read_bytes() for p in mine.rglob("*") if p.is_file()}
    (mine / "notes.txt").write_text("mine")
    damage_chunk(archive, "layer.0.weight", 0)
    failed = zoo_cli("decompress", archive, "-o", mine, "--force")
    assert failed.returncode == 1 and "Traceback" not in failed.stderr
    after = {p.relative_to(mine): p.read_bytes() for p in mine.rglob("*") if p.is_file() and p != mine / "notes.txt"}
    assert after == before and (mine / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.zoo", "mine", "tiny"]
