"""The calibration text zoo ships: long enough for an encoder's pooled statistics."""

import pytest

from zoo.optimize.calibration import DEFAULT_TOKENS, FEW_SENTENCES, WINDOW, _sentences
from zoo.optimize.teacher import default_text

pytestmark = pytest.mark.slow  # imports transformers


def test_the_shipped_text_gives_an_encoder_many_sentences(tmp_path):
    transformers = pytest.importorskip("transformers")

    words = sorted({word.strip(".,;:!?\"'()").lower() for word in default_text().split()})
    (tmp_path / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]))
    tokenizer = transformers.BertTokenizerFast(vocab_file=str(tmp_path / "vocab.txt"))
    inputs = list(_sentences(tokenizer, default_text(), WINDOW, DEFAULT_TOKENS))
    # An encoder's H is mostly the outer products of its inputs' mean activations: with the 69
    # sentences of the first 8.5 KB, MiniLM's truncate:bits=3 --calib fitted those and reached
    # cosine 0.99894; with 180, 0.99906 (benchmarks/bench_lossy.py).
    assert len(inputs) >= FEW_SENTENCES  # no warning for the text zoo ships
    assert all(piece[0, 0] == tokenizer.cls_token_id and piece[0, -1] == tokenizer.sep_token_id for piece in inputs)
