"""zoo sweep at its edges: a plot that cannot be written is refused before any pipeline runs, the
plot is written in the format its suffix names, and a pipeline that fails is reported while the
others are measured and shown (exit 1), locally and on Ray."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file
from typer.testing import CliRunner

import zoo.api
from zoo.cli.app import app
from zoo.errors import InputError, OutputExistsError
from zoo.evaluate import sweep as library
from zoo.evaluate.sweep import SweepPoint, mark_pareto, plot, sweep

ROOT = Path(__file__).resolve().parents[2]
FAILING = ["-p", "truncate:bits=3", "-p", "codebook:bits=4"]  # codebook refuses a NaN weight, truncate keeps it


def _weights(path: Path, nan: bool = False) -> Path:
    rng = np.random.default_rng(0)
    first = rng.standard_normal((32, 48)).astype(np.float32)
    if nan:
        first[0, 0] = np.nan
    save_file({"a.weight": first, "b.weight": rng.standard_normal((48, 32)).astype(np.float32)}, str(path))
    return path


@pytest.fixture
def model(tmp_path: Path) -> Path:
    return _weights(tmp_path / "w.safetensors")


@pytest.fixture
def nan_model(tmp_path: Path) -> Path:
    return _weights(tmp_path / "nan.safetensors", nan=True)


@pytest.fixture
def no_work(monkeypatch: pytest.MonkeyPatch) -> None:
    def compress(*args: object, **kwargs: object) -> None:
        raise AssertionError("a pipeline ran before the plot's destination was checked")

    monkeypatch.setattr(zoo.api, "compress", compress)


def _sweep(*args: object):
    return CliRunner().invoke(app, ["sweep", *map(str, args)])


@pytest.mark.parametrize("destination, said", [
    ("missing/rd.png", "missing: output folder does not exist"),
    ("rd.xyz", "rd.xyz: the plot's suffix names its format, one of .png, .pdf, .svg"),
    ("rd", "rd: the plot's suffix names its format"),
    ("folder", "folder is a folder"),
])
def test_a_plot_that_cannot_be_written_is_refused_before_any_work(model, tmp_path, no_work, destination, said):
    (tmp_path / "folder").mkdir()
    result = _sweep(model, "-p", "truncate:bits=3", "--plot", tmp_path / destination, "--force")
    assert result.exit_code == 1 and isinstance(result.exception, InputError)
    assert said in str(result.exception) and "\n" not in str(result.exception)


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs /proc, a folder where no file can be made")
def test_a_folder_where_no_file_can_be_made_is_named_as_the_user_gave_it(model, no_work):
    result = _sweep(model, "-p", "truncate:bits=3", "--plot", "/proc/rd.png")
    assert result.exit_code == 1
    assert str(result.exception) == "/proc/rd.png: cannot write the plot there (No such file or directory)"


def test_the_library_refuses_an_existing_plot_unless_forced(tmp_path):
    (tmp_path / "rd.png").write_bytes(b"mine")
    with pytest.raises(OutputExistsError, match="exists; pass --force"):  # as compress -o says it
        library.check_plot_destination(tmp_path / "rd.png")
    library.check_plot_destination(tmp_path / "rd.png", force=True)
    assert os.listdir(tmp_path) == ["rd.png"]  # the probe file is gone


@pytest.mark.parametrize("make, said", [
    (lambda path: os.mkfifo(path), "rd.png is not a regular file (a device, a pipe or a socket); zoo does not remove it"),
    (lambda path: path.symlink_to(os.devnull), "rd.png is a link to a device, a pipe or a socket"),
])
def test_a_pipe_or_a_link_to_a_device_is_no_plot_even_with_force(model, tmp_path, no_work, make, said):
    # --force replaced them as it would a file: the pipe was removed, the link to /dev/null made a file
    make(tmp_path / "rd.png")
    before = (tmp_path / "rd.png").lstat()
    result = _sweep(model, "-p", "truncate:bits=3", "--plot", tmp_path / "rd.png", "--force")
    assert result.exit_code == 1 and isinstance(result.exception, OutputExistsError)
    assert said in str(result.exception) and "\n" not in str(result.exception)
    assert (tmp_path / "rd.png").lstat() == before


def test_a_dangling_link_is_a_plot_there_as_for_compress(model, tmp_path):
    # path.exists() is False for it: it was replaced without --force
    (tmp_path / "rd.png").symlink_to("nowhere")
    result = _sweep(model, "-p", "truncate:bits=3", "--plot", tmp_path / "rd.png")
    assert result.exit_code == 1 and str(result.exception).endswith("rd.png exists; pass --force to replace it")
    assert (tmp_path / "rd.png").is_symlink() and os.readlink(tmp_path / "rd.png") == "nowhere"
    assert ok_plot(_sweep(model, "-p", "truncate:bits=3", "--plot", tmp_path / "rd.png", "--force"), tmp_path / "rd.png")


def ok_plot(result, path: Path) -> bool:
    assert result.exit_code == 0, result.output
    return not path.is_symlink() and path.read_bytes().startswith(b"\x89PNG")


@pytest.mark.parametrize("suffix, magic", [("png", b"\x89PNG"), ("pdf", b"%PDF"), ("svg", b"<?xml"), ("SVG", b"<?xml"),
                                           ("eps", b"%!PS")])
def test_the_plot_is_written_in_the_format_its_suffix_names(tmp_path, suffix, magic):
    points = [SweepPoint("a", 100, 4000, 1000, 0.1, 0.1, "causal-lm", {"kl_mean": 0.5}),
              SweepPoint("b", 200, 4000, 1000, 0.1, 0.1, "causal-lm", {"kl_mean": 0.1})]
    mark_pareto(points)
    plot(points, tmp_path / f"rd.{suffix}")
    assert (tmp_path / f"rd.{suffix}").read_bytes().startswith(magic)
    assert os.listdir(tmp_path) == [f"rd.{suffix}"]  # no temporary left behind


@pytest.fixture
def appears(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """Makes the plot's file (or pipe) as the sweep ends: a user's, made between the check and the write."""
    made = {}
    swept = library.sweep

    def sweep_then_make(*args, **kwargs):
        points = swept(*args, **kwargs)
        made["make"](tmp_path / "rd.png")
        return points

    monkeypatch.setattr(library, "sweep", sweep_then_make)
    return made


@pytest.mark.parametrize("as_json", [False, True])
def test_a_plot_that_appeared_during_the_sweep_is_left_alone(model, tmp_path, appears, as_json):
    # it was replaced without --force; with --json a refusal there ended the command with no document
    appears["make"] = lambda path: path.write_bytes(b"mine")
    result = _sweep(model, "-p", "truncate:bits=3", "--plot", tmp_path / "rd.png", *(["--json"] if as_json else []))
    assert result.exit_code == 1 and (tmp_path / "rd.png").read_bytes() == b"mine"
    said = "rd.png exists; pass --force to replace it"
    if as_json:
        document = json.loads(result.stdout)
        assert document["plot"] is None and document["plot_error"].endswith(said) and document["points"]
    else:
        assert str(result.exception).endswith(said) and "truncate:bits=3" in result.stdout  # the table came first
    assert sorted(os.listdir(tmp_path)) == ["rd.png", "w.safetensors"]  # no temporary left


def test_a_pipe_that_appeared_during_the_sweep_is_left_alone_with_force(model, tmp_path, appears):
    appears["make"] = os.mkfifo
    result = _sweep(model, "-p", "truncate:bits=3", "--plot", tmp_path / "rd.png", "--force")
    assert result.exit_code == 1 and "rd.png is not a regular file" in str(result.exception)
    assert (tmp_path / "rd.png").is_fifo()


def test_a_plot_that_appeared_while_it_was_drawn_is_left_alone(tmp_path, monkeypatch):
    # after the last check, before the rename: os.replace put the plot over it
    from matplotlib.figure import Figure

    points = [SweepPoint("a", 100, 4000, 1000, 0.1, 0.1, "weights", {"weight_cosine": 0.9}),
              SweepPoint("b", 200, 4000, 1000, 0.1, 0.1, "weights", {"weight_cosine": 0.99})]
    savefig = Figure.savefig

    def savefig_then_make(self, *args, **kwargs):
        savefig(self, *args, **kwargs)
        (tmp_path / "rd.png").write_bytes(b"mine")

    monkeypatch.setattr(Figure, "savefig", savefig_then_make)
    with pytest.raises(OutputExistsError, match="rd.png appeared while zoo was writing it; pass --force to replace it"):
        plot(points, tmp_path / "rd.png")
    assert os.listdir(tmp_path) == ["rd.png"] and (tmp_path / "rd.png").read_bytes() == b"mine"
    plot(points, tmp_path / "rd.png", force=True)
    assert os.listdir(tmp_path) == ["rd.png"] and (tmp_path / "rd.png").read_bytes().startswith(b"\x89PNG")


def test_a_failing_pipeline_is_reported_and_the_others_shown(nan_model, tmp_path):
    result = _sweep(nan_model, *FAILING, "--plot", tmp_path / "rd.pdf")
    assert result.exit_code == 1, result.output
    rows = [line.split()[0] for line in result.stdout.splitlines()[2:]]
    assert rows == ["truncate:bits=3", "plot:"]
    assert "failed codebook:bits=4: codebook: tensor 'a.weight' holds NaN or infinite values" in result.stderr
    assert (tmp_path / "rd.pdf").read_bytes().startswith(b"%PDF")  # drawn from the pipelines that worked


def test_json_lists_a_failed_pipeline_beside_the_points(nan_model):
    result = _sweep(nan_model, *FAILING, "--json")
    assert result.exit_code == 1
    document = json.loads(result.stdout)
    assert [p["pipeline"] for p in document["points"]] == ["truncate:bits=3"] and document["points"][0]["pareto"]
    [failure] = document["failed"]
    assert failure["pipeline"] == "codebook:bits=4" and "NaN" in failure["error"] and "\n" not in failure["error"]


def test_every_pipeline_failing_is_one_error_or_a_json_document_with_no_points(nan_model):
    spoiled = ["-p", "codebook:bits=3", "-p", "codebook:bits=4"]
    result = _sweep(nan_model, *spoiled)
    assert result.exit_code == 1 and str(result.exception) == "every pipeline failed (2)"
    assert result.stderr.count("failed codebook:bits=") == 2
    result = _sweep(nan_model, *spoiled, "--json")
    assert result.exit_code == 1
    document = json.loads(result.stdout)
    assert document["points"] == [] and [f["pipeline"] for f in document["failed"]] == ["codebook:bits=3", "codebook:bits=4"]


def test_json_has_an_empty_failed_list_when_all_worked(model):
    result = _sweep(model, "-p", "truncate:bits=3", "--json")
    assert result.exit_code == 0 and json.loads(result.stdout)["failed"] == []


def test_the_library_goes_on_only_when_told_how_to_report(nan_model):
    failures = []
    points = sweep(nan_model, ["codebook:bits=4", "truncate:bits=3"], on_failure=lambda pipeline, error: failures.append(pipeline))
    assert [p.pipeline for p in points] == ["truncate:bits=3"] and failures == ["codebook:bits=4"]
    with pytest.raises(InputError, match="NaN"):  # zoo.batch's tasks rely on the error ending a one-pipeline sweep
        sweep(nan_model, ["codebook:bits=4", "truncate:bits=3"])


def test_a_failing_pipeline_on_ray_gives_the_document_of_a_local_sweep(ray_cluster, nan_model):
    environment = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "zoo", "sweep", str(nan_model), *FAILING, "--ray", ray_cluster, "--json"],
                          capture_output=True, text=True, env=environment, timeout=300, check=False)
    assert done.returncode == 1, done.stderr
    on_ray, here = json.loads(done.stdout), json.loads(_sweep(nan_model, *FAILING, "--json").stdout)
    assert [p["archive_bytes"] for p in on_ray["points"]] == [p["archive_bytes"] for p in here["points"]]
    assert on_ray["failed"] == here["failed"]


def test_json_keeps_its_document_when_the_plot_fails_late(model, tmp_path, monkeypatch):
    # the plot was drawn before the document was printed: a late failure (a full disk) lost the results
    from zoo.errors import InputError as Refused

    def full_disk(points, path, title=None, force=False):
        raise Refused(f"{path}: cannot write the plot there (No space left on device)")

    monkeypatch.setattr("zoo.evaluate.sweep.plot", full_disk)
    result = _sweep(model, "-p", "truncate:bits=3", "--plot", str(tmp_path / "rd.png"), "--json")
    document = json.loads(result.stdout)
    assert result.exit_code == 1 and [p["pipeline"] for p in document["points"]] == ["truncate:bits=3"]
    assert document["plot"] is None and document["plot_error"].endswith("cannot write the plot there (No space left on device)")


def test_dollars_in_a_label_or_title_are_drawn_as_written(tmp_path):
    # matplotlib read $...$ as maths: $a$ drawn as an italic a, and $\\foo$ a ValueError after the sweep
    import matplotlib

    points = [SweepPoint("truncate:bits=3,include=$\\foo$", 100, 4000, 1000, 0.1, 0.1, "weights", {"weight_cosine": 0.9}),
              SweepPoint("truncate:bits=4,include=$a$", 200, 4000, 1000, 0.1, 0.1, "weights", {"weight_cosine": 0.99})]
    mark_pareto(points)
    with matplotlib.rc_context({"svg.fonttype": "none"}):  # the svg's text as text, not as glyph outlines
        plot(points, tmp_path / "rd.svg", title="$x$.safetensors: rate and distortion")
    drawn = (tmp_path / "rd.svg").read_text()
    for text in ("include=$\\foo$", "include=$a$", "$x$.safetensors: rate and distortion"):
        assert text in drawn


def test_a_character_the_font_lacks_is_one_warning_naming_them_all(tmp_path):
    # matplotlib's UserWarning per glyph, which Python printed with a line of zoo's source under it
    import warnings

    from zoo.errors import ZooWarning

    points = [SweepPoint("truncate:bits=3,include=模", 100, 4000, 1000, 0.1, 0.1, "weights", {"weight_cosine": 0.9}),
              SweepPoint("truncate:bits=4", 200, 4000, 1000, 0.1, 0.1, "weights", {"weight_cosine": 0.99})]
    mark_pareto(points)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plot(points, tmp_path / "rd.png", title="型.safetensors: rate and distortion")
    assert not [w for w in caught if "Glyph" in str(w.message) and not issubclass(w.category, ZooWarning)]
    said = [str(w.message) for w in caught if issubclass(w.category, ZooWarning)]
    named = {f"{tmp_path / 'rd.png'}: the plot's font has no glyph for {chars}, drawn as empty boxes" for chars in ("模型", "型模")}
    assert said == [] or (len(said) == 1 and said[0] in named)  # none where a font has them


@pytest.mark.filterwarnings("ignore:stage 1 of the pipeline")  # the pattern selects no tensor: a label, no more
def test_json_keeps_the_points_when_a_label_has_dollars(model, tmp_path):
    # the ValueError ended the command: stdout empty, every measured point lost
    result = _sweep(model, "-p", "truncate:bits=3,include=$\\foo$", "--plot", tmp_path / "rd.png", "--json")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["plot"] == str(tmp_path / "rd.png")
    assert [p["pipeline"] for p in document["points"]] == ["truncate:bits=3,include=$\\foo$"]


def test_json_keeps_its_document_whatever_stops_the_plot(model, tmp_path, monkeypatch):
    # only an InputError went to plot_error: any other (a bug's ValueError) lost the document
    def broken(points, path, title=None, force=False):
        raise ValueError("no\ngood")

    monkeypatch.setattr("zoo.evaluate.sweep.plot", broken)
    result = _sweep(model, "-p", "truncate:bits=3", "--plot", str(tmp_path / "rd.png"), "--json")
    document = json.loads(result.stdout)
    assert result.exit_code == 1 and [p["pipeline"] for p in document["points"]] == ["truncate:bits=3"]
    assert document["plot"] is None
    assert document["plot_error"] == "unexpected ValueError: no\\ngood (a bug in zoo; ZOO_DEBUG=1 shows the traceback)"


def test_a_model_without_float_weights_is_no_sweep(tmp_path):
    # bits per weight NaN, "x vs fp32" 0.00, no point on the frontier, an empty plot, exit 0
    import numpy as np

    from tests.conftest import write_safetensors
    from zoo.errors import InputError
    from zoo.evaluate.sweep import sweep

    source = write_safetensors(tmp_path / "ints.safetensors", {"ids": ("I64", np.arange(4096, dtype=np.int64).reshape(64, 64))})
    with pytest.raises(InputError, match=r"ints.safetensors: no float weights to sweep"):
        sweep(source, ["lossless", "zstd"])


def test_the_candidates_a_killed_sweep_left_are_removed_by_the_next(model, tmp_path):
    """A sweep's folder of candidates (a TemporaryDirectory) stayed in TMPDIR for good after a
    SIGKILL: 26 MB for MiniLM, each time."""
    from zoo.evaluate.sweep import sweep

    scratch = tmp_path / "scratch"
    scratch.mkdir()
    left = scratch / "zoo-sweep-99999999-0badf00d"  # named by a process that is gone
    left.mkdir()
    (left / "candidate-0.zoo").write_bytes(b"x" * 1000)
    [point] = sweep(model, ["truncate:bits=3"], workdir=scratch)
    assert point.pipeline.startswith("truncate") and list(scratch.iterdir()) == []
