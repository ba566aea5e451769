"""The codec protocol as a user meets it: parameters declared once (one error for a bad value in
every codec), unknown parameters with a suggestion, a lossy stage without its defining
parameter, a bytes stage given alone, and codecs from outside packages (entry points)."""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

import zoo
from zoo.codecs.base import LossyCodec
from zoo.codecs.lossy.lowrank import LowRank
from zoo.codecs.pipeline import Pipeline
from zoo.codecs.registry import CODECS, codec_class
from zoo.errors import PipelineError

from tests.conftest import write_safetensors


def _run(*args, env=None, cwd=None):
    environment = {k: v for k, v in os.environ.items() if k != "ZOO_DEBUG"}
    environment.update(env or {})
    return subprocess.run([sys.executable, "-m", "zoo", *map(str, args)], capture_output=True, text=True,
                          env=environment, cwd=cwd, timeout=120)


# Small integers as float32: planes an entropy coder shrinks, so coded streams are decoded too.
WEIGHT = (np.arange(64 * 48) % 7 - 3).astype(np.float32).reshape(64, 48)


@pytest.fixture
def model(tmp_path):
    return write_safetensors(tmp_path / "m.safetensors", {"layer.weight": ("F32", WEIGHT),
                                                           "layer.bias": ("F32", np.zeros(48, np.float32))})


def _fails_with(model, tmp_path, spec, message):
    done = _run("compress", model, "-o", tmp_path / "out.zoo", "-p", spec, env={"ZOO_HOME": str(tmp_path / "home")})
    assert done.returncode == 1, (done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert message in lines[0], lines[0]
    assert "Traceback" not in done.stderr and "a bug in zoo" not in done.stderr
    assert not (tmp_path / "out.zoo").exists()
    return lines[0]


@pytest.mark.parametrize("spec, message", [
    ("bytegroup|zstd:level=99", "zstd: level must be an integer in -131072..22, got 99"),
    ("codebook:bitz=4", "codebook has no parameter 'bitz' (did you mean 'bits'?); its parameters: bits, rows, pack, iterations, include, exclude"),
    ("lowrank", "lowrank needs energy= or ratio= (for example lowrank:energy=...); its parameters: energy, ratio, include, exclude"),
    ("lowrank:include=*weight*", "lowrank needs energy= or ratio="),
    ("lowrank:energy=NaN", "lowrank: energy must be a number in (0, 1], got nan"),
    ("l2:target_ratio=true", "l2: target_ratio must be a number in (1, 320], got True"),
    ("bytegroup:level=3|zstd", "bytegroup takes no parameters, got 'level'"),
    ("lowrank:energy=0.9,ratio=0.5", "lowrank: give energy or ratio, not both"),
    # refused when written, before the work: 16 lossy stages and the lossless ending are 17
    ("|".join(["truncate"] * 16), "pipeline has 16 lossy stages and its lossless ending; at most 16 stages"),
])
def test_spec_errors_through_the_cli(model, tmp_path, spec, message):
    _fails_with(model, tmp_path, spec, message)


numeric = [(cls, param) for cls in CODECS for param in cls.parameters() if param.kind in (int, float)]


@pytest.mark.parametrize("cls, param", numeric, ids=lambda x: getattr(x, "codec_id", None) or x.name)
@pytest.mark.parametrize("value", [math.nan, math.inf, True, "3", 10**400])
def test_a_bad_number_is_the_same_error_in_every_codec(cls, param, value):
    with pytest.raises(PipelineError) as raised:
        cls(**{param.name: value})
    assert str(raised.value) == f"{cls.codec_id}: {param.name} must be {param.describe()}, got {value!r}"


@pytest.mark.parametrize("cls", CODECS, ids=lambda cls: cls.codec_id)
def test_numbers_outside_the_declared_range_are_refused_and_the_ends_taken(cls):
    for param in cls.parameters():
        if param.kind is int:
            for outside in (param.low - 1, param.high + 1):
                with pytest.raises(PipelineError, match=f"{param.name} must be an integer in"):
                    cls(**{param.name: int(outside)})
            assert getattr(cls(**{param.name: int(param.high)}), param.name) == param.high
        elif param.kind is float:
            with pytest.raises(PipelineError, match=f"{param.name} must be a number in"):
                cls(**{param.name: param.low})  # every float range here is open at its low end
            assert getattr(cls(**{param.name: param.high}), param.name) == param.high


def test_unknown_parameters_name_the_codec_and_its_parameters():
    with pytest.raises(PipelineError, match=r"^truncate has no parameter 'bit' \(did you mean 'bits'\?\); its parameters: bits, include, exclude$"):
        Pipeline.parse("truncate:bit=3")
    with pytest.raises(PipelineError, match=r"^zstd has no parameter 'speed'; its parameters: level$"):  # nothing close: no guess
        Pipeline.parse("zstd:speed=3")


def test_every_lossy_codec_takes_include_and_exclude_from_its_base():
    for cls in CODECS:
        if issubclass(cls, LossyCodec):
            assert [p.name for p in cls.parameters()][-2:] == ["include", "exclude"]
            with pytest.raises(PipelineError, match="empty tensor pattern"):
                cls(include=";")


@pytest.mark.parametrize("pattern", ["[", "*.layer[0-3.*", "*attn*;mlp[!", "a[]", "a[!]"])
def test_a_set_left_open_is_refused_not_matched_as_text(pattern):
    with pytest.raises(PipelineError, match=r"opens a '\[' that no '\]' closes"):
        Pipeline.parse(f"truncate:bits=3,include={pattern}|fprans")
    with pytest.raises(PipelineError, match=r"opens a '\[' that no '\]' closes"):
        Pipeline.parse(f"truncate:bits=3,exclude={pattern}|fprans")


@pytest.mark.parametrize("pattern", ["*.layer[0-3].*", "a[]]", "a[!]]", "[[]x"])
def test_closed_sets_stay_sets(pattern):
    Pipeline.parse(f"truncate:bits=3,include={pattern}|fprans")


@pytest.mark.parametrize("spec, expected", [
    ("zstd", "bytegroup|zstd:level=3"),
    ("rans", "bytegroup|rans"),
    ("truncate:bits=3|zstd:level=5", "truncate:bits=3|bytegroup|zstd:level=5"),
])
def test_a_bytes_stage_alone_gets_its_grouping_stage(spec, expected):
    assert Pipeline.parse(spec).spec() == expected


def test_codecs_built_without_a_spec_still_need_the_grouping_stage():
    # Pipeline.from_codecs (the Python API, and archives) completes nothing: it says what to write.
    with pytest.raises(PipelineError, match=r"bytes stage 'zstd' needs a grouping stage before it, such as bytegroup: write 'bytegroup\|zstd'"):
        Pipeline.from_codecs(list(Pipeline.parse("zstd").bytes_stages))


def test_help_lists_each_codec_from_its_declaration():
    done = _run("compress", "--help", env={"COLUMNS": "400", "TERM": "dumb"})
    assert done.returncode == 0, done.stderr
    text = " ".join(done.stdout.split())
    for cls in CODECS:
        usage = "; ".join(param.usage() for param in cls.parameters()) or "(no parameters)"
        assert f"{cls.codec_id}: {usage}" in text, cls.codec_id
    assert "zstd: level=3 in -131072..22" in text and "codebook: bits=4 in 1..8; rows=64 in 1..1048576; pack=true" in text
    assert "lowrank: energy in (0, 1]; ratio in (0, 1]; include; exclude; one of energy or ratio is needed" in text


def test_a_bytes_stage_alone_through_the_cli_round_trips(model, tmp_path):
    archive = tmp_path / "z.zoo"
    done = _run("compress", model, "-o", archive, "-p", "zstd", "--json", env={"ZOO_HOME": str(tmp_path / "home")})
    assert done.returncode == 0, done.stderr
    assert {t["pipeline"] for t in json.loads(done.stdout)["tensors"]} == {"bytegroup|zstd:level=3"}
    with zoo.open(archive) as opened:
        assert opened.read_tensor("layer.weight").data.tobytes() == WEIGHT.tobytes()


def test_a_lowrank_archive_written_without_energy_or_ratio_still_decodes(model, tmp_path):
    # Before the rule, `-p lowrank` wrote {"id": "lowrank", "energy": null, "ratio": null, ...}: such
    # an archive keeps decoding (as energy=0.99 encoded it), only a new spec must name one.
    pipeline = Pipeline.from_codecs([LowRank(), *Pipeline.parse("lossless").stages])
    zoo.compress(model, tmp_path / "old.zoo", pipeline)
    with zoo.open(tmp_path / "old.zoo") as opened:
        assert opened.read_tensor("layer.weight").shape == (64, 48)
        assert opened.pipeline_of(opened.tensor_info("layer.weight")["pipeline"]).configs()[0] == {
            "id": "lowrank", "energy": None, "ratio": None, "include": None, "exclude": None}


# -- codecs from outside packages ----------------------------------------------------------------

PLUGIN = '''
import zlib

from zoo.codecs.base import BytesCodec, Param
from zoo.errors import FormatError


class Deflate(BytesCodec):
    codec_id = "deflatetest"
    params = (Param("level", int, 6, 0, 9),)

    def encode(self, data):
        return zlib.compress(bytes(data), self.level)

    def decode(self, data, decoded_size):
        out = zlib.decompress(bytes(data))
        if len(out) != decoded_size:
            raise FormatError("deflatetest stream has the wrong length")
        return out


class NotACodec:
    codec_id = "notacodec"
'''


def _install_plugin(folder):
    """A real installed distribution: a package and its .dist-info with a zoo.codecs entry point."""
    (folder / "zoo_deflate_test").mkdir(parents=True)
    (folder / "zoo_deflate_test" / "__init__.py").write_text(PLUGIN)
    info = folder / "zoo_deflate_test-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: zoo-deflate-test\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[zoo.codecs]\ndeflatetest = zoo_deflate_test:Deflate\n"
                                           "notacodec = zoo_deflate_test:NotACodec\nmissingtest = zoo_deflate_test:Nowhere\n")
    return folder


def test_an_entry_point_codec_is_found_by_id(tmp_path, monkeypatch):
    with pytest.raises(PipelineError, match="unknown codec 'deflatetest'"):
        codec_class("deflatetest")  # not installed yet
    monkeypatch.syspath_prepend(str(_install_plugin(tmp_path / "site")))
    cls = codec_class("deflatetest")
    assert cls.codec_id == "deflatetest" and cls not in CODECS
    assert Pipeline.parse("deflatetest:level=9").spec() == "bytegroup|deflatetest:level=9"
    with pytest.raises(PipelineError, match="deflatetest: level must be an integer in 0..9, got 10"):
        Pipeline.parse("bytegroup|deflatetest:level=10")
    with pytest.raises(PipelineError, match="not a zoo codec class"):
        codec_class("notacodec")
    with pytest.raises(PipelineError, match="'missingtest' from entry point 'zoo_deflate_test:Nowhere' does not load: AttributeError"):
        codec_class("missingtest")


def test_an_entry_point_codec_through_the_cli(model, tmp_path):
    site = _install_plugin(tmp_path / "site")
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])), "ZOO_HOME": str(tmp_path / "home")}
    archive, out = tmp_path / "p.zoo", tmp_path / "out"
    done = _run("compress", model, "-o", archive, "-p", "bytegroup|deflatetest:level=9", "--json", env=env)
    assert done.returncode == 0, done.stderr
    assert {t["pipeline"] for t in json.loads(done.stdout)["tensors"]} == {"bytegroup|deflatetest:level=9"}
    done = _run("decompress", archive, "-o", out, env=env)
    assert done.returncode == 0, done.stderr
    assert (out / "m.safetensors").read_bytes() == model.read_bytes()
    # Without the package, the archive names a codec nobody provides: one line, exit 1.
    done = _run("decompress", archive, "-o", tmp_path / "again", env={"ZOO_HOME": str(tmp_path / "home")})
    assert done.returncode == 1 and "unknown codec 'deflatetest'" in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
