"""The header cap (docs/FORMAT.md: 64 MiB): a model whose header would be over it is refused from
its names, shapes and chunk counts before anything is coded, and the floor it is judged by is never
above the header the build writes."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest

import zoo
from tests.conftest import random_storage, write_safetensors
from zoo.api import compress_into
from zoo.codecs.pipeline import DEFAULT_SPEC, Pipeline
from zoo.container import format as archive_format
from zoo.container.objects import ObjectSink
from zoo.container.writer import Builder
from zoo.errors import FormatError
from zoo.hub.store import Store

OVER_THE_CAP = r"archive header would be at least \d+ bytes \(1000 tensors\); the cap is 67108864"


def over_the_cap(path: Path) -> Path:
    """A checkpoint whose archive header would be over the cap: each name is in it three times (the
    tensor's key, its name, its file's list), so 1000 of 23,000 characters make 69 MB. Faster to
    write and scan than the 90,000 tensors of 200 characters that make as much."""
    return write_safetensors(path, {f"{i:04d}".ljust(23_000, "x"): ("F32", np.zeros(1, np.float32)) for i in range(1000)})


@pytest.fixture
def no_coding(monkeypatch: pytest.MonkeyPatch) -> None:
    def build(*args: object, **kwargs: object) -> None:
        raise AssertionError("reached the coding")

    monkeypatch.setattr(Builder, "build", build)


def test_a_header_over_the_cap_is_refused_before_any_coding(tmp_path, no_coding):
    source = over_the_cap(tmp_path / "many.safetensors")
    with pytest.raises(FormatError, match=f"^{re.escape(str(source))}: {OVER_THE_CAP}$"):
        zoo.compress(source, tmp_path / "many.zoo")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["many.safetensors"]


def test_a_header_over_the_cap_is_refused_before_any_coding_into_a_zoo(tmp_path, no_coding):
    source = over_the_cap(tmp_path / "many.safetensors")
    store = Store(tmp_path / "zoo")
    with pytest.raises(FormatError, match=OVER_THE_CAP):
        compress_into(store, source, "many")
    assert store.entries() == [] and not [path for path in (tmp_path / "zoo").rglob("*.zoo")]


def test_with_the_early_check_off_the_late_one_still_refuses(tmp_path, monkeypatch):
    """The check after the coding stays, behind the one before."""
    source = over_the_cap(tmp_path / "many.safetensors")
    monkeypatch.setattr(Builder, "refuse_oversized_header", lambda self, sources, where: None)
    with pytest.raises(FormatError, match=r"^archive header would be \d+ bytes; the cap is 67108864$"):
        zoo.compress(source, tmp_path / "many.zoo")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["many.safetensors"]


@pytest.fixture
def sizes(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, list[int]]]:
    """Each build's floor, and the sizes of the headers (its objects' left out) it then encoded."""
    seen: list[tuple[int, list[int]]] = []
    floor, encode = Builder.header_floor, archive_format.encode_header

    def header_floor(self: Builder, sources: list) -> int:
        seen.append((floor(self, sources), []))
        return seen[-1][0]

    def encode_header(header: dict) -> bytes:
        body = encode(header)
        if "object" not in header["metadata"]:
            seen[-1][1].append(len(body))
        return body

    monkeypatch.setattr(Builder, "header_floor", header_floor)
    monkeypatch.setattr(archive_format, "encode_header", encode_header)
    return seen


def below(sizes: list[tuple[int, list[int]]], builds: int) -> bool:
    assert len(sizes) == builds and all(headers for _, headers in sizes), sizes
    return all(floor <= min(headers) for floor, headers in sizes)


def odd_folder(folder: Path) -> Path:
    """Tensors of many dtypes and sizes, a file zoo keeps as opaque bytes, links and an empty folder."""
    (folder / "sub" / "nested").mkdir(parents=True)
    write_safetensors(folder / "model.safetensors", {
        "embed.weight": ("BF16", random_storage("BF16", (64, 300), 1)),  # over INLINE_BYTES: an object in a zoo
        "layer.0.weight": ("F32", random_storage("F32", (32, 32), 2)),
        "layer.0.bias": ("F16", random_storage("F16", (32,), 3)),
        "scale": ("F8_E4M3", random_storage("F8_E4M3", (5, 3), 4)),
        "empty": ("F32", np.zeros((0, 4), np.float32)),
        "scalar": ("F64", np.array(1.5)),
        "ids": ("I64", np.arange(16, dtype=np.int64).reshape(1, 16)),
        "mask": ("BOOL", np.ones(7, np.uint8)),
    })
    (folder / "sub" / "config.json").write_text('{"hidden_size": 32}' * 2000)  # a blob over INLINE_BYTES
    (folder / "pytorch_model.bin").write_bytes(b"PK\x03\x04 not really a checkpoint")
    os.symlink("sub/config.json", folder / "config.json")
    (folder / "empty").mkdir()
    return folder


@pytest.mark.parametrize("pipeline, chunk_bytes", [("lossless", 4 << 20), ("lossless", 64), ("truncate:bits=6", 4 << 20),
                                                   ("truncate:bits=6", 48)])
def test_the_floor_is_never_above_the_header(tmp_path, sizes, pipeline, chunk_bytes):
    folder = odd_folder(tmp_path / "model")
    zoo.compress(folder, tmp_path / "m.zoo", pipeline, chunk_bytes=chunk_bytes)
    for name, existing in (("objects", lambda key: None),  # into a zoo (its shell in among its objects, as build_model writes it)
                           ("again", lambda key: archive_format.object_path(tmp_path / "objects", key))):  # finding each object there
        (tmp_path / name / "00").mkdir(parents=True)
        zoo.compress(folder, tmp_path / name / "00" / "model.zoo", pipeline, chunk_bytes=chunk_bytes,
                     objects=ObjectSink(tmp_path / name, existing))
    assert below(sizes, 3), sizes


def test_the_floor_of_views_is_never_above_the_header(tmp_path, sizes):
    torch = pytest.importorskip("torch")
    weight = torch.arange(32, dtype=torch.uint8).view(torch.float4_e2m1fn_x2).reshape(4, 8)
    floats = torch.randn(6, 4)
    torch.save({"weight": weight, "rows": weight[1:3], "floats": floats, "tied": floats, "column": floats[:, 1]}, tmp_path / "m.pt")
    zoo.compress(tmp_path / "m.pt", tmp_path / "m.zoo")
    assert below(sizes, 1), sizes


def test_the_floor_of_many_tensors_is_near_the_header(tmp_path, sizes):
    """What the floor leaves out (chunk offsets and CRC-32s, each file's sha256) is a few percent."""
    source = write_safetensors(tmp_path / "w.safetensors", {f"model.layers.{i}.mlp.experts.{i % 64}.down_proj.weight":
                                                            ("BF16", random_storage("BF16", (4, 4), i)) for i in range(2000)})
    zoo.compress(source, tmp_path / "w.zoo")
    assert below(sizes, 1)
    [(floor, headers)] = sizes
    assert floor > 0.95 * min(headers)


def test_padding_never_takes_a_header_over_the_cap(tmp_path, monkeypatch):
    """Past ALIGN_FROM a header is padded to the end of the room left for it, and a room judged
    generously, near the cap, took a header under it over: refused after all the coding."""
    source = write_safetensors(tmp_path / "w.safetensors", {f"layer.{i}.weight": ("F32", random_storage("F32", (8, 8), i))
                                                            for i in range(200)})
    monkeypatch.setattr(archive_format, "ALIGN_FROM", 1)
    cap = 64 << 10
    monkeypatch.setattr(archive_format, "MAX_HEADER_BYTES", cap)
    room = Builder(Pipeline.parse(DEFAULT_SPEC), 4 << 20, None).header_room(zoo.api.scan(source))
    assert room == cap  # judged over it, and held to it
    monkeypatch.setattr(Builder, "header_room", lambda self, sources: 4 * cap)
    zoo.compress(source, tmp_path / "w.zoo")
    opened = archive_format.ArchiveFile(tmp_path / "w.zoo")
    opened.close()
    assert opened.payload_start - archive_format.PREAMBLE.size <= cap
    assert zoo.verify(tmp_path / "w.zoo") == []
