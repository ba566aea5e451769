"""Proof of quality: how far a compressed model is from the model it was made from.

Library API (torch and transformers are imported only when a function below runs)::

    from zoo.evaluate import evaluate, verify_archive, Gates

    result = evaluate("model.zoo", reference="model_dir")          # -> EvalResult
    result.kind, result.metrics, result.weights, result.passed
    result.to_dict()                                                # JSON-ready, per-tensor list included
    evaluate(candidate, reference, text=None, max_tokens=4096, kind=None,
             gates=Gates(max_kl=0.01), weights=True, progress=None, base=None)
    verify_archive("model.zoo", "model_dir", gates=Gates(min_cosine=0.999))  # what compress --eval runs

A candidate or reference is a zoo name, a .zoo archive, a model folder or one weights file; an
archive made with compress(base=...) is measured as ``base`` plus its decoded differences. The
kind is read from config.json (transformers loads the model from it, in float32 on CPU):

- ``causal-lm`` (``*ForCausalLM``, ``*LMHeadModel``): on the same tokens (the default text shipped
  in zoo/data, or ``text``, capped at ``max_tokens``), ``ppl`` and ``ppl_reference``,
  ``ln_ppl_ratio`` and ``ppl_ratio``, the per-token KL divergence of the candidate from the
  reference ``kl_mean`` (with ``kl_mean_stderr``), ``kl_median``, ``kl_p99``, ``kl_max``,
  ``top1_agreement``, and ``delta_p_mean``/``delta_p_rms``, the change in the probability of the
  right token. The reference keeps only its top 256 log-probs per token (see
  metrics.top_k_kl_divergence: a lower bound of the KL, exact when the vocabulary is that small).
- ``encoder`` (``*Model``, ``*ForMaskedLM``): over a set of sentences (shipped, or the lines of
  ``text``), ``cosine_mean`` and ``cosine_min`` of the pooled embeddings, and ``mlm_loss`` (and
  ``mlm_loss_reference``) when the model has a masked-LM head.
- ``classifier`` (``*ForSequenceClassification``): ``label_agreement`` with the reference,
  ``kl_mean``/``kl_max`` of the class distributions, and ``accuracy`` (and ``accuracy_reference``)
  when every line of ``text`` is ``LABEL<TAB>sentence``.
- ``weights`` (no config, no tokenizer or an architecture with no runner): only the weight-space
  figures. These are computed for every kind when a reference is given: per tensor in
  ``result.tensors`` (``relative_error`` = RMS error / RMS weight, ``sqnr_db``, ``cosine``,
  ``max_abs_error``) and in ``result.weights`` their totals weighted by element count.
- ``lossless`` (verify_archive on an archive whose files are all lossless): every file decoded and
  its sha256 compared with the source file's, read again from disk.

The reference's outputs are cached (in memory, and on disk under $ZOO_EVAL_CACHE or
~/.cache/zoo/eval) by its fingerprint and the tokens, so many candidates cost one reference run.

noise.noisy_copy(folder, destination, relative_noise) writes a yardstick: the model with white
noise at a known SQNR on every weight.

Lower-level figures on torch tensors, for benchmarks: metrics.kl_divergence,
metrics.top_k_kl_divergence, metrics.distribution_stats, metrics.perplexity, metrics.top1_agreement,
metrics.delta_p, metrics.row_cosine, metrics.weight_sums + metrics.weight_figures, metrics.weight_totals.
"""

from __future__ import annotations

from typing import Any

from zoo.evaluate.result import EvalResult, Gates, QualityGateError

_LAZY = {"evaluate": "core", "verify_archive": "core", "default_text": "core", "default_sentences": "core",
         "DEFAULT_MAX_TOKENS": "core", "metrics": None}


def __getattr__(name: str) -> Any:
    # Keeps `import zoo.evaluate` (for Gates and EvalResult) free of torch until something runs.
    if name not in _LAZY:
        raise AttributeError(f"module 'zoo.evaluate' has no attribute {name!r}")
    from importlib import import_module

    module = import_module(f".{_LAZY[name] or name}", __name__)
    return module if _LAZY[name] is None else getattr(module, name)


__all__ = ["DEFAULT_MAX_TOKENS", "EvalResult", "Gates", "QualityGateError", "default_sentences", "default_text",
           "evaluate", "metrics", "verify_archive"]
