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


def folder_modes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): stat.S_IMODE(p.stat().st_mode) for p in folder.rglob("*") if p.is_dir()}


def test_the_folders_decompress_makes_get_their_permission_bits_back(tmp_path: Path) -> None:
    # a 0700 folder holding a private key came back 0755
    folder = tmp_path / "model"
    for name, mode in {"private": 0o700, "private/deeper": 0o550, "open": 0o755, "empty": 0o711, "left-out": 0o700}.items():
        (folder / name).mkdir(parents=True)
        if name not in ("empty", "private"):
            (folder / name / "file.txt").write_bytes(name.encode())
        (folder / name).chmod(mode)
    (folder / "private" / "key.pem").write_bytes(b"key")
    folder.chmod(0o750)
    zoo.compress(folder, tmp_path / "m.zoo", exclude=["left-out/*"])
    with zoo.open(tmp_path / "m.zoo") as opened:  # a folder no kept file is in is not named (an empty one the filter selects is)
        assert opened.folder_modes() == {"": 0o750, "open": 0o755, "private": 0o700, "private/deeper": 0o550, "empty": 0o711}
    with umask(0o022):
        zoo.decompress(tmp_path / "m.zoo", tmp_path / "out")
    # the owner can always write there: a 0550 folder would refuse the next decompress --force its files
    assert folder_modes(tmp_path / "out") == {"open": 0o755, "private": 0o700, "private/deeper": 0o750, "empty": 0o711}
    zoo.compress(folder, tmp_path / "all.zoo")
    with umask(0o077):
        zoo.decompress(tmp_path / "all.zoo", tmp_path / "all")
    assert folder_modes(tmp_path / "all") == {"open": 0o700, "private": 0o700, "private/deeper": 0o700, "empty": 0o700, "left-out": 0o700}
    # into a folder that was there: the folders it already held keep their own modes
    existing = tmp_path / "existing"
    (existing / "open").mkdir(parents=True)
    (existing / "open").chmod(0o777)
    with umask(0o022):
        zoo.decompress(tmp_path / "m.zoo", existing)
    assert folder_modes(existing) == {"open": 0o777, "private": 0o700, "private/deeper": 0o750, "empty": 0o711}


def test_the_output_folder_decompress_makes_gets_the_model_folders_bits(tmp_path: Path) -> None:
    """A 0700 model folder came back 0755 (its own mode was not kept, only those of the folders in
    it): its 0644 files were readable by every user."""
    folder = tmp_path / "private"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    folder.chmod(0o700)
    zoo.compress(folder, tmp_path / "m.zoo")
    with umask(0o022):
        zoo.decompress(tmp_path / "m.zoo", tmp_path / "out")
        assert stat.S_IMODE((tmp_path / "out").stat().st_mode) == 0o700
        (tmp_path / "there").mkdir()
        (tmp_path / "there").chmod(0o755)
        zoo.decompress(tmp_path / "m.zoo", tmp_path / "there")  # a folder that was there keeps its own
        assert stat.S_IMODE((tmp_path / "there").stat().st_mode) == 0o755
    folder.chmod(0o555)  # the owner can always write in what decompress makes
    zoo.compress(folder, tmp_path / "read-only.zoo")
    with umask(0o022):
        zoo.decompress(tmp_path / "read-only.zoo", tmp_path / "again")
    assert stat.S_IMODE((tmp_path / "again").stat().st_mode) == 0o755
    for bits in (0o2750, 0o1777):  # set-group-id (a shared group folder's) and sticky bits are not kept, nor refused
        folder.chmod(bits)
        zoo.compress(folder, tmp_path / "shared.zoo", force=True)
        with zoo.open(tmp_path / "shared.zoo") as opened:
            assert opened.folder_modes() == {"": bits & 0o777}
    zoo.compress(folder / "config.json", tmp_path / "file.zoo")  # one file: no folder of its own to keep
    with zoo.open(tmp_path / "file.zoo") as opened:
        assert opened.folder_modes() == {}
    folder.chmod(0o700)


@pytest.mark.parametrize("root_mode", ["0700", 0o1777, -1, True, [448]])
def test_a_malformed_root_mode_is_refused_when_the_archive_opens(tmp_path: Path, root_mode: object) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "file.txt").write_bytes(b"x")
    zoo.compress(folder, tmp_path / "m.zoo")
    forged = forge(tmp_path / "m.zoo", lambda header: header.update(root_mode=root_mode))
    with pytest.raises(FormatError, match="malformed root folder mode"):
        zoo.decompress(forged, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("modes_field, message", [
    ({"open": "0755"}, "malformed folder modes"),
    ({"open": 0o1777}, "malformed folder modes"),
    ([493], "malformed folder modes"),
    ({"open/file.txt": 0o755}, "gives a mode to 'open/file.txt', which it does not hold as a folder"),
    ({"elsewhere": 0o755}, "gives a mode to 'elsewhere', which it does not hold as a folder"),
    ({"../up": 0o755}, "may not write"),
])
def test_malformed_folder_modes_are_refused_when_the_archive_opens(tmp_path: Path, modes_field: object, message: str) -> None:
    folder = tmp_path / "model"
    (folder / "open").mkdir(parents=True)
    (folder / "open" / "file.txt").write_bytes(b"x")
    zoo.compress(folder, tmp_path / "m.zoo")
    forged = forge(tmp_path / "m.zoo", lambda header: header.update(folder_modes=modes_field))
    with pytest.raises(FormatError, match=message):
        zoo.decompress(forged, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_folder_without_write_permission_takes_the_next_decompress_force_as_another_user_would(tmp_path: Path) -> None:
    """A 0550 folder given back as it was refused the next `decompress --force` its files, where
    the owner is not root (CAP_DAC_OVERRIDE dropped, as setpriv does)."""
    import shutil
    import subprocess
    import sys

    if shutil.which("setpriv") is None:
        pytest.skip("setpriv is not installed")
    folder = tmp_path / "model"
    (folder / "ro").mkdir(parents=True)
    (folder / "ro" / "file.txt").write_text("x")
    (folder / "ro").chmod(0o550)
    zoo.compress(folder, tmp_path / "m.zoo")
    command = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search,-fowner", "--inh-caps", "-all",
               sys.executable, "-m", "zoo", "decompress", str(tmp_path / "m.zoo"), "-o", str(tmp_path / "out"), "--force"]
    for _ in range(2):
        done = subprocess.run(command, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
    assert (tmp_path / "out" / "ro" / "file.txt").read_text() == "x"


def proc_shows_the_umask() -> bool:
    status = Path("/proc/self/status")
    return status.exists() and b"Umask:" in status.read_bytes()


def never_set(mask: int) -> int:
    raise AssertionError("the umask was set to read it")


@pytest.mark.skipif(not proc_shows_the_umask(), reason="no Umask line in /proc/self/status here (not Linux, or a kernel before 4.7)")
@pytest.mark.parametrize("value", [0o022, 0o027, 0o077, 0o002, 0o000])
def test_the_umask_is_read_without_being_set(value: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Setting it to read it left, for an instant, no umask for the files other threads create."""
    from zoo.container import format as archive_format

    with umask(value), monkeypatch.context() as patched:
        patched.setattr(os, "umask", never_set)
        assert archive_format.current_umask() == value


@pytest.mark.parametrize("value", [0o022, 0o027, 0o000])
def test_without_proc_the_umask_is_set_and_set_back(value: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from zoo.container import format as archive_format

    monkeypatch.setattr(archive_format, "_PROC_STATUS", str(tmp_path / "no-such-file"))
    with umask(value):
        assert archive_format.current_umask() == value
        assert os.umask(value) == value  # as it was


@pytest.mark.skipif(not proc_shows_the_umask(), reason="no Umask line in /proc/self/status here (not Linux, or a kernel before 4.7)")
def test_an_archive_takes_the_modes_the_umask_allows_without_the_umask_being_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = model(tmp_path)
    with umask(0o027), monkeypatch.context() as patched:
        patched.setattr(os, "umask", never_set)
        zoo.compress(folder, tmp_path / "m.zoo")
    assert stat.S_IMODE((tmp_path / "m.zoo").stat().st_mode) == 0o640
