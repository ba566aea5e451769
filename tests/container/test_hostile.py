"""Archives made to hurt the reader: whatever a header claims, zoo answers with one clear error,
in bounded memory and time, and writes nothing."""

from __future__ import annotations

import zlib

import numpy as np
import pytest

import zoo
from zoo.container.format import MAX_CHUNK_BYTES, PREAMBLE
from zoo.errors import FormatError, InputError

from tests.conftest import write_safetensors
from tests.container.forge import deeply_nested, every_record_on_the_first_chunk, flag_the_first_stream, forge, leaf, one_huge_chunk


@pytest.fixture
def archive(tmp_path):
    """A real archive of one F32 tensor in 16 chunks of 1 KiB."""
    values = np.arange(4096, dtype=np.float32)
    source = write_safetensors(tmp_path / "w.safetensors", {"w": ("F32", values)})
    zoo.compress(source, tmp_path / "w.zoo", chunk_bytes=1024)
    return tmp_path / "w.zoo"


def test_a_chunk_declared_over_the_cap_is_refused_before_decoding(archive, tmp_path):
    forged = forge(archive, one_huge_chunk)
    assert [problem for problem in zoo.verify(forged) if f"over the cap of {MAX_CHUNK_BYTES >> 20} MiB a chunk" in problem]
    with pytest.raises(FormatError, match="over the cap"):
        zoo.decompress(forged, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("flags", [0x81, 0x80, 0x02])
def test_a_stream_flag_the_format_does_not_define_is_refused(archive, tmp_path, flags):
    """An unknown flag bit beside the raw bit (0x81) was read as raw: `zoo verify` said ok."""
    forged = forge(archive, change_payload=flag_the_first_stream(flags))
    assert [problem for problem in zoo.verify(forged) if f"unknown flags {flags:#x}" in problem], zoo.verify(forged)
    with pytest.raises(FormatError, match="unknown flags"):
        zoo.decompress(forged, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert not zoo.verify(forge(archive, change_payload=flag_the_first_stream(0x01)))  # the flag it had: still sound


def _number_as(kind):
    return float if kind == "float" else (lambda number: True if number == 1 else False if number == 0 else float(number))


@pytest.mark.parametrize("kind", ["float", "bool"])
@pytest.mark.parametrize("where", ["size", "index offset", "index count", "index_crc32", "chunk_elements"])
def test_a_number_of_the_header_written_as_a_float_or_a_boolean_is_damage(archive, tmp_path, where, kind):
    """JSON's 71756.0 equals 71756 and true equals 1 in Python: a file size written as a float
    passed the check of its segments and failed as "unexpected TypeError ... (a bug in zoo)"."""
    turn = _number_as(kind)

    def change(header):
        if where == "size":
            header["files"][0]["size"] = turn(header["files"][0]["size"])
        elif where == "index offset":
            leaf(header)["index"][0] = turn(leaf(header)["index"][0])
        elif where == "index count":
            leaf(header)["index"][1] = turn(leaf(header)["index"][1])
        else:
            leaf(header)[where] = turn(leaf(header)[where])

    forged = forge(archive, change)
    try:  # refused on opening, as other damage to the header is, or found by the checks
        problems = zoo.verify(forged)
    except FormatError as error:
        problems = [str(error)]
    assert problems and not [problem for problem in problems if "bug in zoo" in problem or "TypeError" in problem], problems
    with pytest.raises(FormatError):
        zoo.decompress(forged, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_chunk_size_of_true_is_damage_where_it_would_count_the_chunks_right(tmp_path):
    """true is 1 to isinstance: a leaf of one element declared `chunk_elements: true` was read as
    chunks of one, and `zoo verify` said ok."""
    source = write_safetensors(tmp_path / "one.safetensors", {"w": ("F32", np.ones(1, np.float32))})
    zoo.compress(source, tmp_path / "one.zoo")
    forged = forge(tmp_path / "one.zoo", lambda header: leaf(header).update(chunk_elements=True))
    assert [problem for problem in zoo.verify(forged) if "tensor 'w' has a bad chunk size" in problem], zoo.verify(forged)


def _root_meta(name, value):
    return lambda header: header["tensors"]["w"]["root"]["meta"].update({name: value})


# each where the float or boolean equals the number written: rows=64 and energy=0.01 make one
# group and rank 1
NODE_NUMBERS = {
    "codebook cols of 48.0": ("codebook:bits=4,rows=64", _root_meta("cols", 48.0), "codebook: parts do not fit a 64 x 48 tensor"),
    "codebook groups of true": ("codebook:bits=4,rows=64", _root_meta("groups", True), "codebook: parts do not fit a 64 x 48 tensor"),
    "lowrank rank of true": ("lowrank:energy=0.01", _root_meta("rank", True), "and rank True"),
    "a stage of false": ("lowrank:energy=0.01", lambda header: header["tensors"]["w"]["root"].update(stage=False), "names stage False"),
    "a node's shape of 64.0": ("codebook:bits=4,rows=64", lambda header: header["tensors"]["w"]["root"].update(shape=[64.0, 48]),
                               "encoding node lacks its dtype or shape"),
}


@pytest.mark.parametrize(("spec", "change", "message"), NODE_NUMBERS.values(), ids=NODE_NUMBERS.keys())
def test_a_number_of_an_encoding_node_written_as_a_float_or_a_boolean_is_damage(tmp_path, spec, change, message):
    """docs/FORMAT.md: 12.0 or true for 12 or 1 is malformed; these decoded as the number, and
    `zoo verify` said ok (a rank of true failed in numpy's reshape: "an integer is required")."""
    values = np.random.default_rng(0).standard_normal((64, 48)).astype(np.float32)
    source = write_safetensors(tmp_path / "m.safetensors", {"w": ("F32", values)})
    zoo.compress(source, tmp_path / "m.zoo", spec)
    assert not zoo.verify(tmp_path / "m.zoo")
    forged = forge(tmp_path / "m.zoo", change)
    assert [problem for problem in zoo.verify(forged) if message in problem], zoo.verify(forged)
    with pytest.raises(FormatError, match=message):
        zoo.decompress(forged, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.fixture
def viewed(tmp_path):
    """A torch checkpoint's archive: `a` a stored tensor, `b` a view of two of its rows."""
    import torch

    weight = torch.arange(64, dtype=torch.float32).reshape(8, 8)
    torch.save({"a": weight, "b": weight[2:4], "c": torch.ones(3)}, tmp_path / "v.bin")
    zoo.compress(tmp_path / "v.bin", tmp_path / "v.zoo")
    return tmp_path / "v.zoo"


@pytest.mark.parametrize("change", [{"of": "nothing"}, {"of": "b"}, {"offset": 60}, {"stride": [8, -1]},  # 60: past the end of `a`
                                    {"offset": True}, {"stride": [8, True]}])  # JSON's true: read as 1
def test_verify_refuses_a_view_that_loading_refuses(viewed, change, tmp_path):
    """A view lies in no file: `zoo verify` and decompress passed an archive whose view named
    nothing or ran out of bounds, which `zoo.load_state_dict` then refused."""
    assert not zoo.verify(viewed)
    forged = forge(viewed, lambda header: header["tensors"]["b"]["view"].update(change))
    problems = zoo.verify(forged)
    assert len(problems) == 1 and "tensor 'b'" in problems[0], problems
    with pytest.raises(FormatError, match="tensor 'b'"):
        zoo.load_state_dict(forged)


def _segment_of_view(header):
    entry = header["files"][0]
    entry["segments"].append({"tensor": "b"})
    entry["size"] += 64


@pytest.mark.parametrize("change", [lambda h: h["tensors"]["b"].update(shape="ab"), lambda h: h["tensors"]["b"].update(view=[0]),
                                    lambda h: h["tensors"]["b"].update(shape=[-2, 8]), _segment_of_view],
                         ids=["shape-not-a-list", "view-not-an-object", "negative-shape", "a-file-holds-the-view"])
def test_a_malformed_view_is_refused_in_one_line_when_the_archive_opens(viewed, change, tmp_path):
    """A view's own shape went unchecked, and so did a view named as a file's bytes: 'unexpected
    TypeError/AttributeError/KeyError' from info, verify and decompress, or verify said ok and
    get_tensor raised numpy's ValueError."""
    forged = forge(viewed, change)
    for read in (lambda: zoo.open(forged), lambda: zoo.verify(forged), lambda: zoo.decompress(forged, tmp_path / "out")):
        with pytest.raises(FormatError, match="tensor 'b'"):
            read()
    assert not (tmp_path / "out").exists()


def test_a_view_of_one_element_along_a_dimension_ignores_that_dimensions_stride(tmp_path):
    """torch gives a dimension of one element any stride (unsqueeze of a strided slice exceeds the
    storage); as_strided overflowed on a huge one. And a 0-d view came back with shape (1,)."""
    import torch

    weight = torch.arange(10.0)
    torch.save({"w": weight, "s": weight[3], "u": weight[::3].unsqueeze(0)}, tmp_path / "v.pt")
    zoo.compress(tmp_path / "v.pt", tmp_path / "v.zoo")
    with zoo.open(tmp_path / "v.zoo") as archive:
        assert archive.get_tensor("s").shape == () and archive.get_tensor("s", "pt").shape == torch.Size([])
        assert archive.get_tensor("s", "pt").item() == 3.0
        assert torch.equal(archive.get_tensor("u", "pt"), weight[::3].unsqueeze(0))
    forged = forge(tmp_path / "v.zoo", lambda h: h["tensors"]["u"]["view"].update(stride=[2 ** 63, 3]))
    assert zoo.verify(forged) == []
    with zoo.open(forged) as archive:
        assert torch.equal(archive.get_tensor("u", "pt"), weight[::3].unsqueeze(0))


def test_a_stored_tensor_whose_leaf_has_another_shape_is_refused_as_loading_refuses_it(viewed, tmp_path):
    """Its bytes stream whole, so verify and decompress passed a leaf of shape [3, 1] under a tensor
    of shape [3], which load_state_dict refuses ("decodes to F32[3, 1], expected F32[3]")."""
    forged = forge(viewed, lambda header: leaf(header, "c").update(shape=[3, 1]))
    problems = zoo.verify(forged)
    assert problems and "decodes to F32[3, 1], expected F32[3]" in problems[0], problems
    with pytest.raises(FormatError, match="decodes to"):
        zoo.decompress(forged, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    with pytest.raises(FormatError, match="decodes to"):
        zoo.load_state_dict(forged)


def rewritten_header(path, change, tmp_path):
    """`path` with its header's bytes as `change` leaves them, the preamble's CRC and length made right."""
    data = path.read_bytes()
    magic, version, _, length = PREAMBLE.unpack_from(data)
    body = change(data[PREAMBLE.size:PREAMBLE.size + length])
    forged = tmp_path / "rewritten.zoo"
    forged.write_bytes(PREAMBLE.pack(magic, version, zlib.crc32(body), len(body)) + body + data[PREAMBLE.size + length:])
    return forged


@pytest.mark.parametrize("change, error", [
    (lambda body: body.replace(b'{"created_by":', b'{"created_by":"another","created_by":', 1), "key 'created_by' twice"),
    (lambda body: b"\xef\xbb\xbf" + body, "not valid JSON"),  # a byte-order mark: UTF-8 JSON has none
    (lambda body: body.decode().encode("utf-16"), "not valid JSON"),
])
def test_a_header_is_utf8_json_with_unique_keys(archive, tmp_path, change, error):
    """A header whose object held a key twice was read with the last (another reader may take the
    first), and one in UTF-16 or behind a byte-order mark was read as if it were UTF-8."""
    assert not zoo.verify(rewritten_header(archive, lambda body: body + b"   ", tmp_path))  # spaces after it: padding
    with pytest.raises(FormatError, match=error):
        zoo.verify(rewritten_header(archive, change, tmp_path))


def test_index_records_that_all_point_at_one_chunk_are_refused_before_writing(archive, tmp_path):
    forged = forge(archive, change_payload=every_record_on_the_first_chunk)
    assert any("overlaps" in problem for problem in zoo.verify(forged))
    with pytest.raises(FormatError, match="overlaps other stored data"):
        zoo.decompress(forged, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_two_tensors_naming_one_leaf_are_refused_outside_a_zoo(tmp_path):
    """Only a zoo's archives (the "objects" feature) may name a leaf twice: elsewhere it is a
    forgery that decodes one chunk twice while other bytes belong to nothing."""
    values = np.arange(1024, dtype=np.float32)
    source = write_safetensors(tmp_path / "ab.safetensors", {"a": ("F32", values), "b": ("F32", values + 1)})
    zoo.compress(source, tmp_path / "ab.zoo")

    def b_names_the_leaf_of_a(header):
        header["tensors"]["b"]["root"]["leaf"] = dict(leaf(header, "a"))

    problems = zoo.verify(forge(tmp_path / "ab.zoo", b_names_the_leaf_of_a))
    assert any("overlaps" in problem for problem in problems)


def test_a_header_nested_thousands_deep_is_one_error(tmp_path):
    forged = tmp_path / "deep.zoo"
    forged.write_bytes(deeply_nested(5000))
    with pytest.raises(FormatError, match="nests too deep"):
        zoo.open(forged)


def test_a_shape_of_100001_dimensions_is_one_error(archive):
    def wide(header):
        header["tensors"]["w"]["shape"] = [1] * 100_000 + [4096]
        leaf(header)["shape"] = [1] * 100_000 + [4096]

    with pytest.raises(FormatError, match="100001 dimensions"):
        with zoo.open(forge(archive, wide)) as opened:
            opened.get_tensor("w")


def test_the_writer_refuses_chunks_over_the_cap(tmp_path):
    source = write_safetensors(tmp_path / "w.safetensors", {"w": ("F32", np.zeros(4, dtype=np.float32))})
    with pytest.raises(InputError, match="chunk_bytes must be from 1"):
        zoo.compress(source, tmp_path / "w.zoo", chunk_bytes=MAX_CHUNK_BYTES + 1)
    assert not (tmp_path / "w.zoo").exists()


@pytest.mark.parametrize("metadata", [["x"], "x", 3])
def test_metadata_that_is_no_json_object_is_refused_when_the_archive_opens(archive, tmp_path, metadata):
    """zoo.open().metadata(), report_of and decompress (once every tensor was decoded) raised a raw
    ValueError from dict(["x"])."""
    def change(header):
        header["metadata"] = metadata

    forged = forge(archive, change)
    for call in (zoo.open, zoo.report_of, lambda path: zoo.decompress(path, tmp_path / "out"),
                 lambda path: zoo.api.update_metadata(path, {"note": "mine"})):
        with pytest.raises(FormatError, match=r"archive header's metadata is not a JSON object$"):
            call(forged)
    assert not (tmp_path / "out").exists()


def test_metadata_of_null_reads_as_none(archive):
    def change(header):
        header["metadata"] = None

    with zoo.open(forge(archive, change)) as opened:
        assert opened.metadata() == {}


def test_a_tensor_without_a_pipeline_is_damage_to_report_of(archive):
    """report_of raised a raw KeyError 'pipeline', where reading the tensor says it is damage."""
    def change(header):
        del header["tensors"]["w"]["pipeline"]

    forged = forge(archive, change)
    with pytest.raises(FormatError, match="names a pipeline that is not a list"):
        zoo.report_of(forged)
    with zoo.open(forged) as opened, pytest.raises(FormatError, match="names a pipeline that is not a list"):
        opened.get_tensor("w")


def test_an_unchanged_forgery_reads_as_the_original(archive):
    """tests/container/forge.py forges through the writer's own assemble: unchanged, it gives the
    original back, so every refusal above comes from the change alone."""
    forged = forge(archive)
    assert zoo.verify(forged) == []
    assert forged.read_bytes()[PREAMBLE.size:] == archive.read_bytes()[PREAMBLE.size:]
