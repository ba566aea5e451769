"""Forged archives, for tests/container/test_hostile.py and benchmarks/bench_hostile.py: a real
archive with its header or payload changed and its checksums made right again, as an attacker
would write it."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from zoo.container.format import INDEX_RECORD, MAGIC, PREAMBLE, ArchiveFile, assemble, crc32


def forge(path: Path, change_header: Callable[[dict[str, Any]], None] | None = None,
          change_payload: Callable[[dict[str, Any], bytearray], None] | None = None) -> Path:
    """A new archive beside `path` (forged-N.zoo): its header and payload as the changes leave them."""
    opened = ArchiveFile(path)
    header, start = json.loads(json.dumps(opened.header)), opened.payload_start
    opened.close()
    payload = bytearray(path.read_bytes()[start:])
    if change_payload is not None:
        change_payload(header, payload)
    if change_header is not None:
        change_header(header)
    payload_file = path.with_name(f"{path.stem}.payload")
    payload_file.write_bytes(bytes(payload))
    forged = path.with_name(f"forged-{len(list(path.parent.glob('forged-*.zoo')))}.zoo")
    assemble(forged, header, payload_file)
    return forged


def refused_alike(forged: Path, message: str, scratch: Path) -> None:
    """`forged` is refused, with `message` after its path, by verify and by decompress into a new
    folder and over an existing one (with force), which keeps what it held."""
    import pytest

    import zoo
    from zoo.errors import FormatError

    expected = f"^{re.escape(str(forged))}: {message}"
    with pytest.raises(FormatError, match=expected):
        zoo.verify(forged)
    with pytest.raises(FormatError, match=expected):
        zoo.decompress(forged, scratch / "out")
    assert not (scratch / "out").exists()
    (scratch / "existing").mkdir()
    (scratch / "existing" / "kept.txt").write_text("kept")
    with pytest.raises(FormatError, match=expected):
        zoo.decompress(forged, scratch / "existing", force=True)
    assert [path.name for path in (scratch / "existing").iterdir()] == ["kept.txt"]


def leaf(header: dict[str, Any], key: str = "w") -> dict[str, Any]:
    return header["tensors"][key]["root"]["leaf"]


def one_huge_chunk(header: dict[str, Any]) -> None:
    """Tensor `w` declared as one chunk of 2 GiB of F32."""
    leaf(header)["chunk_elements"] = 1 << 29
    leaf(header)["shape"] = [1 << 29]


def every_record_on_the_first_chunk(header: dict[str, Any], payload: bytearray) -> None:
    """Every index record of tensor `w` pointing at its first chunk, the index's CRC made right."""
    offset, count = leaf(header)["index"]
    first = payload[offset:offset + INDEX_RECORD.size]
    for number in range(count):
        payload[offset + number * INDEX_RECORD.size:offset + (number + 1) * INDEX_RECORD.size] = first
    leaf(header)["index_crc32"] = crc32(bytes(payload[offset:offset + count * INDEX_RECORD.size]))


def flag_the_first_stream(flags: int) -> Callable[[dict[str, Any], bytearray], None]:
    """Tensor `w`'s first chunk with its first stream's flags byte set to `flags`, the chunk's and
    the index's CRCs made right."""
    def change(header: dict[str, Any], payload: bytearray) -> None:
        offset, count = leaf(header)["index"]
        chunk, length, _ = INDEX_RECORD.unpack_from(payload, offset)
        payload[chunk + 1] = flags  # after the chunk's count of streams
        INDEX_RECORD.pack_into(payload, offset, chunk, length, crc32(bytes(payload[chunk:chunk + length])))
        leaf(header)["index_crc32"] = crc32(bytes(payload[offset:offset + count * INDEX_RECORD.size]))
    return change


def deeply_nested(depth: int = 5000) -> bytes:
    """A whole archive whose header nests `depth` lists deep (json.dumps cannot write it)."""
    body = b'{"format":"zoo","files":[],"tensors":{},"metadata":{"deep":' + b"[" * depth + b"]" * depth + b"}}"
    return PREAMBLE.pack(MAGIC, 1, crc32(body), len(body)) + body
