"""Encoders and classifiers, scored on a set of sentences.

Encoder: the pooled sentence embedding (pooled as the model's sentence-transformers config says,
mean by default) is compared with the reference's by cosine; a model with a masked-LM head also
gets its masked-LM loss on a fixed 15% of the tokens. Classifier: predicted labels are compared
with the reference's, and with the true labels where the sentences carry them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from zoo.errors import InputError
from zoo.evaluate import metrics
from zoo.evaluate.cache import ReferenceCache, cache_key
from zoo.evaluate.models import Model
from zoo.optimize.models import positions

BATCH = 16
MAX_LENGTH = 256  # tokens per sentence; longer ones are cut
MASK_SHARE = 0.15  # of the tokens hidden for the masked-LM loss, as in BERT's training
# Models whose position numbers start after the padding token's (RoBERTa's family): a sentence of
# max_position_embeddings tokens ran past their table.
_POSITIONS_AFTER_PADDING = {"roberta", "xlm-roberta", "xlm-roberta-xl", "camembert", "roberta-prelayernorm", "data2vec-text",
                            "ibert", "longformer", "mpnet", "esm", "xmod", "luke", "markuplm"}
Progress = Callable[[str, int, int], None]


def batches(model: Model, sentences: list[str], max_tokens: int, kind: str = "encoder") -> list[dict[str, torch.Tensor]]:
    """Tokenized batches of the sentences that fit in `max_tokens` (at least one sentence)."""
    tokenizer = model.tokenizer()
    config = model.config() or {}
    numbered = positions(config) or MAX_LENGTH  # GPT-2's classifiers say n_positions: 256 tokens ran past 64
    if config.get("model_type") in _POSITIONS_AFTER_PADDING and isinstance(config.get("pad_token_id"), int):
        numbered -= config["pad_token_id"] + 1
    length = max(1, min(MAX_LENGTH, numbered))
    # a classifier that reads the last token (a causal LM's head) finds it by the config's pad token:
    # without one, transformers refuses batches of more than one sentence
    batch_size = 1 if kind == "classifier" and config.get("pad_token_id") is None else BATCH
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token is not None:
            tokenizer.pad_token = tokenizer.eos_token  # the attention mask hides it either way
        else:
            batch_size = 1  # nothing to pad with: one sentence at a time
    counts = [len(ids) for ids in tokenizer(sentences, truncation=True, max_length=length)["input_ids"]]
    kept, total = 0, 0
    while kept < len(sentences) and (kept == 0 or total + counts[kept] <= max_tokens):
        total += counts[kept]
        kept += 1
    result = []
    for start in range(0, kept, batch_size):
        encoded = tokenizer(sentences[start:min(start + batch_size, kept)], padding=batch_size > 1, truncation=True, max_length=length,
                            return_tensors="pt", return_special_tokens_mask=True)
        batch = {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}
        if tokenizer.mask_token_id is not None:
            # The same positions for every model: drawn from a generator seeded by the batch number.
            draw = torch.rand(batch["input_ids"].shape, generator=torch.Generator().manual_seed(start))
            hidden = (draw < MASK_SHARE) & batch["attention_mask"].bool() & ~encoded["special_tokens_mask"].bool()
            batch["masked_input_ids"] = batch["input_ids"].masked_fill(hidden, tokenizer.mask_token_id)
            batch["mlm_labels"] = batch["input_ids"].masked_fill(~hidden, -100)
        result.append(batch)
    return result


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, modes: tuple[str, ...] | str) -> torch.Tensor:
    """One vector per sentence, as sentence-transformers' Pooling makes it: each mode's vector,
    joined end to end in the order given."""
    if isinstance(modes, str):
        return _pool_one(hidden, attention_mask, modes)
    return torch.cat([_pool_one(hidden, attention_mask, mode) for mode in modes], -1)


def _pool_one(hidden: torch.Tensor, attention_mask: torch.Tensor, mode: str) -> torch.Tensor:
    if mode == "cls":
        return hidden[:, 0]
    if mode == "lasttoken":  # the last token the mask keeps, whichever side the padding is on
        positions = torch.arange(attention_mask.shape[1]).expand_as(attention_mask)
        last = (positions * attention_mask).argmax(1)
        return hidden[torch.arange(len(hidden)), last]
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    if mode == "max":
        return hidden.masked_fill(mask == 0, float("-inf")).max(1).values
    if mode == "weightedmean":  # the n-th token weighs n
        mask = mask * torch.arange(1, mask.shape[1] + 1, dtype=hidden.dtype).view(1, -1, 1)
    if mode == "mean_sqrt_len_tokens":  # the sum over the square root of the length
        return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1).sqrt()
    return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1)


def _outputs(model: Model, kind: str, pieces: list[dict[str, torch.Tensor]], settings: dict[str, Any],
             stage: str, progress: Progress | None) -> dict[str, torch.Tensor]:
    """Per sentence: the pooled embedding (encoder) or the class logits (classifier); plus the
    masked-LM negative log-likelihood of every hidden token when the model has the head."""
    masked_lm = settings["masked_lm"]
    network = model.load(kind, masked_lm=masked_lm)
    head = model.sentence_head() if kind == "encoder" else None
    rows, losses = [], []
    total, done = sum(len(b["input_ids"]) for b in pieces), 0
    with torch.inference_mode():
        for batch in pieces:
            if kind == "classifier":
                rows.append(network(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float())
            else:
                output = network(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True)
                rows.append(head(pool(output.hidden_states[-1], batch["attention_mask"], settings["pooling"]).float()))
                if masked_lm and "mlm_labels" in batch:
                    logits = network(input_ids=batch["masked_input_ids"], attention_mask=batch["attention_mask"]).logits
                    chosen = batch["mlm_labels"] != -100
                    logprobs = metrics.log_softmax(logits[chosen])
                    losses.append(-logprobs.gather(-1, batch["mlm_labels"][chosen].unsqueeze(-1)).squeeze(-1))
            done += len(batch["input_ids"])
            if progress:
                progress(stage, done, total)
    entry = {"rows": torch.cat(rows)}
    if losses:
        entry["mlm_nll"] = torch.cat(losses)
    return entry


NO_SENTENCES = "no sentences to score: the text has no non-empty lines"


def evaluate_sentences(kind: str, candidate: Model, reference: Model | None, sentences: list[str], labels: list[int] | None,
                       max_tokens: int, cache: ReferenceCache, progress: Progress | None) -> dict[str, Any]:
    if not sentences:
        raise InputError(NO_SENTENCES)
    pieces = batches(candidate, sentences, max_tokens, kind)
    settings = {"masked_lm": kind == "encoder" and candidate.has_masked_lm_head(), "pooling": candidate.pooling(),
                "modules": candidate.sentence_modules() if kind == "encoder" else []}
    mine = _outputs(candidate, kind, pieces, settings, "candidate", progress)
    base = None
    if reference is not None:
        inputs = b"".join(b["input_ids"].numpy().tobytes() + b["attention_mask"].numpy().tobytes() + b"|" for b in pieces)
        key = cache_key(kind, reference.fingerprint(), repr(sorted(settings.items())), inputs)
        base = cache.get(key)
        if base is None:
            base = _outputs(reference, kind, pieces, settings, "reference", progress)
            cache.put(key, base)
        if base["rows"].shape != mine["rows"].shape:
            raise InputError(f"{candidate.label} gives outputs of shape {list(mine['rows'].shape)}, its reference "
                             f"{list(base['rows'].shape)}: they cannot be compared")
    count = len(mine["rows"])
    figures: dict[str, Any] = {"sentences": count, "tokens": int(sum(b["attention_mask"].sum() for b in pieces))}
    if kind == "encoder":
        if base is not None:
            cosine = metrics.row_cosine(base["rows"], mine["rows"])
            figures.update({"cosine_mean": cosine.mean().item(), "cosine_min": cosine.min().item()})
        if "mlm_nll" in mine:
            figures["mlm_loss"] = mine["mlm_nll"].double().mean().item()
            if base is not None and "mlm_nll" in base:
                figures["mlm_loss_reference"] = base["mlm_nll"].double().mean().item()
        return figures
    if candidate.multi_label():
        return _multi_label_figures(figures, mine["rows"], None if base is None else base["rows"])
    mine_logits, base_logits = _as_classes(mine["rows"]), None if base is None else _as_classes(base["rows"])
    if base_logits is not None:
        figures["label_agreement"] = metrics.top1_agreement(base_logits.argmax(-1), mine_logits)
        kl = metrics.kl_divergence(metrics.log_softmax(base_logits), metrics.log_softmax(mine_logits))
        figures.update({"kl_mean": kl.mean().item(), "kl_max": kl.max().item()})
    if labels is not None:
        truth = torch.tensor(labels[:count])
        classes = mine_logits.shape[-1]
        if truth.numel() and not (0 <= int(truth.min()) and int(truth.max()) < classes):
            raise InputError(f"a label lies outside the {classes} classes of {candidate.label} (numbered from 0)")
        figures["accuracy"] = (mine_logits.argmax(-1) == truth).double().mean().item()
        if base_logits is not None:
            figures["accuracy_reference"] = (base_logits.argmax(-1) == truth).double().mean().item()
    return figures


def _multi_label_figures(figures: dict[str, Any], mine: torch.Tensor, base: torch.Tensor | None) -> dict[str, Any]:
    """A multi-label classifier (problem_type multi_label_classification) decides each label on
    its own, by the sigmoid of its logit: the KL is the mean over labels of each yes/no's, and two
    models agree on a sentence when they give it the same set of labels. A softmax over the labels
    measured a shift of every logit by the same amount as no change at all."""
    if base is not None:
        kl = metrics.kl_divergence(metrics.log_softmax(_as_classes(base.unsqueeze(-1))),
                                   metrics.log_softmax(_as_classes(mine.unsqueeze(-1)))).mean(-1)
        figures["label_agreement"] = ((base > 0) == (mine > 0)).all(-1).double().mean().item() if len(base) else float("nan")
        figures.update({"kl_mean": kl.mean().item(), "kl_max": kl.max().item()})
    return figures


def _as_classes(logits: torch.Tensor) -> torch.Tensor:
    """A head of one output (a reranker's relevance score, a yes/no) as the logits of two classes,
    no and yes: the score is the yes's logit, its probability the sigmoid of the score (as
    sentence-transformers' CrossEncoder reads it). A softmax over the one output was always 1, and
    every such model scored KL 0 and full agreement however its scores moved."""
    return torch.cat([torch.zeros_like(logits), logits], -1) if logits.shape[-1] == 1 else logits


def split_labels(lines: list[str], id2label: dict[str, str] | None) -> tuple[list[str], list[int] | None]:
    """Sentences, and their labels when every line is `LABEL<TAB>sentence` (LABEL a class number
    or one of the model's label names)."""
    if not lines or not all("\t" in line for line in lines):
        return lines, None
    by_name = {str(name).lower(): int(number) for number, name in (id2label or {}).items()}
    sentences, labels = [], []
    for number, line in enumerate(lines, 1):
        label, _, sentence = line.partition("\t")
        label = label.strip()
        if label.lstrip("-").isdigit():
            labels.append(int(label))
        elif label.lower() in by_name:
            labels.append(by_name[label.lower()])
        else:
            raise InputError(f"line {number}: label {label!r} is neither a class number nor one of {sorted(by_name) or 'the model labels'}")
        sentences.append(sentence.strip())
    return sentences, labels
