"""Baselines for bench_lossy.py: what zoo's lossy codecs are measured against.

* ``rtn-int8-g128``, ``rtn-int4-g128``: round to nearest on an asymmetric grid per group of 128
  weights along a row; each group stores an fp16 scale and a zero point of the same width as
  the weights (as GPTQ-style checkpoints pack them).
* ``q8_0``, ``q4_0``: the GGUF formats, through the gguf package's numpy quantizers (blocks of
  32 weights with an fp16 scale: 8.5 and 4.5 bits per weight).

Each is applied to the same tensors zoo's lossy stages select by default
(zoo.codecs.selection: float matrices, not norms, biases or position ids); the others stay as
they are. `apply` writes the dequantized model (for evaluation) and returns the size the
quantized file would have: the safetensors header, quantized tensors at their exact stored
size, the rest at their original size.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np

from zoo.codecs.selection import selected
from zoo.dtypes import from_float32, to_float32

GROUP = 128


def rtn(values: np.ndarray, bits: int, group: int = GROUP) -> tuple[np.ndarray, int]:
    """(dequantized values, stored bits) of round-to-nearest with one scale and zero per group."""
    rows, cols = values.shape
    padded = np.pad(values, ((0, 0), (0, -cols % group)), mode="edge").reshape(rows, -1, group).astype(np.float64)
    low, high = padded.min(axis=2, keepdims=True), padded.max(axis=2, keepdims=True)
    levels = (1 << bits) - 1
    scale = ((high - low) / levels).astype(np.float16).astype(np.float64)  # stored as fp16
    scale = np.where(scale > 0, scale, 1.0)
    zero = np.clip(np.round(-low / scale), 0, levels)
    codes = np.clip(np.round(padded / scale) + zero, 0, levels)
    approx = ((codes - zero) * scale).reshape(rows, -1)[:, :cols]
    groups = rows * padded.shape[1]
    return approx.astype(np.float32), rows * cols * bits + groups * (16 + bits)


def _gguf(kind: str) -> Callable[[np.ndarray], tuple[np.ndarray, int]]:
    def quantize(values: np.ndarray) -> tuple[np.ndarray, int]:
        from gguf import GGMLQuantizationType, quants

        kind_id = getattr(GGMLQuantizationType, kind)
        packed = quants.quantize(np.ascontiguousarray(values, dtype=np.float32), kind_id)
        return quants.dequantize(packed, kind_id).astype(np.float32), packed.nbytes * 8

    return quantize


METHODS: dict[str, tuple[Callable[[np.ndarray], tuple[np.ndarray, int]], int]] = {
    # name: (quantizer, row length it needs to divide)
    "rtn-int8-g128": (lambda values: rtn(values, 8), 1),
    "rtn-int4-g128": (lambda values: rtn(values, 4), 1),
    "q8_0": (_gguf("Q8_0"), 32),
    "q4_0": (_gguf("Q4_0"), 32),
}


def _read(path: Path) -> tuple[int, dict, bytes]:
    data = path.read_bytes()
    header_length = struct.unpack("<Q", data[:8])[0]
    return header_length, json.loads(data[8:8 + header_length]), data[8 + header_length:]


def apply(method: str, source: Path, destination: Path) -> tuple[int, int]:
    """Quantize every selected tensor of the safetensors file `source` with `method`; write the
    dequantized model to `destination`. Returns (bytes the quantized file takes, parameters)."""
    quantize, multiple = METHODS[method]
    header_length, header, body = _read(source)
    size = 8 + header_length
    parameters = 0
    out = bytearray(body)
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype, shape = info["dtype"], tuple(info["shape"])
        start, end = info["data_offsets"]
        size_here = end - start
        if dtype in ("F32", "F16", "BF16"):
            parameters += int(np.prod(shape))
        storage = {"F32": "<f4", "F16": "<f2", "BF16": "<u2"}.get(dtype)
        count = int(np.prod(shape))
        if storage and selected(name, dtype, shape) and (count // shape[0]) % multiple == 0:
            raw = np.frombuffer(body, dtype=storage, count=count, offset=start)
            values = to_float32(raw, dtype).reshape(shape[0], -1)
            approx, bits = quantize(values)
            out[start:end] = from_float32(approx, dtype).tobytes()
            size_here = (bits + 7) // 8
        size += size_here
    destination.write_bytes(source.read_bytes()[:8 + header_length] + bytes(out))
    return size, parameters
