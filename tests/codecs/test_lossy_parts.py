"""What a later lossy stage makes of an earlier one's parts, and how the stages' patterns name
tensors: by the tensor's name, its archive key, and for a part its tensor's names too; the
calibration statistics each part takes; and a lowrank budget no rank reaches."""

import warnings

import numpy as np
import pytest

import zoo
from zoo.codecs.base import TypedArray
from zoo.codecs.lossy.lowrank import LowRank
from zoo.codecs.pipeline import Pipeline
from zoo.codecs.selection import selected
from zoo.errors import ZooWarning
from zoo.optimize import refine as _refine
from zoo.optimize.calibration import Statistics

from tests.conftest import write_safetensors


def _gaussian(rows, cols, seed):
    return np.random.default_rng(seed).normal(size=(rows, cols)).astype(np.float32)


def _low_rank(rows, cols, rank, seed):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(rows, rank)) @ rng.normal(size=(rank, cols)) + 0.01 * rng.normal(size=(rows, cols))).astype(np.float32)


def _read(path, name):
    with zoo.open(path) as archive:
        return archive.read_tensor(name).data, archive.tensor_info(name)["root"]


def test_a_pattern_matches_a_parts_tensor_by_its_names():
    from zoo.codecs.selection import part_label, tensor_label

    label = tensor_label("sub/model.safetensors::layer.0.weight", "layer.0.weight")
    left = part_label(label, "left", False)
    assert left == "sub/model.safetensors::layer.0.weight.left"  # the label's text is the key's, as before
    for pattern in ("layer.0.weight", "sub/*", "*.left", "layer.0.weight.left"):
        assert not selected(left, "F32", (4, 4), exclude=pattern), pattern
        assert selected(left, "F32", (4, 4), include=pattern), pattern
    assert selected(left, "F32", (4, 4), exclude="*.right") and not selected(left, "F32", (4, 4), include="*.right")
    assert not selected(part_label("layer.0.weight", "dense", True), "F32", (4, 4), exclude="layer.0.weight")  # a plain name too


def test_a_later_stages_exclude_keeps_what_lowrank_left_of_the_tensor(tmp_path):
    """lowrank left a full-rank layer whole as its part `dense`, which the later stage saw as
    `layer.0.weight.dense`: exclude=layer.0.weight no longer named it, and codebook:bits=2 left a
    relative error of 0.34 on the tensor it was told to leave lossless."""
    weights = {"layer.0.weight": _gaussian(64, 96, 0), "factored.weight": _low_rank(96, 64, 4, 1)}
    source = write_safetensors(tmp_path / "m.safetensors", {name: ("F32", value) for name, value in weights.items()})
    with pytest.warns(ZooWarning, match=r"stage 2 of the pipeline \(codebook\) coded no tensor"):
        zoo.compress(source, tmp_path / "m.zoo", "lowrank:energy=0.999|codebook:bits=2,exclude=layer.0.weight;factored.weight")
    got, root = _read(tmp_path / "m.zoo", "layer.0.weight")
    assert set(root["parts"]) == {"dense"} and np.array_equal(got, weights["layer.0.weight"])  # left whole, and lossless
    assert all("leaf" in part for part in _read(tmp_path / "m.zoo", "factored.weight")[1]["parts"].values())  # factors: lowrank's only
    zoo.compress(source, tmp_path / "n.zoo", "lowrank:energy=0.999|codebook:bits=2,exclude=*.left")  # a part's own name still picks it
    parts = _read(tmp_path / "n.zoo", "factored.weight")[1]["parts"]
    assert "leaf" in parts["left"] and parts["right"]["stage"] == 1


def test_patterns_match_a_tensors_name_where_its_key_is_path_and_name(tmp_path):
    """The second file's copy of a name is stored under `sub/model.safetensors::NAME`, and the
    patterns were matched against that key: exclude=NAME left the copy lossy. The key still picks."""
    weights = {"layer.0.weight": ("F32", _gaussian(32, 48, 2)), "other.weight": ("F32", _gaussian(32, 48, 3))}
    for where in ("dup", "dup/sub"):
        (tmp_path / where).mkdir(parents=True)
        write_safetensors(tmp_path / where / "model.safetensors", weights)
    copy = "sub/model.safetensors::layer.0.weight"
    for exclude, exact in (("layer.0.weight", {"layer.0.weight", copy}), (copy, {copy})):
        zoo.compress(tmp_path / "dup", tmp_path / "dup.zoo", f"truncate:bits=1,exclude={exclude}", force=True)
        for key in ("layer.0.weight", copy, "sub/model.safetensors::other.weight"):
            original = weights[key.rpartition("::")[2]][1]
            assert np.array_equal(_read(tmp_path / "dup.zoo", key)[0], original) is (key in exact), (exclude, key)


def _statistics(cols, seed=0):
    """Statistics (H) of correlated inputs, as zoo.optimize.calibration.collect makes them."""
    rng = np.random.default_rng(seed)
    inputs = rng.normal(size=(2048, cols)) @ (rng.normal(size=(cols, cols)) * rng.gamma(0.5, 2, cols)) / np.sqrt(cols)
    return inputs.T @ inputs / len(inputs)


def _coded(spec, layers, statistics=None):
    """{name: (decoded tensor, its node tree, its leaves' arrays by id)} of `layers` through `spec`'s
    array stages, surveyed as compress does."""
    pipeline = Pipeline.parse(spec)
    labelled = {name: TypedArray(value, "F32") for name, value in layers.items()}
    plans = pipeline.survey(lambda: iter(labelled.items()), statistics)
    coded = {}
    for label, array in labelled.items():
        root, leaves = pipeline.transform(label, array, plans)
        arrays = {id(leaf): leaf_array.data for leaf, leaf_array in leaves}
        coded[label] = pipeline.untransform(root, lambda leaf: TypedArray(arrays[id(leaf)], leaf["dtype"])).data, root, arrays
    return coded


def _part(coded, part):
    """The arrays stored for `part` of a tensor that `_coded` gave."""
    _, root, arrays = coded
    return [arrays[id(node["leaf"])] for node in root["parts"][part]["parts"].values()]


@pytest.mark.parametrize("second", ["codebook:bits=3", "truncate:bits=2"])
def test_calibration_reaches_the_parts_of_lowrank_that_take_the_layers_inputs(second):
    """codebook and truncate looked the statistics up by the part's label, `layer.weight.dense`,
    which names none: --calib changed no byte of `lowrank|codebook` or `lowrank|truncate`. The
    dense part and the right factor take the layer's inputs, so its H; the left factor takes the
    right factor's outputs, which no statistics describe: said once a run, in a warning."""
    hessian = _statistics(96)
    statistics = Statistics({"a.weight": hessian, "b.weight": hessian}, tokens=2048)
    whole = {"a.weight": _gaussian(64, 96, 4)}  # full rank: energy=1 leaves it whole
    plain, calibrated = (_coded(f"lowrank:energy=1|{second}", whole, s)["a.weight"] for s in (None, statistics))
    assert set(calibrated[1]["parts"]) == {"dense"}
    original = whole["a.weight"].astype(np.float64)
    errors = [_refine.output_error(original, got.astype(np.float64), hessian) for got, _, _ in (plain, calibrated)]
    assert errors[1] < 0.9 * errors[0]

    factored = {"a.weight": _low_rank(64, 96, 8, 5), "b.weight": _low_rank(64, 96, 8, 6)}
    spec = f"lowrank:energy=0.999|{second}"
    plain = _coded(spec, factored)
    with pytest.warns(ZooWarning) as said:
        calibrated = _coded(spec, factored, statistics)
    assert [str(w.message) for w in said] == [
        f"{second.partition(':')[0]}: calibration (--calib) does not apply to 'a.weight.left' or parts like it, whose inputs are another "
        "part's outputs (a lowrank left factor's are the right factor's), which the statistics do not describe: they are coded without it"]
    for name in factored:
        assert calibrated[name][1]["parts"]["right"]["stage"] == 1
        assert all(np.array_equal(x, y) for x, y in zip(_part(plain[name], "left"), _part(calibrated[name], "left")))
        assert not all(np.array_equal(x, y) for x, y in zip(_part(plain[name], "right"), _part(calibrated[name], "right")))


def test_a_lowrank_ratio_out_of_reach_is_said_once(tmp_path):
    """ratio=0.01 of two layers whose rank 1 takes 0.29 of them: the factors took 29 times the
    budget, exit 0, unsaid. One warning for the model names the ratio asked and reached."""
    weights = {"layer.0.weight": ("F32", _gaussian(64, 96, 6)), "tall.weight": ("F32", _gaussian(4000, 2, 7))}
    source = write_safetensors(tmp_path / "m.safetensors", weights)
    with pytest.warns(ZooWarning) as said:
        zoo.compress(source, tmp_path / "m.zoo", "lowrank:ratio=0.01")
    messages = [str(w.message) for w in said if "lowrank" in str(w.message)]
    assert messages == ["lowrank: ratio=0.01 is out of reach for 'layer.0.weight' and 'tall.weight': their factors take 0.294 of "
                        "their size at rank 1, the least there is (a matrix whose rank 1 would not be smaller stays whole)"]
    with warnings.catch_warnings():
        warnings.simplefilter("error", ZooWarning)  # a budget the ranks meet says nothing
        zoo.compress(source, tmp_path / "n.zoo", "lowrank:ratio=0.5")
    with pytest.warns(ZooWarning, match=r"ratio=0.5 is out of reach for 'w': its factors take 0.5001 of its size"):  # one tensor, no survey
        LowRank(ratio=0.5).encode(TypedArray(_gaussian(2, 12288, 8), "F32"), "w")
