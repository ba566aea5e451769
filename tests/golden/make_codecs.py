"""Writes the golden archives of every codec (format v1, into v1/) and of a model stored against a
base (format v2, into v2/finetune/, its base model beside it). Run once, from anywhere:

    python3 tests/golden/make_codecs.py

The archives are never regenerated: an archive whose files all exist is left as it is, one with
only some of its files is refused, and a format change adds a new version folder instead.

Only public names (`zoo.compress`, `zoo.open`, `zoo.report_of`) are used, and the safetensors
inputs are written here with numpy, so the script does not follow the package's internal layout.
Beside each archive NAME.zoo go NAME.sha256.json (the sha256 of each file `zoo.decompress` writes,
keyed by file name, as make_v1.py writes it) and NAME.expected.json: the spec given, the pipeline
as the header records it and, per tensor key, dtype, shape, the sha256 of the decoded tensor's raw
little-endian storage (what `get_tensor(key, framework="pt")` holds) and of the numpy array
`get_tensor(key)` returns (bf16 and fp8 widened to float32). For a lossless archive these are the original bytes; for a lossy one,
what this version decodes, which every later version must decode to the same bits.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

import zoo

GOLDEN = Path(__file__).resolve().parent
V1 = GOLDEN / "v1"
# A folder of its own, not v2/finetune.zoo: tests/container/test_format.py decompresses every
# v*/*.zoo with no base, which an archive stored against one refuses (tests/test_golden.py passes it).
V2_FINETUNE = GOLDEN / "v2" / "finetune"
BASE_NAME = "base.safetensors"  # the v2 archive's base hint: the file beside it, by a relative name

Tensors = dict[str, tuple[str, np.ndarray]]  # name -> (safetensors dtype, raw storage)


# -- inputs ------------------------------------------------------------------------------------


def write_safetensors(path: Path, tensors: Tensors) -> Path:
    """A safetensors file from raw storage (header padded to 8 bytes, data in the given order)."""
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, (dtype, raw) in tensors.items():
        size = np.ascontiguousarray(raw).nbytes
        header[name] = {"dtype": dtype, "shape": list(raw.shape), "data_offsets": [offset, offset + size]}
        offset += size
    body = json.dumps(header, separators=(",", ":")).encode()
    body += b" " * (-len(body) % 8)
    path.write_bytes(struct.pack("<Q", len(body)) + body + b"".join(np.ascontiguousarray(raw).tobytes() for _, raw in tensors.values()))
    return path


def bf16(values: np.ndarray) -> np.ndarray:
    """BF16 storage (uint16) of finite float32 values, rounded to nearest even."""
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32).astype(np.uint64)
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)


def fp8(rng: np.random.Generator, shape: tuple[int, ...], mantissa_bits: int, exponents: tuple[int, int]) -> np.ndarray:
    """FP8 storage bytes of weight-like values: random sign and mantissa, biased exponents in a
    range that holds no NaN or infinity (so widening them to float32 is exact everywhere)."""
    sign = rng.integers(0, 2, size=shape, dtype=np.uint8)
    exponent = rng.integers(exponents[0], exponents[1] + 1, size=shape, dtype=np.uint8)
    mantissa = rng.integers(0, 1 << mantissa_bits, size=shape, dtype=np.uint8)
    return (sign << 7) | (exponent << mantissa_bits) | mantissa


def weights(rng: np.random.Generator, shape: tuple[int, ...], scale: float = 0.02) -> np.ndarray:
    return rng.normal(0, scale, size=shape).astype(np.float32)


def lossless_tensors(rng: np.random.Generator) -> tuple[Tensors, Tensors]:
    """Two shards with every storable dtype and the cases fprans codes differently: Gaussian
    floats (coded), floats with 16 zero low bits (trailing zeros dropped), a constant (one
    symbol), uniform bytes (stored verbatim), integers (byte planes), a scalar, an empty tensor."""
    first: Tensors = {
        "embed.weight": ("BF16", bf16(weights(rng, (128, 64)))),
        "layers.0.attn.qkv.weight": ("F32", weights(rng, (48, 64))),
        "layers.0.mlp.up.weight": ("F16", weights(rng, (64, 64)).astype(np.float16)),
        "layers.0.mlp.down.weight": ("F32", (bf16(weights(rng, (64, 48))).astype(np.uint32) << 16).view(np.float32)),
        "layers.0.norm.weight": ("F32", np.ones(64, dtype=np.float32)),
        "layers.0.attn.out.weight": ("F8_E4M3", fp8(rng, (32, 64), 3, (1, 8))),
        "layers.0.mlp.gate.weight": ("F8_E5M2", fp8(rng, (16, 64), 2, (8, 15))),
        "rotary.inv_freq": ("F64", (1.0 / 10000 ** (np.arange(0, 32, 2) / 32)).astype(np.float64)),
    }
    second: Tensors = {
        "lm_head.weight": ("BF16", bf16(weights(rng, (64, 48)))),
        "position_ids": ("I64", np.arange(96, dtype=np.int64).reshape(1, 96)),
        "token_counts": ("I32", rng.integers(0, 5000, size=200).astype(np.int32)),
        "quantized.weight": ("I8", rng.integers(-40, 41, size=(16, 32)).astype(np.int8)),
        "quantized.zeros": ("I16", rng.integers(-300, 300, size=64).astype(np.int16)),
        "codes": ("U8", rng.integers(0, 256, size=1024, dtype=np.uint8)),
        "bucket_ids": ("U16", rng.integers(0, 1000, size=64).astype(np.uint16)),
        "hashes": ("U32", rng.integers(0, 1 << 32, size=16, dtype=np.uint64).astype(np.uint32)),
        "offsets": ("U64", np.arange(0, 160, 10, dtype=np.uint64)),
        "attention_mask": ("BOOL", (rng.random((8, 12)) < 0.7).astype(np.uint8)),
        "logit_scale": ("F32", np.array(14.25, dtype=np.float32)),
        "empty": ("F16", np.zeros((0, 4), dtype=np.float16)),
    }
    return first, second


def lossless_folder(scratch: Path) -> Path:
    model = scratch / "model"
    model.mkdir()
    first, second = lossless_tensors(np.random.default_rng(20240501))
    write_safetensors(model / "model-00001-of-00002.safetensors", first)
    write_safetensors(model / "model-00002-of-00002.safetensors", second)
    (model / "config.json").write_text(json.dumps({"model_type": "golden", "hidden_size": 64}, indent=2) + "\n")
    return model


def lossy_tensors(rng: np.random.Generator) -> Tensors:
    """Matrices in each float dtype a lossy stage takes (a conv kernel among them), beside the
    tensors every stage leaves alone: a norm, a bias, integer position ids."""
    return {
        "embed.weight": ("BF16", bf16(weights(rng, (40, 32)))),
        "layers.0.attn.q.weight": ("F32", weights(rng, (32, 48))),
        "layers.0.attn.q.bias": ("F32", weights(rng, (32,))),
        "layers.0.mlp.up.weight": ("BF16", bf16(weights(rng, (64, 32)))),
        "layers.0.mlp.down.weight": ("F16", weights(rng, (32, 64)).astype(np.float16)),
        "layers.0.norm.weight": ("F32", 1 + weights(rng, (48,))),
        "conv.weight": ("F32", weights(rng, (8, 4, 3, 3), 0.1)),
        "position_ids": ("I64", np.arange(16, dtype=np.int64).reshape(1, 16)),
    }


def lossy_folder(scratch: Path) -> Path:
    model = scratch / "model"
    model.mkdir()
    write_safetensors(model / "model.safetensors", lossy_tensors(np.random.default_rng(7)))
    (model / "config.json").write_text(json.dumps({"model_type": "golden", "hidden_size": 32}, indent=2) + "\n")
    return model


def low_rank_folder(scratch: Path) -> Path:
    """Matrices of rank 1 and 2, plus a full-rank one that lowrank leaves whole. The factors of
    the rank-2 ones are BF16 and F16, so each product term is exact in float32 and the decoded
    bits do not depend on the BLAS's summation order (F32 factors of rank above 1 would: the
    format fixes the float32 product, not the order of its sums)."""
    rng = np.random.default_rng(11)
    rank2 = lambda rows, cols: weights(rng, (rows, 2), 0.2) @ weights(rng, (2, cols), 0.2)  # noqa: E731
    tensors: Tensors = {
        "layers.0.attn.q.weight": ("BF16", bf16(rank2(48, 40))),
        "layers.0.mlp.up.weight": ("F16", rank2(64, 32).astype(np.float16)),
        "layers.0.mlp.down.weight": ("F32", np.outer(weights(rng, (32,), 0.2), weights(rng, (64,), 0.2)).astype(np.float32)),
        "embed.weight": ("F32", weights(rng, (24, 16))),
        "layers.0.norm.weight": ("F32", 1 + weights(rng, (40,))),
    }
    model = scratch / "model"
    model.mkdir()
    write_safetensors(model / "model.safetensors", tensors)
    return model


def torch_checkpoint(scratch: Path) -> Path:
    import torch

    rng = np.random.default_rng(3)
    state = {
        "layers.0.weight": torch.from_numpy(bf16(weights(rng, (32, 48)))).view(torch.bfloat16),
        "layers.0.bias": torch.from_numpy(weights(rng, (32,))),
        "head.weight": torch.from_numpy(weights(rng, (16, 32)).astype(np.float16)),
        "steps": torch.arange(12),
    }
    torch.save(state, scratch / "pytorch_model.bin")
    return scratch / "pytorch_model.bin"


def base_tensors(rng: np.random.Generator) -> Tensors:
    return {
        "embed.weight": ("BF16", bf16(weights(rng, (40, 32)))),
        "layers.0.attn.q.weight": ("F32", weights(rng, (32, 48))),
        "layers.0.mlp.up.weight": ("BF16", bf16(weights(rng, (64, 32)))),
        "layers.0.mlp.down.weight": ("F16", weights(rng, (32, 64)).astype(np.float16)),
        "layers.0.norm.weight": ("F32", 1 + weights(rng, (48,))),
    }


def finetune_folder(base: Tensors, scratch: Path) -> Path:
    """The base plus small changes, stored against it where a lossy stage selects a tensor of the
    same name, dtype and shape; the grown embedding (4 new tokens) and the new head are not."""
    rng = np.random.default_rng(5)

    def tuned(name: str) -> tuple[str, np.ndarray]:
        dtype, raw = base[name]
        values = (raw.astype(np.uint32) << 16).view(np.float32) if dtype == "BF16" else raw.astype(np.float32)
        values = values + weights(rng, raw.shape, 0.002)
        return dtype, bf16(values) if dtype == "BF16" else values.astype(raw.dtype)

    embed = (base["embed.weight"][1].astype(np.uint32) << 16).view(np.float32)
    tensors: Tensors = {
        "embed.weight": ("BF16", bf16(np.concatenate([embed, weights(rng, (4, 32))]))),
        "layers.0.attn.q.weight": tuned("layers.0.attn.q.weight"),
        "layers.0.mlp.up.weight": tuned("layers.0.mlp.up.weight"),
        "layers.0.mlp.down.weight": tuned("layers.0.mlp.down.weight"),
        "layers.0.norm.weight": tuned("layers.0.norm.weight"),
        "lm_head.weight": ("F32", weights(rng, (16, 32))),
    }
    model = scratch / "model"
    model.mkdir()
    write_safetensors(model / "model.safetensors", tensors)
    (model / "config.json").write_text(json.dumps({"model_type": "golden", "hidden_size": 32, "vocab_size": 44}, indent=2) + "\n")
    return model


# -- writing once ------------------------------------------------------------------------------


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def storage_bytes(tensor: Any) -> bytes:
    """A torch tensor's raw little-endian storage."""
    import torch

    return tensor.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def expected_tensors(archive: Path, base: Path | None) -> dict[str, Any]:
    with zoo.open(archive, base=base) as opened:
        return {
            key: {
                "dtype": str(opened.get_slice(key).get_dtype()),
                "shape": list(opened.get_slice(key).get_shape()),
                "sha256": sha256(storage_bytes(opened.get_tensor(key, framework="pt"))),
                "numpy_sha256": sha256(np.ascontiguousarray(opened.get_tensor(key)).tobytes()),
            }
            for key in opened.keys()
        }


@contextmanager
def inside(folder: Path) -> Iterator[None]:
    """The working folder set to `folder` for a while (contextlib.chdir is Python 3.11 only)."""
    previous = Path.cwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(previous)


def write_once(folder: Path, name: str, spec: str, make: Callable[[Path], Path], chunk_bytes: int, base: str | None = None) -> None:
    """Write archive NAME.zoo with its two manifests, unless they exist: never regenerated."""
    outputs = [folder / f"{name}.zoo", folder / f"{name}.sha256.json", folder / f"{name}.expected.json"]
    present = [p for p in outputs if p.exists()]
    if len(present) == len(outputs):
        print(f"{name}.zoo exists; left as it is")
        return
    if present:
        sys.exit(f"{', '.join(map(str, present))} exist without the rest of {name}'s files; golden files are never rewritten, "
                 "so restore them from git instead")
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch, inside(folder):  # in the folder, so the base hint is its bare name
        source = make(Path(scratch))
        archive = outputs[0]
        zoo.compress(source, archive, spec, chunk_bytes=chunk_bytes, base=base)
        zoo.decompress(archive, Path(scratch) / "restored", base=base)
        restored = sorted(p for p in (Path(scratch) / "restored").rglob("*") if p.is_file())
        files = {p.name: sha256(p.read_bytes()) for p in restored}
        tensors = expected_tensors(archive, folder / base if base else None)
        originals = sorted(p for p in source.rglob("*") if p.is_file()) if source.is_dir() else [source]
        if spec == "lossless" and files != {p.name: sha256(p.read_bytes()) for p in originals}:
            sys.exit(f"{name}: a lossless archive decodes to other bytes than its source; nothing golden about it")
    outputs[1].write_text(json.dumps(files, indent=2) + "\n")
    report = zoo.report_of(archive)
    outputs[2].write_text(json.dumps({"spec": spec, "pipeline": report.metadata["pipeline"], "tensors": tensors}, indent=2) + "\n")
    print(f"{name}.zoo: {spec}, {archive.stat().st_size:,} bytes from {report.original_bytes:,}")
    for tensor in report.tensors:
        print(f"    {tensor.name:40} {tensor.dtype:8} {tensor.pipeline}{'  (against the base)' if tensor.base else ''}")


def write_base_once(path: Path, tensors: Tensors) -> None:
    if path.exists():
        print(f"{path.name} exists; left as it is")
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    write_safetensors(path, tensors)


def main() -> None:
    # Chunks of 4 KiB give most leaves several chunks, each long enough for fprans to code.
    write_once(V1, "fprans", "lossless", lossless_folder, chunk_bytes=4096)
    write_once(V1, "fprans-torch", "lossless", torch_checkpoint, chunk_bytes=1024)
    write_once(V1, "truncate", "truncate:bits=3", lossy_folder, chunk_bytes=1024)
    write_once(V1, "codebook", "codebook:bits=3,rows=16", lossy_folder, chunk_bytes=1024)
    write_once(V1, "codebook-unpacked", "codebook:bits=4,rows=16,pack=false", lossy_folder, chunk_bytes=1024)
    write_once(V1, "l2", "l2:target_ratio=8", lossy_folder, chunk_bytes=1024)
    # No calibration text, so the coefficients are the least-squares fit (distillation needs a
    # model to run); decoding does not care how they were found.
    write_once(V1, "pranc", "pranc:k=64,seed=7", lossy_folder, chunk_bytes=1024)
    write_once(V1, "lowrank", "lowrank:energy=0.999", low_rank_folder, chunk_bytes=1024)
    write_once(V1, "lowrank-codebook", "lowrank:energy=0.999|codebook:bits=4,rows=8", low_rank_folder, chunk_bytes=1024)

    base = base_tensors(np.random.default_rng(13))
    write_base_once(V2_FINETUNE / BASE_NAME, base)
    write_once(V2_FINETUNE, "finetune", "l2:target_ratio=8", lambda scratch: finetune_folder(base, scratch), chunk_bytes=1024,
               base=BASE_NAME)


if __name__ == "__main__":
    main()
