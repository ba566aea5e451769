"""The `zoo` command. typer lives in this package and nowhere else."""

from __future__ import annotations

import atexit
import codecs
import contextlib
import errno
import os
import re
import sys
import warnings
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from zoo.cli.stopping import Stopped


def debugging() -> bool:
    """ZOO_DEBUG set to anything but empty, 0, no, false or off (any case): tracebacks are shown."""
    return os.environ.get("ZOO_DEBUG", "").strip().lower() not in ("", "0", "no", "false", "off")


def one_line(text: str) -> str:
    """`text` with what a terminal would act on written as escapes: control characters (a newline in
    a file's name is \\n, an ESC \\x1b) and a byte of a name that is not UTF-8, which Python holds as
    a surrogate escape, as \\xNN. An error, a warning or a line of a report is then one line, whatever
    the names in it hold, and printable in any locale (a strict UTF-8 stdout refuses a surrogate).
    Letters of any script stay as they are, where serve's access log (zoo.hub.serve.printable)
    escapes all but ASCII."""
    return "".join(c if c.isprintable() else _escape(c) for c in text)


def valid_unicode(text: str) -> str:
    """`text` with each lone surrogate written as one_line writes it: a byte of a name that is not
    UTF-8 (Python's surrogate escape) as the four characters \\xNN, any other (an archive's header
    may spell one as a JSON escape) as \\uNNNN. A --json document's strings are then valid Unicode:
    json.dumps wrote them as escapes of lone surrogates, which Perl's JSON decoder refuses and jq
    turns into U+FFFD, naming no file. Control characters stay: JSON escapes them itself."""
    return _SURROGATE.sub(lambda found: _escape(found.group()), text)


_SURROGATE = re.compile("[\ud800-\udfff]")


def _escape(character: str) -> str:
    code = ord(character)
    return f"\\x{code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF else repr(character)[1:-1]


def _say(text: str) -> None:
    """A line on stderr; none where the process started with stderr closed (`2>&-`): print() would
    write it to stdout then, into what a pipe reads (a --json document among it)."""
    if sys.stderr is not None:
        print(text, file=sys.stderr)


_shown: set[str] = set()


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """zoo's warnings as one line on stderr, each once (a sweep or a budget reads the model once
    per pipeline, and said the same thing each time); anyone else's as Python shows them."""
    from zoo.errors import ZooWarning

    if issubclass(category, ZooWarning) and not debugging():
        text = one_line(f"warning: {message}")
        if text not in _shown:
            _shown.add(text)
            _say(text)
    else:
        _python_show_warning(message, category, filename, lineno, file, line)


_python_show_warning = warnings.showwarning

# Packages that only some commands need, and the extra that installs each (pyproject.toml).
EXTRAS = {"torch": "torch", "transformers": "eval", "matplotlib": "plot"}


def shipped_calibration(argv: list[str]) -> list[str]:
    """`--calib` given without a file means the calibration text zoo ships. typer 0.29 has no option
    whose value may be left out, so a bare `--calib` (last, or before another option) gets that
    file's path here."""
    if "--calib" not in argv:
        return argv
    from zoo.optimize.teacher import SHIPPED_TEXT

    given = list(argv)
    for index in range(len(given) - 1, -1, -1):
        if given[index] == "--calib" and (index + 1 == len(given) or given[index + 1].startswith("-")):
            given.insert(index + 1, str(SHIPPED_TEXT))
    return given


def bare_ray(argv: list[str]) -> list[str]:
    """`--ray` without an address means RAY_ADDRESS, else a Ray started here (zoo.batch). As with
    --calib, typer cannot leave an option's value out: a `--ray` that is last, or followed by
    another option or by a word that is no Ray address (HOST:PORT, ray://..., auto), gets "default"."""
    if "--ray" not in argv:
        return argv
    import re

    given = list(argv)
    for index in range(len(given) - 1, -1, -1):
        following = given[index + 1] if index + 1 < len(given) else None
        if given[index] == "--ray" and (following is None or following.startswith("-")
                                        or not re.fullmatch(r"(ray://)?[\w.-]+:\d+|auto|local|default", following)):
            given.insert(index + 1, "default")
    return given


def _current_folder_is_gone() -> bool:
    try:
        os.getcwd()
    except FileNotFoundError:
        return True
    return False


def _in_utf8_mode() -> None:
    """Under a locale whose encoding is not UTF-8 (ISO-8859-1, KOI8-R), the zoo command runs itself
    again in Python's UTF-8 mode: file names are then read and written as the bytes archives hold
    (as UTF-8, docs/FORMAT.md), where the locale's decoding stored `café` as `cafÃ©`. So do the
    Python processes it starts (a batch's workers), through PYTHONUTF8. Its output stays in the
    locale's encoding (PYTHONIOENCODING, unless the user set one). A program that calls main() with
    an argv of its own is not started again: the Python API's refusal of such names stands."""
    if sys.flags.utf8_mode or not sys.executable or codecs.lookup(sys.getfilesystemencoding()).name == "utf-8":
        return
    if not _started_as_zoo():
        return
    environment = {**os.environ, "PYTHONUTF8": "1"}
    if not environment.get("PYTHONIOENCODING") and sys.stdout is not None and getattr(sys.stdout, "encoding", None):
        environment["PYTHONIOENCODING"] = sys.stdout.encoding
    os.execve(sys.executable, [sys.executable, "-X", "utf8", *sys.orig_argv[1:]], environment)


def _started_as_zoo() -> bool:
    """Whether this process was started as the zoo command (its console script, or python -m zoo)
    with the arguments main() reads, which it may then be started with again."""
    original, argv = sys.orig_argv, sys.argv
    given = len(argv) - 1
    if len(original) <= given or original[len(original) - given:] != argv[1:]:
        return False
    head = original[:len(original) - given]
    if head[-2:] == ["-m", "zoo"] or head[-1] == "-mzoo":
        return True
    # the console script, or a link to it under another name; a program of the user's that calls
    # main() is no zoo command, and started again it would run twice (its stdin read by the first)
    return (len(head) >= 2 and os.path.abspath(head[-1]) == os.path.abspath(argv[0])
            and os.path.basename(os.path.realpath(argv[0])) == "zoo")


def main() -> None:
    """The `zoo` command. Exit status: 0; 1 for an error (one line on stderr); 2 for a usage
    error; 128 + its number for a signal that stopped it, after the cleanup Ctrl-C runs and with
    one line on stderr: 130 for SIGINT (Ctrl-C), 143 for SIGTERM, 129 for SIGHUP (zoo.cli.stopping)."""
    from zoo.cli.stopping import Stopped, stop_on_signals
    from zoo.signals import OUTPUTS, REMOVED, STORED, WRITTEN

    STORED.clear()  # what this command stores (a process may run more than one: the tests do)
    REMOVED.clear()
    WRITTEN.clear()
    OUTPUTS.clear()
    _shown.clear()  # and the warnings it has said

    _in_utf8_mode()
    if sys.stdout is not None and hasattr(sys.stdout, "reconfigure"):  # a report's ×, ∞ or a name past what its encoding holds: escaped
        sys.stdout.reconfigure(errors="backslashreplace")
    if sys.stderr is None:  # started with stderr closed (`2>&-`): click's usage errors would go to stdout, into a --json document
        sys.stderr = open(os.devnull, "w")  # noqa: SIM115 - for the process's life
    # First: a signal while the rest loads (a tenth of a second and more) stops the command as one
    # later does, where Python's defaults printed a traceback of an import or ended it with no word
    stop_on_signals()
    try:
        _run()
    except (Stopped, KeyboardInterrupt) as stopping:  # a KeyboardInterrupt comes before a command runs
        _end(stopping if isinstance(stopping, Stopped) else Stopped.by(stopping))
    except Exception as error:
        interrupt = _interrupt_behind(error)
        if interrupt is not None:
            _end(Stopped.by(interrupt))
        said = None if debugging() else error_line(error)
        if said is None:
            raise
        _say(f"error: {said}")
        sys.exit(1)


def _end(stopped: Stopped) -> None:
    """End the process a signal stopped, its cleanup run: its line,
    then its status. A worker thread the signal caught while its pool started it is known to no
    pool, waits for work forever, and would keep the interpreter's exit waiting for it: the exit
    handlers run (Ray's shutdown among them), then the process ends."""
    _say(stopped.message)
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError):
            if stream is not None:  # None where the process started with it closed (`>&-`)
                stream.flush()
    os._exit(stopped.status)


def _interrupt_behind(error: BaseException) -> KeyboardInterrupt | None:
    """The signal's KeyboardInterrupt that `error` was raised from, if any: Python 3.11 raises one
    that comes while a class is made (a dataclass of a module loaded on first use) as the cause
    of a RuntimeError, "Error calling __set_name__", which read as a bug of zoo's."""
    cause, seen = error.__cause__, set()
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, KeyboardInterrupt):
            return cause
        seen.add(id(cause))
        cause = cause.__cause__
    return None


def error_line(error: Exception) -> str | None:
    """What a command that `error` stopped says of it, one line after "error: ", or None where its
    traceback is what to show (a missing package no extra installs)."""
    from zoo.errors import ZooError

    if isinstance(error, ZooError):
        return one_line(str(error))
    if isinstance(error, OSError):  # disk full, permission denied, ...: the system's words, one line
        from zoo.cli.output import StdoutError
        from zoo.cli.stopping import what_was_done

        where = f": {error.filename}" if error.filename else ""
        if not where and error.errno == errno.ENOENT and _current_folder_is_gone():  # a relative path's realpath: os.getcwd() failed
            where = ": the current folder was removed (cd into one that exists, or give absolute paths)"
        stdout = "cannot write to stdout: " if isinstance(error, StdoutError) else ""
        # a report that could not be printed comes after the work: say what was done (a retry would find the model there)
        done = "," + what_was_done() if isinstance(error, StdoutError) and what_was_done() else ""
        return one_line(f"{stdout}{error.strerror or error}{where}{done}")
    if isinstance(error, MemoryError):  # numpy's "Unable to allocate 128. MiB for an array ..." is no bug of zoo's
        return one_line(f"out of memory{f': {error}' if str(error) else ''}")
    if isinstance(error, Warning):  # another package's warning that PYTHONWARNINGS=error or -W error made an exception
        return one_line(f"{type(error).__name__}: {error} (a warning, made an error by PYTHONWARNINGS or -W)")
    if isinstance(error, ModuleNotFoundError):
        return f"this needs {error.name}, which is not installed: pip install 'zoo[{EXTRAS[error.name]}]'" if error.name in EXTRAS else None
    # a bug in zoo: still one line, with the way to the traceback
    return one_line(f"unexpected {type(error).__name__}: {error} (a bug in zoo; ZOO_DEBUG=1 shows the traceback)")


def _run() -> None:
    """The command itself, once main's handlers are in place."""
    # numpy's OpenBLAS starts its threads when numpy loads, and they spin (about 0.1 CPU-s here)
    # before they sleep, even when no BLAS call comes: on two cores that took a core from `zoo
    # compress` and `zoo decompress` while they start. With the shortest spin the threads sleep at
    # once (and wake for the lossy codecs' matrix work as before). Set before numpy loads; a
    # user's own value wins.
    os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")
    # Every command reads, codes and writes chunks of a few MiB: glibc's defaults gave many of
    # them fresh pages, faulted and zeroed by the kernel (about 0.1 CPU-s per GiB decoded).
    from zoo.allocator import keep_freed_buffers
    from zoo.cli.stopping import Stopped, quiet, received

    keep_freed_buffers()
    from zoo.cli.app import app_for

    sys.argv = bare_ray(shipped_calibration(sys.argv))
    warnings.showwarning = _show_warning
    if not debugging():  # zoo's warnings are lines of its output, whatever PYTHONWARNINGS asks of Python's (=error made them "a bug")
        from zoo.errors import ZooWarning

        warnings.filterwarnings("default", category=ZooWarning)
    try:
        app_for(sys.argv)(prog_name="zoo")
    except SystemExit as exiting:
        # typer ends on a KeyboardInterrupt that comes outside a command's run (while click parses
        # the command line) with a silent status 130, whatever the signal: it is a stop as any other
        if exiting.code == 130:
            import signal

            raise Stopped(received() or signal.SIGINT) from None
        raise
    finally:
        quiet()  # the command has ended: a signal now would only cut its exit short, with no word
