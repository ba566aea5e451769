"""Every bad input a user can meet: a clear ZooError naming the file, nothing lost or half-written."""

import json
import os
import re
import stat
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import zoo
from zoo.errors import ChecksumError, FormatError, InputError, OutputExistsError, PipelineError

from tests.conftest import random_storage, write_safetensors


def raw_safetensors(path, header, data=b""):
    body = json.dumps(header).encode() if isinstance(header, dict) else header
    path.write_bytes(struct.pack("<Q", len(body)) + body + data)
    return path


def listing(folder):
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize(
    "header, data, message",
    [
        ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, bytes(12), "overlaps"),
        ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, bytes(8), "belong to no tensor"),
        ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, bytes(8), "after the last tensor"),
        ({"a": {"dtype": "Q7", "shape": [1], "data_offsets": [0, 4]}}, bytes(4), "unknown dtype"),
        ({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, bytes(8), "needs 12 bytes"),
        ({"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, bytes(4), "shape"),
        ({"a": {"dtype": "BF16", "shape": [0, 2**63], "data_offsets": [0, 0]}}, b"", "too large for any array"),
        ({"a": {"dtype": "BF16", "shape": [2**62, 0], "data_offsets": [0, 0]}}, b"", "too large for any array"),
        ({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, bytes(8), "outside the data"),
        (b"{not json", b"", "not valid JSON"),
        (b"[1, 2]", b"", "not a JSON object"),
    ],
)
def test_malformed_safetensors(tmp_path, header, data, message):
    source = raw_safetensors(tmp_path / "bad.safetensors", header, data)
    with pytest.raises(InputError, match=message) as caught:
        zoo.compress(source, tmp_path / "out.zoo")
    assert "bad.safetensors" in str(caught.value)
    assert listing(tmp_path) == ["bad.safetensors"]


def test_header_length_past_the_end(tmp_path):
    source = tmp_path / "short.safetensors"
    source.write_bytes(struct.pack("<Q", 1000) + b"{}")
    with pytest.raises(InputError, match="runs past the end"):
        zoo.compress(source, tmp_path / "out.zoo")


def test_missing_source(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        zoo.compress(tmp_path / "nope", tmp_path / "out.zoo")


def test_an_empty_source_is_no_model_not_the_current_folder(tmp_path):
    (tmp_path / "here.bin").write_bytes(b"the current folder")
    done = subprocess.run([sys.executable, "-m", "zoo", "compress", "", "-o", "out.zoo"], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 1 and done.stderr == "error: no model given: name a folder, a file or a hub id\n"
    assert not (tmp_path / "out.zoo").exists()


def test_bad_pipeline(tiny_model, tmp_path):
    with pytest.raises(PipelineError, match="unknown codec 'nosuch'"):
        zoo.compress(tiny_model, tmp_path / "out.zoo", "nosuch")
    with pytest.raises(PipelineError, match="speed"):
        zoo.compress(tiny_model, tmp_path / "out.zoo", "bytegroup|zstd:speed=3")
    assert not (tmp_path / "out.zoo").exists()


def test_existing_output_is_refused_then_replaced_with_force(tiny_model, tmp_path):
    target = tmp_path / "m.zoo"
    target.write_bytes(b"precious")
    with pytest.raises(OutputExistsError):
        zoo.compress(tiny_model, target)
    assert target.read_bytes() == b"precious"
    zoo.compress(tiny_model, target, force=True)
    assert zoo.verify(target) == []
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep").write_text("mine")
    (out / "config.json").write_text("mine too")
    with pytest.raises(OutputExistsError, match="config.json"):
        zoo.decompress(target, out)
    assert (out / "keep").read_text() == "mine" and (out / "config.json").read_text() == "mine too"
    zoo.decompress(target, out, force=True)  # the model's own files replaced, every other file kept
    assert (out / "keep").read_text() == "mine" and (out / "config.json").read_bytes() == (tiny_model / "config.json").read_bytes()


def test_interrupt_leaves_no_partial_output(tiny_model, tmp_path):
    def interrupt(_advance):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        zoo.compress(tiny_model, tmp_path / "m.zoo", progress=interrupt)
    assert listing(tmp_path) == ["tiny"]
    zoo.compress(tiny_model, tmp_path / "m.zoo")
    with pytest.raises(KeyboardInterrupt):
        zoo.decompress(tmp_path / "m.zoo", tmp_path / "out", progress=interrupt)
    assert listing(tmp_path) == ["m.zoo", "tiny"]


def test_input_is_not_modified(tiny_model, tmp_path):
    before = {p: p.read_bytes() for p in tiny_model.rglob("*") if p.is_file()}
    stamps = {p: p.stat().st_mtime_ns for p in before}
    zoo.compress(tiny_model, tmp_path / "m.zoo", threads=2)
    assert {p: p.read_bytes() for p in before} == before
    assert {p: p.stat().st_mtime_ns for p in before} == stamps


def test_in_memory_buffers_are_not_modified():
    from zoo.codecs.pipeline import Pipeline

    raw = random_storage("BF16", (4096,)).view(np.uint8)
    raw.flags.writeable = False  # any write into the caller's buffer would raise
    copy = raw.copy()
    pipeline = Pipeline.parse("lossless")
    payload = pipeline.encode_chunk(raw, "BF16")
    assert np.array_equal(raw, copy)
    assert np.array_equal(pipeline.decode_chunk(payload, "BF16", 4096), copy)


# -- damaged archives ------------------------------------------------------------------------


@pytest.fixture
def archive(tmp_path):
    folder = tmp_path / "src"
    folder.mkdir()
    write_safetensors(folder / "model.safetensors", {
        "w1": ("BF16", random_storage("BF16", (256, 64), 1)),
        "w2": ("F32", random_storage("F32", (128, 32), 2)),
    })
    (folder / "config.json").write_text('{"model_type": "x"}' * 20)
    path = tmp_path / "m.zoo"
    zoo.compress(folder, path, chunk_bytes=4096)
    return path


def test_truncated_archive(archive, tmp_path):
    data = archive.read_bytes()
    for cut in (4, 20, len(data) // 2, len(data) - 1):
        damaged = tmp_path / f"cut{cut}.zoo"
        damaged.write_bytes(data[:cut])
        with pytest.raises(FormatError):
            zoo.decompress(damaged, tmp_path / f"out{cut}")
        assert not (tmp_path / f"out{cut}").exists()


def test_every_payload_bit_flip_is_caught(archive, tmp_path):
    data = bytearray(archive.read_bytes())
    header_end = 24 + struct.unpack_from("<Q", data, 16)[0]
    rng = np.random.default_rng(0)
    positions = [7, 13, 30, header_end - 2, *rng.integers(header_end, len(data), size=40)]
    for position in positions:
        damaged_bytes = bytearray(data)
        damaged_bytes[position] ^= 1 << int(rng.integers(0, 8))
        damaged = tmp_path / "flip.zoo"
        damaged.write_bytes(damaged_bytes)
        problems = None
        try:
            problems = zoo.verify(damaged)
        except FormatError:
            pass  # header damage: the whole archive is refused
        assert problems is None or problems, f"flip at {position} went unnoticed"
        with pytest.raises(FormatError):
            zoo.decompress(damaged, tmp_path / "out")
        assert not (tmp_path / "out").exists()


def test_damage_names_the_tensor(archive, tmp_path):
    with zoo.open(archive) as opened:
        leaf = opened.tensor_info("w2")["root"]["leaf"]
        first_chunk = opened._file.read_index(leaf, "w2")[0]
        start = opened._file.payload_start
    data = bytearray(archive.read_bytes())
    data[start + first_chunk[0] + 3] ^= 0x10
    damaged = tmp_path / "d.zoo"
    damaged.write_bytes(data)
    problems = zoo.verify(damaged)
    assert any("'w2'" in problem for problem in problems)
    with zoo.open(damaged) as opened:
        opened.get_tensor("w1")  # the others stay readable
        with pytest.raises(ChecksumError, match="'w2'"):
            opened.get_tensor("w2")


def rewrite_header(path, edit):
    data = path.read_bytes()
    length = struct.unpack_from("<Q", data, 16)[0]
    header = json.loads(data[24:24 + length])
    edit(header)
    from zoo.container.format import MAGIC, PREAMBLE, VERSION, crc32

    body = json.dumps(header).encode()
    # Payload offsets count from the end of the header, so a longer header keeps them valid.
    path.write_bytes(PREAMBLE.pack(MAGIC, VERSION, crc32(body), len(body)) + body + data[24 + length:])


@pytest.mark.parametrize("hostile", ["../escape.txt", "/etc/passwd", "a/../../b", "", "a\\b"])
def test_hostile_file_names_are_refused(archive, tmp_path, hostile):
    def edit(header):
        header["files"][0]["path"] = hostile

    rewrite_header(archive, edit)
    with pytest.raises(FormatError, match="may not write"):
        zoo.decompress(archive, tmp_path / "out")
    assert not (tmp_path / "escape.txt").exists() and not (tmp_path / "out").exists()


def test_unknown_codec_in_archive(archive, tmp_path):
    def edit(header):
        header["tensors"]["w1"]["pipeline"][-1]["id"] = "os.system"

    rewrite_header(archive, edit)
    with pytest.raises(FormatError, match="unknown codec"):
        zoo.decompress(archive, tmp_path / "out")


def test_not_an_archive(tmp_path):
    path = tmp_path / "x.zoo"
    path.write_bytes(b"hello world, not an archive at all")
    with pytest.raises(FormatError, match="not a zoo archive"):
        zoo.open(path)
    # one message for a ref that names nothing, whatever the command (zoo.refs.not_found)
    with pytest.raises(InputError, match="missing.zoo: no such file, and no model of that name in the zoo at .*see `zoo ls`"):
        zoo.open(tmp_path / "missing.zoo")


def test_unsafe_pickle_is_refused(tmp_path):
    torch = pytest.importorskip("torch")

    class Payload:
        def __reduce__(self):
            return (os.getcwd, ())

    torch.save({"weight": torch.zeros(2), "evil": Payload()}, tmp_path / "evil.bin")
    with pytest.raises(InputError, match="refusing a pickle"):
        zoo.compress(tmp_path / "evil.bin", tmp_path / "e.zoo")
    torch.save({"weight": torch.randn(8, 8)}, tmp_path / "ok.pt")
    zoo.compress(tmp_path / "ok.pt", tmp_path / "ok.zoo")
    zoo.decompress(tmp_path / "ok.zoo", tmp_path / "out")
    assert (tmp_path / "out" / "ok.pt").read_bytes() == (tmp_path / "ok.pt").read_bytes()


def test_force_never_removes_a_file_where_the_folder_goes(tiny_model, tmp_path):
    zoo.compress(tiny_model, tmp_path / "m.zoo")
    target = tmp_path / "out"
    target.write_text("a file where the folder goes")
    with pytest.raises(OutputExistsError, match="is a file, where zoo writes a folder"):
        zoo.decompress(tmp_path / "m.zoo", target, force=True)
    assert target.read_text() == "a file where the folder goes"
    with pytest.raises(OutputExistsError, match="is a file"):  # the archive itself, named as the output
        zoo.decompress(tmp_path / "m.zoo", tmp_path / "m.zoo", force=True)
    assert zoo.verify(tmp_path / "m.zoo") == []


def test_a_file_in_the_way_of_a_folder_of_many_files_is_named_once(tmp_path):
    # it was named once per file of the folder: "sub (a file where sub/a needs a folder), sub (... sub/b ...)"
    model = tmp_path / "model"
    (model / "sub").mkdir(parents=True)
    for name in "abcdef":
        (model / "sub" / name).write_text(name)
    zoo.compress(model, tmp_path / "m.zoo")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "sub").write_text("in the way")
    with pytest.raises(OutputExistsError) as refused:
        zoo.decompress(tmp_path / "m.zoo", tmp_path / "out", force=True)
    assert str(refused.value) == (f"{tmp_path / 'out'}: cannot write the model there without removing sub (a file where sub/a needs "
                                  "a folder); choose another folder or move them")


def test_running_out_of_memory_is_one_line_not_a_bug_of_zoo(tmp_path):
    # numpy's MemoryError said "unexpected MemoryError ... (a bug in zoo; ...)"
    script = ("import sys, zoo.cli, zoo.cli.app\n"
              "def app_for(argv):\n    raise MemoryError('Unable to allocate 128. MiB for an array')\n"
              "zoo.cli.app.app_for = app_for\nsys.argv = ['zoo', 'compress', 'x']\nzoo.cli.main()\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert (done.returncode, done.stderr) == (1, "error: out of memory: Unable to allocate 128. MiB for an array\n")


def test_force_never_removes_a_folder_or_a_device_where_the_archive_goes(tiny_model, tmp_path):
    kept = tmp_path / "kept"
    (kept / "sub").mkdir(parents=True)
    (kept / "sub" / "data.txt").write_text("important")
    with pytest.raises(OutputExistsError, match="is a folder"):
        zoo.compress(tiny_model / "config.json", kept, force=True)
    with pytest.raises(OutputExistsError, match="is a folder"):
        zoo.compress(tiny_model, tiny_model, force=True)  # the source folder itself
    assert (kept / "sub" / "data.txt").read_text() == "important" and (tiny_model / "config.json").is_file()
    pipe = tmp_path / "pipe"
    os.mkfifo(pipe)
    with pytest.raises(OutputExistsError, match="not a regular file"):
        zoo.compress(tiny_model, pipe, force=True)
    assert pipe.is_fifo()
    zoo.compress(tiny_model, tmp_path / "m.zoo")
    with pytest.raises(OutputExistsError, match="is a folder"):
        zoo.api.export_archive(tmp_path / "m.zoo", kept, force=True)
    assert listing(kept) == ["sub"]


@pytest.mark.parametrize("renameat2", ["1", "0"], ids=["renameat2", "portable"])
def test_an_output_that_appears_while_zoo_writes_is_left_alone(tiny_model, tmp_path, monkeypatch, renameat2):
    """The existence check at the start is not the last word: the output goes in place only where
    nothing has appeared meanwhile (without --force), and never over a folder (with it)."""
    monkeypatch.setenv("ZOO_RENAME_EXCHANGE", renameat2)
    target = tmp_path / "m.zoo"

    def someone_writes(_temporary):
        target.write_text("written meanwhile")

    with pytest.raises(OutputExistsError, match="appeared while zoo was writing it"):
        zoo.compress(tiny_model, target, check=someone_writes)
    assert target.read_text() == "written meanwhile"
    target.unlink()

    def someone_makes_a_folder(_temporary):
        target.mkdir()
        (target / "notes.txt").write_text("mine")

    with pytest.raises(OutputExistsError, match="is a folder"):
        zoo.compress(tiny_model, target, check=someone_makes_a_folder, force=True)
    assert (target / "notes.txt").read_text() == "mine"
    zoo.compress(tiny_model, tmp_path / "a.zoo")
    out = tmp_path / "out"

    def someone_makes_the_output(_bytes):
        if not out.exists():
            out.mkdir()
            (out / "notes.txt").write_text("mine")

    with pytest.raises(OutputExistsError, match="appeared while zoo was writing it"):
        zoo.decompress(tmp_path / "a.zoo", out, progress=someone_makes_the_output)
    assert listing(out) == ["notes.txt"]
    (out / "notes.txt").unlink()
    out.rmdir()
    # with --force too (two decompresses of one new output at once): it said "is a folder; zoo does
    # not remove it", as if --force wrote into no folder, where a second run does
    with pytest.raises(OutputExistsError, match="appeared while zoo was writing it; run the command again to write into it"):
        zoo.decompress(tmp_path / "a.zoo", out, progress=someone_makes_the_output, force=True)
    assert listing(out) == ["notes.txt"]
    zoo.decompress(tmp_path / "a.zoo", out, force=True)
    assert "notes.txt" in listing(out) and len(listing(out)) > 1
    assert not [p for p in tmp_path.iterdir() if ".zoo-tmp-" in p.name]


def test_unwritable_output_is_one_line(tiny_model, tmp_path):
    import subprocess
    import sys

    if os.geteuid() == 0:
        # root writes anywhere; a path under a regular file fails for everyone.
        target = tmp_path / "file" / "m.zoo"
        (tmp_path / "file").write_text("x")
    else:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        target = locked / "m.zoo"
    done = subprocess.run([sys.executable, "-m", "zoo", "compress", str(tiny_model), "-o", str(target)], capture_output=True, text=True)
    assert done.returncode == 1 and done.stderr.startswith("error: ") and "Traceback" not in done.stderr


def test_a_missing_extra_is_named_in_one_line(tmp_path):
    """torch is an extra (zoo[torch]): a command that needs it, where it is not installed, says
    which extra to install."""
    (tmp_path / "model.bin").write_bytes(b"PK\x03\x04 not really")
    script = ("import sys; sys.modules['torch'] = None; sys.modules['transformers'] = None\n"
              "from zoo.cli import main; sys.argv = ['zoo', *sys.argv[1:]]; main()")
    done = subprocess.run([sys.executable, "-c", script, "compress", str(tmp_path / "model.bin"), "-o", str(tmp_path / "m.zoo")],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 1, done.stderr
    assert done.stderr == "error: this needs torch, which is not installed: pip install 'zoo[torch]'\n"
    assert not (tmp_path / "m.zoo").exists()


def test_an_archive_declaring_an_empty_tensor_of_impossible_shape_is_refused(tmp_path):
    """An empty tensor whose dimensions multiply past what any array can hold: a FormatError,
    not numpy's ValueError, from verify and decompress."""
    import zlib

    source = raw_safetensors(tmp_path / "empty.safetensors", {"e": {"dtype": "BF16", "shape": [0, 4], "data_offsets": [0, 0]}})
    zoo.compress(source, tmp_path / "m.zoo")
    data = (tmp_path / "m.zoo").read_bytes()
    length = struct.unpack("<Q", data[16:24])[0]
    header = json.loads(data[24:24 + length])
    for info in header["tensors"].values():
        info["shape"] = [2**62, 0]
        info.get("root", {}).get("leaf", {})["shape"] = [2**62, 0]
    forged = json.dumps(header).encode()
    (tmp_path / "bad.zoo").write_bytes(data[:12] + struct.pack("<IQ", zlib.crc32(forged), len(forged)) + forged + data[24 + length:])
    with pytest.raises(FormatError, match="too large for any array"):
        zoo.decompress(tmp_path / "bad.zoo", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_cut_archive_is_one_problem_named_once(tiny_model, tmp_path):
    """A layout fault is the archive's, not each file's: verify reports it once, and no message
    names the archive twice."""
    zoo.compress(tiny_model, tmp_path / "m.zoo")
    data = (tmp_path / "m.zoo").read_bytes()
    (tmp_path / "cut.zoo").write_bytes(data[:-100])
    problems = zoo.verify(tmp_path / "cut.zoo")
    assert len(problems) == 1 and problems[0].startswith(f"{tmp_path / 'cut.zoo'}: ")
    assert problems[0].count("cut.zoo") == 1
    with pytest.raises(FormatError) as caught:
        zoo.decompress(tmp_path / "cut.zoo", tmp_path / "out")
    assert str(caught.value).count("cut.zoo") == 1


def test_a_backslash_in_a_file_name_is_refused_with_the_reason_and_a_way_out(tiny_model, tmp_path):
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(tiny_model, folder)
    (folder / "a\\b.txt").write_text("odd")
    with pytest.raises(InputError, match=r"backslash .* leave it out with --exclude"):
        zoo.compress(folder, tmp_path / "m.zoo")
    zoo.compress(folder, tmp_path / "m.zoo", exclude=["a?b.txt"])
    assert "a\\b.txt" not in [f["path"] for f in zoo.api.report_of(tmp_path / "m.zoo").files]


def test_a_move_into_a_folder_that_fails_midway_leaves_the_folder_as_it_was(tiny_model, tmp_path, monkeypatch):
    """The files moved in go back, and the folders made for them go too (a failure injected at
    the last move: a full disk or a vanished mount looks the same from here)."""
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(tiny_model, folder)
    (folder / "new folder" / "deeper").mkdir(parents=True)
    (folder / "new folder" / "deeper" / "extra.bin").write_bytes(b"x" * 10)
    zoo.compress(folder, tmp_path / "m.zoo")
    out = tmp_path / "out"
    out.mkdir()
    (out / "config.json").write_text("mine")
    moves, real = [], os.replace

    def failing_deepest(source, target):
        moves.append(target)
        if Path(target).name == "extra.bin" and Path(target).parent.name == "deeper":  # made two folders for it
            raise OSError(28, "No space left on device")
        return real(source, target)

    monkeypatch.setattr(os, "replace", failing_deepest)
    with pytest.raises(OSError, match="No space left"):
        zoo.decompress(tmp_path / "m.zoo", out, force=True)
    monkeypatch.setattr(os, "replace", real)
    assert any(Path(target).parent.name == "deeper" for target in moves)
    assert listing(out) == ["config.json"] and (out / "config.json").read_text() == "mine"


def test_a_pipe_named_as_an_archive_is_refused_at_once(tmp_path):
    """Opening a FIFO for reading waits for a writer: zoo checks what it opened instead (in a
    process of its own, so that a regression fails by its timeout rather than hanging the tests)."""
    os.mkfifo(tmp_path / "pipe.zoo")
    for command in (["info"], ["verify"], ["decompress", "-o", str(tmp_path / "out")]):
        done = subprocess.run([sys.executable, "-m", "zoo", command[0], str(tmp_path / "pipe.zoo"), *command[1:]],
                              capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 1 and "not a regular file" in done.stderr, (command, done.stderr)


def test_an_output_that_is_a_link_to_a_pipe_is_never_replaced(tiny_model, tmp_path):
    """`-o /dev/stdout --force` as root made a file of /dev/stdout's link, which every later
    program's stdout then was, and exited 0: a link to a pipe or a device is refused as they are."""
    from zoo.api import export_archive

    os.mkfifo(tmp_path / "pipe")
    os.symlink("pipe", tmp_path / "out.zoo")
    done = subprocess.run([sys.executable, "-m", "zoo", "compress", str(tiny_model), "-o", str(tmp_path / "out.zoo"), "--force"],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 1 and "is a link to a device, a pipe or a socket" in done.stderr, done.stderr
    zoo.compress(tiny_model, tmp_path / "m.zoo")
    with pytest.raises(OutputExistsError, match="is a link to a device, a pipe or a socket"):
        export_archive(tmp_path / "m.zoo", tmp_path / "out.zoo", force=True)
    assert os.readlink(tmp_path / "out.zoo") == "pipe" and stat.S_ISFIFO(os.stat(tmp_path / "pipe").st_mode)


@pytest.mark.parametrize("spec, message", [
    ("codebook:bits=4,bits=5", "parameter 'bits' given twice"),
    ("zstd|truncate:bits=3", r"the array stages \(the lossy ones\) come first"),
    ("lossless|codebook:bits=4", r"the array stages \(the lossy ones\) come first"),
])
def test_a_spec_that_says_something_odd_is_refused_in_its_own_words(tiny_model, tmp_path, spec, message):
    with pytest.raises(PipelineError, match=message) as caught:
        zoo.compress(tiny_model, tmp_path / "m.zoo", spec)
    assert "bytegroup" not in str(caught.value)  # a stage the user did not write is not named


def test_include_and_exclude_on_one_file_are_refused(tiny_model, tmp_path):
    with pytest.raises(InputError, match="choose files inside a folder"):
        zoo.compress(tiny_model / "model.safetensors", tmp_path / "m.zoo", include=["*.json"])


def test_into_a_folder_a_models_links_and_folders_clash_as_its_files_do(tmp_path):
    """A file where the model keeps a link needs --force (and is kept aside until the model is
    in); a file where it keeps an empty folder is in the way: refused in one line naming it."""
    model = tmp_path / "model"
    (model / "empty").mkdir(parents=True)
    (model / "config.json").write_text("{}")
    os.symlink("config.json", model / "alias.json")
    zoo.compress(model, tmp_path / "m.zoo")
    out = tmp_path / "out"
    out.mkdir()
    (out / "alias.json").write_text("mine")
    with pytest.raises(OutputExistsError, match=r"already holds 1 of the model's files \(alias.json\)"):
        zoo.decompress(tmp_path / "m.zoo", out)
    zoo.decompress(tmp_path / "m.zoo", out, force=True)
    assert os.readlink(out / "alias.json") == "config.json"
    other = tmp_path / "other"
    other.mkdir()
    (other / "empty").write_text("a file where the model has a folder")
    with pytest.raises(OutputExistsError, match="empty .a file where the model has a folder"):
        zoo.decompress(tmp_path / "m.zoo", other, force=True)
    assert listing(other) == ["empty"] and (other / "empty").read_text() == "a file where the model has a folder"


def test_a_link_in_the_output_where_an_empty_folder_of_the_model_goes_is_never_written_through(tmp_path):
    """The model's empty folder sub/inner, into an output whose sub is a link to a folder outside
    it: the files' parents were checked, the folders' were not, and inner was made (and given its
    mode) outside the output."""
    model = tmp_path / "model"
    (model / "sub" / "inner").mkdir(parents=True)
    os.chmod(model / "sub" / "inner", 0o700)
    (model / "config.json").write_text("{}")
    zoo.compress(model, tmp_path / "m.zoo")
    outside, out = tmp_path / "outside", tmp_path / "out"
    outside.mkdir()
    out.mkdir()
    os.symlink("../outside", out / "sub")
    for force in (False, True):
        with pytest.raises(OutputExistsError, match=r"sub \(a file where sub/inner needs a folder\)"):
            zoo.decompress(tmp_path / "m.zoo", out, force=force)
        assert listing(outside) == [] and listing(out) == ["sub"] and os.readlink(out / "sub") == "../outside"


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs, where the machine lets this process mount one (root, as in CI); else skipped."""
    folder = tmp_path / "small"
    folder.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(folder)], capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    yield folder
    subprocess.run(["umount", str(folder)], check=True)


def test_a_full_disk_names_where_the_output_was_going(small_disk, tmp_path):
    # each said only "error: No space left on device"
    source = tmp_path / "w.safetensors"
    from safetensors.numpy import save_file

    save_file({"w": np.random.default_rng(0).normal(size=(1024, 1024)).astype(np.float32)}, str(source))
    zoo.compress(source, tmp_path / "w.zoo")
    for args, where in ((["compress", source, "-o", small_disk / "w.zoo"], small_disk / "w.zoo"),
                        (["decompress", tmp_path / "w.zoo", "-o", small_disk / "out"], small_disk / "out"),
                        (["compress", source, "--name", "w"], small_disk / "home"),
                        (["compress", source, "--budget", "bpw=4", "-o", small_disk / "b.zoo"], small_disk / "b.zoo")):
        done = subprocess.run([sys.executable, "-m", "zoo", *map(str, args)], capture_output=True, text=True,
                              env={**os.environ, "ZOO_HOME": str(small_disk / "home")})
        said = done.stderr.splitlines()[-1:] if "--budget" in args else done.stderr.splitlines()  # (after its candidate lines)
        assert (done.returncode, said) == (1, [f"error: No space left on device: {where}"]), (args, done.stderr)
    assert sorted(path.name for path in small_disk.iterdir()) == ["home"]


def test_a_header_over_the_cap_is_one_line_before_any_coding(tmp_path):
    """Tens of thousands of tensors with long names make a header over the format's cap: it was
    found only once every tensor had been coded. Now it is said before (the coding here ends the
    command some other way, and would be seen)."""
    from tests.container.test_header_cap import OVER_THE_CAP, over_the_cap

    source = over_the_cap(tmp_path / "many.safetensors")
    script = ("import sys, zoo.cli\nfrom zoo.container.writer import Builder\n"
              "def build(*args, **kwargs):\n    raise SystemExit('reached the coding')\n"
              "Builder.build = build\nsys.argv = ['zoo', *sys.argv[1:]]\nzoo.cli.main()\n")
    for args in (["-o", tmp_path / "many.zoo"], ["--name", "many"]):
        done = subprocess.run([sys.executable, "-c", script, "compress", str(source), *map(str, args)], capture_output=True, text=True,
                              env={**os.environ, "ZOO_HOME": str(tmp_path / "home")}, timeout=120, check=False)
        assert done.returncode == 1 and re.fullmatch(f"error: {re.escape(str(source))}: {OVER_THE_CAP}\n", done.stderr), (args, done.stderr)
    assert set(listing(tmp_path)) <= {"many.safetensors", "home"} and not list(tmp_path.rglob("*.zoo"))


@pytest.mark.parametrize("metadata", [
    {"quality": {"metrics": 5}}, {"quality": {"weights": "x"}}, {"quality": {"gates": [1]}}, {"quality": {"notes": 7}},
    {"quality": {"metrics": {"kl_mean": [1], "bit_exact": "maybe", "ppl": {"a": 1}, "tokens": True, "missing": "a.bin"}}},
    {"budget": {"trail": [1]}}, {"budget": {"trail": [{"bytes": "x", "bits_per_weight": None, "figure": [2]}], "proof": {"metrics": 1}}},
], ids=lambda m: json.dumps(m)[:40])
def test_info_shows_stored_figures_of_any_json_type(tmp_path, metadata):
    """The metadata is free-form JSON (FORMAT.md); a quality or budget record of types zoo does not
    write, in an archive from elsewhere, made `zoo info` fail with "unexpected TypeError" halfway
    through its report."""
    weights = write_safetensors(tmp_path / "w.safetensors", {"w": ("F32", random_storage("F32", (8, 8), 1))})
    zoo.compress(weights, tmp_path / "w.zoo")
    zoo.api.update_metadata(tmp_path / "w.zoo", metadata, own_keys=True)
    done = subprocess.run([sys.executable, "-m", "zoo", "info", str(tmp_path / "w.zoo")], capture_output=True, text=True, timeout=120,
                          env={k: v for k, v in os.environ.items() if k != "ZOO_DEBUG"})
    assert done.returncode == 0 and done.stderr == "", done.stderr


def test_an_unexpected_error_is_one_line_that_calls_itself_a_bug(tmp_path):
    script = ("import sys, zoo.cli, zoo.cli.app\n"
              "def app_for(argv):\n    raise RuntimeError('something zoo did not foresee')\n"
              "zoo.cli.app.app_for = app_for\nsys.argv = ['zoo', 'compress', 'x']\nzoo.cli.main()\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env={k: v for k, v in os.environ.items()
                                                                                                if k != "ZOO_DEBUG"})
    assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith("error: unexpected RuntimeError: something zoo did not foresee") and "a bug in zoo" in done.stderr


def test_a_warning_made_an_error_by_the_user_is_said_so_not_a_bug(tmp_path):
    script = ("import sys, warnings, zoo.cli, zoo.cli.app\n"
              "def app_for(argv):\n    warnings.warn('torch.jit.script is deprecated', DeprecationWarning)\n"
              "zoo.cli.app.app_for = app_for\nsys.argv = ['zoo', 'bench', 'x']\nzoo.cli.main()\n")
    done = subprocess.run([sys.executable, "-W", "error", "-c", script], capture_output=True, text=True,
                          env={k: v for k, v in os.environ.items() if k != "ZOO_DEBUG"})
    assert (done.returncode, done.stderr) == (1, "error: DeprecationWarning: torch.jit.script is deprecated (a warning, made an error "
                                                 "by PYTHONWARNINGS or -W)\n")
