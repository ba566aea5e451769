"""Sequential calibration: the model rounded layer after layer, each layer's statistics taken from
inputs that the already rounded layers before it produce (zoo.calibration.sequential), on a real
tiny causal LM and a real tiny encoder."""

import numpy as np
import pytest

import zoo
from zoo.calibration import collect, sequential
from zoo.codecs.base import TypedArray
from zoo.codecs.truncate import Truncate

from .test_lossy_calibration import TEXT, tiny_llama  # noqa: F401  (a fixture)

pytestmark = pytest.mark.slow  # imports transformers and runs a model


def _file_tensors(folder):
    from safetensors.numpy import load_file

    return {name: TypedArray(value, "F32") for name, value in load_file(folder / "model.safetensors").items()}


def _round_each(codec, tensors, order):
    def round_tensor(name, hessian):
        order.append((name, hessian is not None))
        array = tensors[name]
        return codec.round_values(array.data.astype(np.float64), array.dtype).reshape(array.shape)

    return round_tensor


def test_each_layer_sees_the_rounded_layers_before_it(tiny_llama):  # noqa: F811
    one_pass = collect(tiny_llama, tiny_llama / "calibration.txt")
    codec = Truncate(bits=2)
    tensors = {name: array for name, array in _file_tensors(tiny_llama).items() if codec.selects(name, array)}
    order = []
    statistics = sequential(one_pass, list(tensors), _round_each(codec, tensors, order))

    names = [name for name, _ in order]
    assert sorted(names) == sorted(tensors)  # each selected tensor rounded exactly once
    assert names.index("model.layers.0.self_attn.q_proj.weight") < names.index("model.layers.0.self_attn.o_proj.weight")
    assert names.index("model.layers.0.mlp.down_proj.weight") < names.index("model.layers.1.self_attn.q_proj.weight")
    # The embedding is tied to the head, so it is rounded with the head, last, against the head's H.
    assert order[-1] == ("model.embed_tokens.weight", True)
    # Nothing upstream of layer 0's attention is rounded yet: its H is the original model's.
    first = "model.layers.0.self_attn.q_proj.weight"
    assert np.allclose(statistics.hessian(first, 64), one_pass.hessian(first, 64))
    later = "model.layers.1.mlp.up_proj.weight"
    assert not np.allclose(statistics.hessian(later, 64), one_pass.hessian(later, 64), rtol=1e-3)


def test_an_encoder_rounds_its_embedding_tables_first(tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")

    folder = tmp_path / "bert"
    words = sorted(set(TEXT.replace(",", " ").replace(".", " ").lower().split()))
    (tmp_path / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]))
    transformers.BertTokenizerFast(vocab_file=str(tmp_path / "vocab.txt")).save_pretrained(folder)
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=5 + len(words), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=64, max_position_embeddings=64)
    transformers.BertModel(config).save_pretrained(folder)
    (folder / "calibration.txt").write_text(TEXT)
    one_pass = collect(folder, folder / "calibration.txt")
    codec = Truncate(bits=2)
    tensors = {name: array for name, array in _file_tensors(folder).items() if codec.selects(name, array)}
    order = []
    statistics = sequential(one_pass, list(tensors), _round_each(codec, tensors, order))

    tables = [name for name, has_statistics in order if not has_statistics]
    assert set(tables) == {name for name in tensors if "embeddings" in name}
    assert [name for name, _ in order[:len(tables)]] == tables
    # Rounded embeddings change what every layer reads, the first included.
    query = "encoder.layer.0.attention.self.query.weight"
    assert not np.allclose(statistics.hessian(query, 32), one_pass.hessian(query, 32), rtol=1e-3)


def test_truncate_rounds_in_its_survey_and_falls_back_for_changed_tensors(tiny_llama):  # noqa: F811
    calibration = collect(tiny_llama, tiny_llama / "calibration.txt")
    codec = Truncate(bits=2)
    tensors = _file_tensors(tiny_llama)
    plan = codec.survey(lambda: iter(tensors.items()), calibration)
    name = "model.layers.1.mlp.down_proj.weight"
    array = tensors[name]
    surveyed = codec.encode_tensor(name, array, plan)
    # The sequential H of this layer differs from the one-pass H, and so does the rounding.
    assert not np.array_equal(surveyed.parts["sign_mantissa"].data, codec.encode_tensor(name, array, calibration).parts["sign_mantissa"].data)
    # A tensor that is not the one surveyed (an earlier stage changed it) is rounded against
    # its layer's sequential H rather than given the stored result.
    changed = TypedArray(array.data * np.float32(1.5), "F32")
    against_plan = codec.encode_tensor(name, changed, plan)
    expected = codec.encode(codec._calibrated(changed, plan.statistics.hessian(name, 128)))
    for part in ("exponent", "sign_mantissa"):
        assert np.array_equal(against_plan.parts[part].data, expected.parts[part].data)


def test_a_base_keeps_the_one_pass_statistics(tiny_llama):  # noqa: F811
    calibration = collect(tiny_llama, tiny_llama / "calibration.txt")
    calibration.base = object()  # any base: the sequential pass cannot run base + difference
    assert Truncate(bits=2).survey(lambda: iter(_file_tensors(tiny_llama).items()), calibration) is calibration


def test_compressed_archive_holds_the_surveyed_rounding(tiny_llama, tmp_path):  # noqa: F811
    archive = tmp_path / "model.zoo"
    zoo.compress(tiny_llama, archive, "truncate:bits=2", calibration=tiny_llama / "calibration.txt")
    codec = Truncate(bits=2)
    tensors = _file_tensors(tiny_llama)
    plan = codec.survey(lambda: iter(tensors.items()), collect(tiny_llama, tiny_llama / "calibration.txt"))
    with zoo.open(archive) as opened:
        for name, (_, rounded) in plan.rounded.items():
            assert np.array_equal(opened.get_tensor(name), rounded.data), name
