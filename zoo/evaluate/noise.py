"""A deliberately damaged copy of a model: Gaussian noise of a chosen size on every weight.

White noise at a known SQNR is the plainest lossy codec there is, which makes it a yardstick:
evaluate it to see what the figures look like at, say, 40 dB before choosing a gate.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np

from zoo.errors import InputError
from zoo.hub.temporaries import short_name


def noisy_copy(source: str | os.PathLike[str], destination: str | os.PathLike[str], relative_noise: float, seed: int = 0) -> Path:
    """Copy the model folder `source` to `destination`, adding to every floating-point tensor of
    its safetensors files noise of `relative_noise` times the tensor's RMS (so every tensor sits
    at an SQNR of -20 log10(relative_noise) dB). Scalars and integer tensors are copied as they are."""
    from safetensors.numpy import load_file, save_file

    source, destination = Path(source), Path(destination)
    if not source.is_dir():
        raise InputError(f"{source}: not a model folder")
    if destination.exists():
        raise InputError(f"{destination} exists")
    rng = np.random.default_rng(seed)
    temporary = destination.with_name(f".{short_name(destination.name)}.zoo-tmp")
    shutil.rmtree(temporary, ignore_errors=True)
    shutil.copytree(source, temporary)
    try:
        for path in sorted(temporary.rglob("*.safetensors")):
            tensors = load_file(path)
            for name, value in tensors.items():
                if value.dtype.kind == "f" and value.size > 1:
                    rms = float(np.sqrt(np.mean(value.astype(np.float64) ** 2)))
                    tensors[name] = (value + rng.normal(0, relative_noise * rms, value.shape)).astype(value.dtype)
            save_file(tensors, path, metadata={"format": "pt"})
        os.replace(temporary, destination)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    return destination
