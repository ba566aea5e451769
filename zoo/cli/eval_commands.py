"""eval, and the quality gates that compress --eval applies too."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from zoo.cli.options import Base, Json, Threads
from zoo.cli.output import print_json, stderr, stdout
from zoo.cli.reports import print_quality, print_tensors


def _finite(value: float | None) -> float | None:
    """A gate of NaN passed whatever the figure (a comparison with NaN is false), one of infinity
    judged nothing, and NaN crashed the report that prints it."""
    if value is not None and not math.isfinite(value):
        raise typer.BadParameter(f"{value}: a gate must be a finite number")
    return value


MaxKl = Annotated[Optional[float], typer.Option(
    "--max-kl", min=0, callback=_finite,
    help="Fail (exit 1) when the mean KL divergence (a causal LM's: over the reference's 256 likeliest tokens) is above this.")]
MinCosine = Annotated[Optional[float], typer.Option(
    "--min-cosine", min=-1, max=1, callback=_finite, help="Fail when the mean embedding cosine (encoders; else the weights' cosine) is below this.")]
MaxPplRatio = Annotated[Optional[float], typer.Option("--max-ppl-ratio", min=0, callback=_finite,
                                                      help="Fail when PPL(candidate)/PPL(reference) is above this.")]

@contextmanager
def quality_progress(enabled: bool) -> Iterator[Callable[[str, int, int], None] | None]:
    """A bar per stage (reference, candidate, weights, verifying) on stderr."""
    if not enabled or not stderr.is_terminal:
        yield None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn("{task.description}", style="progress.description", markup=False), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=stderr, transient=True) as progress:
        tasks: dict[str, Any] = {}

        def advance(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = progress.add_task(stage, total=total)
            progress.update(tasks[stage], completed=done, total=total)

        yield advance


class QualityCheck:
    """compress --eval as a `check` for zoo.compress: runs zoo.api.check_quality on the finished
    archive (rebuilt on `base` when it was made against one) and keeps the result to print."""

    def __init__(self, source: Path, gates: Any, base: Path | None = None, quiet: bool = False, label: str | None = None) -> None:
        self.source = source
        self.selection: dict[str, Any] = {}  # compress's include=, exclude=, follow_links=: the files compared
        self.label = label  # what the archive, checked under a temporary name, is called in the figures
        self.gates = gates
        self.base = base
        self.quiet = quiet  # --json: nothing on stderr
        self.progress: Callable[[str, int, int], None] | None = None  # the command's stage bars, when shown
        self.result: Any = None

    def __call__(self, archive: Path) -> None:
        from zoo import api

        if not self.quiet:
            stderr.print(f"evaluating against {self.source}" + (f" (rebuilt on the base {self.base})" if self.base else ""),
                         markup=False, highlight=False)
        self.result = api.check_quality(archive, self.source, self.gates, progress=self.progress, base=self.base, label=self.label,
                                        selection=self.selection)


def quality_check(source: Path, evaluate: bool, max_kl: float | None, min_cosine: float | None, max_ppl_ratio: float | None,
                  base: Path | None = None, quiet: bool = False, pipeline: str = "lossless", label: str = "the compressed model",
                  selection: dict[str, Any] | None = None) -> QualityCheck | None:
    """The check for compress's --eval and gate flags (a gate implies --eval); None without them. A
    gate that cannot judge the source's kind of model is refused before anything is compressed:
    the kind of its files that `selection` (compress's include=, exclude=, follow_links=) keeps, as
    the archive will hold them (--exclude "tokenizer*" leaves weight-space figures only)."""
    from zoo.codecs.pipeline import Pipeline
    from zoo.errors import InputError
    from zoo.evaluate import Gates

    gates = Gates(max_kl, min_cosine, max_ppl_ratio)
    if not (evaluate or gates.given()):
        return None
    if not source.exists():
        raise InputError(f"--eval compares the result with a local model folder or file, and {source} is not one")
    if gates.given() and Pipeline.parse(pipeline).array_stages:  # lossy: judged as the model its config.json names
        from zoo.evaluate.models import Model

        with Model(source, selection=selection) as model:
            kind, _ = model.kind()
        chosen = selection and (selection.get("include") or selection.get("exclude"))
        gates.check_applies(kind, f"{source} (the files --include and --exclude keep)" if chosen else str(source), has_reference=True)
    check = QualityCheck(source, gates, base, quiet, label)
    check.selection = dict(selection or {})
    return check


def eval_command(
    candidate: Annotated[str, typer.Argument(help="A zoo name, a .zoo archive, a model folder or a weights file.", show_default=False)],
    reference: Annotated[Optional[str], typer.Option("--reference", "-r", help="What to compare against (same forms as CANDIDATE).")] = None,
    text: Annotated[Optional[Path], typer.Option(
        "--text", help="UTF-8 text to score (causal LMs), or sentences one per line (encoders; LABEL<TAB>sentence for classifiers). "
                       "Default: the text and sentences shipped with zoo.")] = None,
    max_tokens: Annotated[int, typer.Option("--max-tokens", min=1, help="Score at most this many tokens (an encoder scores whole "
                                                             "sentences: at least the first, however long).")] = 4096,
    kind: Annotated[Optional[str], typer.Option(
        "--kind", help="Override the evaluation picked from config.json: causal-lm, encoder, classifier or weights.")] = None,
    max_kl: MaxKl = None,
    min_cosine: MinCosine = None,
    max_ppl_ratio: MaxPplRatio = None,
    base: Base = None,
    threads: Threads = None,
    as_json: Json = False,
) -> None:
    """Measure a model against a reference: KL divergence and perplexity (causal LMs), embedding
    cosine (encoders), label agreement (classifiers), and weight-space error (any model). An
    archive made with `zoo compress --base` is evaluated as its base plus its differences."""
    from zoo.errors import InputError, ZooError
    from zoo.evaluate import Gates, evaluate
    from zoo.kernels.parallel import resolve_threads

    if text is not None:
        try:
            content = text.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise InputError(f"{text}: cannot read it as UTF-8 text ({getattr(error, 'strerror', None) or error.__class__.__name__})") from None
    with quality_progress(not as_json) as progress:
        result = evaluate(candidate, reference, text=content if text is not None else None, max_tokens=max_tokens, kind=kind,
                          gates=Gates(max_kl, min_cosine, max_ppl_ratio), threads=resolve_threads(threads), progress=progress, base=base)
    if as_json:
        print_json(result.to_dict())
    else:
        if result.kind == "weights":
            print_tensors(result.tensors)
        stdout.print(f"candidate: {candidate}", markup=False, highlight=False)
        if reference:
            stdout.print(f"reference: {reference}", markup=False, highlight=False)
        print_quality(result.to_dict())
    if not result.passed:
        raise ZooError(f"{candidate} fails its quality gates: {'; '.join(result.failures)}")


def register(app: typer.Typer) -> None:
    app.command("eval")(eval_command)
