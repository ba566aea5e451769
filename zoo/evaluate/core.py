"""evaluate() and verify_archive(): pick the figures that fit the model, run them, judge them."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from importlib import resources
from typing import Any

from zoo.errors import InputError
from zoo.evaluate.result import EvalResult, Gates
from zoo.kernels.parallel import resolve_threads

DEFAULT_MAX_TOKENS = 4096
FUNCTIONAL_KINDS = ("causal-lm", "encoder", "classifier")
Progress = Callable[[str, int, int], None]  # (stage, done, total)


def default_text() -> str:
    """The English prose shipped with zoo, scored by causal LMs when no text is given."""
    return resources.files("zoo").joinpath("data/eval_text.txt").read_text(encoding="utf-8")


def default_sentences() -> list[str]:
    """The sentences shipped with zoo, embedded or classified when none are given."""
    return _lines(resources.files("zoo").joinpath("data/eval_sentences.txt").read_text(encoding="utf-8"))


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


def evaluate(
    candidate: str | os.PathLike[str],
    reference: str | os.PathLike[str] | None = None,
    *,
    text: str | None = None,
    max_tokens: int = DEFAULT_MAX_TOKENS,
    kind: str | None = None,
    gates: Gates | None = None,
    weights: bool = True,
    cache: Any = None,
    threads: int | None = None,
    progress: Progress | None = None,
    base: str | os.PathLike[str] | None = None,
    selection: dict[str, Any] | None = None,
) -> EvalResult:
    """Figures of `candidate` against `reference` (each a zoo name, archive, folder or weights
    file). See the package docstring for what each kind measures. `threads` sets torch's thread
    count for the run (default: torch's own). `base` is the model that an archive made with
    `compress(base=...)` is rebuilt on, on either side; given where neither side needs it, it is
    still checked to be a model, then left unused with a note saying so. `selection` (include=,
    exclude=, follow_links=) narrows a reference folder to the files compress chose from it."""
    from zoo.refs import open_base
    from zoo.evaluate.cache import SHARED
    from zoo.evaluate.models import Model

    if max_tokens < 1:
        raise InputError(f"max_tokens must be at least 1, not {max_tokens}")
    if kind is not None and kind not in ("weights", *FUNCTIONAL_KINDS):
        raise InputError(f"unknown kind {kind!r}: use one of weights, {', '.join(FUNCTIONAL_KINDS)}")
    started = time.perf_counter()
    gates = gates or Gates()
    cache = SHARED if cache is None else cache
    notes: list[str] = []
    with ExitStack() as stack:
        if threads is not None:
            stack.enter_context(_torch_threads(resolve_threads(threads)))
        base_model = stack.enter_context(open_base(base)) if base is not None else None
        mine = stack.enter_context(Model(candidate, base_model))
        original = stack.enter_context(Model(reference, base_model, selection)) if reference is not None else None
        base_used = mine.needs_base or (original is not None and original.needs_base)
        if base is not None and not base_used:
            # Named by role, not path: compress --verify sees the candidate under a temporary name.
            notes.append(f"the base {base} was not used: " + ("the candidate is" if reference is None else
                         "neither the candidate nor the reference is") + " stored against a base")
        if kind in FUNCTIONAL_KINDS:  # transformers would load the folder around a lone file: another model, or none
            for side in (mine, original):
                if side is not None and side.lone_file():
                    article = "an" if kind[0] in "aeiou" else "a"
                    raise InputError(f"{side.label}: a lone weights file has no config or tokenizer to run it as {article} {kind}: "
                                     "give its model folder, or leave out --kind for weight-space figures")
        chosen = kind
        if chosen is None:
            chosen, note = mine.kind()
            notes += [note] if note else []
            if original is not None and chosen != "weights":
                theirs, note = original.kind()
                if theirs == "weights":
                    chosen = "weights"
                    notes += [note] if note else []
                elif theirs != chosen:
                    raise InputError(f"{candidate} is evaluated as a {chosen} but its reference {reference} as a {theirs}")
        if original is None and chosen == "weights":
            raise InputError(f"{candidate}: weight-space figures need a reference to compare against")
        gates.check_applies(chosen, str(candidate), original is not None)
        figures = _functional(chosen, mine, original, text, max_tokens, cache, progress) if chosen in FUNCTIONAL_KINDS else {}
        per_tensor, totals = [], None
        if original is not None and (weights or chosen == "weights"):
            from zoo.evaluate.weights import compare_weights

            per_tensor, totals, weight_notes = compare_weights(mine, original, progress)
            notes += weight_notes
    result = EvalResult(chosen, str(candidate), None if reference is None else str(reference), figures, totals, per_tensor,
                        notes, gates.given(), seconds=time.perf_counter() - started,
                        base=str(base) if base is not None and base_used else None)
    result.failures = gates.judge(result)
    return result


@contextmanager
def _torch_threads(count: int) -> Iterator[None]:
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _functional(kind: str, mine: Any, base: Any, text: str | None, max_tokens: int, cache: Any, progress: Progress | None) -> dict[str, Any]:
    if kind == "causal-lm":
        from zoo.evaluate.causal import evaluate_causal_lm

        return evaluate_causal_lm(mine, base, default_text() if text is None else text, max_tokens, cache, progress)
    from zoo.evaluate.sentences import evaluate_sentences

    sentences, labels = _sentences(kind, mine, text)
    if base is None and not (kind == "classifier" and labels) and not (kind == "encoder" and mine.has_masked_lm_head()):
        what = "labelled sentences or a reference" if kind == "classifier" else "a reference"
        raise InputError(f"{mine.label}: an {kind} without a masked-LM head has nothing to measure without {what}"
                         if kind == "encoder" else f"{mine.label}: a classifier needs {what} to be measured")
    return evaluate_sentences(kind, mine, base, sentences, labels, max_tokens, cache, progress)


def _sentences(kind: str, model: Any, text: str | None) -> tuple[list[str], list[int] | None]:
    """The sentences of `text` (zoo's own when None), with their labels when every line is
    `LABEL<TAB>sentence`: labels only for a classifier that gives one label per sentence."""
    from zoo.evaluate.sentences import NO_SENTENCES, split_labels

    if text is None:
        return default_sentences(), None
    lines = _lines(text)
    try:
        sentences, labels = split_labels(lines, (model.config() or {}).get("id2label"))
    except InputError:
        if kind == "classifier":
            raise
        return lines, None  # an encoder's sentences that hold a tab each, not labels
    if not sentences:
        raise InputError(NO_SENTENCES)
    if labels is not None and kind != "classifier":
        raise InputError("labelled sentences (LABEL<TAB>sentence) only make sense for a classifier")
    if labels is not None and model.multi_label():
        raise InputError(f"{model.label} is a multi-label classifier: its accuracy needs a set of labels per sentence, which "
                         "LABEL<TAB>sentence lines do not give; leave the labels out of --text")
    return sentences, labels


def check_text(model: str | os.PathLike[str], text: str) -> None:
    """Refuse, before any work, the `text` that evaluating `model` would refuse: a sweep says it
    once, naming the model, rather than after each pipeline, naming its temporary archive."""
    from zoo.evaluate.models import Model

    with Model(model, None) as opened:
        kind, _ = opened.kind()
        if kind == "causal-lm":
            from zoo.evaluate.causal import windows

            windows(opened, text, DEFAULT_MAX_TOKENS)  # at least two tokens
        elif kind in FUNCTIONAL_KINDS:
            _sentences(kind, opened, text)


def verify_archive(
    archive: str | os.PathLike[str],
    source: str | os.PathLike[str],
    *,
    gates: Gates | None = None,
    text: str | None = None,
    max_tokens: int = DEFAULT_MAX_TOKENS,
    progress: Progress | None = None,
    base: str | os.PathLike[str] | None = None,
    selection: dict[str, Any] | None = None,
) -> EvalResult:
    """What `zoo compress --verify` runs: an archive whose every file is lossless is decoded and
    compared bit for bit with `source` (its files as compress's `selection`, include=, exclude=
    and follow_links=, chose them); any other is evaluated as a model against those files of
    `source`, rebuilt on `base` when it was made against one (compress(base=...))."""
    from zoo.api import open_archive

    gates = gates or Gates()
    with open_archive(archive) as opened:
        lossless = all(entry.get("lossless") for entry in opened.files())
    if not lossless:
        return evaluate(archive, source, text=text, max_tokens=max_tokens, gates=gates, progress=progress, base=base,
                        selection=selection)
    from zoo.evaluate.weights import verify_lossless

    started = time.perf_counter()
    figures = verify_lossless(archive, source, progress, **(selection or {}))
    result = EvalResult("lossless", str(archive), str(source), figures, gates=gates.given(), seconds=time.perf_counter() - started)
    problems = [f"{len(figures[key])} {label}: {', '.join(figures[key][:3])}{_more(figures[key], 3)}" for key, label in
                (("mismatched", "files decode to other bytes than the source's"), ("missing", "source files are missing"),
                 ("extra", "files are not in the source")) if figures[key]]
    result.failures = problems
    return result


def _more(items: list[str], shown: int) -> str:
    return f" and {len(items) - shown} more" if len(items) > shown else ""
