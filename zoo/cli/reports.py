"""What zoo prints of an archive and of a quality measurement: the size report (compress, info) and
the quality table (eval, compress --verify, info), in a table or as --json."""

from __future__ import annotations

from typing import Any

from zoo.cli.output import human_bytes, print_json, stdout


def print_report(report, as_json: bool, title: str) -> None:  # noqa: ANN001 - a zoo.api.Report
    if as_json:
        print_json(report.to_dict())
        return
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for column in ("tensor", "dtype", "shape", "original", "stored", "ratio", "bits/weight", "pipeline"):
        table.add_column(column, justify="right" if column in ("original", "stored", "ratio", "bits/weight") else "left")
    for tensor in report.tensors:
        table.add_row(tensor.name, tensor.dtype, "×".join(map(str, tensor.shape)) or "scalar", human_bytes(tensor.original_bytes),
                      human_bytes(tensor.compressed_bytes), f"{tensor.ratio:.3f}", f"{tensor.bits_per_weight:.2f}",
                      ("base + " if tensor.base else "") + tensor.pipeline)
    if report.tensors:
        stdout.print(table)
    stdout.print(
        f"{len(report.files)} files, {len(report.tensors)} tensors: {human_bytes(report.original_bytes)} -> "
        f"{human_bytes(report.compressed_bytes)} (ratio {report.ratio:.3f}, {report.bits_per_weight:.2f} bits per weight)"
    )
    if report.base:
        stdout.print(f"needs its base model to load: {report.base['tensors']} tensors are stored as differences from "
                     f"{report.base['hint']!r} (pass --base)", markup=False, highlight=False)
    if isinstance(report.metadata.get("verify"), dict):
        print_quality(report.metadata["verify"], f"quality, against {report.metadata['verify'].get('reference')}")
    if isinstance(report.metadata.get("budget"), dict):
        print_budget(report.metadata["budget"])


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


def print_tensors(tensors: list[dict[str, Any]]) -> None:
    from rich.table import Table

    table = Table(title="per tensor", title_justify="left")
    for column in ("tensor", "dtype", "shape", "rel. error", "SQNR dB", "cosine"):
        table.add_column(column, justify="left" if column in ("tensor", "dtype", "shape") else "right")
    for t in tensors:
        table.add_row(t["name"], t["dtype"], "×".join(map(str, t["shape"])) or "scalar", _format(t["relative_error"], "value"),
                      "∞" if t["sqnr_db"] is None else f"{t['sqnr_db']:.2f}", _format(t["cosine"], "cosine"))
    stdout.print(table)


def print_budget(record: dict[str, Any]) -> None:
    """What compress --budget stored (zoo.optimize.budget): the search's trail, then its proof."""
    from rich.table import Table

    stdout.print(f"budget {record.get('budget')} ({record.get('reads')}), judged on {record.get('held_out')}; calibrated on "
                 f"{record.get('calibration')}; kept {record.get('pipeline')}", markup=False, highlight=False, soft_wrap=True)
    table = Table(title="budget search, in the order tried", title_justify="left")
    for column in ("candidate", "stored", "bits/weight", "figure", "meets"):
        table.add_column(column, justify="left" if column == "candidate" else "right")
    for step in record.get("trail") or []:
        figure = step.get("figure")
        table.add_row(str(step.get("pipeline", "")).split("|")[0].split(",")[0], human_bytes(step.get("bytes") or 0),
                      f"{step.get('bits_per_weight', 0):.3f}", "-" if figure is None else f"{figure:.6g}", "yes" if step.get("meets") else "no")
    stdout.print(table)
    if isinstance(record.get("proof"), dict):
        print_quality(record["proof"], f"proof: the kept archive on held-out text, against {record['proof'].get('reference')}")
