"""Hard links an archive's header asks for: each another name of a file the archive stores, at a
path of its own inside the output folder, or the archive is refused in one line by verify and
decompress alike, and nothing is written."""

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


def with_hard_links(hard_links, links=(), feature=True):
    """A header change: these hard links and links ((path, target) pairs), the feature listed or not."""

    def change(header):
        header["hard_links"] = [{"path": path, "target": target} for path, target in hard_links]
        header["links"] = [{"path": path, "target": target} for path, target in links]
        if feature:
            header["features"] = ["hard-links"]

    return change


def malformed(header):
    header["hard_links"] = {"x": "config.json"}
    header["features"] = ["hard-links"]


HOSTILE = {
    "without the feature": (with_hard_links([("x", "config.json")], feature=False),
                            "archive holds hard links, but the header does not list the feature"),
    "not a list": (malformed, "archive header has malformed hard links"),
    "to nothing": (with_hard_links([("x", "nowhere")]), "hard link 'x' names 'nowhere', which the archive holds no file of"),
    "to a hard link": (with_hard_links([("x", "config.json"), ("y", "x")]), "hard link 'y' names 'x', which the archive holds no file of"),
    "to no path": (with_hard_links([("x", None)]), "hard link 'x' names None, which the archive holds no file of"),
    "above the root": (with_hard_links([("../x", "config.json")]), "archive holds a hard link it may not write: .*'../x'"),
    "named as a file": (with_hard_links([("config.json", "sub/model.safetensors")]), "archive holds 'config.json' twice"),
    "twice": (with_hard_links([("x", "config.json"), ("x", "config.json")]), "archive holds 'x' twice"),
    "named as a link": (with_hard_links([("x", "config.json")], [("x", "sub")]), "archive holds 'x' both as a file and as a link"),
    "named as a folder": (with_hard_links([("sub", "config.json")]), "archive holds 'sub' both as a folder and as a file"),
    "inside a file": (with_hard_links([("config.json/x", "config.json")]),
                      "archive holds file 'config.json/x' inside 'config.json', which it holds as a file"),
    "inside a link": (with_hard_links([("alias/x", "config.json")], [("alias", "sub")]),
                      "archive holds 'alias' both as a folder and as a link"),
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_a_hostile_hard_link_is_refused_by_verify_and_decompress_alike(archive, tmp_path, name):
    change, message = HOSTILE[name]
    refused_alike(forge(archive, change), message, tmp_path)


def test_a_hard_link_into_a_folder_the_archive_holds_nothing_else_in_is_made(archive, tmp_path):
    forged = forge(archive, with_hard_links([("new/deeper/config.json", "config.json"),
                                             ("sub/again.safetensors", "sub/model.safetensors")]))
    assert zoo.verify(forged) == []
    out = tmp_path / "out"
    zoo.decompress(forged, out)
    assert os.path.samefile(out / "new" / "deeper" / "config.json", out / "config.json")
    assert os.path.samefile(out / "sub" / "again.safetensors", out / "sub" / "model.safetensors")
