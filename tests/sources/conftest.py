"""A corpus of what real repositories hold, made on the fly (small, no network): a Trainer output
folder and a Trainer checkpoint folder (a real AdamW state after a few steps of a tiny model, its
scheduler, scaler and rng state, trainer_state.json, training_args.bin), PyTorch weights single,
sharded and legacy, and hostile files."""

from __future__ import annotations

import json
import pickle
import random
import struct
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")


@dataclass
class TrainingArguments:
    """Stands in for transformers' TrainingArguments (accelerate is not installed here): a dataclass
    that torch.load(weights_only=True) refuses, as it refuses the real one."""

    output_dir: str = "out"
    learning_rate: float = 5e-5
    report_to: list[str] = field(default_factory=list)


def tiny_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Embedding(32, 16), torch.nn.Linear(16, 16), torch.nn.LayerNorm(16), torch.nn.Linear(16, 32))


def trained(steps: int = 20, seed: int = 0) -> tuple[torch.nn.Module, torch.optim.Optimizer, object]:
    """A tiny model after `steps` AdamW steps on random token sequences, with its scheduler."""
    model = tiny_model(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 - step / 1000)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        tokens = torch.randint(0, 32, (4, 8), generator=generator)
        logits = model(tokens[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 32), tokens[:, 1:].reshape(-1))
        loss.backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
    return model, optimizer, scheduler


def save_safetensors(model: torch.nn.Module, path: Path) -> None:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))


def write_trainer_output(folder: Path, model: torch.nn.Module) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "tiny", "vocab_size": 32}))
    save_safetensors(model, folder / "model.safetensors")
    torch.save(TrainingArguments(str(folder)), folder / "training_args.bin")
    return folder


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("corpus")
    model, optimizer, scheduler = trained()
    paths = {"trainer_output": write_trainer_output(root / "trainer_output", model)}
    checkpoint = write_trainer_output(root / "checkpoint-20", model)
    torch.save(optimizer.state_dict(), checkpoint / "optimizer.pt")
    torch.save(scheduler.state_dict(), checkpoint / "scheduler.pt")
    torch.save(torch.amp.GradScaler("cpu", init_scale=1024.0).state_dict(), checkpoint / "scaler.pt")
    torch.save({"python": random.getstate(), "numpy": np.random.get_state(), "cpu": torch.get_rng_state()}, checkpoint / "rng_state.pth")
    (checkpoint / "trainer_state.json").write_text(json.dumps({"global_step": 20, "log_history": [{"loss": 3.4, "step": 10}]}))
    paths["checkpoint"] = checkpoint

    weights = model.state_dict()
    single = root / "bin_single"
    single.mkdir()
    torch.save(weights, single / "pytorch_model.bin")
    paths["bin_single"] = single
    legacy = root / "bin_legacy"
    legacy.mkdir()
    torch.save(weights, legacy / "pytorch_model.bin", _use_new_zipfile_serialization=False)
    paths["bin_legacy"] = legacy
    sharded = root / "bin_sharded"
    sharded.mkdir()
    names = list(weights)
    index = {"metadata": {}, "weight_map": {}}
    for number, part in enumerate((names[:3], names[3:])):
        shard = f"pytorch_model-{number + 1:05d}-of-00002.bin"
        torch.save({name: weights[name] for name in part}, sharded / shard)
        index["weight_map"].update({name: shard for name in part})
    (sharded / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    paths["bin_sharded"] = sharded
    return paths


def write_zip_bomb(path: Path, inflated: int = 80 << 20) -> None:
    """A .pt whose data.pkl is a few hundred KB deflated and `inflated` bytes inflated (a valid
    zip; past zoo's cap on a checkpoint's pickle, so the size of the bomb does not matter)."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        with archive.open("archive/data.pkl", "w", force_zip64=True) as member:
            block = b"\x00" * (16 << 20)
            for _ in range(inflated // len(block)):
                member.write(block)


def write_polyglot(path: Path, valid: Path) -> None:
    """A malicious pickle followed by a valid torch zip checkpoint (zip readers find the end record)."""

    class Evil:
        def __reduce__(self):
            return (print, ("code ran",))

    path.write_bytes(pickle.dumps(Evil()) + valid.read_bytes())


def safetensors_bytes(header: bytes, data: bytes = b"") -> bytes:
    return struct.pack("<Q", len(header)) + header + data
