"""`zoo env` and `zoo bench`: thin commands over zoo.kernels.info() and zoo.evaluate.bench.run()."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import random_storage, write_safetensors


def zoo(*arguments, env=None):
    return subprocess.run([sys.executable, "-m", "zoo", *arguments], capture_output=True, text=True, env={**os.environ, **(env or {})})


def test_env_names_the_forced_path():
    done = zoo("env", "--json", env={"ZOO_KERNELS": "numpy"})
    assert done.returncode == 0 and json.loads(done.stdout)["kernels"] == "numpy"
    try:  # forced to numpy, it still says what the CPU offers (it said nothing of it)
        from zoo import _native
    except ImportError:
        pass
    else:
        assert json.loads(done.stdout)["available"] == list(_native.available_isas())
        assert json.loads(done.stdout)["cpu_features"] == _native.cpu_features()
    done = zoo("env")
    cpu, kernels = done.stdout.splitlines()[:2]
    assert done.returncode == 0 and cpu.startswith("cpu: ") and len(cpu) > len("cpu: ") and kernels.startswith("kernels: ")


def test_env_rejects_an_unknown_path_in_one_line():
    done = zoo("env", env={"ZOO_KERNELS": "mmx"})
    assert done.returncode == 1 and done.stderr.count("\n") == 1 and "ZOO_KERNELS" in done.stderr


def test_bench_measures_every_coder_on_a_small_model(tmp_path):
    pytest.importorskip("zipnn")
    source = write_safetensors(tmp_path / "m.safetensors", {"a": ("F32", random_storage("F32", (300, 64))),
                                                             "b": ("BF16", random_storage("BF16", (100, 32)))})
    done = zoo("bench", str(source), "--dtype", "bf16", "--dtype", "F32", "--dtype", "f32", "--repeat", "1", "--threads", "2", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    coders = {(f["dtype"], f["coder"]) for f in report["figures"]}
    assert len(coders) == len(report["figures"]), report["figures"]  # a dtype given twice is measured once
    assert {("BF16", "zoo lossless"), ("BF16", "zipnn"), ("BF16", "zstd -3"), ("F32", "zoo lossless")} <= coders
    ours = {f["dtype"]: f for f in report["figures"] if f["coder"] == "zoo lossless"}
    assert all(0 < f["ratio"] < 1 and f["compress_gbps"] > 0 and f["decompress_gbps"] > 0 for f in ours.values())
    assert report["threads"] == 2
    # glibc here: every coder's output lands in memory the process has (zoo.evaluate.bench.recycled_memory)
    assert report["memory_recycled"] is (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc")


def test_bench_bad_input_is_one_line(tmp_path):
    done = zoo("bench", str(tmp_path / "missing"))
    assert done.returncode == 1 and done.stderr.startswith("error:") and done.stderr.count("\n") == 1
    source = write_safetensors(tmp_path / "ints.safetensors", {"i": ("I32", random_storage("I32", (10,)))})
    done = zoo("bench", str(source))
    assert done.returncode == 1 and "no BF16, F16 or F32 tensors" in done.stderr
    done = zoo("bench", str(source), "--dtype", "F64")
    assert done.returncode == 1 and done.stderr.count("\n") == 1



@pytest.mark.parametrize("threads", ["100000", "2147483648", "99999999999999999999"])
def test_a_thread_count_past_any_machine_is_capped_not_a_crash(tmp_path, threads):
    """bench handed -t 100000 to ZipNN, whose C core crashed (SIGSEGV), and a count past a C int
    overflowed ("unexpected OverflowError"); eval did the same through torch.set_num_threads."""
    from zoo.kernels.parallel import MAX_THREADS, resolve_threads

    assert resolve_threads(int(threads)) == MAX_THREADS
    model = write_safetensors(tmp_path / "m.safetensors", {"w": ("F32", random_storage("F32", (64, 64), 1))})
    done = zoo("bench", str(model), "--repeat", "1", "--dtype", "F32", "-t", threads, "--json")
    assert done.returncode == 0, done.stderr
    done = zoo("eval", str(model), "-r", str(model), "-t", threads)
    assert done.returncode == 0 and "identical" in done.stdout, done.stderr


def test_bench_refuses_a_lossy_pipeline_it_would_not_measure(tmp_path):
    """bench coded chunks with the pipeline's lossless stages alone and printed their figures as
    codebook's, truncate's or l2's (every one the lossless ratio)."""
    model = write_safetensors(tmp_path / "m.safetensors", {"w": ("F32", random_storage("F32", (64, 64), 1))})
    done = zoo("bench", str(model), "-p", "codebook:bits=2", "--repeat", "1")
    assert (done.returncode, done.stderr) == (1, "error: zoo bench measures lossless pipelines, and 'codebook:bits=2' has lossy "
                                                 "stages: `zoo sweep` measures those (size and quality)\n")
    assert zoo("bench", str(model), "-p", "bytegroup|zstd", "--repeat", "1", "--dtype", "F32").returncode == 0
