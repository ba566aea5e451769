"""One contract over every registered codec: it round-trips (exactly, or within its declared
tolerance), its config survives JSON, and no codec class is missing from the registry.

Every codec must be constructible with its default arguments."""

import importlib
import inspect
import json
import pkgutil
import struct

import numpy as np
import pytest

import zoo
import zoo.codecs
from zoo.codecs.base import ArrayCodec, BytesCodec, Codec, GroupingCodec, LossyCodec
from zoo.codecs.registry import CODECS, codec_from_config
from zoo.dtypes import DTYPES, FLOAT_DTYPES, to_float32
from zoo.codecs.lossy.codebook import Codebook
from zoo.codecs.pipeline import Pipeline
from zoo.errors import FormatError

from tests.conftest import random_storage, write_safetensors


def test_every_codec_class_is_registered():
    found = set()
    # walk_packages: the codecs sit in zoo/codecs/lossless/ and lossy/, below the package itself.
    for module_info in pkgutil.walk_packages(zoo.codecs.__path__, "zoo.codecs."):
        module = importlib.import_module(module_info.name)
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if issubclass(cls, Codec) and getattr(cls, "codec_id", None) and cls.__module__ == module.__name__:
                found.add(cls)
    assert found, "the walk found no codec class at all"
    assert found - set(CODECS) == set()
    assert len({cls.codec_id for cls in CODECS}) == len(CODECS)


@pytest.mark.parametrize("cls", CODECS, ids=lambda cls: cls.codec_id)
def test_config_survives_json(cls):
    codec = cls()
    config = codec.get_config()
    assert config["id"] == cls.codec_id
    again = codec_from_config(json.loads(json.dumps(config)))
    assert again == codec and repr(again) == repr(codec)


leaf_codecs = [cls for cls in CODECS if issubclass(cls, (GroupingCodec, BytesCodec))]
array_codecs = [cls for cls in CODECS if issubclass(cls, ArrayCodec)]
# The defining parameter of a stage that has none by default (LossyCodec.needs_one_of), at the
# value its declared tolerance is measured at.
DEFINING = {"lowrank": ":energy=0.99"}


def test_every_array_codec_is_lossy_with_a_tolerance():
    for cls in array_codecs:
        assert issubclass(cls, LossyCodec) and cls.tolerance > 0, cls.codec_id
        assert not cls.needs_one_of or cls.codec_id in DEFINING, cls.codec_id


@pytest.mark.parametrize("cls", leaf_codecs, ids=lambda cls: cls.codec_id)
@pytest.mark.parametrize("dtype", ["BF16", "F16", "F32", "F64", "F8_E5M2", "I32", "U8", "BOOL"])
@pytest.mark.parametrize("count", [0, 1, 7, 255, 4097])
def test_leaf_codecs_are_exact(cls, dtype, count):
    spec = f"{cls.codec_id}|zstd" if issubclass(cls, GroupingCodec) else f"bytegroup|{cls.codec_id}"
    pipeline = Pipeline.parse(spec)
    raw = random_storage(dtype, (count,), count).reshape(-1).view(np.uint8)
    if count:
        assert pipeline.decode_chunk(pipeline.encode_chunk(raw, dtype), dtype, count).tobytes() == raw.tobytes()


@pytest.mark.parametrize("spec", ["lossless", "bytegroup", "fprans|zstd"])
@pytest.mark.parametrize("dtype", ["BF16", "F16", "F32", "F8_E4M3", "I32"])
@pytest.mark.parametrize("count", [0, 1, 4097])
def test_a_chunk_coded_after_its_header_is_the_joined_chunk(spec, dtype, count, monkeypatch):
    # Without a bytes stage, a grouping codec that makes one stream codes it after the chunk's
    # header and fills in its lengths: the bytes must be those of header + stream, joined.
    pipeline = Pipeline.parse(spec)
    raw = random_storage(dtype, (count,), count + 3).reshape(-1).view(np.uint8)
    streams = pipeline.grouping.encode(raw, dtype)
    coded = [pipeline.bytes_stages[0].encode(stream) for stream in streams] if pipeline.bytes_stages else streams
    if spec == "lossless" and dtype != "I32":  # I32 goes in byte planes, with their own headers
        monkeypatch.setattr(pipeline.grouping, "encode", None)  # the path without a join must not need it
    chunk = pipeline.encode_chunk(raw, dtype)
    # each stream as the generic path stores it: coded where that is shorter, else as it is (flag 1)
    stored = [(0, bytes(body), len(plain)) if len(body) < len(plain) else (1, plain, len(plain))
              for body, plain in zip(coded, (bytes(memoryview(stream).cast("B")) for stream in streams))]
    joined = bytes([len(streams)]) + b"".join(struct.pack("<BII", flag, len(body), size) for flag, body, size in stored) \
        + b"".join(body for _, body, _ in stored)
    assert bytes(chunk) == joined
    assert pipeline.decode_chunk(bytes(chunk), dtype, count).tobytes() == raw.tobytes()


@pytest.mark.parametrize("cls", array_codecs, ids=lambda cls: cls.codec_id)
@pytest.mark.parametrize("dtype", ["F32", "BF16", "F16"])
def test_array_codecs_within_tolerance(cls, dtype, tmp_path):
    weight = random_storage(dtype, (64, 96), 5)
    bias = random_storage(dtype, (96,), 6)
    source = write_safetensors(tmp_path / "m.safetensors", {"layer.weight": (dtype, weight), "layer.bias": (dtype, bias)})
    zoo.compress(source, tmp_path / "m.zoo", f"{cls.codec_id}{DEFINING.get(cls.codec_id, '')}|lossless")
    with zoo.open(tmp_path / "m.zoo") as archive:
        decoded = archive.read_tensor("layer.weight")
        assert decoded.dtype == dtype and decoded.shape == weight.shape
        original = to_float32(weight, dtype) if dtype != "F32" else weight
        got = to_float32(decoded.data, dtype) if dtype != "F32" else decoded.data
        error = np.sqrt(np.mean((got - original) ** 2) / np.mean(original**2))
        assert error <= cls.tolerance, f"{cls.codec_id} relative RMS error {error:.4f} > tolerance {cls.tolerance}"
        assert archive.read_tensor("layer.bias").data.tobytes() == bias.tobytes()  # vectors stay lossless


@pytest.mark.parametrize("cls", array_codecs, ids=lambda cls: cls.codec_id)
def test_array_codecs_leave_dtypes_they_cannot_rebuild_alone(cls, tmp_path):
    # codebook once quantized F64 and F8 matrices to parts it could only decode to F32/F16/BF16:
    # compress wrote the archive, verify and every read then failed.
    tensors = {f"{dtype.lower()}.weight": (dtype, random_storage(dtype, (16, 24), seed))
               for seed, dtype in enumerate(["F64", "F8_E4M3", "F8_E5M2", "F32"])}
    source = write_safetensors(tmp_path / "m.safetensors", tensors)
    reachable = ":target_ratio=1.8" if cls.codec_id == "l2" else ""  # the default 10 is beyond what 4 small matrices reach (about 1.9)
    zoo.compress(source, tmp_path / "m.zoo", f"{cls.codec_id}{DEFINING.get(cls.codec_id, '')}{reachable}|lossless")
    assert zoo.verify(tmp_path / "m.zoo") == []
    assert "F32" in cls.dtypes and cls.dtypes <= FLOAT_DTYPES
    with zoo.open(tmp_path / "m.zoo") as archive:
        for name, (dtype, raw) in tensors.items():
            decoded = archive.read_tensor(name)
            assert decoded.dtype == dtype and decoded.shape == raw.shape, name
            wider = cls.codec_id != "l2" or DTYPES[dtype].bits > 16  # l2 at target_ratio=1.8 leaves what takes 16 bits or fewer
            assert ("stage" in archive.tensor_info(name)["root"]) == (dtype in cls.dtypes and wider), name
            if dtype not in cls.dtypes:
                assert decoded.data.tobytes() == raw.tobytes(), name


def test_a_codebook_node_of_another_dtype_is_refused_by_name(tmp_path, monkeypatch):
    source = write_safetensors(tmp_path / "m.safetensors", {"old.weight": ("F64", random_storage("F64", (8, 8)))})
    monkeypatch.setattr(Codebook, "dtypes", FLOAT_DTYPES)  # as zoo wrote such archives before
    zoo.compress(source, tmp_path / "m.zoo", "codebook:bits=2|lossless")
    monkeypatch.undo()
    with zoo.open(tmp_path / "m.zoo") as archive, pytest.raises(FormatError, match="tensor 'old.weight': codebook: cannot rebuild a F64 tensor"):
        archive.read_tensor("old.weight")
