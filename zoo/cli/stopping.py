"""SIGTERM and SIGHUP stop a command as Ctrl-C does.

`timeout`, `docker stop` and systemd send SIGTERM, a closed terminal SIGHUP. Python's default for
both ends the process at once, leaving a compress's temporary (as large as its output) behind. The
CLI's handlers raise them in the main thread as a KeyboardInterrupt instead, so that every
cleanup Ctrl-C runs (try/finally and context managers: temporaries removed, workers stopped) runs
for them too. The library installs no handler.
"""

from __future__ import annotations

import atexit
import os
import signal

from zoo.signals import OUTPUTS, REMOVED, STOPPING, STORED, WRITTEN


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised where Ctrl-C raises KeyboardInterrupt."""

    def __init__(self, number: int) -> None:
        super().__init__(number)
        self.number = number


def what_was_done() -> str:
    """' after NAME was stored in the zoo' (or removed from it, or a count of them; or ' after OUT
    was written') where a command that stops short had done that much: the stop took none of it
    back. '' where it had not."""
    written = [OUTPUTS[path] for path in WRITTEN if path in OUTPUTS]
    if written and not STORED and not REMOVED:
        return f" after {written[0]} was written" if len(written) == 1 else f" after {len(written)} outputs were written"
    done, what, listed = (STORED, "stored in", " (`zoo ls` lists them)") if STORED else (REMOVED, "removed from", "")
    if not done:
        return ""
    return f" after {done[0]} was {what} the zoo" if len(done) == 1 else f" after {len(done)} models were {what} the zoo{listed}"


class Stopped(BaseException):
    """A command stopped by a signal, its cleanup done: what the CLI says and its exit status,
    128 + the signal's number as a shell reports it. Commands raise this in place of the
    KeyboardInterrupt (app.Command), which typer would turn into a silent exit 130 whatever the
    signal."""

    def __init__(self, number: int) -> None:
        super().__init__(number)
        self.status = 128 + number
        self.message = ("interrupted" if number == signal.SIGINT else f"terminated ({signal.Signals(number).name})") + what_was_done()

    @classmethod
    def by(cls, interrupt: KeyboardInterrupt) -> Stopped:
        """The signal behind `interrupt`: its own number, else the one the handler took (Ray runs
        the handler from its compiled code, and raises a plain KeyboardInterrupt in place of what
        it raised), else SIGINT."""
        return cls(getattr(interrupt, "number", None) or received() or signal.SIGINT)


def received() -> int | None:
    """The stopping signal that stopped the command, once its handler has run; None before."""
    return _RECEIVED[0] if _RECEIVED else None


_RECEIVED: list[int] = []


def _stop(number: int, frame: object) -> None:
    """The first stopping signal stops the command; those that follow while it cleans up are
    ignored, so that the cleanup finishes and no traceback cuts it short (SIGKILL still ends it
    at once)."""
    for stopping in STOPPING:
        signal.signal(stopping, _cleaning_up)
    _RECEIVED.append(number)
    raise KeyboardInterrupt if number == signal.SIGINT else Terminated(number)


def _cleaning_up(number: int, frame: object) -> None:
    pass


def quiet() -> None:
    """Once the command has ended (its result printed, or its error): the first stopping signal is
    ignored, as one during a cleanup is; it would only cut the exit short, with no word, after the
    command had said it succeeded. A second ends the process at once, should the exit hang (a
    worker thread, Ray's shutdown)."""
    for stopping in STOPPING:
        if signal.getsignal(stopping) == _stop:
            signal.signal(stopping, _ending)


_ENDED: list[int] = []


def _ending(number: int, frame: object) -> None:
    if _ENDED:
        os._exit(128 + number)
    _ENDED.append(number)


def _ignore_from_now_on() -> None:
    """The last exit handler (registered first): the interpreter's own teardown follows, and it
    puts Python's defaults back in place of the CLI's handlers, so that a signal there (a tenth
    of a second and more) ended a command that had said it succeeded, with no word. Ignored
    signals stay ignored through it."""
    for stopping in STOPPING:
        if signal.getsignal(stopping) in (_stop, _cleaning_up, _ending):
            signal.signal(stopping, signal.SIG_IGN)


def stop_on_signals() -> None:
    """Install the CLI's handlers. A signal ignored when zoo starts stays ignored: `nohup`
    ignores SIGHUP, and a shell ignores SIGINT in what it starts in the background. `zoo serve`'s
    uvicorn puts its own in place of the others while it serves, then puts these back and raises
    the signal that stopped it again."""
    global _exit_registered
    if not _exit_registered:  # before the exit handlers of whatever loads later (Ray's), which run before it
        atexit.register(_ignore_from_now_on)
        _exit_registered = True
    _RECEIVED.clear()  # a process may run more than one command: the tests do
    for stopping in STOPPING:
        if signal.getsignal(stopping) != signal.SIG_IGN:
            signal.signal(stopping, _stop)


_exit_registered = False
