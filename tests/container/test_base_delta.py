"""--base: a fine-tune stored as its difference from the model it was tuned from.

The models are a real (tiny) BERT classifier trained here on one task, then fine-tuned a few
steps on a shifted one; a character-level tokenizer lets --calib run it on text."""

import hashlib
import json
import math
import shutil
import warnings

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import zoo
from zoo.api import compress_into
from zoo.codecs.lossy.pranc import basis, combine, project
from zoo.container.base_model import BaseModel
from zoo.codecs.base import TypedArray
from zoo.container.delta import Deltas, digest, finite
from zoo.dtypes import from_float32
from zoo.errors import FormatError, InputError
from zoo.codecs.pipeline import Pipeline

from tests.cli.test_cli import zoo_cli

SPEC = "pranc:k=300,steps=0"
CHARACTERS = "abcdefghijklmnopqrstuvwxyz .,;:'-"


def _save_tokenizer(folder):
    import transformers
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers

    vocabulary = {"[UNK]": 0, **{c: i + 1 for i, c in enumerate(CHARACTERS)}}
    tokenizer = Tokenizer(models.WordLevel(vocabulary, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")  # one token per character
    transformers.PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="[UNK]").save_pretrained(folder)


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    """(base folder, fine-tuned folder): the base learns label = first token mod 3, the fine-tune
    then 20 steps of label = second token mod 3."""
    import torch
    import transformers

    root = tmp_path_factory.mktemp("tuned")
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=len(CHARACTERS) + 1, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=32, max_position_embeddings=32, num_labels=3)
    model = transformers.BertForSequenceClassification(config)
    generator = torch.Generator().manual_seed(0)

    def train(position, steps, learning_rate):
        optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate)
        for _ in range(steps):
            ids = torch.randint(1, config.vocab_size, (32, 16), generator=generator)
            loss = model(input_ids=ids, labels=ids[:, position] % 3).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

    folders, threads = [], torch.get_num_threads()
    torch.set_num_threads(1)  # a model this small trains 50 times slower when two threads contend
    try:
        for name, position, steps, learning_rate in (("base", 0, 60, 3e-3), ("tuned", 1, 20, 1e-3)):
            train(position, steps, learning_rate)
            model.eval().save_pretrained(root / name)
            _save_tokenizer(root / name)
            folders.append(root / name)
    finally:
        torch.set_num_threads(threads)
    return tuple(folders)


@pytest.fixture(scope="module")
def delta_archive(tuned, tmp_path_factory):
    base, fine_tuned = tuned
    archive = tmp_path_factory.mktemp("archive") / "delta.zoo"
    report = zoo.compress(fine_tuned, archive, SPEC, base=base)
    return archive, report


def weights(folder):
    return load_file(folder / "model.safetensors")


def test_round_trip_rebuilds_base_plus_the_fitted_delta(tuned, delta_archive, tmp_path):
    base, fine_tuned = tuned
    archive, report = delta_archive
    assert archive.read_bytes()[8:12] == (2).to_bytes(4, "little")  # a version-1 reader refuses it
    base_weights, tuned_weights = weights(base), weights(fine_tuned)
    header = zoo.open(archive)._file.header
    stored_against = {key for key, info in header["tensors"].items() if "base" in info}
    assert report.base == {"hint": str(base), "tensors": len(stored_against)}
    assert {"bert.embeddings.word_embeddings.weight", "classifier.weight"} <= stored_against
    assert not any(name.endswith(".bias") or "LayerNorm" in name for name in stored_against)
    with zoo.open(archive, base=base) as opened:
        for name, expected in tuned_weights.items():
            got = opened.get_tensor(name)
            if name not in stored_against:
                assert got.tobytes() == expected.tobytes(), name  # lossless, bit for bit
                continue
            meta = header["tensors"][name]["root"]["meta"]
            delta = (expected - base_weights[name]).reshape(-1)
            k = header["tensors"][name]["root"]["parts"]["coefficients"]["leaf"]["shape"][0]
            fitted = combine(project(delta, basis(meta["seed"], meta["stream"], k, delta.size)), meta["seed"], meta["stream"], delta.size)
            np.testing.assert_allclose(got.reshape(-1), from_float32(base_weights[name].reshape(-1) + fitted, "F32"), atol=1e-5)
            # A projection: the rebuilt tensor is never further from the fine-tune than the base is.
            assert np.linalg.norm(got - expected) <= np.linalg.norm(base_weights[name] - expected) * (1 + 1e-5)
    state = zoo.load_state_dict(archive, base=base)
    assert state.keys() == tuned_weights.keys()
    zoo.decompress(archive, tmp_path / "out", base=base)
    for name in ("config.json", "tokenizer.json"):
        assert (tmp_path / "out" / name).read_bytes() == (fine_tuned / name).read_bytes()
    rebuilt = weights(tmp_path / "out")
    assert all(np.array_equal(rebuilt[name], state[name].numpy()) for name in tuned_weights)


def test_the_base_may_be_an_archive_or_a_single_file(tuned, delta_archive, tmp_path):
    base, _ = tuned
    archive, _ = delta_archive
    zoo.compress(base, tmp_path / "base.zoo")
    expected = zoo.load_state_dict(archive, base=base)
    for other in (tmp_path / "base.zoo", base / "model.safetensors"):
        got = zoo.load_state_dict(archive, base=other)
        assert all(np.array_equal(got[name].numpy(), expected[name].numpy()) for name in expected)


def test_without_its_base_an_archive_says_which_base_it_needs(tuned, delta_archive, tmp_path):
    base, _ = tuned
    archive, _ = delta_archive
    with zoo.open(archive) as opened:
        assert opened.get_tensor("classifier.bias").shape == (3,)  # stored as itself: readable
        with pytest.raises(InputError, match=f"difference from the base model '{base}'"):
            opened.get_tensor("classifier.weight")
    # the remedy is named for a Python caller too, not only as the command line's flag
    with pytest.raises(InputError, match=r"pass that base \(base= in Python, --base BASE on the command line\)$"):
        zoo.decompress(archive, tmp_path / "out")
    with pytest.raises(InputError, match=r"pass that base \(base= in Python"):
        zoo.load_state_dict(archive)
    done = zoo_cli("decompress", archive, "-o", tmp_path / "out")
    assert done.returncode == 1 and done.stderr.count("\n") == 1 and str(base) in done.stderr and "--base BASE" in done.stderr
    assert not (tmp_path / "out").exists()


def _other_bases(base, fine_tuned, root):
    """Bases an archive made against `base` must refuse: different values, a tensor missing, a
    tensor of another shape."""
    tensors = weights(base)
    missing = root / "missing.safetensors"
    save_file({k: v for k, v in tensors.items() if k != "classifier.weight"}, missing)
    reshaped = root / "reshaped.safetensors"
    save_file({**tensors, "classifier.weight": tensors["classifier.weight"].reshape(-1, 3)}, reshaped)
    return {"sha256 differs": fine_tuned, "has no tensor 'classifier.weight'": missing, r"is F32\[16, 3\], the archive needs F32\[3, 16\]": reshaped}


def test_a_wrong_base_is_refused_in_one_line(tuned, delta_archive, tmp_path):
    base, fine_tuned = tuned
    archive, _ = delta_archive
    for message, other in _other_bases(base, fine_tuned, tmp_path).items():
        with pytest.raises(InputError, match=message):
            zoo.decompress(archive, tmp_path / "out", base=other)
        with pytest.raises(InputError, match=message), zoo.open(archive, base=other) as opened:
            opened.get_tensor("classifier.weight")
        assert not (tmp_path / "out").exists()
    done = zoo_cli("decompress", archive, "-o", tmp_path / "out", "--base", fine_tuned)
    assert done.returncode == 1 and done.stderr.count("\n") == 1 and "made against" in done.stderr
    assert not (tmp_path / "out").exists()


def test_info_and_verify_without_the_base(tuned, delta_archive, tmp_path):
    base, _ = tuned
    archive, report = delta_archive
    shown = zoo_cli("info", archive)
    assert shown.returncode == 0 and "needs its base model" in shown.stdout and "base + pranc" in shown.stdout
    assert json.loads(zoo_cli("info", archive, "--json").stdout)["base"] == report.base
    checked = zoo_cli("verify", archive)
    assert checked.returncode == 0 and "not rebuilt" in checked.stdout
    checked = zoo_cli("verify", archive, "--base", base)
    assert checked.returncode == 0 and "not rebuilt" not in checked.stdout
    # Damage to a stored difference is found without the base.
    damaged = tmp_path / "damaged.zoo"
    shutil.copy(archive, damaged)
    header = zoo.open(archive)._file.header
    leaf = header["tensors"]["classifier.weight"]["root"]["parts"]["coefficients"]["leaf"]
    with zoo.open(archive) as opened:
        offset = opened._file.payload_start + opened._file.read_index(leaf, "x")[0][0]
    data = bytearray(damaged.read_bytes())
    data[offset + 12] ^= 1
    damaged.write_bytes(bytes(data))
    assert zoo.verify(damaged) and zoo_cli("verify", damaged).returncode == 1


def test_archives_with_and_without_a_base_record_and_version_agree(delta_archive, tmp_path):
    from zoo.container.format import PREAMBLE

    archive, _ = delta_archive
    data = bytearray(archive.read_bytes())
    for version, message in ((1, "version 1 archive whose header is that of version 2"), (3, "version 3 archive whose header is that of version 2"),
                             (4, "this zoo reads versions 1 to 3")):
        data[8:12] = version.to_bytes(4, "little")
        (tmp_path / "bad.zoo").write_bytes(bytes(data))
        with pytest.raises(FormatError, match=message):
            zoo.open(tmp_path / "bad.zoo")
    assert PREAMBLE.size == 24


def test_a_base_file_changed_under_an_open_archive_is_refused_not_used(tmp_path):
    """The base's sha256 is checked once per tensor, but only while its file stays as it was: an
    open archive whose base file is rewritten refuses the next read as a fresh open would."""
    rng = np.random.default_rng(0)
    values = rng.standard_normal((64, 64)).astype(np.float32)
    (tmp_path / "base").mkdir()
    save_file({"w": values}, tmp_path / "base" / "model.safetensors")
    save_file({"w": values + 0.01 * rng.standard_normal((64, 64)).astype(np.float32)}, tmp_path / "tuned.safetensors")
    zoo.compress(tmp_path / "tuned.safetensors", tmp_path / "d.zoo", "truncate:bits=6", base=tmp_path / "base")
    with zoo.open(tmp_path / "d.zoo", base=tmp_path / "base") as opened:
        first = opened.get_tensor("w")
        assert np.array_equal(opened.get_tensor("w"), first)  # unchanged: read again on the hash taken once
        save_file({"w": values + 1}, tmp_path / "base" / "model.safetensors")
        with pytest.raises(InputError, match="sha256 differs"):
            opened.get_tensor("w")
        save_file({"w": values}, tmp_path / "base" / "model.safetensors")  # put back as it was: read again
        assert np.array_equal(opened.get_tensor("w"), first)


def test_tensors_holding_infinities_either_side_come_back_as_they_were(tmp_path):
    """A tensor stored against a base is base + difference: where the base holds an infinity, no
    difference gives the fine-tune's value back (a shared causal mask came back NaN, inf - inf, and
    a finite weight beside the base's inf too, with numpy's warnings printed). Such tensors are
    stored as themselves; a finite one beside them still as a difference."""
    rng = np.random.default_rng(0)
    mask = np.triu(np.full((64, 64), -np.inf, np.float32), 1)
    base = rng.standard_normal((64, 64)).astype(np.float32)
    base[0, 0] = np.inf
    tuned = base + np.float32(1e-3)
    tuned[0, 0] = 5.0
    plain = rng.standard_normal((64, 64)).astype(np.float32)
    save_file({"mask": mask, "w": base, "v": plain}, tmp_path / "base.safetensors")
    save_file({"mask": mask, "w": tuned, "v": plain + np.float32(1e-3)}, tmp_path / "tuned.safetensors")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy's RuntimeWarning of inf - inf among them
        zoo.compress(tmp_path / "tuned.safetensors", tmp_path / "d.zoo", "truncate:bits=7", base=tmp_path / "base.safetensors")
        with zoo.open(tmp_path / "d.zoo", base=tmp_path / "base.safetensors") as opened:
            assert opened.base_tensors() == ["v"]
            assert np.array_equal(opened.get_tensor("mask"), mask)
            decoded = opened.get_tensor("w")
    assert decoded[0, 0] == 5.0 and np.isfinite(decoded).all()


@pytest.mark.parametrize("dtype", ["F32", "BF16"])
def test_a_difference_float32_cannot_hold_is_not_stored(tmp_path, dtype):
    """3e38 against a base's -3e38: the difference, past float32's range, was stored as an infinity
    and came back one, where the weight was finite. F16's range is far inside float32's."""
    rng = np.random.default_rng(0)
    base, plain = rng.standard_normal((2, 64, 64)).astype(np.float32)
    tuned = base + np.float32(1e-3)
    base[1, 1], tuned[1, 1] = -3e38, 3e38
    import torch
    from safetensors.torch import save_file as save_torch

    kind = {"F32": torch.float32, "BF16": torch.bfloat16}[dtype]
    save_torch({"w": torch.from_numpy(base).to(kind), "v": torch.from_numpy(plain).to(kind)}, tmp_path / "base.safetensors")
    save_torch({"w": torch.from_numpy(tuned).to(kind), "v": torch.from_numpy(plain + np.float32(0.01)).to(kind)},
               tmp_path / "tuned.safetensors")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        zoo.compress(tmp_path / "tuned.safetensors", tmp_path / "d.zoo", "truncate:bits=4", base=tmp_path / "base.safetensors")
        with zoo.open(tmp_path / "d.zoo", base=tmp_path / "base.safetensors") as opened:
            assert opened.base_tensors() == ["v"]
            decoded = opened.get_tensor("w").astype(np.float32)
    assert np.isfinite(decoded).all() and decoded[1, 1] == pytest.approx(3e38, rel=1e-2)


@pytest.mark.parametrize("dtype", ["F32", "F16", "BF16"])
def test_finite_reads_infinities_and_nans_from_the_bits(dtype):
    values = np.zeros(300_000, np.float32)
    assert finite(TypedArray(from_float32(values, dtype), dtype))
    for odd in (np.inf, -np.inf, np.nan):
        values[-1] = odd  # in the second block
        assert not finite(TypedArray(from_float32(values, dtype), dtype))


def _two_copies(folder, shift, second="model.fp16.safetensors", half=True):
    """A model holding each weight in two files: model.safetensors and `second`, F16 (the usual
    fp16 variant) or F32 of other values (an EMA's)."""
    rng = np.random.default_rng(1)
    weights = {name: rng.standard_normal((32, 16)).astype(np.float32) + np.float32(shift) for name in ("lm_head.weight", "w")}
    folder.mkdir()
    save_file(weights, folder / "model.safetensors")
    save_file({name: (v.astype(np.float16) if half else v * 2) for name, v in weights.items()}, folder / second)
    return weights


def _decoded(archive, base):
    with zoo.open(archive, base=base) as opened:
        return {key: opened.get_tensor(key) for key in opened.keys()}


def test_a_name_the_base_holds_twice_is_its_tensor_of_the_same_dtype_and_shape(tmp_path):
    """A base with model.safetensors (F32) and model.fp16.safetensors (F16) of the same names: the
    fine-tune's tensors of both are stored against the copy of their own dtype, read from the base
    as a folder or as an archive (the F32 ones were stored whole, and the archive of the base,
    whose first copy of a name is another than the folder's, was refused)."""
    _two_copies(tmp_path / "base", 0.0)
    _two_copies(tmp_path / "tuned", 1e-3)
    zoo.compress(tmp_path / "base", tmp_path / "base.zoo")
    zoo.compress(tmp_path / "tuned", tmp_path / "d.zoo", "truncate:bits=7", base=tmp_path / "base")
    assert len(zoo.open(tmp_path / "d.zoo").base_tensors()) == 4
    decoded = [_decoded(tmp_path / "d.zoo", tmp_path / which) for which in ("base", "base.zoo")]
    assert len(decoded[0]) == 4 and decoded[0].keys() == decoded[1].keys()
    assert all(np.array_equal(decoded[0][k], decoded[1][k]) for k in decoded[0])


def test_a_name_held_twice_in_one_dtype_is_the_tensor_of_the_same_file(tmp_path):
    """model.safetensors and ema.safetensors of the same names, dtype and shape: each is stored
    against the base's of its own file, and read from a base whose files are named otherwise by the
    sha256 the archive recorded."""
    base = _two_copies(tmp_path / "base", 0.0, "ema.safetensors", half=False)
    _two_copies(tmp_path / "tuned", 1e-3, "ema.safetensors", half=False)
    zoo.compress(tmp_path / "tuned", tmp_path / "d.zoo", "truncate:bits=7", base=tmp_path / "base")
    header = zoo.open(tmp_path / "d.zoo")._file.header
    assert header["tensors"]["ema.safetensors::w"]["base"]["sha256"] == hashlib.sha256((base["w"] * 2).tobytes()).hexdigest()
    assert header["tensors"]["w"]["base"]["sha256"] == hashlib.sha256(base["w"].tobytes()).hexdigest()
    renamed = tmp_path / "renamed"
    renamed.mkdir()
    shutil.copy(tmp_path / "base" / "ema.safetensors", renamed / "a.safetensors")  # first in that folder
    shutil.copy(tmp_path / "base" / "model.safetensors", renamed / "b.safetensors")
    expected, got = _decoded(tmp_path / "d.zoo", tmp_path / "base"), _decoded(tmp_path / "d.zoo", renamed)
    assert len(got) == 4 and all(np.array_equal(expected[k], got[k]) for k in expected)
    assert np.abs(got["w"] - base["w"] - np.float32(1e-3)).max() < 1e-2


def test_verify_against_a_wrong_base_is_an_error_of_the_base_not_damage(tmp_path):
    """`zoo verify ARCHIVE --base WRONG` said `damaged: model.safetensors: base ...`, as if the
    archive were; and one tensor was "1 tensors are stored as differences"."""
    rng = np.random.default_rng(0)
    values = rng.standard_normal((64, 64)).astype(np.float32)
    save_file({"w": values}, tmp_path / "base.safetensors")
    save_file({"w": values + np.float32(1)}, tmp_path / "other.safetensors")
    save_file({"w": values + np.float32(1e-3)}, tmp_path / "tuned.safetensors")
    done = zoo_cli("compress", tmp_path / "tuned.safetensors", "-o", tmp_path / "d.zoo", "-p", "truncate:bits=6", "--base",
                   tmp_path / "base.safetensors")
    assert done.returncode == 0 and "1 tensor is stored as a difference from" in done.stdout, done.stdout
    assert "1 tensor stored as a difference from" in zoo_cli("verify", tmp_path / "d.zoo").stdout
    with pytest.raises(InputError, match="sha256 differs"):
        zoo.verify(tmp_path / "d.zoo", base=tmp_path / "other.safetensors")
    checked = zoo_cli("verify", tmp_path / "d.zoo", "--base", tmp_path / "other.safetensors")
    assert checked.returncode == 1 and checked.stdout == "" and checked.stderr.count("\n") == 1
    assert checked.stderr.startswith("error: base ") and "sha256 differs" in checked.stderr
    assert zoo.verify(tmp_path / "d.zoo", base=tmp_path / "base.safetensors") == []


def test_tensors_the_base_lacks_are_stored_as_themselves(tuned, tmp_path):
    base, fine_tuned = tuned
    partial = tmp_path / "partial.safetensors"
    save_file({k: v for k, v in weights(base).items() if k != "classifier.weight"}, partial)
    report = zoo.compress(fine_tuned, tmp_path / "d.zoo", SPEC, base=partial)
    with zoo.open(tmp_path / "d.zoo", base=partial) as opened:
        assert "classifier.weight" not in opened.base_tensors()
        assert "bert.pooler.dense.weight" in opened.base_tensors()
        opened.get_tensor("classifier.weight")
    assert report.base["tensors"] == len(zoo.open(tmp_path / "d.zoo").base_tensors())
    # A lossless pipeline selects nothing: the archive needs no base and is plain version 1.
    plain = zoo.compress(fine_tuned, tmp_path / "plain.zoo", base=base)
    assert plain.base is None and (tmp_path / "plain.zoo").read_bytes()[8:12] == (1).to_bytes(4, "little")
    done = zoo_cli("compress", fine_tuned, "-o", tmp_path / "plain.zoo", "--base", base, "--force")
    assert done.returncode == 0 and "does not need it" in done.stderr


def test_bad_bases_at_compress_leave_nothing(tuned, tmp_path):
    _, fine_tuned = tuned
    for spec in (SPEC, "lossless"):  # a base is checked even when no stage will use it
        with pytest.raises(InputError, match="no such file, folder or model"):
            zoo.compress(fine_tuned, tmp_path / "d.zoo", spec, base=tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no weights")
    with pytest.raises(InputError, match="holds no safetensors tensors"):
        zoo.compress(fine_tuned, tmp_path / "d.zoo", SPEC, base=tmp_path / "empty")
    done = zoo_cli("compress", fine_tuned, "-p", SPEC, "--base", fine_tuned)
    assert done.returncode == 1 and "give -o" in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]


def test_the_student_is_base_plus_delta(tuned):
    import torch

    from zoo.container.writer import Builder
    from zoo.optimize.teacher import Teacher, default_text
    from zoo.sources.folder import scan

    base, fine_tuned = tuned
    sources = scan(fine_tuned)
    with BaseModel(base) as base_model:
        deltas = Deltas(base_model, Pipeline.parse(SPEC), Builder.named_tensors(sources))
        plain = Teacher(fine_tuned, default_text().lower(), sequence_length=32, max_sequences=4)
        student = Teacher(fine_tuned, default_text().lower(), sequence_length=32, max_sequences=4, base=deltas)
        stored = dict(Builder.tensors(sources, deltas))
        base_weights = weights(base)
        zero = {student.parameter(k): torch.zeros(stored[k].shape) for k in deltas.names}
        as_base = {student.parameter(k): torch.from_numpy(base_weights[k]) for k in deltas.names}
        exact = {student.parameter(k): torch.from_numpy(stored[k].data) for k in deltas.names}
        assert student.mean_distortion(zero) == pytest.approx(plain.mean_distortion(as_base), rel=1e-5)
        assert student.mean_distortion(zero) > 1e-3
        assert student.mean_distortion(exact) < 1e-6  # float32 rounding of (tuned - base) + base


def _kl_to(fine_tuned, state):
    """Mean KL(fine-tune || candidate) of the class distributions on random inputs."""
    import torch
    import transformers

    reference = transformers.AutoModelForSequenceClassification.from_pretrained(fine_tuned).eval()
    candidate = transformers.AutoModelForSequenceClassification.from_pretrained(fine_tuned).eval()
    candidate.load_state_dict(state, strict=False)
    ids = torch.randint(1, reference.config.vocab_size, (256, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        p, q = (torch.log_softmax(m(input_ids=ids).logits.double(), -1) for m in (reference, candidate))
    return float((p.exp() * (p - q)).sum(-1).mean())


@pytest.mark.slow
def test_distillation_against_the_base_through_the_cli(tuned, tmp_path):
    import torch

    base, fine_tuned = tuned
    text = tmp_path / "calibration.txt"
    text.write_text((" ".join(f"{w} {w[::-1]}," for w in CHARACTERS * 40) + "\n") * 4)
    kl = {}
    for steps in (0, 60):
        archive = tmp_path / f"steps{steps}.zoo"
        done = zoo_cli("compress", fine_tuned, "-o", archive, "-p", f"pranc:k=300,steps={steps}", "--base", base, "--calib", text, "--json",
                       env={"OMP_NUM_THREADS": "1"})
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["base"]["hint"] == str(base)
        kl[steps] = _kl_to(fine_tuned, zoo.load_state_dict(archive, base=base))
    kl["base alone"] = _kl_to(fine_tuned, {k: torch.from_numpy(v) for k, v in weights(base).items()})
    assert kl[60] < 0.6 * kl[0] and kl[0] < kl["base alone"]


def test_digest_is_the_sha256_of_the_stored_bytes(tuned):
    base, _ = tuned
    with BaseModel(base) as base_model:
        array = base_model.read("classifier.weight", "F32", (3, 16))
    assert math.prod(array.shape) == 48
    assert hashlib.sha256(weights(base)["classifier.weight"].tobytes()).hexdigest() == digest(array)


def _rewrite(source, destination, edit, version=2):
    from zoo.container.format import MAGIC, PREAMBLE, crc32

    data = source.read_bytes()
    length = int.from_bytes(data[16:24], "little")
    header = json.loads(data[24:24 + length])
    edit(header)
    body = json.dumps(header).encode()
    destination.write_bytes(PREAMBLE.pack(MAGIC, version, crc32(body), len(body)) + body + data[24 + length:])
    return destination


@pytest.mark.parametrize("edit, message", [
    (lambda h: h.update(base=5), "malformed base record"),
    (lambda h: h["tensors"]["classifier.weight"]["base"].update(sha256="beef"), "malformed base entry"),
    (lambda h: h["tensors"]["classifier.weight"].update(dtype="I32"), "cannot be stored against a base"),
])
def test_a_tampered_base_record_is_refused(delta_archive, tmp_path, edit, message):
    archive, _ = delta_archive
    with pytest.raises(FormatError, match=message):
        zoo.open(_rewrite(archive, tmp_path / "bad.zoo", edit))
    # A tensor that claims a base in an archive that names none (so version 1): refused, not read as is.
    with pytest.raises(FormatError, match="names none"):
        zoo.open(_rewrite(archive, tmp_path / "bad.zoo", lambda h: h.pop("base"), version=1))


@pytest.mark.parametrize("spec", ["codebook:bits=2", "l2:target_ratio=1.05"])
def test_other_lossy_pipelines_code_the_difference_too(tuned, tmp_path, spec):
    base, fine_tuned = tuned
    zoo.compress(fine_tuned, tmp_path / "delta.zoo", spec, base=base)
    zoo.compress(fine_tuned, tmp_path / "plain.zoo", spec)
    expected = weights(fine_tuned)
    with zoo.open(tmp_path / "delta.zoo", base=base) as against_base, zoo.open(tmp_path / "plain.zoo") as alone:
        names = against_base.base_tensors()
        assert names and set(names) <= set(expected)
        error = {which: sum(float(np.sum((opened.get_tensor(n) - expected[n]) ** 2)) for n in names)
                 for which, opened in (("base", against_base), ("alone", alone))}
    # The same bits spent on a small difference leave a smaller error than spent on the weights.
    assert error["base"] < 0.5 * error["alone"]


def test_the_base_may_be_a_model_in_the_zoo(tuned, delta_archive, tmp_path, monkeypatch):
    from zoo.hub.store import Store

    base, _ = tuned
    archive, _ = delta_archive
    monkeypatch.setenv("ZOO_HOME", str(tmp_path / "zoo"))
    compress_into(Store(), base, "tiny-base")
    expected = zoo.load_state_dict(archive, base=base)
    got = zoo.load_state_dict(archive, base="tiny-base")
    assert all(np.array_equal(got[name].numpy(), expected[name].numpy()) for name in expected)
