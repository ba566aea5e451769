"""Archives made to hurt the reader: whatever a header claims, zoo answers with one clear error,
in bounded memory and time, and writes nothing."""

from __future__ import annotations

import json

import numpy as np
import pytest

import zoo
from zoo.container.format import INDEX_RECORD, MAX_CHUNK_BYTES, PREAMBLE, ArchiveFile, assemble, crc32
from zoo.errors import FormatError, InputError

from tests.conftest import write_safetensors


@pytest.fixture
def archive(tmp_path):
    """A real archive of one F32 tensor in 16 chunks of 1 KiB."""
    values = np.arange(4096, dtype=np.float32)
    source = write_safetensors(tmp_path / "w.safetensors", {"w": ("F32", values)})
    zoo.compress(source, tmp_path / "w.zoo", chunk_bytes=1024)
    return tmp_path / "w.zoo"


def _rewrite(path, change_header, change_payload=None):
    """A copy of the archive at `path` with its header (and payload bytes) changed, checksums
    made right again, as a forger would."""
    opened = ArchiveFile(path)
    header, start = json.loads(json.dumps(opened.header)), opened.payload_start
    opened.close()
    payload = bytearray(path.read_bytes()[start:])
    if change_payload is not None:
        change_payload(header, payload)
    change_header(header)
    forged_payload = path.with_name("payload.bin")
    forged_payload.write_bytes(bytes(payload))
    forged = path.with_name("forged.zoo")
    assemble(forged, header, forged_payload)
    return forged


def _leaf(header):
    return header["tensors"]["w"]["root"]["leaf"]


def test_a_chunk_declared_over_the_cap_is_refused_before_decoding(archive, tmp_path):
    def huge(header):
        _leaf(header)["chunk_elements"] = 1 << 29  # 2 GiB of F32 in one chunk
        _leaf(header)["shape"] = [1 << 29]

    forged = _rewrite(archive, huge)
    assert [problem for problem in zoo.verify(forged) if f"over the cap of {MAX_CHUNK_BYTES >> 20} MiB a chunk" in problem]
    with pytest.raises(FormatError, match="over the cap"):
        zoo.decompress(forged, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_index_records_that_all_point_at_one_chunk_are_refused_before_writing(archive, tmp_path):
    def same_chunk(header, payload):
        offset, count = _leaf(header)["index"]
        first = payload[offset:offset + INDEX_RECORD.size]
        for number in range(count):
            payload[offset + number * INDEX_RECORD.size:offset + (number + 1) * INDEX_RECORD.size] = first
        _leaf(header)["index_crc32"] = crc32(bytes(payload[offset:offset + count * INDEX_RECORD.size]))

    forged = _rewrite(archive, lambda header: None, same_chunk)
    assert any("overlaps" in problem for problem in zoo.verify(forged))
    with pytest.raises(FormatError, match="overlaps other stored data"):
        zoo.decompress(forged, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_header_nested_thousands_deep_is_one_error(tmp_path):
    # json.dumps cannot write it either: the bytes by hand
    body = b'{"format":"zoo","files":[],"tensors":{},"metadata":{"deep":' + b"[" * 5000 + b"]" * 5000 + b"}}"
    forged = tmp_path / "deep.zoo"
    forged.write_bytes(PREAMBLE.pack(b"\x89ZOO\r\n\x1a\n", 1, crc32(body), len(body)) + body)
    with pytest.raises(FormatError, match="nests too deep"):
        zoo.open(forged)


def test_a_shape_of_100001_dimensions_is_one_error(archive):
    def wide(header):
        header["tensors"]["w"]["shape"] = [1] * 100_000 + [4096]
        _leaf(header)["shape"] = [1] * 100_000 + [4096]

    with pytest.raises(FormatError, match="100001 dimensions"):
        with zoo.open(_rewrite(archive, wide)) as opened:
            opened.get_tensor("w")


def test_the_writer_refuses_chunks_over_the_cap(tmp_path):
    source = write_safetensors(tmp_path / "w.safetensors", {"w": ("F32", np.zeros(4, dtype=np.float32))})
    with pytest.raises(InputError, match="chunk_bytes must be from 1"):
        zoo.compress(source, tmp_path / "w.zoo", chunk_bytes=MAX_CHUNK_BYTES + 1)
    assert not (tmp_path / "w.zoo").exists()


def test_preamble_is_what_the_forger_writes(archive):
    """The helper above forges archives through the writer's own assemble: a sanity check that an
    unchanged rewrite reads back as the original."""
    forged = _rewrite(archive, lambda header: None)
    assert zoo.verify(forged) == []
    assert forged.read_bytes()[PREAMBLE.size:] == archive.read_bytes()[PREAMBLE.size:]
