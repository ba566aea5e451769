"""Archives made with --base through zoo eval, zoo compress --verify and zoo sweep: the model
measured is the base plus the decoded differences, and a missing or wrong base is refused in one
line before anything runs or is written.

The models are test_base_delta's: a tiny BERT classifier and a fine-tune of it."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

import zoo
from zoo.cli.app import app
from zoo.errors import InputError
from zoo.evaluate import evaluate
from zoo.evaluate.sweep import sweep

from tests.container.test_base_delta import SPEC, tuned  # noqa: F401 - tuned is a fixture
from tests.cli.test_cli import zoo_cli


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """On a busy 2-core machine torch's spinning worker threads make models this small slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("ZOO_EVAL_CACHE", str(tmp_path_factory.getbasetemp() / "eval-cache"))


@pytest.fixture(scope="module")
def archive(tuned, tmp_path_factory):  # noqa: F811 - the fixture imported above
    base, fine_tuned = tuned
    path = tmp_path_factory.mktemp("delta-eval") / "delta.zoo"
    assert zoo.compress(fine_tuned, path, SPEC, base=base).base["tensors"] > 0
    return path


def test_eval_measures_the_base_plus_the_differences(tuned, archive, tmp_path):  # noqa: F811
    base, fine_tuned = tuned
    result = evaluate(archive, fine_tuned, base=base)
    assert result.kind == "classifier" and result.base == str(base) and result.to_dict()["base"] == str(base)
    # The same figures as the folder decompressed on the base: the candidate is base + differences.
    zoo.decompress(archive, tmp_path / "rebuilt", base=base)
    unpacked = evaluate(tmp_path / "rebuilt", fine_tuned)
    assert result.metrics == unpacked.metrics
    assert result.weights == unpacked.weights
    # The stored differences are a projection of the real ones: closer to the fine-tune than the base.
    alone = evaluate(base, fine_tuned)
    assert 0 < result.weights["relative_error"] < alone.weights["relative_error"]
    assert not result.notes
    # Either side may need the base: an archive against itself is identical.
    same = evaluate(archive, archive, base=base)
    assert same.metrics["kl_mean"] == pytest.approx(0, abs=1e-12) and same.weights["relative_error"] == 0


def test_eval_refuses_a_missing_or_wrong_base(tuned, archive):  # noqa: F811
    base, fine_tuned = tuned
    with pytest.raises(InputError, match=f"difference from the base model '{base}'; pass that base"):
        evaluate(archive, fine_tuned)
    with pytest.raises(InputError, match="sha256 differs"):
        evaluate(archive, fine_tuned, base=fine_tuned)
    with pytest.raises(InputError, match="pass that base"):  # the reference needs it just the same
        evaluate(fine_tuned, archive)


def test_a_base_nothing_needs_is_checked_then_noted(tuned, archive, tmp_path):  # noqa: F811
    base, fine_tuned = tuned
    result = evaluate(fine_tuned, fine_tuned, base=base, weights=False)
    assert result.notes == [f"the base {base} was not used: neither the candidate nor the reference is stored against a base"]
    zoo.compress(fine_tuned, tmp_path / "plain.zoo")
    alone = evaluate(tmp_path / "plain.zoo", fine_tuned, base=base, weights=False)
    assert alone.notes and "was not used" in alone.notes[0] and alone.metrics["kl_mean"] == pytest.approx(0, abs=1e-12)
    with pytest.raises(InputError, match="no such file, folder or model"):
        evaluate(fine_tuned, fine_tuned, base=tmp_path / "nowhere")


def cli(*args):
    """The command in this process (torch is loaded already); zoo_cli runs the error cases, whose
    one-line message is printed by the entry point."""
    return CliRunner().invoke(app, [str(arg) for arg in args])


def test_cli_eval_with_and_without_the_base(tuned, archive, tmp_path):  # noqa: F811
    base, fine_tuned = tuned
    done = cli("eval", archive, "-r", fine_tuned, "--base", base, "--json")
    assert done.exit_code == 0, done.output
    document = json.loads(done.stdout)
    assert document["kind"] == "classifier" and document["base"] == str(base)
    assert document["metrics"] == evaluate(archive, fine_tuned, base=base).metrics
    shown = cli("eval", archive, "-r", fine_tuned, "--base", base)
    assert shown.exit_code == 0 and f"base: {base}" in shown.stdout
    for flags, message in (((), "pass that base (base= in Python, --base BASE on the command line)"), (("--base", fine_tuned), "sha256 differs"),
                           (("--base", tmp_path / "nowhere"), "no such file, folder or model")):
        done = zoo_cli("eval", archive, "-r", fine_tuned, *flags)
        assert done.returncode == 1 and done.stderr.count("\n") == 1 and message in done.stderr, done.stderr
        assert not done.stdout


def test_compress_verify_against_a_base_stores_its_proof(tuned, tmp_path):  # noqa: F811
    base, fine_tuned = tuned
    out = tmp_path / "d.zoo"
    done = cli("compress", fine_tuned, "-o", out, "-p", SPEC, "--base", base, "--verify", "--json")
    assert done.exit_code == 0, done.output
    record = zoo.open(out).metadata()["quality"]
    assert record["kind"] == "classifier" and record["base"] == str(base) and record["passed"]
    again = evaluate(out, fine_tuned, base=base)
    assert record["metrics"] == pytest.approx(again.metrics) and record["weights"] == pytest.approx(again.weights)
    shown = cli("info", out)
    assert shown.exit_code == 0 and f"base: {base}" in shown.stdout and "Same label" in shown.stdout
    # A lossless pipeline stores nothing against the base: proved bit for bit, as any lossless archive.
    done = cli("compress", fine_tuned, "-o", tmp_path / "plain.zoo", "--base", base, "--verify", "--json")
    assert done.exit_code == 0, done.output
    assert zoo.open(tmp_path / "plain.zoo").metadata()["quality"]["kind"] == "lossless"


def test_compress_verify_against_a_base_fails_cleanly(tuned, tmp_path):  # noqa: F811
    base, fine_tuned = tuned
    out = tmp_path / "d.zoo"
    done = cli("compress", fine_tuned, "-o", out, "-p", SPEC, "--base", base, "--max-kl", "1e-9")
    assert done.exit_code == 1 and "no archive was kept" in str(done.exception)
    done = zoo_cli("compress", fine_tuned, "-o", out, "-p", SPEC, "--base", tmp_path / "nowhere", "--verify")
    assert done.returncode == 1 and done.stderr.count("\n") == 1 and "no such file, folder or model" in done.stderr
    assert list(tmp_path.iterdir()) == []


def test_sweep_against_a_base(tuned, tmp_path):  # noqa: F811
    base, fine_tuned = tuned
    lossless, against_base = sweep(fine_tuned, ["lossless", "codebook:bits=2"], base=base)
    alone, = sweep(fine_tuned, ["codebook:bits=2"])
    assert lossless.base_tensors == 0 and lossless.metrics["kl_mean"] == pytest.approx(0, abs=1e-12)
    assert against_base.base_tensors > 0 and alone.base_tensors == 0
    assert against_base.kind == "classifier"
    # The same bits spent on the small difference leave the model closer to the fine-tune.
    assert against_base.metrics["weight_relative_error"] < 0.5 * alone.metrics["weight_relative_error"]
    assert np.isfinite(against_base.distortion)


def test_cli_sweep_against_a_base(tuned, tmp_path):  # noqa: F811
    base, fine_tuned = tuned
    done = cli("sweep", fine_tuned, "-p", SPEC, "--base", base, "--json")
    assert done.exit_code == 0, done.output
    document = json.loads(done.stdout)
    assert document["base"] == str(base) and document["points"][0]["base_tensors"] > 0
    shown = cli("sweep", fine_tuned, "-p", SPEC, "--base", base)
    assert shown.exit_code == 0 and "on base" in shown.stdout
    done = zoo_cli("sweep", fine_tuned, "-p", SPEC, "--base", tmp_path / "nowhere", "--plot", tmp_path / "rd.png")
    assert done.returncode == 1 and done.stderr.count("\n") == 1 and "no such file, folder or model" in done.stderr
    assert list(tmp_path.iterdir()) == []
