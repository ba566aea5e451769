"""Many models compressed side by side as Ray tasks (`zoo compress A B C --ray`), or one after another
here when no Ray is asked for. docs/scale-out.md has the design; in short:

- a worker runs the same library call as a local `zoo compress` (zoo.api.compress, or compress_into
  a private zoo), so its archive is the same bytes as a local run's;
- a worker writes bytes and returns only a small `Landed` record: for `-o DIR|URL` its archive is
  put there by the worker (zoo.hub.remote), for a zoo the worker leaves its archive in the driver's
  work folder and the driver publishes it (Store.add), so manifests are written by one process;
- a worker that dies is retried (Ray's max_retries), as is an OSError (a network or disk hiccup); a
  model that fails for a reason of its own (a bad file) is reported, and the others go on.
"""

from __future__ import annotations

import os
import signal
import tempfile
import time
import uuid
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from zoo import api
from zoo.container.format import sha256_file
from zoo.errors import InputError, OutputExistsError, ZooError
from zoo.hub import temporaries
from zoo.hub.manifest import OBJECT_SUFFIX
from zoo.hub.remote import LocalFolder, StorageError, fetch, is_url, open_storage
from zoo.hub.store import DEFAULT_REVISION, Store, check_name, variant_of

DEFAULT_ADDRESS = "default"  # --ray without an address: RAY_ADDRESS, else a Ray started here
RETRIES = 2  # a task is run at most 1 + RETRIES times when its worker dies or it meets an OSError
# What a worker must see as the driver does: the kernels (the CI's numpy run), the test hooks, and
# the hub to pull from (credentials are not passed on: HF_TOKEN belongs in the nodes' environment).
FORWARDED = ("ZOO_KERNELS", "ZOO_KILL_AT", "ZOO_DEBUG", "HF_ENDPOINT", "HF_HOME", "HF_HUB_CACHE", "HF_HUB_OFFLINE",
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
    unchanged: bool = False  # a pull that found this commit already in the zoo: nothing written

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


# -- connecting ------------------------------------------------------------------------------------


def connect(address: str | None = DEFAULT_ADDRESS, num_cpus: int | None = None) -> str:
    """Join the Ray cluster at `address` (DEFAULT_ADDRESS or None: RAY_ADDRESS), else start a
    local Ray with `num_cpus` (default: every core). A Ray another user started with `ray start`
    on this machine is never joined unasked (ray.init() alone would). Returns the GCS address."""
    try:
        import ray
    except ModuleNotFoundError:
        raise InputError("--ray needs Ray, which is not installed: pip install 'zoo[cloud]'") from None
    if ray.is_initialized():
        return ray.get_runtime_context().gcs_address
    wanted = os.environ.get("RAY_ADDRESS") if address in (None, DEFAULT_ADDRESS) else address
    options: dict[str, Any] = {"logging_level": "ERROR", "log_to_driver": False}
    if wanted:
        ray.init(address=wanted, **options)
    else:
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, **options)
    return ray.get_runtime_context().gcs_address


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
    """The Ray node this task runs on (the start of its id); None outside a Ray task."""
    try:
        import ray

        context = ray.get_runtime_context() if ray.is_initialized() else None
        return context.get_node_id()[:12] if context is not None and context.get_task_id() else None
    except Exception:  # noqa: BLE001 - only a label
        return None


def _local_source(source: str, scratch: Path, seconds: dict[str, float]) -> Path:
    if not is_url(source):
        return Path(source)
    started = time.perf_counter()
    local = fetch(source, scratch)
    seconds["fetch"] = time.perf_counter() - started
    return local


def compress_to_storage(source: str, output: str, name: str, pipeline: str, threads: int, force: bool) -> Landed:
    """One model to the archive `name` at `output` (a folder or a URL): the task behind `-o`."""
    _die_once("batch-task-once")
    seconds: dict[str, float] = {}
    storage = open_storage(output)
    with ExitStack() as stack:
        if isinstance(storage, LocalFolder):  # beside its final place: it enters by a link, not a copy
            storage.root.mkdir(parents=True, exist_ok=True)
            temporaries.sweep_beside(storage.root / name)  # what an attempt killed before this retry left
            scratch = stack.enter_context(temporaries.locked_temporary(storage.root, temporaries.temporary_prefix(storage.root / name),
                                                                       is_dir=True))
        else:
            scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="zoo-batch-")))
        local = _local_source(source, scratch, seconds)
        archive = scratch / name
        started, cpu = time.perf_counter(), time.process_time()
        report = api.compress(local, archive, pipeline, threads=threads)
        seconds["compress"] = time.perf_counter() - started
        seconds["compress_cpu"] = time.process_time() - cpu  # steadier than the wall clock on a shared machine
        started = time.perf_counter()
        digest = sha256_file(archive)
        seconds["hash"] = time.perf_counter() - started
        started = time.perf_counter()
        written = storage.put(name, archive, if_absent=not force, refresh_after=None, move=True)
        seconds["put"] = time.perf_counter() - started
        if not written:
            raise OutputExistsError(f"{storage.url}/{name} appeared while it was being compressed; pass --force to replace it")
        if isinstance(storage, LocalFolder):  # an archive of the user's, not a store object: the modes a local -o gives
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(storage.path(name), 0o666 & ~umask)
    return Landed(source, name, f"{storage.url.rstrip('/')}/{name}", report.original_bytes, report.compressed_bytes, digest, seconds,
                  _node())


def compress_to_work(source: str, work: str, name: str, revision: str, pipeline: str, threads: int, source_label: str) -> Landed:
    """One model into a private zoo inside the driver's work folder `work`, by the call a local
    `zoo compress SRC --name NAME` makes (zoo.api.compress_into): the same archive, which the driver
    then publishes into the real zoo."""
    _die_once("batch-task-once")
    seconds: dict[str, float] = {}
    private = Store(Path(work) / f"task-{uuid.uuid4().hex[:12]}")
    with tempfile.TemporaryDirectory(prefix="zoo-batch-") as scratch:
        local = _local_source(source, Path(scratch), seconds)
        started, cpu = time.perf_counter(), time.process_time()
        entry = api.compress_into(private, local, name, revision, pipeline, source_label=source_label, threads=threads)
        seconds["compress"] = time.perf_counter() - started
        seconds["compress_cpu"] = time.process_time() - cpu
    return Landed(source, name, str(entry.archive), entry.original_bytes, entry.stored_bytes, entry.archive.name.removesuffix(OBJECT_SUFFIX),
                  seconds, _node())


# -- the driver's side -------------------------------------------------------------------------------


def archive_name(source: str) -> str:
    """The archive a source gets under `-o DIR`: its folder's or file's name, .zoo."""
    stem = source.rstrip("/").rsplit("/", 1)[-1]
    for suffix in (".safetensors", ".bin", ".pt", ".pth"):
        stem = stem.removesuffix(suffix)
    return f"{stem or 'model'}{OBJECT_SUFFIX}"


def zoo_name(source: str) -> str:
    """The name a source gets in the zoo: as `zoo compress SRC` chooses it (zoo.refs.model_name)."""
    if is_url(source):
        return source.rstrip("/").rsplit("/", 1)[-1]
    from zoo.refs import model_name

    return model_name(source)[0]


def _duplicates(names: list[str]) -> list[str]:
    return sorted({name for name in names if names.count(name) > 1})


def compress_many(sources: list[str], output: str | os.PathLike[str] | None = None, *, store: Store | None = None,
                  names: list[str] | None = None, revision: str = DEFAULT_REVISION, pipeline: str = "lossless",
                  ray: str | None = DEFAULT_ADDRESS, threads: int = 1, retries: int = RETRIES, force: bool = False,
                  on_landed: Callable[[Landed], None] | None = None) -> list[Landed]:
    """Compress each source (a local path or a URL) to its own archive under `output` (a folder or
    a URL), or, without `output`, into `store` (default: the zoo at ZOO_HOME) under `names` (default:
    as `zoo compress` names them). With `ray` (an address, or DEFAULT_ADDRESS) each model is a Ray
    task of `threads` CPUs; with ray=None they run here, one after another. `on_landed` sees each
    model as it lands, failures included. Returns one Landed per source, in their order."""
    if not sources:
        raise InputError("no model to compress")
    for source in sources:
        if not is_url(source) and not Path(source).exists():
            raise InputError(f"{source}: no such file or folder")
    into_zoo = output is None
    if into_zoo:
        store = store or Store()
        names = names or [zoo_name(source) for source in sources]
        for name in names:
            check_name(name)
    else:
        names = names or [archive_name(source) for source in sources]
    if len(names) != len(sources):
        raise InputError(f"{len(sources)} sources but {len(names)} names")
    if _duplicates(names):
        raise InputError(f"two sources would be stored as {', '.join(_duplicates(names))}: give them names of their own")
    _refuse_existing(names, output, store, revision, pipeline, force)

    labels = [source if is_url(source) else str(Path(source).resolve()) for source in sources]  # a manifest's `source`
    with ExitStack() as stack:
        work = str(stack.enter_context(store.workspace())) if into_zoo else None

        def task_arguments(index: int) -> tuple[Callable[..., Landed], tuple[Any, ...]]:
            if into_zoo:
                return compress_to_work, (sources[index], work, names[index], revision, pipeline, threads, labels[index])
            return compress_to_storage, (sources[index], str(output), names[index], pipeline, threads, force)

        def land(index: int, landed: Landed) -> Landed:
            if into_zoo and landed.ok:
                started = time.perf_counter()
                try:
                    entry = store.add(landed.output, names[index], revision, source=labels[index], force=force, move=True)
                    landed.output = entry.ref
                except ZooError as error:
                    landed.error = str(error)
                landed.seconds["publish"] = time.perf_counter() - started
            if on_landed is not None:
                on_landed(landed)
            return landed

        if ray is None:
            results = []
            for index, source in enumerate(sources):
                function, arguments = task_arguments(index)
                try:
                    landed = function(*arguments)
                except (ZooError, OSError) as error:
                    landed = Landed(source, names[index], error=str(error))
                results.append(land(index, landed))
            return results
        return run_tasks(ray, [task_arguments(index) for index in range(len(sources))], [f"zoo compress {name}" for name in names],
                         lambda index, error: Landed(sources[index], names[index], error=error), land, threads, retries)


def _refuse_existing(names: list[str], output: str | os.PathLike[str] | None, store: Store | None, revision: str, pipeline: str,
                     force: bool) -> None:
    """Every output that is there already, refused before any work starts (unless force)."""
    if force:
        return
    if output is None:
        from zoo.codecs.pipeline import Pipeline

        variant = variant_of(Pipeline.parse(pipeline).spec())
        there = [f"{name}@{revision}:{variant}" for name in names if store.exists_ref(name, revision, variant) is not None]
        where = "in the zoo"
    else:
        storage = open_storage(output)
        there = [name for name in names if storage.stat(name) is not None]
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
    options: dict[str, Any] = {"num_cpus": threads, "max_retries": retries, "retry_exceptions": [OSError, StorageError],
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
                result = failed(index, str(cause).strip().splitlines()[-1] if str(cause).strip() else type(cause).__name__)
            except ray.exceptions.RayError as error:  # its worker died every time, or the cluster lost it
                result = failed(index, f"{type(error).__name__}: {str(error).strip().splitlines()[0]}")
            results[index] = land(index, result)
    except BaseException:
        for reference in pending:
            ray.cancel(reference, force=True)
        raise
    return [results[index] for index in range(len(tasks))]


# -- pull: a repository per task ----------------------------------------------------------------------


def pull_to_work(ref: str, work: str, name: str, pipeline: str | None, include: list[str] | None, exclude: list[str] | None,
                 threads: int, held_source: str | None) -> Landed:
    """One repository downloaded and compressed into a private zoo in the driver's work folder, by
    zoo.hub.pull.pull itself; nothing is written when the zoo already holds its commit (`held_source`)."""
    from zoo.hub import pull as hub

    _die_once("batch-task-once")
    seconds: dict[str, float] = {}
    repo_id, revision = hub.parse_repo_ref(ref)
    if held_source is not None:
        started = time.perf_counter()
        pulled = hub.download(repo_id, revision, include, exclude, progress_bars=False)
        seconds["download"] = time.perf_counter() - started
        if held_source == f"hub:{repo_id}@{pulled.commit}":
            return Landed(ref, name, seconds=seconds, node=_node(), commit=pulled.commit, unchanged=True)
    started, cpu = time.perf_counter(), time.process_time()
    entry, _ = hub.pull(ref, store=Store(Path(work) / f"task-{uuid.uuid4().hex[:12]}"), name=name, pipeline=pipeline, include=include,
                        exclude=exclude, threads=threads, force=True, progress_bars=False)
    seconds["pull"] = time.perf_counter() - started
    seconds["pull_cpu"] = time.process_time() - cpu
    return Landed(ref, name, str(entry.archive), entry.original_bytes, entry.stored_bytes, entry.archive.name.removesuffix(OBJECT_SUFFIX),
                  seconds, _node(), commit=entry.commit)


def pull_many(refs: list[str], *, store: Store | None = None, names: list[str] | None = None, pipeline: str | None = None,
              include: list[str] | None = None, exclude: list[str] | None = None, ray: str | None = DEFAULT_ADDRESS, threads: int = 1,
              retries: int = RETRIES, force: bool = False, on_landed: Callable[[Landed], None] | None = None) -> list[Landed]:
    """`zoo pull` of many repositories (REPO_ID[@REVISION]) as Ray tasks, into `store` (default: the
    zoo at ZOO_HOME): each worker pulls into a private zoo in the driver's work folder, the driver
    publishes. A repository whose commit the zoo holds in this variant is left as it is (unchanged),
    unless `force`. Returns one Landed per ref, in their order; failures are reported, not raised."""
    from zoo.codecs.pipeline import DEFAULT_SPEC, Pipeline
    from zoo.hub import pull as hub

    if not refs:
        raise InputError("no repository to pull")
    store = store or Store()
    parsed = [hub.parse_repo_ref(ref) for ref in refs]
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
    with store.workspace() as work:
        tasks = [(pull_to_work, (ref, str(work), name, pipeline, include, exclude, threads, entry.source if entry else None))
                 for ref, name, entry in zip(refs, names, held)]

        def land(index: int, landed: Landed) -> Landed:
            repo_id, revision = parsed[index]
            if landed.unchanged:
                landed.output = held[index].ref
                landed.original_bytes, landed.stored_bytes = held[index].original_bytes, held[index].stored_bytes
            elif landed.ok:
                started = time.perf_counter()
                try:
                    entry = store.add(landed.output, names[index], revision, commit=landed.commit, source=f"hub:{repo_id}@{landed.commit}",
                                      force=True, move=True)  # a newer commit of the revision replaces the old: that is what pulling means
                    landed.output = entry.ref
                except ZooError as error:
                    landed.error = str(error)
                landed.seconds["publish"] = time.perf_counter() - started
            if on_landed is not None:
                on_landed(landed)
            return landed

        if ray is None:
            results = []
            for index, (function, arguments) in enumerate(tasks):
                try:
                    landed = function(*arguments)
                except (ZooError, OSError) as error:
                    landed = Landed(refs[index], names[index], error=str(error))
                results.append(land(index, landed))
            return results
        return run_tasks(ray, tasks, [f"zoo pull {ref}" for ref in refs], lambda index, error: Landed(refs[index], names[index], error=error),
                         land, threads, retries)


# -- sweep: a pipeline and its evaluation per task -----------------------------------------------------


@dataclass
class SweepFailure:
    pipeline: str
    error: str


def sweep_one(model: str, pipeline: str, options: dict[str, Any]) -> list[Any]:
    """One pipeline of a sweep, compressed and evaluated by zoo.evaluate.sweep itself."""
    from zoo.evaluate import sweep as library

    with tempfile.TemporaryDirectory(prefix="zoo-sweep-") as scratch:
        local = _local_source(model, Path(scratch), {})
        return library.sweep(local, [pipeline], **options)


def sweep(model: str | os.PathLike[str], pipelines: list[str], *, ray: str | None = DEFAULT_ADDRESS, threads: int = 1,
          retries: int = RETRIES, progress: Callable[[str], None] | None = None,
          **options: Any) -> tuple[list[Any], list[SweepFailure]]:
    """zoo sweep with each pipeline (its compression and its evaluation) a Ray task: the points of
    the pipelines that succeeded, their Pareto frontier marked among themselves, and the failures.
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
    options = {**options, "threads": threads}
    landed = [0]

    def land(index: int, result: Any) -> Any:
        landed[0] += 1
        if progress is not None:
            what = result.error if isinstance(result, SweepFailure) else f"{result[0].archive_bytes} bytes"
            progress(f"[{landed[0]}/{len(pipelines)}] {pipelines[index]}: {what}")
        return result

    results = run_tasks(ray, [(sweep_one, (model, spec, options)) for spec in pipelines], [f"zoo sweep {spec}" for spec in pipelines],
                        lambda index, error: SweepFailure(pipelines[index], error), land, threads, retries)
    points = [point for result in results if not isinstance(result, SweepFailure) for point in result]
    mark_pareto(points)
    return points, [result for result in results if isinstance(result, SweepFailure)]
