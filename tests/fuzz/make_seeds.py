"""Writes the seed corpus: valid sections of each kind for fuzz_decode, raw words for fuzz_roundtrip,
packed index streams for fuzz_bitpack. Run once; the files are kept in git (corpus/decode,
corpus/roundtrip, corpus/bitpack)."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from zoo.kernels.fallback_coder import encode_section

HERE = Path(__file__).parent
WORD_CODE = {1: 0, 2: 1, 4: 2}


def cases():
    rng = np.random.default_rng(7)
    values = rng.normal(0, 0.02, 3000).astype(np.float32)
    bf16 = ((values.view(np.uint32) + 0x8000) >> 16).astype(np.uint16)
    yield "bf16", bf16.view(np.uint8), 2, True, 10
    yield "fp16", values.astype(np.float16).view(np.uint8), 2, True, 8
    yield "fp32", values.view(np.uint8), 4, True, 10
    yield "fp32-from-bf16", (bf16.astype(np.uint32) << 16).view(np.uint8), 4, True, 10
    yield "bytes", rng.geometric(0.3, 3000).clip(0, 255).astype(np.uint8), 1, False, 8
    yield "constant", np.full(500, 3, np.uint8), 1, False, 8
    yield "uniform", rng.integers(0, 256, 2000).astype(np.uint8), 1, False, 8
    yield "wide", rng.integers(0, 2**16, 1000).astype(np.uint16).view(np.uint8), 2, True, 12


def bitpack_cases():
    """Packed indices at widths either side of a byte, of awkward counts; bytes 1 and 2 of the
    header ask fuzz_bitpack to unpack a range from the middle of the stream as well."""
    rng = np.random.default_rng(11)
    # 2 bits x 4500 passes 4096 indices, unpack_indices' batch (tests/test_bitpack.py passes it above 8 bits)
    for bits, count in ((1, 1001), (3, 127), (4, 64), (7, 333), (8, 255), (9, 129), (12, 77), (13, 1001), (16, 31), (2, 4500)):
        values = rng.integers(0, 1 << bits, count)
        stream = np.packbits(((values[:, None] >> np.arange(bits)) & 1).astype(np.uint8).reshape(-1), bitorder="little")
        header = bytes([(bits - 1) | (16 if bits > 8 else 0), 37, 200])  # two-byte indices above 8 bits
        yield f"{bits}-bit", header + stream.tobytes()


def main() -> None:
    for folder in ("decode", "roundtrip", "bitpack"):
        (HERE / "corpus" / folder).mkdir(parents=True, exist_ok=True)
    for name, words, word_bytes, is_float, symbol_bits in cases():
        count = len(words) // word_bytes
        section = encode_section(words, word_bytes, is_float, symbol_bits)
        prefix = struct.pack("<BH", WORD_CODE[word_bytes] | (4 if is_float else 0), count)
        (HERE / "corpus" / "decode" / name).write_bytes(prefix + section)
        choice = WORD_CODE[word_bytes] | (4 if is_float else 0) | ((symbol_bits - 8) << 3)
        (HERE / "corpus" / "roundtrip" / name).write_bytes(bytes([choice]) + words.tobytes())
    for name, data in bitpack_cases():
        (HERE / "corpus" / "bitpack" / name).write_bytes(data)


if __name__ == "__main__":
    main()
