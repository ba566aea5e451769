"""Spec text parses back to the pipeline it was written from (Pipeline.spec, spec_value)."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zoo.codecs.lossy.truncate import Truncate
from zoo.codecs.pipeline import Pipeline
from zoo.codecs.selection import check_patterns
from zoo.errors import PipelineError
from zoo.hub.manifest import variant_of


def _round_trips(include: str) -> None:
    pipeline = Pipeline.from_codecs([Truncate(bits=1, include=include)])
    assert Pipeline.parse(pipeline.spec()) == pipeline
    assert Pipeline.parse(variant_of(pipeline.spec())) == pipeline


@pytest.mark.parametrize("include", ["null", "1", "-2.5e3", "true", '"x"', "[1]", "{}", " *q* ", "*a*,*b*", "*a*|*b*", 'q\\"', "\u00e9*"])
def test_text_that_reads_as_something_else_is_quoted_and_comes_back(include):
    """`include="null"` was written `include=null`, which reads as no include at all: into a zoo,
    `truncate:bits=1,include="null"` was stored as the variant `truncate:bits=1`, and
    `include="1"` was refused as "include must be text, got 1"."""
    _round_trips(include)


def test_the_spec_a_user_writes_is_quoted_only_where_it_must_be():
    assert Pipeline.parse('truncate:bits=1,include="null"').spec() == 'truncate:bits=1,include="null"|fprans'
    assert variant_of('truncate:bits=1,include="1"') == 'truncate:bits=1,include="1"'
    # the names a zoo gave its variants before stay the same bytes
    ordinary = "truncate:bits=4,include=*attn*;*mlp*,exclude=*.0.*|lowrank:energy=0.9|bytegroup|zstd:level=9"
    assert variant_of(ordinary) == Pipeline.parse(ordinary).spec() == ordinary
    assert variant_of("pranc:k=10,include=layers.[0-9].*") == "pranc:k=10,seed=0,steps=300,include=layers.[0-9].*"


def _usable(patterns: str) -> bool:
    try:
        check_patterns(patterns, None)
    except PipelineError:
        return False
    return True


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=12).filter(_usable))
def test_any_text_comes_back(include):
    _round_trips(include)
