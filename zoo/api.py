"""What the CLI, the server and the evaluator call: compress, decompress, open, verify."""

from __future__ import annotations

import builtins
import errno
import functools
import hashlib
import inspect
import json
import math
import os
import queue
import shlex
import stat
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager, nullcontext, suppress
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import numpy as np


from zoo.kernels.parallel import for_each, resolve_threads
from zoo.container.reader import Archive, leaf_bytes, positioned_writer, sharded
from zoo.dtypes import DTYPES
from zoo.container.writer import VARIANT_FILE, WEIGHTS_FILE, Builder, naming_order, stored_files
from zoo.codecs.base import StageProgress  # (stage, done, total), as zoo.evaluate reports its stages
from zoo.container.base_model import BaseModel
from zoo.container.delta import Deltas
from zoo.errors import ChecksumError, FormatError, InputError, OutputExistsError, ZooError, ZooWarning
from zoo.container.format import ArchiveFile, assemble, current_umask, object_file_size, object_path, put_header, refuse_an_archive
from zoo.container.objects import ObjectSink, object_names, standalone
from zoo.codecs.pipeline import CHUNK_BYTES, DEFAULT_SPEC, Pipeline
from zoo.codecs.registry import progress_stages
from zoo.hub import temporaries
from zoo.hub.manifest import refuse_names_not_utf8, size_ratio
from zoo.hub.store import DEFAULT_REVISION, Entry, Store, check_name, check_revision, variant_of
from zoo.refs import BASE_MODEL, archive_path, check_path, open_base
from zoo.sources.folder import SourceFile, check_relpath, scan
from zoo.sources.segments import refuse_names_the_locale_would_change
from zoo.signals import signals_held, written

Progress = Callable[[int], None]  # bytes of the source done since the last call
# The phases of a lossy compress that run before its first byte is written, and what their done and
# total count, as the codecs declare them (Codec.stages: l2's survey, pranc's distillation, the
# calibration and teacher runs they start). Each is reported at (0, total) when it starts and at
# done == total when it ends; a stage that ends early ("fitting the budget" lands in fewer rounds)
# ends with a smaller total.
COMPRESS_STAGES = progress_stages()


@dataclass
class TensorReport:
    name: str
    file: str
    dtype: str
    shape: list[int]
    original_bytes: int
    compressed_bytes: int
    pipeline: str
    base: bool = False  # stored as its difference from the archive's base model

    @property
    def ratio(self) -> float:
        return size_ratio(self.compressed_bytes, self.original_bytes)

    @property
    def bits_per_weight(self) -> float:
        count = math.prod(self.shape)
        return 8 * self.compressed_bytes / count if count else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ratio": self.ratio, "bits_per_weight": self.bits_per_weight}


def opaque_files(files: list[dict[str, Any]]) -> list[str]:
    """'path (why)' for each file of an archive's file list that is of a tensor format zoo keeps
    as bytes (never unpickled or parsed further), as compress and info report them."""
    return [f"{entry['path']} ({entry['opaque']})" for entry in files if entry.get("opaque")]


@dataclass
class Report:
    """Sizes of an archive: whole file, per tensor, per file."""

    archive: str
    original_bytes: int
    compressed_bytes: int
    parameters: int
    tensors: list[TensorReport] = field(default_factory=list)
    files: list[dict[str, Any]] = field(default_factory=list)
    seconds: float | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    base: dict[str, Any] | None = None  # {"hint", "tensors"} when tensors are stored against a base model

    @property
    def ratio(self) -> float:
        return size_ratio(self.compressed_bytes, self.original_bytes)

    @property
    def opaque(self) -> list[str]:
        return opaque_files(self.files)

    @property
    def bits_per_weight(self) -> float:
        """Whole archive, headers and non-weight files included, over the weight count."""
        return 8 * self.compressed_bytes / self.parameters if self.parameters else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "archive": self.archive,
            "original_bytes": self.original_bytes,
            "compressed_bytes": self.compressed_bytes,
            "ratio": self.ratio,
            "parameters": self.parameters,
            "bits_per_weight": self.bits_per_weight,
            "seconds": self.seconds,
            "metadata": self.metadata,
            "base": self.base,
            "files": self.files,
            "tensors": [t.to_dict() for t in self.tensors],
        }


# -- output safety ---------------------------------------------------------------------------


# What a local zoo keeps in its folder (zoo.hub.store): an output there would mix a user's files
# with its objects and manifests, or replace its catalogue or lock.
_ZOO_OWN = ("objects", "manifests", "work", "archives", "unreadable", "lock")


def refuse_inside_the_zoo(output: Path, relpaths: Sequence[str] = (), *, work_allowed: bool = False) -> None:
    """An output that is the local zoo's folder (ZOO_HOME) or lies among what the zoo keeps there;
    with `relpaths`, the paths a model writes under the output folder too (a folder that holds
    ZOO_HOME, written into with --force, would have a model's `zoo/lock` replace the zoo's).
    `work_allowed`: the zoo's `work` folder, where its own jobs make archives, is not refused."""
    from zoo.hub.store import zoo_home

    location = os.environ.get("ZOO_HOME", "")
    if location.startswith("file://"):
        home = Path(location[len("file://"):])
    elif "://" in location:
        return  # a zoo in a bucket keeps its index under the user's cache, not here
    else:
        home = zoo_home()
    home, target = Path(os.path.realpath(home)), Path(os.path.realpath(output))

    def refuse(path: Path, shown: str) -> None:
        try:
            inside = path.relative_to(home).parts
        except ValueError:
            return
        if work_allowed and inside[:1] == ("work",):
            return
        if not inside or inside[0] in _ZOO_OWN or inside[0].startswith("catalogue"):  # catalogue-v1.sqlite, -journal, .behind
            raise InputError(f"{shown}: {'is' if not inside else 'lies inside'} the zoo's own folder {home} (ZOO_HOME), where it keeps "
                             "its objects, manifests and catalogue; write it somewhere else")

    refuse(target, str(output))
    if relpaths and home.is_relative_to(target):
        for relpath in relpaths:
            refuse(Path(os.path.realpath(target / relpath)), str(Path(output) / relpath))


def _refuse_existing(path: Path, force: bool, is_dir: bool = False) -> None:
    problem = temporaries.in_the_way(path, is_dir)
    if problem is not None:
        raise OutputExistsError(f"{path} {problem}; zoo does not remove it, even with --force: choose another output")
    if (path.exists() or path.is_symlink()) and not force:
        raise OutputExistsError(f"{path} exists; pass --force to replace it")


@contextmanager
def _temporary_beside(final: Path, parent: Path, is_dir: bool, or_else: Path | None = None,
                      shown: Path | None = None) -> Iterator[Path]:
    """temporaries.locked_temporary for `final` in `parent`, or in `or_else` where `parent` may
    not be written; one that cannot be made is an error that names the output (as `shown`, when
    given), not the temporary."""
    stack = ExitStack()
    places = [parent] if or_else is None else [parent, or_else]
    for place in places:
        try:
            temporary = stack.enter_context(temporaries.locked_temporary(place, temporaries.temporary_prefix(final), is_dir))
            break
        except OSError as error:
            if place is places[-1] or error.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
                raise InputError(f"{shown or final}: cannot write in {place}: {error.strerror or error}") from None
    with stack:  # removes the temporary unless it was put in place
        yield temporary


def check_output(final: Path, force: bool, is_dir: bool) -> None:
    """Refuse an output that exists (without `force`) or whose folder does not: before work that
    takes minutes as well as when the output is written (_atomic_output), which checks again."""
    temporaries.sweep_beside(final)  # first: an old output a killed run moved aside comes back before the check
    _refuse_existing(final, force, is_dir)
    if not final.parent.is_dir():
        raise InputError(f"{final.parent}: output folder does not exist")


@contextmanager
def _atomic_output(final: Path, force: bool, is_dir: bool) -> Iterator[Path]:
    """A temporary path beside `final`, put in its place only when the body completes.
    On any error or Ctrl-C the temporary is removed and `final` is left as it was. The temporary
    is locked and named after this process, so a later run removes it if this one is killed
    (zoo.hub.temporaries), and `final` is always the old or the new complete output."""
    check_output(final, force, is_dir)
    with _temporary_beside(final, final.parent, is_dir) as temporary:
        # private (0700/0600) when made; give the output the modes the umask allows.
        os.chmod(temporary, (0o777 if is_dir else 0o666) & ~current_umask())
        yield temporary
        with signals_held():  # in place and said so, or neither
            temporaries.replace(temporary, final, force)
            written(str(final))
        temporaries.kill_point("output-placed")


def _clashes(folder: Path, relpaths: list[str], folders: Sequence[str] = ()) -> tuple[list[str], list[str]]:
    """Of the files and links a model writes into `folder`: those that exist there as files
    (replaced with --force), and those in the way of something that is no file (a folder where a
    file goes, a file where a folder goes), which zoo never removes; of its empty `folders`, those
    where something else is."""
    replaced, blocked = [], []
    named: set[Path] = set()

    def parent_in_the_way(relpath: str) -> bool:
        """A file or link (a link to a folder too: writing through it would land outside `folder`)
        where one of relpath's parent folders goes: named once, for the first path it blocks."""
        parents = [folder.joinpath(*relpath.split("/")[:depth]) for depth in range(1, relpath.count("/") + 1)]
        in_the_way = next((p for p in parents if p.is_symlink() or (p.exists() and not p.is_dir())), None)
        if in_the_way is not None and in_the_way not in named:
            named.add(in_the_way)
            blocked.append(f"{in_the_way.relative_to(folder)} (a file where {relpath} needs a folder)")
        return in_the_way is not None

    for relpath in folders:
        target = folder / relpath
        if not parent_in_the_way(relpath) and (target.is_symlink() or (target.exists() and not target.is_dir())):
            blocked.append(f"{relpath} (a file where the model has a folder)")
    for relpath in relpaths:
        target = folder / relpath
        if parent_in_the_way(relpath):
            continue
        if target.is_dir() and not target.is_symlink():
            blocked.append(f"{relpath} (a folder)")
        elif target.exists() or target.is_symlink():
            replaced.append(relpath)
    return replaced, blocked


def _listing(paths: list[str], most: int = 5) -> str:
    return ", ".join(paths[:most]) + (f" and {len(paths) - most} more" if len(paths) > most else "")


def _move_in(temporary: Path, final: Path) -> None:
    """Every file and link under `temporary` to its place under `final`, the one there before
    (if any) set aside until all are in; on failure the moves are undone in reverse, and the
    folders made for them removed."""
    aside = temporary / temporaries.SET_ASIDE  # the name a killed run's sweep looks for (_folder_output refuses a model that uses it)
    moved: list[tuple[Path, Path]] = []  # (from, to)
    made: list[Path] = []
    try:
        for folder, subfolders, names in os.walk(temporary):
            here = Path(folder)
            if here == aside:
                subfolders.clear()
                continue
            relative = here.relative_to(temporary)
            for missing in reversed([final / relative, *(final / relative).parents]):
                if not (missing.exists() or missing.is_symlink()) and missing.is_relative_to(final):
                    missing.mkdir()
                    made.append(missing)
            for name in names + [d for d in subfolders if (here / d).is_symlink()]:
                target = final / relative / name
                if target.is_dir() and not target.is_symlink():
                    raise OutputExistsError(f"{final}: {relative / name} is a folder there; zoo does not remove folders")
                if target.exists() or target.is_symlink():
                    (aside / relative).mkdir(parents=True, exist_ok=True)
                    os.replace(target, aside / relative / name)
                    moved.append((target, aside / relative / name))
                os.replace(here / name, target)
                moved.append((here / name, target))
    except BaseException:
        for origin, moved_to in reversed(moved):
            os.replace(moved_to, origin)
        for folder in reversed(made):
            with suppress(OSError):
                folder.rmdir()
        raise


@contextmanager
def _folder_output(final: Path, relpaths: list[str], force: bool, folders: Sequence[str] = ()) -> Iterator[Path]:
    """Where a model folder is written: a temporary folder whose contents take their places under
    `final` only when the body completes. A new `final` is the temporary folder renamed; into an
    existing folder, the model's files replace their namesakes (only with `force`) and every other
    file stays. A folder is never removed to make room. On any error or Ctrl-C, `final` holds what
    it held before."""
    if not final.is_dir():
        with _atomic_output(final, force, is_dir=True) as temporary:  # a new folder
            yield temporary
        return
    # Beside it on the same file system, so that each file moves in by a rename; inside it when
    # it is a mount point of its own, or when its parent may not be written (`-o ~`, whose /home is
    # root's). A killed run's temporaries in either place go first, refused or not. (Named after
    # the folder as resolved: `-o .` has no name of its own.)
    here = final.resolve()
    beside = here.parent if os.stat(here.parent).st_dev == os.stat(here).st_dev else here
    temporaries.sweep_beside(here, within=beside)
    if beside != here:
        temporaries.sweep_beside(here, within=here)
    if any(path.split("/")[0] == temporaries.SET_ASIDE for path in [*relpaths, *folders]):
        # the folder the files it replaces wait in, which a killed run's sweep puts back: the model's own would be taken for it
        raise OutputExistsError(f"{final}: the model holds {temporaries.SET_ASIDE}/, the name zoo sets replaced files aside under "
                                "when it writes into a folder that exists; write it into a new folder")
    replaced, blocked = _clashes(final, relpaths, folders)
    if blocked:
        raise OutputExistsError(f"{final}: cannot write the model there without removing {_listing(blocked)}; "
                                "choose another folder or move them")
    if replaced and not force:
        raise OutputExistsError(f"{final} already holds {len(replaced)} of the model's files ({_listing(replaced)}); "
                                "pass --force to replace them (other files there are left alone)")
    with _temporary_beside(here, beside, is_dir=True, or_else=here, shown=final) as temporary:
        os.chmod(temporary, 0o777 & ~current_umask())
        yield temporary
        # whole, or not begun: a signal handled between a rename and its record lost the user's file
        # set aside (the rollback knew nothing of it, and the temporary went with it)
        with signals_held():
            _move_in(temporary, final)
            written(str(final))
        temporaries.kill_point("output-placed")


# -- compress --------------------------------------------------------------------------------


def _write_archive(temporary: Path, write: Callable[[BinaryIO], dict[str, Any]], durable: bool = True, room: int = 0) -> None:
    """The archive at `temporary`: `write(stream)` writes its payload and returns its header. The
    payload goes straight into `temporary`, behind `room` bytes left for the header (a build's
    Builder.header_room), and the header in front of it without copying the payload
    (format.put_header): into that room where it fits, on any file system; with no room, where the
    payload is large and the file system can insert room at a file's start. Else the payload is
    copied behind the header."""
    with builtins.open(temporary, "wb") as payload:
        payload.seek(room)
        header = write(payload)
    if put_header(temporary, header, room, durable):
        return
    with temporaries.locked_temporary(temporary.parent, temporaries.PAYLOAD_PREFIX, is_dir=True) as scratch:
        payload_path = Path(scratch) / "payload"
        os.replace(temporary, payload_path)
        assemble(temporary, header, payload_path, room, durable=durable)


_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
R = TypeVar("R")


def _names_a_full_disk(where: Callable[[inspect.BoundArguments], Any], within: Callable[[inspect.BoundArguments], Any] | None = None):
    """A full disk (or quota, or file size limit) names where the output was going: the system's
    error names no file ("No space left on device"), or a temporary of ours inside `within` (only
    writes fill a disk, and what this writes there is the output's temporaries)."""
    def decorate(function: Callable[..., R]) -> Callable[..., R]:
        @functools.wraps(function)
        def named(*args: Any, **kwargs: Any) -> R:
            try:
                return function(*args, **kwargs)
            except OSError as error:
                if error.errno in _FULL:
                    bound = inspect.signature(function).bind(*args, **kwargs)
                    inside = within(bound) if within is not None else None
                    if error.filename is None or (inside is not None and Path(error.filename).absolute().is_relative_to(inside)):
                        error.filename = str(where(bound))
                raise
        return named
    return decorate


def _destination(bound: inspect.BoundArguments) -> Any:
    return bound.arguments["destination"]


def _beside_destination(bound: inspect.BoundArguments) -> Path:
    """Where the output's temporaries are: beside it (inside it, for a folder that is a mount point or
    whose parent may not be written: under this too)."""
    return Path(bound.arguments["destination"]).absolute().parent


# The keys of an archive's metadata that zoo writes itself, and what each holds: a caller's value
# replaced the pipeline the writer records, and one under the others was read as zoo's own (`zoo
# info` printed a caller's "quality" as figures "against None"; a zoo rebuilds a model's manifest
# from "zoo"; a file whose "object" is a dict is checked as one of a zoo's objects).
RESERVED_METADATA = {
    "pipeline": "the pipeline spec",
    "quality": "the quality figures of --eval and check_quality",
    "verify": "the quality figures, in older archives",
    "budget": "the proof and trail of --budget",
    "zoo": "the record of a model in a zoo",
    "object": "the record of an object in a zoo",
}


def _check_metadata(metadata: Any, into_a_zoo: bool = False, own_keys: bool = False) -> None:
    """Metadata for an archive's header: a dict that JSON holds, checked before any work (json
    refused an object() once the model was coded). Strict JSON (FORMAT.md): a NaN or an infinity
    was written as a bare NaN token, which JSON has not. None of zoo's own keys, but for "zoo"
    `into_a_zoo` (compress_into's record of the model), and any with `own_keys` (zoo writing them)."""
    if metadata is None:
        return
    if not isinstance(metadata, dict):
        raise InputError(f"metadata is a dict of JSON values, not {type(metadata).__name__}")
    where = _key_not_str(metadata, "metadata")
    if where is not None:
        raise InputError(f"{where}: JSON's keys are strings")
    try:
        json.dumps(metadata, sort_keys=True)  # as the header is written
    except (TypeError, ValueError) as error:
        raise InputError(f"metadata is not JSON: {error}") from None
    where = _non_finite(metadata, "metadata")
    if where is not None:
        raise InputError(f"{where} is NaN or infinite, which the header's JSON cannot hold")
    for key in metadata:
        if key in RESERVED_METADATA and not own_keys and not (key == "zoo" and into_a_zoo):
            raise InputError(f"metadata[{key!r}] is zoo's own ({RESERVED_METADATA[key]}): choose another key")


def _key_not_str(value: Any, where: str) -> str | None:
    """Where in `value` a dict has a key that is no str, or None: json.dumps writes 1 as "1" (read
    back as another key), and fails on one beside str keys only as it sorts them, once the model is coded."""
    return _first_in(value, where, lambda item, at: next((f"{at} has the key {key!r} ({type(key).__name__})" for key in item
                                                           if not isinstance(key, str)), None) if isinstance(item, dict) else None)


def _non_finite(value: Any, where: str) -> str | None:
    """Where in `value` (JSON that json.dumps took) a NaN or an infinity lies, or None."""
    return _first_in(value, where, lambda item, at: at if isinstance(item, float) and not math.isfinite(item) else None)


def _first_in(value: Any, where: str, said: Callable[[Any, str], str | None]) -> str | None:
    """What `said` says of the first value in `value`, itself or nested in its dicts and lists
    (where: `metadata['a'][0]`), that it says anything of; None where it says nothing of any."""
    found = said(value, where)
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, (list, tuple)) else ()
    for key, item in items:
        if found is not None:
            break
        found = _first_in(item, f"{where}[{key!r}]", said)
    return found


@_names_a_full_disk(_destination, within=_beside_destination)
def compress(
    source: str | os.PathLike[str],
    destination: str | os.PathLike[str],
    pipeline: str | Pipeline | None = DEFAULT_SPEC,
    *,
    threads: int | None = None,
    force: bool = False,
    metadata: dict[str, Any] | None = None,
    chunk_bytes: int = CHUNK_BYTES,
    progress: Progress | None = None,
    calibration: str | os.PathLike[str] | None = None,
    check: Callable[[Path], Any] | None = None,
    base: str | os.PathLike[str] | None = None,
    stage_progress: StageProgress | None = None,
    include: list[str] | None = None,
    exclude: list[str] | None = None,
    follow_links: bool = False,
    objects: ObjectSink | None = None,
    check_sources: Callable[[list[SourceFile]], Any] | None = None,
) -> Report:
    """Compress a model folder or file into one archive at `destination`. `calibration` is a
    text file whose activations guide the lossy stages that use them (see zoo.optimize.calibration).
    `progress(bytes)` counts the source bytes as they are written, up to the source's size
    whatever the pipeline codes them to (a lossy stage's parts are fewer bytes); `stage_progress(stage, done,
    total)` follows the phases before that (COMPRESS_STAGES), which a lossy pipeline can spend
    minutes in.
    `check(path)` sees the finished archive under its temporary name before it is put in place
    (check_quality is one); when it raises, nothing is left at `destination`. With `base` (the
    model the source was fine-tuned from: safetensors file or folder, archive or zoo name), the
    tensors a lossy stage selects are stored as their difference from it (see zoo.container.delta).
    `include`/`exclude` (fnmatch globs on paths inside the folder) choose its files; a link leading
    out of the folder is refused unless `follow_links` (see zoo.sources.folder). With `objects`
    (a zoo.container.objects.ObjectSink: what compress_into passes), each tensor and run of file
    bytes becomes an object there and `destination` is the archive that names them.
    `check_sources(files)` sees what the scan found before anything is coded, and may raise
    (compress_into refuses names its zoo cannot hold). `metadata` joins the header's: strict JSON
    (no NaN or infinity), under keys other than zoo's own (RESERVED_METADATA)."""
    started = time.perf_counter()
    check_path(source, "the model to compress")
    check_path(destination, "the archive to write")
    if calibration is not None:
        check_path(calibration, "the calibration text")
    if base is not None and not isinstance(base, BaseModel):  # before the check that it is not the output
        check_path(base, BASE_MODEL)
    _check_metadata(metadata, into_a_zoo=objects is not None)
    chosen = pipeline if isinstance(pipeline, Pipeline) else Pipeline.parse(DEFAULT_SPEC if pipeline is None else pipeline)
    refuse_an_archive(Path(source))
    sources = scan(source, include, exclude, follow_links)
    if check_sources is not None:
        check_sources(sources)
    if not os.fspath(destination):  # Path("") is the current folder
        raise InputError("no output given: name the archive to write")
    destination = Path(destination)
    if destination.resolve() in {s.path.resolve() for s in sources}:
        raise InputError(f"{destination}: output would overwrite its own input")
    if objects is None:  # compress_into writes its archive in the zoo's work folder
        refuse_inside_the_zoo(destination)
        check_output(destination, force, is_dir=False)  # before the survey and calibration, which take minutes
    builder = Builder(chosen, chunk_bytes, metadata, objects=objects)
    if os.path.isdir(source):  # a 0700 model folder comes back 0700, as its folders inside do
        builder.root_mode = stat.S_IMODE(os.stat(source).st_mode) & 0o777  # no set-id or sticky bits, as for the folders in it
    builder.refuse_oversized_header(sources, source)  # before the survey and the coding, which take minutes on such a model
    with ExitStack() as stack:
        base_model = open_base(base) if base is not None else None
        if base_model is not None and base_model is not base:
            stack.enter_context(base_model)
        if base_model is not None:  # the archive would need the base it replaced: neither could be read again
            base_model.refuse_writing_over([destination])
        deltas = (Deltas(base_model, chosen, Builder.named_tensors(sources, chosen))
                  if base_model is not None and chosen.array_stages else None)
        plans = None
        if chosen.array_stages:
            from zoo.optimize.calibration import collect

            statistics = collect(source, calibration, progress=stage_progress) if calibration is not None else None
            if statistics is not None and deltas is not None:
                statistics.base = deltas  # the teacher then runs base + delta (zoo.optimize.teacher)
            plans = chosen.survey(lambda: Builder.tensors(sources, deltas, chosen), statistics, stage_progress, chunk_bytes)
        builder.plans, builder.deltas = plans, deltas
        with _atomic_output(destination, force, is_dir=False) as temporary:
            _write_archive(temporary, lambda payload: builder.build(sources, payload, resolve_threads(threads), progress),
                           durable=objects is None,  # a zoo syncs a model's files together
                           room=builder.header_room(sources))
            if check is not None:
                check(temporary)
            with Archive(temporary) as written:  # read back before it is published: one its own reader refuses never is
                report = _report(written, destination)
                _warn_of_idle_stages(written, chosen)
    report.seconds = time.perf_counter() - started
    return report


def _warn_of_idle_stages(opened: Archive, pipeline: Pipeline) -> None:
    """A lossy stage that coded no tensor is said in a warning: it selects none (an include that
    matches nothing, only vectors or integers), or an earlier stage took every one it selects
    (truncate's output goes on to no other lossy stage). It ran silently, exit 0, as if it had."""
    if not pipeline.array_stages:
        return
    used: set[int] = set()
    for key in opened.keys():
        walk = [opened.tensor_info(key).get("root")]
        while walk:
            node = walk.pop()
            if isinstance(node, dict) and isinstance(node.get("stage"), int):
                used.add(node["stage"])
                walk += list((node.get("parts") or {}).values())
    for index, stage in enumerate(pipeline.array_stages):
        if index not in used:
            warnings.warn(f"stage {index + 1} of the pipeline ({stage.codec_id}) coded no tensor: it selects none, "
                          "or an earlier stage took each one it selects", ZooWarning, stacklevel=4)  # compress's caller


def update_metadata(archive: str | os.PathLike[str], updates: dict[str, Any], *, own_keys: bool = False) -> None:
    """Merge `updates` into an archive's metadata (a None value removes its key), checked as
    compress(metadata=...) checks it: strict JSON, and none of zoo's own keys (RESERVED_METADATA)
    but with `own_keys`, for zoo's own records (check_quality's figures, --budget's proof). The
    payload is copied unchanged under the new header into a temporary file that then replaces the
    archive; an archive that is a symbolic link is updated where the link points, and stays a link
    (it was replaced by a file, and the archive it named never got the update)."""
    check_path(archive, "the archive to update")
    if updates is None:  # compress's "no metadata" is no update here
        raise InputError("metadata is a dict of JSON values, not NoneType")
    _check_metadata(updates, own_keys=own_keys)
    path = Path(archive)
    # a stored object rewritten in place would no longer be what its name says; zoo's own records
    # (check_quality, --budget) are written into archives its jobs make in the zoo's work folder
    refuse_inside_the_zoo(Path(os.path.realpath(path)), work_allowed=own_keys)
    opened = ArchiveFile(path)
    try:
        header = dict(opened.header)
        metadata = {**(header.get("metadata") or {}), **updates}
        header["metadata"] = {key: value for key, value in metadata.items() if value is not None}
        mode = stat.S_IMODE(os.stat(path).st_mode)
        with _atomic_output(Path(os.path.realpath(path)), force=True, is_dir=False) as temporary:
            assemble(temporary, header, path, opened.payload_start)
            os.chmod(temporary, mode)
    finally:
        opened.close()


def check_quality(archive: str | os.PathLike[str], source: str | os.PathLike[str], gates: Any = None,
                  progress: Callable[[str, int, int], None] | None = None, base: str | os.PathLike[str] | None = None,
                  label: str | None = None, selection: dict[str, Any] | None = None) -> Any:
    """The step behind `zoo compress --eval`: evaluate `archive` against the `source` it was
    made from (bit for bit when every file is lossless, else as a model; see zoo.evaluate), store
    the figures under metadata["quality"] (archives made before it was renamed keep them under
    "verify", which readers still take), and raise QualityGateError when a zoo.evaluate.Gates
    trips. Given to compress as `check`, that leaves no archive behind. Returns the EvalResult.
    `base` is the base the archive was made against (compress(base=...)): the model evaluated is
    that base plus the decoded differences. `label` names the archive in the figures and their
    notes, which are stored: as a `check`, compress hands over the archive under a temporary name.
    `selection` (include=, exclude=, follow_links=) is what compress was given: the source's files
    it left out are not compared."""
    from zoo.evaluate import QualityGateError, verify_archive

    try:
        result = verify_archive(archive, source, gates=gates, progress=progress, base=base, selection=selection)
    except InputError as error:  # a gate that cannot judge the archive names it by its label, not its temporary name
        if label is None or str(archive) not in str(error):
            raise
        raise InputError(str(error).replace(str(archive), label)) from None
    if label is not None:
        result.candidate = label
        result.notes = [note.replace(str(archive), label) for note in result.notes]
        result.failures = [failure.replace(str(archive), label) for failure in result.failures]
    if not result.passed:
        raise QualityGateError(f"{source}: the compressed model fails its quality check: {'; '.join(result.failures)}; "
                               "no archive was kept", result)
    update_metadata(archive, {"quality": result.record()}, own_keys=True)
    return result


@_names_a_full_disk(lambda bound: bound.arguments["store"].location, within=lambda bound: bound.arguments["store"].work.absolute())
def compress_into(store: Store, source: str | os.PathLike[str], name: str, revision: str = DEFAULT_REVISION,
                  pipeline: str | None = None, *, commit: str | None = None, source_label: str | None = None, force: bool = False,
                  threads: int | None = None, progress: Progress | None = None, check: Callable[[Path], Any] | None = None,
                  base: str | None = None, delta: bool = True, **options: Any) -> Entry:
    """Compress a model folder or file straight into the zoo `store` as NAME@REVISION: each
    distinct tensor and run of file bytes is an object the zoo stores once (docs/STORE.md). With a
    lossless pipeline, tensors that differ from a base model's are stored as their XOR against
    it where that is smaller: the base named by `base` (a zoo name), else the one the source
    names or most resembles (zoo.hub.deltas); `delta=False` turns that off (and refuses a `base`). `check(path)` may
    inspect the model (and raise) before it enters; `options` go to compress()."""
    from zoo.hub import deltas as xor

    check_name(name)
    check_revision(revision)
    chosen = Pipeline.parse(pipeline or DEFAULT_SPEC)
    spec = chosen.spec()
    ref = f"{name}@{revision}:{store.stored_variant(name, revision, variant_of(spec))}"  # an older zoo's label for it, where it has one
    if not force and store.exists_ref(name, revision, variant_of(spec)):
        raise OutputExistsError(f"{ref} is already in the zoo; pass --force to replace it")
    if base is not None and not delta:
        raise InputError("--base names the model to store XORs against, and --no-delta stores none: leave out one of them")
    if base is not None and chosen.array_stages:
        raise InputError("--base with lossy stages makes an archive that needs its base to load, which the zoo does not store: "
                         "give -o OUT.zoo")
    named_base = xor.resolve_base(store, base, ref) if base is not None and delta else None
    from zoo.evaluate.result import QualityGateError

    with store.workspace() as folder:
        sink = ObjectSink(folder / "objects" / "sha256", store.existing_object, resolve_threads(threads))
        shell = build_model(store, sink, source, name, revision, chosen, commit=commit, source_label=source_label, threads=threads,
                            progress=progress, base=named_base, delta=delta, replacing=ref if force else None, **options)
        if check is not None:
            try:
                check(shell)
            except QualityGateError as error:
                error.ref = ref  # where it was going (compress --json says so)
                raise
        entry = store.add_composed(shell, sink, name, revision, commit=commit, source=source_label, force=force)
    warn_of_other_weights(store, entry)
    return entry


def warn_of_other_weights(store: Store, entry: Entry) -> None:
    """Warn of the variants of entry's NAME@REVISION made from other weights than it (the
    original files they share differ): what a --force replaced or a changed source leaves beside
    it, which `zoo ls` would list as the same model."""
    stored = store.entries(entry.name, with_files=True)
    mine = next((e for e in stored if e.ref == entry.ref), None)
    if mine is None:
        return
    # the weights: the files a lossy variant codes with loss, or that hold tensors (or are as large
    # as the Hub keeps in LFS) where both variants are lossless; a config or a README that changed
    # is no other model
    originals = {f.path: f for f in mine.files}
    others = [e.ref for e in stored if e.revision == entry.revision and e.variant != entry.variant
              and any(f.path in originals and originals[f.path].sha256 != f.sha256
                      and (not (f.lossless and originals[f.path].lossless) or f.lfs or originals[f.path].lfs) for f in e.files)]
    if others:
        warnings.warn(f"{', '.join(others)} {'was' if len(others) == 1 else 'were'} made from other weights than {entry.ref}, "
                      f"just stored (`zoo rm {shlex.quote(others[0])}` removes {'it' if len(others) == 1 else 'the first'})", ZooWarning,
                      stacklevel=3)


def refuse_unstorable_names(files: list[SourceFile], source_label: str | None) -> None:
    """What Store._publish (and add_put, for a batch into a bucket) refuses, refused once the folder
    is scanned, before the coding: a path of the model's files (its links and folders are none of
    its manifest's) or a source that is not UTF-8."""
    refuse_names_not_utf8([*(file.relpath for file in stored_files(files)), source_label or ""])


def build_model(store: Store, sink: ObjectSink, source: str | os.PathLike[str], name: str, revision: str, pipeline: Pipeline, *,
                commit: str | None = None, source_label: str | None = None, threads: int | None = None, progress: Progress | None = None,
                base: Entry | None = None, delta: bool = True, replacing: str | None = None, bases_among: set[str] | None = None,
                **options: Any) -> Path:
    """The work of compress_into before it publishes: the model's objects coded into `sink` (a
    folder of one of `store`'s work folders) and its shell beside them, whose path is returned;
    with a lossless pipeline and `delta`, tensors stored as XORs against `base`, else against the
    base found among the zoo's models (never `replacing`). With `bases_among` (refs) only those
    models are looked at as bases: zoo.batch runs it in its workers, each model seeing the zoo as
    it was when the batch began, whatever the order they land in. Store.add_composed publishes
    the result."""
    from zoo.hub import deltas as xor

    # the archive carries what its manifest holds, so the zoo can be rebuilt from its objects alone
    # the caller's metadata (compress_into(metadata=...)) beside zoo's own record, which it may not take
    given = options.pop("metadata", None)
    _check_metadata(given)
    metadata = {**(given or {}), **({"source": source_label} if source_label else {}),
                "zoo": {"name": name, "revision": revision, "commit": commit}}
    shell = sink.root / "00" / "model.zoo"
    shell.parent.mkdir(parents=True)
    compress(source, shell, pipeline, threads=threads, progress=progress, metadata=metadata, objects=sink,
             check_sources=lambda files: refuse_unstorable_names(files, source_label), **options)
    if delta and not pipeline.array_stages:
        with Archive(shell, objects_root=sink.root) as opened:
            found = base or xor.find_base(store, Path(source), opened, replacing, bases_among)
        if found is not None and isinstance(found.base, dict):
            # what the base needs, as its chain of bases says, not as an older zoo's manifest may
            # (a sibling fine-tune), goes into this model's
            from zoo.hub.store import with_chained_needs

            found = replace(found, base=with_chained_needs(found.base, {e.ref: {"base": e.base} for e in store.entries()}))
        if found is not None:
            try:
                xor.store_as_deltas(shell, sink, found, sink.existing, resolve_threads(threads))
            except FormatError as error:  # the base's objects are damaged or missing: the model is whole without XORs
                warnings.warn(f"{found.ref} cannot be read as a base ({error}); stored without XORs against it", ZooWarning,
                              stacklevel=2)
                held = ArchiveFile(shell)
                try:
                    named = object_names(held.header)
                finally:
                    held.close()
                for key in [key for key in sink.written if key not in named]:  # the XORs it had coded
                    object_path(sink.root, key).unlink(missing_ok=True)
                    del sink.written[key]
                for key in [key for key in sink.reused if key not in named]:  # and the base's objects it had taken
                    object_path(sink.root, key).unlink(missing_ok=True)
                    del sink.reused[key]
    return shell


# -- reading ---------------------------------------------------------------------------------


def _open(ref: str | os.PathLike[str], base: BaseModel | str | os.PathLike[str] | None = None, read_once: bool = False) -> Archive:
    """The archive `ref` names (a path or a zoo name), with the base it is read against, if any.
    `read_once`, for a caller that decodes each chunk once (decompress, verify): the chunks are
    decoded out of the mapped archive, not out of a copy pread makes of each (see ArchiveFile)."""
    path = archive_path(ref)
    base_model = None if base is None else open_base(base)
    return Archive(path, base_model, owns_base=base_model is not None and base_model is not base, mapped=read_once, read_once=read_once)


def open_archive(archive: str | os.PathLike[str], base: BaseModel | str | os.PathLike[str] | None = None) -> Archive:
    """Open an archive, or a model in the zoo, for lazy per-tensor reads (exported as zoo.open).
    `base` is the model that an archive made with `compress(base=...)` needs. Every file's tensors
    are there, keyed by name, or `path::NAME` where another file has the name (docs/FORMAT.md):
    the keys load_state_dict gives, so that `get_tensor(name)` is the tensor of the state dict's
    `name`; but in archives of zoo before 2026-12-07, whose names went by path alone to a variant or
    a checkpoint that sorts before the safetensors beside it (model.fp16.safetensors, ema.pt)."""
    return _open(archive, base)


def load_state_dict(source: str | os.PathLike[str], device: str | None = None, threads: int | None = None,
                    base: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Every tensor of an archive or zoo model as a torch tensor, keyed by tensor name, or by
    `path::NAME` where another file has the name: the names go to the files nearer the top, and
    in a folder to the weights transformers loads (its weights files, safetensors first, before
    other files; a variant such as model.fp16.safetensors after them all: writer.naming_order). These are zoo.open's keys, and
    `zoo.open(source).get_tensor(name)` the tensor under `name` here, but in archives of zoo before
    2026-12-07, which gave the names by path alone: this names their tensors as now. A tensor of
    a dtype torch lacks is left out, each named in one warning; so is the storage of a PyTorch
    checkpoint's tensors that view only part of it (`NAME.__storage__`): the checkpoint has no such
    key. Where a folder holds its weights twice, the safetensors' copy is given, as transformers
    loads it: a torch checkpoint that holds the safetensors' tensors again (the same values, told
    from their coding, nothing decoded) is left out, and so are transformers' own checkpoint
    (pytorch_model.bin) beside its safetensors, whatever it holds, and a variant of the weights
    files (one warning names the files left out); another checkpoint of those names and other
    values (an EMA) is kept, under `path::NAME` (a warning says so). Tensors zoo keeps in their file's bytes only are left out, their
    files named in one warning with why: a file it keeps whole (a pickle that needs globals, a
    git-lfs pointer), a checkpoint's tensors of a dtype zoo has no name for (complex128), every
    torch checkpoint in archives of older versions."""
    from zoo.sources.torch import is_storage_name
    from zoo.torch_bridge import check_device, has_torch_dtype, to_torch

    if device is not None:  # 0 is the first accelerator, as torch reads it
        check_device(device)  # before any tensor is decoded
    with _open(source, base) as opened:
        opened.require_base()
        files = {entry["path"]: entry for entry in opened.files()}
        storages = {key for entry in files.values() for key in entry.get("storages", ())}

        def is_storage(key: str) -> bool:  # archives from before files listed their storages tell them by name
            entry = files.get(opened.tensor_info(key).get("file"), {})  # none: an object's one tensor
            if "storages" in entry:
                return key in storages
            return entry.get("kind") == "torch" and is_storage_name(opened.tensor_info(key)["name"])

        left_out = _kept_as_bytes(opened, files, [key for key in opened.keys() if is_storage(key)])
        if left_out:  # compress said so too, but to whoever compressed it
            # a file kept whole (training_args.bin) may hold no tensor at all: the warning claims none
            warnings.warn(f"{', '.join(left_out)}: kept in the file's bytes only, so left out of the state dict (the tensors "
                          "named; of a file kept whole, whatever it holds); `zoo decompress` gives each file back whole",
                          ZooWarning, stacklevel=2)
        keys, named_as = _one_copy_of_the_weights(opened, [key for key in opened.keys() if not is_storage(key)], files)
        missing = [key for key in keys if not has_torch_dtype(opened.tensor_info(key)["dtype"])]
        if missing:
            named = "; ".join(f"{key} ({opened.tensor_info(key)['dtype']})" for key in missing)
            warnings.warn(f"no torch dtype for {named}: left out", ZooWarning, stacklevel=2)
        wanted = [key for key in keys if key not in missing]
        # A view (tied weights, slices of one storage) shares its storage's memory, as torch.load
        # gives it: each storage is decoded once, and a view costs no bytes of its own.
        views = {key: opened.view_layout(key) for key in wanted if "view" in opened.tensor_info(key)
                 and opened.tensor_info(key)["dtype"] != "F4"}  # F4's views count bytes: read as copies
        decoded = [key for key in wanted if key not in views]
        decoded += sorted({of for of, *_ in views.values()} - set(decoded))
        tensors = {key: to_torch(array, device) for key, array in opened.read_tensors(decoded, resolve_threads(threads)).items()}
        for key, (of, shape, stride, offset) in views.items():
            storage = tensors[of]
            tensors[key] = storage.as_strided(shape, stride, storage.storage_offset() + offset)
        return {named_as.get(key, key): tensors[key] for key in wanted}


def _kept_as_bytes(opened: Archive, files: dict[str, dict[str, Any]], storages: list[str]) -> list[str]:
    """'path (why)' for each file whose tensors, or some of them, a state dict cannot have: a
    file zoo keeps as bytes (a pickle that needs globals, a git-lfs pointer), a torch storage no
    tensor views (its tensors of a dtype zoo has no name for: complex128), and the typed runs of
    bytes an older zoo kept a torch checkpoint's storages as."""
    from zoo.sources.torch import STORAGE_SUFFIX

    unviewed: dict[str, list[str]] = {}
    viewed = {opened.tensor_info(key)["view"].get("of") for key in opened.keys()
              if isinstance(opened.tensor_info(key).get("view"), dict)}
    for key in storages:  # a storage named for a tensor (NAME.__storage__), not only for its key
        info = opened.tensor_info(key)
        if key not in viewed and info["name"].endswith(STORAGE_SUFFIX):
            unviewed.setdefault(info["file"], []).append(info["name"].removesuffix(STORAGE_SUFFIX))
    older = set(opened.typed_runs())
    said = []
    for path, entry in files.items():
        if entry.get("opaque"):
            said.append(f"{path} ({entry['opaque']})")
        elif path in unviewed:
            names = sorted(unviewed[path])
            said.append(f"{path} ({', '.join(names[:8])}{f' and {len(names) - 8} more' if len(names) > 8 else ''})")
        elif path in older:
            said.append(f"{path} (kept by an older zoo, or of a dtype zoo has no name for)")
    return said


def _one_copy_of_the_weights(opened: Archive, keys: list[str], files: dict[str, dict[str, Any]]) -> tuple[list[str], dict[str, str]]:
    """Where a folder holds its weights twice, the copy transformers loads: a torch checkpoint
    whose tensors are mostly the safetensors' beside it again, each it shares a name with holding
    the same values (a Hub repository's pytorch_model.bin beside model.safetensors), is left out
    whole (its tied lm_head too: transformers ties it anew), and so is a variant of the weights
    files (model.fp16.safetensors beside model.safetensors). A checkpoint of those names and
    other values (ema.pt) is kept, each such file said in a warning with where its tensors are.
    The state dict held both copies, which model.load_state_dict refused, or handed the fp16
    variant, which sorts first, under the names; by names alone, an EMA of the weights was left
    out as their copy. Returns the keys kept and, where the archive keys them otherwise (one of an
    older zoo: _named_as_written_now), their names in the state dict."""
    if not files:  # an object: one tensor of no file
        return keys, {}
    info = {key: opened.tensor_info(key) for key in keys}
    folder = {key: info[key]["file"].rpartition("/")[0] for key in keys}
    named = {path: (path.rpartition("/")[0], path.rpartition("/")[2]) for path in files}
    with_weights = {where for where, name in named.values() if WEIGHTS_FILE.fullmatch(name)}
    with_safetensors_weights = {where for where, name in named.values() if WEIGHTS_FILE.fullmatch(name) and name.endswith(".safetensors")}
    variants = {path for path, (where, name) in named.items() if where in with_weights and VARIANT_FILE.fullmatch(name)}
    in_safetensors: dict[tuple[str, str], list[str]] = {}  # (folder, name): the keys transformers would load there
    in_weights: dict[str, set[str]] = {}  # by folder: what its weights files (not their variants) hold
    by_file: dict[str, list[str]] = {}
    for key in keys:
        path = info[key]["file"]
        by_file.setdefault(path, []).append(key)
        if path in variants:
            continue
        if WEIGHTS_FILE.fullmatch(named[path][1]):
            in_weights.setdefault(folder[key], set()).add(info[key]["name"])
        if files.get(path, {}).get("kind") == "safetensors":
            in_safetensors.setdefault((folder[key], info[key]["name"]), []).append(key)

    def mostly(held: list[str], names: Callable[[str], bool]) -> bool:
        return 2 * sum(names(key) for key in held) > len(held)

    def in_weights_beside(key: str) -> bool:
        return info[key]["name"] in in_weights.get(folder[key], ())

    def in_safetensors_beside(key: str) -> bool:
        return (folder[key], info[key]["name"]) in in_safetensors

    def the_same(key: str) -> bool:
        """Whether a tensor holds the values of a safetensors tensor of its name beside it: told
        from their coding (Archive.coded_as); a view (a tied weight) holds no coding of its own,
        and is decoded."""
        beside = in_safetensors[(folder[key], info[key]["name"])]
        if "view" not in info[key]:
            return any(opened.coded_as(key) == opened.coded_as(other) for other in beside)
        mine = opened.read_tensor(key)
        for other in beside:
            theirs = opened.read_tensor(other)
            if (theirs.dtype, theirs.data.shape) == (mine.dtype, mine.data.shape) and theirs.data.tobytes() == mine.data.tobytes():
                return True
        return False

    alike = {path: held for path, held in by_file.items() if path not in variants and files.get(path, {}).get("kind") == "torch"
             and mostly(held, in_safetensors_beside)}
    again, replaced, differing = [], [], []
    for path in sorted(alike):
        # views last: they are decoded to be compared
        shared = sorted((key for key in alike[path] if in_safetensors_beside(key)), key=lambda key: "view" in info[key])
        if all(the_same(key) for key in shared):
            again.append(path)
        elif named[path][0] in with_safetensors_weights and WEIGHTS_FILE.fullmatch(named[path][1]):
            # transformers' own checkpoint (pytorch_model.bin beside model.safetensors), which it
            # leaves out whatever it holds: a Hub repository's float16 .bin beside float32
            # safetensors is their copy too, and kept, its keys were more than a strict load takes
            replaced.append(path)
        else:
            differing.append(path)
    other = sorted(path for path, held in by_file.items() if path in variants and mostly(held, in_weights_beside))
    if again:
        warnings.warn(f"{', '.join(again)} {'holds' if len(again) == 1 else 'hold'} the weights of the safetensors beside "
                      f"{'it' if len(again) == 1 else 'them'} again: left out of the state dict, as transformers leaves "
                      f"{'it' if len(again) == 1 else 'them'} (zoo.open reads every file)", ZooWarning, stacklevel=3)
    for path in replaced:
        warnings.warn(f"{path} is transformers' checkpoint of the weights beside it, of other values: left out of the state dict, "
                      "as transformers loads the safetensors where both are (zoo.open reads every file)", ZooWarning, stacklevel=3)
    named_as = _named_as_written_now(opened, keys, files)
    for path in differing:
        shared = [key for key in alike[path] if in_safetensors_beside(key)]
        if all(named_as.get(key, key) != info[key]["name"] for key in shared):
            where = f"under `{path}::NAME`"
            if any(key == info[key]["name"] for key in shared):  # an archive of an older zoo: its keys name them otherwise
                where += " (zoo.open reads them under the names, as this archive, of an older zoo, keys them)"
        else:  # a name that holds `::` itself: the keys as stored
            where = "under the names"
        warnings.warn(f"{path} holds tensors named as the safetensors' beside it, of other values: kept in the state dict, {where}",
                      ZooWarning, stacklevel=3)
    if other:
        warnings.warn(f"{', '.join(other)} {'is a variant' if len(other) == 1 else 'are variants'} of the weights beside "
                      f"{'it' if len(other) == 1 else 'them'}: left out of the state dict, as transformers leaves "
                      f"{'it' if len(other) == 1 else 'them'} unless asked for a variant (zoo.open reads every file)", ZooWarning, stacklevel=3)
    left = {*again, *replaced, *other}
    kept = [key for key in keys if info[key]["file"] not in left]
    return kept, {key: named_as[key] for key in kept if key in named_as}


def _named_as_written_now(opened: Archive, keys: list[str], files: dict[str, dict[str, Any]]) -> dict[str, str]:
    """The keys of an archive written before tensor_keys gave a folder's names to the weights
    transformers loads (zoo before 2026-12-07), each with the key zoo gives it now, where they
    differ: the tensor of the file that comes first in writer.naming_order takes the plain name,
    and the one that held it, `path::NAME`. The state dict of a folder is then the same whichever
    zoo wrote its archive. None where that key is taken already (a name that holds `::` itself)."""
    order = naming_order((path, entry.get("kind", "")) for path, entry in files.items())
    info = {key: opened.tensor_info(key) for key in keys}
    holders: dict[tuple[int, str], list[str]] = {}  # (depth, name): the keys of that name at that depth
    for key in keys:
        holders.setdefault((info[key]["file"].count("/"), info[key]["name"]), []).append(key)
    named_as: dict[str, str] = {}
    for key in keys:
        name, path = info[key]["name"], info[key]["file"]
        if key != name:
            continue
        first = min(holders[(path.count("/"), name)], key=lambda other: order[info[other]["file"]])
        if first != key and f"{path}::{name}" not in opened:
            named_as[first], named_as[key] = name, f"{path}::{name}"
    return named_as


def report_of(archive: str | os.PathLike[str]) -> Report:
    """Sizes of an existing archive (or zoo model), from its header and chunk indexes."""
    archive = archive_path(archive)
    with Archive(archive) as opened:
        return _report(opened, archive)


def _report(opened: Archive, archive: str | os.PathLike[str]) -> Report:
    """report_of an archive already open (its objects read through the descriptors it holds)."""
    tensors = []
    parameters = 0
    for key in opened.keys():
        info = opened.tensor_info(key)
        stored = opened.stored_bytes(key)
        view = "view" in info  # a torch checkpoint's tensor sharing another's storage: no bytes of its own
        pipeline = f"view of {info['view'].get('of')}" if view else opened.pipeline_of(info.get("pipeline")).spec()  # none: damage
        if "xor" in info:
            pipeline += f" (XOR against the base's {info['name']})"
        tensors.append(TensorReport(key, info.get("file", ""), info["dtype"], list(info["shape"]), 0 if view else leaf_bytes(info), stored,
                                    pipeline, "base" in info))
        if info["dtype"] in DTYPES and DTYPES[info["dtype"]].is_float and not view:
            parameters += math.prod(info["shape"])
    files = opened.files()
    needed = opened.base_needed()
    return Report(
        archive=str(archive),
        original_bytes=sum(f["size"] for f in files),
        compressed_bytes=stored_size(opened),
        parameters=parameters,
        tensors=tensors,
        files=files,
        metadata=opened.metadata(),
        base=None if needed is None else {"hint": needed["hint"], "tensors": len(opened.base_tensors())},
    )


@_names_a_full_disk(_destination, within=_beside_destination)
def export_archive(source: str | os.PathLike[str], destination: str | os.PathLike[str], *, force: bool = False) -> Report:
    """Write a model (a zoo name or an archive) as one archive that stands alone: the objects it
    names are copied in, coded as they are (`zoo export --archive`)."""
    import shutil

    destination = Path(destination)
    refuse_inside_the_zoo(destination)
    with _open(source) as opened:
        with _atomic_output(destination, force, is_dir=False) as temporary:
            if "objects" not in (opened.header().get("features") or []):
                shutil.copyfile(opened.path, temporary)
            else:
                _write_archive(temporary, lambda payload: standalone(opened, payload))
    return report_of(destination)


def stored_size(opened: Archive) -> int:
    """The bytes an archive takes: its file, plus every object it names when it lives in a zoo."""
    names = object_names(opened.header())
    size = opened.file_size  # as opened: the file may have been removed since
    for name in names:
        size += object_file_size(object_path(opened.objects_root, name)) or 0  # a missing one: reading it says so
    return size


def verify(archive: str | os.PathLike[str], threads: int | None = None, base: str | os.PathLike[str] | None = None) -> list[str]:
    """Check every checksum and every recorded sha256; returns the problems found. Tensors stored
    against a base are rebuilt (and the base checked) only when `base` is given."""
    with _open(archive, base, read_once=True) as opened:
        if base is not None:
            opened.require_base()  # a wrong base is an error of the caller's, not damage of the archive
        return opened.verify(resolve_threads(threads), _manifest_hashes(archive, opened.path))


def _manifest_hashes(ref: str | os.PathLike[str], path: Path) -> dict[str, str] | None:
    """For a model of the zoo: the sha256 its manifest records of each file as decoding gives it
    (served_sha256: what zoo serve announces as the file's ETag and LFS oid), for verify to hold a
    lossy file's bytes to; None for an archive given by its path."""
    try:
        if Path(ref).is_file():
            return None
    except OSError:  # a name longer than a file name may be (a long variant's ref): no file
        pass
    from zoo.hub.store import Store

    try:
        found = Store().readable(str(ref), with_files=True)
    except ZooError:
        return None
    entry = next((e for e in found if Path(e.archive) == Path(path)), None)
    return None if entry is None else {f.path: f.served_sha256 for f in entry.files}


def _refuse_replacing_what_is_read(opened: Archive, destination: Path, relpaths: list[str]) -> None:
    """Refuses a decompress one of whose files would take the place of the archive it reads, or of
    an object that archive names: with --force, the archive was replaced, and lost. A place is a
    folder's entry, the folder known by its device and inode (the same seen through a link or a
    bind mount); a link there, or another hard link of the archive, is replaced, not the archive."""

    def entry(path: Path) -> tuple[int, int, str] | None:
        try:
            folder = os.stat(path.parent)
        except OSError:
            return None
        return folder.st_dev, folder.st_ino, path.name

    read = {entry(Path(os.path.realpath(path))) for path in (opened.path, *(object_path(opened.objects_root, name)
                                                                            for name in object_names(opened.header())))} - {None}
    for relpath in relpaths:
        if entry(destination / relpath) in read:
            raise OutputExistsError(f"{destination / relpath}: the model's file of that name would replace the archive it comes from; "
                                    "write it into another folder")


def _leaving_holes(descriptor: int) -> Callable[[int, memoryview], None]:
    """positioned_writer's sink for a new, empty file that leaves a hole where a block of the file
    system would hold only zeros, as `cp --sparse=auto` does: a sparse file (1 GiB of which 8 KiB
    were on disk) came back filling all of its size. What is not written of a new file reads as
    zeros, so any run of zeros may go unwritten: the caller sets the file's size when every piece
    is in (a hole at its end), and a block two pieces share is a hole when neither writes in it."""
    write, block = positioned_writer(descriptor), os.fstat(descriptor).st_blksize
    if block <= 0 or block % 8:
        return write

    def sink(offset: int, piece: memoryview) -> None:
        head = min(-offset % block, len(piece))  # up to the piece's first block boundary in the file
        count = (len(piece) - head) // block
        words = np.frombuffer(piece, np.uint64, count=count * block // 8, offset=head).reshape(count, block // 8)
        # a first look at each whole block's first word: a block of weights rarely starts with 8 zero
        # bytes, and only those that do are read whole
        starting_with_zeros = np.flatnonzero(words[:, 0] == 0)
        if count and not len(starting_with_zeros):
            write(offset, piece)
            return
        # the piece cut at the file's block boundaries: its head, its whole blocks, its tail
        bounds = [0, *range(head, head + count * block + 1, block), len(piece)]
        empty = np.zeros(count + 2, dtype=bool)
        empty[1 + starting_with_zeros] = ~words[starting_with_zeros].any(axis=1)
        empty[[0, -1]] = [not np.frombuffer(piece[a:b], np.uint8).any() for a, b in ((0, head), (bounds[-2], len(piece)))]
        runs = np.flatnonzero(np.diff(np.concatenate(([True], empty, [True])).astype(np.int8)))  # where runs of bytes begin and end
        for first, end in zip(runs[0::2].tolist(), runs[1::2].tolist()):
            write(offset + bounds[first], piece[bounds[first]:bounds[end]])

    return sink


# A file at least this large, decompressed on one thread, is hashed on a thread of its own.
HASH_BESIDE_BYTES = 8 << 20


class _HashBeside:
    """sha256 of pieces handed over in order, taken on a thread of its own a few pieces behind:
    decompress on one thread then decodes and writes while the file is hashed beside it, as
    compress's lone coder does. On one thread, in-process: MiniLM 108-110 -> 70-72 ms, a 512 MiB
    BF16 file 583-589 -> 325-333 ms, the same CPU. A piece is kept (not copied) until it is
    hashed: at most DEPTH of them."""

    DEPTH = 4

    def __init__(self) -> None:
        self._sha = hashlib.sha256()
        self._pieces: queue.Queue[memoryview | None] = queue.Queue(self.DEPTH)
        self._failed: BaseException | None = None
        self._abandoned = threading.Event()
        self._thread = threading.Thread(target=self._run, name="zoo-sha256", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._abandoned.is_set():
            try:  # a while at a time: a caller that gave up (__exit__ on an error) puts nothing more
                piece = self._pieces.get(timeout=0.1)
            except queue.Empty:
                continue
            if piece is None:
                return
            if self._failed is None:  # after a failure the pieces are still taken: no put() waits forever
                try:
                    self._sha.update(piece)
                except BaseException as error:  # noqa: BLE001 - raised by hexdigest, in the caller's thread
                    self._failed = error

    def update(self, piece: memoryview) -> None:
        self._pieces.put(piece)

    def hexdigest(self) -> str:
        """After the block, when every piece is in."""
        if self._failed is not None:
            raise self._failed
        return self._sha.hexdigest()

    def __enter__(self) -> _HashBeside:
        return self

    def __exit__(self, kind: type[BaseException] | None, *rest: object) -> None:
        """After every piece: waits for the hash. On an error or a signal, lets the hashing go
        without a word to the queue: Ctrl-C raised in the middle of a put() could leave the queue's
        lock and condition so that the last put woke no one, and decompress -t 1 hung in join()."""
        if kind is not None:
            self._abandoned.set()
            return
        try:
            self._pieces.put(None)
            self._thread.join()
        except BaseException:
            self._abandoned.set()
            raise


@_names_a_full_disk(_destination, within=_beside_destination)
def decompress(
    archive: str | os.PathLike[str],
    destination: str | os.PathLike[str],
    *,
    threads: int | None = None,
    force: bool = False,
    progress: Progress | None = None,
    base: BaseModel | str | os.PathLike[str] | None = None,
) -> Report:
    """Write the model folder back out. Lossless files are checked against their sha256 before
    any of them appears; on any error `destination` is left as it was. Into an existing folder,
    the model's own files replace their namesakes (which needs `force`) and other files stay. `base` is the model that
    an archive made with `compress(base=...)` needs. `progress(bytes)` may be called from
    several threads at once (a sharded model's files are written side by side)."""
    started = time.perf_counter()
    check_path(archive, "the model to read (an archive or a zoo name)")
    check_path(destination, "the folder to write the model into")
    if not os.fspath(destination):  # Path("") is the current folder
        raise InputError("no output given: name the folder to write the model into")
    destination = Path(destination)
    workers = resolve_threads(threads)
    refuse_inside_the_zoo(destination)
    with _open(archive, base, read_once=True) as opened:
        opened.require_base()  # a missing or wrong base fails before the output folder appears
        files = opened.files()
        relpaths = [check_relpath(entry["path"]) for entry in files]
        folders = opened.header().get("folders") or []
        links = [link["path"] for link in opened.links()] + list(opened.hard_links())  # a hard link is written as a file is
        refuse_names_the_locale_would_change([*relpaths, *links, *folders, *(link["target"] for link in opened.links())])
        refuse_inside_the_zoo(destination, [*relpaths, *links, *folders])
        _refuse_replacing_what_is_read(opened, destination, relpaths + links)
        if opened.base_model is not None:
            opened.base_model.refuse_writing_over(destination / relpath for relpath in relpaths + links)
        # the folders this makes get their modes back; those already there are the user's, and keep theirs
        made = [path for path in opened.folder_modes() if not os.path.lexists(destination / path)]
        with _folder_output(destination, relpaths + links, force, folders) as temporary:
            def write(entry: dict[str, Any], threads: int) -> None:
                path = temporary / check_relpath(entry["path"])
                path.parent.mkdir(parents=True, exist_ok=True)
                # the workers write the pieces they decode and hash them, in order, while they are in
                # cache; a lone worker hands a large file's pieces to a thread that hashes beside it
                beside = workers == 1 and entry["size"] >= HASH_BESIDE_BYTES
                # created with the original's permission bits (older archives record none), less what the umask removes, as tar and cp do
                descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                                     0o666 if entry.get("mode") is None else entry["mode"])
                with _HashBeside() if beside else nullcontext(hashlib.sha256()) as digest, open(descriptor, "wb") as out:
                    for piece in opened.iter_file(entry["path"], threads=threads, sink=_leaving_holes(out.fileno()), in_order=digest.update):
                        if progress:
                            progress(len(piece))
                    os.ftruncate(out.fileno(), entry["size"])  # the holes at its end, which no write reached
                if entry.get("lossless") and digest.hexdigest() != entry.get("sha256"):
                    raise ChecksumError(f"{archive}: {entry['path']} decodes to bytes whose sha256 does not match the original")

            shards = sharded(files, workers)  # side by side, a worker each (see zoo.container.reader.SHARD_BYTES)
            for_each(lambda entry: write(entry, 1), shards, workers)
            done = {entry["path"] for entry in shards}
            for entry in files:
                if entry["path"] not in done:
                    write(entry, workers)
            copied, refused = opened.restore_hard_links(temporary)
            if copied:
                warnings.warn(f"{destination}: the file system refused hard links ({refused}); {_listing(copied)} written as "
                              f"{'a copy' if len(copied) == 1 else 'copies'} instead", ZooWarning, stacklevel=3)
            opened.restore_links_and_folders(temporary)
            report = _report(opened, opened.path)  # from the archive as it was read: a `zoo rm` meanwhile is no failure
        opened.restore_folder_modes(destination, made)
    report.seconds = time.perf_counter() - started
    return report


__all__ = ["COMPRESS_STAGES", "Report", "TensorReport", "check_quality", "compress", "compress_into", "decompress", "load_state_dict", "open_archive",
           "report_of", "update_metadata", "verify", "ZooError"]
