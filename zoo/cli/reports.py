"""What zoo prints of an archive and of a quality measurement: the size report (compress, info) and
the quality table (eval, compress --eval, info), in a table or as --json."""

from __future__ import annotations

import json
import math
from typing import Any

from zoo.cli.output import human_bytes, print_json, print_table, sign, stdout

OPAQUE_SHOWN = 10  # files kept as bytes named in compress's summary (all of them with -v, and in zoo info)


def count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


def print_report(report, as_json: bool, title: str, verbose: bool = True) -> None:  # noqa: ANN001 - a zoo.api.Report
    """The size report: with `verbose`, a row per tensor (zoo info, compress --verbose), one table
    per pipeline so that no row repeats it; else a row per pipeline when there are several. Then
    the summary line."""
    if as_json:
        print_json(report.to_dict())
        return
    groups: dict[str, list[Any]] = {}
    for tensor in report.tensors:
        groups.setdefault(("base + " if tensor.base else "") + tensor.pipeline, []).append(tensor)
    columns = ["tensor", "dtype", "shape", "original", "stored", "ratio", "bits/w"]
    right = ("original", "stored", "ratio", "bits/w", "tensors")
    if verbose:
        for pipeline, tensors in groups.items():
            rows = [[t.name, t.dtype, sign("×", "x").join(map(str, t.shape)) or "scalar", human_bytes(t.original_bytes), human_bytes(t.compressed_bytes),
                     f"{t.ratio:.3f}", f"{t.bits_per_weight:.2f}"] for t in tensors]
            print_table(f"{title}: {pipeline}" if len(groups) == 1 else f"{pipeline} ({count(len(tensors), 'tensor')})", columns, rows, right)
    elif len(groups) > 1:
        rows = []
        for pipeline, tensors in groups.items():
            original, stored = sum(t.original_bytes for t in tensors), sum(t.compressed_bytes for t in tensors)
            weights = sum(math.prod(t.shape) for t in tensors)
            rows.append([pipeline, str(len(tensors)), human_bytes(original), human_bytes(stored), f"{stored / original if original else 1:.3f}",
                         f"{8 * stored / weights if weights else 0:.2f}"])
        print_table(title, ["pipeline", "tensors", "original", "stored", "ratio", "bits/w"], rows, right)
    per_weight = f", {report.bits_per_weight:.2f} bits per weight" if report.parameters else ""  # none without weights
    line = (f"{count(len(report.files), 'file')}, {count(len(report.tensors), 'tensor')}: {human_bytes(report.original_bytes)} -> "
            f"{human_bytes(report.compressed_bytes)} (ratio {report.ratio:.3f}{per_weight})")
    if not verbose and len(groups) == 1:
        line += f", every tensor {next(iter(groups))}"
    stdout.print(line, markup=False, highlight=False)
    opaque = report.opaque
    if opaque:
        shown = opaque if verbose or len(opaque) <= OPAQUE_SHOWN else [*opaque[:OPAQUE_SHOWN], f"and {len(opaque) - OPAQUE_SHOWN} more (-v lists them)"]
        stdout.print(f"kept as bytes, not read as tensors: {'; '.join(shown)}", markup=False, highlight=False, soft_wrap=True)
    if report.base:
        held = report.base["tensors"]
        stdout.print(f"needs its base model to load: {count(held, 'tensor')} {'is' if held == 1 else 'are'} stored as "
                     f"{'a difference' if held == 1 else 'differences'} from "
                     f"{report.base['hint']!r} (pass --base)", markup=False, highlight=False)
    quality = stored_quality(report.metadata)
    if quality is not None:
        print_quality(quality, f"quality, against {quality.get('reference')}")
    if isinstance(report.metadata.get("budget"), dict):
        print_budget(report.metadata["budget"])


def compressed_document(report, output: Any = None, entry: Any = None, new: bool = True) -> dict[str, Any]:  # noqa: ANN001
    """What `compress --json` prints, one shape wherever the archive went: the size report, where
    it was written (`output`, or None), and the zoo entry it became (`zoo`, or None). `kept` is
    false only where a quality gate tripped (zoo.cli.archive_commands), and no archive was kept."""
    return {**report.to_dict(), "kept": True, "output": None if output is None else str(output),
            "zoo": None if entry is None else {**entry.to_dict(), "ref": entry.ref, "new": new, "sharing": _sharing(entry, stored=True)}}


def _sharing(entry: Any, stored: bool = False) -> dict[str, Any] | None:
    """Store.sharing; None, with `stored` (compress's summary of what it just stored), where the
    manifest cannot be read now: removed or replaced by another command meanwhile, the store done."""
    from zoo.hub.store import Store, StoreError

    try:
        return Store().sharing(entry)
    except StoreError:
        if stored:
            return None
        raise


def sharing_line(entry: Any, found: dict[str, Any] | None = None) -> str:
    """What a model shares with the rest of the zoo (`found`: Store.sharing's, read here when not given), in one line."""
    found = _sharing(entry) if found is None else found
    line = (f"in the zoo: {found['shared']} of its {found['objects']} objects ({human_bytes(found['shared_bytes'])}) are shared with "
            f"other models; it adds {human_bytes(found['adds_bytes'])}")
    if found["base"]:
        from zoo.hub.store import Store, base_standing

        standing = base_standing(found["base"], {e.ref: e.commit for e in Store().entries()})  # as zoo ls says it
        held = found["base"]["tensors"]
        line += (f"; {count(held, 'tensor')} {'is' if held == 1 else 'are'} stored as {'an XOR' if held == 1 else 'XORs'} against "
                 f"{found['base']['ref']}{', ' + standing if standing else ''}")
    return line


def print_compressed(report, as_json: bool, verbose: bool, output: Any = None, entry: Any = None, new: bool = True) -> None:  # noqa: ANN001
    """compress's result: the summary (a row per tensor with `verbose`), and the name in the zoo."""
    if as_json:
        print_json(compressed_document(report, output, entry, new))
        return
    print_report(report, False, str(output) if entry is None else entry.ref, verbose)
    if entry is not None:
        found = _sharing(entry, stored=True)
        if found is not None:
            stdout.print(sharing_line(entry, found), markup=False, highlight=False)
        stdout.print(f"{'stored' if new else 'already in the zoo:'} {entry.ref}", markup=False, highlight=False)


def stored_quality(metadata: dict[str, Any]) -> dict[str, Any] | None:
    """The figures `compress --eval` stored in an archive: metadata["quality"], or "verify" in
    archives written before the option was renamed from --verify."""
    return next((metadata[key] for key in ("quality", "verify") if isinstance(metadata.get(key), dict)), None)


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
    """A figure as `style` shows it; a figure that is no number is shown as it is stored (JSON's
    "NaN" as result.json_safe writes it, or whatever an archive from elsewhere holds)."""
    if value is None:
        return "-"
    if style == "yes/no" and isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, str):
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return json.dumps(value, default=str)
    if style == "count":
        return f"{value:,}"
    if style == "bytes":
        return human_bytes(value)
    if style == "percent":
        return f"{100 * value:.3f}%"
    if style == "cosine":
        return f"{value:.6f}"
    if style == "dB":
        return f"{value:.2f}"
    return f"{value:.6g}"


def print_quality(record: dict[str, Any], heading: str | None = None) -> None:
    """The figures of an EvalResult.to_dict() or of a stored_quality(), as one table."""
    if heading:
        stdout.print(heading, markup=False, highlight=False)
    if record.get("base"):
        stdout.print(f"base: {record['base']} (the differences stored against it were added to it)", markup=False, highlight=False,
                     soft_wrap=True)
    rows = []
    # every field as zoo writes it, or left out: an archive from elsewhere may hold any JSON there
    metrics = record.get("metrics") if isinstance(record.get("metrics"), dict) else {}
    # In _LABELS' order: a stored record comes back with its keys sorted.
    for name in sorted(metrics, key=lambda n: list(_LABELS).index(n) if n in _LABELS else len(_LABELS)):
        value = metrics[name]
        if name in _HIDDEN or isinstance(value, (list, dict)):
            continue
        label, style = _LABELS.get(name, (name, "value"))
        text = _format(value, style)
        if name == "kl_mean" and isinstance(metrics.get("kl_mean_stderr"), float):
            text += f" ± {metrics['kl_mean_stderr']:.2g}"
        rows.append([label, text])
    weights = record.get("weights")
    if isinstance(weights, dict) and weights.get("relative_error") is not None:  # an integer-only model's: identical, no element counted
        sqnr = weights.get("sqnr_db")
        rows.append(["weights: relative error", _format(weights.get("relative_error"), "value")])
        rows.append(["weights: SQNR", f"{sign('∞', 'inf')} (identical)" if sqnr is None else f"{_format(sqnr, 'dB')} dB"])
        rows.append(["weights: cosine", _format(weights.get("cosine"), "cosine")])
    print_table(f"quality ({record.get('kind')})", ["figure", "value"], rows, ("value",))
    for key, what in (("mismatched", "differ"), ("missing", "missing from the archive"), ("extra", "not in the source")):
        for path in _listed(metrics.get(key)):
            stdout.print(f"  {path}: {what}", markup=False, highlight=False)
    for note in _listed(record.get("notes")):
        stdout.print(f"note: {note}", markup=False, highlight=False)
    gates = record.get("gates")
    if isinstance(gates, dict) and gates:
        # a string is a gate stored as JSON holds NaN ("NaN"): archives from before such gates were refused
        given = ", ".join(f"--{name.replace('_', '-')} {_format(value, 'value')}" for name, value in gates.items())
        stdout.print(f"gates ({given}): {'passed' if record.get('passed') else 'FAILED'}", markup=False, highlight=False)


def _listed(value: Any) -> list[Any]:
    """A stored list's items; a lone value as one; nothing for none."""
    return value if isinstance(value, list) else [] if value is None or value == "" else [value]


def print_tensors(tensors: list[dict[str, Any]]) -> None:
    if not tensors:  # no float tensor, and none that differs
        return
    rows = [[t["name"], t["dtype"], sign("×", "x").join(map(str, t["shape"])) or "scalar", _format(t["relative_error"], "value"),
             sign("∞", "inf") if t["sqnr_db"] is None else f"{t['sqnr_db']:.2f}", _format(t["cosine"], "cosine")] for t in tensors]
    print_table("per tensor", ["tensor", "dtype", "shape", "rel. error", "SQNR dB", "cosine"], rows, ("rel. error", "SQNR dB", "cosine"))


def _budget_limit(text: Any) -> float | None:
    """The limit of a stored budget ("cosine=0.999"), or None where it is not one."""
    from zoo.errors import InputError
    from zoo.evaluate.budget import Budget

    try:
        return Budget.parse(str(text)).limit
    except InputError:
        return None


def _number(value: Any, shown: Any) -> str:
    return shown(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else _format(value, "value")


def print_budget(record: dict[str, Any]) -> None:
    """What compress --budget stored (zoo.evaluate.budget): the search's trail, then its proof."""
    judged = (f"judged on {record['held_out']}; calibrated on {record.get('calibration')}" if record.get("held_out")
              else "judged on the weights alone")  # a model zoo does not run
    stdout.print(f"budget {record.get('budget')} ({record.get('reads')}), {judged}; kept {record.get('pipeline')}",
                 markup=False, highlight=False, soft_wrap=True)
    from zoo.evaluate.result import figure_text

    limit = _budget_limit(record.get("budget"))
    columns = ["candidate", "stored", "bits/weight", "figure", "meets"]
    steps = [step for step in _listed(record.get("trail")) if isinstance(step, dict)]
    rows = [[str(step.get("pipeline", "")).split("|")[0].split(",")[0], _number(step.get("bytes"), human_bytes),
             _number(step.get("bits_per_weight"), "{:.3f}".format),
             _format(step.get("figure"), "value") if limit is None or not isinstance(step.get("figure"), float)
             else figure_text(step["figure"], limit), "yes" if step.get("meets") else "no"] for step in steps]
    print_table("budget search, in the order tried", columns, rows, right=tuple(columns[1:]), fold=tuple(columns))
    if isinstance(record.get("proof"), dict):
        # a model zoo does not run is judged on its weights alone: no text was read
        measured = "on held-out text" if record.get("held_out") else "by its weights alone"
        print_quality(record["proof"], f"proof: the kept archive {measured}, against {record['proof'].get('reference')}")
