"""Writes the version-1 golden archives. Run once; the files are never regenerated: a format change
adds tests/golden/v2/, it never edits these bytes."""

import hashlib
import json
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import zoo  # noqa: E402
from tests.conftest import write_safetensors  # noqa: E402
from zoo.dtypes import from_float32  # noqa: E402

HERE = Path(__file__).parent / "v1"


def ramp(count: int) -> np.ndarray:
    """Values a test can recompute without a random generator."""
    return (np.arange(count, dtype=np.float32) - count / 2) / 7


def write_once(name: str, make: Callable[[Path], Path]) -> None:
    """Write golden archive `name` and its sha256 manifest, unless it exists: never regenerated."""
    if (HERE / f"{name}.zoo").exists():
        print(f"{name}.zoo exists; left as it is")
        return
    with tempfile.TemporaryDirectory() as scratch:
        source = make(Path(scratch))
        zoo.compress(source, HERE / f"{name}.zoo", chunk_bytes=128)
        files = sorted(p for p in source.rglob("*") if p.is_file()) if source.is_dir() else [source]
        expected = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in files}
        (HERE / f"{name}.sha256.json").write_text(json.dumps(expected, indent=2) + "\n")


def lossless_folder(scratch: Path) -> Path:
    model = scratch / "model"
    model.mkdir()
    write_safetensors(model / "model.safetensors", {
        "ramp.bf16": ("BF16", from_float32(ramp(96), "BF16").reshape(8, 12)),
        "ramp.f32": ("F32", ramp(300).reshape(3, 100)),
        "ramp.f16": ("F16", from_float32(ramp(33), "F16")),
        "ramp.f8": ("F8_E4M3", from_float32(ramp(20) / 10, "F8_E4M3")),
        "ids": ("I64", np.arange(10, dtype=np.int64)),
        "mask": ("BOOL", (np.arange(7) % 2).astype(np.uint8)),
        "scalar": ("F32", np.array(3.5, dtype=np.float32)),
        "empty": ("F32", np.zeros((0, 4), dtype=np.float32)),
    }, metadata={"format": "pt"})
    (model / "config.json").write_text(json.dumps({"model_type": "golden", "hidden_size": 12}, indent=2))
    return model


def torch_checkpoint(scratch: Path) -> Path:
    import torch

    state = {"ramp.bf16": torch.from_numpy(ramp(96)).to(torch.bfloat16).reshape(8, 12), "ramp.f32": torch.from_numpy(ramp(40)), "ids": torch.arange(6)}
    torch.save(state, scratch / "pytorch_model.bin")
    return scratch / "pytorch_model.bin"


def main() -> None:
    write_once("lossless", lossless_folder)
    write_once("torch", torch_checkpoint)


if __name__ == "__main__":
    main()
