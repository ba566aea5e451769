"""Figures that need no model code: weight-space error per tensor, and bit-exactness of a
lossless archive against the files it was made from."""

from __future__ import annotations

import hashlib
import math
import os
import warnings
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from zoo.errors import InputError
from zoo.evaluate.models import Model

Progress = Callable[[str, int, int], None]


class TensorIndex:
    """Random access to a model's tensors by the key a zoo archive gives them (the tensor's own
    name, or `file::name` where a file first in writer.naming_order has that name), the keys of
    zoo.open and zoo.load_state_dict."""

    def __init__(self, model: Model, stack: ExitStack) -> None:
        from zoo.container.writer import keys_of

        self._stack = stack
        self._opened: dict[Path, Any] = {}
        base = model.folder()
        files = {(path.relative_to(base).as_posix() if path.is_relative_to(base) else path.name): path for path in model.weight_files()}
        keys = keys_of((relpath, "safetensors" if path.suffix.lower() == ".safetensors" else "torch", list(self._open(path).keys()))
                       for relpath, path in files.items())
        self._where: dict[str, tuple[Path, str]] = {key: (files[relpath], name) for (relpath, name), key in keys.items()}
        # tensors one file holds as one (a PyTorch checkpoint's lm_head.weight that is its
        # wte.weight, tied): each key's fellows
        groups: dict[tuple[Path, int], list[str]] = {}
        for key, (path, name) in self._where.items():
            held = getattr(self._open(path), "same_as", {}).get(name)
            if held is not None:
                groups.setdefault((path, held), []).append(key)
        self._ties = {key: [other for other in group if other != key] for group in groups.values() if len(group) > 1 for key in group}

    def _open(self, path: Path) -> Any:
        if path not in self._opened:
            if path.suffix.lower() == ".safetensors":
                from safetensors import safe_open

                self._opened[path] = self._stack.enter_context(safe_open(path, framework="pt"))
            else:
                self._opened[path] = _TorchFile(path)
        return self._opened[path]

    def keys(self) -> list[str]:
        return list(self._where)

    def get(self, key: str) -> Any:
        path, name = self._where[key]
        return self._open(path).get_tensor(name)

    def ties(self, key: str) -> list[str]:
        """The other keys whose tensor is this very one: the same view of the same storage."""
        return self._ties.get(key, [])


class _TorchFile:
    """A PyTorch checkpoint's tensors, flattened to dotted names; memory-mapped, not read."""

    def __init__(self, path: Path) -> None:
        import torch

        from zoo.sources.torch import unreadable

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # torch's notes on deprecated storages and dtypes, as compress reads them
                try:
                    state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
                except RuntimeError as error:
                    if "mmap" not in str(error):
                        raise
                    state = torch.load(path, map_location="cpu", weights_only=True)  # the legacy layout cannot be mapped
        except Exception as error:  # torch raises many types for a file that is not a checkpoint
            raise unreadable(path, error) from None
        self._path = path
        self._tensors: dict[str, Any] = {}
        self._views: dict[tuple[Any, ...], int] = {}
        self.same_as: dict[str, int] = {}  # each tensor's view, numbered: two names of one number are one tensor
        self._flatten(state, "", torch)

    def _flatten(self, value: Any, prefix: str, torch: Any) -> None:
        if isinstance(value, torch.Tensor):
            if value.layout != torch.strided or value.is_quantized:  # as compress refuses them (zoo.sources.torch)
                kind = "quantized" if value.is_quantized else str(value.layout).removeprefix("torch.").removesuffix("_coo")
                raise InputError(f"{self._path}: tensor {prefix!r} is {kind}; zoo compares dense tensors only")
            self._tensors[prefix] = value
            if value.numel():  # (empty tensors share no data, whatever their pointers say)
                view = (value.untyped_storage().data_ptr(), value.storage_offset(), tuple(value.shape), value.stride(), value.dtype)
                self.same_as[prefix] = self._views.setdefault(view, len(self._views))
        elif isinstance(value, dict) and not ("state" in value and "param_groups" in value):
            # an optimizer's state (its moments) is no model weight: left out of the figures
            for key, item in value.items():
                self._flatten(item, f"{prefix}.{key}" if prefix else str(key), torch)

    def keys(self) -> list[str]:
        return list(self._tensors)

    def get_tensor(self, name: str) -> Any:
        return self._tensors[name]


_E2M1 = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0)  # FP4's 16 values by code


def _arithmetic(tensor: Any) -> Any:
    """`tensor` as one torch can compute on: F4 (two values a byte, which torch can compare but not
    convert) as its float32 values, a byte's low half first; every other dtype as it is."""
    import torch

    if tensor.dtype != getattr(torch, "float4_e2m1fn_x2", None):
        return tensor
    codes = tensor.view(torch.uint8).long()
    table = torch.tensor(_E2M1, dtype=torch.float32)
    return torch.stack((table[codes & 15], table[codes >> 4]), -1).flatten(-2)


def compare_weights(candidate: Model, reference: Model, progress: Progress | None) -> tuple[list[dict[str, Any]], dict[str, Any], list[str]]:
    """Per-tensor figures, their size-weighted totals, and notes on tensors only one side has. A
    tensor the candidate lacks counts as zeros (relative error 1, cosine 0), and integer tensors
    that differ count as their values do: neither is "identical". A tensor one side holds as a tie
    of one both hold (a checkpoint's lm_head.weight that is its wte.weight) is that tensor, which
    is compared: it is left out, however the other side stores the tie (as none, in safetensors).
    It counted as zeros, and a model compared with itself, saved both ways, had cosine 0.81."""
    import torch

    from zoo.evaluate import metrics

    with ExitStack() as stack:
        mine, theirs = TensorIndex(candidate, stack), TensorIndex(reference, stack)
        ours_keys = set(mine.keys())
        shared = [key for key in theirs.keys() if key in ours_keys]
        if not shared:
            raise InputError(f"{candidate.label} and {reference.label} have no tensor name in common")
        theirs_keys = set(theirs.keys())
        # A tie (lm_head.weight that is wte.weight) is the tensor it is tied to: it is compared once,
        # as that tensor, whether one side holds it (a .bin) or neither (safetensors keeps one name)
        # or both: one model's figures are the same against either file.
        first = {key: number for number, key in enumerate(shared)}
        tied = {key for key in shared if any(first[other] < first[key] for other in set(mine.ties(key)) & set(theirs.ties(key)))}
        tied |= {key for index, held in ((theirs, ours_keys), (mine, theirs_keys)) for key in index.keys()
                 if key not in held and any(other in held for other in index.ties(key))}
        lacking = [key for key in theirs.keys() if key not in ours_keys and key not in tied]
        notes = []
        for side, keys, counted in ((f"{reference.label} only", lacking, " (counted as zeros: the candidate lacks them)"),
                                    (f"{candidate.label} only", sorted(ours_keys - theirs_keys - tied), "")):
            if keys:
                notes.append(f"{len(keys)} tensors in {side}{counted}: {_some(keys)}")
        for where, keys in ((f"in {reference.label} only, each tied there", tied - ours_keys),
                            (f"in {candidate.label} only, each tied there", tied - theirs_keys),
                            ("in both, each tied on both sides", tied & ours_keys & theirs_keys)):
            if keys:
                notes.append(f"{len(keys)} tensors {where} to one both hold (the same weights, compared once): {_some(sorted(keys))}")
        shared = [key for key in shared if key not in tied]
        per_tensor = []
        differing_integers = []
        signal, elements = 0.0, 0
        compared = [*shared, *lacking]
        for number, key in enumerate(compared, 1):
            base = theirs.get(key)
            ours = mine.get(key) if key in ours_keys else torch.zeros_like(base)
            if tuple(ours.shape) != tuple(base.shape):
                raise InputError(f"tensor {key!r} has shape {list(ours.shape)} in {candidate.label}, {list(base.shape)} in {reference.label}")
            ours, base = _arithmetic(ours), _arithmetic(base)
            floats = ours.is_floating_point() or base.is_floating_point()
            if floats or key not in ours_keys or not bool((ours == base).all()):
                if not floats:
                    differing_integers.append(key)
                sums = metrics.weight_sums(base, ours)
                count = math.prod(ours.shape)
                figures = metrics.weight_figures(sums)
                if sums["signal"] == 0 and count:
                    figures["rms_error"] = math.sqrt(sums["error"] / count)
                per_tensor.append({"name": key, "dtype": str(base.dtype).removeprefix("torch."), "shape": list(base.shape),
                                   "elements": count, **figures})
                signal += sums["signal"]
                elements += count
            if progress:
                progress("weights", number, len(compared))
        if differing_integers:
            notes.append(f"{len(differing_integers)} integer tensors differ (counted as their values): {', '.join(differing_integers[:3])}")
        reference_rms = math.sqrt(signal / elements) if elements and math.isfinite(signal) else None
        return per_tensor, metrics.weight_totals(per_tensor, reference_rms), notes


def _some(keys: list[str]) -> str:
    return f"{', '.join(sorted(keys)[:3])}{', ...' if len(keys) > 3 else ''}"


def _sha256(path: Path, progress: Callable[[int], None]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(8 << 20):
            digest.update(block)
            progress(len(block))
    return digest.hexdigest()


def verify_lossless(archive: str | os.PathLike[str], source: str | os.PathLike[str], progress: Progress | None,
                    include: Sequence[str] | None = None, exclude: Sequence[str] | None = None, follow_links: bool = False) -> dict[str, Any]:
    """Decode every file of `archive` and compare its sha256 with the file in `source` on disk
    (read again now, not the sha256 the archive recorded). `include`, `exclude` and
    `follow_links` select the source's files as compress selected them: one it left out is not missing."""
    from zoo.api import open_archive
    from zoo.sources.folder import scan

    originals = {entry.relpath: entry for entry in scan(source, include, exclude, follow_links)
                 if entry.kind not in ("link", "hardlink", "folder")}  # what holds bytes (a hard link: its file's)
    mismatched, extra = [], []
    with open_archive(archive) as opened:
        entries = opened.files()
        total = 2 * sum(entry["size"] for entry in entries)
        done = 0

        def advance(count: int) -> None:
            nonlocal done
            done += count
            if progress:
                progress("verifying", done, total)

        for entry in entries:
            original = originals.get(entry["path"])
            digest = hashlib.sha256()
            for piece in opened.iter_file(entry["path"]):
                digest.update(piece)
                advance(len(piece))
            if original is None:
                extra.append(entry["path"])
            elif _sha256(original.path, advance) != digest.hexdigest():
                mismatched.append(entry["path"])
    missing = sorted(set(originals) - {entry["path"] for entry in entries})
    return {
        "files": len(entries),
        "bytes": total // 2,
        "bit_exact": not (mismatched or missing or extra),
        "mismatched": mismatched,
        "missing": missing,
        "extra": extra,
    }
