"""Links and folders an archive's header asks for: each followed, as the kernel would follow it,
through the archive's own links, and refused in one line by verify and decompress alike when it
would leave the output folder or clash with another path; nothing is written then."""

from __future__ import annotations

import os

import numpy as np
import pytest

import zoo

from tests.conftest import write_safetensors
from tests.container.forge import forge, refused_alike


@pytest.fixture
def archive(tmp_path):
    """A real archive of a folder: config.json and sub/model.safetensors."""
    folder = tmp_path / "model"
    (folder / "sub").mkdir(parents=True)
    (folder / "config.json").write_text('{"layers": 1}')
    write_safetensors(folder / "sub" / "model.safetensors", {"w": ("F32", np.arange(64, dtype=np.float32))})
    zoo.compress(folder, tmp_path / "m.zoo")
    return tmp_path / "m.zoo"


def with_tree(links=(), folders=(), renamed=None):
    """A header change: these links ((path, target) pairs) and folders, config.json renamed."""

    def change(header):
        header["links"] = [{"path": path, "target": target} for path, target in links]
        header["folders"] = list(folders)
        if renamed is not None:
            next(entry for entry in header["files"] if entry["path"] == "config.json")["path"] = renamed

    return change


def chain(length):
    """link-0 -> link-1 -> ... -> link-LENGTH -> config.json."""
    return [(f"link-{n}", f"link-{n + 1}") for n in range(length)] + [(f"link-{length}", "config.json")]


HOSTILE = {
    "through a link to the root": (with_tree([("sub/up", ".."), ("sub/up2", "up/..")], ["sub"]),
                                   "link 'sub/up2' would point outside the output folder"),
    "through a chain of links": (with_tree([("a", "sub/.."), ("sub/b", "../a/sub"), ("sub/c", "b/../..")]),
                                 "link 'sub/c' would point outside the output folder"),
    "through a link two folders up": (with_tree([("sub/deep/top", "../.."), ("sub/deep/x", "top/../../sub")]),
                                      "link 'sub/deep/x' would point outside the output folder"),
    "up from a missing folder": (with_tree([("sub/x", "missing/../../..")]), "link 'sub/x' would point outside the output folder"),
    "an absolute target": (with_tree([("etc", "/etc")]), "link 'etc' would point outside the output folder"),
    "a loop": (with_tree([("a", "b/x"), ("b", "a")]), "link 'a' goes through a loop of links"),
    "a chain of 50 links": (with_tree(chain(50)), "link 'link-0' goes through a loop of links or more than 40"),
    "an empty target": (with_tree([("x", "")]), "link 'x' has a malformed target"),
    "a NUL in a target": (with_tree([("x", "sub\0")]), "link 'x' has a malformed target"),
    "a folder above the root": (with_tree(folders=["../../x"]), "archive holds a folder it may not write: .*'../../x'"),
    "a link above the root": (with_tree([("../x", "config.json")]), "archive holds a link it may not write: .*'../x'"),
    "a folder no file system names": (with_tree(folders=["caf\ud800"]), "archive holds a folder it may not write: 'caf\\\\ud800'"),
    "a file that is a folder": (with_tree(folders=["other"], renamed="other"), "archive holds 'other' both as a file and as a folder"),
    "a folder inside a file": (with_tree(folders=["other/deeper"], renamed="other"),
                               "archive holds folder 'other/deeper' inside 'other', which it holds as a file"),
    "a file inside a file": (with_tree(renamed="sub"), "archive holds file 'sub/model.safetensors' inside 'sub', which it holds as a file"),
    "a link named as a file": (with_tree([("config.json", "sub")]), "archive holds 'config.json' both as a file and as a link"),
    "a link named as a folder": (with_tree([("sub", "config.json")]), "archive holds 'sub' both as a folder and as a link"),
    "a link inside a link": (with_tree([("alias", "sub"), ("alias/x", "model.safetensors")]),
                             "archive holds link 'alias/x' inside 'alias', which it holds as a link"),
    "a folder inside a link": (with_tree([("alias", "sub")], ["alias/new"]), "archive holds 'alias' both as a folder and as a link"),
    "a link twice": (with_tree([("x", "sub"), ("x", "config.json")]), "archive holds link 'x' twice"),
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_a_hostile_link_or_folder_is_refused_by_verify_and_decompress_alike(archive, tmp_path, name):
    change, message = HOSTILE[name]
    refused_alike(forge(archive, change), message, tmp_path)


LEGITIMATE = [
    ("alias", "sub"),  # a link to a folder
    ("model.safetensors", "alias/model.safetensors"),  # through a link
    ("chained", "model.safetensors"),  # a link to a link to a link
    ("sub/up", ".."),  # from a subfolder to the root
    ("sub/up2", "up/sub/.."),  # through it, and back to the root
    ("sub/deep/again", "../up/alias/../config.json"),
    ("dangling", "missing/../nowhere"),  # inside, to nothing the archive holds
    *chain(30),  # 30 links deep
]


def test_links_that_stay_inside_round_trip_through_links_of_their_own(archive, tmp_path):
    forged = forge(archive, with_tree(LEGITIMATE, ["sub/deep", "empty/deeper"]))
    assert zoo.verify(forged) == []
    with zoo.open(forged) as opened:
        assert opened.links() == [{"path": path, "target": target} for path, target in LEGITIMATE]
    out = tmp_path / "out"
    zoo.decompress(forged, out)
    for path, target in LEGITIMATE:
        assert os.readlink(out / path) == target
        resolved = os.path.realpath(out / path)
        assert resolved == str(out.resolve()) or resolved.startswith(f"{out.resolve()}{os.sep}")
    assert (out / "chained").read_bytes() == (out / "sub" / "model.safetensors").read_bytes()
    assert (out / "sub" / "deep" / "again").read_text() == '{"layers": 1}'
    assert (out / "link-0").read_text() == '{"layers": 1}' and (out / "empty" / "deeper").is_dir()
    assert os.path.realpath(out / "sub" / "up2") == str(out.resolve()) and not (out / "dangling").exists()


def test_a_folder_compressed_with_its_links_round_trips(tmp_path):
    folder = tmp_path / "model"
    (folder / "sub" / "deep").mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    os.symlink("..", folder / "sub" / "up")
    os.symlink("../../config.json", folder / "sub" / "deep" / "config.json")
    os.symlink("sub", folder / "alias")
    zoo.compress(folder, tmp_path / "m.zoo")
    assert zoo.verify(tmp_path / "m.zoo") == []
    zoo.decompress(tmp_path / "m.zoo", tmp_path / "out")
    assert os.readlink(tmp_path / "out" / "sub" / "up") == ".." and os.readlink(tmp_path / "out" / "alias") == "sub"
    assert (tmp_path / "out" / "sub" / "deep" / "config.json").read_text() == "{}"
