"""The signals that stop a command, and a block they wait for. zoo.cli.stopping makes them stop a
command as Ctrl-C does; the library installs no handler, but holds them off where a cleanup cut in
half would leave debris (signals_held). Light on purpose: the CLI imports it before anything else."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

# The signals that stop a command (zoo.cli.stopping handles them): Ctrl-C; `timeout`, `docker stop`
# and systemd; a closed terminal. No SIGHUP on Windows.
STOPPING = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))

# The models this process has stored, each once its manifest was published: a signal that stops
# the command afterwards undoes none of them, and the CLI says so rather than a bare "interrupted"
# (a retry would find the model "already in the zoo").
STORED: list[str] = []


# And those it has removed (zoo rm), each once its manifest and objects are gone.
REMOVED: list[str] = []


# And the files and folders it has put in place whole (zoo.api's outputs, its own temporaries
# among them), by absolute path; the CLI names those that are the user's outputs (OUTPUTS: the
# absolute path -> as the user wrote it).
WRITTEN: list[str] = []
OUTPUTS: dict[str, str] = {}


def stored(ref: str) -> None:
    """Record that `ref` (NAME@REVISION:VARIANT) is now in the zoo for good."""
    if ref not in STORED:
        STORED.append(ref)


def removed(ref: str) -> None:
    """Record that `ref` was removed from the zoo for good."""
    if ref not in REMOVED:
        REMOVED.append(ref)


def written(path: str) -> None:
    """Record that the output `path` is in place, whole."""
    path = os.path.abspath(path)
    if path not in WRITTEN:
        WRITTEN.append(path)


def an_output(path: str | os.PathLike[str]) -> None:
    """Record that `path` is an output the user named (compress -o, decompress -o, export -o)."""
    OUTPUTS[os.path.abspath(path)] = os.fspath(path)


@contextmanager
def signals_held() -> Iterator[None]:
    """A stopping signal that arrives inside waits until the block ends, then takes effect as it
    would have: a cleanup that Ctrl-C cut in half left a work folder behind. Only where a Python
    handler would run it (the main thread); elsewhere the block runs as it is."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []
    previous = {number: signal.getsignal(number) for number in STOPPING}
    for number, handler in previous.items():
        if callable(handler):
            signal.signal(number, lambda number, frame: held.append(number))
    try:
        yield
    finally:
        for number, handler in previous.items():
            if callable(handler):
                signal.signal(number, handler)
        if held:
            signal.raise_signal(held[0])
