"""zoo eval and compress --verify on tiny models trained here: identical copies measure perfect,
damaged ones measure worse the more they are damaged, and the gates trip when they should."""

import json
import os
import re
import shutil
import sys
from pathlib import Path

import pytest

pytest.importorskip("transformers")

import zoo  # noqa: E402
from zoo import api  # noqa: E402
from zoo.errors import InputError  # noqa: E402
from zoo.evaluate import Gates, QualityGateError, evaluate, verify_archive  # noqa: E402
from zoo.evaluate import models as eval_models_module  # noqa: E402

from zoo.evaluate.noise import noisy_copy  # noqa: E402

from tests.eval_models import labelled_sentences, train_causal_lm, train_classifier, train_encoder  # noqa: E402

NOISE = (0.02, 0.1, 0.4)  # relative to each tensor's RMS
TOKENS = 384  # six windows of the tiny LM's 64-token context


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Models this small gain nothing from a second thread, and on a busy 2-core machine torch's
    spinning worker threads make them ten times slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """The three tiny models, each with copies damaged by growing noise, trained once per session."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("eval-models")
    folders = {}
    for kind, train in (("causal-lm", train_causal_lm), ("encoder", train_encoder), ("classifier", train_classifier)):
        folders[kind] = root / kind
        train(folders[kind])
        for noise in NOISE:
            noisy_copy(folders[kind], root / f"{kind}-{noise}", noise, seed=1)
    torch.set_num_threads(before)
    return root


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("ZOO_EVAL_CACHE", str(tmp_path_factory.getbasetemp() / "eval-cache"))
    monkeypatch.setenv("ZOO_HOME", str(tmp_path_factory.getbasetemp() / "zoo-home"))


def run_cli(monkeypatch, capsys, *args):
    """The zoo command in this process (its real entry point, minus the interpreter start-up)."""
    from zoo.cli import main

    monkeypatch.setattr(sys, "argv", ["zoo", *map(str, args)])
    monkeypatch.delenv("ZOO_DEBUG", raising=False)
    try:
        main()
        code = 0
    except SystemExit as exit_:
        code = exit_.code or 0
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# -- causal LM ---------------------------------------------------------------------------------


def test_identical_causal_lm_measures_perfect(trained):
    result = evaluate(trained / "causal-lm", trained / "causal-lm", max_tokens=TOKENS)
    m = result.metrics
    assert result.kind == "causal-lm" and result.passed
    assert m["tokens"] == TOKENS - 6  # the first token of each window is not predicted
    assert m["kl_mean"] == 0 and m["kl_max"] == 0
    assert m["top1_agreement"] == 1 and m["delta_p_rms"] == 0
    assert m["ppl_ratio"] == 1 and m["ppl"] == m["ppl_reference"]
    assert m["ppl"] < 100  # trained: far better than the 260 of a uniform guess
    assert result.weights["sqnr_db"] is None and result.weights["cosine"] == 1


def test_causal_lm_figures_worsen_with_noise(trained):
    results = [evaluate(trained / f"causal-lm-{noise}", trained / "causal-lm", max_tokens=TOKENS) for noise in NOISE]
    kl = [r.metrics["kl_mean"] for r in results]
    sqnr = [r.weights["sqnr_db"] for r in results]
    assert 0 < kl[0] < kl[1] < kl[2]
    assert sqnr[0] > sqnr[1] > sqnr[2]
    assert sqnr[0] == pytest.approx(-20 * __import__("math").log10(NOISE[0]), abs=0.5)
    assert results[2].metrics["top1_agreement"] <= results[0].metrics["top1_agreement"] <= 1
    assert 0 < results[0].metrics["delta_p_rms"] < results[2].metrics["delta_p_rms"]
    assert results[2].metrics["ppl_ratio"] > 1
    for r in results:
        assert r.metrics["kl_median"] <= r.metrics["kl_p99"] <= r.metrics["kl_max"]


def test_reference_runs_once_for_many_candidates(trained, monkeypatch):
    loads = []
    real_load = eval_models_module.Model.load

    def counting_load(self, kind, masked_lm=False):
        loads.append(self.path.name)
        return real_load(self, kind, masked_lm)

    monkeypatch.setattr(eval_models_module.Model, "load", counting_load)
    for noise in NOISE:
        evaluate(trained / f"causal-lm-{noise}", trained / "causal-lm", max_tokens=200, weights=False)
    assert loads.count("causal-lm") <= 1  # once at most: an earlier test may have filled the cache
    assert len(loads) - loads.count("causal-lm") == len(NOISE)


def test_archive_candidate_and_lossless_verification(trained, tmp_path):
    zoo.compress(trained / "causal-lm", tmp_path / "lm.zoo")
    result = evaluate(tmp_path / "lm.zoo", trained / "causal-lm", max_tokens=TOKENS)
    assert result.metrics["kl_max"] == 0 and result.weights["sqnr_db"] is None
    verified = verify_archive(tmp_path / "lm.zoo", trained / "causal-lm")
    assert verified.kind == "lossless" and verified.passed and verified.metrics["bit_exact"]
    assert verify_archive(tmp_path / "lm.zoo", trained / "causal-lm-0.02").failures  # same names, other bytes


def test_a_folder_with_links_and_empty_folders_verifies_as_lossless(tiny_model, tmp_path):
    # they were "source files missing" from the archive: compress --eval failed its gate and kept nothing
    import os

    os.symlink("config.json", tiny_model / "alias.json")
    (tiny_model / "empty").mkdir()
    zoo.compress(tiny_model, tmp_path / "m.zoo")
    verified = verify_archive(tmp_path / "m.zoo", tiny_model)
    assert verified.passed and verified.metrics["bit_exact"] and verified.metrics["missing"] == [], verified.metrics


# -- encoder and classifier --------------------------------------------------------------------


def test_encoder_cosine_is_one_for_itself_and_falls_with_noise(trained):
    same = evaluate(trained / "encoder", trained / "encoder")
    assert same.kind == "encoder" and same.metrics["sentences"] == 52
    assert same.metrics["cosine_mean"] == pytest.approx(1, abs=1e-6) and same.metrics["cosine_min"] == pytest.approx(1, abs=1e-6)
    assert same.metrics["mlm_loss"] == same.metrics["mlm_loss_reference"]
    cosines = [evaluate(trained / f"encoder-{noise}", trained / "encoder").metrics["cosine_mean"] for noise in NOISE]
    assert 1 > cosines[0] > cosines[1] > cosines[2]


def test_classifier_agreement_and_accuracy(trained):
    rows = labelled_sentences(64, seed=7)  # not the training draw
    text = "\n".join(f"{'positive' if label else 'negative'}\t{sentence}" for label, sentence in rows)
    same = evaluate(trained / "classifier", trained / "classifier", text=text)
    assert same.kind == "classifier"
    assert same.metrics["label_agreement"] == 1 and same.metrics["kl_max"] == pytest.approx(0, abs=1e-9)
    assert same.metrics["accuracy"] >= 0.9 and same.metrics["accuracy"] == same.metrics["accuracy_reference"]
    damaged = evaluate(trained / "classifier-0.4", trained / "classifier", text=text)
    assert damaged.metrics["kl_mean"] > evaluate(trained / "classifier-0.02", trained / "classifier", text=text).metrics["kl_mean"]
    alone = evaluate(trained / "classifier", text=text)  # labels alone are enough to measure
    assert alone.metrics["accuracy"] == same.metrics["accuracy"] and "label_agreement" not in alone.metrics


def test_weights_only_for_a_bare_safetensors_file(trained, tmp_path):
    shutil.copy(trained / "causal-lm" / "model.safetensors", tmp_path / "reference.safetensors")
    shutil.copy(trained / "causal-lm-0.1" / "model.safetensors", tmp_path / "candidate.safetensors")
    result = evaluate(tmp_path / "candidate.safetensors", tmp_path / "reference.safetensors")
    assert result.kind == "weights" and result.metrics == {}
    assert result.weights["sqnr_db"] == pytest.approx(20, abs=0.5) and result.weights["tensors"] == len(result.tensors)
    assert all(t["sqnr_db"] == pytest.approx(20, abs=1.5) for t in result.tensors if t["elements"] > 1000)


def test_weight_totals_of_zero_biases_a_missing_tensor_and_changed_integers(tmp_path):
    """Against a reference with zero-initialised biases, a copy moved by 1e-6 had relative error
    inf, SQNR -inf and cosine 0.99 (the zero tensors' cosine 0 averaged in): --min-cosine 0.999
    failed. A candidate lacking a fifth of the weights was "identical" (cosine 1, gates passed),
    and so was one whose integer tensor differed."""
    import torch
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(0)
    reference = {"w": torch.randn(256, 64, generator=generator), "b": torch.zeros(64), "e": torch.randn(64, 64, generator=generator),
                 "ids": torch.arange(64)}
    save_file(reference, tmp_path / "reference.safetensors")
    moved = {key: value + 1e-6 * torch.randn(value.shape, generator=generator) if value.is_floating_point() else value
             for key, value in reference.items()}
    save_file(moved, tmp_path / "moved.safetensors")
    result = evaluate(tmp_path / "moved.safetensors", tmp_path / "reference.safetensors", gates=Gates(min_cosine=0.999))
    assert result.passed and result.weights["relative_error"] < 1e-5 and result.weights["cosine"] > 0.999999
    assert next(t for t in result.tensors if t["name"] == "b")["relative_error"] == float("inf")  # per tensor, as it is
    hundreds = {**reference, "b": torch.full((64,), 100.0)}  # against zeros, a real change still counts as one
    save_file(hundreds, tmp_path / "hundreds.safetensors")
    assert evaluate(tmp_path / "hundreds.safetensors", tmp_path / "reference.safetensors").weights["relative_error"] > 0.3  # 100 x 64 / 20544

    save_file({key: value for key, value in reference.items() if key != "e"}, tmp_path / "lacking.safetensors")
    lacking = evaluate(tmp_path / "lacking.safetensors", tmp_path / "reference.safetensors", gates=Gates(min_cosine=0.999))
    assert not lacking.passed and lacking.weights["sqnr_db"] is not None
    assert lacking.weights["cosine"] == pytest.approx((16384 + 64) / (16384 + 64 + 4096))  # e counts, with cosine 0
    assert any("counted as zeros" in note for note in lacking.notes)

    save_file({**reference, "ids": torch.arange(64).flip(0)}, tmp_path / "ids.safetensors")
    ids = evaluate(tmp_path / "ids.safetensors", tmp_path / "reference.safetensors")
    assert ids.weights["sqnr_db"] is not None and ids.weights["cosine"] < 1


def test_a_tensor_one_side_holds_as_a_tie_of_one_both_hold_is_that_tensor(tmp_path):
    """GPT-2 saved as pytorch_model.bin holds lm_head.weight as a view of wte.weight, and as
    safetensors not at all: the .bin compared as the reference counted lm_head.weight as the
    candidate's zeros (cosine 0.81, --min-cosine 0.9 failed) and the other way round passed. The
    same weights measure identical both ways now; a tensor that only looks the same (a copy, or a
    part of another) is no tie."""
    import torch
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(0)
    wte, h = torch.randn(64, 16, generator=generator), torch.randn(16, 16, generator=generator)
    torch.save({"wte.weight": wte, "lm_head.weight": wte, "h.weight": h}, tmp_path / "tied.bin")
    save_file({"wte.weight": wte, "h.weight": h}, tmp_path / "plain.safetensors")
    tied, plain = tmp_path / "tied.bin", tmp_path / "plain.safetensors"
    for candidate, reference in ((plain, tied), (tied, plain)):
        result = evaluate(candidate, reference, gates=Gates(min_cosine=0.9))
        assert result.passed and result.weights["cosine"] == 1 and result.weights["relative_error"] == 0, (candidate, result.weights)
        assert sorted(t["name"] for t in result.tensors) == ["h.weight", "wte.weight"]
        assert result.notes[1:] == [f"1 tensors in {tied} only, each tied there to one both hold (the same weights, compared once): "
                                    "lm_head.weight"]  # after the note that the candidate has no config.json
    # a changed model is measured the same against either file, and stored either way: the tie counts once
    moved = {"wte.weight": wte + 0.3 * torch.randn(wte.shape, generator=generator),
             "h.weight": h + 0.1 * torch.randn(h.shape, generator=generator)}
    torch.save({**moved, "lm_head.weight": moved["wte.weight"]}, tmp_path / "moved.bin")
    save_file(moved, tmp_path / "moved.safetensors")
    cosines = {(candidate, reference): evaluate(tmp_path / candidate, reference).weights["cosine"]
               for candidate in ("moved.bin", "moved.safetensors") for reference in (tied, plain)}
    assert len({round(cosine, 12) for cosine in cosines.values()}) == 1 and cosines[("moved.bin", tied)] < 0.99, cosines
    both = evaluate(tmp_path / "moved.bin", tied)
    assert sorted(t["name"] for t in both.tensors) == ["h.weight", "wte.weight"]
    assert both.notes[1:] == ["1 tensors in both, each tied on both sides to one both hold (the same weights, compared once): "
                              "lm_head.weight"]
    storage = torch.cat([wte, wte.flip(0)])  # one storage, two tensors of one shape: wte and the rows after it
    for name, heads in (("copy", {"wte.weight": wte, "lm_head.weight": wte.clone()}),
                        ("half", {"wte.weight": wte, "lm_head.weight": wte[:32]}),
                        ("after", {"wte.weight": storage[:64], "lm_head.weight": storage[64:]})):
        torch.save({**heads, "h.weight": h}, tmp_path / f"{name}.bin")
        note = evaluate(plain, tmp_path / f"{name}.bin").notes[1]
        assert note.startswith("1 tensors in") and "(counted as zeros: the candidate lacks them): lm_head.weight" in note, name


# -- gates -------------------------------------------------------------------------------------


def test_gates_pass_and_trip(trained):
    damaged = evaluate(trained / "causal-lm-0.1", trained / "causal-lm", max_tokens=TOKENS,
                       gates=Gates(max_kl=1e-6, max_ppl_ratio=10, min_cosine=0.5))
    assert not damaged.passed and len(damaged.failures) == 1 and "--max-kl" in damaged.failures[0]
    same = evaluate(trained / "causal-lm", trained / "causal-lm", max_tokens=TOKENS, gates=Gates(max_kl=0, max_ppl_ratio=1, min_cosine=1))
    assert same.passed
    with pytest.raises(InputError, match="--max-ppl-ratio does not apply"):
        evaluate(trained / "encoder", trained / "encoder", gates=Gates(max_ppl_ratio=1.01))
    with pytest.raises(InputError, match="needs a reference"):
        evaluate(trained / "causal-lm", max_tokens=TOKENS, gates=Gates(max_kl=0.1))


def test_check_quality_removes_nothing_it_should_keep(trained, tmp_path):
    destination = tmp_path / "lm.zoo"
    destination.write_bytes(b"the user's old file")
    gates = Gates(max_kl=1e-9)
    with pytest.raises(QualityGateError, match="--max-kl") as caught:
        zoo.compress(trained / "causal-lm", destination, "truncate:bits=1", force=True,
                     check=lambda path: api.check_quality(path, trained / "causal-lm", gates))
    assert caught.value.result.kind == "causal-lm"
    assert destination.read_bytes() == b"the user's old file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lm.zoo"]


# -- the command line --------------------------------------------------------------------------


def test_zoo_eval_table_json_and_gate(trained, monkeypatch, capsys):
    code, out, _ = run_cli(monkeypatch, capsys, "eval", trained / "causal-lm-0.1", "-r", trained / "causal-lm", "--max-tokens", TOKENS)
    assert code == 0
    for label in ("PPL(Q)", "PPL(base)", "ln(PPL(Q)/PPL(base))", "Mean KLD", "99.0% KLD", "Same top p", "RMS Δp", "weights: SQNR"):
        assert label in out
    code, out, _ = run_cli(monkeypatch, capsys, "eval", trained / "encoder", "-r", trained / "encoder", "--json")
    document = json.loads(out)
    assert code == 0 and document["kind"] == "encoder" and document["metrics"]["cosine_min"] == pytest.approx(1, abs=1e-6)
    code, out, err = run_cli(monkeypatch, capsys, "eval", trained / "encoder-0.4", "-r", trained / "encoder", "--min-cosine", "0.9999")
    assert code == 1 and "Mean cosine" in out
    assert err.startswith("error: ") and "--min-cosine 0.9999" in err and err.count("\n") == 1


def test_zoo_eval_bad_input_is_one_line(trained, tmp_path, monkeypatch, capsys):
    (tmp_path / "short.txt").write_text("x")
    (tmp_path / "blank.txt").write_text("\n \n")
    (tmp_path / "binary.txt").write_bytes(b"\xff\xfe\x00")
    cases = [
        (("eval", tmp_path / "missing"), "no such file, and no model of that name in the zoo"),
        (("eval", trained / "causal-lm", "-r", trained / "encoder"), "as a causal-lm but its reference"),
        (("eval", trained / "causal-lm", "--text", tmp_path / "nope.txt"), "cannot read"),
        (("eval", trained / "causal-lm", "--text", tmp_path / "binary.txt"), "UTF-8"),
        (("eval", trained / "causal-lm", "--text", tmp_path / "short.txt"), "too short"),
        (("eval", trained / "encoder", "-r", trained / "encoder", "--text", tmp_path / "blank.txt"), "no sentences"),
        (("eval", trained / "causal-lm" / "model.safetensors"), "need a reference"),
        (("eval", trained / "causal-lm", "--kind", "poem"), "unknown kind"),
    ]
    for args, message in cases:
        code, _, err = run_cli(monkeypatch, capsys, *args)
        assert code == 1 and err.startswith("error: ") and err.count("\n") == 1, (args, err)
        assert message in err, (args, err)


def test_compress_verify_stores_figures_info_and_ls_show_them(trained, tmp_path, monkeypatch, capsys):
    archive = tmp_path / "lm.zoo"
    code, _, err = run_cli(monkeypatch, capsys, "compress", trained / "causal-lm", "-o", archive, "--verify")
    assert code == 0, err
    code, out, _ = run_cli(monkeypatch, capsys, "info", archive, "--json")
    stored = json.loads(out)["metadata"]["quality"]
    assert stored["kind"] == "lossless" and stored["passed"] and stored["metrics"]["bit_exact"]
    assert stored["reference"] == str(trained / "causal-lm")
    code, out, _ = run_cli(monkeypatch, capsys, "info", archive)
    assert "bit-exact" in out

    code, out, err = run_cli(monkeypatch, capsys, "compress", trained / "causal-lm", "-p", "truncate:bits=2", "--name", "tiny-lm",
                             "--max-kl", "10", "--json")
    assert code == 0 and json.loads(out)["kept"] is True, err
    code, out, err = run_cli(monkeypatch, capsys, "info", "tiny-lm")  # its only variant is lossy: named, never taken in its place
    assert code == 1 and "holds tiny-lm@main only as lossy variants (tiny-lm@main:truncate:bits=2): name one" in err, err
    code, out, _ = run_cli(monkeypatch, capsys, "info", "tiny-lm:truncate:bits=2", "--json")
    stored = json.loads(out)["metadata"]["quality"]
    assert stored["kind"] == "causal-lm" and stored["passed"] and stored["gates"] == {"max_kl": 10}
    assert 0 < stored["kl_mean"] == stored["metrics"]["kl_mean"] < 10
    code, out, _ = run_cli(monkeypatch, capsys, "ls", "--json")
    assert "kl_mean" in json.dumps(json.loads(out))
    again = evaluate("tiny-lm:truncate:bits=2", trained / "causal-lm")  # a zoo name, scored as compress --verify scored it
    assert again.metrics["kl_mean"] == stored["kl_mean"]


def test_compress_gate_failure_leaves_no_archive(trained, tmp_path, monkeypatch, capsys):
    code, out, err = run_cli(monkeypatch, capsys, "compress", trained / "causal-lm", "-o", tmp_path / "lm.zoo", "-p", "truncate:bits=1",
                             "--max-kl", "1e-9")
    assert code == 1 and "Mean KLD" in out and "no archive was kept" in err
    assert list(tmp_path.iterdir()) == []
    code, out, err = run_cli(monkeypatch, capsys, "compress", trained / "causal-lm", "-o", tmp_path / "lm.zoo", "-p", "truncate:bits=1",
                             "--max-kl", "1e-9", "--json")
    document = json.loads(out)  # where a kept archive's document has its figures, and saying none was kept
    assert code == 1 and document["kept"] is False and document["output"] == str(tmp_path / "lm.zoo") and "--max-kl" in document["error"]
    assert document["metadata"]["quality"]["passed"] is False and document["metadata"]["quality"]["kl_mean"] > 1e-9
    assert list(tmp_path.iterdir()) == []
    code, out, err = run_cli(monkeypatch, capsys, "compress", trained / "causal-lm", "-p", "truncate:bits=1", "--name", "never",
                             "--max-kl", "1e-9", "--json")
    document = json.loads(out)  # into the zoo, the ref it was going to (output and zoo were both null)
    assert code == 1 and document["kept"] is False and document["zoo"] == {"ref": "never@main:truncate:bits=1"}, out
    code, out, _ = run_cli(monkeypatch, capsys, "ls", "--json")
    assert "never" not in out


def test_compress_refuses_a_gate_that_cannot_judge_the_model_before_compressing(trained, tmp_path, monkeypatch, capsys):
    """An encoder has no KL to gate on: said at once, naming the source (not a temporary), nothing written."""
    code, _, err = run_cli(monkeypatch, capsys, "compress", trained / "encoder", "-o", tmp_path / "e.zoo", "-p", "truncate:bits=4",
                           "--max-kl", "1e-4")
    assert code == 1 and err.strip() == f"error: --max-kl does not apply to {trained / 'encoder'}, which is evaluated as an encoder"
    assert list(tmp_path.iterdir()) == []
    code, _, err = run_cli(monkeypatch, capsys, "compress", trained / "encoder", "-o", tmp_path / "e.zoo", "--max-kl", "1e-4")
    assert code == 0  # lossless: bit-exact passes every gate


def test_a_gate_the_archive_cannot_apply_names_the_output_not_its_temporary(trained, tmp_path, monkeypatch, capsys):
    # --exclude config.json leaves weights only. The command knows it from the files it keeps and
    # refuses before compressing (tests/evaluate/test_eval_selection.py); a check given to
    # compress() without them learns it from the archive, which it named `.lm.zoo.zoo-tmp-...`
    home = tmp_path / "zoo"
    monkeypatch.setenv("ZOO_HOME", str(home))
    output = tmp_path / "lm.zoo"
    gates = Gates(max_kl=0.01)
    with pytest.raises(InputError) as error:
        api.compress(trained / "causal-lm", output, "truncate:bits=3", exclude=["config.json"],
                     check=lambda archive: api.check_quality(archive, trained / "causal-lm", gates, label=str(output)))
    assert str(error.value) == f"--max-kl does not apply to {output}, which is evaluated as weights only"
    for where in (("-o", output), ("--name", "lm")):
        code, _, err = run_cli(monkeypatch, capsys, "compress", trained / "causal-lm", *where, "--exclude", "config.json",
                               "-p", "truncate:bits=3", "--max-kl", "0.01")
        assert code == 1 and err.strip().endswith(f"error: --max-kl does not apply to {trained / 'causal-lm'} (the files --include and "
                                                  "--exclude keep), which is evaluated as weights only")
    assert sorted(p.name for p in tmp_path.iterdir()) in (["zoo"], [])


def test_compress_verify_refuses_what_it_cannot_compare(tmp_path, monkeypatch, capsys):
    code, _, err = run_cli(monkeypatch, capsys, "compress", "someone/some-model", "-o", tmp_path / "x.zoo", "--verify")
    assert code == 1 and "--eval compares" in err


def test_eval_imports_nothing_heavy_at_start_up():
    import subprocess

    code = "import sys, zoo.cli.app, zoo.evaluate; print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120).stdout.strip() == "[]"


def test_update_metadata_rewrites_only_the_header(tiny_model, tmp_path):
    (tmp_path / "out").mkdir()
    archive = tmp_path / "out" / "m.zoo"
    zoo.compress(tiny_model, archive)
    archive.chmod(0o640)
    with zoo.open(archive) as opened:
        before = {key: opened.read_tensor(key).data.tobytes() for key in opened.keys()}
    api.update_metadata(archive, {"verify": {"kind": "lossless", "passed": True}, "pipeline": None}, own_keys=True)
    assert zoo.verify(archive) == []
    with zoo.open(archive) as opened:
        assert opened.metadata() == {"verify": {"kind": "lossless", "passed": True}}
        assert {key: opened.read_tensor(key).data.tobytes() for key in opened.keys()} == before
    assert archive.stat().st_mode & 0o777 == 0o640
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["m.zoo"]


def test_update_metadata_writes_through_a_link_and_checks_what_it_is_given(tiny_model, tmp_path):
    """A link to an archive was replaced by a file, and the archive it named never got the
    figures (check_quality through the link); a NaN went into the header as a bare NaN token and a
    caller's "pipeline" replaced the spec, which compress(metadata=...) refuses; a key that is no
    str, a value JSON has not, no updates or a bytes path were raw errors."""
    real, link = tmp_path / "real.zoo", tmp_path / "link.zoo"
    zoo.compress(tiny_model, real)
    link.symlink_to(real.name)
    api.check_quality(link, tiny_model)
    assert link.is_symlink() and link.readlink() == Path(real.name)
    with zoo.open(real) as opened:
        assert opened.metadata()["quality"]["passed"] is True
    api.update_metadata(link, {"note": "mine"})
    with zoo.open(real) as opened:
        assert opened.metadata()["note"] == "mine"
    before = real.read_bytes()
    for archive, updates, said in ((real, {"x": float("nan")}, r"^metadata\['x'\] is NaN or infinite"),
                                   (real, {"pipeline": "evil"}, r"^metadata\['pipeline'\] is zoo's own"),
                                   (link, {"quality": None}, r"^metadata\['quality'\] is zoo's own"),
                                   (real, {1: "v"}, r"^metadata has the key 1 \(int\)"),
                                   (real, {"o": object()}, r"^metadata is not JSON: "),
                                   (real, None, r"^metadata is a dict of JSON values, not NoneType$"),
                                   (bytes(real), {"a": 1}, r"^the archive to update is a str or an os.PathLike path, not bytes$")):
        with pytest.raises(InputError, match=said):
            api.update_metadata(archive, updates)
    assert real.read_bytes() == before and link.is_symlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.zoo", "real.zoo", "tiny"]


@pytest.mark.slow
def test_minilm_against_itself_and_a_noisy_copy(minilm, tmp_path, monkeypatch, capsys):
    code, out, _ = run_cli(monkeypatch, capsys, "eval", minilm, "-r", minilm, "--json")
    same = json.loads(out)
    assert code == 0 and same["kind"] == "encoder" and same["metrics"]["sentences"] == 52
    assert same["metrics"]["cosine_mean"] == pytest.approx(1, abs=1e-6) and same["weights"]["sqnr_db"] is None
    noisy_copy(minilm, tmp_path / "noisy", 0.01)
    code, out, _ = run_cli(monkeypatch, capsys, "eval", tmp_path / "noisy", "-r", minilm)
    assert code == 0
    # piped, a table is plain lines: the label, then the value after two or more spaces
    rows = dict(re.split(r"\s{2,}", line.strip(), maxsplit=1) for line in out.splitlines() if re.search(r"\S\s{2,}\S", line))
    assert 0.99 < float(rows["Mean cosine"]) < 1 and float(rows["Minimum cosine"]) <= float(rows["Mean cosine"])
    assert rows["weights: SQNR"] == "40.00 dB"  # noise of 1% of the RMS is -40 dB by construction


def test_noisy_copy_refuses_to_overwrite_or_to_copy_a_file(trained, tmp_path):
    with pytest.raises(InputError, match="exists"):
        noisy_copy(trained / "encoder", trained / "encoder-0.1", 0.1)
    with pytest.raises(InputError, match="not a model folder"):
        noisy_copy(trained / "encoder" / "config.json", tmp_path / "x", 0.1)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.filterwarnings("ignore:torch.quantize_per_tensor:UserWarning")  # torch's deprecation of making them
def test_a_checkpoint_of_sparse_or_quantized_tensors_is_refused_in_one_error(tmp_path):
    """As compress refuses them: a sparse tensor was an unexpected RuntimeError, and a quantized
    one was compared to nothing and passed."""
    import torch

    odd = {"sparse": torch.randn(4, 4).to_sparse(), "quantized": torch.quantize_per_tensor(torch.randn(4, 4), 0.1, 0, torch.qint8)}
    for kind, tensor in odd.items():
        path = tmp_path / f"{kind}.bin"
        torch.save({"dense": torch.randn(3), "odd": tensor}, path)
        with pytest.raises(InputError, match=rf"{kind}.bin: tensor 'odd' is {kind}; zoo compares dense tensors only"):
            evaluate(path, path)


def test_a_folder_without_tokenizer_files_is_said_to_have_no_tokenizer(tmp_path):
    # transformers makes an empty GPT-2 tokenizer there: calibration blamed the shipped text
    # ("calibration text gives only 0 tokens")
    import transformers

    from zoo.optimize.calibration import collect

    folder = tmp_path / "gpt2"
    transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=64, n_positions=32)).save_pretrained(folder)
    shipped = Path(zoo.__file__).parent / "data" / "calibration.txt"
    with pytest.raises(InputError, match=r"gpt2: no tokenizer in the folder"):
        collect(folder, shipped)
    assert evaluate(folder, folder).kind == "weights"  # evaluation says it has no tokenizer, and judges the weights


def test_an_error_whose_first_line_ends_in_a_colon_is_said_whole_on_one_line():
    """transformers' tokenizer error ended at "... from one of:" on zoo's one line."""
    from zoo.optimize.models import first_line

    error = ValueError("Couldn't instantiate the backend tokenizer from one of: \n(1) a serialization file, \n(2) a slow tokenizer\n")
    assert first_line(error) == "Couldn't instantiate the backend tokenizer from one of: (1) a serialization file, (2) a slow tokenizer"
    assert first_line(ValueError("one line\nthe detail below")) == "one line"
    assert first_line(ValueError("  ")) == "ValueError"


def test_gates_out_of_their_range_are_refused_as_the_cli_refuses_them():
    for given in ({"max_kl": -1}, {"min_cosine": 2}, {"min_cosine": -1.5}, {"max_ppl_ratio": -0.5}):
        with pytest.raises(InputError):
            Gates(**given)
    assert Gates(max_kl=0, min_cosine=-1, max_ppl_ratio=0).given() == {"max_kl": 0, "min_cosine": -1, "max_ppl_ratio": 0}


def test_integer_tensors_alone_compare_as_identical_weights(tmp_path):
    # "--min-cosine needs a reference to compare ints.safetensors against", a reference given
    import torch
    from safetensors.torch import save_file

    save_file({"ids": torch.arange(64), "mask": torch.ones(8, dtype=torch.int8)}, tmp_path / "ints.safetensors")
    result = evaluate(tmp_path / "ints.safetensors", tmp_path / "ints.safetensors", gates=Gates(min_cosine=0.99))
    assert result.passed and result.weights["cosine"] == 1.0 and result.weights["sqnr_db"] is None


def test_fp4_tensors_compare_by_their_values(tmp_path):
    """An F4 tensor (two values a byte) ended `zoo eval` in "unexpected NotImplementedError: copy_
    not implemented for 'Float4_e2m1fn_x2'", even against itself."""
    import torch
    from safetensors.torch import save_file

    codes = torch.randint(0, 255, (6, 4), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    save_file({"f4.weight": codes.view(torch.float4_e2m1fn_x2)}, tmp_path / "a.safetensors")
    same = evaluate(tmp_path / "a.safetensors", tmp_path / "a.safetensors")
    assert same.weights["cosine"] == 1.0 and same.weights["sqnr_db"] is None
    moved = codes.clone()
    moved[0, 0] ^= 0x01  # the low value of the first byte one code over
    save_file({"f4.weight": moved.view(torch.float4_e2m1fn_x2)}, tmp_path / "b.safetensors")
    other = evaluate(tmp_path / "b.safetensors", tmp_path / "a.safetensors")
    assert 0.9 < other.weights["cosine"] < 1.0 and other.tensors[0]["elements"] == 48


def test_per_tensor_figures_name_each_tensor_as_the_archive_does(tmp_path):
    """Two files with the same names: model.safetensors' tensors keep them in the archive
    (writer.naming_order, as transformers loads it), ema.safetensors' take `ema.safetensors::NAME`.
    The per-tensor figures named them by path order instead, the EMA's tensor under the plain name."""
    import torch
    from safetensors.torch import save_file

    reference, candidate = tmp_path / "reference", tmp_path / "candidate"
    for folder, ema in ((reference, 2.0), (candidate, 2.5)):
        folder.mkdir()
        save_file({"w": torch.ones(8, 8)}, folder / "model.safetensors")
        save_file({"w": torch.full((8, 8), ema)}, folder / "ema.safetensors")
    zoo.compress(reference, tmp_path / "reference.zoo")
    with zoo.open(tmp_path / "reference.zoo") as opened:
        assert bool((opened.get_tensor("w") == 1).all()) and bool((opened.get_tensor("ema.safetensors::w") == 2).all())
    figures = {t["name"]: t for t in evaluate(candidate, tmp_path / "reference.zoo").tensors}
    assert set(figures) == {"w", "ema.safetensors::w"}
    assert figures["w"]["relative_error"] == 0 and figures["ema.safetensors::w"]["relative_error"] == pytest.approx(0.25)


def test_update_metadata_never_rewrites_what_the_zoo_stores(tiny_model, tmp_path, monkeypatch):
    """Written where a link points, an update through a link into the zoo's objects rewrote a
    stored object, whose name then no longer said its bytes."""
    from zoo.hub.store import Store

    monkeypatch.setenv("ZOO_HOME", str(tmp_path / "zoo"))
    api.compress_into(Store(), tiny_model, "tiny")
    stored = sorted((tmp_path / "zoo" / "objects").rglob("*.zoo"))
    (tmp_path / "link.zoo").symlink_to(stored[0])
    before = {path: path.read_bytes() for path in stored}
    for archive in (stored[0], tmp_path / "link.zoo"):
        with pytest.raises(InputError, match="lies inside the zoo's own folder"):
            api.update_metadata(archive, {"note": "mine"})
        # zoo's own records (check_quality's, --budget's) neither: those go into its jobs' archives in work/
        with pytest.raises(InputError, match="lies inside the zoo's own folder"):
            api.check_quality(archive, tiny_model)
    assert {path: path.read_bytes() for path in stored} == before
    job = tmp_path / "zoo" / "work" / "job" / "m.zoo"
    job.parent.mkdir()
    api.compress(tiny_model, tmp_path / "m.zoo")
    os.replace(tmp_path / "m.zoo", job)
    api.check_quality(job, tiny_model)
    assert api.open_archive(job).metadata()["quality"]["passed"]
