"""Temporaries that a later run recognises as zoo's own, and removes only once their writer is gone.

A temporary is named `PREFIX<pid>-<random>` and its writer holds an exclusive flock on it from the
moment it exists until it is renamed into place or removed. A later run removes one when it can
take that lock (the writer is gone: the kernel dropped its locks) and the pid in the name runs no
process (or the entry is over an hour old, since pids are reused). A name without that shape is
never zoo's to remove.

`replace(temporary, final, force)` puts a finished temporary in place: without `force` only where
nothing is (renameat2 RENAME_NOREPLACE, Linux), so an output that appeared meanwhile is left alone;
with it over an existing output of the same kind in one atomic exchange (RENAME_EXCHANGE), so
`final` is always the old or the new complete output. Where the exchange is not available it
renames the old one aside under a locked name first; a run killed between the two renames leaves
the old one aside, and the next run beside the same output puts it back when the new one is
missing (`sweep_beside`).
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import re
import secrets
import shutil
import signal
import stat
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from zoo.errors import OutputExistsError
from zoo.signals import signals_held

STALE_SECONDS = 3600  # a lock-free temporary this old is debris even when its pid runs again
PAYLOAD_PREFIX = ".zoo-payload-"
SET_ASIDE = ".zoo-old"  # inside a temporary folder: the files a move into an existing folder replaced
_OWNED = re.compile(r"(?P<pid>\d+)-[0-9a-f]{8}")


def kill_point(name: str) -> None:
    """Die here, as kill -9 would, when ZOO_KILL_AT names this point, or take SIGINT (Ctrl-C) here
    when it names the point followed by `:INT`: the tests that check what a killed or stopped run
    leaves behind choose the moment with it."""
    chosen = os.environ.get("ZOO_KILL_AT")
    if chosen == name:
        os.kill(os.getpid(), signal.SIGKILL)
    elif chosen == f"{name}:INT":
        signal.raise_signal(signal.SIGINT)


# A name is at most 255 bytes; a temporary's adds about 30 to its output's. An output's name longer
# than this is shortened in its temporaries' names, the same way every time (sweep_beside finds them).
_NAME_BYTES = 200


def short_name(name: str) -> str:
    """`name` as a temporary beside it may carry it: itself, or past _NAME_BYTES its first bytes
    and a digest of all of it."""
    encoded = os.fsencode(name)
    if len(encoded) <= _NAME_BYTES:
        return name
    import hashlib

    # (a character cut in two is still a name the kernel takes)
    return f"{os.fsdecode(encoded[:_NAME_BYTES - 10])}~{hashlib.sha256(encoded).hexdigest()[:8]}"


def temporary_prefix(final: Path) -> str:
    return f".{short_name(final.name)}.zoo-tmp-"


def aside_prefix(final: Path) -> str:
    return f".{short_name(final.name)}.zoo-old-"


def _lock(path: Path) -> int:
    # never blocks, never follows a link: a FIFO of one of our names (anyone may make one in /tmp)
    # hung every sweep and compress that looked at it, waiting for a writer
    descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
    try:
        if not stat.S_ISREG(mode := os.fstat(descriptor).st_mode) and not stat.S_ISDIR(mode):
            raise OSError(errno.EINVAL, "not a file or folder of ours", str(path))
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BaseException:
        os.close(descriptor)
        raise
    return descriptor


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with suppress(FileNotFoundError):
            path.unlink()


@contextmanager
def locked_temporary(parent: Path, prefix: str, is_dir: bool) -> Iterator[Path]:
    """A new file or folder `parent/PREFIX<pid>-<random>`, locked while the body runs and removed
    afterwards unless the body renamed it away."""
    path = parent / f"{prefix}{os.getpid()}-{secrets.token_hex(4)}"
    if is_dir:
        path.mkdir(mode=0o700)
    else:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    try:
        descriptor = _lock(path)  # a sweeper in between sees our pid running and leaves it alone
    except BaseException:  # a signal, or a file system without locks: made here, so gone here
        _remove(path)
        raise
    try:
        yield path
    finally:
        # A Ctrl-C in the middle of the removal waits for it: it cut the removal short and skipped
        # the close, and this process, holding its own lock, could not sweep what was left (a batch
        # waited out its cancel time, then left it). The lock goes whatever happens: anything left
        # is then a later run's to sweep.
        try:
            with signals_held():
                _remove(path)
        finally:
            os.close(descriptor)


def _pid_runs(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    # a process killed -9 whose parent has not reaped it yet (a Ray worker, until the raylet does)
    # still answers kill(pid, 0): on Linux its state says it is a zombie, and it holds nothing
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat_file:
            return stat_file.read().rpartition(b")")[2].split()[:1] != [b"Z"]
    except OSError:
        return True


def is_stale(path: Path, prefix: str) -> bool:
    """Whether `path` (named PREFIX<pid>-<random>) is a temporary whose writer is gone."""
    owned = _OWNED.fullmatch(path.name[len(prefix):]) if path.name.startswith(prefix) else None
    if owned is None:
        return False
    if path.is_symlink():  # a link the output was, exchanged out by replace(force=True): no lock to take, only its writer's life
        try:
            return not _pid_runs(int(owned["pid"])) or time.time() - path.lstat().st_mtime > STALE_SECONDS
        except FileNotFoundError:
            return False
    try:
        descriptor = _lock(path)
    except (BlockingIOError, FileNotFoundError, PermissionError, OSError):
        return False  # held (its writer lives), gone already, or not ours to judge
    try:
        return not _pid_runs(int(owned["pid"])) or time.time() - path.lstat().st_mtime > STALE_SECONDS
    except FileNotFoundError:
        return False
    finally:
        os.close(descriptor)


def sweep_beside(final: Path, within: Path | None = None) -> list[Path]:
    """Clean up what killed runs left beside the output `final` (or in the folder `within`, where
    its temporaries are made elsewhere: inside the folder itself, zoo.api._folder_output): its
    temporaries, the payload folders of compress, and an old copy moved aside, which goes back to
    `final` when the new one never arrived. Returns what was removed or restored."""
    parent = final.parent if within is None else within
    done = []
    try:
        entries = list(parent.iterdir())
    except OSError:
        return done
    for path in entries:
        for prefix in (temporary_prefix(final), PAYLOAD_PREFIX, aside_prefix(final)):
            if not is_stale(path, prefix):
                continue
            if prefix == aside_prefix(final) and not (final.exists() or final.is_symlink()):
                with suppress(FileNotFoundError):
                    os.replace(path / final.name, final)  # the new one never arrived: the old one is the output
            if prefix == temporary_prefix(final) and (path / SET_ASIDE).is_dir() and final.is_dir():
                _put_back(path / SET_ASIDE, final)
            _remove(path)
            done.append(path)
            break
    return done


def sweep_scratch(parent: Path, prefix: str) -> Path:
    """The scratch folders named `parent/PREFIX<pid>-<random>` (locked_temporary) that killed runs
    left removed, for a run about to make its own there: a budget search's candidates, a sweep's.
    Returns `parent`."""
    with suppress(OSError):
        for path in parent.iterdir():
            if is_stale(path, prefix):
                _remove(path)
    return parent


def _put_back(aside: Path, final: Path) -> None:
    """A writer that moved files into the existing folder `final` one by one (zoo.api's
    decompress into a folder) keeps each file it replaced under SET_ASIDE until all are in. Killed
    midway, the files it replaced go back: what the user had is never what a sweep deletes."""
    for folder, subfolders, names in os.walk(aside):
        for name in names + [d for d in subfolders if (Path(folder) / d).is_symlink()]:
            kept = Path(folder) / name
            target = final / kept.relative_to(aside)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(kept, target)


_RENAME_NOREPLACE = 1
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _renameat2(first: Path, second: Path, flags: int) -> bool:
    """renameat2(first, second, flags); False where the system cannot (then nothing changed)."""
    if os.environ.get("ZOO_RENAME_EXCHANGE") == "0":  # the portable paths, for their tests
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    if renameat2(_AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second), flags) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM):
        return False
    raise OSError(code, os.strerror(code), str(second))


def _exchange(first: Path, second: Path) -> bool:
    """Swap two paths atomically; False where the system cannot (then nothing changed)."""
    return _renameat2(first, second, _RENAME_EXCHANGE)


def in_the_way(final: Path, is_dir: bool) -> str | None:
    """Why what is at `final` is not an output zoo may replace with a new file (`is_dir` False) or
    folder, or None (nothing there, or a file or link where a file goes). zoo never removes a folder,
    a device, a pipe or a socket to make room, nor a file where a folder goes."""
    try:
        mode = final.lstat().st_mode
    except FileNotFoundError:
        return None
    if stat.S_ISDIR(mode):
        return "is a folder" + ("" if is_dir else " (zoo writes one file there)")
    if is_dir:
        return "is a file, where zoo writes a folder"
    if not (stat.S_ISREG(mode) or stat.S_ISLNK(mode)):
        return "is not a regular file (a device, a pipe or a socket)"
    if stat.S_ISLNK(mode):  # the link is replaced, not what it leads to: a file, a folder or nothing are no loss
        try:
            target = final.stat().st_mode
        except OSError:
            return None
        if not (stat.S_ISREG(target) or stat.S_ISDIR(target)):
            # `-o /dev/stdout --force`: its link made a file, which every later program's stdout then was
            return "is a link to a device, a pipe or a socket (zoo writes files; it would replace the link)"
    return None


def replace(temporary: Path, final: Path, force: bool) -> None:
    """Put the finished `temporary` at `final`. Without `force`, only where nothing is there now:
    an output that appeared while it was being written is left alone (OutputExistsError). With
    it, an old output of the same kind is replaced (in_the_way says which are not); after an
    exchange the old output sits under the temporary's locked name, which its owner then removes."""
    is_dir = temporary.is_dir()
    if not force:
        appeared = OutputExistsError(f"{final} appeared while zoo was writing it; pass --force to replace it")
        try:
            if _renameat2(temporary, final, _RENAME_NOREPLACE):
                return
        except FileExistsError:
            raise appeared from None
        if final.exists() or final.is_symlink():  # where renameat2 is missing: a check, then a rename
            raise appeared
        try:
            os.link(temporary, final)  # a file: fails if one appeared since the check
            os.unlink(temporary)
        except FileExistsError:
            raise appeared from None
        except OSError:  # a folder, or a file system without hard links
            os.rename(temporary, final)
        return
    problem = in_the_way(final, is_dir)
    if problem is not None and is_dir and final.is_dir() and not final.is_symlink():
        # the caller writes into a folder that is there when it starts (api._folder_output): this
        # one came while it wrote a new one (another zoo writing the same output at once)
        raise OutputExistsError(f"{final} appeared while zoo was writing it; run the command again to write into it")
    if problem is not None:
        raise OutputExistsError(f"{final} {problem}; zoo does not remove it")
    if not (final.exists() or final.is_symlink()):
        os.replace(temporary, final)
        return
    if _exchange(temporary, final):
        return
    # a stop between the two renames waits for the second: Ctrl-C there left neither output, the old
    # one set aside being removed with its folder
    with locked_temporary(final.parent, aside_prefix(final), is_dir=True) as aside, signals_held():
        os.replace(final, aside / final.name)
        kill_point("between-renames")
        try:
            os.replace(temporary, final)
        except BaseException:
            os.replace(aside / final.name, final)
            raise
