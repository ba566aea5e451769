"""Pulling from a Hugging Face hub into the zoo.

Downloads go through huggingface_hub's snapshot_download, so HF_ENDPOINT, HF_TOKEN,
HF_HUB_OFFLINE and HF_HOME or HF_HUB_CACHE (its cache, shared with transformers) behave as they do
for every other Hub client. A pull cut short leaves the files that had arrived in the cache, and
the next one fetches only the others; a file cut off is fetched again from its start
(huggingface_hub 2 resumes none across processes, and an interrupted pull removes its part).
Before the model enters the zoo, every file the hub lists (that the globs choose) must be in the
snapshot, each LFS file's sha256 must be the oid the hub lists, and each other file's git oid the
one it lists.
"""

from __future__ import annotations

import logging
import os
import re
import shlex
import threading
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, nullcontext, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zoo.api import compress_into
from zoo.errors import ChecksumError, InputError, OutputExistsError, ZooError
from zoo.hub.store import DEFAULT_REVISION, Entry, Store, check_name
from zoo.sources.folder import check_globs, selected_by

_REPO_REF = re.compile(r"[A-Za-z0-9][\w.-]*(?:/[A-Za-z0-9][\w.-]*)?(?:@[\w./-]+)?", re.ASCII)


def looks_like_repo_ref(text: str) -> bool:
    """Whether `text` can be a REPO_ID[@REVISION] (the caller has already ruled out a local path)."""
    return bool(_REPO_REF.fullmatch(text))


def parse_repo_ref(text: str) -> tuple[str, str]:
    repo_id, _, revision = text.partition("@")
    if not looks_like_repo_ref(text):
        if os.path.lexists(text):  # `zoo pull` takes hub ids only: a folder here is compress's
            raise InputError(f"{text}: a local file or folder; `zoo pull` takes hub ids (ORG/NAME[@REVISION]): "
                             f"`zoo compress {shlex.quote(text)}` stores it")
        raise InputError(f"'{text}' is neither a local file or folder nor a hub id (ORG/NAME[@REVISION])")  # quoted: see check_name
    return check_name(repo_id), revision or DEFAULT_REVISION


class PullError(ZooError):
    """The hub could not be reached, or did not have what was asked for."""


@dataclass
class Download:
    folder: Path
    commit: str
    lfs_sha256: dict[str, str] = field(default_factory=dict)  # what the hub says each LFS file hashes to
    whole: bool = True  # the globs chose every file the hub lists at `commit`

    @property
    def stored_commit(self) -> str | None:
        """The commit the zoo stores the pull under: the hub's where it took every file of it, else
        None, for the manifest to derive one from the files (docs/STORE.md). Served under the hub's
        sha, a part would be taken for the whole: huggingface_hub keeps one list of files per
        commit, and a client of both hubs got an incomplete snapshot. `source` keeps the hub's."""
        return self.commit if self.whole else None


def _environment() -> dict[str, str]:
    """The hub and the cache as huggingface_hub derives them from the environment (HF_ENDPOINT
    less a trailing `/`; HF_HUB_CACHE, else HF_HOME/hub; `~` and $VARS expanded), read now: its
    constants module reads them once, at its import, and a caller may set them after it (a
    notebook, a test). Its own module is run again for this, not copied, so that zoo finds the
    cache where huggingface_hub puts it."""
    import importlib.util
    import warnings

    spec = importlib.util.find_spec("huggingface_hub.constants")
    assert spec is not None and spec.loader is not None
    now = importlib.util.module_from_spec(spec)  # not put in sys.modules: huggingface_hub's own stays as it was
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # its notes on deprecated variables, said at its import already
        spec.loader.exec_module(now)
    return {"endpoint": now.ENDPOINT, "cache_dir": now.HF_HUB_CACHE}


def _endpoint() -> str | None:
    """HF_ENDPOINT, checked before huggingface_hub reads it at its import: a port out of range there
    printed an import error to stdout (into --json's document) and came out as "unexpected ValueError"."""
    from urllib.parse import urlsplit

    endpoint = os.environ.get("HF_ENDPOINT") or None
    if endpoint is None:
        return None
    try:
        parts = urlsplit(endpoint)
        parts.port  # noqa: B018 - raises for a port out of range or not a number
    except ValueError as error:
        raise InputError(f"HF_ENDPOINT={endpoint!r} is not a URL ({error})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InputError(f"HF_ENDPOINT={endpoint!r} is not an http:// or https:// URL of a hub")
    return endpoint


def download(repo_id: str, revision: str = DEFAULT_REVISION, include: list[str] | None = None, exclude: list[str] | None = None,
             progress_bars: bool = True) -> Download:
    _endpoint()  # first: huggingface_hub reads it at import
    import huggingface_hub
    from huggingface_hub import snapshot_download
    from huggingface_hub.file_download import repo_folder_name
    from huggingface_hub.utils import disable_progress_bars, enable_progress_bars

    settings = _environment()
    (enable_progress_bars if progress_bars else disable_progress_bars)()
    _hold_hub_warnings()
    try:
        blobs = Path(settings["cache_dir"], repo_folder_name(repo_id=repo_id, repo_type="model"), "blobs")
        folder = Path(_interruptible(lambda: snapshot_download(repo_id, revision=revision, allow_patterns=include or None,
                                                               ignore_patterns=exclude or None, **settings),
                                     stopped=lambda: _drop_partial_downloads(blobs)))
        if not folder.is_dir():  # nothing to fetch: huggingface_hub makes no snapshot folder
            raise PullError(f"cannot pull {repo_id}@{revision}: " + (f"no file of it passes {_globs(include, exclude)}"
                                                                      if include or exclude else "it holds no file"))
        commit = folder.name
        listing = _listing(repo_id, commit, settings, huggingface_hub.constants.is_offline_mode())
        if listing is None:
            raise PullError(f"cannot pull {repo_id}@{revision} offline (HF_HUB_OFFLINE): the Hugging Face cache holds no list of its "
                            "files at that commit (it was filled file by file, as transformers does), so what is there may be part "
                            "of it; pull it once online")
        from huggingface_hub.utils import filter_repo_objects

        wanted = list(filter_repo_objects(listing.values(), allow_patterns=include or None, ignore_patterns=exclude or None,
                                          key=lambda item: item.path))
        missing = sorted(item.path for item in wanted if not (folder / item.path).is_file())
        if missing:
            raise PullError(f"cannot pull {repo_id}@{revision}: {len(missing)} of the files the hub lists at commit {commit[:12]} "
                            f"did not arrive ({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}); nothing was stored")
        _check_git_oids(folder, [item for item in wanted if item.lfs_sha256 is None], repo_id)
        expected = {item.path: item.lfs_sha256 for item in wanted if item.lfs_sha256 is not None}
        whole = len(wanted) == len(listing)
    except ZooError:
        raise
    except Exception as error:  # noqa: BLE001 - huggingface_hub raises HTTP, OS and validation errors of many types
        raise PullError(f"cannot pull {repo_id}@{revision}: {_why(error, repo_id, revision, settings['endpoint'])}") from None
    finally:
        _release_hub_warnings()
    return Download(folder, commit, expected, whole)


# huggingface_hub's warnings that zoo says in its own words, or that its one-line error replaces:
# the snapshot's "No files matched" (said naming the globs as the user gave them), and a download's
# "Error while downloading ... Trying to resume download..." (two lines for each of its retries:
# thirteen lines before zoo's error, for one connection cut halfway).
_HUB_LOGGERS = ("huggingface_hub._snapshot_download", "huggingface_hub.file_download")
_hub_warnings_lock = threading.Lock()
_hub_warnings_holders = 0  # the downloads running: they run side by side in threads (a batch's pulls)
_hub_logger_levels: dict[str, int] = {}  # each logger's own level, given back when the last download ends


def _hold_hub_warnings() -> None:
    """_HUB_LOGGERS at ERROR until _release_hub_warnings. Counted, as the downloads side by side
    share the loggers: the first to end would give them back to the others, or the last set them
    to the ERROR it found for good."""
    global _hub_warnings_holders
    with _hub_warnings_lock:
        if not _hub_warnings_holders:
            for name in _HUB_LOGGERS:
                _hub_logger_levels[name] = logging.getLogger(name).level
                logging.getLogger(name).setLevel(logging.ERROR)
        _hub_warnings_holders += 1


def _release_hub_warnings() -> None:
    global _hub_warnings_holders
    with _hub_warnings_lock:
        _hub_warnings_holders -= 1
        if not _hub_warnings_holders:
            for name, level in _hub_logger_levels.items():
                logging.getLogger(name).setLevel(level)


def _interruptible(work: Callable[[], Any], stopped: Callable[[], None]) -> Any:
    """work() on a thread of its own, waited for here: Ctrl-C or SIGTERM in this thread stops the
    command at once. huggingface_hub's downloads wait out a Retry-After of an hour, or a server that
    trickles a byte at a time, and its thread pool joins every download before an interrupt gets
    through; the download thread is left to end with the process. Its own cleanup never runs there
    (a daemon thread ends with no `finally`): `stopped()` does it, before the interrupt goes on."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = work()
        except BaseException as error:  # noqa: BLE001 - raised again in the caller's thread
            outcome["error"] = error

    worker = threading.Thread(target=run, name="zoo-pull", daemon=True)
    worker.start()
    try:
        while worker.is_alive():
            worker.join(0.2)
    except BaseException:
        stopped()
        raise
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def _drop_partial_downloads(blobs: Path) -> None:
    """The files an interrupted pull was downloading, removed from the cache's `blobs` folder of
    the repository: huggingface_hub writes each to BLOB.RANDOM.incomplete and removes it when the
    download fails, but an interrupt ends the download thread first, and the part (gigabytes of a
    large model) stayed for good, as no later download opens a name of another's. Only the files
    this process holds open are its own: another process's download into the cache goes on."""
    held = set()
    with suppress(OSError):  # no /dev/fd (Windows): nothing is known to be this process's
        for descriptor in os.listdir("/dev/fd"):
            with suppress(OSError, ValueError):  # the listing's own descriptor, closed by now
                opened = os.fstat(int(descriptor))
                held.add((opened.st_dev, opened.st_ino))
    for partial in blobs.glob("*.incomplete"):
        with suppress(OSError):
            found = partial.stat()
            if (found.st_dev, found.st_ino) in held:
                partial.unlink()


@dataclass(frozen=True)
class _Listed:
    path: str
    blob_id: str | None  # its git oid
    lfs_sha256: str | None  # for a file kept in LFS


def _listing(repo_id: str, commit: str, settings: dict[str, str], offline: bool) -> dict[str, _Listed] | None:
    """The repository's files at `commit`: the listing snapshot_download keeps in the cache
    (trees/COMMIT.json, huggingface_hub 1.3 and later), else the hub's; None offline without the
    cached one."""
    try:
        from huggingface_hub._tree_cache import read_tree_cache
        from huggingface_hub.file_download import repo_folder_name

        cached = read_tree_cache(os.path.join(settings["cache_dir"], repo_folder_name(repo_id=repo_id, repo_type="model")), commit)
        if cached is not None:
            return {path: _Listed(path, entry.blob_id, entry.lfs_sha256) for path, entry in cached.items()}
    except Exception:  # noqa: BLE001 - an older huggingface_hub, or a cached listing that cannot be read: asked of the hub
        pass
    if offline:
        return None
    from huggingface_hub import HfApi
    from huggingface_hub.hf_api import RepoFile

    listed = HfApi(endpoint=settings["endpoint"]).list_repo_tree(repo_id, revision=commit, recursive=True)
    return {item.path: _Listed(item.path, item.blob_id, item.lfs.sha256 if item.lfs is not None else None)
            for item in listed if isinstance(item, RepoFile)}


def _check_git_oids(folder: Path, files: list[_Listed], repo_id: str) -> None:
    """Each file kept in git, not LFS (config.json, the tokenizer), against the git oid the hub
    lists for it (sha1 of "blob SIZE\\0" and its bytes): huggingface_hub checks none of them. A bad
    copy leaves the cache, so that the next pull fetches it again."""
    from zoo.hub.manifest import git_blob_hasher

    for item in files:
        listed = item.blob_id
        if not listed:
            continue
        local = folder / item.path
        hasher = git_blob_hasher(local.stat().st_size)
        with open(local, "rb") as stream:
            while block := stream.read(1 << 20):
                hasher.update(block)
        if hasher.hexdigest() != listed:
            _refuse_bad_copy(local, repo_id, item.path, "git oid", hasher.hexdigest(), listed)


def _refuse_bad_copy(local: Path, repo_id: str, path: str, what: str, got: str, listed: str) -> None:
    """A downloaded file that is not what the hub lists: dropped from the Hugging Face cache (its
    blob and the snapshot's link), so that the next pull fetches it again, and refused."""
    Path(os.path.realpath(local)).unlink(missing_ok=True)
    local.unlink(missing_ok=True)
    raise ChecksumError(f"{repo_id}: {path} arrived with {what} {got[:12]}..., the hub lists {listed[:12]}...; "
                        "the bad copy was removed from the Hugging Face cache, pull again")


def _globs(include: list[str] | None, exclude: list[str] | None) -> str:
    given = [f"--include {pattern!r}" for pattern in include or ()] + [f"--exclude {pattern!r}" for pattern in exclude or ()]
    return " ".join(given) or "no glob"


def _why(error: BaseException, repo_id: str, revision: str, endpoint: str | None) -> str:
    """What went wrong, in words, for the errors a user meets; huggingface_hub's own first line else."""
    from huggingface_hub import constants
    from huggingface_hub.errors import GatedRepoError, LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    hub = f"the hub at {endpoint or constants.ENDPOINT}"
    if isinstance(error, GatedRepoError):
        return f"{repo_id} is gated on {hub}: accept its terms there and set HF_TOKEN"
    if isinstance(error, RevisionNotFoundError):
        gone = _commit_asked_for(error)
        if gone is not None and not gone.startswith(revision):
            # the revision named this commit when the pull began; the hub lost it since (a model
            # stored again there): the revision is there, at another commit
            return (f"revision {revision!r} of {repo_id} moved to a new commit on {hub} during the pull (the one it named, "
                    f"{gone[:12]}, is gone there): pull again to fetch it")
        return f"{hub} has no revision {revision!r} of {repo_id}"
    if isinstance(error, RepositoryNotFoundError):
        return f"{hub} has no repository {repo_id}, or it is private (set HF_TOKEN)"
    status = _status(error)
    if status in (401, 403):
        return f"{hub} refused access ({status}): set HF_TOKEN to a token that may read {repo_id}"
    if type(error).__name__ == "IncompleteSnapshotError":  # huggingface_hub 1.3 and later
        sample = re.search(r"missing \((.*?)\)\.", str(error))
        where = "offline (HF_HUB_OFFLINE)" if constants.is_offline_mode() else f"{hub} cannot be reached"
        return (f"{where}, and the Hugging Face cache holds only part of it (missing: {sample.group(1) if sample else 'some files'}); "
                "nothing was stored")
    if isinstance(error, LocalEntryNotFoundError):
        cause = error.__cause__ or error.__context__
        reason = f" ({_first_line(cause, named=False)})" if cause is not None else ""
        answered = _status(cause) if cause is not None else None
        where = ("offline (HF_HUB_OFFLINE)" if constants.is_offline_mode() else
                 f"{hub} answered {answered}{reason}" if answered is not None else f"{hub} cannot be reached{reason}")
        return f"{where}, and the Hugging Face cache holds no copy"
    if status is not None:
        return f"{hub} answered {status} ({_first_line(error, named=False)})"
    kinds = {kind.__name__ for kind in type(error).__mro__}  # httpx's or requests', as huggingface_hub's version uses
    if kinds & _TIMED_OUT or kinds & _CONNECTION_LOST:  # after huggingface_hub's own retries
        what = f"{hub} stopped answering" if kinds & _TIMED_OUT else f"the connection to {hub} was lost"
        return f"{what} ({_first_line(error, named=False)}); nothing was stored, pull again"
    return _first_line(error)


# The errors of a connection that broke off or went quiet, by class name: httpx's (huggingface_hub
# 1.0 and later), requests' and urllib3's (before), Python's own. Not every timeout: filelock's
# Timeout (the Hugging Face cache's lock) is no hub's silence.
_TIMED_OUT = {"TimeoutException", "ReadTimeout", "ConnectTimeout"}
_CONNECTION_LOST = {"TransportError", "ConnectionError", "ChunkedEncodingError", "ProtocolError"}


def _commit_asked_for(error: BaseException) -> str | None:
    """The commit in the URL of the request a hub refused (its tree or a file at that commit)."""
    try:
        url = str(error.response.request.url)  # type: ignore[attr-defined]
    except (AttributeError, RuntimeError):  # no response, or httpx's without its request
        return None
    found = re.search(r"/(?:tree|resolve|revision)/([0-9a-f]{40})(?:[/?]|$)", url)
    return found.group(1) if found else None


def _status(error: BaseException) -> int | None:
    """The HTTP status a hub answered with, where the error carries its response."""
    response = getattr(error, "response", None)
    status = getattr(response, "status_code", None)
    return status if isinstance(status, int) else None


def _first_line(error: BaseException, named: bool = True) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = (lines[0] if lines else "no details") + (f" {lines[1]}" if len(lines) > 1 and len(lines[0]) < 40 else "")
    return f"{type(error).__name__}: {text}" if named else text


def check_lfs(archive_path: Path, pulled: Download, repo_id: str) -> None:
    """Compare the sha256 recorded while compressing each downloaded file with the hub's LFS oid.
    A bad copy is dropped from the Hugging Face cache so that the next pull fetches it again."""
    from zoo.container.reader import Archive

    with Archive(archive_path) as archive:
        recorded = {f["path"]: f["sha256"] for f in archive.files()}
    for path, expected in pulled.lfs_sha256.items():
        got = recorded.get(path)
        if got is not None and got != expected:
            _refuse_bad_copy(pulled.folder / path, repo_id, path, "sha256", got, expected)


def chosen_files(folder: Path, include: list[str] | None, exclude: list[str] | None) -> dict[str, Path]:
    """The files of a downloaded snapshot that a pull stores, by relative path: the cache may hold
    more than this pull asked for (other pulls' files), and only what the globs select is stored."""
    inside = {path.relative_to(folder).as_posix(): path for path in folder.rglob("*") if path.is_file()}
    return {relpath: path for relpath, path in inside.items() if selected_by(relpath, include, exclude)}


def held_as_pulled(held: Entry | None, source: str, chosen: Iterable[str]) -> bool:
    """Whether `held`, the zoo's entry of the NAME@REVISION:VARIANT a pull stores, is what the pull
    would store: the same commit (`source`, hub:REPO@COMMIT) and the same files (`chosen`). A newer
    commit of the revision, or the same commit with other files chosen (--include/--exclude), is
    stored again: that is what pulling means. One pull and a batch's pulls both ask this."""
    return held is not None and held.source == source and {stored.path for stored in held.files} == set(chosen)


def not_pulled_from(store: Store, name: str, revision: str, repo_id: str) -> Entry | None:
    """A variant of NAME@REVISION that no pull of `repo_id` stored (the user's own model), or None."""
    return next((entry for entry in store.entries(name) if entry.revision == revision
                 and not (entry.source or "").startswith(f"hub:{repo_id}@")), None)


def pull(ref: str, *, store: Store | None = None, name: str | None = None, pipeline: str | None = None,
         include: list[str] | None = None, exclude: list[str] | None = None, threads: int | None = None, force: bool = False,
         progress: Callable[[int], AbstractContextManager[Callable[[int], None]]] | None = None,
         progress_bars: bool = True, **options: Any) -> tuple[Entry, bool]:
    """Download REPO_ID[@REVISION] and store it compressed. Returns the entry and whether it is
    new (False when the zoo already held this commit in this variant). `progress(total)` gives
    the compression step's progress callback; the download shows huggingface_hub's own bars.
    `options` go to zoo.compress."""
    from zoo.codecs.pipeline import DEFAULT_SPEC, Pipeline
    from zoo.hub.store import variant_of

    repo_id, revision = parse_repo_ref(ref)
    check_globs(include, exclude)  # before the download, not after it
    store = store or Store()
    name = check_name(repo_id if name is None else name)  # --name "" is refused as any other bad name, not read as none
    variant = variant_of(Pipeline.parse(pipeline or DEFAULT_SPEC).spec())
    held = store.exists_ref(name, revision, variant)
    theirs = None if force else not_pulled_from(store, name, revision, repo_id)
    if theirs is not None:
        # a model the user stored under this name (`zoo compress` names a fine-tune after its base's
        # hub id): a pull replaces, or sets a variant beside, only what pulls of this repository stored
        stored = f", stored from {theirs.source}" if theirs.source else ""
        raise OutputExistsError(f"{theirs.ref} is already in the zoo{stored}, not pulled from {repo_id}; "
                                "pass --force to store the pull beside or over it, or --name to store it under another name")
    pulled = download(repo_id, revision, include, exclude, progress_bars)
    source = f"hub:{repo_id}@{pulled.commit}"
    selected = chosen_files(pulled.folder, include, exclude)
    if held_as_pulled(held, source, selected) and not force:
        return store.resolve(held.ref, with_files=True), False  # through the index, as a new one is: with what it adds to the zoo
    total = sum(path.stat().st_size for path in selected.values())
    their_check = options.pop("check", None)

    def check(path: Path) -> None:
        check_lfs(path, pulled, repo_id)
        if their_check is not None:
            their_check(path)

    with progress(total) if progress else nullcontext(None) as advance:
        entry = compress_into(store, pulled.folder, name, revision, pipeline, commit=pulled.stored_commit, source_label=source, force=True,
                              threads=threads, progress=advance, check=check, include=include, exclude=exclude, **options)
    return entry, True
