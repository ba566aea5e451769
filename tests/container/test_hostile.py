"""Archives made to hurt the reader: whatever a header claims, zoo answers with one clear error,
in bounded memory and time, and writes nothing."""

from __future__ import annotations

import numpy as np
import pytest

import zoo
from zoo.container.format import MAX_CHUNK_BYTES, PREAMBLE
from zoo.errors import FormatError, InputError

from tests.conftest import write_safetensors
from tests.container.forge import deeply_nested, every_record_on_the_first_chunk, forge, leaf, one_huge_chunk


@pytest.fixture
def archive(tmp_path):
    """A real archive of one F32 tensor in 16 chunks of 1 KiB."""
    values = np.arange(4096, dtype=np.float32)
    source = write_safetensors(tmp_path / "w.safetensors", {"w": ("F32", values)})
    zoo.compress(source, tmp_path / "w.zoo", chunk_bytes=1024)
    return tmp_path / "w.zoo"


def test_a_chunk_declared_over_the_cap_is_refused_before_decoding(archive, tmp_path):
    forged = forge(archive, one_huge_chunk)
    assert [problem for problem in zoo.verify(forged) if f"over the cap of {MAX_CHUNK_BYTES >> 20} MiB a chunk" in problem]
    with pytest.raises(FormatError, match="over the cap"):
        zoo.decompress(forged, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_index_records_that_all_point_at_one_chunk_are_refused_before_writing(archive, tmp_path):
    forged = forge(archive, change_payload=every_record_on_the_first_chunk)
    assert any("overlaps" in problem for problem in zoo.verify(forged))
    with pytest.raises(FormatError, match="overlaps other stored data"):
        zoo.decompress(forged, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_two_tensors_naming_one_leaf_are_refused_outside_a_zoo(tmp_path):
    """Only a zoo's archives (the "objects" feature) may name a leaf twice: elsewhere it is a
    forgery that decodes one chunk twice while other bytes belong to nothing."""
    values = np.arange(1024, dtype=np.float32)
    source = write_safetensors(tmp_path / "ab.safetensors", {"a": ("F32", values), "b": ("F32", values + 1)})
    zoo.compress(source, tmp_path / "ab.zoo")

    def b_names_the_leaf_of_a(header):
        header["tensors"]["b"]["root"]["leaf"] = dict(leaf(header, "a"))

    problems = zoo.verify(forge(tmp_path / "ab.zoo", b_names_the_leaf_of_a))
    assert any("overlaps" in problem for problem in problems)


def test_a_header_nested_thousands_deep_is_one_error(tmp_path):
    forged = tmp_path / "deep.zoo"
    forged.write_bytes(deeply_nested(5000))
    with pytest.raises(FormatError, match="nests too deep"):
        zoo.open(forged)


def test_a_shape_of_100001_dimensions_is_one_error(archive):
    def wide(header):
        header["tensors"]["w"]["shape"] = [1] * 100_000 + [4096]
        leaf(header)["shape"] = [1] * 100_000 + [4096]

    with pytest.raises(FormatError, match="100001 dimensions"):
        with zoo.open(forge(archive, wide)) as opened:
            opened.get_tensor("w")


def test_the_writer_refuses_chunks_over_the_cap(tmp_path):
    source = write_safetensors(tmp_path / "w.safetensors", {"w": ("F32", np.zeros(4, dtype=np.float32))})
    with pytest.raises(InputError, match="chunk_bytes must be from 1"):
        zoo.compress(source, tmp_path / "w.zoo", chunk_bytes=MAX_CHUNK_BYTES + 1)
    assert not (tmp_path / "w.zoo").exists()


def test_an_unchanged_forgery_reads_as_the_original(archive):
    """tests/container/forge.py forges through the writer's own assemble: unchanged, it gives the
    original back, so every refusal above comes from the change alone."""
    forged = forge(archive)
    assert zoo.verify(forged) == []
    assert forged.read_bytes()[PREAMBLE.size:] == archive.read_bytes()[PREAMBLE.size:]
