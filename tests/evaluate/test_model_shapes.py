"""Models of shapes the evaluator met late: a head of one output, a multimodal `*Model`, a causal
LM's classifier with no pad token, RoBERTa's position table, a lone weights file run with --kind.
Each is random (untrained): these tests are about which figures are made, not their size."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

pytest.importorskip("transformers")

import torch  # noqa: E402
import transformers  # noqa: E402

from zoo.errors import InputError, OutputExistsError  # noqa: E402
from zoo.evaluate import evaluate  # noqa: E402
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
