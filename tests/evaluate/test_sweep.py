"""zoo sweep: a table of real compressions, the frontier, and a PNG that is a PNG."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from zoo.cli.app import app
from zoo.evaluate.sweep import SweepPoint, mark_pareto, plot, sweep

from tests.conftest import write_safetensors


def _point(name, size, kl):
    return SweepPoint(name, size, 4000, 1000, 0.1, 0.1, "causal-lm", {"kl_mean": kl})


def test_the_frontier_keeps_only_points_nothing_beats():
    points = [_point("a", 100, 0.5), _point("b", 200, 0.1), _point("c", 250, 0.2), _point("d", 300, 0.0), _point("e", 100, 0.6)]
    mark_pareto(points)
    assert [p.pipeline for p in points if p.pareto] == ["a", "b", "d"]
    assert points[0].bits_per_weight == pytest.approx(0.8) and points[0].ratio_fp32 == pytest.approx(40)


def test_plot_writes_a_png(tmp_path):
    points = [_point("a", 100, 0.5), _point("b", 200, 0.1), _point("d", 300, 0.0)]
    mark_pareto(points)
    path = plot(points, tmp_path / "rd.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in tmp_path.iterdir() if p.name != "rd.png"]  # no temporary left behind
    # a name near the system's 255 bytes: its temporary's passed it ("cannot write the plot there")
    from zoo.evaluate.sweep import check_plot_destination

    long = tmp_path / ("p" * 245 + ".png")
    check_plot_destination(long)
    assert plot(points, long).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_noisy_copy_may_have_a_name_near_the_systems_limit(weights_file, tmp_path):
    from zoo.evaluate.noise import noisy_copy

    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "model.safetensors").write_bytes(weights_file.read_bytes())
    copied = noisy_copy(tmp_path / "model", tmp_path / ("n" * 250), 0.01)
    assert (copied / "model.safetensors").is_file()


@pytest.fixture
def weights_file(tmp_path):
    rng = np.random.default_rng(0)
    tensors = {f"layer.{i}.weight": ("F32", (rng.standard_normal((96, 128)) * 0.05).astype(np.float32)) for i in range(3)}
    return write_safetensors(tmp_path / "w.safetensors", tensors)


def test_sweep_orders_size_and_quality_the_right_way(weights_file):
    points = sweep(weights_file, ["lossless", "l2:target_ratio=6", "l2:target_ratio=12"])
    lossless, fine, coarse = points
    assert lossless.kind == "weights" and lossless.distortion == pytest.approx(0, abs=1e-12)
    assert lossless.archive_bytes > fine.archive_bytes > coarse.archive_bytes
    assert 0 < fine.distortion < coarse.distortion
    assert all(p.pareto for p in points)


def test_cli_prints_json_and_draws_the_plot(weights_file, tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["sweep", str(weights_file), "-p", "lossless", "-p", "l2:target_ratio=10", "--plot", str(tmp_path / "rd.png"), "--json"])
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert [p["pipeline"] for p in document["points"]] == ["lossless", "l2:target_ratio=10"]
    assert (tmp_path / "rd.png").read_bytes()[:4] == b"\x89PNG"
    again = runner.invoke(app, ["sweep", str(weights_file), "-p", "lossless", "--plot", str(tmp_path / "rd.png")])
    assert again.exit_code == 1 and "--force" in str(again.exception or again.output)


def test_cli_refuses_a_bad_pipeline_before_any_work(weights_file):
    result = CliRunner().invoke(app, ["sweep", str(weights_file), "-p", "lossless", "-p", "nosuch"])
    assert result.exit_code == 1
