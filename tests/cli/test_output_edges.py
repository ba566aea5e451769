"""The command line as a user meets it: paths with rich's markup brackets, counts of one, a name
the zoo refuses, a stdout that cannot be written, help that names what a command takes. Each
through the real entry point."""

import json
import os
import shlex
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest

from tests.cli.test_first_contact import _visible, ok, zoo_cli
from tests.conftest import as_the_owner, random_storage, write_safetensors

TERMINAL = {"FORCE_COLOR": "1", "COLUMNS": "100"}  # stdout and stderr count as a terminal


@pytest.fixture
def one_file_archive(tmp_path):
    weights = write_safetensors(tmp_path / "w.safetensors", {"a": ("F32", random_storage("F32", (16, 8), 1))})
    archive = tmp_path / "w.zoo"
    ok(zoo_cli("compress", weights, "-o", archive))
    return archive


def test_a_path_with_square_brackets_is_printed_as_it_is(one_file_archive, tmp_path):
    colour = tmp_path / "out[red]x"
    done = ok(zoo_cli("decompress", one_file_archive, "-o", colour))
    assert done.stdout.startswith(f"{colour}: "), done.stdout  # rich read [red] as a style and printed outx

    (tmp_path / "q[").mkdir()
    closing = tmp_path / "q[/]x"  # the folder x in the folder q[: rich's closing tag with nothing to close
    done = ok(zoo_cli("decompress", one_file_archive, "-o", closing))
    assert done.stdout.startswith(f"{closing}: "), done.stdout


def test_a_path_with_an_emoji_code_is_printed_as_it_is(one_file_archive, tmp_path):
    for env in ({}, TERMINAL):  # a short path: a terminal's line is not folded
        output = f"run:smile:{len(env)}"
        done = ok(zoo_cli("decompress", one_file_archive, "-o", output, env=env, cwd=tmp_path))
        assert _visible(done.stdout).startswith(f"{output}: "), done.stdout  # rich made :smile: a smiling face


def test_a_table_on_a_terminal_shows_square_brackets_as_they_are(tmp_path):
    weights = write_safetensors(tmp_path / "w.safetensors", {"w[bold]": ("F32", random_storage("F32", (8, 8), 1)),
                                                              "layers[/]": ("F32", random_storage("F32", (4,), 2)),
                                                              "head:thumbs_up:": ("F32", random_storage("F32", (4,), 3))})
    ok(zoo_cli("compress", weights, "-o", "x[red]y.zoo", cwd=tmp_path))
    done = ok(zoo_cli("info", "x[red]y.zoo", env=TERMINAL, cwd=tmp_path))  # a short path: the title is not folded
    shown = _visible(done.stdout)
    assert "x[red]y.zoo: fprans" in shown and "w[bold]" in shown and "layers[/]" in shown and "head:thumbs_up:" in shown, shown


def test_a_count_of_one_is_singular(one_file_archive, tmp_path):
    done = ok(zoo_cli("decompress", one_file_archive, "-o", tmp_path / "out"))
    assert ": 1 file, " in done.stdout, done.stdout

    home = tmp_path / "zoo"
    ok(zoo_cli("compress", tmp_path / "w.safetensors", "--name", "one", home=home))
    done = ok(zoo_cli("export", "one", "-o", tmp_path / "exported", home=home))
    assert ", 1 file, " in done.stdout, done.stdout


def test_a_name_the_zoo_refuses_is_not_announced_first(tmp_path):
    weights = write_safetensors(tmp_path / "modèle×.safetensors", {"a": ("F32", random_storage("F32", (4, 4), 1))})
    done = zoo_cli("compress", weights, home=tmp_path / "zoo")
    assert done.returncode == 1 and "storing it as" not in done.stderr, done.stderr
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("error: "), done.stderr


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_a_stdout_that_cannot_be_written_is_named_in_the_error(one_file_archive, tmp_path):
    environment = {k: v for k, v in os.environ.items() if k != "ZOO_DEBUG"}
    commands = [["info", one_file_archive], ["info", one_file_archive, "--json"], ["env"], ["compress", tmp_path / "w.safetensors",
                "-o", tmp_path / "again.zoo"], ["decompress", one_file_archive, "-o", tmp_path / "out"]]
    for command in commands:
        with open("/dev/full", "w") as full:
            done = subprocess.run([sys.executable, "-m", "zoo", *map(str, command)], stdout=full, stderr=subprocess.PIPE, text=True, check=False,
                                  env=environment, timeout=300)
        # "No space left on device" alone reads as the disk the archive went to; the output written whole is said
        written = f", after {command[-1]} was written" if "-o" in command else ""
        assert done.returncode == 1 and done.stderr == f"error: cannot write to stdout: No space left on device{written}\n", (command,
                                                                                                                          done.stderr)
    assert (tmp_path / "again.zoo").exists()  # the archive itself was written whole
    # into the zoo the model was stored before the report could not be printed: said, since a retry
    # would find it there ("already in the zoo")
    for command, done_line in ((["compress", tmp_path / "w.safetensors", "--name", "t/w"], "stored in"), (["rm", "t/w"], "removed from")):
        with open("/dev/full", "w") as full:
            done = subprocess.run([sys.executable, "-m", "zoo", *map(str, command)], stdout=full, stderr=subprocess.PIPE, text=True,
                                  check=False, env={**environment, "ZOO_HOME": str(tmp_path / "home")}, timeout=300)
        assert done.returncode == 1 and done.stderr == ("error: cannot write to stdout: No space left on device, after "
                                                        f"t/w@main:lossless was {done_line} the zoo\n"), (command, done.stderr)


def test_with_stderr_closed_an_error_stays_out_of_stdout(one_file_archive, tmp_path):
    """Started with its stderr closed (`2>&-`), sys.stderr is None, and print(..., file=None)
    wrote the error line to stdout: into the --json document a pipe was reading."""
    environment = {k: v for k, v in os.environ.items() if k != "ZOO_DEBUG"}
    for command in (["info", tmp_path / "nope.zoo", "--json"], ["decompress", one_file_archive, "-o", one_file_archive],
                    ["info", one_file_archive, "--json", "--bogus"]):  # the last: click's usage error
        done = subprocess.run([sys.executable, "-m", "zoo", *map(str, command)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                              text=True, check=False, env=environment, timeout=300, preexec_fn=lambda: os.close(2))
        assert done.returncode in (1, 2) and done.stdout == "", (command, done.stdout)


def test_a_closed_stdout_is_named_in_the_error(one_file_archive, tmp_path):
    """Started with its stdout closed (`>&-`), Python's sys.stdout is None: that was "unexpected
    AttributeError (a bug in zoo)"."""
    environment = {k: v for k, v in os.environ.items() if k != "ZOO_DEBUG"}
    commands = [["info", one_file_archive], ["info", one_file_archive, "--json"],
                ["compress", tmp_path / "w.safetensors", "-o", tmp_path / "again.zoo"]]
    for command in commands:
        done = subprocess.run([sys.executable, "-m", "zoo", *map(str, command)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True, check=False, env=environment, timeout=300, preexec_fn=lambda: os.close(1))
        written = f", after {command[-1]} was written" if "-o" in command else ""
        assert done.returncode == 1 and done.stderr == f"error: cannot write to stdout: stdout is closed{written}\n", (command, done.stderr)


def test_an_error_or_warning_naming_a_file_with_a_newline_is_one_line(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    write_safetensors(model / "model.safetensors", {"a": ("F32", random_storage("F32", (4, 4), 1))})
    os.mkfifo(model / "odd\npipe")  # left out, with a warning
    done = ok(zoo_cli("compress", model, "-o", tmp_path / "m.zoo"))
    assert done.stderr == "warning: " + str(model) + ": left out 1 item: odd\\npipe (not a regular file)\n", done.stderr
    (model / "evil\nlink").symlink_to("/etc/hostname")  # refused, with an error
    done = zoo_cli("compress", model, "-o", tmp_path / "m.zoo", "--force")
    assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr
    assert "evil\\nlink: a link leading out of the folder" in done.stderr, done.stderr


def test_help_says_archive_takes_a_zoo_name_too():
    for command in ("info", "decompress"):
        done = ok(zoo_cli(command, "--help"))
        assert "zoo name" in done.stdout, (command, done.stdout)


def test_a_malformed_spec_is_refused_before_the_name_is_announced(tmp_path):
    weights = write_safetensors(tmp_path / "w.safetensors", {"a": ("F32", random_storage("F32", (4, 4), 1))})
    done = zoo_cli("compress", weights, "-p", "bogus", home=tmp_path / "zoo")
    assert done.returncode == 1 and done.stderr.startswith("error: unknown codec 'bogus'") and done.stderr.count("\n") == 1, done.stderr


def test_an_unreadable_text_is_said_in_words_by_sweep_as_by_eval(tmp_path):
    weights = write_safetensors(tmp_path / "w.safetensors", {"a": ("F32", random_storage("F32", (4, 4), 1))})
    missing = tmp_path / "no-such-text.txt"
    for command in (["sweep", weights, "-p", "lossless"], ["eval", weights, "-r", weights]):
        done = zoo_cli(*command, "--text", missing)
        assert done.returncode == 1 and done.stderr == f"error: {missing}: cannot read it as UTF-8 text (No such file or directory)\n", done.stderr


def test_a_progress_bar_on_a_terminal_shows_its_description_not_its_style(one_file_archive, tmp_path):
    done = ok(zoo_cli("decompress", one_file_archive, "-o", tmp_path / "out", env=TERMINAL))
    assert "decompressing" in _visible(done.stderr) and "[progress." not in done.stderr, done.stderr


def test_the_quality_an_archive_stores_names_it_not_its_temporary(tmp_path):
    """compress --eval judges the archive before it takes its place, under a temporary name: the
    notes stored in it, and a failed gate's document, name the output the user asked for."""
    import json

    weights = write_safetensors(tmp_path / "w.safetensors", {"a.weight": ("F32", random_storage("F32", (64, 64), 1))})
    archive = tmp_path / "g.zoo"
    ok(zoo_cli("compress", weights, "-o", archive, "-p", "codebook:bits=2", "--eval"))
    quality = json.loads(ok(zoo_cli("info", archive, "--json")).stdout)["metadata"]["quality"]
    assert quality["notes"] and all(note.startswith(f"{archive} has no config.json") for note in quality["notes"]), quality["notes"]
    failed = zoo_cli("compress", weights, "-o", tmp_path / "h.zoo", "-p", "codebook:bits=2", "--min-cosine", "0.999999", "--json")
    assert failed.returncode == 1 and ".zoo-tmp-" not in failed.stdout
    document = json.loads(failed.stdout)
    assert document["output"] == str(tmp_path / "h.zoo") and document["kept"] is False and not (tmp_path / "h.zoo").exists()


def test_a_summary_of_many_files_kept_as_bytes_stays_short_and_names_no_bits_per_weight_without_weights(tmp_path):
    # 300 such files made one line of about 40 KB; a folder of no tensors printed "0.00 bits per weight"
    folder = tmp_path / "m"
    folder.mkdir()
    for number in range(30):
        (folder / f"notes-{number:02}.bin").write_bytes(b"not a checkpoint\n")
    done = ok(zoo_cli("compress", folder, "-o", tmp_path / "m.zoo"))
    assert "bits per weight" not in done.stdout and "30 files, 0 tensors" in done.stdout, done.stdout
    kept = next(line for line in done.stdout.splitlines() if line.startswith("kept as bytes"))
    assert "notes-09.bin" in kept and "notes-10.bin" not in kept and kept.endswith("and 20 more (-v lists them)"), kept
    listed = ok(zoo_cli("compress", folder, "-o", tmp_path / "all.zoo", "-v")).stdout
    assert "notes-29.bin (not a pickle torch.load" in listed
    assert "notes-29.bin (not a pickle torch.load" in ok(zoo_cli("info", tmp_path / "m.zoo")).stdout


@pytest.mark.parametrize("args, message", [
    (["info", ""], "ARCHIVE is empty"),
    (["decompress", "", "-o", "out"], "ARCHIVE is empty"),
    (["decompress", "{archive}", "-o", ""], "--output is empty"),
    (["compress", "{archive}", "-o", ""], "--output is empty"),
    (["export", "", "-o", "out"], "no model given: name a model in the zoo (see `zoo ls`)"),
])
def test_an_empty_path_is_refused_not_read_as_the_current_folder(one_file_archive, tmp_path, args, message):
    """pathlib reads "" as ".": `decompress "" -o out` said `.` was no archive, and `-o ""` with
    --force would have written into the current folder."""
    work = tmp_path / "work"
    work.mkdir()
    done = zoo_cli(*[str(one_file_archive) if a == "{archive}" else a for a in args], "--force" if "-o" in args else "--json",
                   cwd=work, env={"ZOO_HOME": str(tmp_path / "zoo")})
    assert (done.returncode, done.stderr) == (1, f"error: {message}\n")
    assert list(work.iterdir()) == []


def test_compress_dash_o_a_name_ending_in_a_slash_writes_into_that_folder(tmp_path):
    """`-o out/` wrote a file named out (typer's Path drops the slash); it now goes into the folder,
    named after the source as with several SOURCEs, and a folder that is not there is refused."""
    weights = write_safetensors(tmp_path / "w.safetensors", {"a": ("F32", random_storage("F32", (16, 8), 1))})
    done = zoo_cli("compress", weights, "-o", f"{tmp_path / 'missing'}/")
    assert done.returncode == 1 and done.stderr.startswith("error: ") and not (tmp_path / "missing").exists(), done.stderr
    (tmp_path / "out").mkdir()
    ok(zoo_cli("compress", weights, "-o", f"{tmp_path / 'out'}/"))
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["w.zoo"]
    ok(zoo_cli("verify", tmp_path / "out" / "w.zoo"))


def test_compress_dash_o_a_file_url_writes_at_that_path(tmp_path):
    """A file:// URL is storage like s3:// (the batch's workers write it); as a Path it became a
    local folder named `file:` in the current folder."""
    weights = write_safetensors(tmp_path / "w.safetensors", {"a": ("F32", random_storage("F32", (16, 8), 1))})
    (tmp_path / "work").mkdir()
    done = ok(zoo_cli("compress", weights, "-o", f"file://{tmp_path / 'there'}/", cwd=tmp_path / "work"))
    assert list((tmp_path / "work").iterdir()) == [] and (tmp_path / "there" / "w.zoo").is_file(), done.stderr
    # what a URL cannot take yet is refused for that reason (it said "with several SOURCEs or --ray", of one SOURCE)
    done = zoo_cli("compress", weights, "--include", "a", "-o", f"file://{tmp_path / 'there'}/x.zoo")
    assert (done.returncode, done.stderr) == (1, "error: --include is not available with an -o URL yet: write the archive to a local "
                                                 "path, then copy it\n")


def test_an_archive_given_as_the_model_is_refused_in_words(one_file_archive, tmp_path):
    """`zoo compress x.zoo` stored the archive as a plain file of bytes (gaining nothing) and
    `zoo bench x.zoo` said it held no tensors: both now say it is an archive, before any name is
    announced; an archive inside a folder stays one of its files."""
    for args in (["compress", one_file_archive, "-o", tmp_path / "again.zoo"], ["compress", one_file_archive],
                 ["bench", one_file_archive]):
        done = zoo_cli(*args, home=tmp_path / "zoo")
        assert (done.returncode, done.stderr) == (1, f"error: {one_file_archive}: a zoo archive already; `zoo decompress "
                                                     f"{one_file_archive} -o FOLDER` gives back its model to compress anew\n")
    assert not (tmp_path / "again.zoo").exists() and not (tmp_path / "zoo").exists()
    folder = tmp_path / "with"
    folder.mkdir()
    (folder / "old.zoo").write_bytes(one_file_archive.read_bytes())
    ok(zoo_cli("compress", folder, "-o", tmp_path / "with.zoo"))
    ok(zoo_cli("decompress", tmp_path / "with.zoo", "-o", tmp_path / "back"))
    assert (tmp_path / "back" / "old.zoo").read_bytes() == one_file_archive.read_bytes()


@pytest.mark.parametrize("args, option", [(["-p", "truncate:bits=3", "-p", "codebook:bits=4"], "--pipeline"),
                                          (["-o", "a.zoo", "--output", "b.zoo"], "--output"), (["-t", "1", "-t", "2"], "--threads")])
def test_an_option_of_one_value_given_twice_is_refused(one_file_archive, tmp_path, args, option):
    """click kept the last value: `-p truncate:bits=3 -p codebook:bits=4` stored codebook alone."""
    source = tmp_path / "w.safetensors"
    done = zoo_cli("compress", source, *args, *([] if "-o" in args else ["-o", tmp_path / "x.zoo"]), cwd=tmp_path)
    assert (done.returncode, done.stderr) == (1, f"error: {option} is given more than once; it takes one value\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.safetensors", "w.zoo"]
    assert ok(zoo_cli("sweep", source, "-p", "lossless", "-p", "truncate:bits=3", "--json", cwd=tmp_path)).stdout  # repeatable there


def test_a_sweep_says_each_warning_once(tmp_path):
    # each pipeline read the model again and said its warnings again, and the evaluation of each
    # candidate said them of its temporary folder (/tmp/zoo-eval-.../model/model.pt)
    import torch

    model = tmp_path / "m"
    model.mkdir()
    torch.save({"c128": torch.tensor([1 + 2j], dtype=torch.complex128), "w": torch.randn(32, 32)}, model / "model.pt")
    (model / "dangling").symlink_to(tmp_path / "nowhere")
    done = subprocess.run([sys.executable, "-m", "zoo", "sweep", str(model), "-p", "lossless", "-p", "zstd"], capture_output=True,
                          text=True, timeout=300)
    warned = [line for line in done.stderr.splitlines() if line.startswith("warning: ")]
    assert done.returncode == 0 and len(warned) == 2 and len(set(warned)) == 2, done.stderr
    assert all("zoo-eval-" not in line for line in warned)


def test_decompress_says_which_files_it_checked(tmp_path):
    """Of a lossy archive it said "every lossless file matches its sha256" where none was lossless;
    then "none bit-exact", of a file whose values a lossy stage had left as they were (checked by cmp)."""
    weights = write_safetensors(tmp_path / "w.safetensors", {"a.weight": ("F32", np.full((64, 64), 0.25, np.float32))})
    ok(zoo_cli("compress", weights, "-o", tmp_path / "lossy.zoo", "-p", "truncate:bits=3"))
    done = ok(zoo_cli("decompress", tmp_path / "lossy.zoo", "-o", tmp_path / "out"))
    assert done.stdout.endswith(", 1 file decoded from lossy stages, not held to the original's sha256\n"), done.stdout
    assert (tmp_path / "out" / "w.safetensors").read_bytes() == weights.read_bytes()
    ok(zoo_cli("compress", weights, "-o", tmp_path / "exact.zoo"))
    done = ok(zoo_cli("decompress", tmp_path / "exact.zoo", "-o", tmp_path / "again"))
    assert done.stdout.endswith(", every file matches its sha256\n"), done.stdout


def test_an_empty_source_or_output_is_refused_never_the_current_folder(tmp_path):
    """`zoo compress "$A" "$B"` with B unset compressed the current folder beside A ("" is Path(".")),
    and `zoo export NAME -o ""` wrote into it, with --force over the user's files."""
    weights = write_safetensors(tmp_path / "w.safetensors", {"a.weight": ("F32", random_storage("F32", (16, 16), 1))})
    work = tmp_path / "work"
    work.mkdir()
    (work / "config.json").write_text('{"mine": 1}')
    home = tmp_path / "zoo"
    for args in ([weights, "", "-o", tmp_path / "out/"], ["", weights, "-o", tmp_path / "out/"], [weights, "", "--force"]):
        done = zoo_cli("compress", *args, cwd=work, home=home)
        assert (done.returncode, done.stderr) == (1, "error: an empty SOURCE among them: name a folder, a file or a hub id (an unset "
                                                     "variable?)\n"), done.stderr
    assert not (tmp_path / "out").exists() and not home.exists()
    ok(zoo_cli("compress", weights, "--name", "w", home=home))
    for args in (["-o", ""], ["-o", "", "--force"], ["-o", "", "--archive"]):
        done = zoo_cli("export", "w", *args, cwd=work, home=home)
        assert (done.returncode, done.stderr) == (1, "error: --output is empty\n"), done.stderr
    # a URL was a local path: `-o s3://b/m.zoo` wrote s3:/b/m.zoo and said it had written s3://b/m.zoo
    (work / "s3:" / "b").mkdir(parents=True)
    for args in (["-o", "s3://b/m.zoo", "--archive"], ["-o", "s3://b/m"], ["-o", "file:///tmp/m", "--force"]):
        done = zoo_cli("export", "w", *args, cwd=work, home=home)
        assert (done.returncode, done.stderr) == (1, f"error: --output {args[1]}: a URL, where this command takes a local path\n"), done.stderr
    assert list((work / "s3:" / "b").iterdir()) == []
    (work / "s3:" / "b").rmdir()
    (work / "s3:").rmdir()
    assert [p.name for p in work.iterdir()] == ["config.json"] and (work / "config.json").read_text() == '{"mine": 1}'


def test_dash_o_dash_is_refused_never_a_path_named_dash(one_file_archive, tmp_path):
    """`zoo compress MODEL -o -` wrote a file named `-` in the current folder (and decompress and
    export a folder), where a Unix user means stdout: zoo's outputs are files renamed into place,
    and its stdout carries the report. Refused in a line; `./-` still names a path called `-`."""
    weights = write_safetensors(tmp_path / "w.safetensors", {"a.weight": ("F32", random_storage("F32", (16, 16), 1))})
    work = tmp_path / "work"
    work.mkdir()
    home = tmp_path / "zoo"
    ok(zoo_cli("compress", weights, "--name", "w", home=home))
    refusals = {("compress", weights, "-o", "-"): "OUT.zoo", ("compress", weights, weights, "-o", "-", "--force"): "DIR/",
                ("decompress", one_file_archive, "--output=-"): "DIR", ("export", "w", "-o", "-", "--archive"): "OUT.zoo"}
    for args, instead in refusals.items():
        done = zoo_cli(*args, cwd=work, home=home)
        assert (done.returncode, done.stdout, done.stderr) == (
            1, "", f"error: -o -: zoo writes its output to a path, not to stdout (which carries the report); use -o {instead} instead "
                   "(-o ./- for a path named -)\n"), (args, done.stderr)
    assert list(work.iterdir()) == []
    ok(zoo_cli("compress", weights, "-o", "./-", cwd=work, home=home))
    assert (work / "-").is_file()
    (work / "-").unlink()
    ok(zoo_cli("decompress", one_file_archive, "-o", "./-", cwd=work, home=home))  # a Path makes ./- and - one
    assert [p.name for p in (work / "-").iterdir()] == ["w.safetensors"]


def test_zoo_debug_set_to_a_no_shows_no_traceback(tmp_path):
    """ZOO_DEBUG=0 printed a 46-line traceback: any value turned it on."""
    for value, lines in (("0", 1), ("no", 1), ("false", 1), ("", 1), ("1", None)):
        done = zoo_cli("info", tmp_path / "nothere.zoo", env={"ZOO_DEBUG": value}, home=tmp_path / "zoo")
        assert done.returncode == 1
        assert (done.stderr.count("\n") == 1) if lines else "Traceback" in done.stderr, (value, done.stderr)


def test_options_that_do_nothing_here_are_noted(tmp_path):
    """--name with -o was dropped, and --calib with a lossless pipeline never read, without a word."""
    weights = write_safetensors(tmp_path / "w.safetensors", {"a.weight": ("F32", random_storage("F32", (16, 16), 1))})
    (tmp_path / "calib.txt").write_text("some text")
    done = ok(zoo_cli("compress", weights, "-o", tmp_path / "w.zoo", "--name", "org/w", "--calib", tmp_path / "calib.txt"))
    assert "note: --name names a model in the zoo; an archive written with -o is known by its path\n" in done.stderr
    assert "note: --calib tunes lossy stages; this pipeline has none, so the calibration text is not read\n" in done.stderr


def test_a_base_with_no_delta_into_the_zoo_is_refused(tmp_path):
    """--base names what to store XORs against and --no-delta stores none: the base was dropped
    unread, a misspelt one included."""
    weights = write_safetensors(tmp_path / "w.safetensors", {"a.weight": ("F32", random_storage("F32", (16, 16), 1))})
    home = tmp_path / "zoo"
    ok(zoo_cli("compress", weights, "--name", "org/base", home=home))
    for base in ("org/base", "org/nothere"):
        done = zoo_cli("compress", weights, "--name", "org/tuned", "--base", base, "--no-delta", home=home)
        assert (done.returncode, done.stderr) == (1, "error: --base names the model to store XORs against, and --no-delta stores none: "
                                                     "leave out one of them\n"), done.stderr
    assert "org/tuned" not in zoo_cli("ls", home=home).stdout


def test_a_url_where_a_local_path_goes_is_named_as_such(tmp_path):
    """`zoo verify s3://b/a.zoo` said `s3:/b/a.zoo: no such file` (a Path of one slash), and
    ZOO_HOME=file:// or a chained fsspec URL became a local folder `file:` or `simplecache::s3:`."""
    for args in (["verify", "s3://bucket/a.zoo"], ["decompress", "x.zoo", "-o", "s3://bucket/out"]):
        done = zoo_cli(*args, cwd=tmp_path, home=tmp_path / "zoo")
        assert (done.returncode, done.stderr.endswith(": a URL, where this command takes a local path\n")) == (1, True), done.stderr
    for home, message in (("file://", "the URL names no folder"), ("simplecache::s3://b/z", "a chained fsspec URL")):
        done = zoo_cli("ls", cwd=tmp_path, env={"ZOO_HOME": home})
        assert done.returncode == 1 and message in done.stderr, done.stderr
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    done = zoo_cli("compress", tmp_path / "model", "-o", tmp_path / "out/", "--ray=", cwd=tmp_path, home=tmp_path / "zoo")
    assert (done.returncode, done.stderr) == (1, "error: --ray is empty: give HOST:PORT, or --ray alone for RAY_ADDRESS or a Ray of its own\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no out/, no zoo


def test_an_output_among_what_the_zoo_keeps_in_its_folder_is_refused(one_file_archive, tmp_path):
    # `-o $ZOO_HOME` merged the model's files beside the catalogue (--force replaced a file named
    # like it), and outputs under objects/ or manifests/ mixed a user's files with the zoo's
    home = tmp_path / "zoo"
    ok(zoo_cli("compress", one_file_archive.with_suffix(".safetensors"), "--name", "t/m", home=home))
    kept = sorted(str(p.relative_to(home)) for p in home.rglob("*") if "work" not in p.parts)
    (tmp_path / "link").symlink_to(home)
    other = write_safetensors(tmp_path / "other.safetensors", {"b": ("F32", random_storage("F32", (8, 8), 2))})
    for args in (("decompress", one_file_archive, "-o", home), ("decompress", one_file_archive, "-o", home / "objects" / "x"),
                 ("decompress", one_file_archive, "-o", tmp_path / "link" / "manifests"),
                 ("compress", one_file_archive.with_suffix(".safetensors"), "-o", home / "catalogue.sqlite", "--force"),
                 ("export", "t/m", "-o", home / "work" / "a.zoo"), ("decompress", "t/m", "-o", home / "lock", "--force"),
                 ("compress", one_file_archive.with_suffix(".safetensors"), other, "-o", home / "manifests"),  # a batch, before its tasks
                 ("compress", one_file_archive.with_suffix(".safetensors"), "-o", home / "catalogue-v1.sqlite")):
        done = zoo_cli(*args, home=home)
        assert done.returncode == 1 and "the zoo's own folder" in done.stderr and "Traceback" not in done.stderr, (args, done.stderr)
    assert sorted(str(p.relative_to(home)) for p in home.rglob("*") if "work" not in p.parts) == kept
    ok(zoo_cli("decompress", "t/m", "-o", home / "mine", home=home))  # a folder of the user's own beside them is theirs
    ok(zoo_cli("export", "t/m", "-o", tmp_path / "a.zoo", home=home))
    ok(zoo_cli("doctor", home=home))


def test_a_model_whose_files_would_land_among_what_the_zoo_keeps_is_refused(tmp_path):
    # ZOO_HOME inside the output folder: a model holding zoo/lock or zoo/manifests/... replaced
    # the zoo's lock and added a manifest of its own with --force, exit 0 (doctor and gc then failed)
    parent = tmp_path / "sb"
    home = parent / "zoo"
    model = tmp_path / "evil"
    (model / "zoo" / "manifests" / "x" / "main").mkdir(parents=True)
    write_safetensors(model / "m.safetensors", {"w": ("F32", random_storage("F32", (8, 8), 1))})
    (model / "zoo" / "lock").write_text("the user's lock\n")
    (model / "zoo" / "manifests" / "x" / "main" / "lossless.json").write_text('{"evil": 1}\n')
    ok(zoo_cli("compress", model, "--name", "e/m", home=home))
    ok(zoo_cli("compress", model, "-o", tmp_path / "e.zoo", home=home))
    kept = {p: p.read_bytes() for p in home.rglob("*") if p.is_file() and "work" not in p.parts}
    for args in (("export", "e/m", "-o", parent, "--force"), ("decompress", tmp_path / "e.zoo", "-o", parent, "--force")):
        done = zoo_cli(*args, home=home)
        assert done.returncode == 1 and "zoo/lock: lies inside the zoo's own folder" in done.stderr, (args, done.stderr)
    assert {p: p.read_bytes() for p in home.rglob("*") if p.is_file() and "work" not in p.parts} == kept
    ok(zoo_cli("doctor", home=home))
    ok(zoo_cli("decompress", tmp_path / "e.zoo", "-o", home / "mine", home=home))  # beside the zoo's own names: the user's


def test_one_model_given_as_a_url_is_read_as_it_is_with_several(tmp_path):
    # alone, `zoo compress file:///m -o out.zoo` (or --name) said "no such file or folder", where
    # beside another SOURCE or with an -o URL the batch fetched it
    model = tmp_path / "m"
    model.mkdir()
    write_safetensors(model / "model.safetensors", {"w": ("F32", random_storage("F32", (64, 64), 1))})
    url = model.as_uri()
    ok(zoo_cli("compress", url, "-o", tmp_path / "m.zoo", home=tmp_path / "home"))
    ok(zoo_cli("decompress", tmp_path / "m.zoo", "-o", tmp_path / "out", home=tmp_path / "home"))
    assert (tmp_path / "out" / "model.safetensors").read_bytes() == (model / "model.safetensors").read_bytes()
    ok(zoo_cli("compress", url, "--name", "org/m", home=tmp_path / "home"))
    done = zoo_cli("compress", url, "-o", tmp_path / "c.zoo", "--calib", model / "model.safetensors", home=tmp_path / "home")
    assert (done.returncode, done.stderr) == (
        1, "error: --calib is not available with a URL SOURCE yet: copy the model to a local folder first\n")


def test_an_output_whose_name_is_near_the_systems_limit_is_written(one_file_archive, tmp_path):
    # a name of 226 to 255 bytes is the user's to choose, but its temporary (.NAME.zoo-tmp-PID-RANDOM)
    # passed 255: "cannot write in .: File name too long"
    from zoo.hub.temporaries import temporary_prefix

    archive, folder = tmp_path / ("z" * 251 + ".zoo"), tmp_path / ("é" * 127)  # 255 and 254 bytes
    ok(zoo_cli("compress", one_file_archive.with_suffix(".safetensors"), "-o", archive))
    ok(zoo_cli("decompress", archive, "-o", folder))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([archive.name, folder.name, "w.safetensors", "w.zoo"])
    assert len(os.fsencode(temporary_prefix(folder))) < 230 and temporary_prefix(tmp_path / "short") == ".short.zoo-tmp-"


@pytest.mark.parametrize("env", [{}, TERMINAL], ids=["piped", "terminal"])
def test_names_are_printed_escaped_in_a_strict_utf8_locale_and_never_act_on_the_terminal(tmp_path, env):
    """A byte of a file's name that is not UTF-8 (held as a surrogate escape) made every command
    that printed it fail with an unexpected UnicodeEncodeError where stdout is strict UTF-8 (an
    en_US.UTF-8 locale), after decompress had written its output; and a tensor named with ESC
    sequences reached the terminal raw from `zoo info`'s table and verify's damage lines."""
    model = tmp_path / "model"
    model.mkdir()
    write_safetensors(model / os.fsdecode(b"b\xff.safetensors"), {"\x1b[2Jw": ("F32", random_storage("F32", (8, 8), 1))})
    write_safetensors(model / "c.safetensors", {"c": ("F32", random_storage("F32", (8, 8), 2))})
    strict = {**env, "PYTHONIOENCODING": "utf-8:strict"}
    archive = os.fsdecode(b"m\xfe.zoo")  # short names, in tmp_path: a terminal's lines are not folded
    ok(zoo_cli("compress", model, "-o", archive, env=strict, cwd=tmp_path))
    shown = ok(zoo_cli("info", archive, env=strict, cwd=tmp_path)).stdout
    assert "m\\xfe.zoo" in shown and "\\x1b[2Jw" in shown and "\x1b[2J" not in shown, shown
    done = ok(zoo_cli("decompress", archive, "-o", os.fsdecode(b"out\xfd"), env=strict, cwd=tmp_path))
    assert "out\\xfd: 2 files" in done.stdout, done.stdout
    assert (tmp_path / os.fsdecode(b"out\xfd") / os.fsdecode(b"b\xff.safetensors")).is_file()
    assert "m\\xfe.zoo: ok" in ok(zoo_cli("verify", archive, env=strict, cwd=tmp_path)).stdout
    damaged = bytearray((tmp_path / archive).read_bytes())
    damaged[-40] ^= 0xFF  # in the last chunk's coded bytes
    (tmp_path / archive).write_bytes(bytes(damaged))
    done = zoo_cli("verify", archive, env=strict, cwd=tmp_path)
    assert done.returncode == 1 and "unexpected" not in done.stderr and "\x1b[2J" not in done.stderr, done.stderr
    assert "damaged: " in done.stderr, done.stderr


def test_a_table_on_a_terminal_too_narrow_for_its_box_is_printed_whole(tmp_path):
    """At 50 columns rich dropped the tensor column and cut values to what looked like others
    (`64×32` as `64×3`, `0.857` as `0.8`): now plain lines, nothing cut."""
    weights = write_safetensors(tmp_path / "w.safetensors", {"weight": ("F32", random_storage("F32", (64, 32), 1)),
                                                              "bias": ("BF16", random_storage("BF16", (8,), 2))})
    ok(zoo_cli("compress", weights, "-o", "w.zoo", cwd=tmp_path))
    plain = ok(zoo_cli("info", "w.zoo", cwd=tmp_path)).stdout.splitlines()
    narrow = _visible(ok(zoo_cli("info", "w.zoo", env={**TERMINAL, "COLUMNS": "50"}, cwd=tmp_path)).stdout).splitlines()
    table = [line for line in plain if line.startswith(("tensor", "weight", "bias"))]
    assert len(table) == 3 and all(line in narrow for line in table), (plain, narrow)
    wide = _visible(ok(zoo_cli("info", "w.zoo", env=TERMINAL, cwd=tmp_path)).stdout)
    assert "┃" in wide and "64×32" in wide, wide  # where it fits, still the box


def test_what_a_command_is_given_to_no_effect_is_said_or_done_once(one_file_archive, tmp_path):
    """sweep -p X -p X swept X twice; sweep of an archive said it had no float weights; verify
    --base without an archive ignored --base in silence."""
    source = tmp_path / "w.safetensors"
    done = ok(zoo_cli("sweep", source, "-p", "truncate:bits=4", "-p", "truncate:bits=4", "-p", "truncate:bits=4|lossless", "--json",
                      cwd=tmp_path))  # one pipeline, however spelt
    assert [point["pipeline"] for point in json.loads(done.stdout)["points"]] == ["truncate:bits=4"], done.stdout
    done = zoo_cli("sweep", one_file_archive, "-p", "truncate:bits=4")
    assert done.returncode == 1 and "a zoo archive already" in done.stderr, done.stderr
    done = ok(zoo_cli("verify", "--base", "nope", home=tmp_path / "zoo"))
    assert done.stderr.startswith("note: --base applies to an archive"), done.stderr


def test_an_empty_name_for_a_pulled_model_is_refused_not_taken_as_none(tmp_path):
    from zoo.errors import InputError
    from zoo.hub.pull import pull
    from zoo.hub.store import Store

    with pytest.raises(InputError, match="'' is not a usable model name"):
        pull("org/model", store=Store(tmp_path / "zoo"), name="")  # refused before any download is tried


@pytest.mark.parametrize("columns", ["66", "90"])
def test_numbers_in_a_table_whose_columns_all_fold_are_never_split(tmp_path, columns):
    """sweep's, budget's and bench's tables let every column fold: at 66 columns rich split
    `48.0`/`1 KiB` and `0.99`/`75` across lines, which read as other values."""
    source = write_safetensors(tmp_path / "w.safetensors", {"a.weight": ("F32", random_storage("F32", (256, 64), 1))})
    specs = ["truncate:bits=2", "truncate:bits=5"]
    args = ["sweep", source, *(x for spec in specs for x in ("-p", spec))]
    points = json.loads(ok(zoo_cli(*args, "--json", cwd=tmp_path)).stdout)["points"]
    shown = _visible(ok(zoo_cli(*args, env={**TERMINAL, "COLUMNS": columns}, cwd=tmp_path)).stdout)
    for point in points:
        assert f"{point['bits_per_weight']:.3f}" in shown, shown


def test_a_report_past_what_stdout_encodes_is_escaped_not_a_bug(one_file_archive, tmp_path):
    """Under a stdout of another encoding than UTF-8, `zoo info` printed its header, then failed on
    the table's × with "unexpected UnicodeEncodeError (a bug in zoo)"; eval on ∞, bench on ·.
    zoo's own signs are then their ASCII stand-ins (× escaped, 16\\xd78, read as a byte of a name)."""
    done = ok(zoo_cli("info", one_file_archive, env={"PYTHONIOENCODING": "ascii"}))
    assert "16x8 " in done.stdout and done.stderr == "", done.stdout


@pytest.fixture
def latin1_locale(tmp_path):
    """An ISO-8859-1 locale, made with localedef where the system has none."""
    if subprocess.run(["which", "localedef"], capture_output=True).returncode:
        pytest.skip("no localedef to make an ISO-8859-1 locale")
    locales = tmp_path / "locales"
    locales.mkdir()
    subprocess.run(["localedef", "-i", "en_US", "-f", "ISO-8859-1", locales / "en_US.ISO-8859-1"], check=True, capture_output=True)
    return {"LOCPATH": str(locales), "LANG": "en_US.ISO-8859-1", "LC_ALL": "en_US.ISO-8859-1", "PYTHONIOENCODING": "", "PYTHONUTF8": ""}


def test_names_keep_their_bytes_under_a_locale_that_is_not_utf8(latin1_locale, tmp_path):
    """Under an ISO-8859-1 locale the name café.txt (its bytes UTF-8) was stored as cafÃ©.txt and
    came back so, with "every file matches its sha256"; a name the locale cannot encode (模型.txt)
    made even info and verify refuse the archive. The CLI now runs in UTF-8 mode, and the Python
    API refuses such names with the way out."""
    model = tmp_path / "model"
    model.mkdir()
    write_safetensors(model / "w.safetensors", {"w": ("F32", random_storage("F32", (8, 8), 1))})
    for name in ("café.txt", "模型.txt"):
        (model / name).write_text(name)
    probe = [sys.executable, "-c", "import sys; print(sys.getfilesystemencoding())"]
    assert subprocess.run(probe, capture_output=True, text=True, env={**os.environ, **latin1_locale}).stdout.strip() == "iso8859-1"
    ok(zoo_cli("compress", model, "-o", tmp_path / "m.zoo", env=latin1_locale))
    ok(zoo_cli("verify", tmp_path / "m.zoo", env=latin1_locale))
    ok(zoo_cli("decompress", tmp_path / "m.zoo", "-o", tmp_path / "out", env=latin1_locale))
    assert sorted(os.listdir(os.fsencode(tmp_path / "out"))) == sorted(os.listdir(os.fsencode(model)))
    for call in (f"zoo.compress({str(model)!r}, {str(tmp_path / 'n.zoo')!r})", f"zoo.decompress({str(tmp_path / 'm.zoo')!r}, "
                                                                              f"{str(tmp_path / 'out2')!r})"):
        done = subprocess.run([sys.executable, "-c", f"import zoo; {call}"], capture_output=True, text=True, errors="replace",
                              env={**os.environ, **latin1_locale})
        assert "run Python in UTF-8 mode (PYTHONUTF8=1 or python -X utf8)" in done.stderr.splitlines()[-1], done.stderr
    assert not (tmp_path / "n.zoo").exists() and not (tmp_path / "out2").exists()
    # its reports in the locale's encoding (× is 0xd7 there), and a program of its own calling main()
    # is not started again (it had read its stdin, and ran twice)
    shown = subprocess.run([sys.executable, "-m", "zoo", "info", tmp_path / "m.zoo"], capture_output=True,
                           env={**os.environ, **latin1_locale}).stdout
    assert b"8\xd78 " in shown, shown
    wrapper = ("import sys\nfrom zoo.cli import main\nprint('started', file=sys.stderr)\n"
               f"sys.argv = ['zoo', 'compress', {str(model)!r}, '-o', {str(tmp_path / 'w.zoo')!r}]\nmain()\n")
    done = subprocess.run([sys.executable, "-c", wrapper, "--its-own-flag"], capture_output=True, text=True, errors="replace",
                          env={**os.environ, **latin1_locale})
    assert done.returncode == 1 and done.stderr.count("started") == 1 and "run Python in UTF-8 mode" in done.stderr, done.stderr
    tool = tmp_path / "mytool.py"  # a program of the user's that calls main() with the command line it was given
    tool.write_text("import sys\nprint('read', repr(sys.stdin.readline()), file=sys.stderr)\nfrom zoo.cli import main\nmain()\n")
    done = subprocess.run([sys.executable, tool, "info", tmp_path / "m.zoo"], input="job-1\n", capture_output=True, text=True,
                          errors="replace", env={**os.environ, **latin1_locale})
    assert done.stderr.count("read") == 1, done.stderr
    script = Path(sysconfig.get_path("scripts")) / "zoo"  # the console script, through a link of another name, and -mzoo
    starts = [[sys.executable, "-mzoo"]] + ([[tmp_path / "zoo-dev"]] if script.is_file() else [])
    if script.is_file():
        (tmp_path / "zoo-dev").symlink_to(script)
    for start in starts:
        done = subprocess.run([*start, "decompress", tmp_path / "m.zoo", "-o", tmp_path / f"again-{len(start)}"], capture_output=True,
                              text=True, errors="replace", env={**os.environ, **latin1_locale})
        assert done.returncode == 0, (start, done.stderr)


def test_the_shells_environment_does_not_turn_zoos_output_into_errors(tmp_path):
    """PYTHONWARNINGS=error made zoo's own warnings "unexpected ZooWarning (a bug in zoo)", even
    after a model was stored; ZOO_HOME=" " made a zoo in a folder named " "; a relative path from
    a removed current folder gave a bare "No such file or directory"."""
    model = tmp_path / "model"
    model.mkdir()
    write_safetensors(model / "w.safetensors", {"w": ("F32", random_storage("F32", (8, 8), 1))})
    (model / "dangling").symlink_to("/nonexistent/x")
    done = ok(zoo_cli("compress", model, "-o", tmp_path / "m.zoo", env={"PYTHONWARNINGS": "error"}))
    assert "warning: " in done.stderr and "left out 1 item: dangling" in done.stderr, done.stderr
    done = ok(zoo_cli("ls", cwd=tmp_path, env={"ZOO_HOME": " ", "XDG_CACHE_HOME": str(tmp_path / "cache")}))
    assert str(tmp_path / "cache" / "zoo") in done.stderr and not (tmp_path / " ").exists(), done.stderr
    gone = tmp_path / "gone"
    gone.mkdir()
    done = subprocess.run([sys.executable, "-m", "zoo", "compress", "../model", "-o", "x.zoo"], capture_output=True, text=True,
                          cwd=gone, preexec_fn=gone.rmdir, timeout=300)
    assert (done.returncode, done.stderr) == (1, "error: No such file or directory: the current folder was removed (cd into one that "
                                                 "exists, or give absolute paths)\n")


def test_a_batchs_output_folder_inside_one_of_its_models_is_refused(tmp_path):
    """compress A B -o A/: A's archive held the batch's temporary folder, and B's archive too when
    it landed first (on Ray, as the tasks happened to run)."""
    models = []
    for number, name in enumerate(("alpha", "beta")):
        (tmp_path / name).mkdir()
        write_safetensors(tmp_path / name / "model.safetensors", {"w": ("F32", random_storage("F32", (8, 8), number))})
        models.append(tmp_path / name)
    for output in (models[0], models[0] / "archives"):
        done = zoo_cli("compress", *models, "-o", f"{output}/", home=tmp_path / "zoo")
        assert (done.returncode, done.stderr.startswith(f"error: {output}: ")) == (1, True), done.stderr
        assert "the model folder" in done.stderr and "write them elsewhere" in done.stderr, done.stderr
    assert sorted(p.name for p in models[0].iterdir()) == ["model.safetensors"]
    ok(zoo_cli("compress", *models, "-o", f"{tmp_path / 'out'}/", home=tmp_path / "zoo"))


def test_an_archive_under_a_folder_is_named_after_the_folder_a_dot_names(tmp_path):
    """compress . ../beta -o out/ wrote the hidden out/..zoo, and ./ with ../beta/. were 'two
    sources stored as ..zoo'."""
    for number, name in enumerate(("alpha", "beta")):
        (tmp_path / name).mkdir()
        write_safetensors(tmp_path / name / "model.safetensors", {"w": ("F32", random_storage("F32", (8, 8), number))})
    ok(zoo_cli("compress", ".", "../beta/.", "-o", f"{tmp_path / 'out'}/", cwd=tmp_path / "alpha", home=tmp_path / "zoo"))
    (tmp_path / "one").mkdir()
    ok(zoo_cli("compress", "./", "-o", f"{tmp_path / 'one'}/", cwd=tmp_path / "alpha", home=tmp_path / "zoo"))
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["alpha.zoo", "beta.zoo"]
    assert sorted(p.name for p in (tmp_path / "one").iterdir()) == ["alpha.zoo"]


def test_a_link_to_nothing_where_a_batchs_archive_goes_is_refused_before_the_work(tmp_path):
    """compress A B -o out/ with out/alpha.zoo a link to nothing compressed alpha, then said it
    "appeared while it was being compressed"; one model's compress -o refuses it at once."""
    models = []
    for number, name in enumerate(("alpha", "beta")):
        (tmp_path / name).mkdir()
        write_safetensors(tmp_path / name / "model.safetensors", {"w": ("F32", random_storage("F32", (8, 8), number))})
        models.append(tmp_path / name)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "alpha.zoo").symlink_to("/nonexistent/x")
    done = zoo_cli("compress", *models, "-o", f"{tmp_path / 'out'}/", home=tmp_path / "zoo")
    assert (done.returncode, done.stderr) == (1, f"error: alpha.zoo is already in {tmp_path / 'out'}/; pass --force to replace it\n")
    ok(zoo_cli("compress", *models, "-o", f"{tmp_path / 'out'}/", "--force", home=tmp_path / "zoo"))
    assert not (tmp_path / "out" / "alpha.zoo").is_symlink()


def test_ctrl_c_once_a_batchs_archive_landed_says_it_was_written(tmp_path):
    models = []
    for number, name in enumerate(("alpha", "beta")):
        (tmp_path / name).mkdir()
        write_safetensors(tmp_path / name / "model.safetensors", {"w": ("F32", random_storage("F32", (8, 8), number))})
        models.append(tmp_path / name)
    done = zoo_cli("compress", *models, "-o", f"{tmp_path / 'out'}/", home=tmp_path / "zoo", env={"ZOO_KILL_AT": "batch-landed:INT"})
    assert done.returncode == 130 and done.stderr.endswith(f"interrupted after {tmp_path / 'out' / 'alpha.zoo'} was written\n"), done.stderr


def test_a_hub_id_among_several_sources_is_pointed_to_pull(tmp_path):
    write_safetensors(tmp_path / "w.safetensors", {"w": ("F32", random_storage("F32", (8, 8), 1))})
    done = zoo_cli("compress", tmp_path / "w.safetensors", "org/x", home=tmp_path / "zoo")
    assert (done.returncode, done.stderr) == (1, "error: org/x: no such file or folder (a hub id? `zoo pull` takes several, and "
                                                 "`zoo compress` one at a time)\n")


def test_bytes_stored_of_nothing_are_no_ratio_of_one(tmp_path):
    """An archive of an empty file said "0 B -> 437 B (ratio 1.000)", as if it cost nothing."""
    (tmp_path / "empty.txt").write_bytes(b"")
    done = ok(zoo_cli("compress", tmp_path / "empty.txt", "-o", tmp_path / "e.zoo"))
    assert done.stdout.rstrip().endswith("(ratio inf)"), done.stdout
    assert json.loads(ok(zoo_cli("info", tmp_path / "e.zoo", "--json")).stdout)["ratio"] == "Infinity"
    home = tmp_path / "zoo"
    ok(zoo_cli("compress", tmp_path / "empty.txt", "--name", "empty", home=home))
    assert json.loads(ok(zoo_cli("ls", "--json", home=home)).stdout)["models"][0]["ratio"] == "Infinity"
    (tmp_path / "out").mkdir()
    done = ok(zoo_cli("compress", tmp_path / "empty.txt", weights_of(tmp_path), "-o", f"{tmp_path / 'out'}/"))  # a batch's lines
    assert f"landed {tmp_path / 'out' / 'empty.txt.zoo'}: 0 B -> " in done.stderr and "(ratio inf)" in done.stderr, done.stderr


def weights_of(folder):
    return write_safetensors(folder / "w.safetensors", {"a": ("F32", random_storage("F32", (16, 8), 1))})


@pytest.mark.skipif(not shutil.which("capsh"), reason="capsh (libcap2-bin) drops root's right to read what it may not")
def test_an_archive_in_a_folder_that_cannot_be_entered_is_said_so_not_missing(tmp_path):
    """`zoo info u/t.zoo` with u/ mode 000 said "no such file, and no model of that name"."""
    model = write_safetensors(tmp_path / "w.safetensors", {"w": ("F32", np.ones(4, np.float32))})
    (tmp_path / "u").mkdir()
    ok(zoo_cli("compress", model, "-o", tmp_path / "u" / "t.zoo"))
    (tmp_path / "u").chmod(0)
    try:
        command = f"{shlex.quote(sys.executable)} -m zoo info {shlex.quote(str(tmp_path / 'u' / 't.zoo'))}"
        done = subprocess.run(["capsh", "--drop=cap_dac_override,cap_dac_read_search", "--", "-c", command], capture_output=True,
                              text=True, timeout=300, env={**os.environ, "ZOO_HOME": str(tmp_path / "zoo")})
    finally:
        (tmp_path / "u").chmod(0o755)
    assert (done.returncode, done.stderr) == (1, f"error: {tmp_path / 'u' / 't.zoo'}: permission denied (a folder on its way cannot "
                                                 "be entered)\n"), done.stderr


def test_a_json_document_cut_by_a_reader_that_left_exits_1(tmp_path):
    """One write of a document larger than the pipe holds wrote part of it and raised nothing when
    the reader left: `zoo info --json M | head -c 10` exited 0 with 900 KB unread (docs/cli.md)."""
    source = write_safetensors(tmp_path / "many.safetensors", {f"t{i}": ("F32", np.full((4, 4), i, np.float32)) for i in range(3000)})
    ok(zoo_cli("compress", source, "-o", tmp_path / "many.zoo"))
    reader = subprocess.Popen([sys.executable, "-m", "zoo", "info", str(tmp_path / "many.zoo"), "--json"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE)
    assert reader.stdout.read(10) == b'{\n  "archi'
    reader.stdout.close()
    assert reader.wait(timeout=120) == 1, reader.stderr.read()
    assert reader.stderr.read() == b""


def test_a_terminal_of_no_columns_still_gets_the_results(one_file_archive, tmp_path):
    """COLUMNS=0 on a terminal gave rich a width of none, into which it printed nothing: `zoo
    verify` said nothing and exited 0."""
    done = ok(zoo_cli("verify", one_file_archive, env={"COLUMNS": "0", "FORCE_COLOR": "1"}))
    assert _visible(done.stdout).strip() == f"{one_file_archive}: ok"


def test_a_refused_name_shows_a_byte_that_is_not_utf8_as_the_other_messages_do(tmp_path):
    """repr had written the surrogate that holds the byte (caf\\udce9) before the CLI could escape it
    as every other message does (caf\\xe9, docs/cli.md)."""
    folder = tmp_path / os.fsdecode(b"caf\xe9")
    folder.mkdir()
    write_safetensors(folder / "model.safetensors", {"w": ("F32", random_storage("F32", (8, 8), 1))})
    done = zoo_cli("compress", folder, home=tmp_path / "zoo")
    assert done.returncode == 1 and done.stderr.startswith("error: 'caf\\xe9' is not a usable model name"), done.stderr
    done = zoo_cli("pull", os.fsdecode(b"a\xe9/b c"), home=tmp_path / "zoo")
    assert done.returncode == 1 and done.stderr.startswith("error: 'a\\xe9/b c' is neither"), done.stderr


def test_the_progress_bars_total_counts_what_cannot_be_looked_at_as_0_bytes(tmp_path):
    """source_bytes raised PermissionError for a file in a folder that can be listed but not
    searched (mode 644): a batch's total stopped every model before the first began. It counts
    it as 0 bytes, and the compress itself says why."""
    folder = tmp_path / "m"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "f").write_text("data")
    (folder / "w.bin").write_bytes(b"x" * 1000)
    (folder / "sub").chmod(0o644)
    code = ("import sys; from pathlib import Path; from zoo.cli.output import source_bytes; "
            "print(*(source_bytes(Path(p)) for p in sys.argv[1:]))")
    try:
        done = subprocess.run(as_the_owner([sys.executable, "-c", code, str(folder), str(folder / "sub" / "f"), str(tmp_path / "none")]),
                              capture_output=True, text=True, timeout=300)
    finally:
        (folder / "sub").chmod(0o755)
    assert (done.returncode, done.stdout, done.stderr) == (0, "1000 0 0\n", "")


def test_a_folder_name_the_zoo_refuses_among_several_sources_is_met_with_a_way_that_works(tmp_path):
    """`zoo compress "my model" B` said "(choose one with --name)", and --name is refused with
    several SOURCEs: the way it gave led to another error."""
    for folder in (tmp_path / "my model", tmp_path / "b"):
        folder.mkdir()
        weights_of(folder)
    done = zoo_cli("compress", tmp_path / "my model", tmp_path / "b", home=tmp_path / "zoo")
    assert done.returncode == 1 and done.stderr.endswith(
        "(choose another with --name, compressing or pulling this model on its own)\n"), done.stderr
    ok(zoo_cli("compress", tmp_path / "my model", "--name", "my-model", home=tmp_path / "zoo"))


def test_into_an_existing_folder_whose_parent_may_not_be_written(tiny_model, tmp_path):
    """`zoo decompress X -o ~` (and zoo export) and `-o .` in it: the temporary went beside
    the folder, and a user may not write in /home, so a model could not be written into their own
    home. It goes inside the folder then; a failure there still leaves the folder as it was."""
    import zoo

    from tests.conftest import damage_chunk

    archive, zoo_home = tmp_path / "m.zoo", tmp_path / "zoo"
    zoo.compress(tiny_model, archive, pipeline="bytegroup|zstd")
    home = tmp_path / "home"
    alice = home / "alice"
    alice.mkdir(parents=True)
    (alice / "notes.txt").write_text("mine")

    def as_alice(*args, cwd=None):
        environment = {**os.environ, "ZOO_HOME": str(zoo_home)}
        return subprocess.run(as_the_owner([sys.executable, "-m", "zoo", *map(str, args)]), capture_output=True, text=True,
                              env=environment, cwd=cwd, timeout=300)

    def held() -> dict[str, bytes]:
        return {str(p.relative_to(alice)): p.read_bytes() for p in sorted(alice.rglob("*")) if p.is_file()}

    home.chmod(0o555)
    try:
        ok(as_alice("decompress", archive, "-o", alice))  # (zoo export NAME -o FOLDER writes it the same way)
        ok(as_alice("decompress", archive, "-o", ".", "--force", cwd=alice))
        before = held()
        damage_chunk(archive, "layer.0.weight", 0)
        failed = as_alice("decompress", archive, "-o", alice, "--force")
    finally:
        home.chmod(0o755)
    assert failed.returncode == 1 and "is damaged" in failed.stderr and "Traceback" not in failed.stderr, failed.stderr
    assert held() == before and before.pop("notes.txt") == b"mine"
    assert before == {str(p.relative_to(tiny_model)): p.read_bytes() for p in sorted(tiny_model.rglob("*")) if p.is_file()}
    assert sorted(p.name for p in alice.iterdir()) == sorted([p.name for p in tiny_model.iterdir()] + ["notes.txt"])  # no temporary left
    assert [p.name for p in home.iterdir()] == ["alice"]
