"""pranc: the basis is zoo's Philox stream, the fit is a projection, distillation helps."""

import numpy as np
import pytest

import zoo
from zoo import kernels as _kernels
from zoo.codecs.base import TypedArray
from zoo.codecs.lossy.pranc import Pranc, basis, combine, project
from zoo.errors import FormatError, PipelineError

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
