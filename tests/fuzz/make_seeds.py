"""Writes the seed corpus: valid sections of each kind for fuzz_decode, raw words for fuzz_roundtrip.
Run once; the files are kept in git (corpus/decode, corpus/roundtrip)."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from zoo._fallback_coder import encode_section

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


def main() -> None:
    for folder in ("decode", "roundtrip"):
        (HERE / "corpus" / folder).mkdir(parents=True, exist_ok=True)
    for name, words, word_bytes, is_float, symbol_bits in cases():
        count = len(words) // word_bytes
        section = encode_section(words, word_bytes, is_float, symbol_bits)
        prefix = struct.pack("<BH", WORD_CODE[word_bytes] | (4 if is_float else 0), count)
        (HERE / "corpus" / "decode" / name).write_bytes(prefix + section)
        choice = WORD_CODE[word_bytes] | (4 if is_float else 0) | ((symbol_bits - 8) << 3)
        (HERE / "corpus" / "roundtrip" / name).write_bytes(bytes([choice]) + words.tobytes())


if __name__ == "__main__":
    main()
