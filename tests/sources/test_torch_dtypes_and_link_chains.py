"""What odd folders hold, read back: torch checkpoints of every dtype torch saves,
checkpoints torch's meta device cannot rebuild, links in chains. Each file comes back bit for bit
and each tensor as torch.load gives it."""

from __future__ import annotations

import argparse
import hashlib
import os
import warnings
from pathlib import Path

import pytest

import zoo
from tests.container.forge import forge
from tests.sources.conftest import torch
from zoo.container.format import ArchiveFile, version_of
from zoo.errors import InputError, ZooWarning


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def same_tensor(got: torch.Tensor, expected: torch.Tensor) -> bool:
    if got.dtype != expected.dtype or got.shape != expected.shape:
        return False
    return torch.equal(got.contiguous().reshape(-1).view(torch.uint8), expected.contiguous().reshape(-1).view(torch.uint8))


@pytest.mark.parametrize("dtype", ["float8_e4m3fn", "float8_e5m2", "float8_e8m0fnu", "uint16", "uint32", "uint64", "complex128"])
def test_tensors_of_every_dtype_torch_saves_are_read_as_torch_reads_them(tmp_path, dtype):
    # torch saves newer dtypes (float8, uint16...) in untyped storages, the tensor naming its dtype;
    # complex128 has no zoo name and used to refuse the whole file
    raw = torch.arange(64, dtype=torch.uint8)
    weight = raw.view(getattr(torch, dtype)).reshape(2, -1)
    path = tmp_path / "model.pt"
    torch.save({"weight": weight, "row": weight[1], "column": weight[:, 1]}, path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        zoo.compress(path, tmp_path / "m.zoo")
    left_out = [str(w.message) for w in caught if "kept in the file's bytes only" in str(w.message)]
    assert len(left_out) == (dtype == "complex128")
    zoo.decompress(tmp_path / "m.zoo", tmp_path / "out")
    assert sha256(tmp_path / "out" / "model.pt") == sha256(path)
    state, expected = zoo.load_state_dict(tmp_path / "m.zoo"), torch.load(path, weights_only=True)
    for name in ("weight", "row", "column"):
        if dtype == "complex128":  # no zoo dtype: its bytes are kept, never handed out as another dtype
            assert name not in state
        else:
            assert same_tensor(state[name], expected[name]), name


def test_packed_float4_tensors_keep_their_values(tmp_path):
    weight = torch.arange(12, dtype=torch.uint8).view(torch.float4_e2m1fn_x2).reshape(3, 4)
    path = tmp_path / "model.pt"
    torch.save({"weight": weight}, path)
    zoo.compress(path, tmp_path / "m.zoo")
    assert same_tensor(zoo.load_state_dict(tmp_path / "m.zoo")["weight"], weight)


def test_views_of_packed_float4_tensors_come_back(tmp_path):
    # they were left out of the archive's tensors, and so of load_state_dict, with no word
    weight = torch.arange(32, dtype=torch.uint8).view(torch.float4_e2m1fn_x2).reshape(4, 8)
    views = {"rows": weight[1:3], "transposed": weight.t(), "columns": weight[:, 2:5]}
    path = tmp_path / "model.pt"
    torch.save({"weight": weight, **views, "pair": weight[0, 1]}, path)
    with pytest.warns(ZooWarning, match=r"pair \(a 0-d F4 tensor\) is kept in the file's bytes"):
        zoo.compress(path, tmp_path / "m.zoo")
    shapes = {entry.name: entry.shape for entry in zoo.report_of(tmp_path / "m.zoo").tensors}
    assert shapes == {"weight": [4, 16], "rows": [2, 16], "transposed": [8, 8], "columns": [4, 6]}  # values, two a byte
    state = zoo.load_state_dict(tmp_path / "m.zoo")
    assert set(state) == {"weight", *views}
    for name, expected in {"weight": weight, **views}.items():
        assert same_tensor(state[name], expected.contiguous()), name
    zoo.decompress(tmp_path / "m.zoo", tmp_path / "out")
    assert sha256(tmp_path / "out" / "model.pt") == sha256(path)
    # counted in bytes, where a reader could count values: the header says so, and without it the view is refused
    opened = ArchiveFile(tmp_path / "m.zoo")
    assert opened.header["features"] == ["f4-views"] and version_of(opened.header) == 3
    opened.close()
    forged = forge(tmp_path / "m.zoo", lambda header: header.pop("features"))
    with pytest.raises(zoo.ZooError, match="is a view of F4 values, but the header does not list the feature"):
        zoo.load_state_dict(forged)


def test_a_storage_viewed_only_in_part_is_no_key_of_the_state_dict(tmp_path):
    # nn.Linear.load_state_dict(strict=True) refused the state dict: Unexpected key(s) "weight.__storage__"
    linear = torch.nn.Linear(4, 6)
    storage = torch.randn(12, 4)
    path = tmp_path / "part.bin"
    torch.save({"weight": storage[:6], "bias": linear.bias.detach()}, path)
    zoo.compress(path, tmp_path / "m.zoo")
    assert "weight.__storage__" in {entry.name for entry in zoo.report_of(tmp_path / "m.zoo").tensors}  # stored all the same
    state = zoo.load_state_dict(tmp_path / "m.zoo")
    assert sorted(state) == ["bias", "weight"] and same_tensor(state["weight"], storage[:6])
    linear.load_state_dict(state)


@pytest.mark.parametrize("dtype", ["complex32", "bits8"])
def test_a_tensor_zoo_has_no_dtype_for_is_never_handed_out_as_bytes(tmp_path, dtype):
    # complex32 came back as 6 uint8 values of its 24 bytes
    weight = torch.arange(24 if dtype == "complex32" else 6, dtype=torch.uint8).view(getattr(torch, dtype))
    path = tmp_path / "model.pt"
    torch.save({"weight": weight, "part": weight[1:3]}, path)
    with pytest.warns(ZooWarning, match=rf"model.pt: weight \({dtype}\), part \({dtype}\) kept in the file's bytes only"):
        zoo.compress(path, tmp_path / "m.zoo")  # said once, where the tensors are left out; load_state_dict said nothing
    zoo.decompress(tmp_path / "m.zoo", tmp_path / "out")
    assert sha256(tmp_path / "out" / "model.pt") == sha256(path)
    state = zoo.load_state_dict(tmp_path / "m.zoo")
    assert "weight" not in state and "part" not in state


@pytest.mark.parametrize("size", [10, 7])
def test_a_key_named_like_a_storage_is_a_tensor_of_its_own(tmp_path, size):
    # The storage that `x` views in part took the name `x.__storage__`, which the checkpoint also
    # had as a key: of the same size, both pointed at one tensor and compress wrote (exit 0) an
    # archive its own decompress refused; of another, compress failed naming its temporary file.
    # And load_state_dict left the real key out, reading it as a storage by its name.
    whole = torch.arange(10.0)
    state = {"x": whole[2:5], "x.__storage__": torch.ones(size), "__storage__.0": torch.full((3,), 2.0)}
    path = tmp_path / "model.pt"
    torch.save(state, path)
    zoo.compress(path, tmp_path / "m.zoo")
    assert zoo.verify(tmp_path / "m.zoo") == []
    zoo.decompress(tmp_path / "m.zoo", tmp_path / "out")
    assert sha256(tmp_path / "out" / "model.pt") == sha256(path)
    got = zoo.load_state_dict(tmp_path / "m.zoo")
    assert sorted(got) == sorted(state) and all(same_tensor(got[key], value) for key, value in state.items())


def test_a_storage_compressed_inside_the_zip_is_named_when_its_tensor_is_left_out(tmp_path):
    import zipfile

    torch.save({"w": torch.zeros(100, 10), "v": torch.randn(5)}, tmp_path / "plain.pt")
    with zipfile.ZipFile(tmp_path / "plain.pt") as plain, zipfile.ZipFile(tmp_path / "model.pt", "w") as deflated:
        for info in plain.infolist():
            deflated.writestr(zipfile.ZipInfo(info.filename), plain.read(info),
                              compress_type=zipfile.ZIP_DEFLATED if info.filename.endswith("data/0") else zipfile.ZIP_STORED)
    assert sorted(torch.load(tmp_path / "model.pt", weights_only=True)) == ["v", "w"]
    with pytest.warns(ZooWarning, match=r"model.pt: w \(its storage is compressed inside the zip\) kept in the file's bytes only"):
        zoo.compress(tmp_path / "model.pt", tmp_path / "m.zoo")
    assert sorted(zoo.load_state_dict(tmp_path / "m.zoo")) == ["v"]


@pytest.mark.parametrize("layout", ["zip", "legacy"])
def test_a_big_endian_checkpoint_is_refused_not_read_with_its_bytes_swapped(tmp_path, layout):
    # load_state_dict gave [1, 2, 3] back as [4.6e-41, 9.0e-44, 2.3e-41]; a lossy stage would have
    # coded those values. Refused alone; in a folder kept as its bytes, with the reason.
    import pickle
    import zipfile

    import numpy as np

    values = {"w": torch.tensor([1.0, 2.0, 3.0])}
    model = tmp_path / "model"
    model.mkdir()
    path = model / "model.pt"
    if layout == "zip":
        torch.save(values, tmp_path / "little.pt")
        with zipfile.ZipFile(tmp_path / "little.pt") as little, zipfile.ZipFile(path, "w") as big:
            for info in little.infolist():
                data = little.read(info)
                if info.filename.endswith("/byteorder"):
                    data = b"big"
                elif "/data/" in info.filename:
                    data = np.frombuffer(data, "<u4").byteswap().tobytes()
                big.writestr(info, data)
    else:
        torch.save(values, tmp_path / "little.pt", _use_new_zipfile_serialization=False)
        with open(tmp_path / "little.pt", "rb") as stream:
            magic, protocol, info = (pickle.load(stream) for _ in range(3))
            rest = stream.read()
        info["little_endian"] = False
        with open(path, "wb") as stream:
            for item in (magic, protocol, info):
                pickle.dump(item, stream, protocol=2)
            stream.write(rest)  # the storage's bytes as they were: only what the file says of them matters here
    if layout == "zip":
        assert torch.equal(torch.load(path, weights_only=True)["w"], values["w"])  # torch swaps them back
    with pytest.raises(InputError, match=r"model.pt: a big-endian checkpoint \(torch.load swaps its bytes\)"):
        zoo.compress(path, tmp_path / "m.zoo")
    assert not (tmp_path / "m.zoo").exists()
    zoo.compress(model, tmp_path / "folder.zoo")
    assert [entry.get("opaque", "") for entry in zoo.open(tmp_path / "folder.zoo").files()][0].startswith("a big-endian checkpoint")
    zoo.decompress(tmp_path / "folder.zoo", tmp_path / "out")
    assert sha256(tmp_path / "out" / "model.pt") == sha256(path)


def test_a_checkpoint_torch_cannot_rebuild_on_meta_is_refused_in_one_line(tmp_path):
    # torch's error for quantized tensors on the meta device ran to 50 lines
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's deprecation of quantized tensors
        weight = torch.quantize_per_tensor(torch.randn(6), 0.1, 0, torch.qint8)
    torch.save({"weight": weight}, tmp_path / "q.pt")
    with pytest.raises(InputError) as caught:
        zoo.compress(tmp_path / "q.pt", tmp_path / "q.zoo")
    assert "\n" not in str(caught.value) and len(str(caught.value)) < 300
    assert not (tmp_path / "q.zoo").exists()


def test_an_empty_checkpoint_is_named_as_such(tmp_path):
    (tmp_path / "empty.bin").write_bytes(b"")
    with pytest.raises(InputError, match=r"empty.bin: not a readable PyTorch checkpoint: EOFError \(the file ends early\)$"):
        zoo.compress(tmp_path / "empty.bin", tmp_path / "e.zoo")


def test_a_chain_of_links_comes_back_as_the_same_chain(tmp_path):
    folder = tmp_path / "chain"
    (folder / "sub").mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    os.symlink("config.json", folder / "first")
    os.symlink("first", folder / "second")  # came back pointing at config.json, the end of the chain
    os.symlink("../second", folder / "sub" / "third")
    os.symlink(folder / "first", folder / "absolute")  # absolute: made relative, to the link it names
    zoo.compress(folder, tmp_path / "c.zoo")
    zoo.decompress(tmp_path / "c.zoo", tmp_path / "out")
    links = {name: os.readlink(tmp_path / "out" / name) for name in ("first", "second", "sub/third", "absolute")}
    assert links == {"first": "config.json", "second": "first", "sub/third": "../second", "absolute": "first"}
    assert (tmp_path / "out" / "sub" / "third").read_text() == "{}"


def test_a_file_kept_as_bytes_is_said_to_need_globals_only_when_it_does(tmp_path):
    """A pickle of protocol 4 (torch.save(..., pickle_protocol=4)) or text under a torch name are
    kept as bytes for an opcode torch's weights-only reader does not take, not for globals. (Random
    bytes would not do: their first byte can be an opcode that fails in another way.)"""
    folder = tmp_path / "model"
    folder.mkdir()
    torch.save({"w": torch.zeros(4)}, folder / "p4.pt", pickle_protocol=4)
    (folder / "notes.bin").write_bytes(b"not a checkpoint\n" * 4)
    torch.save({"args": argparse.Namespace(lr=0.1)}, folder / "args.bin")
    zoo.compress(folder, tmp_path / "m.zoo")
    reasons = {entry["path"]: entry.get("opaque") for entry in zoo.report_of(tmp_path / "m.zoo").files}
    assert reasons["args.bin"] == "pickle needs globals"
    assert reasons["p4.pt"] == "not a pickle torch.load(weights_only=True) reads: Unsupported operand 149"
    assert reasons["notes.bin"] == "not a pickle torch.load(weights_only=True) reads: Unsupported operand 110"


def test_tied_weights_and_views_share_memory_as_torch_load_gives_them(tmp_path):
    """load_state_dict gave each view (a tied embedding, a slice) a copy of its own, and decoded
    the storage once per view: twice the memory of torch.load for a tied model's embedding."""
    embedding = torch.randn(64, 16)
    path = tmp_path / "pytorch_model.bin"
    torch.save({"embed.weight": embedding, "lm_head.weight": embedding, "rows": embedding[8:24], "transposed": embedding.t(),
                "bias": torch.randn(16)}, path)
    expected = torch.load(path, weights_only=True)
    zoo.compress(path, tmp_path / "m.zoo")
    state = zoo.load_state_dict(tmp_path / "m.zoo")
    assert set(state) == set(expected)
    for name, tensor in expected.items():
        assert same_tensor(state[name], tensor) and state[name].stride() == tensor.stride(), name

    def storage_of(tensors):
        return {name: tensor.untyped_storage().data_ptr() for name, tensor in tensors.items()}

    ours, theirs = storage_of(state), storage_of(expected)
    assert len(set(ours.values())) == len(set(theirs.values())) == 2
    assert all((ours[a] == ours[b]) == (theirs[a] == theirs[b]) for a in ours for b in ours)
    assert state["lm_head.weight"].data_ptr() == state["embed.weight"].data_ptr()


def test_a_tied_weight_kept_exact_keeps_the_storage_it_shares_exact(tmp_path):
    """lm_head.weight tied to the embedding (one storage) came back lossy under
    exclude=lm_head*: the stage looked only at the storage's own name."""
    torch.manual_seed(0)
    embedding = torch.randn(256, 64)
    torch.save({"transformer.wte.weight": embedding, "h.0.mlp.weight": torch.randn(64, 64), "lm_head.weight": embedding},
               tmp_path / "tied.bin")
    zoo.compress(tmp_path / "tied.bin", tmp_path / "t.zoo", "codebook:bits=4,exclude=lm_head*")
    original, loaded = torch.load(tmp_path / "tied.bin"), zoo.load_state_dict(tmp_path / "t.zoo")
    assert torch.equal(loaded["lm_head.weight"], original["lm_head.weight"])
    assert torch.equal(loaded["transformer.wte.weight"], original["transformer.wte.weight"])
    assert not torch.equal(loaded["h.0.mlp.weight"], original["h.0.mlp.weight"])  # the stage still codes what it may
    zoo.compress(tmp_path / "tied.bin", tmp_path / "all.zoo", "codebook:bits=4")  # nothing excluded: the shared storage is coded
    assert not torch.equal(zoo.load_state_dict(tmp_path / "all.zoo")["lm_head.weight"], original["lm_head.weight"])


def test_a_tied_weight_is_matched_by_its_key_in_a_folder_of_two_checkpoints(tmp_path):
    """The rule above compared a view's bare name with patterns that match keys: in a folder whose
    second checkpoint's keys are `ck/pytorch_model.bin::NAME`, excluding its tied lm_head by key
    left the storage lossy, and including ck/* kept ck's embedding exact."""
    torch.manual_seed(0)
    for where in ("m", "m/ck"):
        (tmp_path / where).mkdir(parents=True, exist_ok=True)
        embedding = torch.randn(256, 64)
        torch.save({"emb.weight": embedding, "lin.weight": torch.randn(64, 64), "lm_head.weight": embedding},
                   tmp_path / where / "pytorch_model.bin")
    original = torch.load(tmp_path / "m" / "ck" / "pytorch_model.bin")
    for spec, exact in (("truncate:bits=2,exclude=ck/pytorch_model.bin::lm_head.weight", True), ("truncate:bits=2,include=ck/*", False)):
        zoo.compress(tmp_path / "m", tmp_path / "m.zoo", spec, force=True)
        with zoo.open(tmp_path / "m.zoo") as archive:
            tied = archive.get_tensor("ck/pytorch_model.bin::lm_head.weight", "pt")
        assert torch.equal(tied, original["lm_head.weight"]) is exact, spec


def test_a_file_that_starts_as_no_checkpoint_is_named_as_such(tmp_path):
    """Text in a .bin was "not a readable PyTorch checkpoint: KeyError: 101" (the unpickler's
    reading of the letter e), by compress and by eval alike."""
    from zoo.evaluate.weights import _TorchFile

    (tmp_path / "h.bin").write_bytes(b"hello")
    with pytest.raises(InputError, match=r"h.bin: neither a zip nor a legacy PyTorch checkpoint \(no pickle of protocol 2 or later"):
        zoo.compress(tmp_path / "h.bin", tmp_path / "h.zoo")
    with pytest.raises(InputError, match=r"h.bin: neither a zip nor a legacy PyTorch checkpoint"):
        _TorchFile(tmp_path / "h.bin")


def test_tensor_names_that_are_not_utf8_leave_the_file_as_bytes(tmp_path):
    """A safetensors header's "\\ud800x" or a pickle's key "\\ud800" (lone surrogates, which the
    safetensors library itself refuses) were stored as tensor names, and `zoo info` and the
    --json output failed on them; the file is kept as bytes instead, as for other headers zoo
    cannot take."""
    import struct

    model = tmp_path / "model"
    model.mkdir()
    header = b'{"\\ud800x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}'
    header += b" " * (-len(header) % 8)
    (model / "a.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + bytes(8))
    torch.save({"\ud800evil": torch.ones(4), "ok": torch.zeros(3)}, model / "pytorch_model.bin")
    report = zoo.compress(model, tmp_path / "m.zoo")
    assert not report.tensors and len(report.opaque) == 2, report.opaque
    assert zoo.decompress(tmp_path / "m.zoo", tmp_path / "out").files
    assert (tmp_path / "out" / "a.safetensors").read_bytes() == (model / "a.safetensors").read_bytes()
    with pytest.raises(InputError, match="not UTF-8"):
        zoo.compress(model / "a.safetensors", tmp_path / "a.zoo")


def test_a_cut_zip_checkpoint_is_said_to_be_unreadable_as_a_zip(tmp_path):
    """Its first bytes are a zip's: the zip reader's words, not "neither a zip nor a legacy checkpoint"."""
    torch.save({"w": torch.ones(64, 64)}, tmp_path / "f.bin")
    whole = (tmp_path / "f.bin").read_bytes()
    (tmp_path / "t.bin").write_bytes(whole[:len(whole) // 2])
    with pytest.raises(InputError, match=r"t.bin: not a readable PyTorch checkpoint: BadZipFile"):
        zoo.compress(tmp_path / "t.bin", tmp_path / "t.zoo")


def test_a_checkpoint_saved_without_crc32s_is_read_as_torch_reads_it(tmp_path):
    """torch.save with `compute_crc32=False` (torch.utils.serialization.config) writes zeros for
    every member's CRC-32, and torch.load reads it: zoo called it 'not a readable PyTorch
    checkpoint: BadZipFile: Bad CRC-32', alone, and kept it as bytes in a folder."""
    from torch.utils import serialization

    values = {"w": torch.randn(64, 64), "b": torch.arange(8)}
    model = tmp_path / "model"
    model.mkdir()
    before = serialization.config.save.compute_crc32
    serialization.config.save.compute_crc32 = False
    try:
        torch.save(values, model / "pytorch_model.bin")
    finally:
        serialization.config.save.compute_crc32 = before
    import zipfile

    with zipfile.ZipFile(model / "pytorch_model.bin") as archive:  # the file is what the test says it is
        assert all(info.CRC == 0 for info in archive.infolist() if info.file_size)
    for source, out in ((model / "pytorch_model.bin", tmp_path / "file.zoo"), (model, tmp_path / "folder.zoo")):
        zoo.compress(source, out)
        state = zoo.load_state_dict(out)
        assert sorted(state) == ["b", "w"] and all(same_tensor(state[k], values[k]) for k in values)
    zoo.decompress(tmp_path / "folder.zoo", tmp_path / "out")
    assert sha256(tmp_path / "out" / "pytorch_model.bin") == sha256(model / "pytorch_model.bin")


def test_a_tensor_on_the_meta_device_is_named_as_left_out(tmp_path):
    """torch pickles a meta tensor without a storage: it was left out of the tensors, and of
    load_state_dict, without a word."""
    torch.save({"m": torch.empty(3, 4, device="meta"), "w": torch.randn(3)}, tmp_path / "meta.pt")
    with pytest.warns(ZooWarning, match=r"meta.pt: m \(on the meta device: no values\) kept in the file's bytes only, not as a tensor"):
        zoo.compress(tmp_path / "meta.pt", tmp_path / "m.zoo")
    assert sorted(zoo.load_state_dict(tmp_path / "m.zoo")) == ["w"]
    zoo.decompress(tmp_path / "m.zoo", tmp_path / "out")
    assert sha256(tmp_path / "out" / "meta.pt") == sha256(tmp_path / "meta.pt")
