"""Models of shapes the evaluator met late: a head of one output, a multimodal `*Model`, a causal
LM's classifier with no pad token, RoBERTa's position table, a lone weights file run with --kind.
Each is random (untrained): these tests are about which figures are made, not their size."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

pytest.importorskip("transformers")

import torch  # noqa: E402
import transformers  # noqa: E402

from zoo.errors import InputError, OutputExistsError  # noqa: E402
from zoo.evaluate import evaluate  # noqa: E402
from zoo.evaluate.core import default_sentences as zoo_sentences  # noqa: E402
from zoo.evaluate.cache import ReferenceCache  # noqa: E402
from zoo.evaluate.noise import noisy_copy  # noqa: E402

from tests.eval_models import CONTEXT, VOCABULARY, byte_tokenizer  # noqa: E402

SMALL = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2}


def _save(model, folder: Path, for_encoder: bool = True) -> Path:
    model.save_pretrained(folder)
    byte_tokenizer(for_encoder).save_pretrained(folder)
    return folder


@pytest.fixture
def cache(tmp_path):
    return ReferenceCache(tmp_path / "eval-cache")


def test_a_head_of_one_output_is_read_as_a_yes_no_not_a_softmax_over_one(tmp_path, cache):
    """A reranker's one score went through a softmax of one output, always 1: KL 0 and full label
    agreement whatever the candidate's scores did, so every gate and `--budget kl=` passed."""
    torch.manual_seed(0)
    reference = _save(transformers.BertForSequenceClassification(transformers.BertConfig(
        vocab_size=VOCABULARY, max_position_embeddings=CONTEXT, pad_token_id=256, num_labels=1, **SMALL)), tmp_path / "reranker")
    noisy_copy(reference, tmp_path / "noisy", 0.5, seed=1)
    same = evaluate(reference, reference, cache=cache, weights=False)
    assert same.kind == "classifier" and same.metrics["kl_mean"] == 0 and same.metrics["label_agreement"] == 1
    moved = evaluate(tmp_path / "noisy", reference, cache=cache, weights=False)
    assert moved.metrics["kl_mean"] > 1e-4, moved.metrics


def test_a_lone_weights_file_run_as_a_kind_is_refused_not_its_folders_model(tmp_path, cache):
    """`zoo eval folder/q.safetensors -r folder --kind encoder` loaded the folder's own
    model.safetensors for the candidate: cosine 1.000 for weights whose own cosine was 0.47."""
    torch.manual_seed(0)
    folder = _save(transformers.BertModel(transformers.BertConfig(vocab_size=VOCABULARY, max_position_embeddings=CONTEXT,
                                                                  pad_token_id=256, **SMALL)), tmp_path / "encoder")
    noisy_copy(folder, tmp_path / "noisy", 1.0, seed=1)
    shutil.copy(tmp_path / "noisy" / "model.safetensors", folder / "candidate.safetensors")
    for candidate, reference in ((folder / "candidate.safetensors", folder), (tmp_path / "noisy", folder / "model.safetensors")):
        with pytest.raises(InputError, match="a lone weights file has no config or tokenizer to run it as an encoder"):
            evaluate(candidate, reference, kind="encoder", cache=cache)
    assert evaluate(folder / "candidate.safetensors", folder / "model.safetensors", cache=cache).kind == "weights"


def test_a_model_of_text_and_images_gets_weight_figures_with_a_note(tmp_path, cache):
    """CLIPModel ends in "Model" and was run as a text encoder: "unexpected AttributeError"."""
    torch.manual_seed(0)
    config = transformers.CLIPConfig(text_config=dict(vocab_size=VOCABULARY, max_position_embeddings=CONTEXT, **SMALL),
                                     vision_config=dict(image_size=32, patch_size=8, **SMALL))
    reference = _save(transformers.CLIPModel(config), tmp_path / "clip")
    noisy_copy(reference, tmp_path / "noisy", 0.1, seed=1)
    result = evaluate(tmp_path / "noisy", reference, cache=cache)
    assert result.kind == "weights" and any("is a model of more than text (CLIPModel)" in note for note in result.notes), result.notes


def test_a_causal_lms_classifier_without_a_pad_token_is_scored_a_sentence_at_a_time(tmp_path, cache):
    """LlamaForSequenceClassification finds each sentence's last token by the config's pad token;
    without one, batches of 16 gave "unexpected ValueError: Cannot handle batch sizes > 1"."""
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=VOCABULARY, max_position_embeddings=CONTEXT, num_labels=2, num_key_value_heads=2,
                                      pad_token_id=None, **SMALL)
    reference = _save(transformers.LlamaForSequenceClassification(config), tmp_path / "llama-classifier", for_encoder=False)
    noisy_copy(reference, tmp_path / "noisy", 0.3, seed=1)
    result = evaluate(tmp_path / "noisy", reference, cache=cache, weights=False)
    assert result.kind == "classifier" and result.metrics["sentences"] > 16 and result.metrics["kl_mean"] > 0


def test_a_roberta_with_a_short_position_table_takes_long_sentences(tmp_path, cache):
    """RoBERTa numbers positions from its pad token's id + 1: a sentence of max_position_embeddings
    tokens ran past its table ("index 34 is out of bounds for dimension 1 with size 34")."""
    torch.manual_seed(0)
    config = transformers.RobertaConfig(vocab_size=VOCABULARY, max_position_embeddings=34, pad_token_id=1, **SMALL)
    reference = _save(transformers.RobertaModel(config), tmp_path / "roberta")
    text = tmp_path / "long.txt"
    text.write_text("word " * 100 + "\n" + "another long line of words " * 10 + "\n")
    result = evaluate(reference, reference, text=str(text.read_text()), cache=cache, weights=False)
    assert result.kind == "encoder" and result.metrics["cosine_min"] == pytest.approx(1, abs=1e-5)


def test_a_base_neither_side_needs_is_not_reported_as_used(tmp_path, cache):
    """`zoo eval q -r m --base m` printed "base: m (the differences stored against it were added to
    it)" and, two lines below, that the base was not used."""
    torch.manual_seed(0)
    folder = _save(transformers.BertModel(transformers.BertConfig(vocab_size=VOCABULARY, max_position_embeddings=CONTEXT,
                                                                  pad_token_id=256, **SMALL)), tmp_path / "encoder")
    result = evaluate(folder, folder, base=folder, cache=cache, weights=False)
    assert result.base is None and any("was not used" in note for note in result.notes), result.notes


def test_a_budget_whose_output_is_a_folder_is_refused_before_the_search(tmp_path):
    """With --force, a folder at -o was found only when the kept archive was put in its place,
    minutes later, in an error that named a temporary file."""
    from zoo.evaluate.budget import compress_to_budget

    torch.manual_seed(0)
    folder = _save(transformers.BertModel(transformers.BertConfig(vocab_size=VOCABULARY, max_position_embeddings=CONTEXT,
                                                                  pad_token_id=256, **SMALL)), tmp_path / "encoder")
    (tmp_path / "out").mkdir()
    started = time.perf_counter()
    with pytest.raises(OutputExistsError, match=r"out is a folder.*choose another output"):
        compress_to_budget(folder, tmp_path / "out", "bpw=4", force=True)
    assert time.perf_counter() - started < 5
    assert list((tmp_path / "out").iterdir()) == []


def _sentence_transformer(folder: Path, dense_seed: int, pooling: dict) -> Path:
    """A sentence-transformers folder: a BERT, its Pooling config, a Dense layer and Normalize."""
    from safetensors.torch import save_file

    torch.manual_seed(0)
    _save(transformers.BertModel(transformers.BertConfig(vocab_size=VOCABULARY, max_position_embeddings=CONTEXT, pad_token_id=256,
                                                         **SMALL)), folder)
    modules = [("", "Transformer"), ("1_Pooling", "Pooling"), ("2_Dense", "Dense"), ("3_Normalize", "Normalize")]
    (folder / "modules.json").write_text(json.dumps([{"idx": n, "name": str(n), "path": path, "type": f"sentence_transformers.models.{kind}"}
                                                     for n, (path, kind) in enumerate(modules)]))
    for path, _ in modules[1:]:
        (folder / path).mkdir()
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": 32, **pooling}))
    (folder / "2_Dense" / "config.json").write_text(json.dumps({"in_features": 32, "out_features": 16, "bias": True,
                                                                "activation_function": "torch.nn.modules.activation.Tanh"}))
    generator = torch.Generator().manual_seed(dense_seed)
    save_file({"linear.weight": torch.randn(16, 32, generator=generator), "linear.bias": torch.randn(16, generator=generator)},
              folder / "2_Dense" / "model.safetensors")
    return folder


def test_a_sentence_transformers_embedding_is_its_dense_layers_output_pooled_as_its_config_says(tmp_path, cache):
    """The cosine was of the mean-pooled hidden state: a 2_Dense layer changed counted nowhere
    (cosine 1.000 and --min-cosine passed for embeddings whose true cosine was -0.11), and the
    `"pooling_mode": "cls"` sentence-transformers writes since its version 5 was read as mean."""
    reference = _sentence_transformer(tmp_path / "st", 1, {"pooling_mode": "cls"})
    other = _sentence_transformer(tmp_path / "other", 2, {"pooling_mode": "cls"})
    result = evaluate(other, reference, cache=cache, weights=False)
    tokenizer = byte_tokenizer(True)
    sentences = zoo_sentences()[:result.metrics["sentences"]]

    def embed(folder: Path) -> torch.Tensor:
        from safetensors.torch import load_file

        model = transformers.BertModel.from_pretrained(folder).eval()
        dense = load_file(folder / "2_Dense" / "model.safetensors")
        with torch.inference_mode():
            encoded = tokenizer(sentences, padding=True, truncation=True, max_length=CONTEXT, return_tensors="pt")
            cls = model(**encoded).last_hidden_state[:, 0]
            return torch.tanh(torch.nn.functional.linear(cls, dense["linear.weight"], dense["linear.bias"]))

    wanted = torch.nn.functional.cosine_similarity(embed(reference).double(), embed(other).double()).mean().item()
    assert result.metrics["cosine_mean"] == pytest.approx(wanted, abs=1e-4) and wanted < 0.9
    assert evaluate(reference, reference, cache=cache, weights=False).metrics["cosine_min"] == pytest.approx(1, abs=1e-6)
    (other / "modules.json").write_text((other / "modules.json").read_text().replace("models.Normalize", "models.LayerNorm"))
    result = evaluate(other, reference, cache=cache)
    assert result.kind == "weights" and any("does not run its sentence-transformers module LayerNorm" in n for n in result.notes)


@pytest.mark.parametrize("mode, rows", [("cls", [1.0, 4.0]), ("lasttoken", [3.0, 5.0]), ("max", [3.0, 5.0]),
                                        ("mean", [2.0, 4.5]), ("weightedmean", [14 / 6, 14 / 3]),
                                        ("mean_sqrt_len_tokens", [6 / 3 ** 0.5, 9 / 2 ** 0.5])])
def test_pooling_modes(mode, rows):
    from zoo.evaluate.sentences import pool

    hidden = torch.tensor([[[1.0], [2.0], [3.0]], [[4.0], [5.0], [9.0]]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    assert pool(hidden, mask, mode).squeeze(-1).tolist() == pytest.approx(rows)
    assert pool(hidden, mask, ("cls", mode)).flatten().tolist() == pytest.approx([1.0, rows[0], 4.0, rows[1]])  # joined, in order


def test_pooling_configs_old_and_new_name_their_modes(tmp_path):
    """`"pooling_mode": ["cls", "mean"]` (or both old flags) joins two vectors: it was read as one
    mode, and a Dense after it then met a vector of the wrong width ("unexpected RuntimeError")."""
    from zoo.evaluate.models import Model

    folder = _sentence_transformer(tmp_path / "st", 1, {"pooling_mode": "mean"})
    for settings, wanted in (({"pooling_mode": ["mean", "cls"]}, ("cls", "mean")),
                             ({"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": True}, ("cls", "mean")),
                             ({"pooling_mode_mean_sqrt_len_tokens": True, "pooling_mode_mean_tokens": False}, ("mean_sqrt_len_tokens",)),
                             ({"pooling_mode": "lasttoken"}, ("lasttoken",)), ({}, ("mean",))):
        (folder / "1_Pooling" / "config.json").write_text(json.dumps(settings))
        with Model(folder) as model:
            assert model.pooling() == wanted, settings
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode": "median"}))
    with Model(folder) as model, pytest.raises(InputError, match="names a mode zoo does not know"):
        model.pooling()


def test_sentence_transformers_modules_zoo_does_not_run_give_weight_figures(tmp_path, cache):
    """A CNN between the Transformer and Pooling was skipped, and the cosine was of another model;
    a Dense of an activation zoo does not know stopped the evaluation; a damaged Dense file was
    "unexpected SafetensorError"; a malformed modules.json was read as no modules."""
    reference = _sentence_transformer(tmp_path / "st", 1, {"pooling_mode": "mean"})
    candidate = tmp_path / "noisy"
    noisy_copy(reference, candidate, 0.1, seed=1)
    assert evaluate(candidate, reference, cache=cache, weights=False).kind == "encoder"
    modules = json.loads((reference / "modules.json").read_text())
    for folder in (reference, candidate):
        (folder / "modules.json").write_text(json.dumps(modules[:1] + [{"idx": 9, "name": "9", "path": "9_CNN",
                                                                        "type": "sentence_transformers.models.CNN"}] + modules[1:]))
    result = evaluate(candidate, reference, cache=cache)
    assert result.kind == "weights" and any("module CNN (9_CNN): weight-space figures only" in note for note in result.notes)
    with pytest.raises(InputError, match="does not run its sentence-transformers module CNN .* leave out --kind"):
        evaluate(candidate, reference, cache=cache, kind="encoder")
    for folder in (reference, candidate):
        (folder / "modules.json").write_text(json.dumps(modules))
        (folder / "2_Dense" / "config.json").write_text(json.dumps({"in_features": 32, "out_features": 16,
                                                                    "activation_function": "torch.nn.modules.activation.LeakyReLU"}))
    result = evaluate(candidate, reference, cache=cache)
    assert result.kind == "weights" and any("Dense (2_Dense) of activation 'LeakyReLU'" in note for note in result.notes)
    (candidate / "2_Dense" / "config.json").write_text((candidate / "2_Dense" / "config.json").read_text().replace("LeakyReLU", "Tanh"))
    (reference / "2_Dense" / "config.json").write_text((candidate / "2_Dense" / "config.json").read_text())
    (candidate / "2_Dense" / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(InputError, match=r"its sentence-transformers layer 2_Dense cannot be read: "):
        evaluate(candidate, reference, cache=cache)
    (candidate / "modules.json").write_text('{"not": "a list"}')
    with pytest.raises(InputError, match="modules.json is not a list of sentence-transformers modules"):
        evaluate(candidate, reference, cache=cache)


def test_a_multi_label_classifier_is_judged_label_by_label(tmp_path, cache):
    """problem_type multi_label_classification: each label is a sigmoid of its own. A softmax over
    the labels read every logit shifted by 3 as no change (KL 2e-08, 100% agreement, gate passed)."""
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(transformers.BertConfig(
        vocab_size=VOCABULARY, max_position_embeddings=CONTEXT, pad_token_id=256, num_labels=4,
        problem_type="multi_label_classification", **SMALL))
    reference = _save(model, tmp_path / "labels")
    with torch.no_grad():
        model.classifier.bias += 3.0
    shifted = _save(model, tmp_path / "shifted")
    result = evaluate(shifted, reference, cache=cache, weights=False)
    assert result.metrics["kl_mean"] > 0.1 and result.metrics["label_agreement"] < 0.5, result.metrics
    same = evaluate(reference, reference, cache=cache, weights=False)
    assert same.metrics["kl_mean"] == 0 and same.metrics["label_agreement"] == 1


def test_labelled_text_for_a_multi_label_classifier_is_refused_up_front_naming_the_model(tmp_path, cache):
    """`zoo sweep` with LABEL<TAB>sentence text on a multi-label classifier compressed and ran
    each pipeline, then failed each one naming its temporary archive; eval ran both models first."""
    from zoo import batch
    from zoo.evaluate.sweep import sweep

    model = _save(transformers.BertForSequenceClassification(transformers.BertConfig(
        vocab_size=VOCABULARY, max_position_embeddings=CONTEXT, pad_token_id=256, num_labels=4,
        problem_type="multi_label_classification", **SMALL)), tmp_path / "labels")
    failed = []
    with pytest.raises(InputError, match=rf"^{model} is a multi-label classifier: its accuracy needs a set of labels"):
        sweep(model, ["lossless", "codebook:bits=3"], text="0\tone sentence\n1\tanother\n", workdir=tmp_path,
              on_failure=lambda *failure: failed.append(failure))
    assert not failed
    with pytest.raises(InputError, match=rf"^{model} is a multi-label classifier"):  # as the tasks on Ray are given out
        batch.sweep(model, ["lossless", "codebook:bits=3"], ray=None, text="0\tone sentence\n")
    with pytest.raises(InputError, match=rf"^{model} is a multi-label classifier"):
        evaluate(model, model, text="0\tone sentence\n", cache=cache)


def test_an_electra_discriminator_and_a_t5_encoder_run_as_encoders(tmp_path, cache):
    """ElectraForPreTraining (the discriminator) was loaded as the masked-LM generator, and
    T5EncoderModel as the whole T5: "weights the encoder needs are missing" for sound folders."""
    torch.manual_seed(0)
    electra = _save(transformers.ElectraForPreTraining(transformers.ElectraConfig(
        vocab_size=VOCABULARY, max_position_embeddings=CONTEXT, pad_token_id=256, embedding_size=32, **SMALL)), tmp_path / "electra")
    t5 = _save(transformers.T5EncoderModel(transformers.T5Config(vocab_size=VOCABULARY, d_model=32, d_ff=64, num_layers=1, num_heads=2,
                                                                 d_kv=16, pad_token_id=256)), tmp_path / "t5")
    config = json.loads((t5 / "config.json").read_text())  # as transformers 4 saved it: T5Config's is_encoder_decoder, true
    (t5 / "config.json").write_text(json.dumps({**config, "is_encoder_decoder": True}))
    for folder in (electra, t5):
        noisy_copy(folder, tmp_path / f"{folder.name}-noisy", 0.1, seed=1)
        result = evaluate(tmp_path / f"{folder.name}-noisy", folder, cache=cache, weights=False)
        assert result.kind == "encoder" and 0.5 < result.metrics["cosine_mean"] < 1 and "mlm_loss" not in result.metrics, result.metrics


def test_a_model_of_sound_with_a_tokenizer_gets_weight_figures(tmp_path, cache):
    """Wav2Vec2Model saved with its CTC tokenizer was run on tokens: "unexpected TypeError"."""
    torch.manual_seed(0)
    config = transformers.Wav2Vec2Config(vocab_size=VOCABULARY, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                         intermediate_size=64, conv_dim=(8, 8), conv_kernel=(3, 3), conv_stride=(2, 2),
                                         num_conv_pos_embeddings=4, num_conv_pos_embedding_groups=2)
    reference = _save(transformers.Wav2Vec2Model(config), tmp_path / "wav2vec2")
    noisy_copy(reference, tmp_path / "noisy", 0.1, seed=1)
    result = evaluate(tmp_path / "noisy", reference, cache=cache)
    assert result.kind == "weights" and any("takes input_values, not text (Wav2Vec2Model)" in note for note in result.notes)


def test_a_budget_whose_output_is_inside_the_zoo_is_refused(tmp_path, monkeypatch):
    """`--budget -o $ZOO_HOME/catalogue.sqlite --force` replaced the zoo's catalogue (and its lock)."""
    from zoo.api import compress_into
    from zoo.evaluate.budget import compress_to_budget
    from zoo.hub.store import Store

    torch.manual_seed(0)
    folder = _save(transformers.BertModel(transformers.BertConfig(vocab_size=VOCABULARY, max_position_embeddings=CONTEXT,
                                                                  pad_token_id=256, **SMALL)), tmp_path / "encoder")
    monkeypatch.setenv("ZOO_HOME", str(tmp_path / "zoo"))
    compress_into(Store(), folder, "org/m")
    before = (tmp_path / "zoo" / "catalogue.sqlite").read_bytes()
    for name in ("catalogue.sqlite", "lock"):
        with pytest.raises(InputError, match="lies inside the zoo.s own folder"):
            compress_to_budget(folder, tmp_path / "zoo" / name, "bpw=4", force=True)
    assert (tmp_path / "zoo" / "catalogue.sqlite").read_bytes() == before


def test_a_gpt2_classifier_takes_sentences_longer_than_its_position_table(tmp_path, cache):
    """GPT-2 names its positions n_positions: sentences were cut at 256 tokens, past a table of
    64, and eval and compress --eval failed with 'unexpected IndexError: index out of range'."""
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=VOCABULARY, n_positions=CONTEXT, n_embd=32, n_layer=1, n_head=2, num_labels=2,
                                     pad_token_id=0)
    reference = _save(transformers.GPT2ForSequenceClassification(config), tmp_path / "gpt2-classifier", for_encoder=False)
    text = tmp_path / "long.txt"
    text.write_text("word " * 100 + "\n" + "another long line of words " * 10 + "\n")
    result = evaluate(reference, reference, text=str(text.read_text()), cache=cache, weights=False)
    assert result.kind == "classifier" and result.metrics["kl_mean"] == pytest.approx(0, abs=1e-9)


def test_a_copy_of_a_causal_lm_with_tied_top_tokens_agrees_on_every_top_token(tmp_path, cache):
    """topk and argmax pick different tokens of those tied for the top: a model scored against
    itself had KL 0 and 'same top token 0%'."""
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=VOCABULARY, n_positions=CONTEXT, n_embd=32, n_layer=1, n_head=2)
    model = transformers.GPT2LMHeadModel(config)
    with torch.no_grad():  # tied embeddings of three distinct rows: every logit ties with many others
        model.transformer.wte.weight.zero_()
        model.transformer.wte.weight[:, 0] = torch.arange(VOCABULARY) % 3
    reference = _save(model, tmp_path / "tied", for_encoder=False)
    result = evaluate(reference, reference, cache=cache, weights=False)
    assert result.kind == "causal-lm" and result.metrics["kl_mean"] == pytest.approx(0, abs=1e-9)
    assert result.metrics["top1_agreement"] == 1.0


def test_a_candidate_of_flat_outputs_agrees_on_no_top_token(tmp_path, cache):
    """Every token ties for the top of a flat distribution, the reference's among them: a model
    whose embeddings (and so, tied, its output layer) were zeroed agreed on 100% of top tokens."""
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=VOCABULARY, n_positions=CONTEXT, n_embd=32, n_layer=1, n_head=2)
    model = transformers.GPT2LMHeadModel(config)
    reference = _save(model, tmp_path / "reference", for_encoder=False)
    with torch.no_grad():
        model.transformer.wte.weight.zero_()
    flat = _save(model, tmp_path / "flat", for_encoder=False)
    result = evaluate(flat, reference, cache=cache, weights=False)
    assert result.kind == "causal-lm" and result.metrics["top1_agreement"] == 0.0


def test_text_no_evaluation_could_score_is_refused_up_front(tmp_path, cache):
    """A sweep checks --text once, before any pipeline: a causal LM's text of under two tokens and
    an encoder's of blank lines went through, and every pipeline was compressed and then failed."""
    from zoo.evaluate.core import check_text

    torch.manual_seed(0)
    causal = _save(transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=VOCABULARY, n_positions=CONTEXT, n_embd=32, n_layer=1,
                                                                         n_head=2)), tmp_path / "causal", for_encoder=False)
    encoder = _save(transformers.BertModel(transformers.BertConfig(vocab_size=VOCABULARY, max_position_embeddings=CONTEXT, hidden_size=32,
                                                                   num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)),
                    tmp_path / "encoder")
    with pytest.raises(InputError, match="too short to score"):
        check_text(causal, "")
    with pytest.raises(InputError, match="no sentences to score"):
        check_text(encoder, "\n \n")
    # an encoder's sentences that each hold a tab are sentences, not labels it would refuse
    check_text(encoder, "The cat\tsat.\nA dog\tran.\n")
    result = evaluate(encoder, encoder, text="The cat\tsat.\nA dog\tran.\n", cache=cache, weights=False)
    assert result.metrics["cosine_mean"] == pytest.approx(1)


def test_a_copy_of_a_flat_causal_lm_agrees_though_more_tokens_tie_than_the_cache_keeps(tmp_path, cache):
    """The reference's ties are seen among its 256 likeliest tokens only: a flat model of 300
    tokens against itself agreed on 0% of top tokens."""
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=300, n_positions=CONTEXT, n_embd=32, n_layer=1, n_head=2)
    model = transformers.GPT2LMHeadModel(config)
    with torch.no_grad():
        model.transformer.wte.weight.zero_()
    flat = _save(model, tmp_path / "flat", for_encoder=False)
    result = evaluate(flat, flat, cache=cache, weights=False)
    assert result.metrics["kl_mean"] == pytest.approx(0, abs=1e-9) and result.metrics["top1_agreement"] == 1.0
