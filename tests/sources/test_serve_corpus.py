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
