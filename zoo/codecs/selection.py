"""Which tensors a lossy stage touches, after llama-quantize's ``--tensor-type``.

A stage takes ``include`` and ``exclude``: glob patterns (``fnmatch``, case-insensitive)
separated by ``;``, matched against the tensor name (a part of an earlier stage is named
``tensor.part``, e.g. ``encoder.layer.0.attention.self.query.weight.left``). Some tensors are
never touched, whatever the patterns say: vectors and scalars, integer tensors, and names of
norms, biases and position ids, whose few bytes matter far more to quality than to size.
"""

from __future__ import annotations

import fnmatch
import re
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


def selected(name: str, dtype: str, shape: tuple[int, ...] | list[int], include: str | None = None, exclude: str | None = None) -> bool:
    """Whether a lossy stage whose patterns are `include` and `exclude` touches this tensor. A matrix
    is two dimensions longer than 1: [1, 4096] and [4096, 1, 1] are vectors, [1, 1] a scalar."""
    if dtype not in FLOAT_DTYPES or sum(d > 1 for d in shape) < 2 or 0 in shape:
        return False
    if _ALWAYS is not None and _ALWAYS.match(name):
        return False
    wanted = _compile(include)
    if wanted is not None and not wanted.match(name):
        return False
    unwanted = _compile(exclude)
    return unwanted is None or not unwanted.match(name)
