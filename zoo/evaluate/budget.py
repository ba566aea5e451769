"""Compress to a quality budget: the smallest archive that keeps a promised quality.

A budget is one figure and its limit: ``kl=0.005`` (mean KL per token, causal LM or classifier),
``ppl-ratio=1.01`` (causal LM), ``cosine=0.999`` (mean embedding cosine of an encoder; the
weights' cosine for a model zoo cannot run) or ``bpw=3.5`` (the whole archive in at most 3.5 bits
per weight: the lossless archive where it fits, else the best quality l2 reaches there).

The search runs on l2's whole-model rate (its ``target_ratio``): l2's survey already spends a rate
across tensors by their measured sensitivity, so the search only has to find the rate. It walks
the rate coarsely until it brackets the budget, then narrows the bracket to 4 %: the distance from
the original (a KL, a PPL ratio's excess, one minus a cosine) falls about 4x per bit, so each next
rate is where the slope two candidates measure puts the budget (at most 2x away in bits, inside
the bracket once there is one). The model is loaded and run on the calibration text
once: its activation statistics and the teacher's per-weight sensitivities are measured for the
first candidate and reused by every other one. Each candidate is evaluated once (a rate seen
before is not coded again) on held-out text, distinct from the calibration text, and the
original's outputs on that text are computed once (zoo.evaluate's reference cache).

The kept archive carries, under metadata["budget"], the budget, the held-out measurement of that
very archive (its proof) and the search's trail: every candidate's pipeline, size and figure.

Layering: this module writes archives and evaluates them, so it calls zoo.api and zoo.evaluate,
lazily, from the search's entry point only; the codecs never import it.
"""

from __future__ import annotations

import functools
import math
import os
import shutil
import time
import warnings
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zoo.codecs.pipeline import CHUNK_BYTES, Pipeline
from zoo.errors import InputError, OutOfReach, ZooError, ZooWarning
from zoo.evaluate.result import exact_text, figure_text
from zoo.optimize.teacher import Teacher
from zoo.hub import temporaries
from zoo.signals import signals_held, written
from zoo.sources.folder import SCRATCH_PREFIX

# budget name -> (what it reads, which way is better, the kinds it fits)
BUDGETS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    # a causal LM's over the reference's 256 likeliest tokens, the rest as one (a lower bound: metrics.top_k_kl_divergence)
    "kl": ("mean KL divergence per token (causal LM: its 256 likeliest tokens, the rest as one) or per sentence (classifier)", "max",
           ("causal-lm", "classifier")),
    "ppl-ratio": ("PPL(compressed) / PPL(original)", "max", ("causal-lm",)),
    "cosine": ("mean cosine of the embeddings", "min", ("encoder", "weights")),
    "bpw": ("bits per weight of the whole archive", "max", ("causal-lm", "classifier", "encoder", "weights")),
}
# The rates searched, in bits per weight (32 / l2's target_ratio): from nearly lossless to as
# small as l2 still keeps a model recognisable.
HIGHEST_BITS = 16.0
MOST_BITS = 31.0  # l2's target_ratio stays above 1 (32 / 31: 1.03)
LOWEST_BITS = 1.0
FIRST_BITS = 4.0
MAX_JUMP = 2.0  # a coarse step moves the rate by at most this factor in bits per weight
# The search ends when it brackets the budget within this factor of bits per weight, or after
# MAX_CANDIDATES codings: each costs a whole l2 survey and an evaluation.
BRACKET = 1.04
MAX_CANDIDATES = 8
# A uniform quantizer's error falls by 6 dB per bit, so the distance from the original (a KL, a
# PPL ratio's excess, one minus a cosine) by about 4x per bit: the slope of ln(distance) against
# bits assumed until two candidates measure it.
DEFAULT_SLOPE = math.log(4.0)
BPW_ROUNDS = 5  # a bpw= budget: landings of the archive's real size on the limit
# A bpw= budget's first candidate, the lossless archive (the leaf alone), has this for its rate: it
# keeps every bit, and a rate of no l2 candidate is ever compared with it.
LOSSLESS = math.inf
# What the proof and the trail add to the header once the archive is chosen: a bpw= budget is met
# with this much room to spare, so the archive as stored still meets it.
PROOF_BYTES = 3072
DEFAULT_LEAF = "lossless"
SEARCH_STAGE = "searching the budget"
Progress = Callable[[str, int, int], None]


class BudgetError(ZooError):
    """A budget that no searched pipeline meets, or one that does not fit the model."""


@dataclass(frozen=True)
class Budget:
    name: str
    limit: float

    @classmethod
    def parse(cls, text: str) -> Budget:
        name, equals, value = text.strip().partition("=")
        name = name.strip().lower()
        if not equals or name not in BUDGETS:
            raise InputError(f"budget {text!r}: expected NAME=VALUE with NAME one of {', '.join(BUDGETS)} (for example kl=0.005)")
        try:
            limit = float(value)
        except ValueError:
            raise InputError(f"budget {text!r}: {value.strip()!r} is not a number") from None
        if not math.isfinite(limit) or limit <= 0:
            raise InputError(f"budget {text!r}: the limit must be a positive number")
        if name == "cosine" and limit > 1:
            raise InputError(f"budget {text!r}: a cosine is at most 1")
        if name == "ppl-ratio" and limit < 1:
            raise InputError(f"budget {text!r}: a perplexity ratio below 1 is not a promise a compressed model can keep")
        if name == "bpw" and not LOWEST_BITS / 10 <= limit <= 32:
            raise InputError(f"budget {text!r}: bits per weight go from {LOWEST_BITS / 10:g} to 32")
        return cls(name, limit)

    def __str__(self) -> str:
        return f"{self.name}={exact_text(self.limit)}"

    def check_fits(self, kind: str, model: str) -> None:
        fitting = [name for name, (_, _, kinds) in BUDGETS.items() if kind in kinds]
        if self.name not in fitting:
            article = {"causal-lm": "a causal LM", "encoder": "an encoder", "classifier": "a classifier"}.get(kind, "weights only")
            raise InputError(f"budget {self}: {model} is evaluated as {article}, which fits {', '.join(f'{n}=' for n in fitting)}")

    def figure(self, result: Any) -> float | None:
        """The figure this budget reads from a zoo.evaluate EvalResult."""
        metrics = result.metrics or {}
        if self.name == "kl":
            value = metrics.get("kl_mean")
        elif self.name == "ppl-ratio":
            value = metrics.get("ppl_ratio")
        elif self.name == "cosine":
            value = metrics.get("cosine_mean") if result.kind == "encoder" else (result.weights or {}).get("cosine")
        else:
            return None
        return None if value is None else float(value)

    def meets(self, value: float) -> bool:
        if math.isnan(value):
            return False
        return value >= self.limit if BUDGETS[self.name][1] == "min" else value <= self.limit


@dataclass
class Candidate:
    """One point of the search: an l2 rate, the archive it gave, and the figure held-out text gave."""

    bits: float  # nominal: 32 / target_ratio; LOSSLESS for the leaf alone
    pipeline: str
    bytes: int
    bits_per_weight: float  # the whole archive's, as zoo info shows it
    figure: float | None = None
    meets: bool = False
    path: Path | None = None
    result: Any = None  # the zoo.evaluate EvalResult

    def record(self) -> dict[str, Any]:
        return {"pipeline": self.pipeline, "bytes": self.bytes, "bits_per_weight": round(self.bits_per_weight, 4),
                "figure": self.figure, "meets": self.meets}


@dataclass
class BudgetResult:
    budget: Budget
    report: Any  # the zoo.api.Report of the kept archive
    kept: Candidate
    trail: list[Candidate] = field(default_factory=list)


class Session:
    """What several searches on one model share (a benchmark's budgets, say): the teacher, and every
    candidate coded and measured, whose archives stay in `work` until close(). One source, one
    calibration text, one held-out text and one leaf per session."""

    def __init__(self, work: str | os.PathLike[str]) -> None:
        # locked while the session lives: what a killed one left, the next removes (a model
        # folder's scan leaves it out by its name)
        self._held = ExitStack()
        self.work = self._held.enter_context(temporaries.locked_temporary(temporaries.sweep_scratch(Path(work), SCRATCH_PREFIX),
                                                                          SCRATCH_PREFIX, is_dir=True))
        self.teacher: Any = None
        self.source: Path | None = None  # the model the teacher and the candidates are of
        self.candidates: dict[float, Candidate] = {}

    def close(self) -> None:
        self._held.close()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _figure_text(budget: Budget, value: float | None) -> str:
    return "-" if value is None else f"{budget.name} {figure_text(value, budget.limit)}"


class SurveyTeacher(Teacher):
    """The teacher every candidate's l2 survey shares: the model (loaded once, by calibration) with
    its outputs on the calibration text run once, its per-weight sensitivities measured for the
    first candidate and handed to the others (they do not depend on the rate), and the activation
    statistics whose H guides l2's rounding (zoo.codecs.lossy.deadzone.Plan.hessian)."""

    def __init__(self, statistics: Any, progress: Progress | None = None) -> None:
        super().__init__(statistics.source, statistics.text, model=statistics.model, progress=progress)
        self.statistics = statistics
        self._measured: dict[Any, Any] = {}

    def sensitivities(self, tensor_names: list[str], seed: int = 0, batches: int | None = None,
                      progress: Progress | None = None) -> dict[str, Any]:
        key = (tuple(tensor_names), seed, batches)
        if key not in self._measured:
            self._measured[key] = super().sensitivities(tensor_names, seed, batches, progress)
        return self._measured[key]

    def hessian(self, name: str, cols: int) -> Any:
        return self.statistics.hessian(name, cols)


@dataclass(frozen=True)
class CalibratedPipeline(Pipeline):
    """A pipeline whose survey runs on `calibration` (the shared SurveyTeacher) whatever
    zoo.api.compress hands it: compress itself only collects statistics from a text path."""

    calibration: Any = None

    def survey(self, tensors: Any, calibration: Any = None, progress: Any = None, chunk_bytes: int = CHUNK_BYTES) -> list[Any]:
        plain = Pipeline(self.array_stages, self.grouping, self.bytes_stages)
        return plain.survey(tensors, self.calibration if calibration is None else calibration, progress, chunk_bytes)


def l2_pipeline(bits: float, leaf: str = DEFAULT_LEAF, calibration: Any = None) -> CalibratedPipeline:
    """l2 at `bits` nominal bits per weight (target_ratio = 32 / bits), then the leaf stages."""
    parsed = Pipeline.parse(f"l2:target_ratio={32.0 / bits:.6g}|{leaf}")
    return CalibratedPipeline(parsed.array_stages, parsed.grouping, parsed.bytes_stages, calibration)


def _output_named_on_a_full_disk(function: Callable[..., BudgetResult]) -> Callable[..., BudgetResult]:
    """A full disk names the archive the search was making, as api.compress's does, not a
    candidate in its scratch folder (which is gone by then) or nothing."""
    @functools.wraps(function)
    def named(*args: Any, **kwargs: Any) -> BudgetResult:
        from zoo import api

        return api._names_a_full_disk(api._destination, within=api._beside_destination)(function)(*args, **kwargs)
    return named


@_output_named_on_a_full_disk
def compress_to_budget(
    source: str | os.PathLike[str],
    destination: str | os.PathLike[str],
    budget: Budget | str,
    *,
    calibration: str | os.PathLike[str] | None = None,
    held_out: str | None = None,
    leaf: str = DEFAULT_LEAF,
    max_tokens: int = 4096,
    threads: int | None = None,
    force: bool = False,
    progress: Progress | None = None,
    on_candidate: Callable[[Candidate], None] | None = None,
    highest_bits: float = HIGHEST_BITS,
    session: Session | None = None,
) -> BudgetResult:
    """Search l2's rate for the smallest archive of `source` (a model folder) that meets `budget`
    on `held_out` text (default: the evaluation text zoo ships, never the calibration text), and
    write it to `destination` with its proof and trail in metadata["budget"]. `calibration` is the
    calibration text file (default: the one zoo ships). `progress(stage, done, total)` follows the
    search and each candidate's phases; `on_candidate` sees each measured candidate. Raises
    BudgetError, leaving nothing at `destination`, when no rate up to `highest_bits` bits per
    weight meets the budget. `session` shares the teacher and the candidates between searches."""
    from zoo import api
    from zoo.evaluate.models import Model
    from zoo.optimize.calibration import collect

    started = time.perf_counter()
    budget = budget if isinstance(budget, Budget) else Budget.parse(budget)
    if Pipeline.parse(leaf).array_stages:
        raise InputError(f"a budget search chooses the lossy stages itself: {leaf!r} is not a lossless ending (such as lossless or zstd)")
    source, destination = Path(source), Path(destination)
    if not source.exists():
        raise InputError(f"{source}: no such file or folder")
    api.refuse_inside_the_zoo(destination)  # the zoo's catalogue or lock is no output, with --force either
    target, model = destination.resolve(), source.resolve()
    if target == model or (model.is_dir() and target.is_relative_to(model) and target.exists()):  # with --force too
        raise InputError(f"{destination}: output would overwrite its own input")
    api.check_output(destination, force, is_dir=False)  # a folder there is refused before the search, not after it
    from zoo.sources.folder import float_weights

    if not float_weights(source):  # l2 codes float weights, and bits per weight counts them
        raise InputError(f"{source}: no float weights, so no rate to search (its tensors are integers, or it has none)")
    with Model(source) as model:
        kind, why = model.kind()
        configured = model.config() is not None
    budget.check_fits(kind, str(source))
    if kind == "weights" and (configured or calibration is not None):
        # a model zoo cannot run (its architecture, or transformers, does not allow it) is neither
        # calibrated nor run: said once, where a config or --calib led the user to expect both
        warnings.warn(ZooWarning(f"{str(why).removesuffix(': weight-space figures only')}: --budget judges it by its weights alone, "
                                 "and searches l2's rate without calibration" + (f" ({calibration} is not read)" if calibration else "")),
                      stacklevel=2)
    text_path = Path(calibration) if calibration is not None else Path(__file__).resolve().parent.parent / "data" / "calibration.txt"
    if held_out is not None or kind != "weights":  # (a model judged on its weights alone reads no text)
        from zoo.evaluate.core import default_sentences, default_text

        judged_on = held_out if held_out is not None else default_text() if kind == "causal-lm" else "\n".join(default_sentences())
        if " ".join(judged_on.split()) == " ".join(_read(text_path).split()):  # the shipped text given as --calib is the same text
            raise InputError(f"{text_path}: the held-out text the budget is judged on must differ from the calibration text")

    owned = session is None
    try:
        session = Session(destination.parent) if session is None else session
    except OSError as error:  # named as compress names it, not by the scratch folder it could not make
        raise InputError(f"{destination}: cannot write in {destination.parent}: {error.strerror or error}") from None
    if session.source is not None and session.source != source.resolve():
        raise InputError(f"a budget session is of one model: {session.source}, not {source}")
    session.source = source.resolve()
    try:
        def teacher() -> Any:
            # Calibrated once, for the first l2 candidate (a lossless archive that meets a bpw=
            # budget needs none): the teacher runs the original on the calibration text, and that
            # candidate's survey measures the sensitivities every later one reuses.
            if session.teacher is None and kind != "weights":
                session.teacher = SurveyTeacher(collect(source, text_path, progress=progress), progress)
            return session.teacher

        searcher = _Search(budget, lambda bits, path: _candidate(api, source, path, bits, leaf, teacher, threads, progress),
                           lambda c: _judge(c, budget, source, kind, held_out, max_tokens, threads, progress),
                           session, owned, progress, on_candidate)
        kept = searcher.run_size(highest_bits) if budget.name == "bpw" else searcher.run_quality(highest_bits)
        if kept.result is None:  # a bpw= budget: the kept archive's quality is measured once, at the end
            _judge(kept, budget, source, kind, held_out, max_tokens, threads, progress)
        assert kept.path is not None and kept.result is not None
        # the proof names the archive kept, not the session's candidate file it was measured as
        kept.result.candidate = str(destination)
        kept.result.notes = [note.replace(str(kept.path), str(destination)) for note in kept.result.notes]
        record = {
            "budget": str(budget),
            # a model zoo cannot run (no config.json, or no evaluation for its architecture) is judged on its weights alone
            "reads": "cosine of the weights, weighted by size" if kind == "weights" and budget.name == "cosine" else BUDGETS[budget.name][0],
            "figure": kept.figure,
            "pipeline": kept.pipeline,
            # (none where no l2 candidate was coded: a lossless archive met a bpw= budget)
            "calibration": None if kind == "weights" or session.teacher is None else "zoo/data/calibration.txt" if calibration is None
                           else str(calibration),
            "held_out": None if kind == "weights" else f"{len(held_out)} characters given" if held_out is not None
                        else "zoo/data/eval_text.txt" if kind == "causal-lm" else "zoo/data/eval_sentences.txt",
            "proof": kept.result.record(),
            "trail": [c.record() for c in searcher.trail],
        }
        final = session.work / "kept.zoo"
        shutil.copyfile(kept.path, final)  # a session's candidate stays as it was for the next search
        api.update_metadata(final, {"budget": record}, own_keys=True)
        if budget.name == "bpw":
            # the search judged each archive with PROOF_BYTES of room for this record: the figure
            # stored is the archive's own, as zoo info counts it, and one over the limit (a record
            # of very long paths) is refused, not kept
            stored = round(api.report_of(final).bits_per_weight, 4)
            for _ in range(3):  # the figure's own digits move the size: settled in a round or two
                if stored == record["figure"]:
                    break
                record["figure"] = stored
                api.update_metadata(final, {"budget": record}, own_keys=True)
                stored = round(api.report_of(final).bits_per_weight, 4)
            kept.figure = stored
            if stored > budget.limit:
                raise BudgetError(f"budget {budget}: the archive kept, {kept.pipeline}, is {stored:.4g} bits per weight with its proof "
                                  f"stored, over the budget (its record took more than the {PROOF_BYTES} bytes the search allowed it: "
                                  "long paths?); no archive was kept")
        api.check_output(destination, force, is_dir=False)  # again: it may have appeared during the search
        with signals_held():  # in place and said so, or neither
            temporaries.replace(final, destination, force)  # without force, never over a file that appeared since
            written(str(destination))
    finally:
        if owned:
            session.close()
    report = api.report_of(destination)
    report.seconds = time.perf_counter() - started  # the whole search, as compress's report times the compression
    return BudgetResult(budget, report, kept, searcher.trail)


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"{path}: cannot read calibration text ({type(error).__name__})") from None


def _candidate(api: Any, source: Path, path: Path, bits: float, leaf: str, teacher: Callable[[], Any], threads: int | None,
               progress: Progress | None) -> Candidate:
    if bits == LOSSLESS:  # the leaf alone, named as the user gave it (-p lossless), not as it resolves (fprans)
        report = api.compress(source, path, Pipeline.parse(leaf), threads=threads, force=True, stage_progress=progress)
        return Candidate(bits, leaf.strip(), report.compressed_bytes, report.bits_per_weight, path=path)
    pipeline = l2_pipeline(bits, leaf, teacher())
    with warnings.catch_warnings():  # a ratio the search picked, not the user: where it landed is in the trail
        warnings.filterwarnings("ignore", r"l2: target_ratio=\S+ is missed", ZooWarning)
        report = api.compress(source, path, pipeline, threads=threads, force=True, stage_progress=progress)
    return Candidate(bits, pipeline.spec(), report.compressed_bytes, report.bits_per_weight, path=path)


def _judge(candidate: Candidate, budget: Budget, source: Path, kind: str, held_out: str | None, max_tokens: int,
           threads: int | None, progress: Progress | None) -> None:
    from zoo.evaluate import evaluate

    result = evaluate(candidate.path, source, text=held_out, max_tokens=max_tokens, threads=threads, progress=progress,
                      weights=kind == "weights" or budget.name == "bpw")
    candidate.result = result
    if budget.name != "bpw":
        candidate.figure = budget.figure(result)
        candidate.meets = candidate.figure is not None and budget.meets(candidate.figure)


class _Search:
    """The walk on the rate. `make(bits, path)` codes a candidate, `judge(candidate)` measures it."""

    def __init__(self, budget: Budget, make: Callable[[float, Path], Candidate], judge: Callable[[Candidate], None], session: Session,
                 owned: bool, progress: Progress | None, on_candidate: Callable[[Candidate], None] | None) -> None:
        self.budget = budget
        self.make = make
        self.judge = judge
        self.session = session
        self.owned = owned  # the session is this search's alone: a beaten candidate's archive is deleted at once
        self.progress = progress
        self.on_candidate = on_candidate
        self.trail: list[Candidate] = []
        self.best: Candidate | None = None  # the best archive meeting the budget so far
        self.floor = 0.0  # the least rate l2 codes this model at, once it has refused one below it

    def _try(self, bits: float, judged: bool = True) -> Candidate:
        bits = max(bits, self.floor)  # no lower: what l2 leaves alone would take the rest (OutOfReach)
        key = round(bits, 4)  # a rate is coded and judged once per session
        known = next((c for c in self.trail if round(c.bits, 4) == key), None)
        if known is not None:
            return known
        if self.progress:
            self.progress(SEARCH_STAGE, len(self.trail), len(self.trail) + 1)
        made = self.session.candidates.get(key)
        if made is None:
            try:
                made = self.make(bits, self.session.work / f"candidate-{len(self.session.candidates)}.zoo")
            except OutOfReach as error:
                if error.reachable is None:  # no rate at all: only wiping the weights would do
                    raise BudgetError(f"budget {self.budget}: {error}") from None
                # the least rate l2 codes this model at (a hair inside the ratio it names), and the search goes on from there
                self.floor = 32.0 / (0.999 * error.reachable)
                return self._try(self.floor, judged)
            self.session.candidates[key] = made
        candidate = Candidate(made.bits, made.pipeline, made.bytes, made.bits_per_weight, path=made.path, result=made.result)
        if self.budget.name == "bpw":
            # what it is judged on: the bits once its proof and trail (at most PROOF_BYTES) join the header; with the
            # bits as coded, a line read "3.988 bits per weight: misses bpw=4"
            candidate.figure = _stored_bits(candidate)
            candidate.meets = candidate.figure <= self.budget.limit
        elif candidate.result is not None:
            candidate.figure = self.budget.figure(candidate.result)
            candidate.meets = candidate.figure is not None and self.budget.meets(candidate.figure)
        elif judged:
            self.judge(candidate)
            made.result = candidate.result
        self.trail.append(candidate)
        if self.progress:
            self.progress(SEARCH_STAGE, len(self.trail), len(self.trail))
        if self.on_candidate:
            self.on_candidate(candidate)
        self._keep(candidate)
        return candidate

    def _keep(self, candidate: Candidate) -> None:
        """Hold on to the best archive so far; alone in its session, delete every other one at once."""
        if candidate.meets and (self.best is None or self._better(candidate, self.best)):
            beaten, self.best = self.best, candidate
        else:
            beaten = candidate
        if self.owned and beaten is not None and beaten.path is not None:
            beaten.path.unlink(missing_ok=True)

    def _better(self, candidate: Candidate, than: Candidate) -> bool:
        # a quality budget keeps the smallest archive; a size budget the largest, closest to its limit
        return candidate.bytes > than.bytes if self.budget.name == "bpw" else candidate.bytes < than.bytes

    def _distance(self, value: float) -> float:
        """ln of how far a figure is from the original's (0 for a KL, 1 for a ratio or a cosine)."""
        gap = {"kl": value, "ppl-ratio": value - 1.0, "cosine": 1.0 - value}[self.budget.name]
        return math.log(max(gap, 1e-12))

    def _next(self, passing: float | None, failing: float | None, highest_bits: float) -> float:
        """Where to code next: the rate the measured slope of ln(distance) against bits puts on the
        budget (coarse, at most MAX_JUMP away), kept inside the bracket once there is one (fine)."""
        judged = sorted((c for c in self.trail if c.figure is not None and not math.isnan(c.figure)),
                        key=lambda c: abs(self._distance(c.figure) - self._distance(self.budget.limit)))
        nearest = judged[0]
        slope = DEFAULT_SLOPE
        other = next((c for c in judged[1:] if abs(c.bits - nearest.bits) > 1e-3), None)
        if other is not None:
            measured = (self._distance(other.figure) - self._distance(nearest.figure)) / (nearest.bits - other.bits)
            slope = min(4 * DEFAULT_SLOPE, max(DEFAULT_SLOPE / 4, measured))
        target = nearest.bits + (self._distance(nearest.figure) - self._distance(self.budget.limit)) / slope
        target = min(nearest.bits * MAX_JUMP, max(nearest.bits / MAX_JUMP, target))
        if passing is not None and failing is not None:
            low, high = failing, passing
            # inside the bracket, and not so near an end that the step learns nothing
            margin = (high / low) ** 0.2
            if not low * margin <= target <= high / margin:
                target = math.sqrt(low * high)
        return min(highest_bits, max(LOWEST_BITS, target))

    def _ceiling(self, highest_bits: float) -> float:
        """The most bits a weight searched: `highest_bits` above the floor l2 found, where there is
        one. The floor is what the tensors l2 leaves alone and the header take of a rate; a model of
        small tensors, whose header took more than 16 bits a weight, was searched at its floor
        alone (every selected weight zero) and declared out of reach at a rate l2 met at 1.3."""
        return min(MOST_BITS, max(highest_bits, self.floor + highest_bits)) if self.floor else highest_bits

    def run_quality(self, highest_bits: float) -> Candidate:
        """The smallest archive meeting a quality budget: coarse jumps on the measured slope until
        the budget is bracketed, then the bracket narrowed to BRACKET."""
        bits = min(FIRST_BITS, highest_bits)
        passing: float | None = None
        failing: float | None = None
        while len(self.trail) < MAX_CANDIDATES:
            candidate = self._try(bits)
            bits = candidate.bits  # raised to the floor where l2 cannot go lower
            highest = self._ceiling(highest_bits)
            if candidate.meets:
                passing = bits if passing is None else min(passing, bits)
            else:
                failing = bits if failing is None else max(failing, bits)
            lowest = max(LOWEST_BITS, self.floor)
            if passing is not None and (failing is None and bits <= lowest * 1.0001 or failing is not None and passing / failing <= BRACKET):
                break
            if passing is None and bits >= highest * 0.9999:
                break
            if candidate.figure is None:
                self._fail()
            following = max(self._next(passing, failing, highest), self.floor)
            if any(abs(c.bits - following) < 1e-4 for c in self.trail):
                break
            bits = following
        if self.best is None:
            self._fail()
        assert self.best is not None
        return self.best

    def run_size(self, highest_bits: float) -> Candidate:
        """bpw=: the lossless archive where it fits (no lossy archive is of better quality; l2's
        rates go to 16 bits a weight, and bpw=32 kept target_ratio=2 of a model lossless stored in
        27), else land the whole archive's bits per weight on the limit from below. The archive's
        figure includes what l2's rate does not (non-weight files), so the nominal rate is moved
        by the measured overhead until it lands."""
        if self._try(LOSSLESS, judged=False).meets:
            assert self.best is not None
            return self.best
        limit = self.budget.limit
        bits = min(limit, highest_bits)
        for _ in range(BPW_ROUNDS):
            candidate = self._try(bits, judged=False)
            if candidate.meets and _stored_bits(candidate) >= 0.99 * limit:
                break
            landing = limit - (_stored_bits(candidate) - candidate.bits)  # the nominal rate the measured overhead leaves
            if not candidate.meets:
                landing = min(landing, 0.98 * bits)
            elif landing <= bits:
                break
            landing = min(self._ceiling(highest_bits), max(LOWEST_BITS / 10, self.floor, landing))
            # More bits than a rate that missed miss too, and fewer than one that met are no better:
            # between the two, halve the gap instead (a landing past a miss cost a whole coding).
            met, missed = max((c.bits for c in self.trail if c.meets), default=0.0), min((c.bits for c in self.trail if not c.meets), default=math.inf)
            if not met < landing < missed:
                if missed == math.inf or missed - met < 0.002 * missed:  # no rate missed: a met one above the landing is the best
                    break
                # never under the least rate: where that missed (l2 selected no tensor, so every rate
                # gives one size) the halving asked l2 for target_ratio=640
                landing = max(LOWEST_BITS / 10, self.floor, (met + missed) / 2)
            if any(round(c.bits, 4) == round(landing, 4) for c in self.trail):
                break
            bits = landing
        if self.best is None:
            smallest = min((c for c in self.trail if c.bits != LOSSLESS), key=lambda c: c.bytes)
            raise BudgetError(f"budget {self.budget}: the smallest archive l2 made is {_stored_bits(smallest):.4g} bits per weight with "
                              f"its proof stored ({smallest.bits_per_weight:.4g} without; {_human(smallest.bytes)}, {smallest.pipeline}); "
                              "no archive was kept")
        return self.best

    def _fail(self) -> None:
        direction = BUDGETS[self.budget.name][1]
        judged = [c for c in self.trail if c.figure is not None]
        if not judged:
            raise BudgetError(f"budget {self.budget}: no candidate could be measured; no archive was kept")
        best = (max if direction == "min" else min)(judged, key=lambda c: c.figure)
        raise BudgetError(f"budget {self.budget} is not met by l2 at any rate down to target_ratio={32 / max(c.bits for c in self.trail):.3g}: the best "
                          f"reached was {_figure_text(self.budget, best.figure)} at {_human(best.bytes)} "
                          f"({best.bits_per_weight:.3g} bits per weight, {best.pipeline}); no archive was kept "
                          "(-p lossless keeps the model exact)")


def _stored_bits(candidate: Candidate) -> float:
    """A candidate's bits per weight once its proof and trail join the header (PROOF_BYTES)."""
    weights = 8 * candidate.bytes / candidate.bits_per_weight if candidate.bits_per_weight else 0
    return candidate.bits_per_weight + 8 * PROOF_BYTES / weights if weights else math.inf


def _human(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.2f} {unit}"
        count /= 1024
    return f"{count:.2f} GiB"


__all__ = ["BUDGETS", "LOSSLESS", "Budget", "BudgetError", "BudgetResult", "CalibratedPipeline", "Candidate", "Session", "SurveyTeacher", "compress_to_budget",
           "l2_pipeline"]
