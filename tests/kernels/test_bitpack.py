"""Bit packing in zoo._native (native/bitpack.c) against a numpy reference written here: the fuzz
corpus of tests/fuzz/fuzz_bitpack.c replayed through the Python entry points, unaligned and odd
inputs, and dequantize's batches, which start unpacking in the middle of a byte."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

native = pytest.importorskip("zoo._native", reason="the native extension is not built")

FUZZ = Path(__file__).parent.parent / "fuzz"


def reference_pack(values: np.ndarray, bits: int) -> bytes:
    matrix = (np.asarray(values, np.uint32)[:, None] >> np.arange(bits)) & 1
    return np.packbits(matrix.astype(np.uint8).reshape(-1), bitorder="little").tobytes()


def reference_unpack(packed: bytes, bits: int, count: int) -> np.ndarray:
    stream = np.unpackbits(np.frombuffer(packed, np.uint8), bitorder="little")[: count * bits]
    return (stream.reshape(count, bits).astype(np.uint32) << np.arange(bits)).sum(axis=1)


def corpus() -> list[Path]:
    files = sorted((FUZZ / "corpus" / "bitpack").glob("*")) + sorted((FUZZ / "found").glob("fuzz_bitpack-*"))
    return [f for f in files if f.is_file()]


@pytest.mark.parametrize("path", corpus(), ids=lambda p: p.name)
def test_fuzz_corpus_replays(path):
    """The fuzz target's two readings of an input (see fuzz_bitpack.c), through the binding."""
    data = path.read_bytes()
    if len(data) < 3:
        return
    bits, item_bytes, payload = (data[0] & 15) + 1, 2 if data[0] & 16 else 1, data[3:]
    count = len(payload) * 8 // bits
    unpacked = native.unpack_indices(payload, bits, count)
    assert np.frombuffer(unpacked, np.uint8 if bits <= 8 else "<u2").tolist() == reference_unpack(payload, bits, count).tolist()

    indices = np.frombuffer(payload[: len(payload) // item_bytes * item_bytes], np.uint8 if item_bytes == 1 else "<u2")
    if (indices >> bits).any():
        with pytest.raises(ValueError, match=f"does not fit in {bits} bits"):
            native.pack_indices(indices, item_bytes, bits)
    indices = indices & ((1 << bits) - 1)
    packed = native.pack_indices(indices, item_bytes, bits)
    assert bytes(packed) == reference_pack(indices, bits)
    assert np.frombuffer(native.unpack_indices(packed, bits, len(indices)), np.uint8 if bits <= 8 else "<u2").tolist() == indices.tolist()


@pytest.mark.parametrize("bits", [1, 5, 8, 9, 15, 16])
@pytest.mark.parametrize("count", [0, 1, 7, 8, 9, 4095, 4096, 4097, 10_001])
def test_round_trips_from_unaligned_buffers(bits, count):
    """uint16 indices one byte into a buffer, and packed bytes likewise: read byte by byte."""
    values = np.random.default_rng(count * 17 + bits).integers(0, 1 << bits, count)
    item_bytes = 1 if bits <= 8 else 2
    raw = np.zeros(count * item_bytes + 1, np.uint8)
    raw[1:] = values.astype(np.uint8 if item_bytes == 1 else "<u2").view(np.uint8)
    packed = native.pack_indices(memoryview(raw)[1:], item_bytes, bits)
    assert bytes(packed) == reference_pack(values, bits)
    shifted = np.zeros(len(packed) + 1, np.uint8)
    shifted[1:] = np.frombuffer(packed, np.uint8)
    out = native.unpack_indices(memoryview(shifted)[1:], bits, count)
    assert np.frombuffer(out, np.uint8 if bits <= 8 else "<u2").tolist() == values.tolist()


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="need more than 2 bytes"):
        native.unpack_indices(b"\0\0", 3, 6)  # 18 bits
    with pytest.raises(ValueError):
        native.unpack_indices(b"", 1, 2**62)  # packed size would overflow
    with pytest.raises(ValueError, match="does not fit in 3 bits"):
        native.pack_indices(bytes([1, 8]), 1, 3)
    for bits in (0, 17):
        with pytest.raises(ValueError):
            native.pack_indices(b"\0", 1, bits)
        with pytest.raises(ValueError):
            native.unpack_indices(b"\0\0\0", bits, 1)
    with pytest.raises(ValueError):
        native.pack_indices(b"\0\0\0", 2, 4)  # not whole uint16
    assert bytes(native.unpack_indices(b"", 16, 0)) == b""


@pytest.mark.parametrize("bits", [3, 7, 11])
def test_dequantize_batches_start_mid_byte(bits):
    """dequantize unpacks about 64 Ki indices a batch; with 1001 columns the second batch starts
    65 * 1001 * bits bits in, which is not a whole byte."""
    rows, cols, n_books = 140, 1001, 3
    rng = np.random.default_rng(bits)
    indices = rng.integers(0, 1 << bits, rows * cols)
    row_codebook = rng.integers(0, n_books, rows).astype(np.int32)
    codebooks = rng.normal(0, 1, (n_books, 1 << bits)).astype(np.float32)
    expected = codebooks[row_codebook[:, None], indices.reshape(rows, cols)]
    previous = native.isa()
    try:
        for isa in native.available_isas():
            native.select_isa(isa)
            out = native.dequantize(reference_pack(indices, bits), bits, rows, cols, row_codebook, codebooks, n_books, 0)
            assert np.frombuffer(out, np.float32).reshape(rows, cols).tobytes() == expected.tobytes(), isa
    finally:
        native.select_isa(previous)
