"""The native kernels, every instruction set crossed with the scalar reference and numpy, on awkward
sizes; the entropy coder's sections and codecs; hostile payloads."""

from __future__ import annotations

import struct
import subprocess
import sys
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest

from zoo.kernels import fallback as _fallback, fallback_coder as _fallback_coder

from zoo import kernels as _kernels
from zoo.codecs.lossless.fprans import SYMBOL_BITS, FpRans
from zoo.codecs.lossless.rans import Rans
from zoo.dtypes import DTYPES
from zoo.errors import FormatError

from tests.conftest import random_storage

native = pytest.importorskip("zoo._native", reason="the native extension is not built")
from zoo.kernels import native as _native_calls  # noqa: E402 - needs the extension

ISAS = native.available_isas()
# odd sizes, and both sides of every vector width and block the kernels use
SIZES = [0, 1, 7, 15, 16, 17, 31, 32, 33, 63, 64, 65, 127, 128, 129, 255, 4095, 4096, 4097, 65535, 65537]


@pytest.fixture(params=ISAS)
def isa(request):
    previous = native.isa()
    native.select_isa(request.param)
    yield request.param
    native.select_isa(previous)


def bf16_words(count, seed=0, scale=0.02):
    values = np.random.default_rng(seed).normal(0, scale, count).astype(np.float32)
    return ((values.view(np.uint32) + 0x8000) >> 16).astype(np.uint16)


@pytest.mark.parametrize("dtype", ["BF16", "F16", "F32", "F64", "I64", "I32", "U8", "F8_E4M3"])
@pytest.mark.parametrize("size", SIZES)
def test_planes_every_isa_matches_numpy(isa, dtype, size):
    chunk = random_storage(dtype, (size,), seed=size).view(np.uint8).reshape(-1)
    planes = _native_calls.split_planes(chunk, dtype)
    expected = _fallback.split_planes(chunk, dtype)
    assert [p.tobytes() for p in planes] == [p.tobytes() for p in expected]
    assert _native_calls.merge_planes(expected, dtype).tobytes() == chunk.tobytes()


@pytest.mark.parametrize("bits", [1, 3, 6, 8, 9, 13, 16])
@pytest.mark.parametrize("count", [0, 1, 7, 255, 4097])
def test_packing_matches_numpy(bits, count):
    indices = np.random.default_rng(count).integers(0, 1 << bits, count).astype(np.uint16 if bits > 8 else np.uint8)
    packed = _native_calls.pack_indices(indices, bits)
    assert packed.tobytes() == _fallback.pack_indices(indices, bits).tobytes()
    np.testing.assert_array_equal(_native_calls.unpack_indices(packed, bits, count), indices)


@pytest.mark.parametrize("dtype", ["F32", "F16", "BF16"])
@pytest.mark.parametrize("rows,cols", [(0, 3), (1, 1), (3, 7), (2, 15), (3, 16), (5, 17), (4, 255)])
def test_dequantize_every_isa_matches_numpy(isa, dtype, rows, cols):
    rng = np.random.default_rng(rows * 100 + cols)
    codebooks = rng.normal(0, 1, (3, 16)).astype(np.float32)
    special = np.array([0x7F800001, 0xFFC00123, 0x7F800000, 0x00000001, 0x33000000, 0x477FF000, 0x3F808000, 0x38800000], np.uint32)
    codebooks[0, :8] = special.view(np.float32)  # NaN payloads, infinity, subnormals, ties
    indices = rng.integers(0, 16, rows * cols).astype(np.uint8)
    packed = _fallback.pack_indices(indices, 4)
    row_codebook = rng.integers(0, 3, rows).astype(np.int32)
    got = _native_calls.dequantize(packed, 4, rows, cols, row_codebook, codebooks, dtype)
    with np.errstate(invalid="ignore"):
        expected = _fallback.dequantize(packed, 4, rows, cols, row_codebook, codebooks, dtype)
    assert got.shape == expected.shape and got.dtype == expected.dtype
    assert got.tobytes() == expected.tobytes()


@pytest.mark.parametrize("offset", [0, 1, 3, 4, 2**32 * 4 - 70, 2**64 - 200])
@pytest.mark.parametrize("count", [0, 1, 7, 63, 64, 65, 129])
def test_philox_every_isa_matches_numpy(isa, offset, count):
    seed, stream = 0xDEADBEEF12345678, 99
    np.testing.assert_array_equal(_native_calls.philox_uniform(seed, stream, count, offset), _fallback.philox_uniform(seed, stream, count, offset))


@pytest.mark.parametrize("count", [1, 3, 4, 64, 65, 200])
def test_philox_runs_to_the_last_offset_on_every_isa_as_numpy_does(isa, count):
    """Elements up to offset 2**64 - 1 are numbered: the native check refused offset + count equal
    to 2**64, which numpy's takes; one past it both refuse."""
    seed, stream, offset = 7, 1, 2**64 - count
    np.testing.assert_array_equal(_native_calls.philox_uniform(seed, stream, count, offset), _fallback.philox_uniform(seed, stream, count, offset))
    for call in (_native_calls.philox_uniform, _fallback.philox_uniform):
        with pytest.raises(ValueError):
            call(seed, stream, count, offset + 1)


def _ordered_sum(left, right, r, c):
    """Element (r, c) of the lowrank product as the spec words it: Python floats are IEEE doubles."""
    total = 0.0 if left.shape[1] == 0 else float(left[r, 0]) * float(right[0, c])
    for k in range(1, left.shape[1]):
        total += float(left[r, k]) * float(right[k, c])
    return np.float32(total)


# the SIMD tables tile 4 rows x 16 (AVX-512) or 8 (AVX2) columns, in blocks of 65536 / rank columns
@pytest.mark.parametrize("rows,rank,cols", [(0, 3, 4), (3, 0, 5), (4, 0, 16), (1, 1, 1), (3, 2, 7), (8, 1, 32), (4, 2, 16), (12, 5, 48),
                                            (5, 9, 255), (2, 4, 256), (3, 17, 257), (2, 3, 513), (9, 300, 513), (7, 1000, 200)])
def test_product_every_isa_matches_numpy_and_the_ordered_sum(isa, rows, rank, cols):
    rng = np.random.default_rng(rows * 1000 + rank * 10 + cols)
    left = rng.normal(0, 1, (rows, rank)).astype(np.float32)
    right = (rng.normal(0, 1, (rank, cols)) * 10.0 ** rng.integers(-30, 30, (rank, cols))).astype(np.float32)  # cancellation
    specials = np.array([0x7F800001, 0xFFC00123, 0x7F800000, 0xFF800000, 0x00000001, 0x80000000, 0x7F7FFFFF], np.uint32).view(np.float32)
    if rows and rank and cols >= len(specials):
        right[0, :len(specials)] = specials  # NaN payloads, infinities (inf * 0 and inf - inf too), subnormal, -0, overflow
        left[0, 0] = 0.0
    got = _native_calls.product(left, right)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the numpy twin says nothing of the NaN and inf the spec gives (it warned, under ZOO_KERNELS=numpy)
        expected = _fallback.product(left, right)
    with np.errstate(all="ignore"):
        assert got.dtype == np.float32 and got.shape == (rows, cols) and got.tobytes() == expected.tobytes()
        for r in range(rows if rows * rank * cols < 100_000 else 2):  # the spec's words, element by element
            for c in range(cols):
                want = _ordered_sum(left, right, r, c)
                assert got[r, c].tobytes() == (np.uint32(0x7FC00000).view(np.float32) if np.isnan(want) else want).tobytes()


def test_product_refuses_what_does_not_multiply():
    for call in (_native_calls.product, _fallback.product):
        with pytest.raises(ValueError, match=r"left \[2, 3\] and right \[4, 5\] do not multiply"):
            call(np.zeros((2, 3), np.float32), np.zeros((4, 5), np.float32))
        with pytest.raises(ValueError, match="right must be a 2-D float32 array, got float64"):
            call(np.zeros((2, 3), np.float32), np.zeros((3, 5)))
    with pytest.raises(ValueError, match="left must hold rows x rank float32"):
        native.product(b"\0" * 8, b"\0" * 12, 2, 3, 1)


SECTION_CASES = [  # (name, words, word bytes, float, symbol bits)
    ("bf16", lambda n: bf16_words(n).view(np.uint8), 2, True, 10),
    ("fp16", lambda n: np.random.default_rng(n).normal(0, 0.02, n).astype(np.float16).view(np.uint8), 2, True, 8),
    ("fp32", lambda n: np.random.default_rng(n).normal(0, 0.02, n).astype(np.float32).view(np.uint8), 4, True, 10),
    ("bf16 in fp32", lambda n: (bf16_words(n).astype(np.uint32) << 16).view(np.uint8), 4, True, 10),
    ("fp8", lambda n: random_storage("F8_E4M3", (n,), seed=n).view(np.uint8).reshape(-1), 1, True, 8),
    ("bytes", lambda n: np.random.default_rng(n).geometric(0.3, n).clip(0, 255).astype(np.uint8), 1, False, 8),
    ("one value", lambda n: np.full(n, 9, np.uint8), 1, False, 8),
    ("uniform", lambda n: np.random.default_rng(n).integers(0, 256, n).astype(np.uint8), 1, False, 8),
    ("wide alphabet", lambda n: np.random.default_rng(n).integers(0, 2**16, n).astype(np.uint16).view(np.uint8), 2, True, 12),
    # blocks of 128 whose raw bits pack to 6 bits (bf16 origin) beside blocks that need 21
    ("mixed widths", lambda n: mixed_fp32(n), 4, True, 10),
    # symbols of a byte at most: the decoder's table holds them in place of ranks (no lookup)
    ("fp32, byte symbols", lambda n: np.random.default_rng(n).normal(0, 0.02, n).astype(np.float32).view(np.uint8), 4, True, 8),
    ("int16, byte symbols", lambda n: np.random.default_rng(n).normal(0, 300, n).astype(np.int16).view(np.uint8), 2, False, 8),
]


def mixed_fp32(count):
    values = np.random.default_rng(count).normal(0, 0.02, count).astype(np.float32).view(np.uint32)
    rounded = (values >> 16) << 16
    narrow = (np.arange(count) // 128) % 3 == 1
    return np.where(narrow, rounded, values).astype("<u4").view(np.uint8)


@pytest.mark.parametrize("case", SECTION_CASES, ids=[c[0] for c in SECTION_CASES])
@pytest.mark.parametrize("count", [0, 1, 7, 31, 33, 127, 129, 255, 4095, 4097, 32767, 32769, 65537, 140001])
def test_sections_cross_native_numpy_and_isas(isa, case, count):
    _, make, word_bytes, is_float, symbol_bits = case
    words = make(count)
    coded = _native_calls.encode_section(words, word_bytes, is_float, symbol_bits)
    assert coded == _fallback_coder.encode_section(words, word_bytes, is_float, symbol_bits)  # identical archives
    assert len(coded) <= 1 + len(words)  # never more than the raw words and a kind byte
    for decode in (_native_calls.decode_section, _fallback_coder.decode_section):
        out, end = decode(b"xx" + coded, 2, count, word_bytes, is_float)
        assert end == 2 + len(coded) and out.tobytes() == words.tobytes()


@pytest.mark.parametrize("alphabet", [1, 2, 16, 17, 97, 128, 129, 256])
@pytest.mark.parametrize("word_bytes", [2, 4])
@pytest.mark.parametrize("is_float", [False, True], ids=["int", "float"])
def test_sections_of_every_alphabet_size(isa, alphabet, word_bytes, is_float):
    """Words whose 10-bit symbols number `alphabet`: AVX2 finds symbols by shuffles of 16-rank
    tables up to 128 of them, by gathers above, so both sides of each table's edge and of 128 are
    here (odd sizes with the symbol 0, which only rank 0 can hold)."""
    rng = np.random.default_rng(alphabet)
    symbols = np.sort(rng.choice(np.arange(1, 1024), alphabet, replace=False)).astype(np.uint64)
    if alphabet % 2:
        symbols[0] = 0
    bits = 8 * word_bytes
    keys = (symbols[rng.integers(0, alphabet, 9000)] << (bits - 10)) | rng.integers(0, 1 << (bits - 10), 9000).astype(np.uint64)
    if is_float:  # a float's key is its word rotated left one bit
        keys = (keys >> 1) | ((keys & 1) << (bits - 1))
    words = keys.astype(f"<u{word_bytes}").view(np.uint8)
    coded = _native_calls.encode_section(words, word_bytes, is_float, 10)
    assert coded == _fallback_coder.encode_section(words, word_bytes, is_float, 10)
    for decode in (_native_calls.decode_section, _fallback_coder.decode_section):
        out, _ = decode(coded, 0, 9000, word_bytes, is_float)
        assert out.tobytes() == words.tobytes()


def words_of(symbols, word_bytes, is_float, symbol_bits, seed=0):
    """Words whose symbols (top `symbol_bits` of each key) are `symbols`, with random low bits."""
    bits = 8 * word_bytes
    rng = np.random.default_rng(seed)
    keys = (symbols.astype(np.uint64) << (bits - symbol_bits)) | rng.integers(0, 1 << (bits - symbol_bits), len(symbols)).astype(np.uint64)
    if is_float:  # a float's key is its word rotated left one bit
        keys = (keys >> 1) | ((keys & 1) << (bits - 1))
    return keys.astype(f"<u{word_bytes}").view(np.uint8)


@pytest.mark.parametrize("span", [2, 127, 128, 129])
@pytest.mark.parametrize("zero", [False, True], ids=["", "and zero"])
@pytest.mark.parametrize("where", ["bottom", "middle", "top"])
@pytest.mark.parametrize("word_bytes", [2, 4])
def test_sections_whose_symbols_lie_in_a_window(isa, span, zero, where, word_bytes):
    """AVX-512 encoding looks the entries of a section whose symbols lie within 128 consecutive
    values (symbol 0 aside) up in registers, and gathers them otherwise: both sides of 128, with
    and without the symbol 0 outside the window, at the bottom, middle and top of the symbols.
    (Other instruction sets gather throughout: the same sections, the same bytes.)"""
    rng = np.random.default_rng(span + 7 * zero + word_bytes)
    first = {"bottom": int(not zero), "middle": 300, "top": 1024 - span}[where]
    symbols = rng.integers(first, first + span, 9000).astype(np.uint64)
    symbols[[0, 4444, 8999]] = first, first + span - 1, first  # both ends occur
    if zero:
        symbols[rng.integers(0, 9000, 50)] = 0
    words = words_of(symbols, word_bytes, True, 10, seed=span)
    coded = _native_calls.encode_section(words, word_bytes, True, 10)
    assert coded == _fallback_coder.encode_section(words, word_bytes, True, 10)
    for decode in (_native_calls.decode_section, _fallback_coder.decode_section):
        out, _ = decode(coded, 0, 9000, word_bytes, True)
        assert out.tobytes() == words.tobytes()


@pytest.mark.parametrize("word_bytes, is_float, symbol_bits", [(1, False, 8), (2, False, 8), (4, False, 8), (2, True, 10), (2, True, 12),
                                                             (4, True, 12)])
@pytest.mark.parametrize("count", [_fallback_coder.SAMPLE_FROM - 1, _fallback_coder.SAMPLE_FROM, 3 * _fallback_coder.SAMPLE_FROM + 13])
def test_sampled_counting_keeps_symbols_only_unsampled_words_hold(isa, word_bytes, is_float, symbol_bits, count):
    """Long sections count every fourth word's symbol: a symbol that only the other words hold, in
    the unrolled loop and in the tail, still gets a frequency (else it could not be coded), and
    native and numpy agree on every count, also where more than 256 symbols make the coder merge them."""
    rng = np.random.default_rng(count + word_bytes + symbol_bits)
    bits = 8 * word_bytes
    usual = 300 if symbol_bits == 12 else 40  # 300 of 4096: merged to fewer bits until at most 256 are used
    symbols = rng.integers(0, usual, count).astype(np.uint64)
    # unsampled positions (1, 2, 3 mod 4), a sampled one, and the last words, which the tail loop counts
    rare = [(1, 1), (2, 2), (3, 3), (4 * 1000 + 3, 4), (8, 5), (count - 1, 6), (count - 2, 7), (count - 4, 8)]
    for position, offset in rare:
        symbols[position] = (1 << symbol_bits) - offset
    keys = (symbols << (bits - symbol_bits)) | rng.integers(0, 1 << (bits - symbol_bits), count).astype(np.uint64)
    if is_float:  # a float's key is its word rotated left one bit
        keys = (keys >> 1) | ((keys & 1) << (bits - 1))
    words = keys.astype(f"<u{word_bytes}").view(np.uint8)
    coded = _native_calls.encode_section(words, word_bytes, is_float, symbol_bits)
    assert coded[0] == 1 and coded == _fallback_coder.encode_section(words, word_bytes, is_float, symbol_bits)
    for decode in (_native_calls.decode_section, _fallback_coder.decode_section):
        out, _ = decode(coded, 0, count, word_bytes, is_float)
        assert out.tobytes() == words.tobytes()


def coded_alphabet(coded):
    """The symbols a coded section's header lists (docs/FORMAT.md: deltas and frequencies as varints)."""
    reader = _fallback_coder._Reader(memoryview(coded), 0)
    assert reader.number("<B") == _fallback_coder.KIND_CODED
    reader.number("<B")  # the symbol width
    symbols = []
    for rank in range(reader.number("<H")):
        delta = reader.varint()
        reader.varint()  # the frequency
        symbols.append(delta if rank == 0 else symbols[-1] + 1 + delta)
    return symbols


SAMPLED_LAYOUTS = [(1, False, 8), (1, True, 8), (2, False, 8), (2, False, 12), (2, True, 10), (2, True, 12), (4, False, 8), (4, True, 10),
                   (4, True, 12)]
LIMIT = _fallback_coder.GAP_LIMIT
GAP_CASES = {"no gaps": (0, False), "as many as the limit": (LIMIT, False), "one more": (LIMIT + 1, False),
             "as many as the limit, skewed": (LIMIT, True)}


@pytest.mark.parametrize("word_bytes, is_float, symbol_bits", SAMPLED_LAYOUTS)
@pytest.mark.parametrize("case, zero, where", [(case, zero, "body") for case in GAP_CASES for zero in ("none", "unsampled")]
                         + [("as many as the limit", "none", "tail"), ("one more", "unsampled", "tail")])
def test_sampled_counting_fills_small_gaps_and_finds_the_rest(isa, word_bytes, is_float, symbol_bits, case, zero, where):
    """A long section's symbols that no counted word holds count 1 without a pass to find them
    when at most 32 of those between the smallest nonzero symbol and the largest went uncounted:
    every symbol between counts, including those that occur nowhere. With 33, only those that
    occur do, and so where one symbol holds more than an eighth of the counted words (each slot
    would cost that section more). The symbol 0 counts where it occurs, and only there, even in
    uncounted words alone. The symbols found in uncounted words alone, both ends of the range among
    them, lie in the vector loops' body or in the scalar tail of the last slice."""
    gaps, skewed = GAP_CASES[case]
    count = _fallback_coder.SAMPLE_FROM + 29  # slices of 32,768 words, then 29 for the scalar tail
    rng = np.random.default_rng(gaps + word_bytes + symbol_bits)
    first, span = 60, 120
    between = np.arange(first, first + span)
    interior = rng.permutation(between[1:-1])
    # occurring in uncounted words only: both ends of the range and some between; occurring nowhere: others between
    uncounted_only = np.concatenate([between[[0, -1]], interior[: gaps // 2 - 2]]) if gaps else between[:0]
    absent = interior[max(gaps // 2 - 2, 0): gaps - 2] if gaps else between[:0]
    assert len(uncounted_only) + len(absent) == gaps
    symbols = rng.choice(np.setdiff1d(between, np.concatenate([absent, uncounted_only])), count)
    if skewed:  # more than 1/SPREAD of the counted words hold one symbol
        symbols[:: _fallback_coder.SPREAD - 1] = symbols[0]
    unsampled = np.flatnonzero(np.arange(count) % 4)
    if where == "tail":  # the range's ends in the last two of these words, which every table leaves to its scalar loop
        symbols[unsampled[-len(uncounted_only):]] = uncounted_only[::-1]
    else:
        symbols[rng.choice(unsampled[:-100], len(uncounted_only), replace=False)] = uncounted_only
    if zero == "unsampled":
        symbols[np.flatnonzero(np.arange(count) % 4)[1000]] = 0
    words = words_of(symbols, word_bytes, is_float, symbol_bits, seed=gaps)
    coded = _native_calls.encode_section(words, word_bytes, is_float, symbol_bits)
    assert coded == _fallback_coder.encode_section(words, word_bytes, is_float, symbol_bits)
    occurring = set(np.unique(symbols).tolist())
    expected = occurring | set(range(first, first + span)) if gaps <= LIMIT and not skewed else occurring
    assert coded_alphabet(coded) == sorted(expected)
    for decode in (_native_calls.decode_section, _fallback_coder.decode_section):
        out, _ = decode(coded, 0, count, word_bytes, is_float)
        assert out.tobytes() == words.tobytes()


@pytest.mark.parametrize("span, zero", [(256, False), (257, False), (255, True), (256, True)])
def test_sampled_counting_fills_no_range_wider_than_the_alphabet(isa, span, zero):
    """Filling the gaps of a range whose symbols, with 0 where it occurs, would number more than
    256 would make the coder merge symbols: such a section finds the symbols that occur instead."""
    count = _fallback_coder.SAMPLE_FROM + 4
    occurring = np.setdiff1d(np.arange(1, span + 1), [100, 200])  # two gaps, and the largest only uncounted
    symbols = np.ones(count, np.int64)
    symbols[::4] = np.resize(occurring[:-1], len(symbols[::4]))  # the counted words
    symbols[1] = span
    if zero:
        symbols[2] = 0
    words = words_of(symbols, 2, True, 12)
    coded = _native_calls.encode_section(words, 2, True, 12)
    assert coded == _fallback_coder.encode_section(words, 2, True, 12)
    filled = list(range(1, span + 1)) if span + zero <= 256 else occurring.tolist()
    assert coded[1] == 12 and coded_alphabet(coded) == [0] * zero + filled


@pytest.mark.parametrize("trial", range(12))
def test_frequency_rounding_matches_numpy(isa, trial):
    """Rare symbols rounded up to one slot (which the largest then give back), equal remainders
    (ties go to the lower rank), skewed counts: the table, hence the bytes, are numpy's."""
    rng = np.random.default_rng(trial)
    for kind in range(3):
        n_symbols = int(rng.integers(2, 257))
        if kind == 0:
            counts = np.ones(n_symbols, np.int64)
            counts[: rng.integers(1, 4)] = rng.integers(10_000, 100_000)
        elif kind == 1:
            counts = np.full(n_symbols, int(rng.integers(1, 50)), np.int64)
        else:
            counts = rng.geometric(0.05, n_symbols).astype(np.int64)
        words = np.repeat(rng.permutation(256)[:n_symbols].astype(np.uint8), counts)
        rng.shuffle(words)
        assert _native_calls.encode_section(words, 1, False, 8) == _fallback_coder.encode_section(words, 1, False, 8)


def test_bf16_origin_fp32_costs_what_bf16_costs():
    words = bf16_words(1 << 16, seed=3)
    as_bf16 = _native_calls.encode_section(words.view(np.uint8), 2, True, 10)
    as_fp32 = _native_calls.encode_section((words.astype(np.uint32) << 16).view(np.uint8), 4, True, 10)
    assert len(as_fp32) < 1.01 * len(as_bf16)
    assert len(as_fp32) / (4 * len(words)) < 0.36


@pytest.mark.parametrize("dtype", sorted(d for d in DTYPES if DTYPES[d].storage))
@pytest.mark.parametrize("size", [0, 1, 7, 255, 1000])
def test_fprans_round_trips_every_dtype(dtype, size):
    chunk = random_storage(dtype, (size,), seed=size).reshape(-1).view(np.uint8)
    codec = FpRans()
    streams = codec.encode(chunk, dtype)
    assert codec.decode([bytes(s) for s in streams], dtype, size).tobytes() == chunk.tobytes()


def test_fprans_beats_bytegroup_zstd_on_bf16():
    from zoo.codecs.lossless.bytegroup import ByteGroup
    from zoo.codecs.lossless.zstd import Zstd

    chunk = bf16_words(1 << 18, seed=5).view(np.uint8)
    ours = len(FpRans().encode(chunk, "BF16")[0])
    theirs = sum(len(Zstd().encode(plane)) for plane in ByteGroup().encode(chunk, "BF16"))
    assert ours < 0.95 * theirs


def _floats(dtype, values):
    values = np.asarray(values, dtype=np.float32)
    if dtype == "BF16":
        return ((values.view(np.uint32) + 0x8000) >> 16).astype(np.uint16).view(np.uint8)
    return values.astype({"F32": np.float32, "F16": np.float16}[dtype]).view(np.uint8)


@pytest.mark.parametrize("dtype", ["F32", "BF16", "F16"])
def test_fprans_codes_constant_and_pruned_floats_as_byte_planes(dtype, monkeypatch):
    """The words layout packs each remainder raw: a constant of 0.1 cost 22 bits a value in fp32,
    zeros in a pruned matrix the remainder width each. Such chunks (one symbol holding a fifth of
    the words or more) are coded as byte planes too and the shorter kept, by numpy as by C."""
    rng = np.random.default_rng(7)
    count = 1 << 18
    weights = rng.normal(0, 0.02, count)
    cases = {"constant": np.full(count, 0.1), "zeros": np.zeros(count), "pruned": weights * (rng.random(count) >= 0.9),
             "half pruned": weights * (rng.random(count) >= 0.5), "dense": weights}
    codec = FpRans()
    header = struct.pack("<BBII", 1, 1, 0, 0)  # a chunk's header whose stream's two lengths the codec fills in
    for name, values in cases.items():
        chunk = _floats(dtype, values)
        stream = codec.encode(chunk, dtype)[0]
        words = _kernels.encode_section(chunk, 4 if dtype == "F32" else 2, True, SYMBOL_BITS[dtype], prefix=b"\0")
        assert stream[0] == (0 if name == "dense" else 1), name  # layout 0: words; 1: byte planes
        assert len(stream) <= len(words)
        assert codec.decode([stream], dtype, count).tobytes() == chunk.tobytes()
        assert codec.encode_after(header, chunk, dtype) == header[:2] + struct.pack("<II", len(stream), len(stream)) + stream
        with monkeypatch.context() as numpy_only:
            numpy_only.setattr(_kernels, "encode_section", _fallback_coder.encode_section)
            numpy_only.setattr(_kernels, "split_planes", _fallback.split_planes)
            assert codec.encode(chunk, dtype)[0] == stream, name
    assert len(codec.encode(_floats(dtype, cases["constant"]), dtype)[0]) < 32
    pruned = _floats(dtype, cases["pruned"])
    assert len(codec.encode(pruned, dtype)[0]) < 0.5 * len(_kernels.encode_section(pruned, 4 if dtype == "F32" else 2, True, SYMBOL_BITS[dtype]))


def test_the_top_frequency_read_with_numpy_is_the_tables_largest():
    from zoo.codecs.lossless.fprans import _top_frequency

    def parsed(section):  # the table as docs/FORMAT.md spells it, varint by varint
        count, position, best = struct.unpack_from("<H", section, 2)[0], 4, 0
        for _ in range(count):
            for pair in range(2):
                value = shift = 0
                while True:
                    value |= (section[position] & 0x7F) << shift
                    shift, position = shift + 7, position + 1
                    if section[position - 1] < 0x80:
                        break
                best = max(best, value + 1) if pair else best
        return best

    rng = np.random.default_rng(5)
    for trial in range(60):
        count = int(rng.integers(300, 100000))
        values = (rng.standard_normal(count) * 10 ** rng.uniform(-4, 2)).astype(np.float32) * (rng.random(count) > rng.random())
        section = _kernels.encode_section(values.view(np.uint8), 4, True, 10)
        if section[0] == 1 and struct.unpack_from("<H", section, 2)[0] > 1:
            assert _top_frequency(section, 0) == parsed(section), trial


def test_rans_codec_round_trips_and_rejects_damage():
    data = np.random.default_rng(0).geometric(0.2, 5000).clip(0, 255).astype(np.uint8).tobytes()
    codec = Rans()
    coded = codec.encode(data)
    assert len(coded) < len(data) and codec.decode(coded, len(data)) == data
    with pytest.raises(FormatError):
        codec.decode(coded[:-3], len(data))
    with pytest.raises(FormatError):
        codec.decode(coded + b"\0", len(data))


def hostile_variants(payload: bytes, seed: int = 0):
    """Truncations, single-bit flips and overwritten bytes of a payload."""
    rng = np.random.default_rng(seed)
    for cut in sorted({0, 1, 2, 3, 5, len(payload) // 2, len(payload) - 1}):
        yield payload[:cut]
    for _ in range(150):
        damaged = bytearray(payload)
        position = int(rng.integers(0, len(payload)))
        if rng.random() < 0.5:
            damaged[position] ^= 1 << int(rng.integers(0, 8))
        else:
            damaged[position] = int(rng.integers(0, 256))
        yield bytes(damaged)


@pytest.mark.parametrize("case", SECTION_CASES[:5], ids=[c[0] for c in SECTION_CASES[:5]])
def test_damaged_sections_fail_cleanly_on_every_path(isa, case):
    _, make, word_bytes, is_float, symbol_bits = case
    words = make(3000)
    coded = _native_calls.encode_section(words, word_bytes, is_float, symbol_bits)
    for damaged in hostile_variants(coded):
        results = []
        for decode in (_native_calls.decode_section, _fallback_coder.decode_section):
            try:
                out, end = decode(damaged, 0, 3000, word_bytes, is_float)
                results.append((out.tobytes(), end))
            except ValueError:
                results.append("error")
        assert results[0] == results[1]  # the numpy twin accepts and rejects exactly the same payloads


@pytest.mark.parametrize("seed", range(4))
def test_crc32_every_isa_matches_zlib(isa, seed):
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, 300_000, dtype=np.uint8).tobytes()
    # every length up to a few fold widths, then random lengths and offsets (unaligned starts)
    lengths = list(range(0, 600)) + [int(n) for n in rng.integers(600, 200_000, 40)]
    for length in lengths:
        offset = int(rng.integers(0, 64))
        piece = data[offset:offset + length]
        start = int(rng.integers(0, 2**32))
        assert native.crc32(piece) == zlib.crc32(piece), (length, offset)
        assert native.crc32(piece, start) == zlib.crc32(piece, start), (length, offset, start)


def test_crc32_chains_and_takes_any_buffer(isa):
    data = bytes(range(256)) * 40
    assert native.crc32(data[5000:], native.crc32(data[:5000])) == zlib.crc32(data)
    assert native.crc32(np.frombuffer(data, np.uint8)) == native.crc32(memoryview(data)) == zlib.crc32(data)
    with pytest.raises(TypeError):
        native.crc32("text")


def test_decode_rejects_bad_arguments():
    with pytest.raises(ValueError):
        native.decode_section(b"\0", 5, 1, 1, False)  # offset past the end
    with pytest.raises(ValueError):
        native.decode_section(b"\0", 0, 1, 3, False)  # no 3-byte words
    with pytest.raises(ValueError):
        native.encode_section(b"abc", 2, False, 8)  # not whole words


def test_forced_paths_and_env_report():
    script = "from zoo import kernels; print(kernels.PATH)"
    for path in ("numpy", *ISAS):
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env={**_env(), "ZOO_KERNELS": path})
        assert done.stdout.strip() == path, done.stderr
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env={**_env(), "ZOO_KERNELS": "sse9"})
    assert done.returncode != 0 and "ZOO_KERNELS" in done.stderr


def _env():
    import os

    return {k: v for k, v in os.environ.items() if k != "ZOO_KERNELS"}


def test_auto_takes_the_gather_free_tables_on_amd_only():
    """Unforced, zoo runs the widest table the CPU has; on AMD's CPUs, whose gathers are slower, of
    the two AVX-512 tables avx512-ymm (two 8-lane gathers for one 16-lane one), of the two AVX2
    tables avx2-loads (scalar loads for the 8-lane gather); avx512 and avx2 on any other."""
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    vendor = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("vendor_id")), "")
    amd = vendor in ("AuthenticAMD", "HygonGenuine")
    if "avx512" in ISAS:
        assert native.best_isa() == ("avx512-ymm" if amd else "avx512")
    elif "avx2" in ISAS:
        assert native.best_isa() == ("avx2-loads" if amd else "avx2")
    else:
        assert native.best_isa() == "scalar"
    done = subprocess.run([sys.executable, "-c", "from zoo import kernels; print(kernels.PATH)"], capture_output=True, text=True, env=_env())
    assert done.stdout.strip() == native.best_isa(), done.stderr


def test_info_lists_cpu_features():
    info = _kernels.info()
    if info["kernels"] != "numpy":
        assert "scalar" in info["available"] and isinstance(info["cpu_features"], list)


def test_symbol_bits_cover_every_float_dtype_but_f64():
    assert set(SYMBOL_BITS) == {d for d in DTYPES if DTYPES[d].is_float} - {"F64"}
