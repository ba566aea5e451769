"""Peak memory of the lowrank and codebook encoders, measured in a child process: how far the
resident set rises above what the child holds once its tensor is made (benchmarks/bench_lossy_memory.py
measures `zoo compress` the same way, on 128 MiB)."""

import json
import subprocess
import sys

import numpy as np
import pytest

from zoo.codecs.lossy import lowrank

# The tensor is filled in place, so the high-water mark before encode is what the child holds; a
# 64 x 64 encode first brings in BLAS's and LAPACK's own buffers.
_CHILD = r"""
import json, re, sys
import numpy as np
from zoo.codecs.base import TypedArray
from zoo.codecs.lossy.codebook import Codebook
from zoo.codecs.lossy.lowrank import LowRank

def high_water():
    with open("/proc/self/status") as status:
        return int(re.search(r"VmHWM:\s+(\d+)", status.read()).group(1)) * 1024

codec_id, arguments, rows, cols = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
codec = {"lowrank": LowRank, "codebook": Codebook}[codec_id](**arguments)
rng = np.random.default_rng(0)
weights = np.empty((rows, cols), dtype=np.float32)
np.matmul(rng.standard_normal((rows, 32), dtype=np.float32), rng.standard_normal((32, cols), dtype=np.float32), out=weights)
noise = np.empty((64, cols), dtype=np.float32)
for first in range(0, rows, 64):
    block = weights[first:first + 64]
    rng.standard_normal(out=noise[:len(block)], dtype=np.float32)
    noise *= 0.5
    block += noise[:len(block)]
codec.encode(TypedArray(rng.standard_normal((64, 64), dtype=np.float32), "F32"), "warm")
before = high_water()
result = codec.encode(TypedArray(weights, "F32"), "w")
print(json.dumps({"peak": (high_water() - before) / weights.nbytes, "meta": result.meta}))
"""


def _peak_above_the_tensor(codec_id: str, arguments: dict, rows: int, cols: int) -> tuple[float, dict]:
    done = subprocess.run([sys.executable, "-c", _CHILD, codec_id, json.dumps(arguments), str(rows), str(cols)],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.splitlines()[-1])
    return report["peak"], report["meta"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads VmHWM from /proc")
@pytest.mark.parametrize("rows, cols", [(4096, 1024), (1024, 4096)])
@pytest.mark.skipif(lowrank._eigh is np.linalg.eigh, reason="this numpy lacks the float32 eigensolver: lowrank falls back to float64, at twice the memory")
def test_lowrank_peak_is_a_small_multiple_of_the_tensor(rows, cols):
    # float64 SVD of the whole matrix: 9-16 times a float32 tensor above it. Now a Gram matrix of the
    # shorter side and LAPACK's eigen-decomposition of it (five of those), then the factors (1.35 here).
    peak, meta = _peak_above_the_tensor("lowrank", {"energy": 0.9}, rows, cols)
    assert meta["rank"] is not None and meta["rank"] <= 32  # it factored the matrix: the vectors were found
    assert peak < 2.0, f"lowrank peaked at {peak:.2f} times a {rows} x {cols} float32 tensor above it"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads VmHWM from /proc")
def test_codebook_peak_is_a_fraction_of_the_tensor():
    # a float32 copy, float64 powers and int64 indices of the whole tensor: about 6 times it above it.
    # Now the uint8 indices (a quarter), the packed ones (an eighth) and blocks of a few MiB (on 32 MiB: 0.58).
    peak, _ = _peak_above_the_tensor("codebook", {"bits": 4, "iterations": 5}, 8192, 1024)
    assert peak < 1.0, f"codebook peaked at {peak:.2f} times an 8192 x 1024 float32 tensor above it"
