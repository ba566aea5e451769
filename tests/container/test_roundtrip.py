import filecmp
import hashlib

import numpy as np
import pytest

import zoo
from zoo.dtypes import DTYPES

from tests.conftest import damage_chunk, random_storage, write_safetensors


def sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_folder_round_trip_is_bit_exact(tiny_model, tmp_path):
    report = zoo.compress(tiny_model, tmp_path / "m.zoo", threads=2)
    assert report.original_bytes == sum(p.stat().st_size for p in tiny_model.rglob("*") if p.is_file())
    zoo.decompress(tmp_path / "m.zoo", tmp_path / "out", threads=2)
    for path in tiny_model.rglob("*"):
        if path.is_file():
            assert sha(path) == sha(tmp_path / "out" / path.relative_to(tiny_model))
    assert zoo.verify(tmp_path / "m.zoo") == []


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_a_sharded_model_decompresses_side_by_side_exactly(tmp_path, monkeypatch, threads):
    from zoo.container import reader as archive
    from zoo.errors import ChecksumError

    monkeypatch.setattr(archive, "SHARD_BYTES", 4096)  # every shard below counts as one
    folder = tmp_path / "sharded"
    folder.mkdir()
    for shard in range(3):
        write_safetensors(folder / f"model-{shard}.safetensors", {f"layer{shard}.weight": ("BF16", random_storage("BF16", (64, 96), seed=shard))})
    (folder / "config.json").write_text('{"shards": 3}')
    zoo.compress(folder, tmp_path / "m.zoo", chunk_bytes=2048)
    zoo.decompress(tmp_path / "m.zoo", tmp_path / "out", threads=threads)
    assert {p.name: sha(p) for p in (tmp_path / "out").iterdir()} == {p.name: sha(p) for p in folder.iterdir()}

    # A damaged chunk in one shard: the error names it, and no folder is left behind.
    damage_chunk(tmp_path / "m.zoo", "layer1.weight", 2, mask=0x10)
    with pytest.raises(ChecksumError, match="layer1.weight"):
        zoo.decompress(tmp_path / "m.zoo", tmp_path / "again", threads=threads)
    assert not (tmp_path / "again").exists()
    problems = zoo.verify(tmp_path / "m.zoo", threads=threads)  # verify checks shards side by side too
    assert len(problems) == 1 and problems[0].startswith("model-1.safetensors: ") and "chunk 2" in problems[0]


@pytest.mark.parametrize("dtype", sorted(d for d in DTYPES if DTYPES[d].storage))
@pytest.mark.parametrize("shape", [(), (0,), (1,), (7,), (3, 5), (1025, 3)])
def test_every_dtype_and_shape(dtype, shape, tmp_path):
    raw = random_storage(dtype, shape, seed=len(shape))
    source = write_safetensors(tmp_path / "t.safetensors", {"x": (dtype, raw)})
    zoo.compress(source, tmp_path / "t.zoo", chunk_bytes=64)
    with zoo.open(tmp_path / "t.zoo") as archive:
        got = archive.read_tensor("x")
    assert got.dtype == dtype and got.shape == shape
    assert got.data.tobytes() == raw.tobytes()
    zoo.decompress(tmp_path / "t.zoo", tmp_path / "out")
    assert filecmp.cmp(source, tmp_path / "out" / "t.safetensors", shallow=False)


def test_get_tensor_matches_safetensors(minilm, tmp_path):
    from safetensors.numpy import load_file

    zoo.compress(minilm / "model.safetensors", tmp_path / "m.zoo")
    expected = load_file(minilm / "model.safetensors")
    with zoo.open(tmp_path / "m.zoo") as archive:
        assert sorted(archive.keys()) == sorted(expected)
        for name, value in expected.items():
            np.testing.assert_array_equal(archive.get_tensor(name), value)


def test_iter_file_ranges_decode_only_what_is_asked(tiny_model, tmp_path):
    zoo.compress(tiny_model, tmp_path / "m.zoo", chunk_bytes=256)
    original = (tiny_model / "model.safetensors").read_bytes()
    rng = np.random.default_rng(0)
    with zoo.open(tmp_path / "m.zoo") as archive:
        assert archive.read_file("model.safetensors", threads=2) == original
        for _ in range(50):
            start, end = sorted(int(v) for v in rng.integers(0, len(original) + 1, size=2))
            assert b"".join(archive.iter_file("model.safetensors", start, end, threads=2)) == original[start:end]
        assert b"".join(archive.iter_file("model.safetensors", len(original), None)) == b""


def test_torch_checkpoint_storages_are_grouped_and_exact(tmp_path):
    torch = pytest.importorskip("torch")
    state = {"w": torch.randn(256, 64).to(torch.bfloat16), "b": torch.zeros(3), "h": torch.randn(100).half(), "ids": torch.arange(5)}
    torch.save(state, tmp_path / "pytorch_model.bin")
    zoo.compress(tmp_path / "pytorch_model.bin", tmp_path / "m.zoo")
    with zoo.open(tmp_path / "m.zoo") as archive:
        segments = archive.file_entry("pytorch_model.bin")["segments"]
        assert {s["blob"]["leaf"]["dtype"] for s in segments if "blob" in s} == {"U8"}  # the pickle and zip records
        assert {archive.tensor_info(s["tensor"])["dtype"] for s in segments if "tensor" in s} == {"BF16", "F32", "F16", "I64"}
    zoo.decompress(tmp_path / "m.zoo", tmp_path / "out")
    assert (tmp_path / "out" / "pytorch_model.bin").read_bytes() == (tmp_path / "pytorch_model.bin").read_bytes()
    loaded = torch.load(tmp_path / "out" / "pytorch_model.bin", weights_only=True)
    assert all(torch.equal(loaded[k], v) for k, v in state.items())


def test_a_name_used_by_two_files_gets_a_qualified_key(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    first = write_safetensors(folder / "a.safetensors", {"w": ("F32", random_storage("F32", (4, 4), 1))})
    second = write_safetensors(folder / "b.safetensors", {"w": ("F32", random_storage("F32", (4, 4), 2))})
    (folder / "empty.txt").write_bytes(b"")
    zoo.compress(folder, tmp_path / "m.zoo")
    with zoo.open(tmp_path / "m.zoo") as archive:
        assert sorted(archive.keys()) == ["b.safetensors::w", "w"]
        assert archive.read_tensor("b.safetensors::w").data.tobytes() == second.read_bytes()[-64:]
    zoo.decompress(tmp_path / "m.zoo", tmp_path / "out")
    assert (tmp_path / "out" / "a.safetensors").read_bytes() == first.read_bytes()
    assert (tmp_path / "out" / "empty.txt").read_bytes() == b""


def test_the_model_at_the_top_of_a_trainer_folder_keeps_the_plain_names(tmp_path):
    # checkpoint-1/ sorts before model.safetensors: its old weights took the plain names, and
    # load_state_dict handed them out as the model
    folder = tmp_path / "run"
    (folder / "checkpoint-1").mkdir(parents=True)
    write_safetensors(folder / "checkpoint-1" / "model.safetensors", {"w": ("F32", np.zeros(4, np.float32))})
    write_safetensors(folder / "model.safetensors", {"w": ("F32", np.ones(4, np.float32))})
    zoo.compress(folder, tmp_path / "run.zoo")
    state = zoo.load_state_dict(tmp_path / "run.zoo")
    assert sorted(state) == ["checkpoint-1/model.safetensors::w", "w"] and state["w"].tolist() == [1, 1, 1, 1]
