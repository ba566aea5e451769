"""sweep: several pipelines on one model, a rate-distortion table and plot."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from zoo.cli.options import Force, Json, Threads
from zoo.cli.output import human_bytes, print_json, print_table, sign, stderr, stdout


def _figure(value: object, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}g}" if isinstance(value, float) else str(value)


def sweep(
    model: Annotated[Path, typer.Argument(help="A model folder or weights file.", show_default=False)],
    pipeline: Annotated[list[str], typer.Option("--pipeline", "-p", help="A pipeline SPEC to try; give it once per pipeline.")],
    plot: Annotated[Optional[Path], typer.Option("--plot", help="Write the rate-distortion plot here, in the format its suffix "
                                                 "names (.png, .pdf, .svg, ...).")] = None,
    calib: Annotated[Optional[Path], typer.Option("--calib", help="Calibration text for the stages that use one (bare --calib: the text zoo ships).")] = None,
    base: Annotated[Optional[Path], typer.Option("--base", help="The model MODEL was fine-tuned from: each pipeline stores the tensors it "
                                                 "selects as differences from it, and is evaluated rebuilt on it.", show_default=False)] = None,
    text: Annotated[Optional[Path], typer.Option("--text", help="Evaluation text (default: the text shipped with zoo).")] = None,
    max_tokens: Annotated[Optional[int], typer.Option("--max-tokens", min=16, help="Evaluate on at most this many tokens (an encoder on "
                                                                                         "whole sentences: at least the first).")] = None,
    threads: Threads = None,
    force: Force = False,
    as_json: Json = False,
    ray: Annotated[Optional[str], typer.Option("--ray", metavar="[ADDRESS]", help="Each pipeline with its evaluation a task on the Ray "
                                               "cluster at ADDRESS (bare --ray: RAY_ADDRESS, else a Ray started here).",
                                               show_default=False)] = None,
) -> None:
    """Compress MODEL with each pipeline, evaluate each against MODEL, and print the table."""
    from zoo.evaluate import sweep as library
    from zoo.errors import InputError

    chosen: dict[str, str] = {}
    for spec in pipeline:  # one pipeline given twice, however spelt, is swept once
        chosen.setdefault(_same_pipeline(spec), spec)
    pipeline = list(chosen.values())
    if plot is not None:  # before any work: a sweep takes minutes, and a refusal then would lose its table
        library.check_plot_destination(plot, force)
    evaluation_text = None
    if text is not None:
        try:
            evaluation_text = text.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise InputError(f"{text}: cannot read it as UTF-8 text ({getattr(error, 'strerror', None) or type(error).__name__})") from None
    say = None if as_json else (lambda line: stderr.print(line, markup=False, highlight=False))
    failures: list[dict[str, str]] = []  # {"pipeline", "error"}, as zoo.batch.SweepFailure on Ray

    def failed(pipeline: str, error: str) -> None:
        failures.append({"pipeline": pipeline, "error": error})
        if say is not None:
            stderr.print(f"failed {pipeline}: {error}", markup=False, highlight=False, soft_wrap=True)

    if ray is not None:
        from zoo import batch

        points, lost = batch.sweep(model, pipeline, ray=ray, threads=threads or 1, progress=say, calibration=calib,
                                   text=evaluation_text, max_tokens=max_tokens, base=base)
        for failure in lost:
            failed(failure.pipeline, failure.error)
    else:  # a pipeline that fails is reported and the others still run, as on Ray
        points = library.sweep(model, pipeline, calibration=calib, text=evaluation_text, max_tokens=max_tokens, threads=threads,
                               progress=say, base=base, on_failure=failed)
    if as_json:
        plotted, plot_error = None, None
        if plot is not None and points:
            try:  # a plot that fails late (a full disk, a file that appeared meanwhile, a bug) loses nothing else: the document says why
                plotted = str(library.plot(points, plot, title=f"{model.name}: rate and distortion", force=force))
            except Exception as error:
                plot_error = _plot_failure(error)
        print_json({"model": str(model), "base": None if base is None else str(base), "plot": plotted,
                    **({"plot_error": plot_error} if plot_error else {}), "points": [p.to_dict() for p in points], "failed": failures})
        if failures or plot_error:
            raise typer.Exit(1)
        return
    if not points:
        raise InputError(f"every pipeline failed ({len(failures)})")
    kind = points[0].kind
    figures = {"causal-lm": ("kl_mean", "ppl_ratio", "top1_agreement"), "classifier": ("kl_mean", "label_agreement"),
               "encoder": ("cosine_mean", "cosine_min")}.get(kind, ("weight_sqnr_db", "weight_cosine"))
    against = ["on base"] if base is not None else []  # tensors stored as differences from the base
    columns = ["pipeline", "size", "bits/weight", f"{sign('×', 'x')} vs fp32", *against, *figures, "encode s", "decode s", "frontier"]
    rows = [[point.pipeline, human_bytes(point.archive_bytes), f"{point.bits_per_weight:.3f}", f"{point.ratio_fp32:.2f}",
             *([str(point.base_tensors)] if base is not None else []), *(_figure(point.metrics.get(name)) for name in figures),
             f"{point.encode_seconds:.2f}", f"{point.decode_seconds:.2f}", "*" if point.pareto else ""] for point in points]
    print_table(f"{model} ({kind})" + (f", stored against {base}" if base is not None else ""), columns, rows, right=tuple(columns[1:]),
                fold=tuple(columns))
    if plot is not None:  # after the table, so that a plot that cannot be written loses nothing else
        library.plot(points, plot, title=f"{model.name}: rate and distortion", force=force)
        stdout.print(f"plot: {plot}", highlight=False)
    if failures:
        raise typer.Exit(1)


def _plot_failure(error: Exception) -> str:
    """Why the plot was not written, in the line main() would have ended the command with."""
    from zoo.cli import debugging, error_line, one_line

    if debugging():  # the document is still printed, after the traceback
        import traceback

        traceback.print_exception(error)
    # (a missing package no extra installs: main() shows its traceback, a document says it in one line)
    return error_line(error) or one_line(f"unexpected {type(error).__name__}: {error} (a bug in zoo; ZOO_DEBUG=1 shows the traceback)")


def register(app: typer.Typer) -> None:
    app.command()(sweep)


def _same_pipeline(spec: str) -> str:
    """What makes two SPECs one pipeline (`l2:target_ratio=8` and `=8.0`); a SPEC zoo cannot read
    is its own text, refused by the sweep in its words."""
    from zoo.codecs.pipeline import Pipeline
    from zoo.errors import ZooError

    try:
        return Pipeline.parse(spec).spec()
    except (ZooError, ValueError, TypeError):
        return spec
