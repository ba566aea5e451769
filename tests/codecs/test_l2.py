"""l2: the quantizer, the budget it is held to, and the calibrated survey."""

import warnings

import numpy as np
import pytest

import zoo
from zoo.codecs.pipeline import Pipeline
from zoo.codecs.base import TypedArray
from zoo.codecs.lossy.deadzone import BLOCK, dequantize, entropy_bits, quantize, quantize_stored, symbols_array
from zoo.codecs.lossy.l2 import L2
from zoo.optimize.rate import mean_square
from zoo.errors import FormatError, PipelineError, ZooWarning

from tests.conftest import write_safetensors


def test_dead_zone_zeroes_small_weights_and_keeps_bins_centred():
    values = np.array([0.0, 0.05, -0.12, 0.3, -0.3, 0.95], dtype=np.float32)
    symbols = quantize(values, 0.2, 0.1)
    assert symbols.tolist() == [0, 0, 0, 1, -1, 4]
    assert dequantize(symbols, 0.2, 0.1).tolist() == pytest.approx([0, 0, 0, 0.3, -0.3, 0.9])


def test_symbols_take_the_narrowest_integer():
    assert symbols_array(np.array([-128, 127])).dtype == "I8"
    assert symbols_array(np.array([-129, 5])).dtype == "I16"
    assert symbols_array(np.array([40000])).dtype == "I32"


@pytest.mark.parametrize(("step", "stored"), [(0.05, "I8"), (0.0005, "I16"), (2e-6, "I32")])
def test_whole_tensors_go_through_in_blocks_to_the_same_symbols_and_values(step, stored):
    # Three blocks and a tail, and symbols of each width: the same as the int64 path, to the bit.
    values = (np.random.default_rng(7).standard_normal(2 * BLOCK + BLOCK // 2 + 3) * 0.5).astype(np.float32).reshape(-1, 1)
    reference = quantize(values, step, step / 4)
    symbols = quantize_stored(values, step, step / 4)
    assert symbols.dtype == stored == symbols_array(reference).dtype
    assert symbols.data.shape == values.shape and np.array_equal(symbols.data, reference)
    assert entropy_bits(symbols.data) == entropy_bits(reference)
    assert np.array_equal(dequantize(symbols.data, step, step / 4), dequantize(reference, step, step / 4))
    assert mean_square(values) == float(np.mean(values.astype(np.float64) ** 2))
    with pytest.raises(PipelineError, match="wider than 32 bits"):
        quantize_stored(values, 1e-12, 0.0)


def test_the_smallest_int8_symbol_comes_back_negative():
    assert dequantize(np.array([-128, 127], np.int8), 0.5, 0.25).tolist() == [-64.25, 63.75]


def test_whole_tensor_steps_hold_no_temporary_the_size_of_the_tensor():
    """A 128 MiB tensor took 1.1 GB at target_ratio=8: float64 and int64 copies of it, several
    at a time. Now each step holds its result and a few blocks (numpy tells tracemalloc)."""
    import tracemalloc

    values = np.random.default_rng(8).standard_normal((1024, 4096), dtype=np.float32)  # 16 MiB

    def above_result(step):
        tracemalloc.start()
        try:
            result = step()
            return tracemalloc.get_traced_memory()[1] - getattr(getattr(result, "data", result), "nbytes", 0)
        finally:
            tracemalloc.stop()

    symbols = quantize_stored(values, 0.0005, 0.0)  # I16
    for step in (lambda: quantize_stored(values, 0.0005, 0.0), lambda: entropy_bits(symbols.data), lambda: mean_square(values),
                 lambda: dequantize(symbols.data, 0.0005, 0.0)):
        assert above_result(step) < values.nbytes / 2


def _layers(tmp_path, count=4, shape=(192, 256)):
    rng = np.random.default_rng(1)
    tensors = {f"block.{i}.weight": ("F32", (rng.standard_normal(shape) * 0.02 * (i + 1)).astype(np.float32)) for i in range(count)}
    tensors["block.0.bias"] = ("F32", rng.standard_normal(shape[1]).astype(np.float32))
    return write_safetensors(tmp_path / "m.safetensors", tensors), tensors


@pytest.mark.parametrize("ratio", [8, 16])
def test_whole_archive_lands_on_the_target(tmp_path, ratio):
    source, tensors = _layers(tmp_path)
    report = zoo.compress(source, tmp_path / "m.zoo", f"l2:target_ratio={ratio}")
    # The budget counts every tensor and an estimate of the header; the safetensors header comes on top.
    assert report.bits_per_weight == pytest.approx(32 / ratio, rel=0.04)
    squared_error = squared_size = 0.0
    with zoo.open(tmp_path / "m.zoo") as archive:
        for name, (_, original) in tensors.items():
            got = archive.get_tensor(name)
            if name.endswith("bias"):
                assert got.tobytes() == original.tobytes()
            else:
                squared_error += float(((got - original) ** 2).sum())
                squared_size += float((original**2).sum())
    # One step for all (the MSE optimum): the small tensors lose relatively more, the total little.
    assert np.sqrt(squared_error / squared_size) < (0.1 if ratio == 8 else 0.4)


@pytest.mark.parametrize(("coder", "chunk_bytes"), [("bytegroup|zstd:level=3", 4 << 20), ("lossless", 64 << 10), ("bytegroup|rans", 1 << 20)])
def test_the_budget_is_counted_in_the_pipelines_own_coder_and_chunks(tmp_path, coder, chunk_bytes):
    """The survey measures sizes with the stages and chunk size the archive is written with: a
    budget of 4 bits per weight lands within 1% whatever follows l2 (it landed at 4.14 with zstd
    when the survey measured with the default coder)."""
    source, _ = _layers(tmp_path)
    report = zoo.compress(source, tmp_path / "m.zoo", f"l2:target_ratio=8|{coder}", chunk_bytes=chunk_bytes)
    assert report.bits_per_weight == pytest.approx(4.0, rel=0.01)


def test_data_free_allocation_gives_every_tensor_the_same_relative_step(tmp_path):
    _, tensors = _layers(tmp_path)
    arrays = {n: TypedArray(v, d) for n, (d, v) in tensors.items()}
    plan = Pipeline.parse("l2:target_ratio=10").survey(lambda: iter(arrays.items()))[0].steps
    assert set(plan) == {n for n in arrays if not n.endswith("bias")}
    # Relative MSE summed over tensors of one shape and distribution: the optimum is one step per RMS.
    relative = [step / np.sqrt(np.mean(arrays[n].data ** 2)) for n, (step, _) in plan.items()]
    assert max(relative) / min(relative) < 1.3


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    import torch
    import transformers

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("lm")
    config = transformers.GPT2Config(vocab_size=256, n_embd=32, n_layer=1, n_head=2, n_positions=64, initializer_range=0.2,
                                     bos_token_id=0, eos_token_id=0)
    transformers.GPT2LMHeadModel(config).save_pretrained(folder)
    return folder


@pytest.mark.slow
def test_calibrated_survey_weighs_tensors_by_their_effect_on_the_output(tiny_lm):
    from safetensors.numpy import load_file

    from zoo.optimize.teacher import Teacher, default_text

    teacher = Teacher(tiny_lm, default_text(), sequence_length=64, max_sequences=4)
    arrays = {n: TypedArray(v, "F32") for n, v in load_file(tiny_lm / "model.safetensors").items()}
    pipeline = Pipeline.parse("l2:target_ratio=8")
    calibrated = pipeline.survey(lambda: iter(arrays.items()), teacher)[0].steps
    blind = pipeline.survey(lambda: iter(arrays.items()))[0].steps
    assert set(calibrated) == set(blind)

    def kl(plan):
        import torch

        overrides = {}
        for name, (step, dead_zone) in plan.items():
            values = dequantize(quantize(arrays[name].data, step, dead_zone), step, dead_zone)
            overrides[teacher.parameter(name)] = torch.from_numpy(values)
        return teacher.mean_distortion(overrides)

    assert kl(calibrated) < kl(blind)


def test_a_tensor_that_takes_no_more_bits_than_the_target_is_left_alone():
    """target_ratio counts from float32: at 2 (16 bits a weight) an F8 model's l2 archive was 1.8
    times its lossless one, every weight less precise; F8 and BF16 now stay lossless there."""
    storage = {"F8_E4M3": np.uint8, "BF16": np.uint16, "F32": np.float32}
    for ratio, dtype, chosen in ((2, "F8_E4M3", False), (4, "F8_E4M3", False), (5, "F8_E4M3", True), (2, "BF16", False),
                                 (2.5, "BF16", True), (1.5, "F32", True)):
        array = TypedArray(np.zeros((16, 16), storage[dtype]), dtype)
        assert L2(target_ratio=ratio).selects("x.weight", array) is chosen, (ratio, dtype)


def test_bad_parameters_and_bad_archives_are_one_line_errors():
    with pytest.raises(PipelineError, match="target_ratio"):
        L2(target_ratio=1)
    with pytest.raises(PipelineError, match="target_ratio"):
        zoo.codecs.pipeline.Pipeline.parse("l2:target_ratio=fast")
    symbols = TypedArray(np.zeros((2, 2), np.int8), "I8")
    with pytest.raises(FormatError, match="step"):
        L2().decode({"symbols": symbols}, {"step": -1.0, "dead_zone": 0.0}, "F32", (2, 2))
    # inf in float32: every weight was NaN; an integer past any float was "unexpected OverflowError"
    for meta in ({"step": 1e300, "dead_zone": 0.0}, {"step": 1.0, "dead_zone": 1e39}, {"step": 10**400, "dead_zone": 0.0},
                 {"step": 1.0, "dead_zone": 10**400}):
        with pytest.raises(FormatError, match="step"):
            L2().decode({"symbols": symbols}, meta, "F32", (2, 2))
    with warnings.catch_warnings():  # float32's largest, as printed, is a step; its products overflow, unsaid
        warnings.simplefilter("error")
        large = TypedArray(np.array([[0, 2], [-1, 1]], np.int8), "I8")
        decoded = L2().decode({"symbols": large}, {"step": 3.4028235e38, "dead_zone": 0.0}, "F32", (2, 2)).data
    # a product past float32's range saturates at its largest: the weights were finite (zoo.dtypes.saturated)
    assert decoded.tolist() == [[0.0, np.finfo(np.float32).max], [-np.finfo(np.float32).max, np.finfo(np.float32).max]]
    with pytest.raises(FormatError, match="shape"):
        L2().decode({"symbols": symbols}, {"step": 1.0, "dead_zone": 0.0}, "F32", (4,))
    with pytest.raises(PipelineError, match="NaN"):
        L2().encode(TypedArray(np.array([[np.nan, 1.0]], np.float32), "F32"))


def test_weights_the_output_never_sees_still_get_a_sensitivity(tmp_path):
    # An encoder's pooler does not touch the pooled embedding the teacher measures: the gradient
    # is missing, which once crashed `zoo compress -p l2 --calib` on all-MiniLM-L6-v2.
    import torch
    import transformers

    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=256, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                                     max_position_embeddings=64)
    transformers.BertModel(config).save_pretrained(tmp_path)
    from safetensors.numpy import load_file

    from zoo.optimize.teacher import Teacher, default_text

    teacher = Teacher(tmp_path, default_text(), sequence_length=32, max_sequences=2)
    names = [n for n in load_file(tmp_path / "model.safetensors") if n.endswith(("pooler.dense.weight", "query.weight"))]
    sensitivities = teacher.sensitivities(names)
    pooler = next(n for n in names if "pooler" in n)
    assert np.isfinite(sensitivities[pooler]).all() and sensitivities[pooler].min() > 0


def test_error_feedback_lowers_the_output_error_at_the_same_step():
    from zoo.optimize import refine as _refine
    from zoo.codecs.lossy.deadzone import quantize_with_feedback

    rng = np.random.default_rng(3)
    weights = rng.standard_normal((48, 64)).astype(np.float32)
    inputs = rng.standard_normal((512, 64)) @ rng.standard_normal((64, 64))  # correlated inputs, as a layer's are
    hessian = inputs.T @ inputs / len(inputs)
    step = 0.5
    plain = dequantize(quantize(weights, step, 0.0), step, 0.0)
    fed = dequantize(quantize_with_feedback(weights, step, 0.0, hessian), step, 0.0)
    assert np.all(np.abs(fed / step - np.round(fed / step)) < 1e-4)  # still on the grid
    assert _refine.output_error(weights, fed, hessian) < 0.7 * _refine.output_error(weights, plain, hessian)


def test_the_budget_weighs_a_tensor_of_tiny_weights_as_any_other(tmp_path):
    """Relative MSE divided by the mean square floored at 1e-30: a tensor of RMS 1e-20 looked almost
    free to damage and came back as zeros (relative error 1.0 beside 0.07 for its twin at 0.05)."""
    import zoo
    from tests.conftest import write_safetensors

    pattern = np.random.default_rng(0).standard_normal((64, 96))
    source = write_safetensors(tmp_path / "w.safetensors", {"a.weight": ("F32", (pattern * 0.05).astype("<f4")),
                                                           "b.weight": ("F32", (pattern * 1e-20).astype("<f4"))})
    zoo.compress(source, tmp_path / "w.zoo", "l2:target_ratio=10")
    state = zoo.load_state_dict(tmp_path / "w.zoo")
    errors = [float(np.linalg.norm(state[k].numpy() - p) / np.linalg.norm(p)) for k, p in (("a.weight", pattern * 0.05),
                                                                                         ("b.weight", pattern * 1e-20))]
    assert max(errors) < 0.5 and max(errors) < 2 * min(errors), errors


@pytest.mark.parametrize(("where", "said"), [((300, 17), []), ((100, 200), ["l2: target_ratio=8 is missed: the closest l2 comes is "
                                                                             "about 8.6, a smaller archive than asked"])])
def test_one_outlier_gets_a_step_its_symbol_fits_and_leaves_the_rest_a_grid_of_their_own(tmp_path, where, said):
    """The curves sample 65,536 weights. One weight of 1e9 among 131,072 that the sample missed
    (at 300, 17) got the step chosen for the rest, which needed symbols wider than 32 bits, and
    compress failed ("l2: a step this small needs symbols wider than 32 bits") naming neither the
    tensor nor a way round. One the sample held (at 100, 200) made its rms, every step of the grid
    was too coarse for the rest, and they were all coded as zero at a ratio of 331."""
    values = np.random.default_rng(8).standard_normal((512, 256)).astype(np.float32)
    values[where] = 1e9
    source = write_safetensors(tmp_path / "m.safetensors", {"w": ("F32", values)})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = zoo.compress(source, tmp_path / "m.zoo", "l2:target_ratio=8")
    # at most the bits asked for; fewer where the step the outlier allows (1e9 / 2^30) is finer than the rest need,
    # and said where that is more than 5 % fewer (it landed at 8.54 in silence)
    assert 7.9 < 32 / report.bits_per_weight < 9
    assert [str(w.message) for w in caught if issubclass(w.category, ZooWarning)] == said
    with zoo.open(tmp_path / "m.zoo") as archive:
        decoded = archive.get_tensor("w")
    assert decoded[where] == pytest.approx(1e9, rel=1e-6)
    rest = np.ones(values.shape, dtype=bool)
    rest[where] = False
    assert np.corrcoef(decoded[rest], values[rest])[0, 1] > 0.85


def test_the_entropy_of_symbols_with_one_far_out_counts_the_symbols_not_their_range():
    # a table of every value between the least and the greatest: 8 TiB here; 8 GiB for an outlier's 2^30
    symbols = np.resize(np.arange(-3, 4), 10_000)
    far = symbols.copy()
    far[0], near = 1 << 40, symbols.copy()
    near[0] = 4
    assert entropy_bits(far) == pytest.approx(entropy_bits(near), rel=1e-12)
