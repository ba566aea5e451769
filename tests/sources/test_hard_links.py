"""Hard links in a model folder (one copied with `cp -al`, a Trainer checkpoint sharing its
weights file): each file is stored once, under its name nearest the top, and its other names come
back as hard links to it. They came back as copies, each stored again."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import numpy as np
import pytest

import zoo
from zoo.container import format as archive_format
from zoo.errors import UnreadableError, ZooWarning

from tests.conftest import write_safetensors


@pytest.fixture
def linked(tmp_path: Path) -> Path:
    """model.safetensors, also checkpoint-1/model.safetensors; config.json, also named twice more
    (one in a folder of its own); a file of one name beside them."""
    folder = tmp_path / "model"
    (folder / "checkpoint-1").mkdir(parents=True)
    (folder / "deep" / "er").mkdir(parents=True)
    write_safetensors(folder / "model.safetensors", {"w": ("F32", np.arange(256, dtype=np.float32).reshape(16, 16))})
    (folder / "config.json").write_text('{"layers": 1}')
    (folder / "config.json").chmod(0o640)
    (folder / "notes.txt").write_text("one name\n")
    os.link(folder / "model.safetensors", folder / "checkpoint-1" / "model.safetensors")
    os.link(folder / "config.json", folder / "checkpoint-1" / "config.json")
    os.link(folder / "config.json", folder / "deep" / "er" / "config.json")
    return folder


def inode(path: Path) -> tuple[int, int]:
    status = os.stat(path)
    return status.st_dev, status.st_ino


def test_hard_links_come_back_as_hard_links_their_file_stored_once(linked, tmp_path):
    zoo.compress(linked, tmp_path / "m.zoo")
    out = tmp_path / "out"
    zoo.decompress(tmp_path / "m.zoo", out)
    assert inode(out / "checkpoint-1" / "model.safetensors") == inode(out / "model.safetensors")
    assert inode(out / "checkpoint-1" / "config.json") == inode(out / "config.json") == inode(out / "deep" / "er" / "config.json")
    assert os.stat(out / "config.json").st_nlink == 3 and os.stat(out / "notes.txt").st_nlink == 1
    for path in linked.rglob("*"):
        if path.is_file():
            assert (out / path.relative_to(linked)).read_bytes() == path.read_bytes()
    assert stat.S_IMODE(os.stat(out / "checkpoint-1" / "config.json").st_mode) == 0o640 & ~archive_format.current_umask()
    # into a folder that holds the model already: the names replaced, and hard links again
    zoo.decompress(tmp_path / "m.zoo", out, force=True)
    assert inode(out / "checkpoint-1" / "model.safetensors") == inode(out / "model.safetensors")

    with zoo.open(tmp_path / "m.zoo") as opened:
        assert sorted(entry["path"] for entry in opened.files()) == ["config.json", "model.safetensors", "notes.txt"]
        assert opened.keys() == ["w"]  # the checkpoint's name holds no tensors of its own (`checkpoint-1/model.safetensors::w`)
        assert opened.hard_links() == {"checkpoint-1/config.json": "config.json", "checkpoint-1/model.safetensors": "model.safetensors",
                                       "deep/er/config.json": "config.json"}
        assert opened.header()["features"] == ["hard-links"]
        # a hard link is read as the file it names
        assert opened.read_file("checkpoint-1/model.safetensors") == (linked / "model.safetensors").read_bytes()
    assert zoo.verify(tmp_path / "m.zoo") == []


def test_an_older_reader_refuses_an_archive_with_hard_links(linked, tmp_path, monkeypatch):
    """Without the feature a reader would write the files and leave their other names out: the
    archive lists it, and a reader that lacks it (FEATURES as they were before) refuses it whole."""
    zoo.compress(linked, tmp_path / "m.zoo")
    monkeypatch.setattr(archive_format, "FEATURES", archive_format.FEATURES - {"hard-links"})
    with pytest.raises(UnreadableError, match="archive needs features this zoo lacks: hard-links"):
        zoo.decompress(tmp_path / "m.zoo", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_where_the_file_system_refuses_hard_links_the_names_are_copies_said_in_one_warning(linked, tmp_path, monkeypatch):
    """No file system here refuses hard links (FAT and exFAT do, with EPERM): link(2) answers as one."""
    def refused(source, destination, *args, **kwargs):
        raise OSError(errno.EPERM, os.strerror(errno.EPERM), source)

    zoo.compress(linked, tmp_path / "m.zoo")
    monkeypatch.setattr(os, "link", refused)
    out = tmp_path / "out"
    with pytest.warns(ZooWarning) as caught:
        zoo.decompress(tmp_path / "m.zoo", out)
    said = [str(warning.message) for warning in caught]
    assert said == [f"{out}: the file system refused hard links (Operation not permitted); checkpoint-1/config.json, "
                    "checkpoint-1/model.safetensors, deep/er/config.json written as copies instead"]
    assert inode(out / "checkpoint-1" / "model.safetensors") != inode(out / "model.safetensors")
    assert (out / "checkpoint-1" / "model.safetensors").read_bytes() == (linked / "model.safetensors").read_bytes()
    assert stat.S_IMODE(os.stat(out / "deep" / "er" / "config.json").st_mode) == 0o640 & ~archive_format.current_umask()


def test_names_the_globs_leave_out_and_files_read_through_links_are_no_hard_links(linked, tmp_path):
    """A hard link whose other names are left out is a file; two links to one file outside the
    folder, followed, are two files (as a snapshot's two names of one blob are), as they were."""
    zoo.compress(linked, tmp_path / "m.zoo", exclude=["checkpoint-1/*", "deep/*"])
    with zoo.open(tmp_path / "m.zoo") as opened:
        assert opened.hard_links() == {} and "features" not in opened.header()
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "shared.txt").write_text("outside\n")
    os.symlink(outside, linked / "one")
    os.symlink(outside, linked / "two")
    zoo.compress(linked, tmp_path / "f.zoo", follow_links=True)
    with zoo.open(tmp_path / "f.zoo") as opened:
        assert {"one/shared.txt", "two/shared.txt"} <= {entry["path"] for entry in opened.files()}
        assert set(opened.hard_links()) == {"checkpoint-1/config.json", "checkpoint-1/model.safetensors", "deep/er/config.json"}


def test_a_lossless_check_and_the_store_take_hard_links_as_their_files(linked, tmp_path, monkeypatch):
    """compress --eval's check of a lossless archive against the folder found the other names
    missing; zoo serve lists them (the Hub has no links) with their file's bytes, and `zoo export`
    gives them back as hard links."""
    from huggingface_hub import HfApi, hf_hub_download

    from zoo.api import compress_into
    from zoo.evaluate.weights import verify_lossless
    from zoo.hub.store import Store
    from tests.hub.test_serve import running_server

    zoo.compress(linked, tmp_path / "m.zoo")
    found = verify_lossless(tmp_path / "m.zoo", linked, None)
    assert found["bit_exact"] and found["missing"] == [] and found["files"] == 3

    monkeypatch.setenv("ZOO_HOME", str(tmp_path / "zoo"))
    store = Store()
    os.symlink("checkpoint-1/model.safetensors", linked / "latest.safetensors")  # a link to a hard link: the file it names
    compress_into(store, linked, "org/linked")
    with running_server(store) as url:
        names = {s.rfilename for s in HfApi(endpoint=url).model_info("org/linked").siblings}
        assert {"checkpoint-1/model.safetensors", "deep/er/config.json", "latest.safetensors", "model.safetensors"} <= names
        for name in ("checkpoint-1/model.safetensors", "latest.safetensors"):
            path = hf_hub_download("org/linked", name, endpoint=url, cache_dir=tmp_path / "hf")
            assert Path(path).read_bytes() == (linked / "model.safetensors").read_bytes()
    assert zoo.verify("org/linked") == []
    zoo.decompress("org/linked", tmp_path / "out")  # what `zoo export` runs
    assert inode(tmp_path / "out" / "checkpoint-1" / "model.safetensors") == inode(tmp_path / "out" / "model.safetensors")
