"""What a newcomer meets first (issue 20), each through the real entry point: `python -m zoo`."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

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


# -- errors that help --------------------------------------------------------------------------


def test_a_mistyped_path_fails_at_once_without_the_network(tmp_path):
    # HF_ENDPOINT points at a port nobody listens on: reaching for the network would say so.
    offline = {"HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_OFFLINE": "0"}
    for typed in ("./modle", "../modle", "modle", str(tmp_path / "modle"), "org/name/extra", "modle.safetensors"):
        done = zoo_cli("compress", typed, cwd=tmp_path, home=tmp_path / "zoo", env=offline)
        assert done.returncode == 1 and done.stderr == f"error: {typed}: no such file or folder\n"
    assert not (tmp_path / "zoo").exists()


@pytest.mark.slow  # a dozen or more runs of the CLI, each its own interpreter
def test_one_not_found_message_in_every_command(tiny_model, tmp_path):
    home = tmp_path / "zoo"
    ok(zoo_cli("compress", tiny_model, "--name", "tiny", home=home))
    commands = (["info"], ["verify"], ["export", "-o", tmp_path / "out"], ["rm"], ["eval"], ["decompress", "-o", tmp_path / "out"])
    for command in commands:
        done = zoo_cli(command[0], "nosuch", *command[1:], home=home)
        assert done.returncode == 1, command
        assert done.stderr == f"error: nosuch: no such file, and no model of that name in the zoo at {home} (see `zoo ls`)\n", command
    assert not (tmp_path / "out").exists()


@pytest.mark.slow  # a dozen or more runs of the CLI, each its own interpreter
def test_a_variant_is_found_by_the_spec_the_user_typed(tiny_model, tmp_path):
    home = tmp_path / "zoo"
    stored = json.loads(ok(zoo_cli("compress", tiny_model, "--name", "tiny", "-p", "truncate:bits=6|bytegroup|zstd", "--json",
                                   home=home)).stdout)["zoo"]
    assert stored["variant"] == "truncate:bits=6|bytegroup|zstd:level=3"  # stored under its expanded spec
    for typed in ("tiny:truncate:bits=6|bytegroup|zstd", "tiny:truncate:bits=6|bytegroup|zstd:level=3", "tiny@main:truncate:bits=6|bytegroup|zstd"):
        assert json.loads(ok(zoo_cli("info", typed, "--json", home=home)).stdout)["compressed_bytes"] > 0, typed
    missing = zoo_cli("info", "tiny:truncate:bits=4", home=home)
    assert missing.returncode == 1 and "tiny@main:truncate:bits=6|bytegroup|zstd:level=3" in missing.stderr and "zoo ls" in missing.stderr
    for command in (["verify"], ["export", "-o", tmp_path / "out"], ["rm"]):
        same = zoo_cli(command[0], "tiny:truncate:bits=4", *command[1:], home=home)
        assert same.returncode == 1 and same.stderr == missing.stderr, command
    ok(zoo_cli("rm", "tiny:truncate:bits=6|bytegroup|zstd", home=home))
    assert json.loads(ok(zoo_cli("ls", "--json", home=home)).stdout)["models"] == []


def test_a_folder_beside_the_model_stored_under_its_name_gives_way_to_the_model(tiny_model, tmp_path):
    """`zoo compress tiny` names the model after the folder; `zoo info tiny` next to the folder
    meant the model, and was refused as "a folder, not a zoo archive"."""
    home = tmp_path / "home"  # not "zoo": `python -m zoo` run in tmp_path would import that folder
    ok(zoo_cli("compress", "tiny", home=home, cwd=tmp_path))
    assert ok(zoo_cli("info", "tiny", home=home, cwd=tmp_path)).stdout.startswith("tiny: ")
    assert ok(zoo_cli("verify", "tiny", home=home, cwd=tmp_path)).stdout == "tiny: ok\n"
    ok(zoo_cli("decompress", "tiny", "-o", "out", home=home, cwd=tmp_path))
    assert (tmp_path / "out" / "model.safetensors").read_bytes() == (tiny_model / "model.safetensors").read_bytes()
    refused = zoo_cli("info", "sub", home=home, cwd=tiny_model)  # a folder and no model of its name
    assert refused.returncode == 1 and refused.stderr == "error: sub: is a folder, not a zoo archive\n", refused.stderr


# -- output a person reads ---------------------------------------------------------------------


def test_usage_lines_name_arguments_as_words():
    for command, word in (("compress", "SOURCE [SOURCE...]"), ("decompress", "ARCHIVE"), ("info", "ARCHIVE"), ("export", "MODEL"), ("rm", "MODEL")):
        done = ok(zoo_cli(command, "--help"))
        assert done.stdout.splitlines()[0] == f"Usage: zoo {command} [OPTIONS] {word}"
        assert "{" not in done.stdout.splitlines()[0]
    missing = zoo_cli("compress")
    assert missing.returncode == 2 and "SOURCE" in missing.stderr


def _visible(text):
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)


def test_compress_prints_the_summary_and_a_row_per_pipeline_not_per_tensor(tiny_model, tmp_path):
    archive = tmp_path / "m.zoo"
    done = ok(zoo_cli("compress", tiny_model, "-o", archive, "-p", "truncate:bits=6"))
    lines = done.stdout.splitlines()
    assert "embed.weight" not in done.stdout and len(lines) <= 6
    assert lines[1].split() == ["pipeline", "tensors", "original", "stored", "ratio", "bits/w"]  # piped: plain lines, no box
    assert lines[-1].startswith("3 files, 4 tensors: ")
    verbose = ok(zoo_cli("compress", tiny_model, "-o", tmp_path / "v.zoo", "-p", "truncate:bits=6", "--verbose"))
    info = ok(zoo_cli("info", archive))
    for text in (verbose.stdout, info.stdout):
        rows = {line.split()[0] for line in text.splitlines() if line.strip()}
        assert {"embed.weight", "layer.0.weight", "layer.0.bias", "position_ids"} <= rows
        assert not set("┏┃│━└") & set(text)


def test_tables_fit_80_columns(tiny_model, tmp_path):
    archive = tmp_path / "m.zoo"
    ok(zoo_cli("compress", tiny_model, "-o", archive, "-p", "truncate:bits=6"))
    terminal = {"FORCE_COLOR": "1", "COLUMNS": "80"}
    for command in (["info", archive], ["compress", tiny_model, "-o", tmp_path / "t.zoo", "-p", "truncate:bits=6"]):
        shown = _visible(ok(zoo_cli(*command, env=terminal)).stdout)
        assert "┃" in shown and "…" not in shown, shown
        assert max(len(line) for line in shown.splitlines()) <= 80, shown
    assert "position_ids" in _visible(zoo_cli("info", archive, env=terminal).stdout)


def test_compress_json_is_one_shape_to_a_file_or_into_the_zoo(tiny_model, tmp_path):
    home = tmp_path / "zoo"
    to_file = json.loads(ok(zoo_cli("compress", tiny_model, "-o", tmp_path / "m.zoo", "--json", home=home)).stdout)
    into_zoo = json.loads(ok(zoo_cli("compress", tiny_model, "--name", "tiny", "--json", home=home)).stdout)
    assert to_file.keys() == into_zoo.keys()
    assert to_file["output"] == str(tmp_path / "m.zoo") and to_file["zoo"] is None
    assert into_zoo["output"] is None and into_zoo["zoo"]["ref"] == "tiny@main:lossless" and into_zoo["zoo"]["new"] is True
    assert into_zoo["original_bytes"] == to_file["original_bytes"] and len(into_zoo["tensors"]) == 4


def test_compress_eval_stores_quality_and_old_verify_archives_still_read(tiny_model, tmp_path):
    import zoo

    home = tmp_path / "zoo"
    archive = tmp_path / "m.zoo"
    assert ok(zoo_cli("compress", tiny_model, "-o", archive, "--eval")).stdout.count("quality, against") == 1
    # into the zoo too, once: its summary printed the stored figures, and then the figures again
    assert ok(zoo_cli("compress", tiny_model, "--name", "checked", "--eval", home=home)).stdout.count("quality, against") == 1
    metadata = zoo.open(archive).metadata()
    assert metadata["quality"]["passed"] is True and "verify" not in metadata
    assert "--eval" in ok(zoo_cli("compress", "--help")).stdout and "--verify" not in ok(zoo_cli("compress", "--help")).stdout
    # the old name still works, stored under the new key
    ok(zoo_cli("compress", tiny_model, "-o", tmp_path / "old-flag.zoo", "--verify"))
    assert zoo.open(tmp_path / "old-flag.zoo").metadata()["quality"]["passed"] is True
    # an archive written before the rename carries "verify": info shows it, the zoo lists it
    zoo.api.update_metadata(archive, {"verify": metadata["quality"], "quality": None}, own_keys=True)
    assert "quality" not in zoo.open(archive).metadata()
    shown = ok(zoo_cli("info", archive)).stdout
    assert "bit-exact" in shown and "quality, against" in shown
    from zoo.hub.store import Store

    entry = Store(home).add(archive, "old")
    assert entry.quality["passed"] is True


@pytest.mark.slow  # a dozen or more runs of the CLI, each its own interpreter
def test_json_threads_and_exit_codes_mean_the_same_in_every_command(tiny_model, tmp_path):
    home = tmp_path / "zoo"
    archive = tmp_path / "m.zoo"
    ok(zoo_cli("compress", tiny_model, "-o", archive, "-t", "2", home=home))
    ok(zoo_cli("compress", tiny_model, "--name", "tiny", "--threads", "2", home=home))
    with_json = [["compress", tiny_model, "-o", tmp_path / "j.zoo"], ["info", archive], ["verify", archive],
                 ["decompress", archive, "-o", tmp_path / "d"], ["export", "tiny", "-o", tmp_path / "e"], ["eval", archive, "-r", tiny_model],
                 ["ls"], ["rm", "tiny"]]
    for command in with_json:
        done = ok(zoo_cli(*command, "--json", home=home))
        assert isinstance(json.loads(done.stdout), dict) and done.stderr == "", command  # one document, nothing else
    ok(zoo_cli("compress", tiny_model, "--name", "tiny", home=home))
    with_threads = [["compress", tiny_model, "-o", tmp_path / "t.zoo"], ["verify", archive], ["decompress", archive, "-o", tmp_path / "t"],
                    ["export", "tiny", "-o", tmp_path / "u"], ["eval", archive, "-r", tiny_model]]
    for command in with_threads:
        assert zoo_cli(*command, "--threads", "0", home=home).returncode == 2, command  # a usage error: exit 2
        assert zoo_cli(*command, "nosuchoption", "--bogus", home=home).returncode == 2, command
        ok(zoo_cli(*command, "-t", "2", home=home))
    for command in (["info", tmp_path / "nothing.zoo"], ["verify", tmp_path / "nothing.zoo"], ["rm", "nothing"], ["eval", "nothing"]):
        done = zoo_cli(*command, "--json", home=home)
        assert done.returncode == 1 and done.stdout == "" and done.stderr.startswith("error: "), command  # an error: exit 1


def test_the_bytes_bar_shows_the_stage_until_bytes_flow(tiny_model, tmp_path):
    import io
    import time

    from rich.console import Console
    from rich.progress import Progress

    from zoo.cli.output import _columns

    remaining = _columns()[-1]
    with Progress(*_columns(), console=Console(file=io.StringIO()), auto_refresh=False) as progress:
        waiting = progress.add_task("compressing", total=100, unit="bytes", stage="tuning roundings", flowing=(time.monotonic(), 10))
        progress.update(waiting, completed=10)
        flowing = progress.add_task("compressing", total=100, unit="bytes", stage="tuning roundings", flowing=(time.monotonic() - 60, 10))
        progress.update(flowing, completed=55)  # 45 bytes in the minute since the first: a minute left
        tasks = {task.id: task for task in progress.tasks}
        assert remaining.render(tasks[waiting]).plain == "tuning roundings"
        assert remaining.render(tasks[flowing]).plain in ("0:01:00", "0:00:59")

    shown = zoo_cli("compress", tiny_model, "-o", tmp_path / "m.zoo", env={"FORCE_COLOR": "1", "COLUMNS": "100"})
    assert shown.returncode == 0 and "compressing" in _visible(shown.stderr)
    assert "encoding" in _visible(shown.stderr) and "-:--:--" not in _visible(shown.stderr)


def test_a_folder_named_model_is_stored_under_the_models_own_name(tiny_model, tmp_path):
    import shutil

    home = tmp_path / "zoo"
    package = tmp_path / "package" / "model"
    shutil.copytree(tiny_model, package)
    done = ok(zoo_cli("compress", package, home=home))
    assert "storing it as package (the folder it sits in" in done.stderr and "stored package@main:lossless" in done.stdout

    config = json.loads((package / "config.json").read_text())
    (package / "config.json").write_text(json.dumps({**config, "_name_or_path": "acme/tiny-model"}))
    done = ok(zoo_cli("compress", package, home=home))
    assert "storing it as acme/tiny-model (config.json's _name_or_path" in done.stderr

    snapshot = tmp_path / "hub" / "models--acme--cached" / "snapshots" / ("0123abcd" * 5)
    shutil.copytree(tiny_model, snapshot)
    done = ok(zoo_cli("compress", snapshot, home=home))
    assert "storing it as acme/cached (its Hugging Face cache folder" in done.stderr

    ok(zoo_cli("compress", tiny_model, home=home))  # a telling folder name is kept
    quiet = ok(zoo_cli("compress", package, "--name", "chosen", "--json", home=home))
    assert quiet.stderr == "" and json.loads(quiet.stdout)["zoo"]["name"] == "chosen"
    names = {row["name"] for row in json.loads(ok(zoo_cli("ls", "--json", home=home)).stdout)["models"]}
    assert names == {"package", "acme/tiny-model", "acme/cached", "tiny", "chosen"}


def test_a_single_file_of_a_generic_name_is_named_after_its_folder_or_its_cache_repo(tmp_path):
    """`runs/bert/model.safetensors` was stored as `model` (a second model's file then collided
    with it), `pytorch_model.bin` as itself, and a cache snapshot's file as the hash of the blob
    its link points to."""
    from zoo.refs import model_name

    for folder, file in (("gpt2-small", "model.safetensors"), ("bert", "pytorch_model.bin"), ("t5", "model.pt"), ("opt", "checkpoint.ckpt")):
        (tmp_path / "runs" / folder).mkdir(parents=True)
        (tmp_path / "runs" / folder / file).write_bytes(b"x")
        assert model_name(tmp_path / "runs" / folder / file) == (folder, "the folder it sits in")
    (tmp_path / "runs" / "model").mkdir()
    (tmp_path / "runs" / "model" / "model.bin").write_bytes(b"x")  # a generic folder too: the one above it
    assert model_name(tmp_path / "runs" / "model" / "model.bin") == ("runs", "the folder it sits in")
    (tmp_path / "runs" / "gpt2-small" / "tuned.safetensors").write_bytes(b"x")
    assert model_name(tmp_path / "runs" / "gpt2-small" / "tuned.safetensors") == ("tuned", "its own name")
    assert model_name(tmp_path / "runs" / "bert") == ("bert", "its own name")

    cache = tmp_path / "hub" / "models--org--tiny"
    snapshot = cache / "snapshots" / ("0123abcd" * 5)
    (cache / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    (cache / "blobs" / ("deadbeef" * 8)).write_bytes(b"x")
    (snapshot / "model.safetensors").symlink_to(Path("..") / ".." / "blobs" / ("deadbeef" * 8))
    assert model_name(snapshot / "model.safetensors") == ("org/tiny", "its Hugging Face cache folder")


def test_ls_and_quality_tables_fit_80_columns_and_are_plain_lines_when_piped(tiny_model, tmp_path):
    home = tmp_path / "zoo"
    ok(zoo_cli("compress", tiny_model, "--name", "org/a-rather-long-model-name", "-p", "truncate:bits=6|bytegroup|zstd", "--eval",
               home=home))
    piped = ok(zoo_cli("ls", home=home)).stdout.splitlines()
    assert piped[1].split() == ["name", "revision", "variant", "original", "stored", "adds", "ratio", "quality"]
    assert piped[2].split()[:3] == ["org/a-rather-long-model-name", "main", "truncate:bits=6|bytegroup|zstd:level=3"]
    shown = _visible(ok(zoo_cli("ls", home=home, env={"FORCE_COLOR": "1", "COLUMNS": "80"})).stdout)
    assert max(len(line) for line in shown.splitlines()) <= 80 and "…" not in shown and "┃" in shown
    info = ok(zoo_cli("info", "org/a-rather-long-model-name:truncate:bits=6|bytegroup|zstd", home=home)).stdout
    assert "quality (weights)" in info and not set("┏┃│━└") & set(info)


def test_compress_eval_compares_only_the_files_include_and_exclude_chose(tiny_model, tmp_path):
    # The lossless check scanned the whole folder: what --exclude left out was "missing from the
    # archive", and --eval failed every time (4 files missing, 3 of them named)
    import zoo

    home = tmp_path / "zoo"
    archive = tmp_path / "m.zoo"
    ok(zoo_cli("compress", tiny_model, "-o", archive, "--exclude", "sub/*", "--eval"))
    assert zoo.open(archive).metadata()["quality"]["metrics"]["files"] == 2
    ok(zoo_cli("compress", tiny_model, "--name", "tiny", "--include", "model.safetensors", "--eval", home=home))
    for extra in ("a", "b", "c", "d"):
        (tiny_model / f"{extra}.txt").write_text(extra)
    (tmp_path / "m.zoo").unlink()
    ok(zoo_cli("compress", tiny_model, "-o", archive, "--exclude", "*.txt", "--eval"))
    from zoo.api import check_quality
    from zoo.evaluate import QualityGateError

    with pytest.raises(QualityGateError, match=r"5 source files are missing: a.txt, b.txt, c.txt and 2 more"):
        check_quality(archive, tiny_model)  # the same archive against the whole folder: five of its files are not there
