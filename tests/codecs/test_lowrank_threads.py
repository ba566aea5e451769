"""lowrank codes the same bytes whatever BLAS's thread count (zoo.codecs.lossy.lowrank.one_blas_thread)."""

import os
import subprocess
import sys
import threading

import numpy as np

from zoo.codecs.lossy.lowrank import one_blas_thread

from tests.conftest import write_safetensors

_COMPRESS = """
import sys
import zoo
zoo.compress(sys.argv[1], sys.argv[2], sys.argv[3])
"""


def _noisy_low_rank(rows: int, cols: int, rank: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(rows, rank)) @ rng.normal(size=(rank, cols)) / np.sqrt(rank) + 0.05 * rng.normal(size=(rows, cols))).astype(np.float32)


def test_lowrank_archives_do_not_change_with_the_blas_thread_count(tmp_path):
    """OpenBLAS sums a product's shares in an order set by its thread count: an archive written
    with OMP_NUM_THREADS=1 (as Ray's workers run) differed from one written here, where the docs
    promise `--ray` stores the same bytes as a local run. (On a one-core machine OpenBLAS takes
    one thread whatever it is told, and this test cannot tell the two apart.)"""
    source = write_safetensors(tmp_path / "m.safetensors", {"tall.weight": ("F32", _noisy_low_rank(384, 160, 24, 0)),
                                                            "wide.weight": ("F32", _noisy_low_rank(96, 256, 12, 1))})
    for spec in ("lowrank:ratio=0.5", "lowrank:energy=0.9"):
        archives = []
        for threads in ("1", "2"):
            archive = tmp_path / f"{spec.replace(':', '_')}_{threads}.zoo"
            environment = {**os.environ, "OMP_NUM_THREADS": threads, "OPENBLAS_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
            subprocess.run([sys.executable, "-c", _COMPRESS, str(source), str(archive), spec], env=environment, check=True)
            archives.append(archive.read_bytes())
        assert archives[0] == archives[1], spec


def test_one_blas_thread_holds_in_any_thread_one_block_at_a_time():
    """In any thread, after any other (threadpoolctl lets only the thread that set OpenBLAS's count
    set it again until its block ends), and one block at a time (a block that ended while another
    thread's ran would give that one its threads back)."""
    from threadpoolctl import threadpool_info

    def blas_threads() -> set[int]:
        return {pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"}

    before = blas_threads()
    with one_blas_thread():
        assert blas_threads() <= {1}
    assert blas_threads() == before
    seen, entered = [], threading.Event()

    def other() -> None:
        with one_blas_thread():
            seen.append(blas_threads())
            entered.set()

    thread = threading.Thread(target=other)
    with one_blas_thread():
        thread.start()
        assert not entered.wait(0.2)  # the other thread waits: leaving first, it would give this one its threads back
    thread.join()
    assert seen == [{1} if before else set()] and blas_threads() == before
