"""The content-addressed zoo (docs/STORE.md): each distinct tensor stored once, fine-tunes as XORs
against their base, rm/gc that keep what others need, and archives that stand alone."""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest

import zoo
from zoo.api import compress_into, export_archive
from zoo.container.format import MAX_XOR_DEPTH, ArchiveFile
from zoo.errors import InputError
from zoo.hub.store import Store

from tests.conftest import named_objects, object_files, random_storage, write_safetensors
from tests.hub.test_store import hashes, zoo_cli

# large enough to be objects of their own (zoo.container.writer.INLINE_BYTES), but the norm
SHAPES = {f"layers.{i}.weight": (128, 96) for i in range(4)} | {"embed.weight": (160, 96), "norm.weight": (96,)}


def write_model(folder: Path, tensors: dict[str, np.ndarray], base_name: str | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    write_safetensors(folder / "model.safetensors", {name: ("BF16", data) for name, data in tensors.items()})
    (folder / "config.json").write_text(json.dumps({"_name_or_path": base_name} if base_name else {"model_type": "toy"}))
    return folder


def base_tensors(seed: int = 0) -> dict[str, np.ndarray]:
    return {name: random_storage("BF16", shape, seed + i) for i, (name, shape) in enumerate(SHAPES.items())}


def fine_tuned(tensors: dict[str, np.ndarray], seed: int, share: float = 0.3, names: list[str] | None = None) -> dict[str, np.ndarray]:
    """A small step of training: a share of the weights of `names` (all by default) move by one
    unit in the last place, as a low learning rate leaves bf16 weights."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, data in tensors.items():
        changed = data.copy()
        if names is None or name in names:
            mask = rng.random(data.shape) < share
            changed[mask] = changed[mask] + rng.choice(np.array([1, -1], dtype=np.int16), mask.sum()).astype(np.uint16)
        out[name] = changed
    return out


def standalone_size(folder: Path, tmp_path: Path) -> int:
    out = tmp_path / f"{folder.name}-standalone.zoo"
    zoo.compress(folder, out)
    return out.stat().st_size


def test_a_fine_tune_is_stored_as_xors_against_its_base_and_comes_back_bit_exact(tmp_path, monkeypatch):
    monkeypatch.setenv("ZOO_HOME", str(tmp_path / "zoo"))
    store = Store()
    base = write_model(tmp_path / "base", base_tensors())
    tuned = write_model(tmp_path / "tuned", fine_tuned(base_tensors(), 1, share=0.1), base_name="org/base")
    compress_into(store, base, "org/base")
    entry = compress_into(store, tuned, "org/tuned")  # the base found from config.json's _name_or_path
    assert entry.base["ref"] == "org/base@main:lossless" and entry.base["tensors"] >= len(SHAPES) - 1  # a tiny norm may stay whole
    [listed] = [e for e in store.entries() if e.name == "org/tuned"]
    assert listed.adds_bytes < 0.5 * standalone_size(tuned, tmp_path)
    zoo.decompress(entry.archive, tmp_path / "out")
    assert hashes(tmp_path / "out") == hashes(tuned)
    assert zoo.verify("org/tuned") == []
    state = zoo.load_state_dict("org/tuned")
    assert sorted(state) == sorted(SHAPES)


def test_a_later_checkpoint_with_an_f4_tensor_is_stored_with_that_tensor_whole(tmp_path, monkeypatch):
    """F4 is stored as its bytes (a leaf of U8, half as many elements), which no XOR level can be
    read as: its XOR was written all the same, and the reader refused the shell, so a close later
    checkpoint of a model with an F4 tensor could not be stored at all."""
    import torch
    from safetensors.torch import save_file

    monkeypatch.setenv("ZOO_HOME", str(tmp_path / "zoo"))
    store = Store()
    packed = torch.from_numpy(np.random.default_rng(0).integers(0, 256, 40000, dtype=np.uint8))
    later = packed.clone()
    later[::100] ^= 1
    weights = {"v": random_storage("BF16", (128, 96), 1)}
    folders = []
    for name, data, v in (("a", packed, weights["v"]), ("b", later, fine_tuned(weights, 2, share=0.1)["v"])):
        folder = tmp_path / name
        folder.mkdir()
        save_file({"w": data.view(torch.float4_e2m1fn_x2), "v": torch.from_numpy(v).view(torch.bfloat16)}, folder / "model.safetensors")
        folders.append(folder)
    compress_into(store, folders[0], "o/a")
    entry = compress_into(store, folders[1], "o/b")  # o/a found by the names they share
    assert entry.base is not None and entry.base["tensors"] == 1  # `v` is stored as an XOR, `w` whole
    zoo.decompress(entry.archive, tmp_path / "out")
    assert hashes(tmp_path / "out") == hashes(folders[1])
    assert zoo.verify("o/b") == []


def test_the_base_may_be_named_or_found_by_shared_names_and_no_delta_turns_it_off(tmp_path):
    store = Store(tmp_path / "zoo")
    compress_into(store, write_model(tmp_path / "base", base_tensors()), "base")
    tuned = write_model(tmp_path / "tuned", fine_tuned(base_tensors(), 2))  # config names no base
    found = compress_into(store, tuned, "found")  # the stored model holding the same tensor names
    named = compress_into(store, tuned, "named", base="base")
    plain = compress_into(store, tuned, "plain", delta=False)
    assert found.base["ref"] == named.base["ref"] == "base@main:lossless" and plain.base is None
    with pytest.raises(InputError, match="no lossless model of that name"):
        compress_into(store, tuned, "nothing", base="absent")
    other = write_model(tmp_path / "other", {"unrelated.weight": random_storage("BF16", (32, 32), 9)})
    assert compress_into(store, other, "other").base is None  # nothing alike in the zoo: stored whole


def test_no_delta_holds_for_a_batch_of_several_sources(tmp_path):
    # `zoo compress A B --no-delta` stored A as XORs against its base all the same, exit 0: the
    # batch never heard of the flag
    base = write_model(tmp_path / "base", base_tensors())
    tuned = write_model(tmp_path / "tuned", fine_tuned(base_tensors(), 3), base_name="org/base")
    other = write_model(tmp_path / "other", {"unrelated.weight": random_storage("BF16", (32, 32), 9)})
    for flags, against in ((["--no-delta"], None), ([], "org/base@main:lossless")):
        home = tmp_path / f"zoo{len(flags)}"
        compress_into(Store(home), base, "org/base")
        done = zoo_cli("compress", tuned, other, *flags, home=home)
        assert done.returncode == 0, done.stderr
        stored = {entry.name: entry.base and entry.base["ref"] for entry in Store(home).entries()}
        assert stored == {"org/base": None, "tuned": against, "other": None}, flags


def test_a_name_held_by_several_files_is_stored_against_the_base_tensor_of_its_own_file(tmp_path):
    # model.safetensors (BF16) beside model.fp16.safetensors (F16), both in the base and the fine-tune:
    # each name's base tensor was the first file's, so only the F16 copies became XORs and the BF16
    # ones were stored whole
    base, tuned = base_tensors(), fine_tuned(base_tensors(), 6)
    for name, tensors in (("base", base), ("tuned", tuned)):
        folder = write_model(tmp_path / name, tensors)
        write_safetensors(folder / "model.fp16.safetensors", {k: ("F16", v) for k, v in tensors.items()})
    store = Store(tmp_path / "zoo")
    compress_into(store, tmp_path / "base", "base")
    entry = compress_into(store, tmp_path / "tuned", "tuned", base="base")
    assert entry.base["tensors"] >= 2 * (len(SHAPES) - 1), entry.base  # both files' (a tiny norm may stay whole)
    zoo.decompress(entry.archive, tmp_path / "out")
    assert hashes(tmp_path / "out") == hashes(tmp_path / "tuned")


def test_a_dual_format_repository_costs_one_copy_plus_its_other_bytes(tmp_path):
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file

    folder = tmp_path / "dual"
    folder.mkdir()
    torch.manual_seed(0)
    state = {name: torch.randn(*shape).to(torch.bfloat16) for name, shape in SHAPES.items()}
    save_file(state, folder / "model.safetensors")
    torch.save(state, folder / "pytorch_model.bin")
    (folder / "config.json").write_text("{}")
    only = tmp_path / "only"
    only.mkdir()
    shutil.copy(folder / "model.safetensors", only)
    shutil.copy(folder / "config.json", only)
    store = Store(tmp_path / "zoo")
    dual = compress_into(store, folder, "dual")
    single = Store(tmp_path / "zoo-single")
    one = compress_into(single, only, "only")
    other_bytes = dual.stored_bytes - one.stored_bytes  # the .bin's pickle and zip records, in the model's archive
    bin_other = (folder / "pytorch_model.bin").stat().st_size - sum(t.numel() * 2 for t in state.values())
    assert other_bytes < bin_other + 4096, (other_bytes, bin_other)  # and the .bin's records in the archive's header
    assert named_objects(tmp_path / "zoo", dual) - {dual.archive.name} == named_objects(tmp_path / "zoo-single", one) - {one.archive.name}
    # a tensor too small to be an object is coded once too: both files' records name one leaf
    opened = ArchiveFile(dual.archive)
    norms = [info["root"]["leaf"] for info in opened.header["tensors"].values() if info["name"] == "norm.weight"]
    opened.close()
    assert len(norms) == 2 and norms[0] == norms[1] and "object" not in norms[0]
    assert zoo.verify(dual.archive) == []
    zoo.decompress(dual.archive, tmp_path / "out")
    assert hashes(tmp_path / "out") == hashes(folder)
    export_archive(dual.archive, tmp_path / "alone.zoo")  # each copy of the leaf goes into an archive of its own
    assert zoo.verify(tmp_path / "alone.zoo") == []


def test_a_partial_fine_tune_costs_about_its_changed_tensors(tmp_path):
    store = Store(tmp_path / "zoo")
    tensors = base_tensors()
    compress_into(store, write_model(tmp_path / "base", tensors), "base")
    frozen = ["embed.weight", "layers.0.weight", "layers.1.weight"]
    changed = [name for name in SHAPES if name not in frozen]
    partial = compress_into(store, write_model(tmp_path / "partial", fine_tuned(tensors, 3, names=changed)), "partial", delta=False)
    [listed] = [e for e in store.entries() if e.name == "partial"]
    with zoo.open(partial.archive) as opened:
        sizes = {name: opened.stored_bytes(name) for name in SHAPES}
    assert listed.adds_bytes < sum(sizes[name] for name in changed) + 8192  # plus its header bytes, config and archive
    assert Store(tmp_path / "zoo").sharing(partial)["shared"] >= len(frozen)


def test_what_a_model_adds_is_the_same_looked_up_alone_or_in_the_listing(tmp_path):
    """A look-up by name (what `zoo serve` makes on every request) counts only that name's objects;
    its figure must be the one the whole listing gives."""
    store = Store(tmp_path / "zoo")
    tensors = base_tensors()
    compress_into(store, write_model(tmp_path / "base", tensors), "base")
    changed = [name for name in SHAPES if name not in ("embed.weight", "layers.0.weight")]
    compress_into(store, write_model(tmp_path / "partial", fine_tuned(tensors, 3, names=changed)), "partial", delta=False)
    compress_into(store, write_model(tmp_path / "alone", base_tensors(seed=7)), "alone")
    listing = {e.name: e.adds_bytes for e in store.entries()}
    assert listing["partial"] < listing["alone"] and listing["base"] < listing["alone"]  # the first two share objects
    assert {name: store.entries(name)[0].adds_bytes for name in listing} == listing


def test_checkpoints_never_chain_deeper_than_the_limit(tmp_path):
    store = Store(tmp_path / "zoo")
    tensors = base_tensors()
    compress_into(store, write_model(tmp_path / "step-0", tensors), "run", "step-0")
    folders = {}
    for step in range(1, MAX_XOR_DEPTH + 3):
        tensors = fine_tuned(tensors, 10 + step, share=0.1)
        folders[step] = write_model(tmp_path / f"step-{step}", tensors)
        compress_into(store, folders[step], "run", f"step-{step}", base=f"run@step-{step - 1}")
    depths = []
    for step, folder in folders.items():
        archive = store.resolve(f"run@step-{step}").archive
        with zoo.open(archive) as opened:
            depths.append(max(opened.xor_depth(key) for key in opened.keys()))
        zoo.decompress(archive, tmp_path / f"out-{step}")
        assert hashes(tmp_path / f"out-{step}") == hashes(folder)
    # as deep as the format allows, then cut to the bottom: the writer stopped at 2 levels of the 3
    assert depths == [1, 2, 3, 1, 2] and MAX_XOR_DEPTH == 3, depths


def test_rm_keeps_a_base_others_need_and_collects_what_nothing_names(tmp_path):
    home = tmp_path / "zoo"
    store = Store(home)
    compress_into(store, write_model(tmp_path / "base", base_tensors()), "base")
    tuned = write_model(tmp_path / "tuned", fine_tuned(base_tensors(), 4), base_name="base")
    compress_into(store, tuned, "tuned")
    refused = zoo_cli("rm", "base", home=home)
    assert refused.returncode == 1 and "is the base of tuned@main:lossless" in refused.stderr
    assert [e.name for e in store.entries()] == ["base", "tuned"]
    assert zoo_cli("rm", "base", "--force", home=home).returncode == 0  # the name goes, the objects tuned needs stay
    assert [e.name for e in store.entries()] == ["tuned"] and object_files(home) == named_objects(home)
    zoo.decompress(store.resolve("tuned").archive, tmp_path / "out")
    assert hashes(tmp_path / "out") == hashes(tuned)
    store.remove("tuned")
    assert object_files(home) == set()


def test_a_base_replaced_under_its_name_is_not_taken_for_the_one_a_fine_tune_was_stored_against(tmp_path):
    """`zoo compress OTHER --name base --force` over a base others are stored against: `zoo ls` went
    on saying the fine-tune was an XOR against base@main:lossless (now another model), and `zoo rm
    base` refused it as the fine-tune's base. Each manifest now holds its bases' commits."""
    home = tmp_path / "zoo"
    store = Store(home)
    compress_into(store, write_model(tmp_path / "base", base_tensors()), "base")
    tuned = write_model(tmp_path / "tuned", fine_tuned(base_tensors(), 4), base_name="base")
    compress_into(store, tuned, "tuned")
    assert store.resolve("tuned").base["commits"] == {"base@main:lossless": store.resolve("base").commit}
    listed = zoo_cli("ls", home=home)
    assert "(XOR of" in listed.stdout and "since" not in listed.stdout
    assert zoo_cli("compress", write_model(tmp_path / "other", base_tensors(seed=9)), "--name", "base", "--force", home=home).returncode == 0
    listed = zoo_cli("ls", "--json", home=home)
    labels = {m["name"]: m["quality_label"] for m in json.loads(listed.stdout)["models"]}
    assert labels["tuned"].endswith("against base@main:lossless, since replaced)"), labels
    done = zoo_cli("rm", "base", home=home)  # the model this name holds now is nobody's base
    assert done.returncode == 0, done.stderr
    assert "since removed)" in zoo_cli("ls", home=home).stdout
    assert "tensors are stored as XORs against base@main:lossless, since removed" in zoo_cli("info", "tuned", home=home).stdout
    assert object_files(home) == named_objects(home)
    zoo.decompress(store.resolve("tuned").archive, tmp_path / "out")
    assert hashes(tmp_path / "out") == hashes(tuned)


def test_a_model_whose_tensors_the_zoo_holds_only_as_xors_is_not_stored_whole_again(tmp_path):
    """A copy of a fine-tune stored as XORs against its base: the zoo held none of its tensors whole,
    so each was coded whole again, and the copy was skipped as a delta against the fine-tune (the
    same content key): the whole model again, where it now names the fine-tune's XORs."""
    home = tmp_path / "zoo"
    store = Store(home)
    compress_into(store, write_model(tmp_path / "base", base_tensors()), "base")
    tuned = write_model(tmp_path / "tuned", fine_tuned(base_tensors(), 4), base_name="base")
    compress_into(store, tuned, "tuned")
    assert store.resolve("tuned").base is not None
    before = object_files(home)
    copy = compress_into(store, write_model(tmp_path / "copy", fine_tuned(base_tensors(), 4)), "copy")
    assert len(object_files(home) - before) == 1, "more than the copy's shell"  # its config.json differs: a new shell
    assert copy.base["ref"] == "tuned@main:lossless" and object_files(home) == named_objects(home)
    for name in ("tuned", "base"):
        assert zoo_cli("rm", name, "--force", home=home).returncode == 0
    assert zoo.verify(store.resolve("copy").archive) == []
    zoo.decompress(store.resolve("copy").archive, tmp_path / "out")
    assert hashes(tmp_path / "out")["model.safetensors"] == hashes(tuned)["model.safetensors"]


def test_an_exported_archive_stands_alone(tmp_path):
    home = tmp_path / "zoo"
    store = Store(home)
    compress_into(store, write_model(tmp_path / "base", base_tensors()), "base")
    tuned = write_model(tmp_path / "tuned", fine_tuned(base_tensors(), 5), base_name="base")
    entry = compress_into(store, tuned, "tuned")
    done = zoo_cli("export", "tuned", "-o", tmp_path / "tuned.zoo", "--archive", home=home)
    assert done.returncode == 0, done.stderr
    shutil.rmtree(home)  # nothing of the zoo is needed any more
    opened = ArchiveFile(tmp_path / "tuned.zoo")
    assert "features" not in opened.header and "base" not in opened.header
    opened.close()
    zoo.decompress(tmp_path / "tuned.zoo", tmp_path / "out")
    assert hashes(tmp_path / "out") == hashes(tuned)
    assert entry.stored_bytes > (tmp_path / "tuned.zoo").stat().st_size * 0.5


def test_an_archive_of_the_zoo_moved_out_of_it_fails_clearly(tmp_path):
    store = Store(tmp_path / "zoo")
    entry = compress_into(store, write_model(tmp_path / "base", base_tensors()), "base")
    moved = tmp_path / "moved.zoo"
    shutil.copy(entry.archive, moved)
    with pytest.raises(zoo.ZooError, match="export --archive"):
        zoo.decompress(moved, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_zoo_verify_checks_each_object_once_and_finds_damage(tmp_path):
    home = tmp_path / "zoo"
    store = Store(home)
    compress_into(store, write_model(tmp_path / "a", base_tensors()), "a")
    compress_into(store, write_model(tmp_path / "b", base_tensors()), "b")  # the same tensors: the same objects
    done = zoo_cli("verify", "--json", home=home)
    report = json.loads(done.stdout)
    assert done.returncode == 0 and report["ok"] and report["objects"] == len(object_files(home)) and report["manifests"] == 2
    victim = max((home / "objects").rglob("*.zoo"), key=lambda p: p.stat().st_size)
    data = bytearray(victim.read_bytes())
    data[-100] ^= 0x10
    victim.write_bytes(bytes(data))
    damaged = zoo_cli("verify", home=home)
    assert damaged.returncode == 1 and victim.name in damaged.stderr.replace("\n", "")


def test_objects_are_named_by_what_they_decode_to(tmp_path):
    """The same tensor coded by two pipelines is one object: its name is its content."""
    store = Store(tmp_path / "zoo")
    folder = write_model(tmp_path / "m", base_tensors())
    first = compress_into(store, folder, "m")
    second = compress_into(store, folder, "m", pipeline="bytegroup|zstd:level=3")
    shared = Store(tmp_path / "zoo").sharing(second)
    assert shared["shared"] == shared["objects"] - 1  # all but its own archive
    digest = hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()
    assert [f.sha256 for f in store.resolve("m", with_files=True).files if f.path == "model.safetensors"] == [digest]
    assert first.archive != second.archive


def test_an_object_too_large_to_hold_in_memory_is_the_same_bytes(tmp_path, monkeypatch):
    """An object's payload is held in memory up to a limit and goes through a file past it: the
    objects are the same bytes either way, and nothing is left behind in the work folder."""
    from zoo.container.objects import ObjectPayload

    folder = write_model(tmp_path / "m", base_tensors())
    compress_into(Store(tmp_path / "held"), folder, "m")
    monkeypatch.setattr(ObjectPayload, "LIMIT", 1000)
    spills = []
    opened = tempfile.NamedTemporaryFile
    monkeypatch.setattr(tempfile, "NamedTemporaryFile", lambda **options: spills.append(options) or opened(**options))
    compress_into(Store(tmp_path / "spilled"), folder, "m")
    assert spills  # (the limit is read when each payload starts)
    held, spilled = ({p.name: p.read_bytes() for p in (tmp_path / home / "objects").rglob("*.zoo")} for home in ("held", "spilled"))
    assert len(held) > 2 and held == spilled
    # an object large enough to have its header padded: held or spilled (its header then inserted in front), the same bytes
    monkeypatch.setattr("zoo.container.format.ALIGN_FROM", 1000)
    compress_into(Store(tmp_path / "spilled-padded"), folder, "m")
    monkeypatch.undo()
    monkeypatch.setattr("zoo.container.format.ALIGN_FROM", 1000)
    compress_into(Store(tmp_path / "held-padded"), folder, "m")
    padded = {p.name: p.read_bytes() for p in (tmp_path / "held-padded" / "objects").rglob("*.zoo")}
    assert padded == {p.name: p.read_bytes() for p in (tmp_path / "spilled-padded" / "objects").rglob("*.zoo")}
    assert padded.keys() == held.keys() and padded != held  # named by content, not by bytes
    assert Store(tmp_path / "held-padded").verify()[2] == []
    assert not list((tmp_path / "spilled").rglob(".payload-*")) and not list((tmp_path / "spilled").rglob(".object-*"))


@pytest.mark.parametrize("change, message", [
    (lambda leaf, header: leaf.update(object="../../../etc/passwd"), "names an object by something other than a sha256"),
    (lambda leaf, header: leaf.update(object="0" * 64), "is missing from the zoo"),
    (lambda leaf, header: header.update(features=["objects", "teleport"]), "needs features this zoo lacks: teleport"),
    (lambda leaf, header: header.update(features=["xor"]), "lies in an object, but the header does not list the feature"),
])
def test_a_forged_archive_of_a_zoo_is_one_clear_error(tmp_path, change, message):
    from zoo.container.format import assemble

    store = Store(tmp_path / "zoo")
    entry = compress_into(store, write_model(tmp_path / "base", base_tensors()), "base")
    opened = ArchiveFile(entry.archive)
    header, start = json.loads(json.dumps(opened.header)), opened.payload_start
    opened.close()
    leaf = header["tensors"]["layers.0.weight"]["root"]["leaf"]
    change(leaf, header)
    forged = entry.archive.parent / "forged.zoo"  # beside the real one, so that its objects are found
    assemble(forged, header, entry.archive, start)
    with pytest.raises(zoo.ZooError, match=message):
        with zoo.open(forged) as archive:
            archive.read_tensor("layers.0.weight")
    done = zoo_cli("decompress", forged, "-o", tmp_path / "out", home=tmp_path / "zoo")
    assert done.returncode == 1 and done.stderr.startswith("error: ") and "Traceback" not in done.stderr
    assert not (tmp_path / "out").exists()


def test_a_tensor_twice_under_a_name_the_base_lacks_keeps_its_object(tmp_path):
    store = Store(tmp_path / "zoo")
    tensors = base_tensors()
    compress_into(store, write_model(tmp_path / "base", tensors), "base")
    tuned = fine_tuned(tensors, 6, share=0.1)
    tuned["extra.copy"] = tuned["layers.2.weight"]  # the same bytes, a name the base does not hold
    folder = write_model(tmp_path / "tuned", tuned, base_name="base")
    entry = compress_into(store, folder, "tuned")
    assert entry.base is not None
    zoo.decompress(entry.archive, tmp_path / "out")
    assert hashes(tmp_path / "out") == hashes(folder)


def test_two_fine_tunes_of_one_base_need_the_base_not_each_other(tmp_path):
    """Each names the base's objects (they come along with its XORs): the second was recorded as
    needing the first, and `zoo rm` of the first was refused."""
    store = Store(tmp_path / "zoo")
    compress_into(store, write_model(tmp_path / "base", base_tensors()), "base")
    for seed, name in ((4, "first"), (5, "second")):
        entry = compress_into(store, write_model(tmp_path / name, fine_tuned(base_tensors(), seed)), name, base="base")
        assert entry.base["needs"] == ["base@main:lossless"], entry.base
    store.remove("first")
    with pytest.raises(InputError, match="base@main:lossless is the base of second@main:lossless"):
        store.remove("base")


def _siblings_as_an_older_zoo_recorded_them(tmp_path: Path, commits: bool = False) -> Store:
    """base, and first and second stored against it, second's manifest as a zoo before the commits
    wrote it: no commits, and its sibling first among its needs (with `commits`, as the zoo of
    2026-12-06 copied such needs into a fine-tune of such a model: commits and all)."""
    store = Store(tmp_path / "zoo")
    compress_into(store, write_model(tmp_path / "base", base_tensors()), "base")
    for seed, name in ((4, "first"), (5, "second")):
        compress_into(store, write_model(tmp_path / name, fine_tuned(base_tensors(), seed)), name, base="base")
    manifest = store.manifest_path("second", "main", "lossless")
    record = json.loads(manifest.read_text())
    if not commits:
        del record["base"]["commits"]
    record["base"]["needs"] = ["base@main:lossless", "first@main:lossless"]
    manifest.write_text(json.dumps(record))
    (tmp_path / "zoo" / "catalogue.sqlite").unlink()
    return Store(tmp_path / "zoo")


@pytest.mark.parametrize("commits", [False, True])
def test_a_manifest_from_before_the_commits_with_a_sibling_among_its_needs_does_not_keep_it(tmp_path, commits):
    """Manifests written before 2026-12-05 23:00 listed a sibling fine-tune among a fine-tune's
    needs (the test above), and have no commits: zoo rm of the sibling was refused with a false
    reason, which doctor could not mend. Without commits the chain of bases is what a model needs."""
    store = _siblings_as_an_older_zoo_recorded_them(tmp_path, commits)
    store.remove("first")
    with pytest.raises(InputError, match="base@main:lossless is the base of second@main:lossless"):
        store.remove("base")


def test_a_fine_tune_of_such_a_fine_tune_does_not_inherit_the_sibling(tmp_path):
    # the manifest of the test above, from before the commits, as the base of a new fine-tune: its
    # needs were copied into the new model's manifest (with commits, so counted as true), and zoo rm
    # of the sibling was refused again
    store = _siblings_as_an_older_zoo_recorded_them(tmp_path)
    third = compress_into(store, write_model(tmp_path / "third", fine_tuned(fine_tuned(base_tensors(), 5), 7)), "third", base="second")
    assert third.base["needs"] == ["base@main:lossless", "second@main:lossless"], third.base
    store.remove("first")


def test_a_base_found_by_its_tensors_is_the_default_lossless_variant_before_another(tmp_path):
    # with the base stored both ways, the newer -p zstd variant won a tie of shared names
    store = Store(tmp_path / "zoo")
    compress_into(store, write_model(tmp_path / "base", base_tensors()), "org/base")
    compress_into(store, tmp_path / "base", "org/base", pipeline="zstd")
    tuned = write_model(tmp_path / "tuned", fine_tuned(base_tensors(), 9))  # names no base: found by its tensors
    assert compress_into(store, tuned, "tuned").base["ref"] == "org/base@main:lossless"


def test_a_base_stored_by_another_lossless_pipeline_is_a_base(tmp_path):
    # `-p zstd` loses nothing, but --base refused it ("no lossless model of that name") and the base
    # was never found among such models
    store = Store(tmp_path / "zoo")
    compress_into(store, write_model(tmp_path / "base", base_tensors()), "org/base", pipeline="zstd")
    tuned = write_model(tmp_path / "tuned", fine_tuned(base_tensors(), 8), base_name="org/base")
    assert compress_into(store, tuned, "named", base="org/base").base["ref"] == "org/base@main:bytegroup|zstd:level=3"
    assert compress_into(store, tuned, "found").base["ref"] == "org/base@main:bytegroup|zstd:level=3"
    zoo.decompress(store.resolve("found").archive, tmp_path / "out")
    assert hashes(tmp_path / "out") == hashes(tuned)


def test_a_chain_cut_at_its_depth_needs_the_model_at_its_bottom(tmp_path):
    store = Store(tmp_path / "zoo")
    tensors = base_tensors()
    compress_into(store, write_model(tmp_path / "step-0", tensors), "run", "step-0")
    for step in range(1, MAX_XOR_DEPTH + 2):
        tensors = fine_tuned(tensors, 20 + step, share=0.1)
        entry = compress_into(store, write_model(tmp_path / f"step-{step}", tensors), "run", f"step-{step}", base=f"run@step-{step - 1}")
    last = MAX_XOR_DEPTH + 1  # stored against the bottom of step-MAX's chain: step-0
    assert entry.base["ref"] == f"run@step-{last - 1}:lossless" and "run@step-0:lossless" in entry.base["needs"]
    with pytest.raises(InputError, match=f"is the base of .*run@step-{last}"):
        store.remove("run@step-0")


def test_an_object_payload_keeps_a_coded_chunk_and_copies_a_view(tmp_path):
    """Held in memory, a coded chunk (bytes) is kept as it is, not copied again; a view of a buffer
    its writer may reuse is copied, so later writes to the buffer change nothing."""
    from zoo.container.objects import ObjectPayload

    payload = ObjectPayload(tmp_path)
    chunk = b"coded chunk"
    buffer = bytearray(b"reused")
    assert payload.write(chunk) == 0 and payload.write(memoryview(buffer)) == len(chunk)
    buffer[:] = b"XXXXXX"
    assert payload.parts[0] is chunk and bytes(payload.parts[1]) == b"reused"


def test_rm_all_names_as_bases_only_the_variants_others_need(tmp_path):
    """`zoo rm base --all` with a lossy variant beside the lossless base: the refusal named both as
    the base of the fine-tune, where only the lossless one is."""
    store = Store(tmp_path / "zoo")
    base = write_model(tmp_path / "base", base_tensors())
    compress_into(store, base, "base")
    compress_into(store, base, "base", pipeline="truncate:bits=3")
    compress_into(store, write_model(tmp_path / "tuned", fine_tuned(base_tensors(), 1)), "tuned", base="base")
    with pytest.raises(InputError) as refused:
        store.remove("base", every=True)
    assert str(refused.value).startswith("base@main:lossless is the base of tuned@main:lossless, whose tensors are stored as XORs "
                                         "against it;"), refused.value
    assert len(store.matches("base")) == 2


def test_a_base_removed_while_a_fine_tune_is_coded_leaves_it_whole_and_nothing_else_stored(tmp_path):
    """`zoo rm BASE` landing after the fine-tune read the base, as it takes the base's objects
    along: compress failed (`object ... of the base is missing from the zoo (`zoo doctor`)`) where
    a moment earlier it stored the model whole; and on that fallback the base's objects it had
    already taken were published, named by no model. Now: stored whole, a warning, no extra objects."""
    from zoo.api import build_model
    from zoo.codecs.pipeline import DEFAULT_SPEC, Pipeline
    from zoo.container.objects import ObjectSink
    from zoo.errors import ZooWarning

    home = tmp_path / "zoo"
    store = Store(home)
    compress_into(store, write_model(tmp_path / "base", base_tensors()), "base")
    base = store.resolve("base")
    of_the_base = {name.removesuffix(".zoo") for name in named_objects(home)}
    tuned = write_model(tmp_path / "tuned", fine_tuned(base_tensors(), 7, share=0.05))  # every tensor moved: no object shared
    taken: list[str] = []

    def existing(name: str):  # the zoo as the build sees it; `zoo rm base` lands at its second object taken for an XOR
        if name in of_the_base:
            taken.append(name)
            if len(taken) == 2:
                store.remove("base")
        return store.existing_object(name)

    with store.workspace() as folder:
        sink = ObjectSink(folder / "objects" / "sha256", existing, 1)
        with pytest.warns(ZooWarning, match=r"base@main:lossless cannot be read as a base \(its object .* is missing from the zoo"):
            shell = build_model(store, sink, tuned, "tuned", "main", Pipeline.parse(DEFAULT_SPEC), base=base, threads=1)
        entry = store.add_composed(shell, sink, "tuned", "main")
    assert len(taken) >= 2 and entry.base is None
    assert object_files(home) == named_objects(home)  # nothing stored that no model names
    zoo.decompress(entry.archive, tmp_path / "out")
    assert hashes(tmp_path / "out") == hashes(tuned)


def test_an_object_collected_between_being_found_and_being_checked_is_coded_again(tmp_path):
    """`zoo rm` of the only other model naming an object, landing after the build found it and
    before it checked it: the vanished file was taken for damage, and compress failed with 'an
    object of the zoo this model holds too is damaged (no such archive) ... cannot be repaired'."""
    from zoo.api import build_model
    from zoo.codecs.pipeline import DEFAULT_SPEC, Pipeline
    from zoo.container.objects import ObjectSink

    home = tmp_path / "zoo"
    store = Store(home)
    source = write_model(tmp_path / "model", base_tensors())
    compress_into(store, source, "first")
    removed: list[str] = []

    def existing(name: str):  # `zoo rm first` lands just after the first object is found
        found = store.existing_object(name)
        if found is not None and not removed:
            removed.extend(e.ref for e in store.remove("first"))
        return found

    with store.workspace() as folder:
        sink = ObjectSink(folder / "objects" / "sha256", existing, 1)
        shell = build_model(store, sink, source, "second", "main", Pipeline.parse(DEFAULT_SPEC), threads=1)
        entry = store.add_composed(shell, sink, "second", "main")
    assert removed == ["first@main:lossless"] and not sink.damaged
    assert object_files(home) == named_objects(home)
    zoo.decompress(entry.archive, tmp_path / "out")
    assert hashes(tmp_path / "out") == hashes(source)


def test_export_archive_into_a_folder_named_with_a_trailing_slash(tmp_path):
    # `-o out/ --archive` wrote a file named `out`; compress -o out/ writes NAME.zoo inside
    home = tmp_path / "zoo"
    compress_into(Store(home), write_model(tmp_path / "base", base_tensors()), "org/base")
    (tmp_path / "out").mkdir()
    done = zoo_cli("export", "org/base", "-o", f"{tmp_path / 'out'}/", "--archive", home=home)
    assert done.returncode == 0 and done.stdout.startswith(f"{tmp_path / 'out' / 'base.zoo'}: org/base@main:lossless"), done.stderr
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["base.zoo"]
    done = zoo_cli("export", "org/base", "-o", f"{tmp_path / 'missing'}/", "--archive", home=home)
    assert done.returncode == 1 and "output folder does not exist" in done.stderr and not (tmp_path / "missing").exists()


def test_a_batch_that_replaces_a_base_stores_its_fine_tune_the_same_in_any_order(tmp_path):
    """With --force, a batch holding a fine-tune and a new model under its base's name stored the
    fine-tune as XORs against the base or not, as the replacement happened to land before or after
    it (on Ray, from one run to the next): a base the batch replaces is no base of it."""
    from zoo import batch

    base = write_model(tmp_path / "old" / "base", base_tensors())
    tuned = write_model(tmp_path / "tuned", fine_tuned(base_tensors(), 1), base_name="base")
    other = write_model(tmp_path / "new" / "base", base_tensors(seed=7))
    stored = []
    for order in ([tuned, other], [other, tuned]):
        store = Store(tmp_path / f"zoo-{len(stored)}")
        compress_into(store, base, "base")
        results = batch.compress_many([str(s) for s in order], store=store, ray=None, force=True)
        assert all(r.ok for r in results), [r.error for r in results]
        stored.append(store.resolve("tuned").base)
    assert stored == [None, None]  # no XOR against a base the batch replaced, whichever landed first


@pytest.mark.parametrize("card", ["base_model:\n- org/base\n", "base_model:\n  - org/base\n  - org/other\n", "base_model: [org/base]\n",
                                  "base_model: org/base\r\nlicense: mit\r\n"])
def test_the_model_cards_base_model_in_each_yaml_form_names_the_base(tmp_path, card):
    """`base_model:` then `- org/base` (the Hub's list form) was read as the name "- org/base",
    and a card with CRLF line ends not at all: the guess fell to the newest model of the same names."""
    from zoo.hub.deltas import _named_bases

    folder = tmp_path / "ft"
    folder.mkdir()
    (folder / "README.md").write_bytes(f"---\n{card}---\n# a fine-tune\n".replace("\n", "\r\n" if "\r" in card else "\n").replace("\r\r", "\r").encode())
    assert _named_bases(folder)[0] == "org/base"
    store = Store(tmp_path / "zoo")
    compress_into(store, write_model(tmp_path / "base", base_tensors()), "org/base")
    compress_into(store, write_model(tmp_path / "other", base_tensors(seed=7)), "org/other")  # newer, of the same names
    write_model(folder, fine_tuned(base_tensors(), 1))
    entry = compress_into(store, folder, "org/ft")
    assert entry.base["ref"] == "org/base@main:lossless"


def test_a_damaged_xor_object_is_coded_again_and_mends_the_model_naming_it(tmp_path):
    """A fine-tune's XOR object damaged in the zoo: storing the fine-tune again warned that its
    *base* could not be read (naming a file that was never there), stored no XOR at all, and left
    the damaged object, and the model naming it, as they were."""
    import warnings

    store = Store(tmp_path / "zoo")
    compress_into(store, write_model(tmp_path / "base", base_tensors()), "org/base")
    tuned = write_model(tmp_path / "ft", fine_tuned(base_tensors(), 1, share=0.05))
    compress_into(store, tuned, "org/ft", base="org/base")
    with zoo.open(store.resolve("org/ft").archive) as opened:
        xor = next(opened.tensor_info(key)["root"]["leaf"]["object"] for key in opened.keys() if "xor" in opened.tensor_info(key))
    path = store.object_path(xor)
    path.chmod(0o644)
    data = bytearray(path.read_bytes())
    data[-50] ^= 0xFF
    path.write_bytes(bytes(data))
    assert any(xor[:16] in line for line in store.verify()[2])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no word of a base that cannot be read
        entry = compress_into(store, tuned, "org/ft-copy", base="org/base")
    assert entry.base is not None and entry.base["tensors"] > 0
    assert store.verify()[2] == []
    zoo.decompress(store.resolve("org/ft").archive, tmp_path / "out")
    assert hashes(tmp_path / "out") == hashes(tuned)


def test_a_model_stored_again_is_never_stored_against_one_that_needs_it(tmp_path):
    """base <- ft1 <- ft2, then ft1 stored again (--force, unchanged): it was stored as XORs against
    ft2, the newest model of its names, whose base it is, and `zoo rm` refused both. A base named
    that way, or the model itself, is refused."""
    store = Store(tmp_path / "zoo")
    tensors = base_tensors()
    compress_into(store, write_model(tmp_path / "base", tensors), "org/base")
    first = write_model(tmp_path / "ft1", fine_tuned(tensors, 1, share=0.1))
    compress_into(store, first, "org/ft1", base="org/base")
    compress_into(store, write_model(tmp_path / "ft2", fine_tuned(fine_tuned(tensors, 1, share=0.1), 2, share=0.1)), "org/ft2",
                  base="org/ft1")
    again = compress_into(store, first, "org/ft1", force=True)
    assert again.base is not None and again.base["ref"] == "org/base@main:lossless"
    with pytest.raises(InputError, match="org/ft2@main:lossless needs org/ft1@main:lossless, the model being stored"):
        compress_into(store, first, "org/ft1", force=True, base="org/ft2")
    with pytest.raises(InputError, match="the model being stored; a model cannot be stored against itself"):
        compress_into(store, first, "org/ft1", force=True, base="org/ft1")
    store.remove("org/ft2")
    store.remove("org/ft1")
    assert [e.name for e in store.entries()] == ["org/base"]


def test_a_damaged_object_is_mended_by_storing_its_model_again_as_xors(tmp_path):
    """base <- ft1, and ft2 stored whole; an object of base's, which ft1's XORs need, damaged.
    Storing base again coded that tensor in the damaged object's place, then stored it as an XOR
    against ft2 and dropped the mended object: ft1 stayed damaged (STORE.md: storing again
    replaces a damaged object, which mends every model naming it)."""
    store = Store(tmp_path / "zoo")
    tensors = base_tensors()
    base = write_model(tmp_path / "base", tensors)
    compress_into(store, base, "org/base")
    first = write_model(tmp_path / "ft1", fine_tuned(tensors, 1, share=0.1))
    compress_into(store, first, "org/ft1", base="org/base")
    compress_into(store, write_model(tmp_path / "ft2", fine_tuned(tensors, 2, share=0.1)), "org/ft2", delta=False)
    with zoo.open(store.resolve("org/base").archive) as opened:
        damaged = opened.tensor_info("embed.weight")["root"]["leaf"]["object"]
    assert f"{damaged}.zoo" in named_objects(store.home, store.resolve("org/ft1"))
    path = store.object_path(damaged)
    path.chmod(0o644)
    data = bytearray(path.read_bytes())
    data[-50] ^= 0xFF
    path.write_bytes(bytes(data))
    assert store.verify()[2]
    compress_into(store, base, "org/base", force=True)
    assert store.verify()[2] == []
    zoo.decompress(store.resolve("org/ft1").archive, tmp_path / "out")
    assert hashes(tmp_path / "out") == hashes(first)


def test_one_tensor_stored_as_an_xor_is_said_in_the_singular(tmp_path):
    home = tmp_path / "zoo"
    store = Store(home)
    compress_into(store, write_model(tmp_path / "base", base_tensors()), "base")
    entry = compress_into(store, write_model(tmp_path / "ft", fine_tuned(base_tensors(), 1, names=["layers.0.weight"])), "ft", base="base")
    assert entry.base["tensors"] == 1
    assert "(XOR of 1 tensor against base@main:lossless)" in zoo_cli("ls", home=home).stdout
    assert "; 1 tensor is stored as an XOR against base@main:lossless" in zoo_cli("info", "ft", home=home).stdout


def test_a_base_below_a_replaced_middle_model_is_still_needed(tmp_path):
    """base <- ft1 <- ft2, then ft1 replaced (--force) by other weights: `zoo rm base` went through,
    the chain read through ft1's new manifest, though ft2's tensors still bottom on base's."""
    store = Store(tmp_path / "zoo")
    tensors = base_tensors()
    compress_into(store, write_model(tmp_path / "base", tensors), "org/base")
    first = fine_tuned(tensors, 1, share=0.1)
    compress_into(store, write_model(tmp_path / "ft1", first), "org/ft1", base="org/base")
    compress_into(store, write_model(tmp_path / "ft2", fine_tuned(first, 2, share=0.1)), "org/ft2", base="org/ft1")
    compress_into(store, write_model(tmp_path / "other", base_tensors(seed=9)), "org/ft1", force=True, delta=False)
    with pytest.raises(InputError, match="org/base@main:lossless is the base of org/ft2@main:lossless"):
        store.remove("org/base")
