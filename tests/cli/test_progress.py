"""Progress of the long phases of a compress: the library's stage callback, and the CLI's bars."""

import json
import re

import pytest

import zoo
from zoo.api import COMPRESS_STAGES

from tests.conftest import write_tiny_llama
from tests.cli.test_cli import zoo_cli

TEXT = " ".join(f"Line {i} of the {w} says {w[::-1]} before {i * 5 % 11}." for i, w in
                enumerate(["budget", "round", "layer", "stage", "survey", "teacher"] * 30))


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    pytest.importorskip("transformers")
    return write_tiny_llama(tmp_path_factory.mktemp("llama"), TEXT, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                            num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=False)


def _compress(source, destination, spec, **options):
    """The report and every callback in the order it came: ("bytes", n) or (stage, done, total)."""
    events = []
    report = zoo.compress(source, destination, spec, progress=lambda n: events.append(("bytes", n)),
                          stage_progress=lambda *event: events.append(event), **options)
    return report, events


def _stages(events):
    """stage -> its (done, total) reports, stages in the order they started."""
    stages = {}
    for event in events:
        if event[0] != "bytes":
            stages.setdefault(event[0], []).append(event[1:])
    return stages


def _check_each_starts_and_finishes(stages):
    for stage, reports in stages.items():
        assert stage in COMPRESS_STAGES, f"{stage!r} is not documented in zoo.api.COMPRESS_STAGES"
        done = [d for d, _ in reports]
        assert reports[0][0] == 0 and reports[0][1] > 0, (stage, reports[0])
        assert reports[-1][0] == reports[-1][1], (stage, reports[-1])  # finished
        assert done == sorted(done), stage
        # The total holds until the end, where a stage that stopped early (a landing in fewer rounds) may lower it.
        assert {t for _, t in reports[:-1]} == {reports[0][1]} and reports[-1][1] <= reports[0][1], (stage, reports)


def test_a_tuned_compress_reports_every_stage_before_its_first_byte(tiny_llama, tmp_path):
    report, events = _compress(tiny_llama, tmp_path / "tuned.zoo", "l2:target_ratio=8,tune=3|lossless",
                               calibration=tiny_llama / "calibration.txt")
    stages = _stages(events)
    assert list(stages) == [s for s in COMPRESS_STAGES if s != "distilling coefficients"]  # all of l2's, in the order they run
    _check_each_starts_and_finishes(stages)
    first_byte = next(i for i, event in enumerate(events) if event[0] == "bytes")
    assert all(event[0] == "bytes" for event in events[first_byte:])
    assert all(event[1] > 0 for event in events[first_byte:])

    quantized = [t for t in report.tensors if t.pipeline.startswith("l2")]
    assert stages["surveying rates"][-1] == (len(quantized), len(quantized))
    assert stages["tuning roundings"][-1] == (3, 3)
    assert stages["measuring sensitivities"][-1][1] == 16  # the sequences sensitivities average over (_teacher.MAX_SEQUENCES)
    calibrating = stages["calibrating"][-1][1]
    assert 2 <= calibrating == len(stages["calibrating"]) - 1  # one report per sequence after the first


def test_a_data_free_survey_reports_its_own_stages_and_lossless_none(tiny_llama, tmp_path):
    _, events = _compress(tiny_llama, tmp_path / "free.zoo", "l2:target_ratio=8")
    stages = _stages(events)
    assert list(stages) == ["surveying rates", "fitting the budget"]
    _check_each_starts_and_finishes(stages)

    _, events = _compress(tiny_llama, tmp_path / "lossless.zoo", "lossless")
    assert events and all(event[0] == "bytes" for event in events)


def test_the_bytes_a_compress_counts_add_up_to_its_source_lossy_or_not(tmp_path):
    """progress counts the source's bytes: it counted the bytes of what each chunk codes, which a
    lossy stage makes fewer (codebook's indices: 12.4 MB of MiniLM's 91.6, and the CLI's bar ended
    at "11.83 MiB / 87.37 MiB") and a difference from a base more (float32 for BF16), and nothing of
    what a zoo held already."""
    import numpy as np

    from zoo.api import compress_into
    from zoo.hub.store import Store

    from tests.conftest import write_safetensors

    rng = np.random.default_rng(0)
    folder = tmp_path / "m"
    folder.mkdir()
    tensors = {"a.weight": ("F32", rng.normal(size=(96, 64)).astype(np.float32)), "b.weight": ("BF16", (rng.normal(size=(80, 64)).astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)),
               "c.bias": ("F32", rng.normal(size=64).astype(np.float32)), "none": ("F32", np.zeros((0, 4), np.float32))}
    write_safetensors(folder / "model.safetensors", tensors)
    (folder / "config.json").write_text('{"a": 1}')
    base = write_safetensors(tmp_path / "base.safetensors", {name: (dtype, value if dtype != "F32" else value * 0.5)
                                                             for name, (dtype, value) in tensors.items()})
    size = sum(path.stat().st_size for path in folder.iterdir())

    def counted(run) -> int:
        said = []
        run(said.append)
        assert all(n > 0 for n in said)
        return sum(said)

    for spec, options in (("lossless", {}), ("codebook:bits=4", {}), ("truncate:bits=4", {}), ("lowrank:ratio=0.5|codebook:bits=3", {}),
                          ("truncate:bits=4", {"base": base})):
        assert counted(lambda progress: zoo.compress(folder, tmp_path / "m.zoo", spec, force=True, progress=progress, **options)) == size, spec
    store = Store(tmp_path / "zoo")
    for name in ("first", "again"):  # the second finds every object in the zoo already
        assert counted(lambda progress: compress_into(store, folder, name, progress=progress)) == size, name


def test_a_silent_survey_beside_a_reporting_one(tiny_llama, tmp_path):
    # lowrank's survey has no long phase and reports nothing; l2 after it still reports. (6 is within
    # reach, 6.03, once l2 counts lowrank's factors as stored, not the matrices they replace.)
    report, events = _compress(tiny_llama, tmp_path / "both.zoo", "lowrank:ratio=0.5,include=*mlp*|l2:target_ratio=6,exclude=*mlp*")
    assert list(_stages(events)) == ["surveying rates", "fitting the budget"]
    assert any(t.pipeline.startswith("lowrank") for t in report.tensors)


def test_pranc_reports_its_distillation(tiny_llama, tmp_path):
    _, events = _compress(tiny_llama, tmp_path / "pranc.zoo", "pranc:k=8,steps=5", calibration=tiny_llama / "calibration.txt")
    stages = _stages(events)
    assert list(stages) == ["calibrating", "running the original model", "distilling coefficients"]
    _check_each_starts_and_finishes(stages)
    assert stages["distilling coefficients"][-1] == (5, 5)


def _visible(stream):
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", stream)


@pytest.mark.slow
def test_cli_shows_stage_bars_on_stderr_and_nothing_with_json(tiny_llama, tmp_path):
    terminal = {"FORCE_COLOR": "1", "COLUMNS": "120", "ZOO_HOME": str(tmp_path / "home")}  # stderr counts as a terminal
    arguments = ["-p", "l2:target_ratio=8,tune=2|lossless", "--calib", tiny_llama / "calibration.txt"]

    shown = zoo_cli("compress", tiny_llama, "-o", tmp_path / "a.zoo", *arguments, env=terminal)
    assert shown.returncode == 0, shown.stderr
    for stage in ("calibrating", "surveying rates", "tuning roundings", "compressing"):
        assert stage in _visible(shown.stderr)
    assert "tuning roundings" not in shown.stdout and "bits per weight" in shown.stdout

    # --eval too: its evaluation joins the bars, and with --json says nothing on stderr either.
    checked = zoo_cli("compress", tiny_llama, "-o", tmp_path / "c.zoo", *arguments, "--eval", env=terminal)
    assert checked.returncode == 0, checked.stderr
    assert "evaluating against" in _visible(checked.stderr) and "weights" in _visible(checked.stderr)
    quiet = zoo_cli("compress", tiny_llama, "-o", tmp_path / "b.zoo", *arguments, "--eval", "--json", env=terminal)
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stderr == ""
    assert json.loads(quiet.stdout)["tensors"]

    # Into the zoo (no -o): the byte bar is the helper's own, and the line printed after it stays on stdout.
    stored = zoo_cli("compress", tiny_llama, "--name", "tiny", *arguments, env=terminal)
    assert stored.returncode == 0, stored.stderr
    assert "tuning roundings" in _visible(stored.stderr)
    assert "stored tiny" in _visible(stored.stdout) and "stored tiny" not in _visible(stored.stderr)
