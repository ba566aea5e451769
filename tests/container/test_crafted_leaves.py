"""Headers crafted with a right checksum whose leaves or encoding nodes are malformed: `zoo info`,
`zoo verify` and `zoo decompress` each answer with one FormatError naming the archive, never with
the CLI's "unexpected ... (a bug in zoo)"."""

from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import pytest

import zoo
from zoo.errors import FormatError

from tests.conftest import write_safetensors
from tests.container.forge import forge, leaf


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    """Tensor `w` stored as lowrank parts `left` and `right`, `b` as one leaf, and the safetensors
    header as a blob of file m.safetensors."""
    folder = tmp_path_factory.mktemp("crafted")
    weights = np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32)
    source = write_safetensors(folder / "m.safetensors", {"w": ("F32", weights), "b": ("F32", np.arange(64, dtype=np.float32))})
    zoo.compress(source, folder / "m.zoo", "lowrank:ratio=0.5|lossless")
    return folder / "m.zoo"


def part(header, name):
    return header["tensors"]["w"]["root"]["parts"][name]["leaf"]


def blob(header):
    return header["files"][0]["segments"][0]["blob"]["leaf"]


CRAFTED = {
    "a leaf dtype no dtype names": (lambda h: leaf(h, "b").update(dtype=""), "tensor 'b' has a bad dtype or shape"),
    "a leaf dtype that is a list": (lambda h: leaf(h, "b").update(dtype=[]), "tensor 'b' has a bad dtype or shape"),
    "a leaf that is a number": (lambda h: h["tensors"]["b"]["root"].update(leaf=1), "tensor 'b' has a malformed leaf"),
    "a leaf shape that is a dtype": (lambda h: leaf(h, "b").update(shape="F32"), "tensor 'b' has a bad dtype or shape"),
    "a part's dtype no dtype names": (lambda h: part(h, "left").update(dtype=""), "tensor 'w' part 'left' has a bad dtype or shape"),
    "a part's shape of a string": (lambda h: part(h, "left").update(shape=[64, "16"]), "tensor 'w' part 'left' has a bad dtype or shape"),
    "a part's leaf that is a number": (lambda h: h["tensors"]["w"]["root"]["parts"]["right"].update(leaf=1),
                                       "tensor 'w' part 'right' has a malformed leaf"),
    "a blob's dtype that is a list": (lambda h: blob(h).update(dtype=[]), "a part of m.safetensors has a bad dtype or shape"),
    "lowrank meta that is a number": (lambda h: h["tensors"]["w"]["root"].update(meta=65535),
                                      "tensor 'w' has a malformed encoding node: its meta is not an object"),
    "parts that are a number": (lambda h: h["tensors"]["w"]["root"].update(parts=1),
                                "tensor 'w' has a malformed encoding node: its parts are not an object"),
    "a tensor entry that is a number": (lambda h: h["tensors"].update(x=1), "archive header has a malformed entry for tensor 'x'"),
}


@pytest.mark.parametrize(("change", "message"), CRAFTED.values(), ids=CRAFTED.keys())
def test_a_crafted_leaf_or_node_is_one_format_error(archive, tmp_path, change, message):
    forged = forge(archive, change)
    expected = re.escape(f"{forged}: {message}")
    with pytest.raises(FormatError, match=expected):
        zoo.report_of(forged)  # what `zoo info` shows
    with pytest.raises(FormatError, match=expected):
        zoo.verify(forged)
    with pytest.raises(FormatError, match=expected):
        zoo.decompress(forged, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", [["info"], ["verify"], ["decompress", "-o", "out"]], ids=lambda command: command[0])
def test_the_cli_names_the_crafted_leaf_in_one_line(archive, tmp_path, command):
    forged = forge(archive, lambda h: leaf(h, "b").update(dtype=""))
    done = subprocess.run([sys.executable, "-m", "zoo", command[0], str(forged), *command[1:]],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert done.returncode == 1
    said = "damaged" if command == ["verify"] else "error"  # verify reports an archive it cannot open as damage, as any other
    assert done.stderr.strip() == f"{said}: {forged}: tensor 'b' has a bad dtype or shape"
    assert not (tmp_path / "out").exists()
