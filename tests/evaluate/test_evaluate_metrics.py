"""The figures themselves, on tensors whose right answers are known."""

import math

import pytest

torch = pytest.importorskip("torch")

from zoo.evaluate import metrics  # noqa: E402


def random_logprobs(rows: int, vocabulary: int, seed: int, sharpness: float = 3.0):
    generator = torch.Generator().manual_seed(seed)
    return metrics.log_softmax(sharpness * torch.randn(rows, vocabulary, generator=generator))


def test_kl_of_identical_distributions_is_zero():
    logprobs = random_logprobs(50, 300, 0)
    assert torch.equal(metrics.kl_divergence(logprobs, logprobs), torch.zeros(50, dtype=torch.float64))
    top, indices = logprobs.topk(20)
    assert torch.equal(metrics.top_k_kl_divergence(top, indices, logprobs), torch.zeros(50, dtype=torch.float64))


def test_top_k_kl_is_exact_with_the_whole_vocabulary_and_a_close_lower_bound_without():
    reference, candidate = random_logprobs(64, 200, 1, 4.0), random_logprobs(64, 200, 2, 4.0)
    candidate = metrics.log_softmax(reference + 0.3 * (candidate - reference))
    full = metrics.kl_divergence(reference, candidate)
    top, indices = reference.topk(200)
    assert torch.allclose(metrics.top_k_kl_divergence(top, indices, candidate), full, rtol=1e-5, atol=1e-9)
    top, indices = reference.topk(32)
    bound = metrics.top_k_kl_divergence(top, indices, candidate)
    assert (bound <= full + 1e-9).all()
    assert bound.sum() > 0.9 * full.sum()


def test_perplexity_of_a_uniform_model_is_the_vocabulary_size():
    logprobs = metrics.log_softmax(torch.zeros(10, 257))
    assert metrics.perplexity(logprobs[:, 5]) == pytest.approx(257)


def test_distribution_stats():
    stats = metrics.distribution_stats(torch.arange(101, dtype=torch.float64), "x")
    assert (stats["x_mean"], stats["x_median"], stats["x_p99"], stats["x_max"]) == (50, 50, 99, 100)
    assert stats["x_mean_stderr"] == pytest.approx(torch.arange(101.0).std().item() / math.sqrt(101))


def test_top1_agreement_and_delta_p():
    scores = torch.tensor([[0.0, 1.0], [2.0, 1.0], [0.0, 3.0], [1.0, 0.0]])
    assert metrics.top1_agreement(torch.tensor([1, 0, 0, 1]), scores) == 0.5
    figures = metrics.delta_p(torch.log(torch.tensor([0.5, 0.5])), torch.log(torch.tensor([0.6, 0.4])))
    assert figures["delta_p_mean"] == pytest.approx(0.0, abs=1e-7)
    assert figures["delta_p_rms"] == pytest.approx(0.1, rel=1e-5)


def test_row_cosine():
    a = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0]])
    b = torch.tensor([[0.0, 1.0], [2.0, 2.0], [0.0, 0.0]])
    assert metrics.row_cosine(a, b).tolist() == pytest.approx([0.0, 1.0, 1.0])


@pytest.mark.parametrize("relative", [0.001, 0.01, 0.1])
def test_weight_figures_of_known_noise(relative):
    generator = torch.Generator().manual_seed(3)
    reference = torch.randn(1000, 300, generator=generator)
    noise = torch.randn(1000, 300, generator=generator)
    noise *= relative * reference.norm() / noise.norm()  # relative error exactly `relative`
    figures = metrics.weight_figures(metrics.weight_sums(reference, reference + noise))
    assert figures["relative_error"] == pytest.approx(relative, rel=1e-4)
    assert figures["sqnr_db"] == pytest.approx(-20 * math.log10(relative), abs=1e-3)
    assert figures["cosine"] == pytest.approx(1 / math.sqrt(1 + relative**2), abs=1e-4)


def test_weight_figures_of_identical_and_zero_tensors_stay_json():
    zeros = torch.zeros(10)
    assert metrics.weight_figures(metrics.weight_sums(zeros, zeros)) == {"relative_error": 0.0, "sqnr_db": None, "cosine": 1.0, "max_abs_error": 0.0}
    ones = torch.ones(4, dtype=torch.bfloat16)
    assert metrics.weight_figures(metrics.weight_sums(ones, ones))["sqnr_db"] is None


def test_a_tensor_whose_reference_is_all_zeros_counts_in_the_totals():
    """Its relative error was None, which left it out of the totals: a candidate of all 100s
    against a reference of zeros beside an identical tensor was "identical", cosine 1, and passed
    --min-cosine. Against zeros the error is infinite and the cosine 0."""
    zeros, hundreds = torch.zeros(64, 64), torch.full((64, 64), 100.0)
    figures = metrics.weight_figures(metrics.weight_sums(zeros, hundreds))
    assert figures["relative_error"] == math.inf and figures["cosine"] == 0.0
    same = torch.randn(64, 64)
    per_tensor = [{"elements": 4096, **figures}, {"elements": 4096, **metrics.weight_figures(metrics.weight_sums(same, same))}]
    totals = metrics.weight_totals(per_tensor)
    assert totals["elements"] == 8192 and totals["cosine"] == 0.5 and totals["relative_error"] == math.inf


def test_weight_totals_are_weighted_by_size():
    per_tensor = [{"elements": 300, "relative_error": 0.01, "cosine": 0.9999}, {"elements": 100, "relative_error": 0.0, "cosine": 1.0}]
    totals = metrics.weight_totals(per_tensor)
    assert totals["relative_error"] == pytest.approx(0.0075)
    assert totals["sqnr_db"] == pytest.approx(-20 * math.log10(0.0075))
    assert totals["cosine"] == pytest.approx((300 * 0.9999 + 100) / 400)
