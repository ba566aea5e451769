"""The Trainer folders of the corpus, stored in a zoo and served: huggingface_hub's
snapshot_download gets every file back bit for bit, the opaque ones included."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from zoo.api import compress_into
from zoo.hub.store import Store

from tests.hub.test_serve import running_server


def sha256s(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and not p.name.startswith(".")}


@pytest.mark.parametrize("layout", ["trainer_output", "checkpoint"])
def test_a_served_trainer_folder_downloads_bit_exact(corpus, tmp_path, layout):
    from huggingface_hub import snapshot_download

    store = Store(tmp_path / "zoo")
    compress_into(store, corpus[layout], f"org/{layout.replace('_', '-')}")
    with running_server(store) as url:
        folder = Path(snapshot_download(f"org/{layout.replace('_', '-')}", endpoint=url, cache_dir=tmp_path / "hf"))
    assert sha256s(folder) == sha256s(corpus[layout])


LOAD = """
import sys, torch
from transformers import AutoModel
served = AutoModel.from_pretrained(sys.argv[1]).eval()
original = AutoModel.from_pretrained(sys.argv[2]).eval()
ids = torch.arange(24).reshape(2, 12) % 99
with torch.no_grad():
    print("equal" if torch.equal(served(ids).last_hidden_state, original(ids).last_hidden_state) else "different")
"""


@pytest.mark.slow
@pytest.mark.parametrize("weights", ["safetensors", "bin"])
def test_a_fine_tuned_trainer_folder_loads_through_serve_with_from_pretrained(tmp_path, weights):
    """A real transformers model a few AdamW steps into training, saved as the Trainer leaves it
    (weights as safetensors or pytorch_model.bin, training_args.bin, optimizer.pt, scheduler.pt,
    rng_state.pth, trainer_state.json): served by zoo, transformers' from_pretrained builds the
    same model from it, unchanged."""
    import json
    import os
    import subprocess
    import sys

    import numpy as np
    import torch
    import transformers

    from tests.sources.conftest import TrainingArguments

    torch.manual_seed(0)
    model = transformers.BertModel(transformers.BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                                           intermediate_size=37, max_position_embeddings=64))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LinearLR(optimizer)
    for _ in range(3):
        model(torch.randint(0, 99, (2, 12))).last_hidden_state.pow(2).mean().backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
    folder = tmp_path / "fine-tuned"
    model.save_pretrained(folder, safe_serialization=weights == "safetensors")
    torch.save(TrainingArguments(str(folder)), folder / "training_args.bin")
    torch.save(optimizer.state_dict(), folder / "optimizer.pt")
    torch.save(scheduler.state_dict(), folder / "scheduler.pt")
    torch.save({"python": 1, "numpy": np.random.get_state(), "cpu": torch.get_rng_state()}, folder / "rng_state.pth")
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": 3, "log_history": []}))

    store = Store(tmp_path / "zoo")
    compress_into(store, folder, "org/fine-tuned")
    with running_server(store) as url:
        env = {**os.environ, "HF_ENDPOINT": url, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_DISABLE_TELEMETRY": "1"}
        done = subprocess.run([sys.executable, "-c", LOAD, "org/fine-tuned", str(folder)], capture_output=True, text=True, env=env,
                              timeout=300, check=False)
    assert done.returncode == 0 and done.stdout.strip() == "equal", done.stderr
    served = next((tmp_path / "hf").rglob("snapshots/*/config.json")).parent
    assert {p.name for p in served.iterdir()} <= {p.name for p in folder.iterdir()}
