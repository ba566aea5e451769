"""What zoo compresses: a model folder or a single file, cut into segments.

A folder is stored whole. Each file is read as tensors where zoo can do that safely (safetensors,
see zoo.sources.safetensors; PyTorch checkpoints, see zoo.sources.torch); any other file, and a
file of those formats that zoo cannot read safely (a pickle needing more than torch's weights-only
unpickler, an unknown dtype, a git-lfs pointer), is kept as opaque bytes with the reason, never
unpickled or executed. Given one file rather than a folder, such a file is refused instead: the
user asked for its tensors.

Links inside the folder stay links; a Hugging Face cache snapshot (files linking into its blobs/)
is read through its links; a link leaving the folder is refused unless follow_links. Hard links stay
hard links: of the names a file has in the folder, the first (nearest the top, then by path) holds
its bytes, and each other is a second name of it. Empty folders are kept.
"""

from __future__ import annotations

import errno
import fnmatch
import os
import re
import stat
import warnings
from collections.abc import Sequence
from pathlib import Path

from zoo.errors import InputError, ZooWarning
from zoo.globs import unclosed_bracket
from zoo.sources.safetensors import UnknownDtype, is_lfs_pointer, parse_safetensors
from zoo.sources.segments import Segment, SourceFile, check_relpath, refuse_names_the_locale_would_change, stamp_of
from zoo.sources.torch import SUFFIXES as TORCH_SUFFIXES
from zoo.sources.torch import UnsafePickle, checkpoint

SKIPPED_FOLDERS = {".git", ".cache"}  # version control and huggingface_hub's download bookkeeping
# A budget search's folder of candidate archives (zoo.evaluate.budget.Session), made beside its
# output: with -o inside the model's folder, each candidate stored the ones before it.
SCRATCH_PREFIX = ".zoo-budget-"
# The names zoo.hub.temporaries gives what it writes beside an output, .OUT.zoo-tmp-<pid>-<8 hex>
# (temporary_prefix), .OUT.zoo-old-... (aside_prefix) and .zoo-payload-... (PAYLOAD_PREFIX): an
# output inside the model's folder, or a killed run's, was stored as the model's own (half a
# decompressed model), or listed, swept by the check of the output, and then missed by the read.
_ZOO_TEMPORARY = re.compile(r"\.(?:.*\.zoo-(?:tmp|old)|zoo-payload)-[0-9]+-[0-9a-f]{8}", re.DOTALL)
MAX_FOLDER_DEPTH = 256  # a model folder is a few levels deep; a Trainer run's checkpoints add two
SKIPPED_NAMED = 20  # the items a warning of what was left out names; a count says the rest (a chain of 1,200 links named each)

__all__ = ["SCRATCH_PREFIX", "SKIPPED_FOLDERS", "Segment", "SourceFile", "check_globs", "check_relpath", "float_weights", "parse_safetensors", "scan"]


def _reason(error: InputError, path: Path, size: int) -> str:
    """The reason, in a few words, that a file of a tensor format is kept as bytes."""
    if is_lfs_pointer(path, size):
        return "git-lfs pointer: the real file was never downloaded"
    if isinstance(error, UnsafePickle):
        if error.needs_globals:
            return "pickle needs globals"
        return f"not a pickle torch.load(weights_only=True) reads: {str(error).rsplit(': ', 1)[-1]}"
    if isinstance(error, UnknownDtype):
        return f"unknown dtype {error.dtype}"
    return str(error).removeprefix(f"{path}: ")


def _source_file(path: Path, relpath: str, strict: bool) -> SourceFile:
    status = path.stat()
    if status.st_size == 0 and _holds_bytes(path):  # /proc/cpuinfo: stored as 0 bytes, and "every sha256 matches"
        if os.stat(path).st_size:  # a download still filling it in
            raise InputError(f"{path}: file changed while being read; nothing was stored (compress it again once it is written)")
        raise InputError(f"{path}: says it holds 0 bytes but reads as more (a file of /proc or /sys): copy it to a regular "
                         "file first")
    source = _read_file(path, relpath, status.st_size, strict)
    source.mode = stat.S_IMODE(status.st_mode) & 0o777  # no set-id or sticky bits: decompress never sets them
    source.stamp = stamp_of(status)
    return source


def _holds_bytes(path: Path) -> bool:
    try:
        with open(path, "rb", buffering=0) as stream:
            return bool(stream.read(1))
    except OSError:
        return False  # unreadable: reading it for the build says why


def _read_file(path: Path, relpath: str, size: int, strict: bool) -> SourceFile:
    suffix = path.suffix.lower()  # MODEL.SAFETENSORS and model.PT are what their names say too
    kind = "safetensors" if suffix == ".safetensors" else "torch" if suffix in TORCH_SUFFIXES else None
    if kind is None:
        return SourceFile(relpath, path, size, "blob", [Segment(0, size)])
    try:
        if kind == "safetensors":
            return SourceFile(relpath, path, size, kind, parse_safetensors(path, size))
        if is_lfs_pointer(path, size):
            raise InputError(f"{path}: git-lfs pointer: the real file was never downloaded")
        return checkpoint(path, relpath, size)
    except InputError as error:
        if strict:
            raise
        return SourceFile(relpath, path, size, "opaque", [Segment(0, size)], reason=_reason(error, path, size))


def float_weights(source: str | os.PathLike[str]) -> int:
    """How many float values the tensors of a model folder or file hold (what bits per weight
    counts), from the files' headers."""
    import math

    from zoo.dtypes import DTYPES

    return sum(math.prod(segment.shape) for file in scan(source) for segment in file.segments
               if segment.tensor is not None and segment.dtype in DTYPES and DTYPES[segment.dtype].is_float)


def _as_list(patterns: Sequence[str] | str | None) -> Sequence[str] | None:
    """One glob given as a string is one pattern, not a pattern per character (a "*" among which
    matched every file)."""
    return [patterns] if isinstance(patterns, str) else patterns


def check_globs(include: Sequence[str] | None, exclude: Sequence[str] | None) -> None:
    """Refuse an --include/--exclude glob that fnmatch would match as text where a set was meant."""
    for option, patterns in (("--include", include), ("--exclude", exclude)):
        for pattern in patterns or ():
            if unclosed_bracket(pattern):
                raise InputError(f"{option} {pattern!r} opens a '[' that no ']' closes")


def selected_by(relpath: str, include: Sequence[str] | None, exclude: Sequence[str] | None) -> bool:
    """Whether a path inside the folder passes the --include/--exclude globs (as huggingface_hub's
    allow_patterns/ignore_patterns match them: a pattern ending in / is that folder's every file)."""
    if include and not any(fnmatch.fnmatchcase(relpath, _folder_glob(pattern)) for pattern in include):
        return False
    return not (exclude and any(fnmatch.fnmatchcase(relpath, _folder_glob(pattern)) for pattern in exclude))


def _folder_glob(pattern: str) -> str:
    return f"{pattern}*" if pattern.endswith("/") else pattern


def _folder_selected(relpath: str, include: Sequence[str] | None, exclude: Sequence[str] | None) -> bool:
    """Whether the globs select an empty folder: named by its path (as the archive stores it) or
    with a / after it (`--include keep_me`, `--exclude keep_me/`)."""
    def named(patterns: Sequence[str]) -> bool:
        return any(fnmatch.fnmatchcase(form, _folder_glob(pattern)) for pattern in patterns for form in (relpath, f"{relpath}/"))

    return (not include or named(include)) and not (exclude and named(exclude))


def _may_select_within(relpath: str, include: Sequence[str], exclude: Sequence[str]) -> bool:
    """Whether the folder at `relpath` (or a link to one) may hold a path the globs select: not
    where an --exclude takes the folder whole, nor where no --include can match under it (the fixed
    start of each pattern, up to its first wildcard, is not on its path)."""
    inside = f"{relpath}/"
    # a pattern that ends in `*` and matches DIR/ matches everything under it; one whose `?` or set
    # matched the `/` (`sub?`) does not
    if exclude and any(_folder_glob(pattern).endswith("*") and fnmatch.fnmatchcase(inside, _folder_glob(pattern)) for pattern in exclude):
        return False
    if not include:
        return True
    fixed = [_folder_glob(pattern).split("*", 1)[0].split("?", 1)[0].split("[", 1)[0] for pattern in include]
    return any(start.startswith(inside) or inside.startswith(start) for start in fixed)


def _inside(target: str, root: str) -> bool:
    return target == root or target.startswith(root.rstrip(os.sep) + os.sep)


def _parents(relpath: str) -> list[str]:
    parts = relpath.split("/")
    return ["/".join(parts[:depth]) for depth in range(1, len(parts))]


def _next_hop(link: Path, real_root: str) -> str | None:
    """The path inside the folder that `link` names, its last part unresolved (it may be a link
    itself); None when it names a place outside."""
    named = os.path.join(os.path.dirname(link), os.readlink(link))
    parent, last = os.path.split(named)
    if last in ("", ".", ".."):
        return None
    hop = os.path.join(os.path.realpath(parent), last)
    return os.path.relpath(hop, real_root) if _inside(hop, real_root) and hop != real_root else None


def is_a_zoo(folder: str | os.PathLike[str]) -> bool:
    """Whether `folder` is a zoo's (docs/STORE.md): it holds objects/sha256/, manifests/ and work/,
    which the zoo makes together before its first write (a model's own data/objects/ is no zoo)."""
    return all(os.path.isdir(os.path.join(folder, *name.split("/"))) for name in ("objects/sha256", "manifests", "work"))


def _never_stored(folder: Path, name: str) -> str | None:
    """What the folder `folder` (or a link to it) named `name` in the model's folder is, when it
    is never stored: "" for an empty .git/ or .cache/, which goes without a word."""
    if is_a_zoo(folder):  # ZOO_HOME inside the model's folder: the zoo would store itself
        return "a zoo's own folder"
    if name.startswith(SCRATCH_PREFIX):
        return "a budget search's candidates"
    if name in SKIPPED_FOLDERS:
        return ("version control" if name == ".git" else "a download cache") if any(os.scandir(folder)) else ""
    return None


def scan(source: str | os.PathLike[str], include: Sequence[str] | None = None, exclude: Sequence[str] | None = None,
         follow_links: bool = False) -> list[SourceFile]:
    """The files of a model folder (recursively, sorted) or a single file. Links kept as links are
    entries of kind "link" (see SourceFile.target), and a file's second and later names in the
    folder, entries of kind "hardlink" naming its first; empty folders are entries of kind "folder".
    Files whose path inside the folder matches none of `include` (fnmatch globs, when given) or any
    of `exclude` are left out."""
    include, exclude = _as_list(include), _as_list(exclude)
    check_globs(include, exclude)
    if not os.fspath(source):  # Path("") is the current folder
        raise InputError("no model given: name a folder or a file")
    root = Path(source)
    if not root.exists():
        if root.is_symlink():
            raise InputError(f"{root}: a link to nothing")
        raise InputError(f"{root}: no such file or folder")
    if root.is_file():
        if include or exclude:
            raise InputError(f"{root}: --include and --exclude choose files inside a folder, and this is one file")
        refuse_names_the_locale_would_change([root.name])
        return [_source_file(root, check_relpath(root.name), strict=True)]
    if not root.is_dir():
        raise InputError(f"{root}: neither a file nor a folder")
    if is_a_zoo(root):
        raise InputError(f"{root}: is a zoo's own folder, not a model's (`zoo export NAME -o FOLDER` writes a model of it out)")
    real_root = os.path.realpath(root)
    # A Hugging Face cache snapshot: its files are links into the repository's blobs/ folder.
    blobs = os.path.join(os.path.dirname(os.path.dirname(real_root)), "blobs")
    snapshot = os.path.basename(os.path.dirname(real_root)) == "snapshots" and os.path.isdir(blobs)
    files: list[SourceFile] = []
    skipped: list[str] = []
    hops: dict[str, str | None] = {}  # each link kept as a link -> the path inside the folder it names
    filtering = bool(include or exclude)

    def leave_out(relpath: str, why: str) -> None:  # said, unless the globs left it out anyway: those are not looked at
        if not filtering or selected_by(relpath, include, exclude):
            skipped.append(f"{relpath} ({why})")

    modes: dict[str, tuple[Path, int]] = {}  # each subfolder's permission bits, by path
    # The files of more than one name (st_nlink), by device and inode: each name's place in `files`,
    # where it waits, unread, to be read once for all of them (after the walk, which meets every name).
    names_of: dict[tuple[int, int], list[int]] = {}

    def visit(folder: Path, prefix: str, seen: frozenset[str]) -> None:
        if prefix.count("/") >= MAX_FOLDER_DEPTH:  # (each level a call: Python's recursion limit came first, "a bug in zoo")
            raise InputError(f"{root}: folders nest deeper than {MAX_FOLDER_DEPTH} levels ({prefix[:80]}...)")
        entries = sorted(os.scandir(folder), key=lambda entry: entry.name)
        if prefix:
            modes[prefix.rstrip("/")] = (folder, stat.S_IMODE(os.stat(folder).st_mode) & 0o777)
        before = len(files)
        for entry in entries:
            relpath = f"{prefix}{entry.name}"
            path = Path(entry.path)
            if _ZOO_TEMPORARY.fullmatch(entry.name):
                leave_out(f"{relpath}/" if entry.is_dir(follow_symlinks=False) else relpath,
                          "a temporary of zoo's, from a run writing there or one killed, never stored")
                continue
            if entry.is_dir(follow_symlinks=False):
                if filtering and not _may_select_within(relpath, include, exclude):
                    continue  # left out whole: not walked
                what = _never_stored(path, entry.name)
                if what is None:
                    visit(path, f"{relpath}/", seen)
                elif what:
                    skipped.append(f"{relpath}/ ({what}, never stored)")
                continue
            if entry.is_symlink():
                try:
                    os.stat(path)
                except OSError as error:  # past the system's 40 links no program can open it, and realpath
                    if error.errno == errno.ELOOP:  # walked chains of a thousand until Python's recursion limit
                        leave_out(relpath, "a loop of links, or a chain of more than 40")
                        continue
                    if error.errno == errno.ENOTDIR:  # config.json/ or config.json/..: realpath drops the parts that
                        leave_out(relpath, "a link through a file, to nothing")  # fail, and read it as config.json
                        continue
                    if error.errno != errno.ENOENT:  # a link zoo may not follow (in a folder it cannot search) is not one to
                        raise  # nothing: realpath, failing too, read it as a link to itself
                target = os.path.realpath(path)
                if not os.path.exists(target):
                    if not os.path.lexists(target) and _inside(target, real_root):  # dangling, not a loop: kept, made relative
                        if selected_by(relpath, include, exclude):  # (as given, an absolute or ../ one reads as leading out)
                            link = os.path.relpath(target, os.path.dirname(os.path.join(real_root, relpath)))
                            files.append(SourceFile(check_relpath(relpath), path, 0, "link", target=link))
                    else:
                        leave_out(relpath, "a link to nothing, or a loop of links")
                    continue
                if snapshot and _inside(target, blobs) and os.path.isfile(target):
                    pass  # read through: the snapshot's file is the blob's content
                elif _inside(target, real_root):  # kept as a link, --follow-links or not: it is the folder's own
                    if selected_by(relpath, include, exclude):
                        link = os.path.relpath(target, os.path.dirname(os.path.join(real_root, relpath)))
                        files.append(SourceFile(check_relpath(relpath), path, 0, "link", target=link))
                        hops[relpath] = _next_hop(path, real_root)
                    continue
                elif filtering and not (_may_select_within(relpath, include, exclude) if os.path.isdir(target)
                                        else selected_by(relpath, include, exclude)):
                    continue  # the globs leave it out: where it leads does not matter
                elif not follow_links:
                    raise InputError(f"{path}: a link leading out of the folder (to {target}); "
                                     "pass --follow-links to store what it points to")
                elif os.path.isdir(target):
                    # what a folder of its own there would not be stored as, it is not through a link either
                    what = _never_stored(Path(target), entry.name)
                    if what is not None:
                        if what:
                            skipped.append(f"{relpath} (a link to {what}, never stored)")
                    elif target in seen or _inside(real_root, target):
                        skipped.append(f"{relpath} (a link back into a folder above it)")
                    else:
                        visit(Path(target), f"{relpath}/", seen | {target})
                    continue
            elif not entry.is_file(follow_symlinks=False):
                leave_out(relpath, "not a regular file")
                continue
            # os.stat, not os.path.isfile, which reads every error as "no": a file in a folder that can be
            # listed but not searched (mode 644) was left out as "not a regular file", and lost
            status = os.stat(path)
            if not stat.S_ISREG(status.st_mode):
                leave_out(relpath, "not a regular file")
                continue
            if not selected_by(relpath, include, exclude):
                continue
            # A hard link: not a file read through a link (a snapshot's names of one blob, two links to
            # one folder followed), which comes back as a file of its own, as it did
            if status.st_nlink > 1 and not entry.is_symlink() and not seen:
                names_of.setdefault((status.st_dev, status.st_ino), []).append(len(files))
                files.append(SourceFile(check_relpath(relpath), path, status.st_size, "hardlink"))
            else:
                files.append(_source_file(path, check_relpath(relpath), strict=False))
        # empty, or all it holds is left out (a .git/, a FIFO); with --include or --exclude, only a
        # folder empty on disk that the globs select (one whose files they left out is not kept)
        if len(files) == before and prefix and (not filtering or (not entries and _folder_selected(prefix.rstrip("/"), include, exclude))):
            files.append(SourceFile(check_relpath(prefix.rstrip("/")), folder, 0, "folder"))

    visit(root, "", frozenset())
    # A file of several names here is stored once, under its name nearest the top (as tensor_keys
    # gives names: a Trainer folder's model.safetensors keeps its tensors' names, its checkpoint-N/
    # name of the same file holds none); each other name is a hard link to that one. They came back
    # as copies of it, stored twice.
    for places in names_of.values():
        first = min(places, key=lambda place: (files[place].relpath.count("/"), files[place].relpath))
        files[first] = _source_file(files[first].path, files[first].relpath, strict=False)
        for place in places:
            if place != first:
                files[place].target = files[first].relpath
    # The modes of the folders that hold what is kept (a 0700 folder came back 0755): the empty
    # ones carry theirs, the others are entries of their own
    held = {parent for entry in files for parent in _parents(entry.relpath)}
    for entry in files:
        if entry.kind == "folder":
            entry.mode = modes[entry.relpath][1]
    files += [SourceFile(relpath, path, 0, "folder", mode=mode, empty=False) for relpath, (path, mode) in modes.items() if relpath in held]
    # A link naming another link kept as a link points to it, not to where the chain ends.
    for entry in files:
        hop = hops.get(entry.relpath)
        if hop is not None and hop in hops:
            entry.target = os.path.relpath(os.path.join(real_root, hop), os.path.dirname(os.path.join(real_root, entry.relpath)))
    refuse_names_the_locale_would_change([name for entry in files for name in (entry.relpath, entry.target or "")])
    if skipped:
        items = f"{len(skipped)} item{'s' if len(skipped) != 1 else ''}"
        named = skipped[:SKIPPED_NAMED] + ([f"and {len(skipped) - SKIPPED_NAMED} more"] if len(skipped) > SKIPPED_NAMED else [])
        warnings.warn(f"{root}: left out {items}: {'; '.join(named)}", ZooWarning, stacklevel=2)
    # A link kept whose target is not (an --exclude, a .git folder): it comes back pointing at nothing
    kept = {entry.relpath for entry in files} | held | {"."}  # "." : the folder itself
    stranded = [f"{entry.relpath} -> {entry.target}" for entry in files if entry.kind == "link" and os.path.exists(entry.path)
                and os.path.relpath(os.path.realpath(entry.path), real_root) not in kept]
    if stranded:
        warnings.warn(f"{root}: {'a link leads' if len(stranded) == 1 else 'links lead'} to what is not stored, and will point at "
                      f"nothing: {'; '.join(stranded)}", ZooWarning, stacklevel=2)
    if os.path.isdir(os.path.join(root, "blobs")) and os.path.isdir(os.path.join(root, "snapshots")):
        warnings.warn(f"{root}: a Hugging Face cache repository, whose blobs are stored as plain bytes; compress one of its "
                      "snapshots (snapshots/REVISION) to store the model's files as tensors", ZooWarning, stacklevel=2)
    if not any(entry.kind not in ("folder", "link") for entry in files):
        raise InputError(f"{root}: folder holds no files" + (" that --include/--exclude select" if filtering else ""))
    return files
