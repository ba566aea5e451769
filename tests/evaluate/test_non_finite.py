"""NaN and infinity in a model: what the lossy codecs do with them, and the quality figures and JSON that describe them."""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import zoo  # noqa: E402
from zoo.errors import ZooError  # noqa: E402
from zoo.evaluate import Gates, evaluate, metrics  # noqa: E402


@pytest.fixture(autouse=True)
def private_homes(tmp_path, monkeypatch):
    monkeypatch.setenv("ZOO_EVAL_CACHE", str(tmp_path / "eval-cache"))
    monkeypatch.setenv("ZOO_HOME", str(tmp_path / "zoo-home"))


def _with_holes(path, seed: int = 0):
    """A safetensors file of two 16 x 16 matrices, one holding a NaN and an infinity."""
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(seed)
    holed = torch.randn(16, 16, generator=generator)
    holed[3, 4], holed[5, 5] = float("nan"), float("inf")
    save_file({"holed.weight": holed, "plain.weight": torch.randn(16, 16, generator=generator)}, str(path))
    return path


# -- weight figures of tensors holding NaN or infinity --------------------------------------------


def test_weight_figures_leave_out_non_finite_values_kept_in_place(tmp_path):
    """truncate keeps NaN and infinity where they were: the tensor's figures are those of its
    finite weights, and it counts in the totals instead of vanishing from them with -inf dB."""
    source = _with_holes(tmp_path / "holes.safetensors")
    archive = tmp_path / "holes.zoo"
    zoo.compress(source, archive, "truncate:bits=3")
    result = evaluate(archive, source)
    holed = next(t for t in result.tensors if t["name"] == "holed.weight")
    assert holed["relative_error"] is not None and 0 < holed["relative_error"] < 0.1
    assert 20 < holed["sqnr_db"] < 40 and 0.99 < holed["cosine"] < 1
    assert 0 < holed["max_abs_error"] < 1
    assert result.weights["elements"] == 512


def test_weight_figures_of_a_lost_nan_are_nan_and_fail_a_gate(tmp_path):
    """A candidate that replaced the reference's NaN and infinity by numbers has no true error
    figure for that tensor: NaN, which fails --min-cosine, not a cosine of the other tensors alone."""
    from safetensors.torch import load_file, save_file

    source = _with_holes(tmp_path / "holes.safetensors")
    tensors = load_file(str(source))
    tensors["holed.weight"] = torch.nan_to_num(tensors["holed.weight"], nan=0.0, posinf=1.0)
    candidate = tmp_path / "filled.safetensors"
    save_file(tensors, str(candidate))
    result = evaluate(candidate, source, gates=Gates(min_cosine=0.5))
    holed = next(t for t in result.tensors if t["name"] == "holed.weight")
    assert math.isnan(holed["cosine"]) and math.isnan(holed["relative_error"])
    assert math.isnan(result.weights["cosine"])
    assert not result.passed


def test_json_holds_no_bare_nan_or_infinity(tmp_path, monkeypatch, capsys):
    """`zoo eval --json` and the quality an archive's header stores are read by strict parsers
    (jq, JavaScript), which refuse the bare words NaN and -Infinity that Python's json writes."""
    import json

    from safetensors.torch import load_file, save_file

    from tests.evaluate.test_evaluate import run_cli
    from zoo.api import update_metadata
    from zoo.evaluate.result import json_safe

    def strict(text):
        return json.loads(text, parse_constant=lambda word: pytest.fail(f"bare {word} in JSON"))

    source = _with_holes(tmp_path / "holes.safetensors")
    tensors = load_file(str(source))
    tensors["holed.weight"] = torch.nan_to_num(tensors["holed.weight"], nan=0.0, posinf=1.0)
    candidate = tmp_path / "filled.safetensors"
    save_file(tensors, str(candidate))
    code, out, _ = run_cli(monkeypatch, capsys, "eval", candidate, "-r", source, "--kind", "weights", "--json")
    assert code == 0
    assert strict(out)["weights"]["cosine"] == "NaN"
    record = evaluate(candidate, source).record()
    assert strict(json.dumps(record))["weights"]["cosine"] == "NaN"
    # stored in an archive, as compress --eval does, the figures read back and print as they are
    archive = tmp_path / "filled.zoo"
    zoo.compress(candidate, archive)
    update_metadata(archive, {"quality": record}, own_keys=True)
    code, out, err = run_cli(monkeypatch, capsys, "info", archive)
    assert code == 0, err
    assert "weights: cosine" in out and "NaN" in out
    assert json_safe({"a": [-math.inf, 1.5, (math.inf,)]}) == {"a": ["-Infinity", 1.5, ["Infinity"]]}


def test_weight_sums_max_abs_error_keeps_a_nan():
    reference = torch.zeros(4)
    candidate = torch.tensor([0.0, float("nan"), 0.5, 0.0])
    assert math.isnan(metrics.weight_figures(metrics.weight_sums(reference, candidate))["max_abs_error"])


# -- lossy codecs on NaN and infinity -------------------------------------------------------------


def test_pranc_refuses_nan_instead_of_writing_a_tensor_of_nan(tmp_path):
    source = _with_holes(tmp_path / "holes.safetensors")
    archive = tmp_path / "holes.zoo"
    with pytest.raises(ZooError, match=r"holed\.weight.*NaN or infinit"):
        zoo.compress(source, archive, "pranc:k=50")
    assert not archive.exists()
    zoo.compress(source, archive, "pranc:k=50,exclude=holed*")
    kept = zoo.load_state_dict(archive)["holed.weight"]
    assert int(kept.isnan().sum()) == 1 and bool(kept[5, 5].isinf())  # excluded: kept bit for bit


def test_l2_says_nan_when_a_tensor_holds_nan(tmp_path):
    from safetensors.torch import load_file, save_file

    source = _with_holes(tmp_path / "holes.safetensors")
    tensors = load_file(str(source))
    tensors["plain.weight"] = torch.randn(128, 128, generator=torch.Generator().manual_seed(1))  # enough for l2 to reach 4x
    save_file(tensors, str(source))
    archive = tmp_path / "holes.zoo"
    with pytest.raises(ZooError, match=r"holed\.weight holds NaN or infinity"):
        zoo.compress(source, archive, "l2:target_ratio=4")
    assert not archive.exists()
    zoo.compress(source, archive, "l2:target_ratio=4,exclude=holed*")
    assert np.isfinite(zoo.load_state_dict(archive)["plain.weight"].numpy()).all()


@pytest.mark.parametrize("spec", ["lowrank:ratio=0.5", "lowrank:energy=0.9"])
def test_lowrank_refuses_nan_in_its_survey_as_in_its_encode(tmp_path, spec):
    """ratio= surveys every matrix's singular values first: numpy's SVD did not converge there."""
    source = _with_holes(tmp_path / "holes.safetensors")
    with pytest.raises(ZooError, match=r"lowrank: tensor 'holed\.weight' holds NaN or infinite values"):
        zoo.compress(source, tmp_path / "holes.zoo", spec)
    assert not (tmp_path / "holes.zoo").exists()


@pytest.mark.parametrize("option", ["--max-kl", "--min-cosine", "--max-ppl-ratio"])
@pytest.mark.parametrize("value", ["nan", "inf"])
def test_a_gate_of_nan_or_infinity_is_a_usage_error(tmp_path, option, value):
    # --max-kl nan passed whatever the KL (a comparison with NaN is false), was stored as "NaN",
    # and then crashed the report: compress failed after keeping its archive, and zoo info failed on it
    import subprocess
    import sys

    model = _with_holes(tmp_path / "m.safetensors")
    for args in (["compress", model, "-o", tmp_path / "m.zoo", option, value], ["eval", model, "-r", model, option, value]):
        done = subprocess.run([sys.executable, "-m", "zoo", *map(str, args)], capture_output=True, text=True)
        said = "is not in the range" if (option, value) == ("--min-cosine", "inf") else "a gate must be a finite number"
        assert done.returncode == 2 and said in done.stderr, done.stderr
    assert not (tmp_path / "m.zoo").exists()
    with pytest.raises(ZooError, match="a gate must be a finite number"):
        Gates(**{option[2:].replace("-", "_"): float(value)})


def test_an_archive_holding_a_gate_of_nan_is_still_shown(tmp_path):
    import subprocess
    import sys

    model = _with_holes(tmp_path / "m.safetensors")
    zoo.compress(model, tmp_path / "m.zoo")
    zoo.api.update_metadata(tmp_path / "m.zoo", {"quality": {"kind": "weights", "reference": "m", "passed": True,
                                                               "gates": {"max_kl": "NaN"}, "metrics": {}}}, own_keys=True)
    done = subprocess.run([sys.executable, "-m", "zoo", "info", str(tmp_path / "m.zoo")], capture_output=True, text=True)
    assert done.returncode == 0 and "gates (--max-kl NaN): passed" in done.stdout, done.stdout + done.stderr
