"""What an evaluation returns, and the gates that judge it. No torch here: the CLI and the
catalogue read these without paying for the import."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from zoo.errors import InputError, ZooError


def exact_text(number: float) -> str:
    """`number` as `:g` writes it where that reads back as it, else as its shortest exact text: a
    promise of cosine=0.9999999 is not written cosine=1."""
    text = f"{number:g}"
    return text if float(text) == number else repr(float(number))


def figure_text(figure: float, limit: float) -> str:
    """`figure` to 6 significant digits, or to as many more as keep it on its own side of `limit`
    (a cosine of 0.9999999002 that misses 0.9999999 is not printed as 1)."""
    side = (figure > limit) - (figure < limit)
    for digits in range(6, 18):
        text = f"{figure:.{digits}g}"
        shown = float(text)
        if not math.isfinite(figure) or (shown > limit) - (shown < limit) == side:
            return text
    return repr(figure)


def json_safe(value: Any) -> Any:
    """`value` with every float that JSON cannot hold (NaN, a weight SQNR of minus infinity) as
    the string "NaN", "Infinity" or "-Infinity": what --json prints and what an archive's header
    stores is read by strict parsers too (jq, JavaScript), which refuse the bare words."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else "Infinity" if value > 0 else "-Infinity"
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    return value


class QualityGateError(ZooError):
    """A compressed model is worse than a gate allows. Carries the result so it can be shown."""

    def __init__(self, message: str, result: EvalResult) -> None:
        super().__init__(message)
        self.result = result
        self.ref: str | None = None  # NAME@REVISION:VARIANT, where the model was going into a zoo


@dataclass
class EvalResult:
    """Figures of one candidate against one reference (or alone, where that means something).

    metrics: the figures of the kind (see zoo.evaluate); weights: size-weighted totals of the
    weight-space figures, tensors: the same per tensor; failures: the gates that tripped; base:
    the base model an archive's stored differences were added to, when one was given."""

    kind: str
    candidate: str
    reference: str | None
    metrics: dict[str, Any] = field(default_factory=dict)
    weights: dict[str, Any] | None = None
    tensors: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    gates: dict[str, float] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    seconds: float | None = None
    base: str | None = None

    @property
    def passed(self) -> bool:
        return not self.failures

    def summary(self) -> str:
        """One line for listings such as `zoo ls`."""
        m = self.metrics
        if self.kind == "lossless":
            return f"bit-exact ({m['files']} files)" if m.get("bit_exact") else f"NOT bit-exact: {len(m.get('mismatched', []))} of {m['files']} files differ"
        parts = []
        if self.kind == "causal-lm":
            if m.get("kl_mean") is not None:
                parts += [f"KLD {m['kl_mean']:.3g}", f"top-1 {100 * m['top1_agreement']:.1f}%", f"PPL x{m['ppl_ratio']:.4f}"]
            else:
                parts.append(f"PPL {m['ppl']:.4g}")
        elif self.kind == "encoder":
            if m.get("cosine_mean") is not None:
                parts.append(f"cosine {m['cosine_mean']:.5f} (min {m['cosine_min']:.5f})")
            if m.get("mlm_loss") is not None:
                parts.append(f"MLM loss {m['mlm_loss']:.4g}")
        elif self.kind == "classifier":
            if m.get("label_agreement") is not None:
                parts += [f"agreement {100 * m['label_agreement']:.1f}%", f"KLD {m['kl_mean']:.3g}"]
            if m.get("accuracy") is not None:
                parts.append(f"accuracy {100 * m['accuracy']:.1f}%")
        if self.weights and self.weights.get("cosine") is not None:
            sqnr = self.weights["sqnr_db"]
            parts.append(f"weights SQNR {'inf' if sqnr is None else f'{sqnr:.1f}'} dB")
        return ", ".join(parts) or self.kind

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "candidate": self.candidate,
            "reference": self.reference,
            "base": self.base,
            "passed": self.passed,
            "summary": self.summary(),
            "metrics": self.metrics,
            "weights": self.weights,
            "gates": self.gates,
            "failures": self.failures,
            "notes": self.notes,
            "seconds": self.seconds,
            "tensors": self.tensors,
        }

    def headline(self) -> dict[str, float]:
        """The two or three figures that say most about this kind."""
        names = {"causal-lm": ("kl_mean", "top1_agreement", "ppl_ratio"), "encoder": ("cosine_mean", "cosine_min"),
                 "classifier": ("label_agreement", "kl_mean", "accuracy")}.get(self.kind, ())
        figures = {name: self.metrics[name] for name in names if self.metrics.get(name) is not None}
        if not figures and self.kind == "weights" and self.weights:
            figures = {f"weight_{name}": self.weights[name] for name in ("sqnr_db", "cosine") if self.weights.get(name) is not None}
        return figures

    def record(self) -> dict[str, Any]:
        """What `zoo compress --eval` stores under metadata["quality"]: the headline figures at
        the top (the zoo catalogue lists every number found there), every figure under "metrics"
        and "weights". Left out: the per-tensor list, which would grow the header with the model,
        the candidate's name (the archive itself, under a temporary name at the time) and the time."""
        record = self.to_dict()
        for name in ("tensors", "candidate", "seconds"):
            del record[name]
        return json_safe({**self.headline(), **record})


@dataclass(frozen=True)
class Gates:
    """Thresholds a candidate must meet. Which figure each one reads depends on the kind:

    max_kl: mean KL divergence per token (causal LM) or per sentence (classifier).
    min_cosine: mean cosine of pooled embeddings (encoder); for every other kind, the size-weighted
        cosine of the weights.
    max_ppl_ratio: PPL(candidate) / PPL(reference) (causal LM).
    A bit-exact (lossless) result passes every gate."""

    max_kl: float | None = None
    min_cosine: float | None = None
    max_ppl_ratio: float | None = None

    def __post_init__(self) -> None:
        for name, value in self.given().items():
            if not math.isfinite(value):  # NaN passed every figure (the comparison is false) and infinity judged nothing
                raise InputError(f"{name}={value}: a gate must be a finite number")
        # as the CLI's options take them: a gate out of range fails (or passes) every model
        if self.max_kl is not None and self.max_kl < 0:
            raise InputError(f"max_kl={self.max_kl}: a KL divergence is never below 0")
        if self.max_ppl_ratio is not None and self.max_ppl_ratio < 0:
            raise InputError(f"max_ppl_ratio={self.max_ppl_ratio}: a perplexity ratio is never below 0")
        if self.min_cosine is not None and not -1 <= self.min_cosine <= 1:
            raise InputError(f"min_cosine={self.min_cosine}: a cosine lies between -1 and 1")

    def given(self) -> dict[str, float]:
        return {name: value for name, value in (("max_kl", self.max_kl), ("min_cosine", self.min_cosine),
                                                ("max_ppl_ratio", self.max_ppl_ratio)) if value is not None}

    def check_applies(self, kind: str, candidate: str, has_reference: bool) -> None:
        """Refuse, before any work is done, a gate that cannot judge this kind of evaluation."""
        if kind == "lossless":
            return
        for name in self.given():
            flag = "--" + name.replace("_", "-")
            if (name == "max_kl" and kind not in ("causal-lm", "classifier")) or (name == "max_ppl_ratio" and kind != "causal-lm"):
                raise InputError(f"{flag} does not apply to {candidate}, which is evaluated as {_article(kind)}")
            if not has_reference:
                raise InputError(f"{flag} needs a reference to compare {candidate} against")

    def judge(self, result: EvalResult) -> list[str]:
        """Failures of `result` (empty when it passes). A gate that cannot apply is an error."""
        failures = []
        for name, limit in self.given().items():
            flag = "--" + name.replace("_", "-")
            figure, label = _figure(result, name, flag)
            if figure is None:
                continue
            worse = figure < limit if name.startswith("min") else figure > limit
            if worse or math.isnan(figure):
                failures.append(f"{label} {figure_text(figure, limit)} {'<' if name.startswith('min') else '>'} {flag} "
                                f"{exact_text(limit)}")
        return failures


def _figure(result: EvalResult, gate: str, flag: str) -> tuple[float | None, str]:
    m = result.metrics
    if result.kind == "lossless":
        return None, ""  # bit-exact passes every gate; a mismatch fails on its own
    if gate == "max_kl" and result.kind in ("causal-lm", "classifier"):
        value, label = m.get("kl_mean"), "mean KL divergence"
    elif gate == "max_ppl_ratio" and result.kind == "causal-lm":
        value, label = m.get("ppl_ratio"), "PPL ratio"
    elif gate == "min_cosine" and result.kind == "encoder":
        value, label = m.get("cosine_mean"), "mean embedding cosine"
    elif gate == "min_cosine":
        value, label = (result.weights or {}).get("cosine"), "weight cosine"
    else:
        raise InputError(f"{flag} does not apply to {result.candidate}, which was evaluated as {_article(result.kind)}")
    if value is None:
        raise InputError(f"{flag} needs a reference to compare {result.candidate} against")
    return float(value), label


def _article(kind: str) -> str:
    return {"causal-lm": "a causal LM", "encoder": "an encoder", "classifier": "a classifier", "weights": "weights only"}.get(kind, kind)
