"""Replays the fuzz corpus (seeds in corpus/, what the fuzzer found in found/) through the Python
entry points: every native kernel table and the numpy decoder must agree, and never crash."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from zoo.kernels import fallback_coder as _fallback_coder

native = pytest.importorskip("zoo._native", reason="the native extension is not built")

HERE = Path(__file__).parent
WORD_BYTES = (1, 2, 4)


def inputs(kind: str) -> list[Path]:
    files = sorted((HERE / "corpus" / kind).glob("*")) + sorted((HERE / "found").glob(f"fuzz_{kind}-*"))
    return [f for f in files if f.is_file()]


def decode_everywhere(payload: bytes, count: int, word_bytes: int, is_float: bool) -> list:
    verdicts = []
    previous = native.isa()
    try:
        for isa in native.available_isas():
            native.select_isa(isa)
            try:
                out, end = native.decode_section(payload, 0, count, word_bytes, is_float)
                verdicts.append((bytes(out), end))
            except ValueError:
                verdicts.append("error")
    finally:
        native.select_isa(previous)
    try:
        out, end = _fallback_coder.decode_section(payload, 0, count, word_bytes, is_float)
        verdicts.append((out.tobytes(), end))
    except ValueError:
        verdicts.append("error")
    return verdicts


@pytest.mark.parametrize("path", inputs("decode"), ids=lambda p: p.name)
def test_decode_corpus(path):
    data = path.read_bytes()
    if len(data) < 3:
        return
    word_bytes, is_float = WORD_BYTES[data[0] % 3], bool((data[0] >> 2) & 1)
    (count,) = struct.unpack_from("<H", data, 1)
    verdicts = decode_everywhere(data[3:], count, word_bytes, is_float)
    assert all(v == verdicts[0] for v in verdicts)


@pytest.mark.parametrize("path", inputs("roundtrip"), ids=lambda p: p.name)
def test_roundtrip_corpus(path):
    data = path.read_bytes()
    if not data:
        return
    word_bytes, is_float, symbol_bits = WORD_BYTES[data[0] % 3], bool((data[0] >> 2) & 1), 8 + ((data[0] >> 3) & 7)
    words = np.frombuffer(data[1:1 + (len(data) - 1) // word_bytes * word_bytes], dtype=np.uint8)
    coded = _fallback_coder.encode_section(words, word_bytes, is_float, symbol_bits)
    previous = native.isa()
    try:
        for isa in native.available_isas():  # every table writes numpy's bytes
            native.select_isa(isa)
            assert native.encode_section(words, word_bytes, is_float, symbol_bits) == coded, isa
    finally:
        native.select_isa(previous)
    assert len(coded) <= 1 + len(words)
    for verdict in decode_everywhere(coded, len(words) // word_bytes, word_bytes, is_float):
        assert verdict == (words.tobytes(), len(coded))
