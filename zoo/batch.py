"""Many models compressed side by side as Ray tasks (`zoo compress A B C --ray`), or one after another
here when no Ray is asked for. docs/scale-out.md has the design; in short:

- a worker runs the same library call as a local `zoo compress` (zoo.api.compress, or
  zoo.api.build_model, compress_into before it publishes), so its result is a local run's bytes;
- a worker writes bytes and returns only a small `Landed` record: for `-o DIR|URL` its archive is
  put there by the worker (zoo.hub.remote); into a zoo the worker codes the model's objects and its
  shell, reusing what the zoo holds, and leaves them in the driver's work folder of a folder zoo or
  puts them in a bucket zoo; the driver publishes the manifest (Store.add_composed, Store.add_put),
  so manifests are written by one process;
- each task of a batch into a zoo sees the zoo as it was when the batch began (its objects, its
  XOR bases), so the order tasks land in changes nothing;
- a model larger than TASK_BYTES going into a zoo is split: tasks of whole tensors of about
  TASK_BYTES each code their share of its objects, then one task builds the model, which finds every
  large object coded already, as a local build finds those the zoo holds; the bytes stay the same;
- a worker that dies is retried (Ray's max_retries), as is an OSError (a network or disk hiccup); a
  model that fails for a reason of its own (a bad file) is reported, and the others go on.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, nullcontext, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from zoo import api
from zoo.container.format import ArchiveFile, current_umask, object_path, sha256_file
from zoo.container.objects import ObjectSink
from zoo.errors import InputError, OutputExistsError, ZooError
from zoo.hub import temporaries
from zoo.hub.manifest import OBJECT_SUFFIX, Entry
from zoo.hub.remote import LocalFolder, StorageError, fetch, is_url, open_storage
from zoo.hub.store import DEFAULT_REVISION, Store, check_name, variant_of
from zoo.signals import signals_held, written
from zoo.sources.folder import check_globs

DEFAULT_ADDRESS = "default"  # --ray without an address: RAY_ADDRESS, else a Ray started here
# A model going into a zoo whose objects are larger than this in all is coded by several tasks, each of
# whole tensors (or runs of file bytes) of about this much: a 5 GB shard becomes some 20 tasks.
TASK_BYTES = 256 << 20
CANCEL_SECONDS = 10  # how long an interrupted batch waits for the tasks it cancelled to end
RETRIES = 2  # a task is run at most 1 + RETRIES times when its worker dies or it meets an OSError
# What a worker must see as the driver does: the kernels (the CI's numpy run), the test hooks, and
# the hub to pull from (credentials are not passed on: HF_TOKEN belongs in the nodes' environment).
FORWARDED = ("ZOO_KERNELS", "ZOO_KILL_AT", "ZOO_DEBUG", "ZOO_INDEX_HOME", "HF_ENDPOINT", "HF_HOME", "HF_HUB_CACHE", "HF_HUB_OFFLINE",
             "HF_HUB_DISABLE_TELEMETRY")


@dataclass
class Landed:
    """What a worker hands back: where its result is and what it cost, never the bytes themselves."""

    source: str
    name: str  # the archive's file name (-o) or the model's name in the zoo
    output: str | None = None  # the archive's key or path; for a zoo, the entry's ref once published
    original_bytes: int = 0
    stored_bytes: int = 0
    sha256: str | None = None  # of the archive
    seconds: dict[str, float] = field(default_factory=dict)  # fetch, compress, hash, put on the worker; publish on the driver
    node: str | None = None  # the worker's node
    error: str | None = None
    commit: str | None = None  # a pull's upstream commit
    part: bool = False  # a pull that took only some of its commit's files: stored under a commit of its own (Download.stored_commit)
    unchanged: bool = False  # a pull that found this commit, with the files chosen, already in the zoo: nothing written
    opaque: list[str] = field(default_factory=list)  # files of a tensor format kept as bytes: "PATH (why)", as compress says them
    tasks: int = 1  # the tasks that coded it (a model split by TASK_BYTES: its parts and its build)
    # into a zoo, what the worker leaves for the driver to publish: the objects folder it coded into,
    # the objects it coded there and those it took from the zoo or from other tasks, with their sizes,
    # and (a folder zoo) those it coded again in place of ones the zoo holds damaged
    objects_root: str | None = None
    written: dict[str, int] = field(default_factory=dict)
    reused: dict[str, int] = field(default_factory=dict)
    repairs: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        record = asdict(self)
        for internal in ("objects_root", "written", "reused", "repairs"):
            del record[internal]
        return {**record, "ok": self.ok}


# -- connecting ------------------------------------------------------------------------------------


def connect(address: str | None = DEFAULT_ADDRESS, num_cpus: int | None = None) -> str:
    """Join the Ray cluster at `address` (DEFAULT_ADDRESS or None: RAY_ADDRESS), else start a
    local Ray with `num_cpus` (default: every core). A Ray another user started with `ray start`
    on this machine is never joined unasked (ray.init() alone would). Returns the GCS address."""
    try:
        import ray
    except ModuleNotFoundError:
        raise InputError("--ray needs Ray, which is not installed: pip install 'zoo[cloud]'") from None
    if address == "":  # an unset variable: it started a Ray of its own here
        raise InputError("--ray is empty: give HOST:PORT, or --ray alone for RAY_ADDRESS or a Ray of its own")
    if ray.is_initialized():
        return ray.get_runtime_context().gcs_address
    wanted = os.environ.get("RAY_ADDRESS") if address in (None, DEFAULT_ADDRESS) else address
    options: dict[str, Any] = {"logging_level": "ERROR", "log_to_driver": False}
    if wanted:
        _probe(wanted)
    # ray.init installs handlers of its own for SIGTERM (a stack dump, exit 15 or 1) and more: the
    # caller's stay, so a signal stops a batch as it stops any command (zoo.cli.stopping)
    watched = [signal.SIGINT, signal.SIGTERM, signal.SIGHUP]
    kept = {number: signal.getsignal(number) for number in watched} if threading.current_thread() is threading.main_thread() else {}
    try:
        if wanted:
            ray.init(address=wanted, **options)
        else:
            ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, **options)
    finally:
        for number, handler in kept.items():
            if handler is not None:
                signal.signal(number, handler)
    _cluster_messages_to_stderr()
    return ray.get_runtime_context().gcs_address


def _cluster_messages_to_stderr() -> None:
    """Ray prints the cluster's messages to its driver (a worker died, a task will be retried) on
    stdout, whatever log_to_driver says: into a --json document, or beside a command's report. They
    are its stderr's here. Ray's module keeps the printer as a global its listening thread looks up
    on each message; where a version of Ray has none, nothing changes."""
    import ray._private.worker as worker

    printer = getattr(worker, "print_to_stdstream", None)
    if printer is None or getattr(printer, "to_stderr", False):
        return

    def to_stderr(data: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        return printer({**data, "is_err": True}, *args, **kwargs)

    to_stderr.to_stderr = True  # type: ignore[attr-defined]
    worker.print_to_stdstream = to_stderr


PROBE_SECONDS = 10.0


def _probe(address: str) -> None:
    """Refuse what is no Ray address (ray.init raised "Invalid address format", a bug's message
    here), and, in bounded time, a HOST:PORT (or ray://HOST:PORT) where nothing listens: ray.init
    waits for such a cluster without end, saying so every 30 seconds."""
    import re
    import socket

    if address in ("auto", "local"):
        return
    found = re.fullmatch(r"(?:ray://)?\[?([^\[\]/\s]+?)\]?:(\d+)", address)
    if found is None:  # Ray says "Invalid address format" (after a traceback of its own, for some)
        raise InputError(f"--ray {address}: not a Ray address: HOST:PORT, ray://HOST:PORT, auto or local")
    host, port = found[1], int(found[2])
    if not 0 < port < 65536:
        raise InputError(f"--ray {address}: {port} is no port (1 to 65535)")
    try:
        socket.create_connection((host, port), timeout=PROBE_SECONDS).close()
    except OSError as error:
        reason = "no answer" if isinstance(error, TimeoutError) else error.strerror or type(error).__name__
        raise InputError(f"--ray {address}: no Ray cluster answers there ({reason})") from None


# -- the workers' side -------------------------------------------------------------------------------


def _die_once(point: str) -> None:
    """For the retry test: die as kill -9 would, on the first attempt of each task only."""
    if os.environ.get("ZOO_KILL_AT") != point:
        return
    import ray

    marker = Path(tempfile.gettempdir()) / f"zoo-killed-{ray.get_runtime_context().get_task_id()}"
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:  # the retry: it lives
        marker.unlink(missing_ok=True)
        return
    os.kill(os.getpid(), signal.SIGKILL)


def _node() -> str | None:
    """The Ray node this task runs on (the start of its id); None outside a Ray task. Never
    imports ray (a Ray worker has it loaded): a batch run here took its second to load."""
    ray = sys.modules.get("ray")
    if ray is None:
        return None
    try:
        context = ray.get_runtime_context() if ray.is_initialized() else None
        return context.get_node_id()[:12] if context is not None and context.get_task_id() else None
    except Exception:  # noqa: BLE001 - only a label
        return None


# A batch's scratch folders (SCRATCH<pid>-<random>, zoo.hub.temporaries): the driver's, and in it or
# in a node's temporary folder its tasks', which hold the sources they fetch and an archive bound for a bucket.
SCRATCH = "zoo-batch-"


@contextmanager
def _batch_scratch() -> Iterator[str]:
    """The driver's scratch folder, in this machine's temporary folder: the tasks that run on this
    machine keep theirs inside it (_task_scratch). A task that a signal stopped is killed
    (run_tasks), its own cleanup never run; the driver waits for it to be gone, then removes its
    folder with its own, so that a stopped batch leaves no copy of a source behind."""
    parent = temporaries.sweep_scratch(Path(tempfile.gettempdir()), SCRATCH)
    with temporaries.locked_temporary(parent, SCRATCH, is_dir=True) as folder:
        try:
            yield str(folder)
        except BaseException:
            _sweep_scratch_once_gone(folder)
            raise


def _sweep_scratch_once_gone(folder: Path) -> None:
    """The tasks' folders in the driver's scratch `folder` removed, waiting up to CANCEL_SECONDS
    for the cancelled tasks' workers to be gone (a folder's lock is its task's until its process
    dies): one removed under a worker still writing could be made again by it."""
    deadline = time.monotonic() + CANCEL_SECONDS
    while time.monotonic() < deadline:
        try:
            if not any(temporaries.sweep_scratch(folder, SCRATCH).iterdir()):
                return
        except OSError:  # gone already (a cleaner of /tmp): nothing to wait for
            return
        time.sleep(0.05)


@contextmanager
def _task_scratch(driver_scratch: str | None) -> Iterator[Path]:
    """A task's scratch folder: in the driver's (`driver_scratch`, _batch_scratch), which the driver
    removes whatever happens to the task, where this machine sees it (the driver's own machine);
    else in this machine's temporary folder, where the next task of a batch removes what one killed
    there left. A node never shares the driver's temporary folder unless it is the driver's machine
    (or mounts it), so it does not look for it elsewhere."""
    if driver_scratch is not None and os.path.isdir(driver_scratch):
        parent = Path(driver_scratch)
    else:
        parent = temporaries.sweep_scratch(Path(tempfile.gettempdir()), SCRATCH)
    with temporaries.locked_temporary(parent, SCRATCH, is_dir=True) as scratch:
        yield scratch


def _for_tasks(location: str) -> str:
    """A local path as a task is given it: absolute, since a task runs in its worker's folder, which
    on a cluster that --ray joins is not the driver's (a relative SOURCE was read there, and an -o
    DIR written there); a URL as it is."""
    return location if is_url(location) else os.path.abspath(location)


def _local_source(source: str, scratch: Path, seconds: dict[str, float]) -> Path:
    if not is_url(source):
        return Path(source)
    started = time.perf_counter()
    local = fetch(source, scratch)
    seconds["fetch"] = time.perf_counter() - started
    return local


@contextmanager
def _naming(scratch: Path, output: str) -> Iterator[None]:
    """A system error about a file of the task's own under `scratch` (a full disk, a read-only
    folder) names `output` instead: the user never saw the temporary."""
    try:
        yield
    except OSError as error:
        if isinstance(error.filename, str) and Path(error.filename).absolute().is_relative_to(Path(scratch).absolute()):
            error.filename = output
        raise


def _said(error: BaseException) -> str:
    """A task's failure in one line: an OSError as the CLI says one ("No space left on device: PATH")."""
    if isinstance(error, OSError) and not isinstance(error, ZooError) and error.strerror:
        return f"{error.strerror}: {error.filename}" if error.filename else error.strerror
    return str(error)


def compress_to_storage(source: str, output: str, name: str, pipeline: str, threads: int, force: bool,
                        driver_scratch: str | None = None) -> Landed:
    """One model to the archive `name` at `output` (a folder or a URL): the task behind `-o`. A
    source given as a URL, and an archive bound for a URL, wait in a scratch folder (_task_scratch)."""
    _die_once("batch-task-once")
    seconds: dict[str, float] = {}
    storage = open_storage(output)
    with ExitStack() as stack:
        if isinstance(storage, LocalFolder):  # beside its final place: it enters by a link, not a copy
            storage.root.mkdir(parents=True, exist_ok=True)
            temporaries.sweep_beside(storage.root / name)  # what an attempt killed before this retry left
            scratch = stack.enter_context(temporaries.locked_temporary(storage.root, temporaries.temporary_prefix(storage.root / name),
                                                                       is_dir=True))
            temporaries.kill_point("batch-scratch")
        else:
            scratch = stack.enter_context(_task_scratch(driver_scratch))
        local = _local_source(source, scratch, seconds)
        archive = scratch / name
        started, cpu = time.perf_counter(), time.process_time()
        with _naming(scratch, f"{storage.url.rstrip('/')}/{name}"):
            report = api.compress(local, archive, pipeline, threads=threads)
        seconds["compress"] = time.perf_counter() - started
        seconds["compress_cpu"] = time.process_time() - cpu  # steadier than the wall clock on a shared machine
        started = time.perf_counter()
        digest = sha256_file(archive)
        seconds["hash"] = time.perf_counter() - started
        started = time.perf_counter()
        in_a_folder = isinstance(storage, LocalFolder)
        # there it enters by a rename: in place and recorded as written (zoo.signals), or neither, so
        # that a Ctrl-C right after it, before the driver hears of it, names it (a bucket's put is an
        # upload: not held)
        with signals_held() if in_a_folder else nullcontext():
            entered = storage.put(name, archive, if_absent=not force, refresh_after=None, move=True)
            if entered and in_a_folder:  # an archive of the user's, not a store object: the modes a local -o gives
                os.chmod(storage.path(name), 0o666 & ~current_umask())
                written(str(storage.path(name)))
        seconds["put"] = time.perf_counter() - started
        if not entered:
            raise OutputExistsError(f"{storage.url}/{name} appeared while it was being compressed; pass --force to replace it")
        temporaries.kill_point("batch-placed")
    return Landed(source, name, f"{storage.url.rstrip('/')}/{name}", report.original_bytes, report.compressed_bytes, digest, seconds,
                  _node(), opaque=report.opaque)


class PartSink(ObjectSink):
    """The objects numbered `first` to `last - 1` of a build (in the order the build asks for them,
    Builder.object_sizes), coded into `root`; the others are skipped before they are hashed, and one
    the zoo holds (`existing`) is left where it is: the model's build takes it from there."""

    def __init__(self, root: Path, existing: Callable[[str], Path | None], threads: int, first: int, last: int) -> None:
        super().__init__(root, existing, threads)
        self.first, self.last, self.asked = first, last, 0

    hash_ahead = False  # most of the build's tensors are another part's: hash only this part's, when asked

    def unit(self, holder: dict[str, Any], dtype: str, shape: list[int], raw: Any, lossless: bool, blob: bool = False,
             digest: Callable[[], str] | None = None) -> Any:
        number, self.asked = self.asked, self.asked + 1
        if not self.first <= number < self.last:
            return None
        return super().unit(holder, dtype, shape, raw, lossless, blob, digest)

    def _link(self, key: str) -> bool:
        return self.existing(key) is not None

    def resolve(self) -> None:  # this build's shell is thrown away: nothing to name
        pass


class ModelSink(ObjectSink):
    """The sink of a model's build in a batch: what the zoo holds is reused (as in a local build),
    and what the model's part tasks coded is taken in as coded by this build, so that XORs against a
    base treat it as a local run treats what it codes: from their objects folders `parts` (a zoo in
    a folder), or, for the names in `coded`, by `fetch` from the zoo's storage, where the parts put
    them."""

    def __init__(self, root: Path, existing: Callable[[str], Path | None], threads: int, parts: list[Path],
                 coded: set[str] | frozenset[str] = frozenset(), fetch: Callable[[str], Path | None] = lambda key: None) -> None:
        super().__init__(root, existing, threads)
        self.parts, self.coded, self.fetch = parts, coded, fetch

    def _link(self, key: str) -> bool:
        found = next((path for path in (object_path(part, key) for part in self.parts) if path.is_file()), None)
        if found is None and key in self.coded:
            found = self.fetch(key)
        if found is None:
            return super()._link(key)
        target = object_path(self.root, key)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(found, target)
        except OSError:
            shutil.copyfile(found, target)
        self.written[key] = target.stat().st_size
        return True


def _as_it_was(store: Store, bases: list[str], work: str) -> Callable[[str], Path | None]:
    """The zoo's objects as a task of a batch sees them: those the models it held when the batch
    began (`bases`) name. What other tasks put or published meanwhile is coded again (the same
    bytes, so the zoo keeps one), so that the order tasks land in changes nothing. Read once per
    process and batch (`work`, the driver's work folder, names the batch): each read parses every
    manifest, and a batch of N models read them N times."""
    batch = (work, tuple(sorted(bases)))
    with _VISIBLE_LOCK:
        if batch not in _VISIBLE:
            _VISIBLE.clear()  # the last batch's: a worker serves one batch after another
            _VISIBLE[batch] = store.objects_of(set(bases))
        visible = _VISIBLE[batch]
    return lambda key: store.existing_object(key) if key in visible else None


_VISIBLE: dict[tuple[str, tuple[str, ...]], set[str]] = {}
_VISIBLE_LOCK = threading.Lock()


@contextmanager
def _task_folder(store: Store, work: str, kind: str) -> Iterator[Path]:
    """Where a task codes: a folder of the driver's work folder `work` for a zoo in a folder (the
    driver moves its objects in), or, on a bucket, a work folder of this node's own (the task puts
    its objects in the bucket itself, and the folder goes when the task ends)."""
    if store.storage is None:
        folder = Path(work) / f"{kind}-{uuid.uuid4().hex[:12]}"
        folder.mkdir()
        yield folder
    else:
        with store.workspace() as folder:
            yield folder


def _download(store: Store, name: str, folder: Path) -> Path:
    """A bucket zoo's object downloaded into a task's folder (not this node's cache of the zoo, which
    would keep a whole split model's objects)."""
    folder.mkdir(exist_ok=True)
    path = folder / f"{name}{OBJECT_SUFFIX}"
    store.storage.download(store.object_key(name), path)
    return path


def _put(store: Store, paths: dict[str, Path], seconds: dict[str, float]) -> None:
    """A bucket zoo's objects put by the part task that made them (each if absent; an old one found
    there has its age renewed, as the driver's publish would), several at once. One found there
    coded otherwise stays the bucket's, and is the one the model's build takes (ModelSink.fetch)."""
    from zoo.kernels.parallel import for_each

    started = time.perf_counter()
    for_each(lambda item: store.storage.put(store.object_key(item[0]), item[1]), list(paths.items()), 4)
    seconds["put"] = time.perf_counter() - started


def code_part(source: str, home: str, work: str, pipeline: str, threads: int, first: int, last: int, bases: list[str]) -> Landed:
    """Objects `first` to `last - 1` of one model, coded into a folder of the driver's work folder
    `work` of the zoo at `home`: a part of a model split by TASK_BYTES."""
    from zoo.codecs.pipeline import CHUNK_BYTES, Pipeline
    from zoo.container.writer import Builder
    from zoo.kernels.parallel import resolve_threads
    from zoo.sources.folder import scan

    _die_once("batch-task-once")
    seconds: dict[str, float] = {}
    store = Store(home)
    with _task_folder(store, work, "part") as folder:
        sink = PartSink(folder / "objects" / "sha256", _as_it_was(store, bases, work), threads, first, last)
        started, cpu = time.perf_counter(), time.process_time()
        with tempfile.TemporaryFile(dir=folder) as payload:  # the small runs, which only the model's build keeps
            Builder(Pipeline.parse(pipeline), CHUNK_BYTES, None, objects=sink).build(scan(source), payload, resolve_threads(threads), None,
                                                                                      hash_files=False)
        seconds["compress"] = time.perf_counter() - started
        seconds["compress_cpu"] = time.process_time() - cpu
        if store.storage is not None:
            _put(store, {key: object_path(sink.root, key) for key in sink.written}, seconds)
    return Landed(source, f"objects {first}-{last - 1}", seconds=seconds, node=_node(),
                  objects_root=str(sink.root) if store.storage is None else None, written=sink.written)


def compress_to_work(source: str, home: str, work: str, name: str, revision: str, pipeline: str, threads: int, source_label: str,
                     parts: list[str], coded: list[str], bases: list[str], replacing: str | None, delta: bool = True,
                     driver_scratch: str | None = None) -> Landed:
    """One model's objects and shell coded by the call a local `zoo compress SRC --name NAME` makes
    (zoo.api.build_model) for the zoo at `home`: what the zoo holds is reused, and so is what the
    model's part tasks coded (`parts`, their objects folders, or `coded`, the names they put in a
    bucket). Its XOR base is looked for among `bases` (refs) only, unless not `delta`. Into a folder zoo, the result
    waits in the driver's work folder `work`; on a bucket, the task puts it there. The driver
    then publishes the manifest. A source given as a URL is fetched into a scratch folder (_task_scratch)."""
    from zoo.codecs.pipeline import Pipeline
    from zoo.kernels.parallel import resolve_threads

    _die_once("batch-task-once")
    seconds: dict[str, float] = {}
    store = Store(home)
    with _task_folder(store, work, "model") as folder, _task_scratch(driver_scratch) as scratch:
        sink = ModelSink(folder / "objects" / "sha256", _as_it_was(store, bases, work), resolve_threads(threads), [Path(part) for part in parts],
                         set(coded), lambda key: _download(store, key, folder / "parts"))
        local = _local_source(source, scratch, seconds)
        started, cpu = time.perf_counter(), time.process_time()
        with _naming(folder, f"the zoo at {store.location}"):
            shell = api.build_model(store, sink, local, name, revision, Pipeline.parse(pipeline), source_label=source_label,
                                    threads=threads, bases_among=set(bases), replacing=replacing, delta=delta)
        seconds["compress"] = time.perf_counter() - started
        seconds["compress_cpu"] = time.process_time() - cpu
        return _landed(store, Landed(source, name, seconds=seconds, node=_node()), sink, shell)


def _landed(store: Store, landed: Landed, sink: ObjectSink, shell: Path) -> Landed:
    """`landed` with what a model's task leaves the driver: into a folder zoo, the shell and the
    objects folder; on a bucket, the shell's name once it and the objects are put there."""
    landed.written, landed.reused = sink.written, sink.reused
    held = ArchiveFile(shell)
    try:
        landed.opaque = api.opaque_files(held.header.get("files") or [])
    finally:
        held.close()
    if store.storage is None:
        landed.output, landed.objects_root, landed.repairs = str(shell), str(sink.root), sorted(sink.repairs)
        return landed
    started = time.perf_counter()
    shell_name = sha256_file(shell)
    landed.seconds["hash"] = time.perf_counter() - started
    started = time.perf_counter()
    # As a single model's publish puts them (Store.put_model), here, where the build fetched and
    # checked the objects it coded again in place of damaged ones: each of those goes over the
    # damaged one, and an object found in the bucket coded otherwise (another machine stored the
    # tensor meanwhile, with another pipeline) is named by a new shell as the bucket codes it. The
    # shell goes last: one found in the bucket names objects that are there. The record holds only
    # what that reads and rewrites.
    record: dict[str, Any] = {"name": landed.name, "objects": [{"role": "archive", "sha256": shell_name}]}
    moves = store.put_model(record, {**{key: object_path(sink.root, key) for key in sink.names()}, shell_name: shell}, sink.repairs)
    landed.output = next(item["sha256"] for item in record["objects"] if item["role"] == "archive")
    for item in record["objects"]:  # the bucket's, at its size: this task's coding of it went nowhere
        if item["role"] == "object" and item["sha256"] not in moves:
            landed.written.pop(item["sha256"], None)
            landed.reused[item["sha256"]] = item["size"]
    landed.seconds["put"] = time.perf_counter() - started
    return landed


def publish(store: Store, landed: Landed, name: str, revision: str, *, commit: str | None = None, source: str | None = None,
            force: bool = False) -> None:
    """The driver's step after a worker's compress_to_work or pull_to_work: the model's objects enter
    a folder zoo from the work folder (Store.add_composed), or, on a bucket, where the worker put
    them, its manifest is published (Store.add_put); `landed` takes the entry's ref and sizes, or
    the error."""
    started = time.perf_counter()
    try:
        if landed.objects_root is None:  # a bucket: the worker put them
            entry = store.add_put(landed.output or "", {**landed.reused, **landed.written}, name, revision, commit=commit, source=source,
                                  force=force)
        else:
            sink = ObjectSink(Path(landed.objects_root))
            sink.written, sink.reused, sink.repairs = landed.written, landed.reused, set(landed.repairs)
            entry = store.add_composed(Path(landed.output or ""), sink, name, revision, commit=commit, source=source, force=force)
        landed.output, landed.original_bytes, landed.stored_bytes = entry.ref, entry.original_bytes, entry.stored_bytes
        landed.sha256 = entry.archive.name.removesuffix(OBJECT_SUFFIX)
        api.warn_of_other_weights(store, entry)
    except ZooError as error:
        landed.error = str(error)
    landed.seconds["publish"] = time.perf_counter() - started


def split(sizes: list[int], task_bytes: int) -> list[tuple[int, int]]:
    """Consecutive runs (first, last + 1) of the objects of `sizes`, each of about `task_bytes` or
    of one object larger than that; one run when they all fit in one task."""
    runs, first, total = [], 0, 0
    for number, size in enumerate(sizes):
        total += size
        if total >= task_bytes:
            runs.append((first, number + 1))
            first, total = number + 1, 0
    if first < len(sizes) or not runs:
        runs.append((first, len(sizes)))
    return runs


# -- the driver's side -------------------------------------------------------------------------------


def archive_name(source: str) -> str:
    """The archive a source gets under `-o DIR`: its folder's or file's name, .zoo (a local path's
    as it resolves: `.` and `..` name the folders they are)."""
    stem = source.rstrip("/").rsplit("/", 1)[-1] if is_url(source) else Path(os.path.abspath(source)).name
    for suffix in (".safetensors", ".bin", ".pt", ".pth"):
        if stem.lower().endswith(suffix):
            stem = stem[:-len(suffix)]
    return f"{stem or 'model'}{OBJECT_SUFFIX}"


def zoo_name(source: str) -> str:
    """The name a source gets in the zoo: as `zoo compress SRC` chooses it (zoo.refs.model_name; a
    URL's last part, less a file's .safetensors, as a local file's own name is)."""
    if is_url(source):
        last = source.rstrip("/").rsplit("/", 1)[-1]
        return last.removesuffix(".safetensors") or last
    from zoo.refs import model_name

    return model_name(source)[0]


def _duplicates(names: list[str]) -> list[str]:
    return sorted({name for name in names if names.count(name) > 1})


def compress_many(sources: list[str], output: str | os.PathLike[str] | None = None, *, store: Store | None = None,
                  names: list[str] | None = None, revision: str = DEFAULT_REVISION, pipeline: str = "lossless",
                  ray: str | None = DEFAULT_ADDRESS, threads: int | None = None, retries: int = RETRIES, force: bool = False,
                  task_bytes: int = TASK_BYTES, on_landed: Callable[[Landed], None] | None = None, delta: bool = True) -> list[Landed]:
    """Compress each source (a local path or a URL) to its own archive under `output` (a folder or
    a URL), or, without `output`, into `store` (default: the zoo at ZOO_HOME) under `names` (default:
    as `zoo compress` names them). With `ray` (an address, or DEFAULT_ADDRESS) each model is a Ray
    task of `threads` CPUs (into a zoo, a model larger than `task_bytes` is several tasks); with
    ray=None they run here, one after another, on `threads` threads each (None: threads_per_model).
    `on_landed` sees each model as it lands, failures included. `delta=False`: into a zoo, no
    tensor stored as an XOR against a base. Returns one Landed per source, in their order."""
    if not sources:
        raise InputError("no model to compress")
    threads = threads_per_model(threads, ray)
    for source in sources:
        if not is_url(source) and not Path(source).exists():
            from zoo.refs import looks_like_path

            hub = "" if looks_like_path(source) else " (a hub id? `zoo pull` takes several, and `zoo compress` one at a time)"
            raise InputError(f"{source}: no such file or folder{hub}")
    from zoo.codecs.pipeline import Pipeline

    Pipeline.parse(pipeline)  # a bad SPEC said once, before any folder is made, not by every task
    into_zoo = output is None
    if into_zoo:
        store = store or Store()
        names = names or [zoo_name(source) for source in sources]
        for name in names:
            check_name(name)
    else:
        names = names or [archive_name(source) for source in sources]
        storage = open_storage(output)
        if isinstance(storage, LocalFolder):  # a path or a file:// URL: refused here, before any task, not by each as it lands
            api.refuse_inside_the_zoo(storage.root)
            _refuse_output_inside_a_source(storage.root, sources)
    if len(names) != len(sources):
        raise InputError(f"{len(sources)} sources but {len(names)} names")
    if _duplicates(names):  # --name and -o FILE.zoo name one model only
        how = "with --name NAME" if into_zoo else "with -o DIR/NAME.zoo"
        raise InputError(f"two sources would be stored as {', '.join(_duplicates(names))}: compress them one at a time, each {how}")
    _refuse_existing(names, output, store, revision, pipeline, force)

    labels = [source if is_url(source) else str(Path(source).resolve()) for source in sources]  # a manifest's `source`
    if into_zoo:
        return _compress_into_zoo(sources, store, names, labels, revision, pipeline, ray, threads, retries, force, task_bytes, on_landed,
                                  delta)

    def land(index: int, landed: Landed) -> Landed:
        landed.source = sources[index]  # as the user gave them, where the task had them absolute
        if landed.ok and isinstance(storage, LocalFolder):
            landed.output = f"{storage.url.rstrip('/')}/{landed.name}"
        if on_landed is not None:
            on_landed(landed)
        temporaries.kill_point("batch-landed")
        return landed

    made = _folders_to_make(storage.root) if isinstance(storage, LocalFolder) else []
    # what each output is before the batch: one that a task put in place unheard of, before a signal
    # stopped the batch, is recorded as written (zoo.signals), and the line the stop prints names it
    before = {name: _identity(storage.path(name)) for name in names} if isinstance(storage, LocalFolder) else {}
    try:
        with _batch_scratch() as scratch:
            target = os.path.abspath(storage.root) if isinstance(storage, LocalFolder) else str(output)
            tasks = [(compress_to_storage, (_for_tasks(source), target, name, pipeline, threads, force, scratch))
                     for source, name in zip(sources, names)]
            results = _run(ray, tasks, [f"zoo compress {name}" for name in names],
                           lambda index, error: Landed(sources[index], names[index], error=error), land, threads, retries)
        if isinstance(storage, LocalFolder):  # a task whose worker died every time left its last attempt's temporary
            _sweep_once_gone(storage.root, [result.name for result in results if not result.ok])
        return results
    except BaseException:
        # a Ctrl-C kills the tasks still running (run_tasks): what they were writing goes with them.
        # A Ray task records what it put in place in its own process, and one killed in flight may
        # have put its archive there before it died, unheard of: the archive is whole, and stays.
        if isinstance(storage, LocalFolder):
            _sweep_once_gone(storage.root, names)
            for name in names:
                if _identity(storage.path(name)) not in (None, before[name]):
                    written(str(storage.path(name)))
        raise
    finally:
        # the folders the tasks made for -o, where no archive landed (every model failed, or a
        # Ctrl-C came first), go: a command that wrote nothing leaves nothing, as one model's does
        for folder in made:
            with suppress(OSError):  # one that holds anything stays
                folder.rmdir()


def _identity(path: Path) -> tuple[int, int, int] | None:
    """The file at `path` (its device, inode and time), or None where there is none."""
    try:
        found = path.lstat()
    except OSError:
        return None
    return found.st_dev, found.st_ino, found.st_mtime_ns


def _sweep_once_gone(root: Path, names: list[str]) -> None:
    """Sweep the temporaries tasks left beside the outputs `names` in `root`, waiting up to
    CANCEL_SECONDS for their workers to be gone: a temporary's lock is its writer's until the
    process dies, and a dead or cancelled task's worker can outlive the driver's news of it (its
    temporary was left behind, and so was the -o folder the batch had made for it)."""
    if not root.is_dir():  # a Ctrl-C may come before any task made it
        return
    deadline = time.monotonic() + CANCEL_SECONDS
    for name in names:
        final = root / name
        while True:
            temporaries.sweep_beside(final)
            if not any(path.name.startswith(temporaries.temporary_prefix(final)) for path in root.iterdir()) \
                    or time.monotonic() > deadline:
                break
            time.sleep(0.05)


def _folders_to_make(folder: Path) -> list[Path]:
    """`folder` and those above it that are not there yet, deepest first."""
    missing = []
    folder = Path(os.path.abspath(folder))
    while not os.path.lexists(folder) and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    return missing


def threads_per_model(threads: int | None, ray: str | None) -> int:
    """The threads (on Ray, the CPUs) each model of a batch gets; None chooses. On Ray the models run
    side by side, a task each: 1, so that the cluster's cores go to as many models at once. Here
    they run one after another: what one model's compress gets (up to 8, one per core)."""
    from zoo.kernels.parallel import resolve_threads

    if threads is None:
        return 1 if ray is not None else resolve_threads(None)
    return threads


def _refuse_output_inside_a_source(output: Path, sources: list[str]) -> None:
    """A batch's archives, and their temporaries, land in `output` while the tasks read their
    folders: one inside a SOURCE folder would become a file of that model, or not, as the tasks
    happen to run."""
    where = os.path.realpath(output)
    for source in sources:
        if not is_url(source) and Path(source).is_dir():
            folder = os.path.realpath(source)
            if where == folder or where.startswith(folder.rstrip(os.sep) + os.sep):
                raise InputError(f"{output}: {'is' if where == folder else 'lies inside'} the model folder {source}, where its "
                                 "archives would be read as the model's files; write them elsewhere")


def _compress_into_zoo(sources: list[str], store: Store, names: list[str], labels: list[str], revision: str, pipeline: str,
                       ray: str | None, threads: int, retries: int, force: bool, task_bytes: int,
                       on_landed: Callable[[Landed], None] | None, delta: bool = True) -> list[Landed]:
    """compress_many into a zoo: first the parts of the models larger than `task_bytes` (on Ray
    only: here they would only add work) beside the models that fit in one task, then the builds
    of the split models; the driver publishes each model as it lands."""
    from zoo.codecs.pipeline import Pipeline
    from zoo.container.writer import Builder
    from zoo.sources.folder import scan

    chosen = Pipeline.parse(pipeline)
    variant = variant_of(chosen.spec())
    # a model's XOR base is one the zoo held before the batch and that the batch does not replace
    # (--force): the same whatever order the tasks run and land in
    replaced = {f"{name}@{revision}:{variant}" for name in names}
    bases = sorted(entry.ref for entry in store.entries() if entry.ref not in replaced)
    home = store.location
    runs: list[list[tuple[int, int]]] = []
    for source, label in zip(sources, labels):
        # lossy objects are named by their coded bytes, which a later build could not find again
        splittable = ray is not None and not is_url(source) and not chosen.array_stages
        try:
            if splittable:
                scanned = scan(source)
                api.refuse_unstorable_names(scanned, label)  # before its part tasks code and put anything
            runs.append(split(Builder.object_sizes(scanned), task_bytes) if splittable else [(0, 0)])
        except ZooError:  # its task meets the same error and reports it; the other models go on
            runs.append([(0, 0)])
    with store.workspace() as folder, _batch_scratch() as scratch:
        work = str(folder)

        def build(index: int, parts: list[Landed]) -> tuple[Callable[..., Landed], tuple[Any, ...]]:
            folders = [part.objects_root for part in parts if part.objects_root is not None]
            coded = sorted({key for part in parts if part.objects_root is None for key in part.written})
            return compress_to_work, (_for_tasks(sources[index]), home, work, names[index], revision, pipeline, threads, labels[index],
                                      folders, coded, bases, f"{names[index]}@{revision}:{variant}" if force else None, delta, scratch)

        results: dict[int, Landed] = {}

        def land(index: int, landed: Landed) -> Landed:
            landed.source = sources[index]  # as the user gave it, where the task had it absolute
            if landed.ok:
                publish(store, landed, names[index], revision, source=labels[index], force=force)
            landed.tasks = len(runs[index]) + (len(runs[index]) > 1)
            for part in parts.get(index, []):  # a split model's parts, summed: "parts compress" is their coding
                for step, seconds in part.seconds.items():
                    landed.seconds[f"parts {step}"] = landed.seconds.get(f"parts {step}", 0.0) + seconds
            results[index] = landed
            if on_landed is not None:
                on_landed(landed)
            return landed

        def failed(index: int, error: str) -> Landed:
            return Landed(sources[index], names[index], error=error)

        whole = [index for index in range(len(sources)) if len(runs[index]) == 1]
        pieces = [(index, first, last) for index in range(len(sources)) if len(runs[index]) > 1 for first, last in runs[index]]
        parts: dict[int, list[Landed]] = {}

        def land_piece(number: int, landed: Landed) -> Landed:
            if number < len(pieces):
                parts.setdefault(pieces[number][0], []).append(landed)
                return landed
            return land(whole[number - len(pieces)], landed)

        tasks = [(code_part, (_for_tasks(sources[index]), home, work, pipeline, threads, first, last, bases))
                 for index, first, last in pieces]
        tasks += [build(index, []) for index in whole]
        labels_of_tasks = [f"zoo compress {names[index]} objects {first}-{last - 1}" for index, first, last in pieces]
        labels_of_tasks += [f"zoo compress {names[index]}" for index in whole]
        _run(ray, tasks, labels_of_tasks, lambda number, error: failed(pieces[number][0] if number < len(pieces) else whole[number - len(pieces)],
                                                                       error), land_piece, threads, retries)
        split_models = sorted(parts)
        ready = []
        for index in split_models:
            broken = [landed.error for landed in parts[index] if not landed.ok]
            if broken:
                land(index, failed(index, broken[0]))
            else:
                ready.append(index)
        if ready:
            _run(ray, [build(index, parts[index]) for index in ready],
                 [f"zoo compress {names[index]}" for index in ready], lambda number, error: failed(ready[number], error),
                 lambda number, landed: land(ready[number], landed), threads, retries)
        return [results[index] for index in range(len(sources))]


def _run(ray: str | None, tasks: list[tuple[Callable[..., Any], tuple]], labels: list[str], failed: Callable[[int, str], Any],
         land: Callable[[int, Any], Any], threads: int, retries: int) -> list[Any]:
    """run_tasks on Ray, or, with ray=None, each task here in turn: a ZooError or OSError fails
    that task only, as a task's own exception does on Ray."""
    if ray is not None:
        return run_tasks(ray, tasks, labels, failed, land, threads, retries)
    results = []
    for index, (function, arguments) in enumerate(tasks):
        try:
            result = function(*arguments)
        except (ZooError, OSError) as error:
            result = failed(index, _said(error))
        results.append(land(index, result))
    return results


def _refuse_existing(names: list[str], output: str | os.PathLike[str] | None, store: Store | None, revision: str, pipeline: str,
                     force: bool) -> None:
    """Every output that is there already, refused before any work starts (unless force); in a
    folder, one that is no file is refused even with force, as a local `zoo compress -o` refuses it."""
    storage = None if output is None else open_storage(output)
    if isinstance(storage, LocalFolder):
        folder = storage.root
        if folder.exists() and not folder.is_dir():
            raise InputError(f"{output}: not a folder; with several models -o names the folder their archives go to")
        for name in names:
            problem = temporaries.in_the_way(folder / name, is_dir=False)
            if problem is not None:
                raise OutputExistsError(f"{folder / name} {problem}; zoo does not remove it, even with --force: choose another output")
    if force:
        return
    if output is None:
        from zoo.codecs.pipeline import Pipeline

        variant = variant_of(Pipeline.parse(pipeline).spec())
        there = [f"{name}@{revision}:{variant}" for name in names if store.exists_ref(name, revision, variant) is not None]
        where = "in the zoo"
    else:
        # a link there (one to nothing among them) is there: put() would not replace it, after the work
        there = [name for name in names if storage.stat(name) is not None
                 or (isinstance(storage, LocalFolder) and os.path.lexists(storage.root / name))]
        where = f"in {output}"
    if there:
        raise OutputExistsError(f"{', '.join(there)} {'is' if len(there) == 1 else 'are'} already {where}; pass --force to replace "
                                f"{'it' if len(there) == 1 else 'them'}")


def run_tasks(address: str, tasks: list[tuple[Callable[..., Any], tuple]], labels: list[str], failed: Callable[[int, str], Any],
              land: Callable[[int, Any], Any], threads: int, retries: int) -> list[Any]:
    """Each (function, arguments) as a Ray task of `threads` CPUs, retried `retries` times when its
    worker dies or it raises an OSError; `land(index, result)` sees each as it finishes, and a task
    that fails for good becomes `failed(index, message)`. Returns the results in the tasks' order."""
    import ray

    connect(address)
    forwarded = {name: os.environ[name] for name in FORWARDED if name in os.environ}
    # SPREAD: tasks go to every node rather than filling the first, so that reading and writing spread too
    # a task asking for more CPUs than any node has would wait forever, without a word: it asks for
    # the largest node's (an autoscaling cluster whose nodes hold no CPU yet is asked for `threads`)
    largest = max((node["Resources"].get("CPU", 0) for node in ray.nodes() if node.get("Alive")), default=0)
    cpus = min(threads, largest) if largest >= 1 else threads
    options: dict[str, Any] = {"num_cpus": cpus, "max_retries": retries, "retry_exceptions": [OSError, StorageError],
                               "scheduling_strategy": "SPREAD"}
    if forwarded:
        options["runtime_env"] = {"env_vars": forwarded}
    remotes: dict[Callable[..., Any], Any] = {}
    pending: dict[Any, int] = {}
    for index, (function, arguments) in enumerate(tasks):
        remote = remotes.setdefault(function, ray.remote(function))
        pending[remote.options(name=labels[index], **options).remote(*arguments)] = index
    results: dict[int, Any] = {}
    try:
        while pending:
            [done], _ = ray.wait(list(pending), num_returns=1)
            index = pending.pop(done)
            try:
                result = ray.get(done)
            except ray.exceptions.RayTaskError as error:  # the task raised: its own exception's words
                cause = error.cause if getattr(error, "cause", None) is not None else error
                result = failed(index, _said(cause) if isinstance(cause, OSError) else
                                str(cause).strip().splitlines()[-1] if str(cause).strip() else type(cause).__name__)
            except ray.exceptions.RayError as error:  # its worker died every time, or the cluster lost it
                result = failed(index, f"{type(error).__name__}: {str(error).strip().splitlines()[0]}")
            results[index] = land(index, result)
    except BaseException:
        for reference in pending:
            ray.cancel(reference, force=True)
        # their workers gone, a caller can remove what they were writing
        with suppress(Exception):
            ray.wait(list(pending), num_returns=len(pending), timeout=CANCEL_SECONDS)
        raise
    return [results[index] for index in range(len(tasks))]


# -- pull: a repository per task ----------------------------------------------------------------------


def pull_to_work(ref: str, home: str, work: str, name: str, pipeline: str | None, include: list[str] | None, exclude: list[str] | None,
                 threads: int, held: Entry | None, bases: list[str]) -> Landed:
    """One repository downloaded, then coded into a folder of the driver's work folder `work` of
    the zoo at `home` as zoo.hub.pull.pull codes it (its objects, reusing what the zoo holds, and its
    shell; the XOR base looked for among `bases`); nothing is coded when the zoo's entry `held`
    is this commit with these files already (zoo.hub.pull.held_as_pulled). The driver publishes."""
    from zoo.codecs.pipeline import DEFAULT_SPEC, Pipeline
    from zoo.hub import pull as hub
    from zoo.kernels.parallel import resolve_threads

    _die_once("batch-task-once")
    seconds: dict[str, float] = {}
    repo_id, revision = hub.parse_repo_ref(ref)
    started = time.perf_counter()
    pulled = hub.download(repo_id, revision, include, exclude, progress_bars=False)
    seconds["download"] = time.perf_counter() - started
    if hub.held_as_pulled(held, f"hub:{repo_id}@{pulled.commit}", hub.chosen_files(pulled.folder, include, exclude)):
        return Landed(ref, name, seconds=seconds, node=_node(), commit=pulled.commit, unchanged=True)
    store = Store(home)
    chosen = Pipeline.parse(pipeline or DEFAULT_SPEC)
    with _task_folder(store, work, "model") as folder:
        sink = ModelSink(folder / "objects" / "sha256", _as_it_was(store, bases, work), resolve_threads(threads), [])
        started, cpu = time.perf_counter(), time.process_time()
        shell = api.build_model(store, sink, pulled.folder, name, revision, chosen, commit=pulled.stored_commit,
                                source_label=f"hub:{repo_id}@{pulled.commit}", threads=threads, bases_among=set(bases),
                                replacing=f"{name}@{revision}:{variant_of(chosen.spec())}", include=include, exclude=exclude)
        hub.check_lfs(shell, pulled, repo_id)
        seconds["pull"] = time.perf_counter() - started
        seconds["pull_cpu"] = time.process_time() - cpu
        return _landed(store, Landed(ref, name, seconds=seconds, node=_node(), commit=pulled.commit, part=not pulled.whole), sink, shell)


def pull_many(refs: list[str], *, store: Store | None = None, names: list[str] | None = None, pipeline: str | None = None,
              include: list[str] | None = None, exclude: list[str] | None = None, ray: str | None = DEFAULT_ADDRESS,
              threads: int | None = None, retries: int = RETRIES, force: bool = False,
              on_landed: Callable[[Landed], None] | None = None) -> list[Landed]:
    """`zoo pull` of many repositories (REPO_ID[@REVISION]) as Ray tasks, into `store` (default: the
    zoo at ZOO_HOME): each worker downloads and codes the model's objects into the zoo's work
    folder as `zoo pull` codes them, the driver publishes. A repository whose commit the zoo holds
    in this variant, with the files the globs choose (zoo.hub.pull.held_as_pulled), is left as it is (unchanged),
    unless `force`. Returns one Landed per ref, in their order; failures are reported, not raised."""
    from zoo.codecs.pipeline import DEFAULT_SPEC, Pipeline
    from zoo.hub import pull as hub

    if not refs:
        raise InputError("no repository to pull")
    threads = threads_per_model(threads, ray)
    store = store or Store()
    parsed = [hub.parse_repo_ref(ref) for ref in refs]
    check_globs(include, exclude)  # said once, before any download, not by every task
    names = names or [repo_id for repo_id, _ in parsed]
    if len(names) != len(refs):
        raise InputError(f"{len(refs)} repositories but {len(names)} names")
    for name in names:
        check_name(name)
    clashes = _duplicates([f"{name}@{revision}" for name, (_, revision) in zip(names, parsed)])
    if clashes:
        raise InputError(f"two repositories would be stored as {', '.join(clashes)}: pull them apart")
    variant = variant_of(Pipeline.parse(pipeline or DEFAULT_SPEC).spec())
    held = [None if force else store.exists_ref(name, revision, variant) for name, (_, revision) in zip(names, parsed)]
    found = [None if force else hub.not_pulled_from(store, name, revision, repo_id) for name, (repo_id, revision) in zip(names, parsed)]
    theirs = [entry.ref + (f" (stored from {entry.source})" if entry.source else "") for entry in found if entry is not None]
    if theirs:  # as zoo pull: a pull replaces, or sets a variant beside, only what pulls of the same repository stored
        raise OutputExistsError(f"{', '.join(theirs)} {'is' if len(theirs) == 1 else 'are'} already in the zoo, not pulled from "
                                f"{'its' if len(theirs) == 1 else 'their'} repository; pass --force to store the pulls beside or "
                                "over them, or --name to store them under other names")
    bases = sorted(entry.ref for entry in store.entries())  # as for compress_many: the zoo before the batch
    with store.workspace() as work:
        tasks = [(pull_to_work, (ref, store.location, str(work), name, pipeline, include, exclude, threads, entry, bases))
                 for ref, name, entry in zip(refs, names, held)]

        def land(index: int, landed: Landed) -> Landed:
            repo_id, revision = parsed[index]
            if landed.unchanged:
                landed.output = held[index].ref
                landed.original_bytes, landed.stored_bytes = held[index].original_bytes, held[index].stored_bytes
            elif landed.ok:
                # a newer commit of the revision replaces the old: that is what pulling means
                publish(store, landed, names[index], revision, commit=None if landed.part else landed.commit,
                        source=f"hub:{repo_id}@{landed.commit}", force=True)
            if on_landed is not None:
                on_landed(landed)
            return landed

        return _run(ray, tasks, [f"zoo pull {ref}" for ref in refs], lambda index, error: Landed(refs[index], names[index], error=error),
                    land, threads, retries)


# -- sweep: a pipeline and its evaluation per task -----------------------------------------------------


@dataclass
class SweepFailure:
    pipeline: str
    error: str


def sweep_one(model: str, pipeline: str, options: dict[str, Any], driver_scratch: str | None = None) -> list[Any]:
    """One pipeline of a sweep, compressed and evaluated by zoo.evaluate.sweep itself, its model
    (given as a URL) and its candidate in a scratch folder (_task_scratch)."""
    from zoo.evaluate import sweep as library

    with _task_scratch(driver_scratch) as scratch:
        local = _local_source(model, scratch, {})
        return library.sweep(local, [pipeline], **{"workdir": scratch, **options})


def sweep(model: str | os.PathLike[str], pipelines: list[str], *, ray: str | None = DEFAULT_ADDRESS, threads: int = 1,
          retries: int = RETRIES, progress: Callable[[str], None] | None = None,
          **options: Any) -> tuple[list[Any], list[SweepFailure]]:
    """zoo sweep with each pipeline (its compression and its evaluation) a Ray task: the points of
    the pipelines that succeeded, their Pareto frontier marked among themselves, and the failures;
    with ray=None each runs here in turn, as compress_many's do.
    `options` go to zoo.evaluate.sweep.sweep (calibration, text, max_tokens, base): paths in them,
    and the model unless it is a URL, must be readable where the tasks run."""
    from zoo.codecs.pipeline import Pipeline
    from zoo.evaluate.sweep import mark_pareto

    if not pipelines:
        raise InputError("give at least one pipeline to sweep")
    for spec in pipelines:
        Pipeline.parse(spec)  # every spec checked before any work
    model = str(model)
    if not is_url(model) and not Path(model).exists():
        raise InputError(f"{model}: no such file or folder")
    if options.get("text") is not None and not is_url(model):
        from zoo.evaluate.core import check_text

        check_text(model, options["text"])  # once here, not in every task
    options = {**options, "threads": threads}
    for key in ("calibration", "base"):  # a path, where the tasks run (a base may be a zoo name)
        if isinstance(options.get(key), (str, os.PathLike)) and not is_url(str(options[key])) and os.path.exists(options[key]):
            options[key] = os.path.abspath(options[key])
    landed = [0]

    def land(index: int, result: Any) -> Any:
        landed[0] += 1
        if progress is not None:
            what = result.error if isinstance(result, SweepFailure) else f"{result[0].archive_bytes} bytes"
            progress(f"[{landed[0]}/{len(pipelines)}] {pipelines[index]}: {what}")
        return result

    with _batch_scratch() as scratch:
        results = _run(ray, [(sweep_one, (_for_tasks(model), spec, options, scratch)) for spec in pipelines],
                       [f"zoo sweep {spec}" for spec in pipelines], lambda index, error: SweepFailure(pipelines[index], error), land,
                       threads, retries)
    points = [point for result in results if not isinstance(result, SweepFailure) for point in result]
    mark_pareto(points)
    return points, [result for result in results if isinstance(result, SweepFailure)]
