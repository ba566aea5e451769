"""Odd dtypes, links, name collisions, and hostile headers: each stored, refused in one line, or
answered in bounded time, never a traceback."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest

import zoo
from zoo.errors import InputError, ZooWarning

from tests.conftest import as_the_owner, write_safetensors
from tests.sources.conftest import safetensors_bytes, torch


def sha256s(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and not p.is_symlink()}


def every_dtype(path: Path) -> dict[str, torch.Tensor]:
    """A safetensors file of every dtype the safetensors library writes, written by it."""
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(0)
    raw = lambda n: torch.randint(0, 256, (n,), dtype=torch.uint8, generator=generator)  # noqa: E731
    tensors = {
        "f32": torch.randn(4, 3, generator=generator), "f16": torch.randn(4, 3, generator=generator).half(),
        "bf16": torch.randn(4, 3, generator=generator).bfloat16(), "f64": torch.randn(5, generator=generator).double(),
        "i64": torch.arange(5), "i8": torch.arange(-3, 3, dtype=torch.int8), "u16": torch.arange(4, dtype=torch.int16).view(torch.uint16),
        "bool": torch.tensor([True, False, True]), "c64": torch.randn(2, 2, dtype=torch.complex64, generator=generator),
        "f8_e4m3": raw(6).view(torch.float8_e4m3fn), "f8_e5m2": raw(6).view(torch.float8_e5m2),
        "f8_e4m3fnuz": raw(6).view(torch.float8_e4m3fnuz), "f8_e5m2fnuz": raw(6).view(torch.float8_e5m2fnuz),
        "f8_e8m0": raw(6).view(torch.float8_e8m0fnu), "f4": raw(6).view(torch.float4_e2m1fn_x2).reshape(2, 3),
    }
    save_file(tensors, str(path))
    return tensors


def test_every_safetensors_dtype_is_kept_and_loaded(tmp_path):
    folder = tmp_path / "dtypes"
    folder.mkdir()
    tensors = every_dtype(folder / "model.safetensors")
    written = (folder / "model.safetensors").read_bytes()
    header = json.loads(written[8:8 + int.from_bytes(written[:8], "little")])
    written_dtypes = {entry["dtype"] for name, entry in header.items() if name != "__metadata__"}
    assert {"F4", "F8_E4M3FNUZ", "F8_E5M2FNUZ", "F8_E8M0", "C64"} <= written_dtypes
    zoo.compress(folder, tmp_path / "d.zoo")
    assert zoo.verify(tmp_path / "d.zoo") == []
    zoo.decompress(tmp_path / "d.zoo", tmp_path / "out")
    assert sha256s(tmp_path / "out") == sha256s(folder)
    state = zoo.load_state_dict(tmp_path / "d.zoo")
    assert set(state) == set(tensors)
    for name, tensor in tensors.items():
        assert state[name].dtype == tensor.dtype and state[name].shape == tensor.shape, name
        assert torch.equal(state[name].view(torch.uint8), tensor.view(torch.uint8)), name
    zoo.compress(folder, tmp_path / "lossy.zoo", "truncate:bits=3|bytegroup|zstd")  # the odd dtypes pass through untouched
    lossy = zoo.load_state_dict(tmp_path / "lossy.zoo")
    for name in ("c64", "f4", "f8_e8m0", "f8_e4m3fnuz", "f8_e5m2fnuz"):
        assert torch.equal(lossy[name].view(torch.uint8), tensors[name].view(torch.uint8)), name


def test_a_dtype_torch_lacks_is_named_and_the_others_load(tmp_path, monkeypatch):
    folder = tmp_path / "f"
    folder.mkdir()
    every_dtype(folder / "model.safetensors")
    zoo.compress(folder, tmp_path / "d.zoo")
    monkeypatch.delattr(torch, "float8_e8m0fnu")  # as an older torch lacks it
    with pytest.warns(ZooWarning, match=r"no torch dtype for f8_e8m0 \(F8_E8M0\)"):
        state = zoo.load_state_dict(tmp_path / "d.zoo")
    assert "f8_e8m0" not in state and "f32" in state


def test_an_unknown_dtype_keeps_the_file_opaque(tmp_path):
    folder = tmp_path / "u"
    folder.mkdir()
    header = json.dumps({"x": {"dtype": "F6_E9M9", "shape": [2], "data_offsets": [0, 2]}}).encode()
    (folder / "model.safetensors").write_bytes(safetensors_bytes(header, b"ab"))
    with pytest.raises(InputError, match="unknown dtype 'F6_E9M9'"):
        zoo.compress(folder / "model.safetensors", tmp_path / "one.zoo")
    report = zoo.compress(folder, tmp_path / "u.zoo")
    assert report.files[0]["opaque"] == "unknown dtype F6_E9M9"


def test_version_control_and_download_caches_are_left_out_and_said_so(tmp_path):
    folder = tmp_path / "repo"
    (folder / ".git" / "objects").mkdir(parents=True)
    (folder / ".git" / "HEAD").write_text("ref: refs/heads/main")
    (folder / ".cache" / "huggingface").mkdir(parents=True)
    (folder / ".cache" / "huggingface" / "download.lock").write_text("")
    (folder / "config.json").write_text("{}")
    with pytest.warns(ZooWarning, match=r"left out 2 items: \.cache/ \(a download cache, never stored\); \.git/ \(version control"):
        zoo.compress(folder, tmp_path / "r.zoo")
    assert [f["path"] for f in zoo.api.report_of(tmp_path / "r.zoo").files] == ["config.json"]


def test_a_zoo_inside_the_models_folder_is_left_out_and_a_zoos_folder_is_no_model(tmp_path):
    """ZOO_HOME inside the folder compressed: the zoo stored its own lock, catalogue, manifests and
    objects as files of the model, and export handed them back; compressing the zoo's folder itself
    stored the zoo into the zoo."""
    from zoo.api import compress_into
    from zoo.hub.store import Store

    folder = tmp_path / "model"
    folder.mkdir()
    write_safetensors(folder / "model.safetensors", {"w": ("F32", np.arange(64, dtype=np.float32).reshape(8, 8))})
    store = Store(folder / "zoo")
    for name in ("org/a", "org/b"):  # the first made the zoo's folders, the second finds its objects too
        with pytest.warns(ZooWarning, match=r"left out 1 item: zoo/ \(a zoo's own folder, never stored\)"):
            entry = compress_into(store, folder, name)
        assert [f.path for f in store.resolve(entry.ref, with_files=True).files] == ["model.safetensors"]
    with pytest.raises(InputError, match="is a zoo's own folder, not a model's"):
        zoo.compress(folder / "zoo", tmp_path / "z.zoo")
    assert not (tmp_path / "z.zoo").exists()
    for name in ("objects", "manifests", "work"):  # a model's own folders of those names are the model's
        (folder / "data" / name).mkdir(parents=True)
        (folder / "data" / name / "part.txt").write_text(name)
    report = zoo.compress(folder / "data", tmp_path / "d.zoo")
    assert sorted(f["path"] for f in report.files) == ["manifests/part.txt", "objects/part.txt", "work/part.txt"]


def a_gone_pid() -> int:
    import subprocess
    import sys

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    return gone.pid


def test_zoos_temporaries_in_the_models_folder_are_left_out_by_their_exact_names(tmp_path):
    """A killed `zoo compress m -o m/out.zoo` left its temporary in m: the next one listed it as a
    file of the model, the check of its output swept it, and the read failed ("file changed while
    being read"). A killed `zoo decompress w.zoo -o m/sub` left half a model in m, which the next
    `zoo compress m` stored as the model's own. A name that only looks like theirs is the user's."""
    from zoo.hub import temporaries

    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    pid = a_gone_pid()
    out = folder / "out.zoo"
    (folder / f"{temporaries.temporary_prefix(out)}{pid}-0123abcd").write_bytes(b"half an archive")
    (folder / f"{temporaries.PAYLOAD_PREFIX}{pid}-0123abcd").mkdir()
    (folder / f"{temporaries.PAYLOAD_PREFIX}{pid}-0123abcd" / "payload").write_bytes(b"a payload")
    half = folder / f"{temporaries.temporary_prefix(folder / 'sub')}{pid}-4567cdef"
    half.mkdir()
    (half / "w.bin").write_bytes(b"half a model")
    (folder / "deep").mkdir()
    (folder / "deep" / f"{temporaries.aside_prefix(folder / 'deep' / 'x.bin')}{pid}-89abcdef").mkdir()
    (folder / "deep" / f"{temporaries.aside_prefix(folder / 'deep' / 'x.bin')}{pid}-89abcdef" / "x.bin").write_bytes(b"old x")
    (folder / "deep" / f"{temporaries.temporary_prefix(Path('n' * 300))}{pid}-0123abcd").write_bytes(b"a long name's")
    users = ["my.zoo-tmp-notes.txt", ".out.zoo.zoo-tmp-12-0123abc", ".out.zoo.zoo-tmp-x-0123abcd", ".zoo-payload-12-0123ABCD"]
    for name in users:
        (folder / name).write_text("the user's")
    with pytest.warns(ZooWarning, match="left out 5 items") as caught:
        report = zoo.compress(folder, out)
    shown = next(str(warning.message) for warning in caught if "left out" in str(warning.message))
    assert shown.count("a temporary of zoo's, from a run writing there or one killed, never stored") == 5, shown
    assert f"{half.name}/ (a temporary" in shown, shown
    assert sorted(f["path"] for f in report.files) == sorted(["config.json", *users]) and zoo.verify(out) == []
    from zoo.api import compress_into
    from zoo.hub.store import Store

    store = Store(tmp_path / "zoo")
    (folder / f"{temporaries.temporary_prefix(folder / 'sub')}{os.getpid()}-89abcdef").mkdir()  # a decompress writing there now
    with pytest.warns(ZooWarning, match="a temporary of zoo's"):
        entry = compress_into(store, folder, "m")
    assert sorted(f.path for f in store.resolve(entry.ref, with_files=True).files) == sorted(["config.json", "out.zoo", *users])


def test_a_link_followed_to_a_zoo_or_what_zoo_never_stores_is_left_out_as_the_folder_would_be(tmp_path):
    """--follow-links through `m/cache -> $ZOO_HOME` stored the zoo whole (its catalogue, lock,
    manifests, objects, a running job's lock), where the same zoo as a folder of m is left out."""
    from zoo.api import compress_into
    from zoo.hub.store import Store

    seed = tmp_path / "seed"
    seed.mkdir()
    write_safetensors(seed / "model.safetensors", {"w": ("F32", np.ones((2, 2), np.float32))})
    compress_into(Store(tmp_path / "zoo"), seed, "seed")
    (tmp_path / "repo" / "refs").mkdir(parents=True)
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    os.symlink(tmp_path / "zoo", folder / "cache")
    os.symlink(tmp_path / "repo", folder / ".git")
    os.symlink(seed, folder / "weights")  # an ordinary folder: followed
    with pytest.warns(ZooWarning, match=r"left out 2 items: \.git \(a link to version control, never stored\); "
                                        r"cache \(a link to a zoo's own folder, never stored\)"):
        report = zoo.compress(folder, tmp_path / "m.zoo", follow_links=True)
    assert sorted(f["path"] for f in report.files) == ["config.json", "weights/model.safetensors"]


def test_a_folder_whose_every_entry_is_left_out_comes_back_empty(tmp_path):
    """A subfolder holding only a .git/ (or a FIFO) vanished: decompress gave back no folder there,
    where an empty one comes back."""
    folder = tmp_path / "repo"
    (folder / "sub" / ".git").mkdir(parents=True)
    (folder / "sub" / ".git" / "HEAD").write_text("ref: refs/heads/main")
    (folder / "pipes").mkdir()
    os.mkfifo(folder / "pipes" / "fifo")
    (folder / "config.json").write_text("{}")
    with pytest.warns(ZooWarning, match=r"left out 2 items"):
        zoo.compress(folder, tmp_path / "r.zoo")
    zoo.decompress(tmp_path / "r.zoo", tmp_path / "out")
    assert sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*")) == ["config.json", "pipes", "sub"]
    assert not any((tmp_path / "out" / "sub").iterdir())


def test_links_inside_stay_links_outside_are_refused_and_skipped_items_are_named(tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_text("secret")
    folder = tmp_path / "links"
    (folder / "sub").mkdir(parents=True)
    (folder / "empty" / "deeper").mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    write_safetensors(folder / "sub" / "model.safetensors", {"w": ("F32", np.ones((2, 2), np.float32))})
    os.symlink("sub/model.safetensors", folder / "model.safetensors")
    os.symlink("sub", folder / "alias")
    os.symlink("nowhere", folder / "dangling")  # dangling inside the folder: kept
    # dangling too, named by an absolute path or through the folder's parent: they were kept as given, and the
    # archive's reader then refused the archive compress had left behind (a link leading out of the output folder)
    os.symlink(folder / "sub" / "gone", folder / "dangling-absolute")
    os.symlink(f"../../{folder.name}/gone", folder / "sub" / "dangling-up")
    os.symlink("loop.b", folder / "loop.a")
    os.symlink("loop.a", folder / "loop.b")
    with pytest.warns(ZooWarning, match=r"left out 2 items: loop.a \(a loop of links, or a chain of more than 40\); loop.b"):
        zoo.compress(folder, tmp_path / "l.zoo")
    out = tmp_path / "out"
    zoo.decompress(tmp_path / "l.zoo", out)
    assert os.readlink(out / "model.safetensors") == "sub/model.safetensors" and os.readlink(out / "alias") == "sub"
    assert os.readlink(out / "dangling") == "nowhere"
    assert os.readlink(out / "dangling-absolute") == "sub/gone" and os.readlink(out / "sub" / "dangling-up") == "../gone"
    (folder / "loop.a").unlink()
    (folder / "loop.b").unlink()
    assert (out / "empty" / "deeper").is_dir()
    assert sha256s(out) == sha256s(folder)

    os.symlink(outside, folder / "leak.txt")
    with pytest.raises(InputError, match="leak.txt: a link leading out of the folder .* --follow-links"):
        zoo.compress(folder, tmp_path / "leak.zoo")
    zoo.compress(folder, tmp_path / "followed.zoo", follow_links=True)
    with zoo.open(tmp_path / "followed.zoo") as opened:
        assert opened.read_file("leak.txt") == b"secret"
    # the links inside the folder stay links: they used to become copies (a link to a folder, a copy of all it holds)
    zoo.decompress(tmp_path / "followed.zoo", tmp_path / "followed")
    assert os.readlink(tmp_path / "followed" / "alias") == "sub" and not (tmp_path / "followed" / "leak.txt").is_symlink()


def test_a_hugging_face_cache_snapshot_is_stored_as_its_files(tmp_path):
    repo = tmp_path / "models--org--tiny"
    (repo / "blobs").mkdir(parents=True)
    snapshot = repo / "snapshots" / ("c" * 40)
    snapshot.mkdir(parents=True)
    write_safetensors(repo / "blobs" / ("a" * 64), {"w": ("F32", np.ones((2, 2), np.float32))})
    os.symlink(f"../../blobs/{'a' * 64}", snapshot / "model.safetensors")
    report = zoo.compress(snapshot, tmp_path / "s.zoo")
    assert [f["kind"] for f in report.files] == ["safetensors"] and [t.name for t in report.tensors] == ["w"]
    # the repository folder itself: its blobs have no suffix, so no tensors; it was stored so with no word
    with pytest.warns(ZooWarning, match=r"models--org--tiny: a Hugging Face cache repository, whose blobs are stored as plain bytes; "
                                        r"compress one of its snapshots \(snapshots/REVISION\)"):
        report = zoo.compress(repo, tmp_path / "r.zoo")
    assert report.tensors == []


def test_a_link_to_what_is_left_out_is_named(tmp_path):
    # kept, it came back pointing at nothing, with no word: a file --exclude left out, a file in .git
    folder = tmp_path / "m"
    (folder / ".git").mkdir(parents=True)
    (folder / ".git" / "HEAD").write_text("ref")
    (folder / "config.json").write_text("{}")
    (folder / "notes.txt").write_text("notes")
    for link, target in (("alias", "notes.txt"), ("head", ".git/HEAD"), ("cfg", "config.json"), ("self", ".")):
        os.symlink(target, folder / link)  # (a link to the folder itself is no link to what is left out)
    with pytest.warns(ZooWarning) as caught:
        zoo.compress(folder, tmp_path / "m.zoo", exclude=["notes*"])
    assert any(str(w.message) == f"{folder}: links lead to what is not stored, and will point at nothing: alias -> notes.txt; "
               "head -> .git/HEAD" for w in caught), [str(w.message) for w in caught]


def test_colliding_names_get_distinct_keys(tmp_path):
    folder = tmp_path / "c"
    folder.mkdir()
    write_safetensors(folder / "a.safetensors", {"b.safetensors::w": ("F32", np.ones(2, np.float32)),
                                                 "w": ("F32", np.zeros(2, np.float32))})
    write_safetensors(folder / "b.safetensors", {"w": ("F32", np.full(2, 2, np.float32))})
    torch.save({"a.b": torch.ones(1), "a": {"b": torch.zeros(1)}}, folder / "c.bin")
    zoo.compress(folder, tmp_path / "c.zoo")
    zoo.decompress(tmp_path / "c.zoo", tmp_path / "out")
    assert sha256s(tmp_path / "out") == sha256s(folder)
    state = zoo.load_state_dict(tmp_path / "c.zoo")
    assert len(state) == 5
    assert state["b.safetensors::w#2"].tolist() == [2, 2] and state["b.safetensors::w"].tolist() == [1, 1]
    assert state["a.b"].tolist() == [1] and state["a.b#2"].tolist() == [0]


@pytest.mark.parametrize("header, message", [
    (json.dumps({f"t{i}": {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]} for i in range(262_145)}).encode(), "over 262144 tensors"),
    (b"{" + b",".join(b'"t%d": {"dtype": "F32", "shape": [0], "data\\u005foffsets": [0, 0]}' % i for i in range(262_145)) + b"}",
     "over 262144 tensors"),  # escaped keys: the cap counts objects as parsed, not strings in the bytes
    (b"[" * 5000 + b"]" * 5000, "nests too deep"),
    (json.dumps({"x": {"dtype": "F32", "shape": [1] * 100_001, "data_offsets": [0, 4]}}).encode(), "100001 dimensions is over the 64 cap"),
], ids=["zero-size tensors", "escaped keys", "deep nesting", "100001 dimensions"])
def test_hostile_safetensors_headers_are_one_line_errors(tmp_path, header, message):
    path = tmp_path / "model.safetensors"
    path.write_bytes(safetensors_bytes(header, b"\0" * 4))
    with pytest.raises(InputError, match=message):
        zoo.compress(path, tmp_path / "h.zoo")
    report = zoo.compress(tmp_path, tmp_path.parent / f"{tmp_path.name}.zoo")
    assert message.split()[-1] in report.files[0]["opaque"]


def test_a_safetensors_tensor_of_up_to_64_dimensions_is_read(tmp_path):
    """Past 32 dimensions a safetensors file was refused (the same tensor in a .pt round-tripped):
    numpy 2 and the format take 64."""
    values = np.arange(6, dtype=np.float32).reshape([1] * 38 + [2, 3])
    source = write_safetensors(tmp_path / "n40.safetensors", {"x.weight": ("F32", values)})
    zoo.compress(source, tmp_path / "n40.zoo")
    assert tuple(zoo.load_state_dict(tmp_path / "n40.zoo")["x.weight"].shape) == values.shape


def test_folders_nested_past_any_model_are_refused_in_one_line(tmp_path):
    # at about 990 levels the scan, a call per level, ended in "unexpected RecursionError (a bug in zoo)"
    from zoo.sources.folder import MAX_FOLDER_DEPTH, scan

    deep = tmp_path / "model"
    (deep / "/".join(["d"] * MAX_FOLDER_DEPTH)).mkdir(parents=True)
    (deep / "/".join(["d"] * MAX_FOLDER_DEPTH) / "w.txt").write_text("x")
    with pytest.raises(InputError, match=rf"model: folders nest deeper than {MAX_FOLDER_DEPTH} levels"):
        scan(deep)
    assert [entry.relpath.count("/") for entry in scan(deep / "d") if entry.kind == "blob"] == [MAX_FOLDER_DEPTH - 1]


@pytest.mark.parametrize("length", [45, 1200])
def test_a_chain_of_more_links_than_the_system_follows_is_left_out_with_a_word(tmp_path, length):
    # past 40 hops the archive was written, then refused by zoo's own reader naming its temporary;
    # at about a thousand, realpath's recursion ended it as "a bug in zoo"
    folder = tmp_path / "chain"
    folder.mkdir()
    (folder / "link-0").write_text("end")
    for number in range(1, length + 1):
        os.symlink(f"link-{number - 1}", folder / f"link-{number}")
    with pytest.warns(ZooWarning) as caught:
        zoo.compress(folder, tmp_path / "c.zoo")
    (message,) = [str(w.message) for w in caught]
    assert message.startswith(f"{folder}: left out {length - 40} items: link-") and "(a loop of links, or a chain of more than 40)" in message
    assert message.count(";") == min(length - 40, 21) - 1 and (length - 40 <= 20 or message.endswith(f"; and {length - 60} more"))
    zoo.decompress(tmp_path / "c.zoo", tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(f"link-{n}" for n in range(41))
    assert (tmp_path / "out" / "link-40").read_text() == "end"


@pytest.mark.skipif(not Path("/proc/cpuinfo").is_file(), reason="no /proc here")
def test_a_file_that_says_0_bytes_but_holds_more_is_refused(tmp_path):
    """/proc/cpuinfo (st_size 0) was stored as 0 bytes, and verify and decompress said every sha256
    matched."""
    with pytest.raises(InputError, match="says it holds 0 bytes but reads as more"):
        zoo.compress("/proc/cpuinfo", tmp_path / "cpu.zoo")
    assert not (tmp_path / "cpu.zoo").exists()
    (tmp_path / "empty.txt").write_bytes(b"")
    assert zoo.compress(tmp_path / "empty.txt", tmp_path / "e.zoo").files[0]["size"] == 0


def test_a_zip_checkpoint_whose_storage_runs_past_its_end_is_no_checkpoint(tmp_path):
    """A zip whose directory says a storage holds more bytes than the file has: "unexpected
    ValueError: buffer is smaller than requested size (a bug in zoo)", for a folder holding it too."""
    import io
    import struct
    import zipfile

    saved = io.BytesIO()
    torch.save({"w": torch.arange(1000, dtype=torch.float32)}, saved)
    original = zipfile.ZipFile(io.BytesIO(saved.getvalue()))
    [storage] = [info.filename for info in original.infolist() if info.filename.endswith("data/0")]
    cut = io.BytesIO()
    with zipfile.ZipFile(cut, "w", zipfile.ZIP_STORED) as written:
        for info in original.infolist():
            written.writestr(info.filename, original.read(info.filename)[:100] if info.filename == storage else original.read(info.filename))
    data = bytearray(cut.getvalue())
    local = zipfile.ZipFile(io.BytesIO(bytes(data))).getinfo(storage).header_offset
    struct.pack_into("<II", data, local + 18, 4000, 4000)  # the local header's sizes
    position = struct.unpack_from("<I", data, data.rfind(b"PK\x05\x06") + 16)[0]
    while data[position:position + 4] == b"PK\x01\x02":  # and the central directory's
        name, extra, comment = struct.unpack_from("<HHH", data, position + 28)
        if bytes(data[position + 46:position + 46 + name]).decode() == storage:
            struct.pack_into("<II", data, position + 20, 4000, 4000)
        position += 46 + name + extra + comment
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "pytorch_model.bin").write_bytes(bytes(data))
    with pytest.raises(InputError, match="runs past the end of the file"):
        zoo.compress(tmp_path / "model" / "pytorch_model.bin", tmp_path / "one.zoo")
    report = zoo.compress(tmp_path / "model", tmp_path / "folder.zoo")
    assert "runs past the end of the file" in report.files[0]["opaque"]
    zoo.decompress(tmp_path / "folder.zoo", tmp_path / "out")
    assert (tmp_path / "out" / "pytorch_model.bin").read_bytes() == bytes(data)


def test_an_empty_file_filled_in_while_it_is_scanned_is_said_to_have_changed(tmp_path, monkeypatch):
    """A download filling in an empty tokenizer.json between the scan's stat and its look was
    called "a file of /proc or /sys"."""
    from zoo.sources import folder

    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "tokenizer.json").write_bytes(b"")
    holds = folder._holds_bytes

    def filled_in(path):
        path.write_text('{"version": "1.0"}')
        return holds(path)

    monkeypatch.setattr(folder, "_holds_bytes", filled_in)
    with pytest.raises(InputError, match=r"tokenizer.json: file changed while being read; nothing was stored"):
        zoo.compress(tmp_path / "model", tmp_path / "m.zoo")


def test_a_link_through_a_file_is_left_out_not_read_as_a_link_to_the_file(tmp_path):
    """config.json/ and config.json/.. open nothing (ENOTDIR), but realpath drops the parts that
    fail: they came back as working links to config.json and to the model's own folder."""
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    for name, target in (("slash", "config.json/"), ("up", "config.json/.."), ("back", "config.json/../config.json")):
        os.symlink(target, folder / name)
    with pytest.warns(ZooWarning, match=r"left out 3 items: back \(a link through a file, to nothing\); slash \(a link"):
        zoo.compress(folder, tmp_path / "m.zoo")
    zoo.decompress(tmp_path / "m.zoo", tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["config.json"]


@pytest.mark.parametrize("entry", ["file", "link"])
def test_an_entry_of_a_folder_that_can_be_listed_but_not_searched_is_an_error_not_left_out(tmp_path, entry):
    """A file in a mode 644 folder (its names listed, none looked at) was left out as "not a
    regular file", with exit 0: the archive came back without it. A link there was kept as a link
    to itself."""
    import subprocess
    import sys

    folder = tmp_path / "m"
    (folder / "sub").mkdir(parents=True)
    write_safetensors(folder / "w.safetensors", {"w": ("F32", np.ones(4, np.float32))})
    if entry == "file":
        (folder / "sub" / "f").write_text("data")
    else:
        os.symlink("../w.safetensors", folder / "sub" / "f")
    (folder / "sub").chmod(0o644)
    try:
        done = subprocess.run(as_the_owner([sys.executable, "-m", "zoo", "compress", str(folder), "-o", str(tmp_path / "m.zoo")]),
                              capture_output=True, text=True, timeout=300, env={**os.environ, "ZOO_HOME": str(tmp_path / "zoo")})
    finally:
        (folder / "sub").chmod(0o755)
    assert (done.returncode, done.stderr) == (1, f"error: Permission denied: {folder / 'sub' / 'f'}\n"), done.stderr
    assert not (tmp_path / "m.zoo").exists()
