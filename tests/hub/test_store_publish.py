"""What a model's publish holds to (docs/STORE.md, *Writing*): its shell names each object as the
file of that name in the zoo codes it, whoever stored that file and however, and storing a model
again mends the damaged objects and shell it holds. And a manifest's list of objects is held to the
shell: where the manifest is what is wrong, no sound object is called damaged, and doctor mends it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import zoo
from zoo.api import build_model, compress_into
from zoo.codecs.pipeline import DEFAULT_SPEC, Pipeline
from zoo.container.objects import ObjectSink
from zoo.errors import ZooError
from zoo.hub.manifest import Damage
from zoo.hub.store import Store

from tests.conftest import named_objects, object_files
from tests.hub.test_dedup import base_tensors, fine_tuned, write_model
from tests.hub.test_store import hashes, zoo_cli

ZSTD = "bytegroup|zstd"


def _object_of(entry, tensor: str = "embed.weight") -> str:
    with zoo.open(entry.archive) as opened:
        return opened.tensor_info(tensor)["root"]["leaf"]["object"]


def _damage(path: Path, how: str) -> None:
    path.chmod(0o644)
    data = path.read_bytes()
    data = {"cut": data[:-100], "lengthened": data + b"\0" * 10, "header cut": data[:30],
            "header flipped": data[:40] + bytes([data[40] ^ 1]) + data[41:],
            "chunk flipped": data[:-50] + bytes([data[-50] ^ 1]) + data[-49:]}[how]
    path.write_bytes(data)
    path.chmod(0o444)


def _sound(store: Store, tmp_path: Path, source: Path) -> None:
    """Every object and model of the zoo reads back, and each model gives `source` back."""
    assert store.verify()[2] == []
    (tmp_path / "out").mkdir()
    for entry in store.entries():
        out = tmp_path / "out" / entry.name
        zoo.decompress(entry.archive, out)
        assert hashes(out) == hashes(source), entry.ref
    assert object_files(store.home) == named_objects(store.home)


def _publish_after(store: Store, source: Path, name: str, meanwhile, base=None) -> object:
    """Code `source` as `name` with the default pipeline, run `meanwhile()` (another writer), then publish."""
    with store.workspace() as folder:
        sink = ObjectSink(folder / "objects" / "sha256", store.existing_object, 1)
        shell = build_model(store, sink, source, name, "main", Pipeline.parse(DEFAULT_SPEC), base=base, threads=1)
        meanwhile()
        return store.add_composed(shell, sink, name, "main")


def test_a_model_whose_objects_another_pipeline_stored_meanwhile_names_them_as_the_zoo_codes_them(tmp_path):
    """Two compresses of the same weights with other lossless pipelines at once: the one that
    published second kept the zoo's objects (the same names) but its shell named them with its own
    chunk indexes, and was published unreadable (export: 'chunk index ... is damaged'; verify: its
    every object missing or of the wrong size)."""
    store = Store(tmp_path / "zoo")
    source = write_model(tmp_path / "model", base_tensors())
    entry = _publish_after(store, source, "b", lambda: compress_into(store, source, "a", pipeline=ZSTD))
    first = store.resolve("a")
    assert _object_of(entry) == _object_of(first) and zoo.verify(entry.archive) == []
    _sound(store, tmp_path, source)


def test_a_fine_tune_whose_xors_another_pipeline_stored_meanwhile_names_them_as_the_zoo_codes_them(tmp_path):
    store = Store(tmp_path / "zoo")
    compress_into(store, write_model(tmp_path / "base", base_tensors()), "base")
    tuned = write_model(tmp_path / "ft", fine_tuned(base_tensors(), 1, share=0.05))
    entry = _publish_after(store, tuned, "ft", lambda: compress_into(store, tuned, "ft-zstd", pipeline=ZSTD, base="base"),
                           base=store.resolve("base"))
    assert entry.base is not None and store.resolve("ft-zstd").base is not None
    with zoo.open(entry.archive) as opened, zoo.open(store.resolve("ft-zstd").archive) as other:
        xors = [{held.tensor_info(key)["root"]["leaf"]["object"] for key in held.keys() if "xor" in held.tensor_info(key)}
                for held in (opened, other)]
        assert xors[0] and xors[0] == xors[1]
    assert store.verify()[2] == []
    for name in ("ft", "ft-zstd"):
        zoo.decompress(store.resolve(name).archive, tmp_path / f"out-{name}")
        assert hashes(tmp_path / f"out-{name}") == hashes(tuned)


def test_an_object_stored_meanwhile_coded_the_same_but_damaged_is_replaced(tmp_path):
    store = Store(tmp_path / "zoo")
    source = write_model(tmp_path / "model", base_tensors())

    def meanwhile() -> None:
        _damage(store.object_path(_object_of(compress_into(store, source, "a"))), "cut")

    _publish_after(store, source, "b", meanwhile)
    _sound(store, tmp_path, source)


def test_an_object_stored_meanwhile_damaged_and_coded_otherwise_stops_the_publish(tmp_path):
    store = Store(tmp_path / "zoo")
    source = write_model(tmp_path / "model", base_tensors())
    damaged: list[Path] = []

    def meanwhile() -> None:
        damaged.append(store.object_path(_object_of(compress_into(store, source, "a", pipeline=ZSTD))))
        _damage(damaged[0], "chunk flipped")

    with pytest.raises(ZooError, match="damaged, and coded otherwise than this build codes it, so it cannot be repaired from here; b was"):
        _publish_after(store, source, "b", meanwhile)
    assert [entry.name for entry in store.entries()] == ["a"]


def test_storing_a_model_again_mends_its_damaged_shell(tmp_path):
    """The shell is named by its sha256, but a file of that name already there was never looked
    at: `compress --force` left the damaged one ('archive header is damaged')."""
    store = Store(tmp_path / "zoo")
    source = write_model(tmp_path / "model", base_tensors())
    entry = compress_into(store, source, "base")
    shell = entry.archive
    shell.chmod(0o644)
    data = bytearray(shell.read_bytes())
    data[200] ^= 0xFF
    shell.write_bytes(bytes(data))
    shell.chmod(0o444)
    assert store.verify()[2] != []
    again = compress_into(store, source, "base", force=True)
    assert again.archive == shell and zoo.verify(again.archive) == []
    _sound(store, tmp_path, source)


@pytest.mark.parametrize("how", ["cut", "lengthened", "header cut", "header flipped"])
def test_storing_a_model_again_mends_an_object_cut_lengthened_or_whose_header_is_damaged(tmp_path, how):
    """The repair compared the payload's size, which damage that changes the length never keeps,
    and a header that cannot be read counted as coded otherwise: 'cannot be repaired from here',
    for an object coded exactly as the build codes it."""
    store = Store(tmp_path / "zoo")
    source = write_model(tmp_path / "model", base_tensors())
    first = compress_into(store, source, "first")
    _damage(store.object_path(_object_of(first)), how)
    assert store.verify()[2] != []
    compress_into(store, source, "second")
    _sound(store, tmp_path, source)


def test_an_object_whose_header_is_damaged_is_not_replaced_by_another_coding(tmp_path):
    """Its own record unreadable, the object is held to the one the shells keep: a model that
    names it coded by another pipeline would not read this build's coding."""
    store = Store(tmp_path / "zoo")
    source = write_model(tmp_path / "model", base_tensors())
    first = compress_into(store, source, "first", pipeline=ZSTD)
    victim = store.object_path(_object_of(first))
    _damage(victim, "header cut")
    with pytest.raises(ZooError, match=f"{victim}: .*damaged, and .*first@main:.*cannot be repaired from here; second was not stored"):
        compress_into(store, source, "second")
    assert [entry.name for entry in store.entries()] == ["first"] and victim.stat().st_size == 30


def _edit_manifest(store: Store, entry, change) -> dict:
    path = store.manifest_path(entry.name, entry.revision, entry.variant)
    record = json.loads(path.read_bytes())
    item = change(record)
    path.write_text(json.dumps(record))
    return item


@pytest.mark.parametrize("role", ["object", "archive"])
def test_a_manifest_that_records_a_sound_object_at_another_size_is_mended_not_called_damaged(tmp_path, role):
    """doctor said '... bytes where its manifest says ...: damaged' on every run (exit 1), and verify
    called the object missing or of the wrong size: the manifest was what was wrong."""
    store = Store(tmp_path / "zoo")
    source = write_model(tmp_path / "model", base_tensors())
    entry = compress_into(store, source, "m")

    def bigger(record: dict) -> dict:
        item = next(o for o in record["objects"] if o["role"] == role)
        item["size"] += 1
        return item

    item = _edit_manifest(store, entry, bigger)
    [problem] = store.verify()[2]
    assert problem == (f"m@main:lossless: its manifest records object {store.object_path(item['sha256'])} at {item['size']} bytes, "
                       f"where it is {item['size'] - 1} and sound (edited by hand?); `zoo doctor` mends the manifest")
    findings = store.doctor()
    assert not any(isinstance(line, Damage) for line in findings), findings
    assert findings[0].endswith(f"recorded {item['sha256'][:16]}... at {item['size']} bytes, where it is {item['size'] - 1} and sound: "
                                "mended from its archive"), findings
    assert store.doctor()[0].endswith("no problems found (every object there, of the size its manifest says; `zoo verify` decodes them)")
    _sound(store, tmp_path, source)


def test_a_manifest_naming_an_object_by_a_wrong_digit_is_mended_not_called_unreadable(tmp_path):
    """doctor said 'missing; m cannot be read (`zoo rm` it, or store it again)' of a model that
    exports whole, on every run: following it would have deleted the model."""
    store = Store(tmp_path / "zoo")
    source = write_model(tmp_path / "model", base_tensors())
    entry = compress_into(store, source, "m")

    def one_digit(record: dict) -> dict:
        item = next(o for o in record["objects"] if o["role"] == "object")
        item["sha256"] = ("1" if item["sha256"][0] == "0" else "0") + item["sha256"][1:]
        return item

    item = _edit_manifest(store, entry, one_digit)
    problems = store.verify()[2]
    assert problems[0] == (f"m@main:lossless: its manifest names object {store.object_path(item['sha256'])}, which its archive does not "
                           "name and the zoo lacks (edited by hand?); `zoo doctor` mends the manifest"), problems
    doctor = zoo_cli("doctor", home=store.home)
    assert doctor.returncode == 0 and "zoo rm" not in doctor.stdout, doctor.stdout
    assert f"named 1 object that its archive does not name and the zoo lacks ({item['sha256'][:16]}...; edited by hand?)" in doctor.stdout
    assert zoo_cli("doctor", home=store.home).stdout.endswith("no problems found (every object there, of the size its manifest says; "
                                                              "`zoo verify` decodes them)\n")
    _sound(store, tmp_path, source)


def test_a_manifest_that_records_a_damaged_object_at_its_size_is_left_as_it_is(tmp_path):
    """Damage is never written into a manifest: an object cut short is of another size than recorded
    because it is damaged."""
    store = Store(tmp_path / "zoo")
    entry = compress_into(store, write_model(tmp_path / "model", base_tensors()), "m")
    manifest = store.manifest_path(entry.name, entry.revision, entry.variant).read_bytes()
    _damage(store.object_path(_object_of(entry)), "cut")
    findings = store.doctor()
    assert findings and all(isinstance(line, Damage) for line in findings) and "damaged" in findings[0], findings
    assert store.manifest_path(entry.name, entry.revision, entry.variant).read_bytes() == manifest
