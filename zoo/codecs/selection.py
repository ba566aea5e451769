"""Which tensors a lossy stage touches, after llama-quantize's ``--tensor-type``.

A stage takes ``include`` and ``exclude``: glob patterns (``fnmatch``, case-insensitive)
separated by ``;``, matched against the tensor's name in its file and its archive key, which is
``path::name`` where a file before took the name (docs/FORMAT.md): a pattern that matches either
picks the tensor. A part of an earlier stage is matched by its own name, ``tensor.part`` (e.g.
``encoder.layer.0.attention.self.query.weight.left``), and by its tensor's names: what lowrank
left of a tensor that a later stage's ``exclude=`` names stays as lowrank left it. Some tensors
are never touched, whatever the patterns say: vectors and scalars, integer tensors, and names of
norms, biases and position ids, whose few bytes matter far more to quality than to size.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable
from functools import lru_cache

from zoo.dtypes import FLOAT_DTYPES
from zoo.errors import PipelineError
from zoo.globs import unclosed_bracket

ALWAYS_LOSSLESS = ("*norm*", "*.bias", "*_bias", "*position_ids*", "*.ln_*", "*ln_f.*")


@lru_cache(maxsize=256)
def _compile(patterns: str | None) -> re.Pattern[str] | None:
    if patterns is None:
        return None
    if not isinstance(patterns, str):
        raise PipelineError(f"tensor patterns must be text such as '*attn*;*mlp*', not {patterns!r}")
    globs = [p.strip() for p in patterns.split(";") if p.strip()]
    if not globs:
        raise PipelineError("empty tensor pattern")
    for glob in globs:
        if unclosed_bracket(glob):
            raise PipelineError(f"tensor pattern {glob!r} opens a '[' that no ']' closes")
    return re.compile("|".join(f"(?:{fnmatch.translate(g)})" for g in globs), re.IGNORECASE)


_ALWAYS = _compile(";".join(ALWAYS_LOSSLESS))


def check_patterns(include: str | None, exclude: str | None) -> None:
    """Raise PipelineError now (at spec parsing) rather than at the first tensor."""
    _compile(include)
    _compile(exclude)


class Label(str):
    """What a lossy stage is handed as the name of what it codes: the text is the tensor's archive
    key, or ``label.part`` for an earlier stage's part; `names` are all the names the patterns
    match it by (see the module's docstring), the text first. A str, so that every stage and
    survey takes it where it took the name. `inputs` is the label of the
    tensor whose inputs it takes, whose calibration statistics therefore describe its own: a
    tensor's own, and lowrank's dense part and right factor take their tensor's; None for a
    part that takes other inputs (a left factor takes the right factor's outputs)."""

    names: tuple[str, ...]
    inputs: str | None

    def __new__(cls, text: str, names: Iterable[str], inputs: str | None) -> Label:
        label = super().__new__(cls, text)
        label.names = tuple(dict.fromkeys((str(text), *names)))
        label.inputs = inputs
        return label

    def __reduce__(self) -> tuple[type, tuple[str, tuple[str, ...], str | None]]:
        return type(self), (str(self), self.names, self.inputs)


def tensor_label(key: str, name: str | None) -> Label:
    """The label of a model's tensor stored under archive key `key`, called `name` in its file."""
    return Label(key, (name,) if name else (), key)


def part_label(label: str, part: str, takes_inputs: bool) -> Label:
    """The label of the part `part` an earlier stage made of `label`; `takes_inputs` when the part
    takes the inputs `label` takes (zoo.codecs.base.Transformed.inputs)."""
    names = names_of(label)
    return Label(f"{label}.{part}", (*(f"{name}.{part}" for name in names), *names), inputs_of(label) if takes_inputs else None)


def names_of(label: str) -> tuple[str, ...]:
    """Every name the patterns match `label` by: a plain string is its one name."""
    return label.names if isinstance(label, Label) else (label,)


def inputs_of(label: str) -> str | None:
    """The label of the tensor whose inputs `label` takes (see Label): a plain string, its own."""
    return label.inputs if isinstance(label, Label) else label


def selected(name: str, dtype: str, shape: tuple[int, ...] | list[int], include: str | None = None, exclude: str | None = None) -> bool:
    """Whether a lossy stage whose patterns are `include` and `exclude` touches this tensor, `name`
    a plain name or a Label (matched by each of its names). A matrix is two dimensions longer than
    1: [1, 4096] and [4096, 1, 1] are vectors, [1, 1] a scalar."""
    if dtype not in FLOAT_DTYPES or sum(d > 1 for d in shape) < 2 or 0 in shape:
        return False
    names = names_of(name)
    if _ALWAYS is not None and any(_ALWAYS.match(each) for each in names):
        return False
    wanted = _compile(include)
    if wanted is not None and not any(wanted.match(each) for each in names):
        return False
    unwanted = _compile(exclude)
    return unwanted is None or not any(unwanted.match(each) for each in names)
