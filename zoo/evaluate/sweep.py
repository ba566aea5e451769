"""The rate-distortion sweep: one model through several pipelines, each judged against the original.

For each pipeline: compress (timed), read every tensor back (timed: the decode a user pays at
load), evaluate against the original with zoo.evaluate, and keep the size. The table has bits
per weight (whole archive over the float weights), the ratio to float32, the quality figures
of the model's kind and both times; `plot` draws distortion against rate and marks the Pareto
frontier: the points no other point beats on both size and quality.

With a base (the model MODEL was fine-tuned from), each pipeline stores the tensors it selects as
their differences from it (zoo.container.delta), and the model evaluated is the base plus the decoded
differences; the decode time includes adding them back.

A pipeline that fails (a codec that refuses the weights) need not end the sweep: given
`on_failure`, it is reported there and the others still run.
"""

from __future__ import annotations

import math
import os
import re
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from zoo.refs import open_base
from zoo.errors import InputError, ZooError, ZooWarning
from zoo.codecs.pipeline import Pipeline
from zoo.container.format import current_umask
from zoo.hub import temporaries
from zoo.signals import signals_held, written

SCRATCH = "zoo-sweep-"  # the candidates' folder: SCRATCH<pid>-<random>, in TMPDIR unless told
# Distortion (lower is better) of each kind, for the plot and the frontier: name, axis label, transform.
DISTORTION = {
    "causal-lm": ("kl_mean", "mean KL to the original (nats per token)"),
    "classifier": ("kl_mean", "mean KL of the class distribution (nats)"),
    "encoder": ("cosine_mean", "1 - mean cosine of the embeddings"),
    "weights": ("weight_cosine", "1 - cosine of the weights"),
}

# The plot's formats, named by its suffix: matplotlib's, less pgf (it needs a LaTeX install) and
# raw/rgba (bare pixels no viewer opens).
PLOT_FORMATS = ("png", "pdf", "svg", "svgz", "eps", "ps", "jpg", "jpeg", "tif", "tiff", "webp")


@dataclass
class SweepPoint:
    pipeline: str
    archive_bytes: int
    original_bytes: int
    parameters: int
    encode_seconds: float
    decode_seconds: float
    kind: str
    metrics: dict[str, Any] = field(default_factory=dict)
    pareto: bool = False
    base_tensors: int = 0  # how many tensors were stored as differences from the base

    @property
    def bits_per_weight(self) -> float:
        return 8 * self.archive_bytes / self.parameters if self.parameters else math.nan

    @property
    def ratio_fp32(self) -> float:
        """How many times smaller than the float weights stored as float32."""
        return 4 * self.parameters / self.archive_bytes if self.archive_bytes else math.nan

    @property
    def distortion(self) -> float:
        name = DISTORTION.get(self.kind, DISTORTION["weights"])[0]
        value = self.metrics.get(name)
        if value is None:
            return math.nan
        return 1.0 - value if "cosine" in name else value

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "bits_per_weight": self.bits_per_weight, "ratio_fp32": self.ratio_fp32, "distortion": self.distortion}


def _headline(result: Any) -> dict[str, Any]:
    figures = dict(result.metrics)
    if result.weights:
        figures.update({f"weight_{k}": v for k, v in result.weights.items() if isinstance(v, (int, float)) or v is None})
    return {k: v for k, v in figures.items() if isinstance(v, (int, float, bool)) or v is None}


def sweep(
    model: str | os.PathLike[str],
    pipelines: list[str],
    *,
    calibration: str | os.PathLike[str] | None = None,
    text: str | None = None,
    max_tokens: int | None = None,
    threads: int | None = None,
    workdir: str | os.PathLike[str] | None = None,
    progress: Callable[[str], None] | None = None,
    base: str | os.PathLike[str] | None = None,
    on_failure: Callable[[str, str], None] | None = None,
) -> list[SweepPoint]:
    """Compress `model` with each pipeline and evaluate each result against it; with `base`, each
    archive is made against that base and evaluated rebuilt on it (see compress(base=...)).
    With `on_failure`, a pipeline that fails with a ZooError or OSError is handed to it as
    (pipeline, message) and the sweep goes on without it; without, that error ends the sweep."""
    if not pipelines:
        raise InputError("give at least one pipeline to sweep")
    specs = [Pipeline.parse(spec).spec() for spec in pipelines]  # every spec checked before any work
    if not Path(model).exists():
        raise InputError(f"{model}: no such file or folder")
    from zoo.container.format import refuse_an_archive
    from zoo.sources.folder import float_weights

    if Path(model).is_file():
        refuse_an_archive(Path(model))  # its weights are in it, but a sweep compresses a model, as compress does
    if not float_weights(model):  # bits per weight, the frontier's axis, counts float weights
        raise InputError(f"{model}: no float weights to sweep (its tensors are integers, or it has none)")
    if text is not None:
        from zoo.evaluate.core import check_text

        check_text(model, text)  # once, naming the model; each pipeline's evaluation would name its archive
    options: dict[str, Any] = {} if max_tokens is None else {"max_tokens": max_tokens}
    points = []
    with ExitStack() as stack:
        # Opened once, so that a base that is no model fails before the first pipeline runs.
        base_model = stack.enter_context(open_base(base)) if base is not None else None
        # locked while the sweep runs: what a killed one left there, the next removes
        where = Path(workdir) if workdir is not None else Path(tempfile.gettempdir())
        scratch = stack.enter_context(temporaries.locked_temporary(temporaries.sweep_scratch(where, SCRATCH), SCRATCH, is_dir=True))
        for number, (given, spec) in enumerate(zip(pipelines, specs)):
            if progress:
                progress(f"[{number + 1}/{len(specs)}] {given}")
            archive = Path(scratch) / f"candidate-{number}.zoo"
            try:
                points.append(_measure(model, given, spec, archive, base, base_model, calibration, text, threads, options))
            except (ZooError, OSError) as error:  # as batch's tasks fail: what a user can act on, not a bug
                if on_failure is None:
                    raise
                on_failure(given, _one_line(error))
            finally:
                archive.unlink(missing_ok=True)  # the next candidate needs the room
    mark_pareto(points)
    return points


def _measure(model: str | os.PathLike[str], given: str, spec: str, archive: Path, base: Any, base_model: Any,
             calibration: Any, text: str | None, threads: int | None, options: dict[str, Any]) -> SweepPoint:
    """One pipeline: compress (timed), read every tensor back (timed), evaluate."""
    from zoo import api
    from zoo.evaluate import evaluate

    started = time.perf_counter()
    report = api.compress(model, archive, spec, threads=threads, force=True, calibration=calibration, base=base)
    encode_seconds = time.perf_counter() - started
    started = time.perf_counter()
    with api.open_archive(archive, base_model) as opened:
        for name in opened.keys():
            opened.read_tensor(name)
    decode_seconds = time.perf_counter() - started
    result = evaluate(archive, model, text=text, base=base if report.base else None, **options)
    return SweepPoint(given, report.compressed_bytes, report.original_bytes, report.parameters, encode_seconds, decode_seconds,
                      result.kind, _headline(result), base_tensors=report.base["tensors"] if report.base else 0)


def _one_line(error: Exception) -> str:
    """An error as the CLI would print it: an OSError with its file, anything else its message."""
    if isinstance(error, OSError) and error.strerror:
        return f"{error.strerror}: {error.filename}" if error.filename else error.strerror
    return " ".join(str(error).split()) or type(error).__name__


def mark_pareto(points: list[SweepPoint]) -> None:
    """A point is on the frontier when no other is at least as small and as good, and better in one."""
    for point in points:
        point.pareto = not math.isnan(point.distortion) and not any(
            other is not point and not math.isnan(other.distortion)
            and other.archive_bytes <= point.archive_bytes and other.distortion <= point.distortion
            and (other.archive_bytes < point.archive_bytes or other.distortion < point.distortion)
            for other in points
        )


def plot_format(path: str | os.PathLike[str]) -> str:
    """The format the plot's suffix names, or a one-line refusal naming those zoo writes."""
    suffix = Path(path).suffix.lower().lstrip(".")
    if suffix not in PLOT_FORMATS:
        raise InputError(f"{path}: the plot's suffix names its format, one of {', '.join('.' + name for name in PLOT_FORMATS)} "
                         f"({'not ' + Path(path).suffix if suffix else 'it has none'})")
    return suffix


def check_plot_destination(path: str | os.PathLike[str], force: bool = False) -> None:
    """Everything that would stop the plot from being written, checked before the sweep's work:
    its format, what is there (as for every output, api.check_output: a file or link only with
    force, never a device, a pipe or a link to one), its folder, and that a file can be made there."""
    from zoo import api

    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path} is a folder; give the plot's file name")
    plot_format(path)
    api.check_output(path, force, is_dir=False)
    try:  # made and removed at once: permissions alone do not tell (root, read-only mounts, /proc)
        with temporaries.locked_temporary(path.parent, temporaries.temporary_prefix(path), is_dir=False):
            pass  # named as the plot's temporary is, which a later run removes if this one is killed here
    except OSError as error:
        raise InputError(f"{path}: cannot write the plot there ({error.strerror or type(error).__name__})") from None


def plot(points: list[SweepPoint], path: str | os.PathLike[str], title: str | None = None, force: bool = False) -> Path:
    """Distortion against bits per weight, log scale, frontier joined and ringed; written in the
    format its suffix names (PLOT_FORMATS) to a temporary name, then put in place as every output
    is (temporaries.replace): without `force` only where nothing is, so a file that appeared while
    the sweep ran or the plot was drawn is left alone."""
    from zoo import api

    path = Path(path)
    file_format = plot_format(path)
    api.check_output(path, force, is_dir=False)  # again: the sweep took minutes, and a file (or a pipe) may be there now
    import matplotlib

    matplotlib.use("Agg")  # no display here, and never pick one up from the environment
    import matplotlib.pyplot as plt

    kind = points[0].kind if points else "weights"
    label = DISTORTION.get(kind, DISTORTION["weights"])[1]
    usable = [p for p in points if not math.isnan(p.distortion)]
    figure, axes = plt.subplots(figsize=(7.5, 4.8), dpi=120)
    floor = min([p.distortion for p in usable if p.distortion > 0] or [1e-9]) / 10
    for point in usable:
        y = max(point.distortion, floor)
        axes.scatter(point.bits_per_weight, y, s=40, color="tab:blue" if point.pareto else "tab:gray", zorder=3)
        # the user's words drawn as written: matplotlib read $...$ as maths, and refused `include=$\foo$` after the sweep's work
        axes.annotate(point.pipeline, (point.bits_per_weight, y), textcoords="offset points", xytext=(6, 4), fontsize=7,
                      parse_math=False)
    frontier = sorted((p for p in usable if p.pareto), key=lambda p: p.bits_per_weight)
    if frontier:
        axes.plot([p.bits_per_weight for p in frontier], [max(p.distortion, floor) for p in frontier],
                  color="tab:blue", linewidth=1.2, label="Pareto frontier", zorder=2)
        axes.scatter([p.bits_per_weight for p in frontier], [max(p.distortion, floor) for p in frontier],
                     s=120, facecolors="none", edgecolors="tab:blue", zorder=4)
        axes.legend(loc="upper right", fontsize=8)
    axes.set_yscale("log")
    axes.set_xlabel("bits per weight (whole archive)")
    axes.set_ylabel(label + (" (0 drawn at the floor)" if any(p.distortion <= 0 for p in usable) else ""))
    axes.set_title(title or "rate and distortion", fontsize=10, parse_math=False)  # a model's name, as a pipeline's
    axes.grid(True, which="both", linewidth=0.3)
    try:
        with _missing_glyphs_said_once(path):  # the text is laid out, and its glyphs looked up, from here
            figure.tight_layout()
            # named and locked as compress's are, so that a later run removes one a killed run left
            with temporaries.locked_temporary(path.parent, temporaries.temporary_prefix(path), is_dir=False) as temporary:
                figure.savefig(temporary, format=file_format)
                os.chmod(temporary, 0o666 & ~current_umask())  # made private; a plot is an ordinary file
                with signals_held():  # in place and said so, or neither
                    temporaries.replace(temporary, path, force)
                    written(str(path))
    except OSError as error:  # the user's path, not the temporary's
        raise InputError(f"{path}: cannot write the plot there ({error.strerror or type(error).__name__})") from None
    finally:
        plt.close(figure)
    return path


@contextmanager
def _missing_glyphs_said_once(path: Path) -> Iterator[None]:
    """matplotlib's warning for each character its font lacks (a CJK pipeline or model name), which
    Python printed with a line of zoo's source, as one ZooWarning naming them all; any other warning
    passes on as it came."""
    caught: list[warnings.WarningMessage] = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")  # each character once, not only the first line's
            yield
    finally:
        missing: list[str] = []
        for warning in caught:
            glyph = re.match(r"Glyph (\d+)\b.*\bmissing from", str(warning.message))
            if glyph is None or not issubclass(warning.category, UserWarning):
                warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno, source=warning.source)
            elif chr(int(glyph[1])) not in missing:
                missing.append(chr(int(glyph[1])))
        if missing:
            warnings.warn(ZooWarning(f"{path}: the plot's font has no glyph for {''.join(missing)}, drawn as empty boxes"), stacklevel=2)
