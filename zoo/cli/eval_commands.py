"""eval, and the quality table that compress --verify and info print too."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from .options import Base, Json
from .output import human_bytes, print_json, stderr, stdout

MaxKl = Annotated[Optional[float], typer.Option("--max-kl", min=0, help="Fail (exit 1) when the mean KL divergence is above this.")]
MinCosine = Annotated[Optional[float], typer.Option(
    "--min-cosine", min=-1, max=1, help="Fail when the mean embedding cosine (encoders; else the weights' cosine) is below this.")]
TorchThreads = Annotated[Optional[int], typer.Option("--threads", "-t", min=1, help="torch threads (default: torch's own choice).")]
MaxPplRatio = Annotated[Optional[float], typer.Option("--max-ppl-ratio", min=0, help="Fail when PPL(candidate)/PPL(reference) is above this.")]

# Figure name -> (label, format). Labels follow llama.cpp's perplexity --kl-divergence where it has one.
_LABELS: dict[str, tuple[str, str]] = {
    "files": ("files", "count"), "bytes": ("bytes compared", "bytes"), "bit_exact": ("bit-exact", "yes/no"),
    "sentences": ("sentences", "count"), "tokens": ("tokens scored", "count"), "windows": ("windows", "count"),
    "ppl": ("PPL(Q)", "value"), "ppl_reference": ("PPL(base)", "value"), "ln_ppl_ratio": ("ln(PPL(Q)/PPL(base))", "value"),
    "ppl_ratio": ("PPL(Q)/PPL(base)", "value"), "kl_mean": ("Mean KLD", "value"), "kl_median": ("Median KLD", "value"),
    "kl_p99": ("99.0% KLD", "value"), "kl_max": ("Maximum KLD", "value"), "top1_agreement": ("Same top p", "percent"),
    "delta_p_mean": ("Mean Δp", "percent"), "delta_p_rms": ("RMS Δp", "percent"),
    "cosine_mean": ("Mean cosine", "cosine"), "cosine_min": ("Minimum cosine", "cosine"),
    "mlm_loss": ("MLM loss", "value"), "mlm_loss_reference": ("MLM loss (base)", "value"),
    "label_agreement": ("Same label", "percent"), "accuracy": ("Accuracy", "percent"), "accuracy_reference": ("Accuracy (base)", "percent"),
}
_HIDDEN = {"kl_mean_stderr", "top_k", "mismatched", "missing", "extra"}


def _format(value: Any, style: str) -> str:
    if value is None:
        return "-"
    if style == "count":
        return f"{value:,}"
    if style == "bytes":
        return human_bytes(value)
    if style == "yes/no":
        return "yes" if value else "NO"
    if style == "percent":
        return f"{100 * value:.3f}%"
    if style == "cosine":
        return f"{value:.6f}"
    return f"{value:.6g}"


def print_quality(record: dict[str, Any], heading: str | None = None) -> None:
    """The figures of an EvalResult.to_dict() or of a stored metadata["verify"], as one table."""
    from rich.table import Table

    if heading:
        stdout.print(heading, markup=False, highlight=False)
    if record.get("base"):
        stdout.print(f"base: {record['base']} (the differences stored against it were added to it)", markup=False, highlight=False,
                     soft_wrap=True)
    table = Table(title=f"quality ({record.get('kind')})", title_justify="left")
    table.add_column("figure")
    table.add_column("value", justify="right")
    metrics = record.get("metrics") or {}
    # In _LABELS' order: a stored record comes back with its keys sorted.
    for name in sorted(metrics, key=lambda n: list(_LABELS).index(n) if n in _LABELS else len(_LABELS)):
        value = metrics[name]
        if name in _HIDDEN or isinstance(value, (list, dict)):
            continue
        label, style = _LABELS.get(name, (name, "value"))
        text = _format(value, style)
        if name == "kl_mean" and metrics.get("kl_mean_stderr") is not None:
            text += f" ± {metrics['kl_mean_stderr']:.2g}"
        table.add_row(label, text)
    weights = record.get("weights")
    if weights and weights.get("elements"):
        sqnr = weights.get("sqnr_db")
        table.add_row("weights: relative error", _format(weights.get("relative_error"), "value"))
        table.add_row("weights: SQNR", "∞ (identical)" if sqnr is None else f"{sqnr:.2f} dB")
        table.add_row("weights: cosine", _format(weights.get("cosine"), "cosine"))
    stdout.print(table)
    for key, what in (("mismatched", "differ"), ("missing", "missing from the archive"), ("extra", "not in the source")):
        for path in metrics.get(key) or []:
            stdout.print(f"  {path}: {what}", markup=False, highlight=False)
    for note in record.get("notes") or []:
        stdout.print(f"note: {note}", markup=False, highlight=False)
    gates = record.get("gates") or {}
    if gates:
        given = ", ".join(f"--{name.replace('_', '-')} {value:g}" for name, value in gates.items())
        stdout.print(f"gates ({given}): {'passed' if record.get('passed') else 'FAILED'}", markup=False, highlight=False)


def _print_tensors(tensors: list[dict[str, Any]]) -> None:
    from rich.table import Table

    table = Table(title="per tensor", title_justify="left")
    for column in ("tensor", "dtype", "shape", "rel. error", "SQNR dB", "cosine"):
        table.add_column(column, justify="left" if column in ("tensor", "dtype", "shape") else "right")
    for t in tensors:
        table.add_row(t["name"], t["dtype"], "×".join(map(str, t["shape"])) or "scalar", _format(t["relative_error"], "value"),
                      "∞" if t["sqnr_db"] is None else f"{t['sqnr_db']:.2f}", _format(t["cosine"], "cosine"))
    stdout.print(table)


@contextmanager
def quality_progress(enabled: bool) -> Iterator[Callable[[str, int, int], None] | None]:
    """A bar per stage (reference, candidate, weights, verifying) on stderr."""
    if not enabled or not stderr.is_terminal:
        yield None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    with Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=stderr, transient=True) as progress:
        tasks: dict[str, Any] = {}

        def advance(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = progress.add_task(stage, total=total)
            progress.update(tasks[stage], completed=done, total=total)

        yield advance


class QualityCheck:
    """compress --verify as a `check` for zoo.compress: runs zoo.api.check_quality on the finished
    archive (rebuilt on `base` when it was made against one) and keeps the result to print."""

    def __init__(self, source: Path, gates: Any, base: Path | None = None, quiet: bool = False) -> None:
        self.source = source
        self.gates = gates
        self.base = base
        self.quiet = quiet  # --json: nothing on stderr
        self.progress: Callable[[str, int, int], None] | None = None  # the command's stage bars, when shown
        self.result: Any = None

    def __call__(self, archive: Path) -> None:
        from .. import api

        if not self.quiet:
            stderr.print(f"verifying against {self.source}" + (f" (rebuilt on the base {self.base})" if self.base else ""),
                         markup=False, highlight=False)
        self.result = api.check_quality(archive, self.source, self.gates, progress=self.progress, base=self.base)


def quality_check(source: Path, verify: bool, max_kl: float | None, min_cosine: float | None, max_ppl_ratio: float | None,
                  base: Path | None = None, quiet: bool = False) -> QualityCheck | None:
    """The check for compress's --verify and gate flags (a gate implies --verify); None without them."""
    from ..errors import InputError
    from ..evaluate import Gates

    gates = Gates(max_kl, min_cosine, max_ppl_ratio)
    if not (verify or gates.given()):
        return None
    if not source.exists():
        raise InputError(f"--verify compares the result with a local model folder or file, and {source} is not one")
    return QualityCheck(source, gates, base, quiet)


def eval_command(
    candidate: Annotated[str, typer.Argument(help="A zoo name, a .zoo archive, a model folder or a weights file.", show_default=False)],
    reference: Annotated[Optional[str], typer.Option("--reference", "-r", help="What to compare against (same forms as CANDIDATE).")] = None,
    text: Annotated[Optional[Path], typer.Option(
        "--text", help="UTF-8 text to score (causal LMs), or sentences one per line (encoders; LABEL<TAB>sentence for classifiers). "
                       "Default: the text and sentences shipped with zoo.")] = None,
    max_tokens: Annotated[int, typer.Option("--max-tokens", min=1, help="Score at most this many tokens.")] = 4096,
    kind: Annotated[Optional[str], typer.Option(
        "--kind", help="Override the evaluation picked from config.json: causal-lm, encoder, classifier or weights.")] = None,
    max_kl: MaxKl = None,
    min_cosine: MinCosine = None,
    max_ppl_ratio: MaxPplRatio = None,
    base: Base = None,
    threads: TorchThreads = None,
    as_json: Json = False,
) -> None:
    """Measure a model against a reference: KL divergence and perplexity (causal LMs), embedding
    cosine (encoders), label agreement (classifiers), and weight-space error (any model). An
    archive made with `zoo compress --base` is evaluated as its base plus its differences."""
    from ..errors import InputError, ZooError
    from ..evaluate import Gates, evaluate

    if text is not None:
        try:
            content = text.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise InputError(f"{text}: cannot read it as UTF-8 text ({getattr(error, 'strerror', None) or error.__class__.__name__})") from None
    with quality_progress(not as_json) as progress:
        result = evaluate(candidate, reference, text=content if text is not None else None, max_tokens=max_tokens, kind=kind,
                          gates=Gates(max_kl, min_cosine, max_ppl_ratio), threads=threads, progress=progress, base=base)
    if as_json:
        print_json(result.to_dict())
    else:
        if result.kind == "weights":
            _print_tensors(result.tensors)
        stdout.print(f"candidate: {candidate}", markup=False, highlight=False)
        if reference:
            stdout.print(f"reference: {reference}", markup=False, highlight=False)
        print_quality(result.to_dict())
    if not result.passed:
        raise ZooError(f"{candidate} fails its quality gates: {'; '.join(result.failures)}")


def register(app: typer.Typer) -> None:
    app.command("eval")(eval_command)
