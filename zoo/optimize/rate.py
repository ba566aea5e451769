"""l2's survey: spend a whole-model size budget across tensors.

1. Every tensor the stage selects gets a rate-distortion curve: for a grid of steps and dead
   zones, the entropy of its symbols (the rate) and the squared error it causes, weighted per
   weight by the teacher's sensitivity (an estimate of the output KL), by the diagonal of the
   layer's input statistics (zoo.optimize.calibration: the layer's output error) or, data-free, by one over
   the tensor's mean square (relative weight MSE).
2. One slope lambda for all tensors: each takes the point minimising distortion + lambda * rate,
   and lambda is bisected until the rates add up to the budget (equal slopes are what an optimal
   split of a fixed budget looks like).
3. The entropy coder is not an ideal one: every tensor's symbols are coded by the real leaf
   stages, the curves are corrected by the ratio of coded to estimated size, the split is made
   again, and a last common scale of all steps lands the coded total on the budget.
4. With ``tune=N``, the roundings are trained against the teacher (zoo.optimize.tune) and the
   plan carries the symbols encode writes.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from zoo.dtypes import DTYPES, FLOAT32_MAX, to_float32
from zoo.errors import OutOfReach, PipelineError, ZooWarning
from zoo.optimize import teacher as _teacher, tune as _tune
from zoo.codecs.base import Arrivals, Measure, StageProgress, TypedArray
from zoo.codecs.lossy.deadzone import (BLOCK, LARGEST_SYMBOL, LOWEST_BITS, Plan, dequantize, entropy_bits, quantize,
                                       quantize_stored, quantize_with_feedback, symbols_array)

SAMPLE = 1 << 16  # weights per tensor the curves are measured on
STEP_EXPONENTS = np.arange(3.0, -9.01, -0.25)  # log2(step / rms): from ~0.1 to ~11 bits per weight
DEAD_ZONES = (0.0, 0.25, 0.5)  # dead zone as a fraction of the step
# The archive header, which the budget counts: a tensor's entry names it three times (the entry's
# key and name, the file's segment list) around ~420 bytes of JSON where l2 codes it whole: its
# record, the pipeline's configs, l2's node and the leaf's; the rest (format, file entries) is a
# few hundred bytes, and the source's own header (a safetensors file's, stored as a blob) ~30 bytes
# a tensor once coded. The nodes, as a Llama's header holds them:
HEADER_BYTES_FIXED = 512
HEADER_BYTES_PER_TENSOR = 420
SOURCE_HEADER_BYTES_PER_TENSOR = 30
L2_NODE_BYTES = 130  # step and dead zone, shape, stage; its leaf apart
LEAF_NODE_BYTES = 105  # dtype, shape, chunk index and its CRC
STAGE_NODE_BYTES = 85  # an earlier stage's node around its parts (lowrank's rank)
FEEDBACK_LANDINGS = 4  # encodes with error feedback to correct the landing on the budget
LANDING_ROUNDS = 30  # bisection steps on the common scale of the steps, at most
# "fitting the budget" counts rounds, each of which codes every selected tensor: the coded sizes that
# correct the curves, the landing's first check, its bisection and its error-feedback corrections.
FITTING_ROUNDS = 2 + LANDING_ROUNDS + FEEDBACK_LANDINGS
MISSED = 0.05  # a ratio further than this from the target is said (_say_a_missed_target)


class Curve:
    """Rate (bits, whole tensor) and distortion of each grid point of one tensor."""

    def __init__(self, values: np.ndarray, sensitivity: np.ndarray | None, rng: np.random.Generator, least_step: float = 0.0) -> None:
        """`least_step`: the least step the tensor's largest weight allows (least_step()), which the sample may miss."""
        flat = values.reshape(-1)
        self.count = flat.size
        take = rng.choice(flat.size, SAMPLE, replace=False) if flat.size > SAMPLE else np.arange(flat.size)
        sample = flat[take].astype(np.float64)
        if sensitivity is None:
            weight = np.ones_like(sample)
        elif sensitivity.size == 1:
            weight = np.full_like(sample, float(sensitivity.reshape(-1)[0]))
        else:  # by index: flattening calibration's broadcast row of weights made a float64 copy of the tensor
            weight = sensitivity[np.unravel_index(take, sensitivity.shape)]
        scale = self.count / len(sample)
        rms = float(np.sqrt(np.mean(sample**2))) or 1e-12
        anchors = [rms]
        typical = float(np.median(np.abs(sample))) / 0.6745  # a normal distribution's rms, from its median magnitude
        if 0.0 < typical < rms / 4:  # an outlier in the sample makes the rms: the grid spans the weights around it too
            anchors.append(typical)
        points = []
        for step in sorted({max(anchor * 2.0**exponent, least_step) for anchor in anchors for exponent in STEP_EXPONENTS}, reverse=True):
            if step * max(1.0, *DEAD_ZONES) > FLOAT32_MAX:  # decoding computes in float32: no step it cannot hold
                continue
            for fraction in DEAD_ZONES:
                symbols = quantize(sample, step, fraction * step)
                error = dequantize(symbols, step, fraction * step) - sample
                points.append((step, fraction * step, entropy_bits(symbols) * self.count, float((weight * error**2).sum()) * scale))
        self.steps = np.array([p[0] for p in points])
        self.dead_zones = np.array([p[1] for p in points])
        self.rates = np.array([p[2] for p in points])
        self.distortions = np.array([p[3] for p in points])

    def choose(self, slope: float, correction: float = 1.0) -> int:
        return int(np.argmin(self.distortions + slope * self.rates * correction))


def split_budget(curves: dict[str, Curve], budget_bits: float, corrections: dict[str, float]) -> tuple[dict[str, int], float]:
    """The grid point of each tensor at the largest common slope whose rates fit the budget."""

    def total(slope: float) -> float:
        return sum(c.rates[c.choose(slope, corrections[n])] * corrections[n] for n, c in curves.items())

    low, high = -60.0, 60.0  # natural log of the slope: distortion per bit
    if total(math.exp(high)) > budget_bits:
        return {n: c.choose(math.exp(high), corrections[n]) for n, c in curves.items()}, math.exp(high)
    for _ in range(80):
        middle = (low + high) / 2
        if total(math.exp(middle)) > budget_bits:
            low = middle
        else:
            high = middle
    slope = math.exp(high)
    return {n: c.choose(slope, corrections[n]) for n, c in curves.items()}, slope


def _symbols(values: np.ndarray, plan: Plan, name: str, scale: float = 1.0, feedback: bool = False) -> np.ndarray:
    """The symbols (int64) l2 writes for a tensor under `plan` with every step times `scale` (with
    the error feedback encode uses where `feedback` is set and the tensor has statistics)."""

    step, dead_zone = plan.scaled(name, scale)
    hessian = plan.hessian(name, values) if feedback else None
    return quantize(values, step, dead_zone) if hessian is None else quantize_with_feedback(values, step, dead_zone, hessian)


def _stored(values: np.ndarray, plan: Plan, name: str, scale: float = 1.0, feedback: bool = False) -> TypedArray:
    """_symbols as l2 stores them (the narrowest integer); plain rounding goes there block by block."""
    step, dead_zone = plan.scaled(name, scale)
    hessian = plan.hessian(name, values) if feedback else None
    return quantize_stored(values, step, dead_zone) if hessian is None else symbols_array(quantize_with_feedback(values, step, dead_zone, hessian))


def _coded_bits(values: dict[str, np.ndarray], plan: Plan, measure: Measure, scale: float = 1.0, feedback: bool = False) -> dict[str, float]:
    """The bits the leaf stages store for each tensor's symbols; one tensor's symbols at a time."""
    return {n: 8.0 * measure(_stored(v, plan, n, scale, feedback)) for n, v in values.items()}


class _Rounds:
    """The "fitting the budget" stage: a round counted after each whole-model coding; `finish`
    closes the stage early when the bisection lands before its last round."""

    def __init__(self, progress: StageProgress | None) -> None:
        self.progress = progress
        self.done = 0
        if progress:
            progress("fitting the budget", 0, FITTING_ROUNDS)

    def tick(self) -> None:
        self.done += 1
        if self.progress:
            self.progress("fitting the budget", self.done, FITTING_ROUNDS)

    def finish(self) -> None:
        if self.progress and self.done < FITTING_ROUNDS:
            self.progress("fitting the budget", self.done, self.done)


def allocate(codec: Any, tensors: Callable[[], Iterator[tuple[str, TypedArray]]], calibration: Any,
             progress: StageProgress | None, measure: Measure) -> Plan:
    """(step, dead zone) for every tensor `codec` selects, the coded total on its budget, counted
    by `measure` (the pipeline's own leaf stages, see zoo.codecs.base.Measure).
    `progress` hears of the long phases (see zoo.api.COMPRESS_STAGES)."""
    values: dict[str, np.ndarray] = {}
    parameters, others, header = 0, 0, HEADER_BYTES_FIXED
    # After an earlier lossy stage (zoo.codecs.base.Arrivals), the target still counts against the
    # model's own tensors, but what is stored is what the earlier stages make of them: l2 codes the
    # parts that reach it, and counts the others at their stored size, not the tensors' (lowrank's
    # factors at half a matrix were counted as the whole matrix, and targets the pipeline reached refused).
    if isinstance(tensors, Arrivals):
        model, parts, earlier = tensors.model, tensors.parts, tensors.earlier
    else:  # a survey outside a pipeline: the tensors are what l2 codes
        model, parts, earlier = tensors, (lambda name, array: iter([(name, array, True)])), ()
    whole: dict[str, str] = {}  # a part that is its tensor's weights as they are (lowrank's `dense`): label -> the tensor
    selected: dict[str, TypedArray] = {}  # what l2 codes, by label
    own_config, earlier_configs = _json_bytes(codec.get_config()), sum(_json_bytes(stage.get_config()) for stage in earlier)
    for name, array in model():
        if DTYPES[array.dtype].is_float:
            parameters += array.data.size
        coded = []
        for label, item, arrives in parts(name, array):
            coded.append((label, arrives and codec.selects(label, item)))
            if coded[-1][1]:
                if label != name and tuple(item.shape) == tuple(array.shape):
                    whole[label] = name
                values[label], selected[label] = to_float32(item.data, item.dtype, copy=False), item  # only read
                codec.check_finite(values[label], label)  # before a NaN's rate curve asks for an endless step
            else:
                others += measure(item)
        header += _entry_bytes(name, coded, own_config, earlier_configs)
    if not values:
        return Plan({}, calibration)
    budget = _selected_budget(codec, values, parameters, others, header, selected, measure)
    teacher = _teacher.load_teacher(calibration, _tune.SEQUENCES if codec.tune else _teacher.MAX_SEQUENCES, progress)
    if codec.tune and teacher is None:
        raise PipelineError("l2: tune trains against the original model's outputs: give calibration text (--calib) "
                            "and a model folder (config.json) that transformers loads")
    if teacher is None:
        sensitivities = _activation_weights(values, calibration, whole)
    else:
        sensitivities = _part_sensitivities(teacher, values, whole, progress)
    if not sensitivities:
        # Data-free: relative MSE, each tensor's squared error over its mean square. A layer's output
        # moves with its relative error; plain MSE would starve the tensors with small weights.
        # (a floor of 1e-30 here made the errors of tensors of RMS below 1e-15 look almost free)
        sensitivities = {n: np.full(1, 1.0 / max(mean_square(v), 1e-300)) for n, v in values.items()}
    rng = np.random.default_rng(0)
    curves = {}
    if progress:
        progress("surveying rates", 0, len(values))
    least_steps = {name: least_step(v) for name, v in values.items()}
    for name, v in values.items():
        curves[name] = Curve(v, sensitivities.get(name), rng, least_steps[name])
        if progress:
            progress("surveying rates", len(curves), len(values))
    corrections = {n: 1.0 for n in curves}
    choice, slope = split_budget(curves, budget, corrections)
    plan = Plan({n: (float(curves[n].steps[i]), float(curves[n].dead_zones[i])) for n, i in choice.items()}, calibration, aliases=whole,
                least_steps=least_steps)
    rounds = _Rounds(progress)
    corrections = {}
    for name, v in values.items():  # coded size over the entropy estimate, from the same symbols
        symbols = _stored(v, plan, name)
        corrections[name] = 8.0 * measure(symbols) / max(1.0, entropy_bits(symbols.data) * v.size)
    rounds.tick()
    choice, slope = split_budget(curves, budget, corrections)
    plan.steps = {n: (float(curves[n].steps[i]), float(curves[n].dead_zones[i])) for n, i in choice.items()}
    plan.slope = slope
    plan, landed = _land_on_budget(values, plan, budget, rounds, measure)
    rounds.finish()
    _say_a_missed_target(codec.target_ratio, 32.0 * parameters / codec.target_ratio, budget, landed)
    if codec.tune and not any(v.any() for v in values.values()):
        # Zero-initialised layers (residual projections, adaLN-Zero), or a model of zeros: they code
        # exactly as they are, at no bits, and the tuning's rate term had no budget to hold to.
        count = f"{len(values)} tensor{'s' if len(values) > 1 else ''}"
        warnings.warn(f"l2: tune={codec.tune} has nothing to tune: the {count} l2 selects are all zero, which it codes exactly at no cost; "
                      "it ran no tuning", ZooWarning, stacklevel=2)
    elif codec.tune:
        if progress:  # the error-feedback rounding tuning starts from is part of it (seconds on MiniLM)
            progress("tuning roundings", 0, codec.tune)
        start = {n: _symbols(v, plan, n, feedback=True) for n, v in values.items()}
        plan.symbols = _tune.tune(teacher, start, plan.steps, codec.tune, plan.slope, progress)
    return plan


def _part_sensitivities(teacher: Any, values: dict[str, np.ndarray], whole: dict[str, str],
                        progress: StageProgress | None) -> dict[str, np.ndarray]:
    """The teacher's per-weight sensitivities for what l2 codes. A part that holds its tensor's
    weights as they are (`whole`: lowrank's `dense`) takes the tensor's; a part that is no
    parameter of the model (lowrank's factors) takes the median of the others' mean, a single
    weight on the same scale. Left out, such parts were weighed by plain squared error beside
    Fisher weights a thousand times smaller, and the budget went to them: after lowrank, the tiny
    Llama of the tests came out worse calibrated than not (mean KL 0.164 against 0.158; now 0.112)."""
    asked = {label: whole.get(label, label) for label in values}
    asked = {label: name for label, name in asked.items() if teacher.parameter(name)}
    if not asked:
        return {}
    found = teacher.sensitivities(sorted(set(asked.values())), batches=_teacher.MAX_SEQUENCES, progress=progress)
    sensitivities = {label: found[name] for label, name in asked.items() if name in found}
    if sensitivities and len(sensitivities) < len(values):
        typical = np.full(1, float(np.median([float(np.mean(s)) for s in sensitivities.values()])))
        sensitivities.update({label: typical for label in values if label not in sensitivities})
    return sensitivities


def _entry_bytes(name: str, coded: list[tuple[str, bool]], own_config: int, earlier_configs: int) -> int:
    """About what the header holds for the model's tensor `name`, which the earlier stages made into
    the items `coded` (label, whether l2 codes it): the tensor itself where none selected it.
    `own_config` and `earlier_configs`: the header bytes of l2's config and of the earlier stages'."""
    entry = HEADER_BYTES_PER_TENSOR + SOURCE_HEADER_BYTES_PER_TENSOR + 3 * len(name.encode())
    if coded == [(name, False)]:  # no stage touches it: its entry lists the leaf stages alone, and holds a leaf
        return entry - L2_NODE_BYTES - own_config
    entry += earlier_configs  # the whole pipeline, l2's config beside theirs
    if coded == [(name, True)]:
        return entry
    # An earlier stage's node, and a node per item in place of l2's alone.
    entry += STAGE_NODE_BYTES - L2_NODE_BYTES - LEAF_NODE_BYTES
    return entry + sum(len(label.encode()) - len(name.encode()) + LEAF_NODE_BYTES + (L2_NODE_BYTES if by_l2 else 0)
                       for label, by_l2 in coded)


def _json_bytes(value: Any) -> int:
    """As the archive header writes it (zoo.container.format), a comma included."""
    return len(json.dumps(value, separators=(",", ":"))) + 1


def _selected_budget(codec: Any, values: dict[str, np.ndarray], parameters: int, others: int, header: int,
                     selected: dict[str, TypedArray], measure: Measure) -> float:
    """The bits the target leaves for the tensors the stage selects, once the tensors it leaves
    alone (at their stored size) and the header are paid for. Refused below LOWEST_BITS per weight:
    MiniLM with exclude=*word_embeddings* at target_ratio=8 once got 0.05 bits per weight (cosine
    0.13) and an archive at ratio 0.42, with no word."""
    weights = sum(v.size for v in values.values())
    allowed = 32.0 * parameters / codec.target_ratio
    budget = allowed - 8.0 * (others + header)
    if budget >= LOWEST_BITS * weights - 1e-9 * allowed:  # the ratio an OutOfReach names is reachable, to the last bit
        return budget
    reachable = 32.0 * parameters / (8.0 * (others + header) + LOWEST_BITS * weights)
    # At a lower target l2 leaves alone the tensors whose dtype takes no more bits a weight than it
    # gives each (L2.selects: F8 at 4 or less, F16 at 2), which then count at their stored size: the
    # ratio first named for an F8 model was itself refused, and the next, and the next.
    counted, left, stored = dict(selected), weights, others + header
    while reachable > 1.0:
        dropped = [label for label, item in counted.items() if DTYPES[item.dtype].bits <= 32.0 / reachable]
        if not dropped:
            break
        for label in dropped:
            stored += measure(counted.pop(label))
            left -= values[label].size
        reachable = 32.0 * parameters / (8.0 * stored + LOWEST_BITS * left)
    advice = (f"target_ratio={_round_down(reachable)} is the most this model reaches, or let" if reachable > 1.0
              else "no target_ratio reaches it: let")
    count = f"{len(values)} tensor{'s' if len(values) > 1 else ''}"
    raise OutOfReach(f"l2: target_ratio={codec.target_ratio:g} is out of reach: the tensors l2 leaves alone and the archive header "
                     f"take {_size(others + header)} of the {_size(allowed / 8.0)} it allows for the whole model, which leaves less "
                     f"than {LOWEST_BITS:g} bits per weight for the {count} l2 selects; {advice} l2 select more tensors "
                     "(include=/exclude=)", reachable if reachable > 1.0 else None)


def _round_down(ratio: float) -> str:
    """`ratio` to 3 significant digits, rounded down so that the figure suggested is reachable."""
    digits = 2 - math.floor(math.log10(ratio))
    return f"{math.floor(ratio * 10.0**digits) / 10.0**digits:g}"


def _size(count: float) -> str:
    return f"{count / 2**20:.2f} MiB" if count >= 2**20 else f"{count / 2**10:.2f} KiB"


def _activation_weights(values: dict[str, np.ndarray], calibration: Any, whole: dict[str, str]) -> dict[str, np.ndarray]:
    """Per-weight sensitivities from zoo.optimize.calibration statistics: a linear layer's output error is
    (W - W') H (W - W')^T with H the mean of x x^T over its inputs, whose diagonal weighs each
    input column. A part that is its tensor's weights as they are (`whole`: lowrank's `dense`)
    takes the tensor's; one with no statistics gets the median weight of those that have them,
    as one number (a float64 array of its shape was twice a float32 tensor)."""
    if calibration is None or not hasattr(calibration, "hessian"):
        return {}
    weights: dict[str, np.ndarray] = {}
    for name, v in values.items():
        matrix = calibration.hessian(whole.get(name, name), v.shape[-1]) if v.ndim == 2 else None
        if matrix is not None:
            weights[name] = np.broadcast_to(np.clip(np.diag(matrix), 0, None)[None, :], v.shape)
    if not weights:
        return {}
    median = np.full(1, float(np.median(np.concatenate([w[0] for w in weights.values()]))))
    return {name: weights.get(name, median) for name in values}


def least_step(values: np.ndarray) -> float:
    """The least step at which the tensor's largest weight is a symbol of at most LARGEST_SYMBOL.
    The curves are measured on a sample, which one outlier among many weights is seldom in: a
    512x512 matrix with one weight of 1e9 got a step that needed symbols wider than 32 bits, and
    compress failed naming neither the tensor nor a way round."""
    flat = values.reshape(-1)
    return max(float(flat.max()), -float(flat.min())) / LARGEST_SYMBOL if flat.size else 0.0


def mean_square(values: np.ndarray) -> float:
    """np.mean(values.astype(np.float64) ** 2), to the bit, without the float64 squares of the whole
    tensor (twice its float32 size): numpy sums by halving down to 128 values (pairwise summation),
    and so does this, down to halves of at most BLOCK values that it squares one at a time."""
    flat = values.reshape(-1)

    def total(first: int, count: int) -> float:
        if count <= BLOCK:
            squares = flat[first:first + count].astype(np.float64)
            np.square(squares, out=squares)
            return np.add.reduce(squares)
        half = count // 2
        half -= half % 8  # where numpy's pairwise summation cuts
        return total(first, half) + total(first + half, count - half)

    return float(total(0, flat.size) / flat.size) if flat.size else float("nan")


def _land_on_budget(values: dict[str, np.ndarray], plan: Plan, budget: float, rounds: _Rounds,
                    measure: Measure) -> tuple[Plan, float]:
    """Scale every step and dead zone by one factor so the coded total meets the budget (a larger
    step never codes larger in practice; bisection stops within 0.2 %). Error feedback, where
    encode will use it, codes a little larger than plain rounding at the same step: the factor is
    found with plain rounding, then corrected with a few measurements of what encode will write.
    Returns the plan and the bits its selected tensors were last measured to code to."""
    low, high = -3.0, 3.0  # log2 of the factor
    largest = sum(_coded_bits(values, plan, measure, 2.0**high).values())
    rounds.tick()
    if largest > budget:
        return _scaled(plan, 2.0**high), largest  # as close as it gets (_say_a_missed_target)
    landed = largest  # at 2**high, as the bisection moves it
    for _ in range(LANDING_ROUNDS):
        middle = (low + high) / 2
        total = sum(_coded_bits(values, plan, measure, 2.0**middle).values())
        rounds.tick()
        if total > budget:
            low = middle
        else:
            high, landed = middle, total
        if 0.998 * budget <= total <= budget:
            break
    factor = 2.0**high
    if not any(plan.hessian(n, v) is not None for n, v in values.items()):
        return _scaled(plan, factor), landed
    for _ in range(FEEDBACK_LANDINGS):
        landed = sum(_coded_bits(values, plan, measure, factor, feedback=True).values())
        rounds.tick()
        if 0.99 * budget <= landed <= budget:
            break
        # Rate falls by about one bit per weight per doubling of the step.
        factor *= 2.0 ** ((landed - budget) / sum(v.size for v in values.values()))
    return _scaled(plan, factor), landed


def _say_a_missed_target(target_ratio: float, allowed: float, budget: float, landed: float) -> None:
    """A warning where the landing ended far from target_ratio (it was returned as close as it
    got, with no word): the selected tensors code over their `budget` even at the coarsest steps l2
    takes (many small tensors, each a table and a chunk), or under it where no finer step spends it
    (the least step a tensor's largest weight allows, an eighth of the grid's finest, symbols
    widening from I8 to I16). `allowed`: the bits the target allows the whole model; `landed`: the
    bits the selected tensors code to. The landing itself ends within 1 % of the budget, but the
    ratio reached is an estimate, as the header is (4 % off where small tensors' entries are most
    of the archive: 2.25 for one at 2.34), so a miss is said beyond MISSED, the most the tests let
    an archive's ratio stray from its target, and its figure to two digits."""
    reached = target_ratio * allowed / (allowed - budget + landed)  # the others and the header: what the budget is not
    if abs(reached / target_ratio - 1.0) > MISSED:
        shown = f"{float(f'{reached:.2g}'):g}"  # 120, not 1.2e+02
        warnings.warn(f"l2: target_ratio={target_ratio:g} is missed: the closest l2 comes is about {shown}, a "
                      f"{'larger' if reached < target_ratio else 'smaller'} archive than asked", ZooWarning, stacklevel=3)


def _scaled(plan: Plan, factor: float) -> Plan:
    return Plan({n: plan.scaled(n, factor) for n in plan.steps}, plan.statistics, slope=plan.slope, aliases=plan.aliases,
                least_steps=plan.least_steps)
