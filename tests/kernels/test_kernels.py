"""The kernel contract (zoo/_kernels.py), checked on whatever path is in use against
independent plain-Python definitions; tests/test_native.py crosses the native variants."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zoo.kernels import fallback as _fallback

from zoo import kernels as _kernels
from zoo.codecs.lossless.bytegroup import ByteGroup
from zoo.dtypes import DTYPES, from_float32

from tests.conftest import random_storage

SIZES = [0, 1, 7, 255, 256, 1023, 1025]
STORED_DTYPES = sorted(d for d in DTYPES if DTYPES[d].storage)


def packed_by_hand(values: list[int], bits: int) -> bytes:
    stream = 0
    for position, value in enumerate(values):
        stream |= value << (position * bits)
    return stream.to_bytes((len(values) * bits + 7) // 8, "little")


@pytest.mark.parametrize("dtype", sorted(DTYPES))
@pytest.mark.parametrize("size", SIZES)
def test_planes_match_the_reference_and_round_trip(dtype, size):
    raw = random_storage(dtype, (size,), seed=size) if DTYPES[dtype].storage else np.arange(size * 8, dtype=np.uint8)
    chunk = np.ascontiguousarray(raw).reshape(-1).view(np.uint8)
    planes = _kernels.split_planes(chunk, dtype)
    expected = _fallback.split_planes(chunk, dtype)
    assert [p.tobytes() for p in planes] == [p.tobytes() for p in expected]
    assert _kernels.merge_planes(planes, dtype).tobytes() == chunk.tobytes()


def test_planes_put_the_exponent_first():
    # 1.5 in bf16 is 0x3fc0; rotated left one bit: 0x7f80, sign in the lowest bit.
    chunk = np.array([0x3FC0, 0xBFC0], dtype="<u2").view(np.uint8)
    top, low = _kernels.split_planes(chunk, "BF16")
    assert top.tolist() == [0x7F, 0x7F] and low.tolist() == [0x80, 0x81]


def test_bytegroup_codec_uses_the_kernels():
    raw = random_storage("F32", (1000,)).view(np.uint8)
    codec = ByteGroup()
    streams = codec.encode(raw, "F32")
    assert [len(s) for s in streams] == codec.stream_sizes("F32", 1000)
    assert codec.decode([s.tobytes() for s in streams], "F32", 1000).tobytes() == raw.tobytes()


def test_merge_rejects_planes_of_unequal_length():
    with pytest.raises(ValueError):
        _kernels.merge_planes([np.zeros(3, np.uint8), np.zeros(4, np.uint8)], "BF16")
    with pytest.raises(ValueError):
        _kernels.merge_planes([np.zeros(3, np.uint8)], "F32")


@pytest.mark.parametrize("bits", range(1, 17))
@pytest.mark.parametrize("count", [0, 1, 7, 8, 255, 65535, 65537])
def test_pack_matches_a_hand_packed_stream(bits, count):
    rng = np.random.default_rng(bits * 1000 + count)
    indices = rng.integers(0, 1 << bits, size=count).astype(np.uint8 if bits <= 8 else np.uint16)
    packed = _kernels.pack_indices(indices, bits)
    assert packed.dtype == np.uint8
    if count <= 255:
        assert packed.tobytes() == packed_by_hand(indices.tolist(), bits)
    else:
        assert packed.tobytes() == _fallback.pack_indices(indices, bits).tobytes()
    unpacked = _kernels.unpack_indices(packed, bits, count)
    assert unpacked.dtype == (np.uint8 if bits <= 8 else np.uint16)
    np.testing.assert_array_equal(unpacked, indices)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 16).flatmap(lambda bits: st.tuples(st.just(bits), st.lists(st.integers(0, (1 << bits) - 1), max_size=40))))
def test_pack_property(case):
    bits, values = case
    indices = np.array(values, dtype=np.uint16)
    packed = _kernels.pack_indices(indices, bits)
    assert packed.tobytes() == packed_by_hand(values, bits)
    assert _kernels.unpack_indices(packed, bits, len(values)).tolist() == values


def test_pack_and_unpack_reject_bad_arguments():
    with pytest.raises(ValueError):
        _kernels.pack_indices(np.array([4], np.uint8), 2)  # 4 needs 3 bits
    with pytest.raises(ValueError):
        _kernels.pack_indices(np.array([1], np.int32), 4)
    for bits in (0, 17, True):
        with pytest.raises(ValueError):
            _kernels.pack_indices(np.array([0], np.uint8), bits)
    with pytest.raises(ValueError):
        _kernels.unpack_indices(np.zeros(2, np.uint8), 3, 6)  # needs 3 bytes
    with pytest.raises(ValueError):
        _kernels.unpack_indices(np.zeros(2, np.uint8), 3, -1)


def dequantize_by_hand(indices, row_codebook, codebooks, rows, cols, dtype):
    values = np.empty((rows, cols), np.float32)
    for r in range(rows):
        for c in range(cols):
            values[r, c] = codebooks[row_codebook[r], indices[r * cols + c]]
    with np.errstate(over="ignore"):
        return from_float32(values, dtype)


@pytest.mark.parametrize("dtype", ["F32", "F16", "BF16"])
@pytest.mark.parametrize("bits", [1, 3, 4, 8, 9])
@pytest.mark.parametrize("rows,cols", [(0, 5), (1, 1), (3, 7), (5, 33)])
def test_dequantize_matches_a_hand_loop(dtype, bits, rows, cols):
    rng = np.random.default_rng(bits + rows * cols)
    codebooks = rng.normal(0, 1, size=(3, 1 << bits)).astype(np.float32)
    codebooks[0, 0] = np.float32(1 + 2**-8)  # a bf16 tie: rounds to even
    codebooks[0, -1] = 70000.0  # overflows fp16 to inf
    row_codebook = rng.integers(0, 3, size=rows).astype(np.int32)
    indices = rng.integers(0, 1 << bits, size=rows * cols).astype(np.uint16)
    packed = _kernels.pack_indices(indices, bits)
    out = _kernels.dequantize(packed, bits, rows, cols, row_codebook, codebooks, dtype)
    expected = dequantize_by_hand(indices, row_codebook, codebooks, rows, cols, dtype)
    assert out.shape == (rows, cols) and out.dtype == expected.dtype
    assert out.tobytes() == expected.tobytes()


def test_dequantize_rejects_bad_arguments():
    codebooks = np.zeros((2, 16), np.float32)
    packed = np.zeros(8, np.uint8)
    good = dict(packed=packed, bits=4, rows=4, cols=4, row_codebook=np.zeros(4, np.int32), codebooks=codebooks, dtype="BF16")
    _kernels.dequantize(**good)
    for change in (
        {"row_codebook": np.array([0, 1, 2, 0], np.int32)},  # codebook 2 does not exist
        {"row_codebook": np.array([0, -1, 0, 0], np.int32)},
        {"row_codebook": np.zeros(3, np.int32)},
        {"row_codebook": np.zeros(4, np.int64)},
        {"codebooks": np.zeros((2, 8), np.float32)},
        {"codebooks": np.zeros((2, 16), np.float64)},
        {"packed": np.zeros(7, np.uint8)},
        {"dtype": "F8_E4M3"},
        {"rows": -1},
    ):
        with pytest.raises(ValueError):
            _kernels.dequantize(**{**good, **change})


def test_philox_known_answers():
    # Known-answer vectors of Philox4x32-10 published with Random123.
    counters = np.array([[0, 0, 0, 0], [0xFFFFFFFF] * 4, [0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344]], np.uint32)
    keys = [(0, 0), (0xFFFFFFFF, 0xFFFFFFFF), (0xA4093822, 0x299F31D0)]
    expected = [[0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8], [0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD],
                [0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1]]
    for counter, key, words in zip(counters, keys, expected):
        assert _fallback.philox4x32_10(counter[None, :], key)[0].tolist() == words


def test_philox_uniform_is_the_specified_mapping():
    seed, stream = 0x0123456789ABCDEF, 0xFEDCBA9876543210
    counters = np.array([[block, 0, stream & 0xFFFFFFFF, stream >> 32] for block in range(3)], np.uint32)
    words = _fallback.philox4x32_10(counters, (seed & 0xFFFFFFFF, seed >> 32)).reshape(-1)
    expected = np.array([(int(w) >> 8) * 2.0**-23 - 1.0 for w in words], np.float32)
    np.testing.assert_array_equal(_kernels.philox_uniform(seed, stream, 12), expected)


@pytest.mark.parametrize("offset,count", [(0, 0), (0, 1), (1, 7), (3, 255), (5, 1025), (2**40 + 3, 9)])
def test_philox_offsets_continue_one_sequence(offset, count):
    whole = _kernels.philox_uniform(42, 7, offset % 4096 + count, offset - offset % 4096)
    part = _kernels.philox_uniform(42, 7, count, offset)
    assert part.dtype == np.float32 and part.shape == (count,)
    np.testing.assert_array_equal(part, whole[offset % 4096:])
    assert (part >= -1).all() and (part < 1).all()


@pytest.mark.parametrize("count", [2**62, 2**62 + 5, 2**63 - 1])
def test_philox_of_a_count_no_array_holds_is_refused(count):
    """The native kernel sized its output 4 * count, which wrapped past 2**62 to a few bytes, and
    wrote past them (SIGSEGV); numpy's says the array is too big."""
    with pytest.raises((ValueError, MemoryError)):
        _kernels.philox_uniform(0, 0, count)


def test_philox_streams_and_seeds_differ():
    a = _kernels.philox_uniform(1, 0, 64)
    assert not np.array_equal(a, _kernels.philox_uniform(1, 1, 64))
    assert not np.array_equal(a, _kernels.philox_uniform(2, 0, 64))
    assert abs(float(_kernels.philox_uniform(3, 0, 100000).mean())) < 0.01


def test_philox_rejects_bad_arguments():
    for arguments in ((-1, 0, 4), (2**64, 0, 4), (0, -1, 4), (0, 0, -1), (0, 0, 4, 2**64 - 2)):
        with pytest.raises(ValueError):
            _kernels.philox_uniform(*arguments)


@pytest.mark.parametrize("size", [*SIZES, 4096, 65537])
def test_crc32_is_zlibs(size):
    data = np.random.default_rng(size).integers(0, 256, size + 3, dtype=np.uint8)[3:]
    assert _kernels.crc32(data) == zlib.crc32(data)
    assert _kernels.crc32(data, 0xFFFFFFFF) == zlib.crc32(data, 0xFFFFFFFF)


@pytest.mark.parametrize("size", [0, 7, 4097])
def test_encode_section_writes_its_prefix_first(size):
    words = np.random.default_rng(size).normal(0, 0.02, size).astype(np.float16).view(np.uint8)
    plain = _kernels.encode_section(words, 2, True, 8)
    assert _kernels.encode_section(words, 2, True, 8, prefix=b"\x00\x07") == b"\x00\x07" + plain
    assert _kernels.decode_section(b"\x00\x07" + plain, 2, size, 2, True)[0].tobytes() == words.tobytes()


@pytest.mark.parametrize("size", [0, 7, 4097])
def test_encode_section_fills_in_its_stream_headers_lengths(size):
    # A chunk framed in place (Pipeline.encode_chunk): the two u32 at lengths_at are set to the
    # length of all that follows them, the rest of the prefix left as it is.
    words = np.random.default_rng(size).normal(0, 0.02, size).astype(np.float32).view(np.uint8)
    plain = _kernels.encode_section(words, 4, True, 10)
    prefix = b"\x01\x01" + bytes(8) + b"\x00"
    framed = _kernels.encode_section(words, 4, True, 10, prefix=prefix, lengths_at=2)
    length = 1 + len(plain)
    assert framed == b"\x01\x01" + struct.pack("<II", length, length) + b"\x00" + plain
    assert _kernels.encode_section(words, 4, True, 10, prefix=bytes(8), lengths_at=0) == struct.pack("<II", len(plain), len(plain)) + plain
    for lengths_at in (-2, 4, 100):  # the two lengths must lie within the prefix
        with pytest.raises(ValueError, match="holds no two lengths"):
            _kernels.encode_section(words, 4, True, 10, prefix=prefix, lengths_at=lengths_at)


def test_info_names_the_path():
    info = _kernels.info()
    assert info["kernels"] in ("numpy", "scalar", "avx2", "avx2-loads", "avx512", "avx512-ymm")
    assert info["kernels"] == _kernels.PATH
