"""A variant's name is its pipeline's spec, and it reads back as that pipeline (zoo.hub.manifest.variant_of)."""

import warnings

from zoo.api import compress_into
from zoo.codecs.pipeline import Pipeline
from zoo.hub.store import Store


def test_patterns_that_read_as_json_name_variants_of_their_own(tiny_model, tmp_path):
    """`include="null"` was named `truncate:bits=1`, which reads as no include: the real
    `truncate:bits=1` was then refused as "already in the zoo", and `include="1"` could not be
    stored at all ("include must be text, got 1")."""
    store = Store(tmp_path / "zoo")
    specs = ['truncate:bits=1,include="null"', "truncate:bits=1", 'truncate:bits=1,include="1"']
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the patterns match no tensor: "coded no tensor"
        entries = [compress_into(store, tiny_model, "org/tiny", pipeline=spec) for spec in specs]
    assert [entry.variant for entry in entries] == specs
    for spec, entry in zip(specs, entries):
        assert Pipeline.parse(entry.variant) == Pipeline.parse(spec)
        assert store.resolve(f"org/tiny:{spec}").archive == entry.archive
