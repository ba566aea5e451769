"""The archive's read path: tensors of one chunk and of many (some stored raw), on one thread and
several, and damage found in the middle of a parallel read."""

from __future__ import annotations

import numpy as np
import pytest

import zoo
from zoo.errors import ChecksumError

from tests.conftest import damage_chunk, random_storage, write_safetensors


@pytest.fixture
def mixed_model(tmp_path):
    rng = np.random.default_rng(7)
    tensors = {
        "big.weight": ("BF16", random_storage("BF16", (96, 64), 1)),  # 12 KiB: many 1 KiB chunks
        "odd.weight": ("F32", random_storage("F32", (37, 11), 2)),  # a short last chunk
        "small.bias": ("F16", random_storage("F16", (8,), 3)),  # one chunk
        "noise": ("U8", rng.integers(0, 256, size=(3000,), dtype=np.uint8)),  # does not shrink: stored raw
        "short.noise": ("U8", rng.integers(0, 256, size=(500,), dtype=np.uint8)),  # the same, in one chunk
        "empty": ("F32", np.zeros((0, 4), np.float32)),
    }
    path = write_safetensors(tmp_path / "model.safetensors", tensors)
    zoo.compress(path, tmp_path / "m.zoo", chunk_bytes=1024)
    return tmp_path / "m.zoo", {name: raw for name, (_, raw) in tensors.items()}


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_every_tensor_reads_back_exact_and_writable(mixed_model, threads):
    path, expected = mixed_model
    with zoo.open(path) as archive:
        for name, raw in expected.items():
            first = archive.read_tensor(name, threads=threads).data
            np.testing.assert_array_equal(first, raw)
            assert first.flags.writeable and first.flags.c_contiguous
            if first.size:
                first.reshape(-1)[0] += 1  # each read hands out its own memory
                np.testing.assert_array_equal(archive.read_tensor(name, threads=threads).data, raw)


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_many_tensors_read_together_come_back_exact_in_the_order_asked(mixed_model, threads):
    path, expected = mixed_model
    names = ["small.bias", "big.weight", "empty", "noise", "odd.weight", "short.noise"]
    with zoo.open(path) as archive:
        assert archive._chunk_count("big.weight") == 12 and archive._chunk_count("small.bias") == 1
        together = archive.read_tensors(names, threads=threads)
    assert list(together) == names
    for name in names:
        np.testing.assert_array_equal(together[name].data, expected[name])


def test_reading_many_tensors_names_a_damaged_one(mixed_model):
    path, _ = mixed_model
    damage_chunk(path, "odd.weight", 0)
    with zoo.open(path) as archive, pytest.raises(ChecksumError, match="odd.weight.*chunk 0 is damaged"):
        archive.read_tensors(archive.keys(), threads=2)


@pytest.mark.parametrize("threads", [1, 2])
def test_a_damaged_chunk_in_the_middle_is_named(mixed_model, threads):
    path, expected = mixed_model
    damage_chunk(path, "big.weight", 7)
    with zoo.open(path) as archive:
        with pytest.raises(ChecksumError, match="chunk 7 is damaged"):
            archive.read_tensor("big.weight", threads=threads)
        np.testing.assert_array_equal(archive.read_tensor("small.bias", threads=threads).data, expected["small.bias"])
        problems = archive.verify(threads=threads)
    assert any("chunk 7" in problem for problem in problems)


@pytest.mark.parametrize("threads", [1, 2])
def test_a_file_streams_back_exact_across_chunk_edges(mixed_model, threads):
    path, _ = mixed_model
    original = (path.parent / "model.safetensors").read_bytes()
    with zoo.open(path) as archive:
        assert archive.read_file("model.safetensors", threads=threads) == original
        for start, end in [(0, 1), (1023, 1025), (5000, 9000), (len(original) - 3, None)]:
            assert b"".join(archive.iter_file("model.safetensors", start, end, threads=threads)) == original[start:end]


def test_an_open_archive_reads_each_chunk_index_once_and_still_checks_every_chunk(mixed_model, monkeypatch):
    """`zoo serve` keeps archives open between downloads: the indexes are read and checked once
    (the layout check reads them all), the chunks on every read."""
    path, _ = mixed_model
    original = (path.parent / "model.safetensors").read_bytes()
    from zoo.container.format import ArchiveFile

    index_reads: list[str] = []
    index_table = ArchiveFile.index_table
    monkeypatch.setattr(ArchiveFile, "index_table", lambda self, leaf, what: index_reads.append(what) or index_table(self, leaf, what))
    with zoo.open(path) as archive:
        assert b"".join(archive.iter_file("model.safetensors")) == original
        first = len(index_reads)
        assert b"".join(archive.iter_file("model.safetensors")) == original
        assert len(index_reads) == first == len(set(index_reads))
        damage_chunk(path, "big.weight", 7)  # under the open archive, as a failing disk would
        with pytest.raises(ChecksumError, match="chunk 7 is damaged"):
            b"".join(archive.iter_file("model.safetensors"))


def test_a_view_reads_back_writable_and_its_own(tmp_path):
    """A torch checkpoint's views (a tied weight, a slice's first rows) were read-only arrays where
    they lay contiguous in their storage: np.ascontiguousarray gave back the read-only view."""
    import torch

    embedding, rows = torch.randn(50, 16), torch.randn(40, 30)
    (tmp_path / "ck").mkdir()
    torch.save({"emb.weight": embedding, "head.weight": embedding, "first": rows[:5], "column": rows[:, 3]}, tmp_path / "ck" / "ckpt.pt")
    zoo.compress(tmp_path / "ck", tmp_path / "ck.zoo")
    expected = {"emb.weight": embedding, "head.weight": embedding, "first": rows[:5], "column": rows[:, 3]}
    with zoo.open(tmp_path / "ck.zoo") as archive:
        assert "view" in archive.tensor_info("head.weight") and "view" in archive.tensor_info("first")
        for name, tensor in expected.items():
            read = [archive.get_tensor(name), archive.get_slice(name)[0:2]]
            for array, want in zip(read, [tensor, tensor[0:2]]):
                np.testing.assert_array_equal(array, want.numpy())
                assert array.flags.writeable and array.flags.c_contiguous, name
            read[0][0] += 1  # its own memory: no other tensor read changes
            np.testing.assert_array_equal(archive.get_tensor("emb.weight"), embedding.numpy())
            np.testing.assert_array_equal(archive.get_tensor(name), tensor.numpy())
    # load_state_dict keeps them tied, as torch.load does
    state = zoo.load_state_dict(tmp_path / "ck.zoo")
    assert state["head.weight"].data_ptr() == state["emb.weight"].data_ptr()
