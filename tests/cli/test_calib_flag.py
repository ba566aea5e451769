"""`--calib` without a file calibrates on the text zoo ships."""

from __future__ import annotations

import subprocess
import sys

import pytest

import zoo
from zoo.cli import shipped_calibration
from zoo.optimize.teacher import SHIPPED_TEXT

from tests.conftest import write_tiny_llama


def test_a_bare_calib_gets_the_shipped_text():
    shipped = str(SHIPPED_TEXT)
    assert shipped_calibration(["zoo", "compress", "m", "--calib"]) == ["zoo", "compress", "m", "--calib", shipped]
    assert shipped_calibration(["zoo", "compress", "m", "--calib", "-o", "x.zoo"]) == ["zoo", "compress", "m", "--calib", shipped, "-o", "x.zoo"]
    assert shipped_calibration(["zoo", "compress", "m", "--calib", "mine.txt"]) == ["zoo", "compress", "m", "--calib", "mine.txt"]
    assert shipped_calibration(["zoo", "ls"]) == ["zoo", "ls"]
    assert SHIPPED_TEXT.is_file() and SHIPPED_TEXT.stat().st_size > 10_000


@pytest.mark.slow
def test_compress_with_a_bare_calib_calibrates_on_the_shipped_text(tmp_path):
    pytest.importorskip("transformers")
    model = write_tiny_llama(tmp_path / "llama", SHIPPED_TEXT.read_text(encoding="utf-8")[:4000], hidden_size=32, intermediate_size=64,
                             num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64)
    runs = {}
    for name, calib in (("bare", ["--calib"]), ("named", ["--calib", str(SHIPPED_TEXT)]), ("none", [])):
        done = subprocess.run([sys.executable, "-m", "zoo", "compress", str(model), "-o", str(tmp_path / f"{name}.zoo"), "-p",
                               "codebook:bits=3", *calib, "-t", "1"], capture_output=True, text=True, timeout=600, check=False)
        assert done.returncode == 0, done.stderr
        with zoo.open(tmp_path / f"{name}.zoo") as archive:
            runs[name] = {key: archive.read_tensor(key).data.tobytes() for key in archive.keys()}
    assert runs["bare"] == runs["named"] != runs["none"]  # calibrated, on the shipped text
