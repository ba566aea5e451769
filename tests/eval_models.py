"""Tiny real models for the evaluator's tests, trained for a second or two on zoo's own text.

All three share one byte-level tokenizer (256 byte tokens and four special ones), saved beside
each model so that transformers loads everything from the folder as it would a downloaded model.
"""

from __future__ import annotations

import random
from pathlib import Path

import torch

SPECIAL = ["[PAD]", "[CLS]", "[SEP]", "[MASK]"]
VOCABULARY = 256 + len(SPECIAL)
CONTEXT = 64


def byte_tokenizer(for_encoder: bool):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet(), key=lambda c: ord(c))
    vocabulary = {character: number for number, character in enumerate(alphabet)}
    vocabulary.update({token: 256 + number for number, token in enumerate(SPECIAL)})
    core = Tokenizer(models.BPE(vocab=vocabulary, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    if for_encoder:
        core.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 257), ("[SEP]", 258)])
        return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]",
                                       model_max_length=CONTEXT)
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="[PAD]", model_max_length=CONTEXT)


def _train(model, batches, steps: int, learning_rate: float = 3e-3) -> list[float]:
    torch.manual_seed(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate)
    model.train()
    losses = []
    for step in range(steps):
        loss = model(**batches(step)).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    model.eval()
    return losses


def train_causal_lm(folder: Path, steps: int = 80) -> list[float]:
    """A two-layer GPT-2 that learns the bytes of zoo's evaluation text."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from zoo.evaluate import default_text

    torch.manual_seed(0)
    tokenizer = byte_tokenizer(for_encoder=False)
    data = torch.tensor(tokenizer(default_text())["input_ids"], dtype=torch.long)
    config = GPT2Config(vocab_size=VOCABULARY, n_positions=CONTEXT, n_embd=32, n_layer=2, n_head=4,
                        pad_token_id=256, bos_token_id=None, eos_token_id=None)
    model = GPT2LMHeadModel(config)
    generator = torch.Generator().manual_seed(0)

    def batch(step: int) -> dict:
        starts = torch.randint(0, len(data) - CONTEXT, (8,), generator=generator)
        ids = torch.stack([data[s:s + CONTEXT] for s in starts.tolist()])
        return {"input_ids": ids, "labels": ids}

    losses = _train(model, batch, steps)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return losses


def _bert_config(**extra):
    from transformers import BertConfig

    return BertConfig(vocab_size=VOCABULARY, hidden_size=48, num_hidden_layers=2, num_attention_heads=4, intermediate_size=96,
                      max_position_embeddings=CONTEXT, pad_token_id=256, **extra)


def train_encoder(folder: Path, steps: int = 60) -> list[float]:
    """A two-layer BERT with its masked-LM head, trained on zoo's sentences."""
    from transformers import BertForMaskedLM

    from zoo.evaluate import default_sentences

    torch.manual_seed(0)
    tokenizer = byte_tokenizer(for_encoder=True)
    encoded = tokenizer(default_sentences(), padding=True, truncation=True, return_tensors="pt", return_special_tokens_mask=True)
    model = BertForMaskedLM(_bert_config())
    generator = torch.Generator().manual_seed(0)

    def batch(step: int) -> dict:
        rows = torch.randint(0, len(encoded["input_ids"]), (16,), generator=generator)
        ids, attention = encoded["input_ids"][rows], encoded["attention_mask"][rows]
        hidden = (torch.rand(ids.shape, generator=generator) < 0.15) & attention.bool() & ~encoded["special_tokens_mask"][rows].bool()
        return {"input_ids": ids.masked_fill(hidden, tokenizer.mask_token_id), "attention_mask": attention,
                "labels": ids.masked_fill(~hidden, -100)}

    losses = _train(model, batch, steps)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return losses


POSITIVE = ["sunny", "joyful", "happy", "sweet", "lovely", "cheery", "glowing", "merry"]
NEGATIVE = ["grim", "cold", "cruel", "awful", "bleak", "gloomy", "dreadful", "bitter"]
SHARED = ["the", "day", "was", "and", "felt", "quite"]


def labelled_sentences(count: int, seed: int) -> list[tuple[int, str]]:
    """Synthetic sentiment: four mood words of one side among two neutral ones."""
    chooser = random.Random(seed)
    rows = []
    for _ in range(count):
        label = chooser.randrange(2)
        words = chooser.sample(POSITIVE if label else NEGATIVE, 4) + chooser.sample(SHARED, 2)
        chooser.shuffle(words)
        rows.append((label, " ".join(words)))
    return rows


def train_classifier(folder: Path, steps: int = 60) -> list[float]:
    """A two-layer BERT that tells the synthetic positive sentences from the negative ones."""
    from transformers import BertForSequenceClassification

    torch.manual_seed(0)
    tokenizer = byte_tokenizer(for_encoder=True)
    rows = labelled_sentences(256, seed=1)
    encoded = tokenizer([s for _, s in rows], padding=True, truncation=True, return_tensors="pt")
    labels = torch.tensor([label for label, _ in rows])
    model = BertForSequenceClassification(_bert_config(num_labels=2, id2label={0: "negative", 1: "positive"},
                                                       label2id={"negative": 0, "positive": 1}))
    generator = torch.Generator().manual_seed(0)

    def batch(step: int) -> dict:
        chosen = torch.randint(0, len(rows), (32,), generator=generator)
        return {"input_ids": encoded["input_ids"][chosen], "attention_mask": encoded["attention_mask"][chosen], "labels": labels[chosen]}

    losses = _train(model, batch, steps)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return losses
