"""A file's permission bits survive compress and decompress (an executable script stays
executable, a private key stays private), less what the umask of the decompressing process
removes; archives from before modes were kept decompress as they always did."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

import zoo
from tests.container.forge import forge
from zoo.errors import FormatError

MODES = {"run.sh": 0o755, "key.pem": 0o600, "frozen.txt": 0o444, "shared.txt": 0o664, "none.txt": 0o000}


@contextmanager
def umask(value: int) -> Iterator[None]:
    old = os.umask(value)
    try:
        yield
    finally:
        os.umask(old)


def model(tmp_path: Path) -> Path:
    folder = tmp_path / "model"
    (folder / "sub").mkdir(parents=True)
    for name, mode in MODES.items():
        path = folder / "sub" / name if name == "shared.txt" else folder / name
        path.write_bytes(name.encode())
        path.chmod(mode)
    return folder


def modes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): stat.S_IMODE(p.stat().st_mode) for p in folder.rglob("*") if p.is_file()}


def test_decompress_gives_each_file_its_permission_bits_back(tmp_path: Path) -> None:
    folder = model(tmp_path)
    zoo.compress(folder, tmp_path / "m.zoo")
    with umask(0o022):
        zoo.decompress(tmp_path / "m.zoo", tmp_path / "out")
    assert modes(tmp_path / "out") == {"run.sh": 0o755, "key.pem": 0o600, "frozen.txt": 0o444, "sub/shared.txt": 0o644,
                                       "none.txt": 0o000}
    assert (tmp_path / "out" / "frozen.txt").read_bytes() == b"frozen.txt"  # written whole before it was read-only


def test_the_umask_of_the_decompressing_process_removes_bits(tmp_path: Path) -> None:
    folder = model(tmp_path)
    zoo.compress(folder, tmp_path / "m.zoo")
    with umask(0o077):
        zoo.decompress(tmp_path / "m.zoo", tmp_path / "out")
    assert modes(tmp_path / "out")["run.sh"] == 0o700
    assert modes(tmp_path / "out")["sub/shared.txt"] == 0o600


def test_set_id_and_sticky_bits_are_never_stored(tmp_path: Path) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "tool").write_bytes(b"#!/bin/sh\n")
    (folder / "tool").chmod(0o6755 | stat.S_ISVTX)
    zoo.compress(folder, tmp_path / "m.zoo")
    with zoo.open(tmp_path / "m.zoo") as opened:
        assert [entry["mode"] for entry in opened.files()] == [0o755]
    with umask(0o022):
        zoo.decompress(tmp_path / "m.zoo", tmp_path / "out")
    assert stat.S_IMODE((tmp_path / "out" / "tool").stat().st_mode) == 0o755


def test_a_single_file_keeps_its_mode(tmp_path: Path) -> None:
    (tmp_path / "w.dat").write_bytes(os.urandom(1000))
    (tmp_path / "w.dat").chmod(0o640)
    zoo.compress(tmp_path / "w.dat", tmp_path / "w.zoo")
    with umask(0o022):
        zoo.decompress(tmp_path / "w.zoo", tmp_path / "out")
    assert modes(tmp_path / "out") == {"w.dat": 0o640}


def test_an_archive_without_modes_decompresses_as_before(tmp_path: Path) -> None:
    folder = model(tmp_path)
    zoo.compress(folder, tmp_path / "m.zoo")

    def drop_modes(header: dict) -> None:
        for entry in header["files"]:
            del entry["mode"]

    forged = forge(tmp_path / "m.zoo", drop_modes)
    with umask(0o027):
        zoo.decompress(forged, tmp_path / "out")
    assert set(modes(tmp_path / "out").values()) == {0o640}


@pytest.mark.parametrize("mode", [-1, 0o1000, 0o4755, 7.0, "0755", True, None])
def test_a_malformed_mode_is_refused_when_the_archive_opens(tmp_path: Path, mode: object) -> None:
    folder = model(tmp_path)
    zoo.compress(folder, tmp_path / "m.zoo")

    def set_mode(header: dict) -> None:
        header["files"][0]["mode"] = mode

    forged = forge(tmp_path / "m.zoo", set_mode)
    if mode is None:  # JSON null: the same as no mode
        zoo.decompress(forged, tmp_path / "out")
        return
    with pytest.raises(FormatError, match="malformed mode"):
        zoo.decompress(forged, tmp_path / "out")
    assert not (tmp_path / "out").exists()
