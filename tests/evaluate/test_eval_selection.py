"""compress --eval judges the archive against the files compress chose (--include, --exclude),
not the whole folder: a folder holding the same weights twice, one copy excluded, measured the
excluded copy's tensors as the candidate's zeros, and a gate the chosen files cannot judge was
refused only after compressing."""

import json

import numpy as np
import pytest

pytest.importorskip("torch")

from zoo.evaluate import Gates, evaluate, verify_archive  # noqa: E402

from tests.evaluate.test_evaluate import run_cli  # noqa: E402


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ZOO_EVAL_CACHE", str(tmp_path / "eval-cache"))
    monkeypatch.setenv("ZOO_HOME", str(tmp_path / "zoo-home"))


@pytest.fixture
def twice(tmp_path):
    """The same two tensors as model.safetensors and as pytorch_model.bin, as many hub folders have them."""
    import torch
    from safetensors.torch import save_file

    folder = tmp_path / "dual"
    folder.mkdir()
    generator = torch.Generator().manual_seed(0)
    tensors = {"a.weight": torch.randn(64, 64, generator=generator), "b.weight": torch.randn(96, 64, generator=generator)}
    save_file(tensors, folder / "model.safetensors")
    torch.save(tensors, folder / "pytorch_model.bin")
    return folder


def test_eval_of_an_archive_made_with_exclude_compares_only_the_files_kept(twice, tmp_path, monkeypatch, capsys):
    archive = tmp_path / "dual.zoo"
    code, out, err = run_cli(monkeypatch, capsys, "compress", twice, "-o", archive, "-p", "truncate:bits=3", "--exclude", "*.bin",
                             "--min-cosine", "0.99", "--json")
    assert code == 0, err
    stored = json.loads(out)["metadata"]["quality"]
    truth = evaluate(archive, twice / "model.safetensors")  # the one file it was made from
    assert stored["passed"] and stored["weights"]["cosine"] == pytest.approx(truth.weights["cosine"]) and truth.weights["cosine"] > 0.999
    assert not any("counted as zeros" in note for note in stored.get("notes", []))
    # the library call compress --eval makes, with the selection and without it (the whole folder)
    kept = verify_archive(archive, twice, gates=Gates(min_cosine=0.99), selection={"exclude": ["*.bin"]})
    assert kept.passed and kept.weights["cosine"] == pytest.approx(truth.weights["cosine"])
    assert evaluate(archive, twice, selection={"exclude": "*.bin"}).weights["cosine"] == pytest.approx(truth.weights["cosine"])
    assert evaluate(archive, twice).weights["cosine"] < 0.6  # the folder whole: the .bin's copy is missing from the archive


def test_a_gate_the_kept_files_cannot_judge_is_refused_before_compressing(tmp_path, monkeypatch, capsys):
    """A causal LM's folder without its tokenizer is judged on its weights alone, where KL means nothing."""
    from safetensors.numpy import save_file

    model = tmp_path / "lm"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"], "model_type": "llama"}))
    (model / "tokenizer.json").write_text("{}")
    (model / "tokenizer_config.json").write_text("{}")
    save_file({"lm_head.weight": np.random.default_rng(0).standard_normal((64, 32), dtype=np.float32)}, model / "model.safetensors")
    output = tmp_path / "out"
    output.mkdir()
    code, _, err = run_cli(monkeypatch, capsys, "compress", model, "-o", output / "lm.zoo", "-p", "truncate:bits=3",
                           "--exclude", "tokenizer*", "--max-kl", "0.01")
    # said before any coding or evaluating (which printed "evaluating against ..."), naming the source
    assert code == 1 and "evaluating against" not in err
    assert err.strip() == (f"error: --max-kl does not apply to {model} (the files --include and --exclude keep), "
                           "which is evaluated as weights only")
    assert list(output.iterdir()) == []
