"""pranc: the basis is zoo's Philox stream, the fit is a projection, distillation helps."""

import numpy as np
import pytest

import zoo
from zoo import kernels as _kernels
from zoo.codecs.base import TypedArray
from zoo.codecs.lossy.pranc import Pranc, basis, combine, project
from zoo.errors import FormatError, InputError, PipelineError

from tests.conftest import write_safetensors


def test_basis_rows_are_consecutive_philox_runs():
    rows = basis(7, 3, 4, 10)
    for j in range(4):
        assert rows[j].tobytes() == _kernels.philox_uniform(7, 3, 10, j * 10).tobytes()
    coefficients = np.array([0.5, -1.0, 0.25, 2.0], np.float32)
    assert np.allclose(combine(coefficients, 7, 3, 10), coefficients @ rows, atol=1e-6)


def test_a_tensor_in_its_basis_comes_back_and_others_are_projected(tmp_path):
    rows = basis(0, 0, 8, 32 * 48)
    inside = (np.arange(1, 9, dtype=np.float32) / 100) @ rows
    assert np.allclose(project(inside, rows), np.arange(1, 9) / 100, atol=1e-4)
    rng = np.random.default_rng(0)
    outside = rng.standard_normal((32, 48)).astype(np.float32)
    source = write_safetensors(tmp_path / "m.safetensors", {"a.weight": ("F32", inside.reshape(32, 48)), "b.weight": ("F32", outside)})
    report = zoo.compress(source, tmp_path / "m.zoo", "pranc:k=16,steps=0")
    with zoo.open(tmp_path / "m.zoo") as archive:
        assert np.allclose(archive.get_tensor("a.weight").reshape(-1), inside, atol=1e-4)
        got = archive.get_tensor("b.weight")
    residual = np.sum((got - outside) ** 2)
    assert residual < np.sum(outside**2)  # a projection never grows the error past the tensor itself
    assert abs(float(np.sum(got * (got - outside)))) < 1e-2 * np.sum(outside**2)  # orthogonal residual
    assert report.compressed_bytes < source.stat().st_size / 5  # 2 x 8 coefficients; the header is most of it


@pytest.mark.slow
def test_distillation_beats_the_weight_fit_on_the_outputs(tmp_path):
    import torch
    import transformers
    from safetensors.numpy import load_file

    from zoo.optimize.teacher import Teacher, default_text

    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=256, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=32, max_position_embeddings=64, num_labels=3, initializer_range=0.3)
    transformers.BertForSequenceClassification(config).save_pretrained(tmp_path)
    teacher = Teacher(tmp_path, default_text(), sequence_length=64, max_sequences=8)
    arrays = {n: TypedArray(v, "F32") for n, v in load_file(tmp_path / "model.safetensors").items()}

    def distortion(codec):
        plan = codec.survey(lambda: iter(arrays.items()), teacher)
        overrides = {}
        for name, array in arrays.items():
            if codec.selects(name, array):
                result = codec.encode(array, name, plan)
                decoded = codec.decode(result.parts, result.meta, "F32", array.shape)
                overrides[teacher.parameter(name)] = torch.from_numpy(decoded.data.copy())
        return teacher.mean_distortion(overrides)

    assert distortion(Pranc(k=200, steps=150)) < 0.5 * distortion(Pranc(k=200, steps=0))


def test_bad_parameters_and_archives():
    with pytest.raises(PipelineError, match="k must"):
        Pranc(k=0)
    with pytest.raises(PipelineError, match="seed"):
        Pranc(seed=-1)
    coefficients = TypedArray(np.ones(3, np.float32), "F32")
    with pytest.raises(FormatError, match="seed"):
        Pranc().decode({"coefficients": coefficients}, {"seed": "x", "stream": 0}, "F32", (2, 2))
    with pytest.raises(FormatError, match="coefficients"):
        Pranc().decode({"other": coefficients}, {"seed": 0, "stream": 0}, "F32", (2, 2))


def _counting_conversions(monkeypatch):
    """The sizes of the arrays pranc converts to float32, as it converts them."""
    from zoo.codecs.lossy import pranc

    converted, convert = [], pranc.to_float32
    monkeypatch.setattr(pranc, "to_float32", lambda raw, dtype, *rest: converted.append(raw.size) or convert(raw, dtype, *rest))
    return converted


def test_a_model_too_large_is_refused_from_its_shapes_with_advice_that_helps(tmp_path, monkeypatch):
    """pranc made a float32 copy of every tensor it takes before it refused a model too large for
    it (1.3 GB for 400 MB of BF16: a 7B model was killed for memory instead), and advised a smaller
    k where k was 1 already."""
    from zoo.codecs.lossy import pranc

    monkeypatch.setattr(pranc, "MAX_BASIS_ELEMENTS", 1000)  # the two 1024-weight tensors are too many even at k=1
    converted = _counting_conversions(monkeypatch)
    rng = np.random.default_rng(0)
    source = write_safetensors(tmp_path / "m.safetensors", {f"{name}.weight": ("F32", rng.standard_normal((32, 32)).astype(np.float32))
                                                            for name in ("a", "b")})
    with pytest.raises(InputError, match=r"take fewer tensors with include=\.\.\. or exclude=\.\.\.") as refused:
        zoo.compress(source, tmp_path / "m.zoo", "pranc:k=1")
    assert "k=" not in str(refused.value) and converted == [] and not (tmp_path / "m.zoo").exists()
    with pytest.raises(InputError, match="leave it out with exclude=") as refused:  # one tensor, no survey
        Pranc(k=1).encode(TypedArray(rng.standard_normal((32, 32)).astype(np.float32), "F32"), "a.weight")
    assert "k=1 or less" not in str(refused.value) and converted == []
    # where a smaller k fits, the refusal names the largest, which then goes through
    monkeypatch.setattr(pranc, "MAX_BASIS_ELEMENTS", 40000)
    with pytest.raises(InputError, match=r"use k=\d+ or less") as refused:
        zoo.compress(source, tmp_path / "m.zoo", "pranc:k=64,steps=0")
    assert converted == []
    fitting = int(str(refused.value).split("use k=")[1].split()[0])
    zoo.compress(source, tmp_path / "m.zoo", f"pranc:k={fitting},steps=0")
    with pytest.raises(InputError, match="basis values"):
        zoo.compress(source, tmp_path / "m.zoo", f"pranc:k={fitting + 1},steps=0", force=True)


@pytest.mark.parametrize("survey", [True, False])
def test_coefficients_float32_cannot_hold_are_refused_rather_than_decoded_as_nan(tmp_path, survey):
    """Finite weights near float32's largest have coefficients past it at k near n: they were
    stored as infinities, and every weight here decoded as NaN (inf - inf), exit 0."""
    rng = np.random.default_rng(0)
    weights = rng.standard_normal((16, 16))
    weights = (weights / np.abs(weights).max() * 3e38).astype(np.float32)
    source = write_safetensors(tmp_path / "w.safetensors", {"w.weight": ("F32", weights)})
    with pytest.raises(InputError, match=r"coefficients fitted to tensor 'w.weight' reach .*past float32's largest.*exclude="):
        if survey:
            zoo.compress(source, tmp_path / "w.zoo", "pranc:k=256")
        else:
            Pranc(k=256).encode(TypedArray(weights, "F32"), "w.weight")
    assert not (tmp_path / "w.zoo").exists()
    zoo.compress(source, tmp_path / "w.zoo", "pranc:k=16")  # fewer coefficients are held, and decode finite
    with zoo.open(tmp_path / "w.zoo") as archive:
        assert np.isfinite(archive.get_tensor("w.weight")).all()
