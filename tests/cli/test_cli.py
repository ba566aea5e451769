"""The CLI through its real entry point, as a user runs it."""

import json
import os
import subprocess
import sys


def zoo_cli(*args, cwd=None, env=None):
    environment = {k: v for k, v in os.environ.items() if k != "ZOO_DEBUG"}
    environment.update(env or {})
    return subprocess.run([sys.executable, "-m", "zoo", *map(str, args)], capture_output=True, text=True, cwd=cwd, env=environment, timeout=300)


def test_compress_info_verify_decompress(tiny_model, tmp_path):
    archive = tmp_path / "m.zoo"
    done = zoo_cli("compress", tiny_model, "-o", archive, "--json", "--threads", "2")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    for key in ("original_bytes", "compressed_bytes", "ratio", "bits_per_weight", "tensors"):
        assert key in report
    assert {t["name"] for t in report["tensors"]} == {"embed.weight", "layer.0.weight", "layer.0.bias", "position_ids"}
    for tensor in report["tensors"]:
        assert {"original_bytes", "compressed_bytes", "ratio", "bits_per_weight", "pipeline", "dtype", "shape"} <= tensor.keys()

    info = zoo_cli("info", archive, "--json")
    assert json.loads(info.stdout)["compressed_bytes"] == archive.stat().st_size
    table = zoo_cli("info", archive)
    assert "embed.weight" in table.stdout and "bits per weight" in table.stdout

    assert zoo_cli("verify", archive).returncode == 0
    out = tmp_path / "out"
    assert zoo_cli("decompress", archive, "-o", out).returncode == 0
    assert (out / "sub" / "notes.txt").read_text() == (tiny_model / "sub" / "notes.txt").read_text()


def test_known_errors_are_one_line_exit_1(tmp_path):
    done = zoo_cli("compress", tmp_path / "missing", "-o", tmp_path / "x.zoo")
    assert done.returncode == 1
    assert done.stderr.strip().count("\n") == 0 and done.stderr.startswith("error: ")
    assert "Traceback" not in done.stderr

    bad = tmp_path / "bad.zoo"
    bad.write_bytes(b"garbage")
    for command in (["verify", bad], ["info", bad], ["decompress", bad, "-o", tmp_path / "o"]):
        done = zoo_cli(*command)
        assert done.returncode == 1 and "not a zoo archive" in done.stderr and "Traceback" not in done.stderr


def test_damaged_archive_exits_1_naming_the_damage(tiny_model, tmp_path):
    archive = tmp_path / "m.zoo"
    assert zoo_cli("compress", tiny_model, "-o", archive).returncode == 0
    data = bytearray(archive.read_bytes())
    data[-100] ^= 0xFF
    archive.write_bytes(data)
    done = zoo_cli("verify", archive)
    assert done.returncode == 1 and "damaged" in done.stderr


def test_existing_output_needs_force(tiny_model, tmp_path):
    archive = tmp_path / "m.zoo"
    archive.write_text("keep me")
    done = zoo_cli("compress", tiny_model, "-o", archive)
    assert done.returncode == 1 and "--force" in done.stderr
    assert archive.read_text() == "keep me"
    assert zoo_cli("compress", tiny_model, "-o", archive, "--force").returncode == 0


def test_usage_errors_exit_2(tmp_path):
    assert zoo_cli("compress").returncode == 2
    assert zoo_cli("nosuchcommand").returncode == 2
    assert zoo_cli("compress", tmp_path, "--threads", "0").returncode == 2


def test_help_lists_codecs():
    done = zoo_cli("compress", "--help")
    assert done.returncode == 0
    for codec_id in ("lossless", "bytegroup", "zstd"):
        assert codec_id in done.stdout


def test_debug_variable_shows_traceback(tmp_path):
    done = zoo_cli("compress", tmp_path / "missing", "-o", tmp_path / "x.zoo", env={"ZOO_DEBUG": "1"})
    assert done.returncode == 1 and "Traceback" in done.stderr


def test_help_does_not_import_heavy_modules():
    probe = "import sys; from zoo.cli.app import app; print(sorted(m for m in ('torch', 'transformers', 'numpy') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert json.loads(done.stdout.replace("'", '"')) == []


def test_a_command_alone_parses_as_the_whole_app_does():
    """The entry point builds only the command the command line names (app_for): for every command,
    its help and an unknown option read as through the app of all commands."""
    from typer.testing import CliRunner

    from zoo.cli.app import app, app_for

    runner = CliRunner()
    names = [registered.name or registered.callback.__name__.replace("_", "-") for registered in app.registered_commands]
    assert len(names) > 10
    for name in names:
        alone = app_for(["zoo", name])
        assert len(alone.registered_commands) == 1 and alone is not app
        for args in (["--help"], ["--no-such-option"]):
            ours, whole = (runner.invoke(which, [name, *args], prog_name="zoo") for which in (alone, app))
            assert (ours.exit_code, ours.output) == (whole.exit_code, whole.output), (name, args)
    assert app_for(["zoo", "--help"]) is app and app_for(["zoo"]) is app and app_for(["zoo", "no-such-command"]) is app
