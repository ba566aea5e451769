"""Calibration: activation statistics from a real (tiny, random) Hugging Face model, and what
`compress --calib` does with them."""

import numpy as np
import pytest

import zoo
from zoo.optimize.calibration import collect
from zoo.optimize import refine as _refine
from zoo.errors import InputError, ZooWarning

from tests.conftest import write_tiny_llama

pytestmark = pytest.mark.slow  # imports transformers and runs a model

TEXT = "The river was wide and slow, and the ferry crossed it eleven times a day in summer.\n" * 40


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    return write_tiny_llama(tmp_path_factory.mktemp("llama"), TEXT, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                            num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=128, tie_word_embeddings=True)


def test_statistics_cover_every_linear_layer_and_tied_weights(tiny_llama):
    statistics = collect(tiny_llama, tiny_llama / "calibration.txt")
    up = statistics.hessian("model.layers.0.mlp.up_proj.weight", 64)
    down = statistics.hessian("model.layers.1.mlp.down_proj.weight", 128)
    assert up.shape == (64, 64) and down.shape == (128, 128)
    assert np.allclose(up, up.T) and np.linalg.eigvalsh(up).min() > -1e-9
    assert statistics.hessian("model.embed_tokens.weight", 64) is not None  # tied to lm_head
    assert statistics.hessian("model.layers.0.mlp.up_proj.weight", 65) is None
    assert statistics.hessian("no.such.weight", 64) is None


def test_layers_reading_one_input_share_one_exact_matrix(tiny_llama):
    """q, k and v read one tensor, so do gate and up: one H each group (half the memory on a
    large model), equal to the bit to what each layer's own sum gives, and read-only."""
    import torch

    from zoo.optimize import calibration

    statistics = collect(tiny_llama, tiny_llama / "calibration.txt")
    layer = "model.layers.1."
    q, k, v, o = (statistics.matrices[f"{layer}self_attn.{p}_proj.weight"] for p in "qkvo")
    gate, up, down = (statistics.matrices[f"{layer}mlp.{p}_proj.weight"] for p in ("gate", "up", "down"))
    assert q is k is v and gate is up and o is not q and down is not gate
    with pytest.raises(ValueError):
        q[0, 0] = 1.0

    from zoo.optimize.models import load_model, load_tokenizer

    model, tokenizer = load_model(tiny_llama), load_tokenizer(tiny_llama)
    ids = tokenizer(TEXT, add_special_tokens=False)["input_ids"]
    inputs = list(calibration._windows(tokenizer, ids, min(calibration.WINDOW, model.config.max_position_embeddings)))
    linears = {name: m for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    alone, _, followers, tokens, _ = calibration._accumulate(model, inputs, linears, False, False, None)
    assert followers == {} and tokens == statistics.tokens
    for name in ("self_attn.k_proj", "self_attn.v_proj", "mlp.up_proj", "self_attn.o_proj"):
        assert np.array_equal(statistics.matrices[f"{layer}{name}.weight"], alone[f"{layer}{name}"].div_(tokens).numpy())


def test_layers_grouped_differently_on_a_later_input_keep_their_own_sums():
    torch = pytest.importorskip("torch")

    from zoo.optimize import calibration

    class Switching(torch.nn.Module):
        """Two layers that read one tensor on the first input and a copy of it afterwards."""

        def __init__(self):
            super().__init__()
            self.a, self.b, self.calls = torch.nn.Linear(4, 2), torch.nn.Linear(4, 2), 0

        def forward(self, input_ids, attention_mask):
            x = input_ids.to(torch.float32).reshape(-1, 4)
            self.calls += 1
            return self.a(x) + self.b(x if self.calls == 1 else x.clone())

    model = Switching()
    inputs = [torch.arange(8).reshape(1, 8), torch.arange(8, 16).reshape(1, 8)]
    linears = {"a": model.a, "b": model.b}
    with pytest.raises(calibration._Regrouped):
        calibration._accumulate(model, inputs, linears, False, True, None)
    sums, _, followers, _, _ = calibration._accumulate(model, inputs, linears, False, False, None)
    assert followers == {} and torch.equal(sums["a"], sums["b"])


# after lowrank, which leaves each layer whole at energy=1: --calib changed no byte of these (the
# stage looked the statistics up by the part's name, NAME.dense)
@pytest.mark.parametrize("spec", ["codebook:bits=3,rows=16", "truncate:bits=2", "lowrank:energy=1|codebook:bits=3,rows=16",
                                  "lowrank:energy=1|truncate:bits=2"])
def test_compress_with_calibration_lowers_the_output_error(tiny_llama, tmp_path, spec):
    from safetensors.numpy import load_file

    statistics = collect(tiny_llama, tiny_llama / "calibration.txt")
    original = load_file(tiny_llama / "model.safetensors")
    errors = {}
    for calibration in (None, tiny_llama / "calibration.txt"):
        archive = tmp_path / f"{calibration is None}.zoo"
        zoo.compress(tiny_llama, archive, spec, calibration=calibration)
        with zoo.open(archive) as opened:
            total = 0.0
            for name, value in original.items():
                hessian = statistics.hessian(name, value.shape[-1]) if value.ndim == 2 else None
                if hessian is not None:
                    total += _refine.output_error(value.astype(np.float64), opened.get_tensor(name).astype(np.float64), hessian)
        errors[calibration is None] = total
    assert errors[False] < 0.85 * errors[True]


def test_calibration_needs_a_model_folder_and_readable_text(tiny_llama, tmp_path):
    with pytest.raises(InputError, match="calibration text"):
        collect(tiny_llama, tmp_path / "missing.txt")
    (tmp_path / "short.txt").write_text("hi")
    with pytest.raises(InputError, match="tokens"):
        collect(tiny_llama, tmp_path / "short.txt")
    lone = tmp_path / "lone"
    lone.mkdir()
    (lone / "model.safetensors").write_bytes((tiny_llama / "model.safetensors").read_bytes())
    with pytest.raises(InputError, match="Hugging Face model folder"):
        zoo.compress(lone / "model.safetensors", tmp_path / "x.zoo", "codebook", calibration=tiny_llama / "calibration.txt")
    assert not (tmp_path / "x.zoo").exists()


def test_calibration_refuses_a_config_that_does_not_describe_the_weights(tiny_llama, tmp_path):
    """A folder whose config names another model: transformers built that model randomly
    initialised, and calibration ran it (a bare {"model_type": "bert"} built BERT-base: over ten
    minutes at 3 GB), statistics of no layer the archive holds, and nothing said so."""
    import shutil

    other = tmp_path / "other"
    shutil.copytree(tiny_llama, other)
    (other / "config.json").write_text('{"model_type": "bert", "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, '
                                       '"intermediate_size": 64}')
    with pytest.raises(InputError, match=r"weights the model needs are missing from its files"):
        collect(other, other / "calibration.txt")


def test_calibration_inputs_carry_the_special_tokens_real_inputs_have(tiny_llama):
    import transformers

    from zoo.optimize.calibration import special_frame

    tokenizer = transformers.AutoTokenizer.from_pretrained(tiny_llama)
    assert special_frame(tokenizer) == ([], [])  # this toy tokenizer adds none
    bert = transformers.BertTokenizerFast(vocab_file=_bert_vocab(tiny_llama))
    assert special_frame(bert) == ([bert.cls_token_id], [bert.sep_token_id])


def _bert_vocab(folder):
    path = folder / "vocab.txt"
    path.write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\na\nb")
    return str(path)


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")

    folder = tmp_path_factory.mktemp("bert")
    words = sorted(set(TEXT.replace(",", " ").replace(".", " ").lower().split()))
    (folder / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]))
    transformers.BertTokenizerFast(vocab_file=str(folder / "vocab.txt")).save_pretrained(folder)
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=5 + len(words), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=64, max_position_embeddings=64)
    transformers.BertModel(config).save_pretrained(folder)
    (folder / "calibration.txt").write_text(TEXT)
    return folder


def test_an_encoder_is_calibrated_on_sentences_with_pooled_statistics(tiny_bert):
    folder = tiny_bert
    with pytest.warns(ZooWarning, match="40 sentences"):  # TEXT is one sentence 40 times
        statistics = collect(folder, folder / "calibration.txt")
    pooled = statistics.hessian("encoder.layer.0.intermediate.dense.weight", 32)
    assert pooled is not None and np.allclose(pooled, pooled.T)
    # The mean input of each sentence dominates: one sentence repeated gives a nearly rank-one
    # pooled part, so the largest eigenvalue holds most of the trace.
    eigenvalues = np.linalg.eigvalsh(pooled)
    assert eigenvalues[-1] > 0.5 * eigenvalues.sum()


def test_enough_sentences_give_no_warning_and_the_cli_shows_one_line(tiny_bert, tmp_path):
    import subprocess
    import sys
    import warnings

    (tmp_path / "long.txt").write_text(TEXT * 4)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ZooWarning)
        collect(tiny_bert, tmp_path / "long.txt")
    done = subprocess.run([sys.executable, "-m", "zoo", "compress", str(tiny_bert), "-o", str(tmp_path / "b.zoo"), "-p", "truncate:bits=4",
                           "--calib", str(tiny_bert / "calibration.txt"), "--json"], check=False, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stderr.splitlines() if "sentences" in line]
    assert len(lines) == 1 and lines[0].startswith("warning: ") and "40 sentences" in lines[0]
    assert "Traceback" not in done.stderr and "ZooWarning" not in done.stderr


def test_a_part_that_is_its_tensors_weights_takes_its_statistics(tiny_llama):
    """lowrank's `dense` part is the matrix itself, under the label NAME.dense: l2's error feedback
    and its rate weights looked its statistics up by that label, found none, and rounded it plainly
    with the median weight. A factor, which is no layer of the model, still takes the median."""
    from zoo.codecs.lossy.deadzone import Plan
    from zoo.optimize.rate import _activation_weights

    statistics = collect(tiny_llama, tiny_llama / "calibration.txt")
    name = "model.layers.0.mlp.up_proj.weight"
    rng = np.random.default_rng(0)
    values = {f"{name}.dense": rng.standard_normal((128, 64)).astype(np.float32),
              "model.layers.0.mlp.down_proj.weight.left": rng.standard_normal((64, 8)).astype(np.float32)}
    whole = {f"{name}.dense": name}
    plan = Plan({}, statistics, aliases=whole)
    assert np.array_equal(plan.hessian(f"{name}.dense", values[f"{name}.dense"]), statistics.hessian(name, 64))
    assert Plan({}, statistics).hessian(f"{name}.dense", values[f"{name}.dense"]) is None
    weights = _activation_weights(values, statistics, whole)
    assert np.array_equal(weights[f"{name}.dense"][0], np.clip(np.diag(statistics.hessian(name, 64)), 0, None))
    assert weights["model.layers.0.mlp.down_proj.weight.left"].size == 1  # the median, as one number
