"""Checks of the reader that no test held until a hand mutation of each went unnoticed (session 27):
each a forged or edge-case archive that the check, and only the check, refuses."""

from __future__ import annotations

import numpy as np
import pytest

import zoo
from zoo.errors import FormatError

from tests.conftest import write_safetensors
from tests.container.forge import forge


@pytest.fixture
def archive(tmp_path):
    values = np.arange(64 * 8, dtype=np.float32).reshape(64, 8)
    source = write_safetensors(tmp_path / "w.safetensors", {"w": ("F32", values)})
    zoo.compress(source, tmp_path / "w.zoo", chunk_bytes=1024)
    return tmp_path / "w.zoo"


def test_verify_holds_a_lossless_file_to_its_recorded_sha256(archive):
    def forged_sha256(header):
        header["files"][0]["sha256"] = "0" * 64

    problems = zoo.verify(forge(archive, forged_sha256))
    assert any("do not match the recorded sha256" in problem for problem in problems), problems


def test_verify_finds_bytes_after_the_last_chunk(archive, tmp_path):
    def appended(header, payload):
        payload.extend(bytes(4096))

    problems = zoo.verify(forge(archive, change_payload=appended))
    assert any("4096 stored bytes at the end belong to nothing" in problem for problem in problems), problems


def test_a_row_one_past_the_last_is_out_of_bounds(archive):
    with zoo.open(archive) as opened:
        rows = opened.get_slice("w")
        assert np.array_equal(rows[63], np.arange(63 * 8, 64 * 8, dtype=np.float32))
        with pytest.raises(IndexError, match="out of bounds"):
            rows[64]
        with pytest.raises(IndexError, match="out of bounds"):
            rows[-65]


def test_a_file_whose_segments_do_not_add_up_to_its_size_is_refused(tmp_path):
    """A lossy archive with a file's size forged smaller: decompress wrote the file short and said ok."""
    values = np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32)
    source = write_safetensors(tmp_path / "w.safetensors", {"w": ("F32", values)})
    zoo.compress(source, tmp_path / "w.zoo", "lowrank:ratio=0.25|lossless")

    def shorter(header):
        header["files"][0]["size"] -= 1000

    forged = forge(tmp_path / "w.zoo", shorter)
    with pytest.raises(FormatError, match="segments add up to"):
        zoo.decompress(forged, tmp_path / "out")
    assert not (tmp_path / "out").exists()
