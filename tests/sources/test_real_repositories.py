"""Every file of a real repository is stored whole: Trainer folders, PyTorch weights (zip, legacy,
sharded), files zoo cannot read as tensors safely (kept opaque with the reason), file filters."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

import zoo
from zoo.errors import InputError, ZooWarning

from tests.sources.conftest import tiny_model, torch, write_polyglot, write_zip_bomb


def sha256s(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and not p.is_symlink()}


def round_trip(source: Path, tmp_path: Path, pipeline: str = "lossless", **options) -> tuple[Path, Path]:
    archive = tmp_path / f"{source.name}.zoo"
    zoo.compress(source, archive, pipeline, **options)
    assert zoo.verify(archive) == []
    out = tmp_path / f"{source.name}.out"
    zoo.decompress(archive, out)
    return archive, out


def test_trainer_output_folder_is_stored_whole_with_training_args_opaque(corpus, tmp_path):
    archive, out = round_trip(corpus["trainer_output"], tmp_path)
    assert sha256s(out) == sha256s(corpus["trainer_output"])
    files = {f["path"]: f for f in zoo.report_of(archive).files}
    assert files["training_args.bin"]["kind"] == "opaque" and files["training_args.bin"]["opaque"] == "pickle needs globals"
    assert "opaque" not in files["model.safetensors"]


def test_trainer_checkpoint_folder_round_trips_and_names_every_optimizer_tensor(corpus, tmp_path):
    folder = corpus["checkpoint"]
    archive, out = round_trip(folder, tmp_path)
    assert sha256s(out) == sha256s(folder)
    files = {f["path"]: f for f in zoo.report_of(archive).files}
    assert files["rng_state.pth"]["opaque"] == "pickle needs globals"  # numpy's generator state
    assert {files[name]["kind"] for name in ("optimizer.pt", "scheduler.pt", "scaler.pt")} == {"torch"}
    state = zoo.load_state_dict(archive)
    optimizer = torch.load(folder / "optimizer.pt", weights_only=True)
    for number, moments in optimizer["state"].items():
        for what, tensor in moments.items():
            assert torch.equal(state[f"state.{number}.{what}"], tensor)
    from safetensors.torch import load_file

    for name, tensor in load_file(folder / "model.safetensors").items():
        assert torch.equal(state[name], tensor)


@pytest.mark.parametrize("layout", ["bin_single", "bin_legacy", "bin_sharded"])
def test_pytorch_weights_are_named_tensors(corpus, tmp_path, layout):
    folder = corpus[layout]
    archive, out = round_trip(folder, tmp_path)
    assert sha256s(out) == sha256s(folder)
    expected = {}
    for path in sorted(folder.glob("*.bin")):
        expected.update(torch.load(path, weights_only=True))
    state = zoo.load_state_dict(archive)
    assert set(state) == set(expected)
    for name, tensor in expected.items():
        assert torch.equal(state[name], tensor), name
    with zoo.open(archive) as opened:
        assert sorted(opened.keys()) == sorted(expected)
        assert torch.equal(opened.get_tensor("1.weight", "pt"), expected["1.weight"])
    report = zoo.report_of(archive)
    assert report.parameters == sum(t.numel() for t in expected.values())


def test_lossy_stages_reach_pytorch_weights_but_not_optimizer_moments(corpus, tmp_path):
    folder = corpus["checkpoint"]
    single = corpus["bin_single"]
    lossless = zoo.compress(single, tmp_path / "lossless.zoo")
    lossy = zoo.compress(single, tmp_path / "lossy.zoo", "truncate:bits=3|bytegroup|zstd")
    assert lossy.compressed_bytes < 0.8 * lossless.compressed_bytes
    reference = torch.load(single / "pytorch_model.bin", weights_only=True)
    changed = zoo.load_state_dict(tmp_path / "lossy.zoo")
    assert not torch.equal(changed["1.weight"], reference["1.weight"])
    assert torch.allclose(changed["1.weight"], reference["1.weight"], atol=0.05)

    zoo.compress(folder, tmp_path / "ckpt.zoo", "truncate:bits=3|bytegroup|zstd")
    state = zoo.load_state_dict(tmp_path / "ckpt.zoo")
    optimizer = torch.load(folder / "optimizer.pt", weights_only=True)
    assert torch.equal(state["state.1.exp_avg"], optimizer["state"][1]["exp_avg"])  # moments untouched
    with zoo.open(tmp_path / "ckpt.zoo") as opened:
        assert opened.tensor_info("1.weight")["root"].get("leaf") is None  # the weights were truncated

    # named by a stage's own pattern, the moments are taken too
    zoo.compress(folder, tmp_path / "moments.zoo", "truncate:bits=3,include=state.*.exp_avg|bytegroup|zstd")
    state = zoo.load_state_dict(tmp_path / "moments.zoo")
    assert not torch.equal(state["state.1.exp_avg"], optimizer["state"][1]["exp_avg"])


def test_include_and_exclude_choose_the_files(corpus, tmp_path):
    folder = corpus["checkpoint"]
    report = zoo.compress(folder, tmp_path / "json.zoo", include=["*.json"])
    assert sorted(f["path"] for f in report.files) == ["config.json", "trainer_state.json"]
    report = zoo.compress(folder, tmp_path / "no_args.zoo", exclude=["training_args.bin", "rng_state.pth"])
    assert {"training_args.bin", "rng_state.pth"}.isdisjoint(f["path"] for f in report.files)
    with pytest.raises(InputError, match="no files that --include/--exclude select"):
        zoo.compress(folder, tmp_path / "none.zoo", include=["*.gguf"])
    # an empty name is no model, not the current folder
    with pytest.raises(InputError, match="^no model given"):
        zoo.compress("", tmp_path / "empty.zoo")
    # a set left open would match its '[' as text, and --exclude would then leave out nothing, silently
    with pytest.raises(InputError, match=r"^--exclude 'rng_state\[0-9.pth' opens a '\[' that no '\]' closes$"):
        zoo.compress(folder, tmp_path / "open.zoo", exclude=["rng_state[0-9.pth"])
    assert not (tmp_path / "open.zoo").exists()


def test_what_the_globs_leave_out_is_not_looked_at_and_empty_folders_they_keep_stay(tmp_path):
    """A link leading out of the folder that --exclude (or --include) leaves out refused the whole
    compress ("pass --follow-links"), and any glob dropped every empty folder without a word."""
    import shutil

    import numpy as np
    from safetensors.numpy import save_file

    folder = tmp_path / "m"
    for sub in ("wandb", "logs", "cache"):
        (folder / sub).mkdir(parents=True)
    save_file({"w": np.ones((8, 8), np.float32)}, folder / "model.safetensors")
    (folder / "notes.txt").write_text("hi")
    (folder / "wandb" / "latest-run").symlink_to(tmp_path)  # leads out
    (folder / "wandb" / "run.log").write_text("x")
    for globs, kept in (({"exclude": ["wandb/"]}, ["cache", "logs", "model.safetensors", "notes.txt"]),
                        ({"exclude": ["wandb/", "notes.txt"]}, ["cache", "logs", "model.safetensors"]),
                        ({"include": ["model.safetensors"]}, ["model.safetensors"])):
        archive = tmp_path / "a.zoo"
        zoo.compress(folder, archive, force=True, **globs)
        out = tmp_path / "out"
        zoo.decompress(archive, out, force=True)
        assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == kept, globs
        shutil.rmtree(out)
    with pytest.raises(InputError, match="a link leading out of the folder"):  # a glob that may want what lies through it
        zoo.compress(folder, tmp_path / "b.zoo", include=["*.log"])
    # `sub?` matches the folder's path with its `/`, but none of its files: they stay
    (folder / "wandb" / "latest-run").unlink()
    report = zoo.compress(folder, tmp_path / "c.zoo", exclude=["wandb?"])
    assert "wandb/run.log" in [f["path"] for f in report.files]


def test_a_single_unsafe_file_is_refused_but_kept_inside_a_folder(corpus, tmp_path):
    with pytest.raises(InputError, match="refusing a pickle that needs more than torch.load") as caught:
        zoo.compress(corpus["trainer_output"] / "training_args.bin", tmp_path / "args.zoo")
    assert "add_safe_globals" not in str(caught.value)  # torch's advice to code that calls torch.load is not for this user
    # a file that is no pickle at all was "a pickle that needs more than torch.load(weights_only=True)"
    (tmp_path / "one.bin").write_bytes(b"\x7f")
    with pytest.raises(InputError, match=r"one.bin: not a pickle torch.load\(weights_only=True\) reads: Unsupported operand 127$"):
        zoo.compress(tmp_path / "one.bin", tmp_path / "one.zoo")


def test_a_polyglot_checkpoint_is_never_called_one(corpus, tmp_path):
    folder = tmp_path / "polyglot"
    folder.mkdir()
    write_polyglot(folder / "pytorch_model.bin", corpus["bin_single"] / "pytorch_model.bin")
    with pytest.raises(Exception):
        torch.load(folder / "pytorch_model.bin", weights_only=True)  # torch reads it as the pickle in front
    with pytest.raises(InputError, match=r"not a pickle torch.load\(weights_only=True\) reads: Unsupported operand 149$"):
        zoo.compress(folder / "pytorch_model.bin", tmp_path / "one.zoo")
    archive, out = round_trip(folder, tmp_path)
    assert sha256s(out) == sha256s(folder)
    # the pickle in front is protocol 4: torch's reader stops at its first opcode, before any global
    assert zoo.report_of(archive).files[0]["opaque"] == "not a pickle torch.load(weights_only=True) reads: Unsupported operand 149"
    with zoo.open(archive) as opened:
        assert opened.keys() == []


def test_a_pickle_that_inflates_past_the_cap_is_refused_without_inflating_it(tmp_path):
    folder = tmp_path / "bomb"
    folder.mkdir()
    write_zip_bomb(folder / "model.pt")
    assert (folder / "model.pt").stat().st_size < 1 << 20
    with pytest.raises(InputError, match="over the .* cap"):
        zoo.compress(folder / "model.pt", tmp_path / "one.zoo")
    archive, _ = round_trip(folder, tmp_path)
    assert "cap" in zoo.report_of(archive).files[0]["opaque"]


def test_an_lfs_pointer_is_named(tmp_path):
    folder = tmp_path / "lfs"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    for name in ("model.safetensors", "pytorch_model.bin"):
        (folder / name).write_text("version https://git-lfs.github.com/spec/v1\noid sha256:" + "a" * 64 + "\nsize 2336927\n")
    with pytest.raises(InputError, match="git-lfs pointer: the real file was never downloaded"):
        zoo.compress(folder / "model.safetensors", tmp_path / "one.zoo")
    archive, out = round_trip(folder, tmp_path)
    assert sha256s(out) == sha256s(folder)
    reasons = {f["path"]: f.get("opaque") for f in zoo.report_of(archive).files}
    assert reasons["model.safetensors"] == reasons["pytorch_model.bin"] == "git-lfs pointer: the real file was never downloaded"


def test_names_with_spaces_and_unicode(corpus, tmp_path):
    folder = tmp_path / "names"
    (folder / "sous dossier").mkdir(parents=True)
    torch.save({"poids é": torch.ones(2, 2), "naïve name": torch.zeros(3)}, folder / "sous dossier" / "modèle ü.bin")
    archive, out = round_trip(folder, tmp_path)
    assert sha256s(out) == sha256s(folder)
    assert set(zoo.load_state_dict(archive)) == {"poids é", "naïve name"}


@pytest.mark.parametrize("layout", ["checkpoint", "bin_legacy"])
def test_eval_reads_every_format_and_counts_model_weights_only(corpus, tmp_path, layout):
    from zoo.evaluate import evaluate

    folder = corpus[layout]
    archive = tmp_path / "m.zoo"
    zoo.compress(folder, archive, "truncate:bits=3|bytegroup|zstd")
    result = evaluate(archive, folder, kind="weights")
    names = {entry["name"] for entry in result.tensors}
    model = tiny_state_names()
    assert names == model, names ^ model  # no optimizer moment among the weight figures


def tiny_state_names() -> set[str]:
    return set(tiny_model().state_dict())


def test_zoo_info_says_which_files_are_kept_as_bytes_and_why(corpus, tmp_path):
    zoo.compress(corpus["checkpoint"], tmp_path / "c.zoo")
    done = subprocess.run([sys.executable, "-m", "zoo", "info", str(tmp_path / "c.zoo")], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "COLUMNS": "200"})
    assert done.returncode == 0, done.stderr
    assert ("kept as bytes, not read as tensors: rng_state.pth (pickle needs globals); "
            "training_args.bin (pickle needs globals)") in done.stdout


def test_a_dual_format_repository_shows_both_files_tensors(corpus, tmp_path):
    folder = tmp_path / "dual"
    folder.mkdir()
    model = tiny_model()
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    from tests.sources.conftest import save_safetensors

    save_safetensors(model, folder / "model.safetensors")
    archive, out = round_trip(folder, tmp_path)
    assert sha256s(out) == sha256s(folder)
    with pytest.warns(ZooWarning, match="pytorch_model.bin holds the weights of the safetensors beside it again"):
        state = zoo.load_state_dict(archive)  # one copy, as transformers loads it
    assert sorted(state) == sorted(model.state_dict())
    with zoo.open(archive) as opened:  # both files' tensors are there to read
        for name, tensor in model.state_dict().items():
            assert torch.equal(state[name], tensor) and torch.equal(opened.get_tensor(f"pytorch_model.bin::{name}", "pt"), tensor)


def test_a_suffix_in_capitals_is_read_as_its_format(tmp_path):
    """MODEL.SAFETENSORS and weights.PT were kept as plain bytes: coded as bytes, not tensors, and
    left out of zoo.load_state_dict. The suffix is compared without case; the names come back as
    they were."""
    folder = tmp_path / "caps"
    folder.mkdir()
    weights = torch.randn(64, 32)
    from safetensors.torch import save_file

    save_file({"w": weights}, folder / "MODEL.SAFETENSORS")
    torch.save({"v": weights * 2}, folder / "extra.PT")
    archive, out = round_trip(folder, tmp_path)
    assert sha256s(out) == sha256s(folder)
    files = {f["path"]: f["kind"] for f in zoo.report_of(archive).files}
    assert files == {"MODEL.SAFETENSORS": "safetensors", "extra.PT": "torch"}, files
    state = zoo.load_state_dict(archive)
    assert torch.equal(state["w"], weights) and torch.equal(state["v"], weights * 2)


@pytest.mark.parametrize("globs, kept", [({"include": ["config.json", "keep_me"]}, ["config.json", "keep_me"]),
                                         ({"include": ["config.json", "keep_me/"]}, ["config.json", "keep_me"]),
                                         ({"exclude": ["drop_me"]}, ["config.json", "keep_me"]),
                                         ({"exclude": ["drop_me/"]}, ["config.json", "keep_me"])])
def test_an_empty_folder_is_chosen_by_its_path_with_or_without_the_slash(tmp_path, globs, kept):
    """--include keep_me and --exclude drop_me did nothing to empty folders of those names: only
    keep_me/ or a glob chose them, though the archive stores the folder as keep_me."""
    folder = tmp_path / "m"
    (folder / "keep_me").mkdir(parents=True)
    (folder / "drop_me").mkdir()
    (folder / "config.json").write_text("{}")
    zoo.compress(folder, tmp_path / "m.zoo", **globs)
    zoo.decompress(tmp_path / "m.zoo", tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == kept


def test_what_the_globs_leave_out_is_not_warned_of(tmp_path):
    """--include config.json still warned of a FIFO, a link to nothing and a loop of links beside
    it: docs/cli.md says what the globs leave out is not looked at."""
    import warnings

    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    os.mkfifo(folder / "fifo")
    os.symlink("/nonexistent/x", folder / "gone")
    os.symlink("loop", folder / "loop")
    with warnings.catch_warnings():
        warnings.simplefilter("error", ZooWarning)
        zoo.compress(folder, tmp_path / "m.zoo", include=["config.json"])
    with pytest.warns(ZooWarning, match=r"left out 2 items: fifo \(not a regular file\); loop \(a loop of links"):
        zoo.compress(folder, tmp_path / "all.zoo", exclude=["gone"])
