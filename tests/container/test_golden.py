"""Golden archives: each file under tests/golden was written once by an earlier version of zoo
(make_v1.py, make_codecs.py) and is never regenerated; this version must read every one of them to
the bits recorded beside it. Public names only (`zoo.*` and the objects they return), so that the
test stays true while the package's modules move.

Beside NAME.zoo: NAME.sha256.json, the sha256 of each file `zoo decompress` writes (by file name);
NAME.expected.json (archives from make_codecs.py), the pipeline as recorded and, per tensor, dtype, shape,
the sha256 of its raw storage and of the numpy array `get_tensor` returns. An archive stored
against a base (format 2) has its base model beside it as base.safetensors.
"""

from __future__ import annotations

import hashlib
import json
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import zoo

GOLDEN = Path(__file__).parent.parent / "golden"
# Every golden archive, listed so that one gone missing fails here instead of going untested.
ARCHIVES = [
    "v1/lossless.zoo",  # bytegroup|zstd:level=3, the default before fprans
    "v1/torch.zoo",  # bytegroup|zstd:level=3, a PyTorch zip checkpoint
    "v1/fprans.zoo",  # lossless (fprans): two shards, every storable dtype
    "v1/fprans-torch.zoo",
    "v1/truncate.zoo",
    "v1/codebook.zoo",
    "v1/codebook-unpacked.zoo",
    # written by zoo at 6c98fcd (2026-11-22), before codebook's row map was bit-packed: one U8 a row, no meta `groups`
    "v1/codebook-rowmap-unpacked.zoo",
    "v1/l2.zoo",
    "v1/pranc.zoo",
    "v1/lowrank.zoo",
    "v1/lowrank-codebook.zoo",
    "v2/finetune/finetune.zoo",  # l2 against v2/finetune/base.safetensors
]
WITH_TENSORS = [name for name in ARCHIVES if (GOLDEN / name).with_suffix(".expected.json").exists()]
BASE_NAME = "base.safetensors"


def base_of(archive: Path) -> Path | None:
    return archive.parent / BASE_NAME if (archive.parent / BASE_NAME).exists() else None


def expected_tensors(archive: Path) -> dict[str, Any]:
    return json.loads(archive.with_suffix(".expected.json").read_text())["tensors"]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def storage_sha256(tensor: torch.Tensor) -> str:
    """sha256 of a torch tensor's raw little-endian storage, as a safetensors file holds it."""
    return sha256(tensor.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())


def test_every_golden_archive_is_listed():
    # (the version-3 zoo's objects are listed by its models.json and checked below)
    assert sorted(str(p.relative_to(GOLDEN)) for p in GOLDEN.rglob("*.zoo") if "v3" not in p.parts) == sorted(ARCHIVES)
    assert {"v1/fprans.zoo", "v1/l2.zoo", "v2/finetune/finetune.zoo"} <= set(WITH_TENSORS)


@pytest.mark.parametrize("name", ARCHIVES)
def test_decompress_is_bit_exact(name, tmp_path):
    archive = GOLDEN / name
    zoo.decompress(archive, tmp_path / "out", base=base_of(archive))
    restored = {p.name: sha256(p.read_bytes()) for p in (tmp_path / "out").rglob("*") if p.is_file()}
    assert restored == json.loads(archive.with_suffix(".sha256.json").read_text())


@pytest.mark.parametrize("name", ARCHIVES)
def test_verify_finds_no_problem(name):
    archive = GOLDEN / name
    assert zoo.verify(archive, base=base_of(archive)) == []


@pytest.mark.parametrize("name", WITH_TENSORS)
def test_tensors_are_bit_exact(name):
    archive = GOLDEN / name
    expected = expected_tensors(archive)
    with zoo.open(archive, base=base_of(archive)) as opened:
        assert sorted(opened.keys()) == sorted(expected)
        for key, want in expected.items():
            assert (opened.get_slice(key).get_dtype(), list(opened.get_slice(key).get_shape())) == (want["dtype"], want["shape"]), key
            assert storage_sha256(opened.get_tensor(key, framework="pt")) == want["sha256"], key
            assert sha256(np.ascontiguousarray(opened.get_tensor(key)).tobytes()) == want["numpy_sha256"], key


@pytest.mark.parametrize("name", WITH_TENSORS)
def test_load_state_dict_is_bit_exact(name):
    archive = GOLDEN / name
    expected = expected_tensors(archive)
    state = zoo.load_state_dict(archive, base=base_of(archive))
    assert {key: (list(t.shape), storage_sha256(t)) for key, t in state.items()} == {
        key: (want["shape"], want["sha256"]) for key, want in expected.items()}


@pytest.mark.parametrize("name", WITH_TENSORS)
def test_pipeline_is_recorded(name):
    archive = GOLDEN / name
    assert zoo.report_of(archive).metadata["pipeline"] == json.loads(archive.with_suffix(".expected.json").read_text())["pipeline"]


def test_slices_across_chunks_match_whole_tensors():
    """Rows read alone (only the chunks holding them are decoded) are the rows of the whole tensor;
    fprans.zoo was written with 4 KiB chunks, so these ranges start and end inside chunks."""
    with zoo.open(GOLDEN / "v1" / "fprans.zoo") as opened:
        for key, rows in [("embed.weight", (5, 71)), ("layers.0.attn.qkv.weight", (15, 33)), ("layers.0.mlp.up.weight", (31, 33))]:
            whole = opened.get_tensor(key, framework="pt")
            assert storage_sha256(opened.get_slice(key, framework="pt")[rows[0]:rows[1]]) == storage_sha256(whole[rows[0]:rows[1]]), key


@pytest.mark.parametrize(("name", "first_bytes"), [
    ("v1/fprans.zoo", "895a4f4f0d0a1a0a 01000000 0ca45bd6 861a000000000000"),
    ("v2/finetune/finetune.zoo", "895a4f4f0d0a1a0a 02000000 444c6038 ef0e000000000000"),
])
def test_golden_header_bytes(name, first_bytes):
    """Magic, format version, the header's CRC-32 and its length, byte for byte (docs/FORMAT.md)."""
    data = (GOLDEN / name).read_bytes()
    assert data[:24] == bytes.fromhex(first_bytes)
    length = int.from_bytes(data[16:24], "little")
    header_bytes = data[24:24 + length]
    assert zlib.crc32(header_bytes) == int.from_bytes(data[12:16], "little")
    header = json.loads(header_bytes)
    assert header["format"] == "zoo"
    assert ("base" in header) == (name.startswith("v2/"))
    if "base" in header:
        assert header["base"] == {"hint": BASE_NAME}


# -- format 2: the base is required, and only the recorded one is taken ----------------------------

FINETUNE = GOLDEN / "v2" / "finetune" / "finetune.zoo"
AGAINST_BASE = ["layers.0.attn.q.weight", "layers.0.mlp.down.weight", "layers.0.mlp.up.weight"]


def test_v2_without_its_base_gives_no_differences_as_weights(tmp_path):
    with pytest.raises(zoo.ZooError, match="base"):
        zoo.decompress(FINETUNE, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    with pytest.raises(zoo.ZooError, match="base"):
        zoo.load_state_dict(FINETUNE)
    expected = expected_tensors(FINETUNE)
    with zoo.open(FINETUNE) as opened:
        for key in AGAINST_BASE:
            with pytest.raises(zoo.ZooError, match="base"):
                opened.get_tensor(key)
        # the tensors stored on their own read without it
        for key in sorted(set(expected) - set(AGAINST_BASE)):
            assert storage_sha256(opened.get_tensor(key, framework="pt")) == expected[key]["sha256"], key


def test_v2_refuses_another_base(tmp_path):
    """One bit changed in one base tensor: the archive names that tensor's sha256, so it is refused."""
    raw = bytearray((FINETUNE.parent / BASE_NAME).read_bytes())
    length = int.from_bytes(raw[:8], "little")
    raw[8 + length + json.loads(raw[8:8 + length])["layers.0.attn.q.weight"]["data_offsets"][0]] ^= 1
    (tmp_path / BASE_NAME).write_bytes(raw)
    with pytest.raises(zoo.ZooError, match="sha256"):
        zoo.decompress(FINETUNE, tmp_path / "out", base=tmp_path / BASE_NAME)
    assert not (tmp_path / "out").exists()
    with zoo.open(FINETUNE, base=tmp_path / BASE_NAME) as opened, pytest.raises(zoo.ZooError, match="sha256"):
        opened.get_tensor("layers.0.attn.q.weight")


V3 = json.loads((GOLDEN / "v3" / "models.json").read_text())


@pytest.mark.parametrize("name", sorted(V3))
def test_version_3_golden_zoo_decodes_to_the_recorded_bytes(name, tmp_path):
    """Models of a zoo (make_v3.py): archives whose leaves lie in objects, a fine-tune's tensors XORs
    against its base's; read in place, and as the archive `zoo export --archive` makes of them."""
    model = V3[name]
    archive = GOLDEN / "v3" / model["archive"]
    assert zoo.verify(archive) == []
    zoo.decompress(archive, tmp_path / "out")
    assert {p.name: sha256(p.read_bytes()) for p in (tmp_path / "out").iterdir()} == model["files"]
    from zoo.api import export_archive

    export_archive(archive, tmp_path / "alone.zoo")
    zoo.decompress(tmp_path / "alone.zoo", tmp_path / "again")
    assert {p.name: sha256(p.read_bytes()) for p in (tmp_path / "again").iterdir()} == model["files"]
    with zoo.open(archive) as opened:
        depth = max(opened.xor_depth(key) for key in opened.keys())
    assert depth == (1 if model["base"] else 0)


def test_version_3_golden_objects_verify_under_their_own_naming():
    """The golden zoo's objects were named before BLAKE3 ("zoo-object-1": sha256 digests); each
    still checks out against its name, and a new object of the same bytes would be named anew."""
    from zoo.container.objects import object_problems

    objects = sorted((GOLDEN / "v3" / "objects").rglob("*.zoo"))
    lossless = [path for path in objects if '"sha256"' in path.read_bytes()[:4096].decode("utf-8", "replace")]
    assert lossless
    for path in objects:
        assert object_problems(path, path.name.removesuffix(".zoo"), str(path)) == []
