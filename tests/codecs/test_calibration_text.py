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


def test_the_few_sentences_warning_asks_for_more_text_only_where_more_would_be_read(tmp_path):
    """With a tokenizer of a token a character, the 8192 tokens calibration reads hold about 70
    sentences: the warning asked for 150 or more, and four times the shipped text drew it again."""
    transformers = pytest.importorskip("transformers")
    from tests.eval_models import _bert_config, byte_tokenizer
    from zoo.errors import ZooWarning
    from zoo.optimize.calibration import collect

    folder = tmp_path / "encoder"
    transformers.BertModel(_bert_config()).save_pretrained(folder)
    byte_tokenizer(for_encoder=True).save_pretrained(folder)
    sentences = [s for s in default_text().split(". ") if len(s.split()) > 8]
    for name, text, advice in (("short.txt", ". ".join(sentences[:20]) + ".", "give 150 or more"),
                               ("long.txt", default_text() * 4, "shorter sentences give more")):
        (tmp_path / name).write_text(text)
        with pytest.warns(ZooWarning, match="to calibrate an encoder on") as caught:
            collect(folder, tmp_path / name)
        assert advice in str(caught[0].message), str(caught[0].message)
