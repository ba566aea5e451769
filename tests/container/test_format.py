"""The archive format: golden archives from every version, exact header bytes, property round trips."""

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import zoo
from zoo.dtypes import DTYPES, from_float32, to_float32
from zoo.codecs.pipeline import Pipeline

from tests.conftest import random_storage, write_safetensors

GOLDEN = Path(__file__).parent.parent / "golden"


@pytest.mark.parametrize("archive", sorted(GOLDEN.glob("v*/*.zoo")), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_golden_archives_decode_bit_exact(archive, tmp_path):
    zoo.decompress(archive, tmp_path / "out")
    expected = json.loads(archive.with_suffix(".sha256.json").read_text())
    got = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in (tmp_path / "out").rglob("*") if p.is_file()}
    assert got == expected


def test_golden_v1_tensors():
    ramp = lambda count: (np.arange(count, dtype=np.float32) - count / 2) / 7  # noqa: E731 - as make_v1.py wrote it
    with zoo.open(GOLDEN / "v1" / "lossless.zoo") as archive:
        np.testing.assert_array_equal(archive.get_tensor("ramp.f32"), ramp(300).reshape(3, 100))
        np.testing.assert_array_equal(archive.get_tensor("ramp.bf16"), to_float32(from_float32(ramp(96), "BF16"), "BF16").reshape(8, 12))
        np.testing.assert_array_equal(archive.get_tensor("ids"), np.arange(10))
        assert archive.get_tensor("scalar") == np.float32(3.5)
        assert archive.get_tensor("empty").shape == (0, 4)
        assert zoo.verify(GOLDEN / "v1" / "lossless.zoo") == []


def test_exact_header_bytes(tmp_path):
    source = write_safetensors(tmp_path / "w.safetensors", {"w": ("F32", np.zeros(2, dtype=np.float32))})
    zoo.compress(source, tmp_path / "w.zoo")
    data = (tmp_path / "w.zoo").read_bytes()
    assert data[:16] == b"\x89ZOO\r\n\x1a\n" + (1).to_bytes(4, "little") + data[12:16]
    length = int.from_bytes(data[16:24], "little")
    header = data[24:24 + length]
    assert header.startswith(b'{"created_by":"zoo ')
    mode = source.stat().st_mode & 0o777
    assert (b'"files":[{"kind":"safetensors","lossless":true,"mode":%d,"path":"w.safetensors","segments":[{"blob":{"leaf":{"chunk_elements":4194304,' % mode) in header
    assert b'"tensors":{"w":{"dtype":"F32","file":"w.safetensors","name":"w","pipeline":[{"id":"fprans"}]' in header


storable = sorted(d for d in DTYPES if DTYPES[d].storage)


@settings(max_examples=60, deadline=None)
@given(dtype=st.sampled_from(storable), count=st.integers(0, 3000), seed=st.integers(0, 2**16), chunk=st.sampled_from([1, 7, 64, 255, 4096]))
def test_chunk_round_trip_property(dtype, count, seed, chunk):
    raw = random_storage(dtype, (count,), seed).reshape(-1).view(np.uint8)
    pipeline = Pipeline.parse("lossless")
    itemsize = DTYPES[dtype].itemsize
    elements = max(1, chunk // itemsize)
    for first in range(0, count, elements):
        piece = raw[first * itemsize:(first + min(elements, count - first)) * itemsize]
        n = piece.size // itemsize
        assert pipeline.decode_chunk(pipeline.encode_chunk(piece, dtype), dtype, n).tobytes() == piece.tobytes()


@settings(max_examples=25, deadline=None)
@given(
    shapes=st.lists(st.lists(st.integers(0, 40), min_size=0, max_size=3), min_size=1, max_size=4),
    dtypes=st.lists(st.sampled_from(storable), min_size=4, max_size=4),
    pad=st.sampled_from([1, 8, 64]),
)
def test_archive_round_trip_property(tmp_path_factory, shapes, dtypes, pad):
    folder = tmp_path_factory.mktemp("prop")
    tensors = {f"t{i}": (dtypes[i], random_storage(dtypes[i], tuple(shape), i)) for i, shape in enumerate(shapes)}
    source = write_safetensors(folder / "m.safetensors", tensors, pad_to=pad)
    zoo.compress(source, folder / "m.zoo", chunk_bytes=100)
    zoo.decompress(folder / "m.zoo", folder / "out")
    assert (folder / "out" / "m.safetensors").read_bytes() == source.read_bytes()


def test_float_conversions_are_exact_and_round_to_nearest_even():
    values = np.array([1.0, 1.00390625, 1.01171875, -2.5, 0.0, 65504.0, np.inf], dtype=np.float32)
    assert np.array_equal(to_float32(from_float32(values, "BF16"), "BF16")[[0, 3, 4, 6]], values[[0, 3, 4, 6]])
    # 1 + 2^-8 lies halfway between two bf16 values: it rounds to the even one, 1.0.
    assert to_float32(from_float32(np.array([1.00390625], np.float32), "BF16"), "BF16")[0] == 1.0
    codes = np.arange(256, dtype=np.uint8)
    for dtype in ("F8_E4M3", "F8_E5M2"):
        decoded = to_float32(codes, dtype)
        finite = np.isfinite(decoded)
        again = to_float32(from_float32(decoded[finite], dtype), dtype)
        assert np.array_equal(again, decoded[finite])


@pytest.mark.parametrize("dtype", ["F8_E4M3", "F8_E5M2"])
def test_fp8_rounds_ties_to_even_and_keeps_the_sign_of_zero(dtype):
    """The fp8 rounding of every lossy decode (l2, pranc, lowrank, codebook scales): ties went to the
    lower value (0.060546875, halfway between E4M3 0x17 and 0x18, gave 0x17), and a value within half
    the smallest subnormal of zero took the sign of the other zero (1e-4 -> -0). Checked against
    torch's casts, which round to nearest even, at every midpoint and just beside it."""
    import torch

    table = to_float32(np.arange(256, dtype=np.uint8), dtype)
    values = np.unique(table[np.isfinite(table)])
    middles = ((values[1:] + values[:-1]) / 2).astype(np.float32)
    probes = np.concatenate([values, middles, np.nextafter(middles, np.float32(np.inf)), np.nextafter(middles, np.float32(-np.inf)),
                             np.array([1e-9, -1e-9, 0.0, -0.0], np.float32)])
    probes = probes[np.abs(probes) <= values.max()]  # past the largest finite value zoo saturates, where a cast to E5M2 overflows
    cast = torch.float8_e4m3fn if dtype == "F8_E4M3" else torch.float8_e5m2
    expected = torch.from_numpy(probes).to(cast).view(torch.uint8).numpy()
    assert np.array_equal(from_float32(probes, dtype), expected)
    big = from_float32(np.array([1e30, -1e30, np.nan], np.float32), dtype)
    assert to_float32(big[:2], dtype).tolist() == [values.max(), -values.max()] and np.isnan(to_float32(big[2:], dtype)[0])


def test_a_large_payload_gets_its_header_in_front_without_a_copy(tmp_path, monkeypatch):
    """Past ALIGN_FROM, with no room left for it (Builder.header_room), the header is padded to a
    block boundary and inserted in front of the payload written first; where the file system cannot
    insert, the payload is copied behind the same header: the same bytes either way, and an archive
    like any other."""
    from zoo import api
    from zoo.container import format as archive_format
    from zoo.container.writer import Builder

    monkeypatch.setattr(Builder, "header_room", lambda self, sources: 0)

    inserted = []

    def put_header(*args, **kwargs):
        inserted.append(archive_format.put_header(*args, **kwargs))
        return inserted[-1]

    source = write_safetensors(tmp_path / "w.safetensors", {"w": ("BF16", random_storage("BF16", (256, 512), 1)),
                                                            "b": ("F32", random_storage("F32", (512,), 2))})
    monkeypatch.setattr(archive_format, "ALIGN_FROM", 1)
    monkeypatch.setattr(api, "put_header", put_header)
    zoo.compress(source, tmp_path / "in-place.zoo")
    if inserted != [True]:
        pytest.skip("this file system cannot insert room at a file's start (FALLOC_FL_INSERT_RANGE)")
    monkeypatch.setattr(api, "put_header", lambda *args, **kwargs: False)
    zoo.compress(source, tmp_path / "copied.zoo")
    data = (tmp_path / "in-place.zoo").read_bytes()
    assert data == (tmp_path / "copied.zoo").read_bytes()
    opened = archive_format.ArchiveFile(tmp_path / "in-place.zoo")
    opened.close()
    assert opened.payload_start % archive_format.HEADER_ALIGN == 0
    assert zoo.verify(tmp_path / "in-place.zoo") == []
    zoo.decompress(tmp_path / "in-place.zoo", tmp_path / "out")
    assert (tmp_path / "out" / "w.safetensors").read_bytes() == source.read_bytes()
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left beside


def many_tensors(path: Path, count: int) -> Path:
    """A checkpoint of `count` small tensors with long names: a header of many records."""
    return write_safetensors(path, {f"encoder.layer.{i}.attention.output.dense.weight": ("BF16", random_storage("BF16", (8, 16 + i), i))
                                    for i in range(count)})


@pytest.mark.parametrize("count", [1, 12, 120])
def test_a_large_payload_goes_behind_room_left_for_its_header(tmp_path, monkeypatch, count):
    """Past ALIGN_FROM, a lossless build leaves room in front of the payload for the header it
    will have (Builder.header_room, judged from the sources), writes the payload behind it and the
    header into it: no copy, on any file system. The room holds the header, with little to spare."""
    from zoo.api import scan
    from zoo.codecs.pipeline import DEFAULT_SPEC
    from zoo.container import format as archive_format
    from zoo.container.writer import Builder

    monkeypatch.setattr(archive_format, "ALIGN_FROM", 1)
    source = many_tensors(tmp_path / "w.safetensors", count)
    room = Builder(Pipeline.parse(DEFAULT_SPEC), 4 << 20, None).header_room(scan(source))
    copies = []
    monkeypatch.setattr(archive_format.os, "copy_file_range", lambda *args: copies.append(args) or 0)
    zoo.compress(source, tmp_path / "w.zoo")
    opened = archive_format.ArchiveFile(tmp_path / "w.zoo")
    opened.close()
    assert opened.payload_start == room and not copies
    used = archive_format.PREAMBLE.size + len(archive_format.encode_header(opened.header))
    assert room * 0.75 - archive_format.HEADER_ALIGN < used <= room
    assert zoo.verify(tmp_path / "w.zoo") == []
    zoo.decompress(tmp_path / "w.zoo", tmp_path / "out")
    assert (tmp_path / "out" / "w.safetensors").read_bytes() == source.read_bytes()
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_a_header_that_outgrows_its_room_costs_a_copy_not_a_byte(tmp_path, monkeypatch):
    """A header larger than the room left for it: the payload is copied behind a header of its own
    size, and the archive is the same bytes as one written with no room left at all."""
    from zoo.container import format as archive_format
    from zoo.container.writer import Builder

    monkeypatch.setattr(archive_format, "ALIGN_FROM", 1)
    source = many_tensors(tmp_path / "w.safetensors", 40)
    monkeypatch.setattr(Builder, "header_room", lambda self, sources: archive_format.HEADER_ALIGN)
    zoo.compress(source, tmp_path / "outgrown.zoo")
    monkeypatch.setattr(Builder, "header_room", lambda self, sources: 0)
    zoo.compress(source, tmp_path / "none.zoo")
    assert (tmp_path / "outgrown.zoo").read_bytes() == (tmp_path / "none.zoo").read_bytes()
    opened = archive_format.ArchiveFile(tmp_path / "outgrown.zoo")
    opened.close()
    assert opened.payload_start > archive_format.HEADER_ALIGN
    assert zoo.verify(tmp_path / "outgrown.zoo") == []
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_an_f8_node_written_before_the_rounding_was_fixed_decodes_as_it_did(tmp_path):
    """Lossy F8 tensors of archives written before 2026-12-06 were rounded with ties to the lower
    value: decoding them by today's rule changed their bytes, under the sha256 a zoo's manifest
    holds for them (zoo serve's ETag). An F8 node now says its rounding; one that does not keeps
    the old rule."""
    from tests.container.forge import forge
    from zoo.dtypes import EVEN, f8_rounding

    values = from_float32(np.linspace(-3, 3, 64 * 48, dtype=np.float32).reshape(64, 48) ** 3, "F8_E4M3")
    source = write_safetensors(tmp_path / "m.safetensors", {"w.weight": ("F8_E4M3", values)})
    zoo.compress(source, tmp_path / "m.zoo", "lowrank:ratio=0.5")
    with zoo.open(tmp_path / "m.zoo") as archive:
        assert archive.tensor_info("w.weight")["root"]["rounding"] == EVEN
        today = archive.read_tensor("w.weight").data

    def older(header):
        del header["tensors"]["w.weight"]["root"]["rounding"]

    with zoo.open(forge(tmp_path / "m.zoo", older)) as archive:
        before = archive.read_tensor("w.weight").data
    with zoo.open(tmp_path / "m.zoo") as archive:
        node = archive.tensor_info("w.weight")["root"]
        parts = {name: archive.read_leaf(child["leaf"], archive.pipeline_of(archive.tensor_info("w.weight")["pipeline"]), name)
                 for name, child in node["parts"].items()}
    product = to_float32(parts["left"].data, "F8_E4M3").reshape(64, -1) @ to_float32(parts["right"].data, "F8_E4M3").reshape(-1, 48)
    with f8_rounding("before"):
        assert np.array_equal(before, from_float32(product, "F8_E4M3"))
    assert np.array_equal(today, from_float32(product, "F8_E4M3")) and not np.array_equal(today, before)


def test_nodes_that_older_readers_would_decode_by_another_rule_need_a_feature(tmp_path, monkeypatch):
    """A zoo from before lowrank's fixed-order product or F8's ties to even knew version 3 and its
    features, but decoded such a node by its own rule: other bits than the sha256 its store
    recorded, silently. The header lists a feature for each, so that such a reader refuses it;
    archives written between the rules and the features (a node marked, no feature) still decode."""
    from zoo.container import format as archive_format
    from zoo.errors import FormatError

    rng = np.random.default_rng(3)
    matrix = (rng.normal(size=(64, 6)) @ rng.normal(size=(6, 48))).astype(np.float32)
    source = write_safetensors(tmp_path / "m.safetensors",
                               {"w.weight": ("F32", matrix), "f8.weight": ("F8_E4M3", from_float32(matrix, "F8_E4M3"))})
    zoo.compress(source, tmp_path / "lowrank.zoo", "lowrank:ratio=0.5|lossless")
    zoo.compress(source, tmp_path / "lossless.zoo", "lossless")
    expected = {"lowrank.zoo": (["f64-product", "f8-even"], 3), "lossless.zoo": (None, 1)}
    for name, (features, version) in expected.items():
        opened = archive_format.ArchiveFile(tmp_path / name)
        assert opened.header.get("features") == features
        assert archive_format.version_of(opened.header) == version
        opened.close()
    with zoo.open(tmp_path / "lowrank.zoo") as archive:
        decoded = {key: archive.read_tensor(key).data.tobytes() for key in archive.keys()}

    # a node marked with neither feature listed (as written on 2026-12-06 before the features)
    opened = archive_format.ArchiveFile(tmp_path / "lowrank.zoo")
    header, start = json.loads(json.dumps(opened.header)), opened.payload_start
    opened.close()
    del header["features"]
    body = archive_format.encode_header(header)
    unlisted = tmp_path / "unlisted.zoo"
    unlisted.write_bytes(archive_format.PREAMBLE.pack(archive_format.MAGIC, archive_format.VERSION, archive_format.crc32(body), len(body))
                         + body + (tmp_path / "lowrank.zoo").read_bytes()[start:])
    with zoo.open(unlisted) as archive:
        assert {key: archive.read_tensor(key).data.tobytes() for key in archive.keys()} == decoded

    # a reader that knows only the features of before refuses the new archive, not the lossless one
    monkeypatch.setattr(archive_format, "FEATURES", frozenset({"objects", "xor", "f4-views"}))
    with pytest.raises(FormatError, match="needs features this zoo lacks: f64-product, f8-even"):
        zoo.open(tmp_path / "lowrank.zoo")
    with zoo.open(tmp_path / "lossless.zoo") as archive:
        assert archive.keys()
