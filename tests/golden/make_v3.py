"""Writes the version-3 golden zoo: the objects of two models stored by compress_into, a base and a
fine-tune whose tensors are XORs against it, and models.json (each model's archive among the
objects, and the sha256 of each file it decodes to). Run once; never regenerated."""

import hashlib
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.conftest import write_safetensors  # noqa: E402
from zoo.api import compress_into  # noqa: E402
from zoo.dtypes import from_float32  # noqa: E402
from zoo.hub.store import Store  # noqa: E402

HERE = Path(__file__).parent / "v3"


def folder(scratch: Path, name: str, nudge: int) -> Path:
    """bf16 weights a test can recompute: a ramp, every `nudge`-th value one unit in the last place up."""
    out = scratch / name
    out.mkdir()
    tensors = {}
    for i, shape in enumerate([(128, 96), (96, 96), (64,)]):
        count = int(np.prod(shape))
        values = from_float32(((np.arange(count, dtype=np.float32) * (i + 3)) % 97 - 48) / 50, "BF16").reshape(shape)
        if nudge:
            values.reshape(-1)[::nudge] += 1
        tensors[f"layer.{i}.weight"] = ("BF16", values)
    write_safetensors(out / "model.safetensors", tensors)
    (out / "config.json").write_text(json.dumps({"_name_or_path": "golden/base"} if nudge else {"model_type": "golden"}))
    return out


def main() -> None:
    if HERE.exists():
        print(f"{HERE} exists; left as it is")
        return
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        store = Store(scratch / "zoo")
        models = {}
        for name, nudge in (("golden/base", 0), ("golden/finetune", 5)):
            source = folder(scratch, name.split("/")[1], nudge)
            entry = compress_into(store, source, name)
            models[name] = {"archive": entry.archive.relative_to(store.home).as_posix(),
                            "files": {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(source.iterdir())},
                            "base": entry.base}
        HERE.mkdir()
        shutil.copytree(store.home / "objects", HERE / "objects")
        (HERE / "models.json").write_text(json.dumps(models, indent=2) + "\n")


if __name__ == "__main__":
    main()
