"""bench and env: the native coder's speed beside its anchors, and which kernels are in use."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from zoo.cli.options import Json
from zoo.cli.output import print_json, print_table, sign, stdout


def bench(
    source: Annotated[Path, typer.Argument(help="A model folder or a .safetensors/.bin/.pt file.", show_default=False)],
    threads: Annotated[int, typer.Option("--threads", "-t", min=1, help="Threads for every coder.")] = 2,
    dtype: Annotated[Optional[list[str]], typer.Option("--dtype", help="BF16, F16 or F32 (repeat for several; default all).")] = None,
    repeat: Annotated[int, typer.Option("--repeat", min=1, help="Timed runs per figure, after one untimed; the best is kept.")] = 3,
    pipeline: Annotated[str, typer.Option("--pipeline", "-p",
                                          help="zoo's lossless pipeline SPEC to measure (lossy ones: zoo sweep).")] = "lossless",
    as_json: Json = False,
) -> None:
    """Ratio and GB/s of zoo's lossless coder beside ZipNN, zstd and blosc2, per dtype."""
    from zoo.evaluate import bench as library
    from zoo.errors import InputError

    if not source.exists():
        raise InputError(f"{source}: no such file or folder")
    dtypes = tuple(dict.fromkeys(d.upper() for d in dtype)) if dtype else library.BENCH_DTYPES  # each once, however often given
    report = library.run(source, threads=threads, dtypes=dtypes, repeat=repeat, spec=pipeline)
    if as_json:
        print_json(report)
        return
    memory = "freed memory reused" if report["memory_recycled"] else "allocator as it comes"  # see zoo.evaluate.bench.recycled_memory
    dot = sign("·", "-")
    title = f"{source} {dot} {report['threads']} threads {dot} {report['machine']} {dot} kernels {report['kernels']} {dot} {memory}"
    columns = ["dtype", "coder", "ratio", "vs zipnn", "compress GB/s", "decompress GB/s", "compress GB/cpu-s", "decompress GB/cpu-s"]
    zipnn = {f["dtype"]: f for f in report["figures"] if f["coder"] == "zipnn"}
    rows = []
    for figure in report["figures"]:
        anchor = zipnn.get(figure["dtype"])
        rows.append([figure["dtype"], figure["coder"], f"{figure['ratio']:.4f}", f"{figure['ratio'] / anchor['ratio']:.3f}" if anchor else "-",
                     f"{figure['compress_gbps']:.2f}", f"{figure['decompress_gbps']:.2f}",
                     f"{figure['compress_gbps_per_cpu']:.2f}", f"{figure['decompress_gbps_per_cpu']:.2f}"])
    print_table(title, columns, rows, right=tuple(columns[2:]), fold=tuple(columns))  # on a narrow terminal, headings fold


def env(as_json: Json = False) -> None:
    """The kernels in use (ZOO_KERNELS forces numpy, scalar, avx2, avx2-loads, avx512 or avx512-ymm) and the CPU features seen."""
    from zoo import kernels as _kernels

    info = _kernels.info()
    if as_json:
        print_json(info)
        return
    stdout.print(f"cpu: {info['cpu']}", markup=False, highlight=False)
    stdout.print(f"kernels: {info['kernels']} ({info['reason']})", markup=False, highlight=False)
    if "available" in info:
        stdout.print(f"available: {', '.join(info['available'])}", markup=False, highlight=False)
        stdout.print(f"cpu features: {' '.join(info['cpu_features']) or 'none of note'}", markup=False, highlight=False)


def register(app: typer.Typer) -> None:
    app.command()(bench)
    app.command()(env)
