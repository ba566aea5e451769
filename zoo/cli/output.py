"""Printing: results on stdout, progress and messages on stderr."""

from __future__ import annotations

import errno
import json
import os
import stat
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich.console import Console

from zoo.cli import one_line, valid_unicode


class StdoutError(OSError):
    """stdout could not be written (a full disk, a closed file): said as such, since the system's
    words alone ("No space left on device") read as the disk the command's own output went to."""


def _open_stdout() -> Any:
    """sys.stdout; Python sets it to None when the process started with its stdout closed (`>&-`)."""
    if sys.stdout is None:
        raise OSError(errno.EBADF, "stdout is closed")
    return sys.stdout


class _Stdout:
    """sys.stdout as it is when written to (a test may swap it), whose write errors are a
    StdoutError. A closed pipe stays a BrokenPipeError: `zoo ls | head -1` ends quietly."""

    def write(self, text: str) -> int:
        try:
            return _open_stdout().write(text)
        except BrokenPipeError:
            raise
        except OSError as error:
            raise StdoutError(error.errno, error.strerror) from error

    def flush(self) -> None:
        try:
            _open_stdout().flush()
        except BrokenPipeError:
            raise
        except OSError as error:
            raise StdoutError(error.errno, error.strerror) from error

    def __getattr__(self, name: str) -> Any:  # isatty, fileno, encoding: rich asks them
        return getattr(sys.stdout, name)


class _Console(Console):
    """rich's console, whose text is printed as zoo.cli.one_line writes it: a name's control
    characters and undecodable bytes as escapes. An archive from elsewhere names what it likes,
    and a tensor named ESC [2J cleared the screen of whoever ran `zoo info` on it."""

    def print(self, *objects: Any, **options: Any) -> None:
        super().print(*(one_line(o) if isinstance(o, str) else o for o in objects), **options)


def _console(stderr: bool = False) -> Console:
    """rich's console for stdout or stderr. Piped or in a file, where rich would fold every line at
    80 columns, a message is one line however long (a long path stays whole); tables there are
    plain lines (print_table). On a terminal, lines fold at its width. No markup and no emoji
    codes: a path or a tensor name such as `out[red]`, `layers[/]` or `run:smile:2` is printed as
    it is, never read as a style or turned into a picture."""
    console = _Console(stderr=stderr, file=None if stderr else _Stdout(), markup=False, emoji=False)
    if console.width < 1:  # COLUMNS=0: rich printed nothing at all into a width of none
        console.width = 80
    if not console.is_terminal:
        console.soft_wrap = True
    return console


stdout = _console()
stderr = _console(stderr=True)


def human_bytes(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(count) < 1024 or unit == "TiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.2f} {unit}"
        count /= 1024
    raise AssertionError("unreachable")


def source_bytes(source: Path) -> int:
    """Bytes a compress will read: the total a progress bar counts to (0 when there is no such path).
    It is an estimate and never raises: what cannot be looked at (a file in a folder that can be
    listed but not searched, a folder that cannot be read) counts 0 bytes, and the compress that
    follows meets it and says why. Raised here, a batch's total stopped every model before the
    first began."""
    if not os.path.isdir(source):
        return _regular_file_bytes(source)
    return sum(_regular_file_bytes(os.path.join(folder, name)) for folder, _, names in os.walk(source) for name in names)


def _regular_file_bytes(path: str | Path) -> int:
    try:
        status = os.stat(path)
    except OSError:
        return 0
    return status.st_size if stat.S_ISREG(status.st_mode) else 0


def print_table(title: str | None, columns: list[str], rows: list[list[str]], right: tuple[str, ...] = (), fold: tuple[str, ...] = ()) -> None:
    """A table on stdout: boxed to the terminal's width on a terminal (the first column and those
    in `fold` fold, the others stay whole), plain aligned lines when piped or where the terminal is
    too narrow for the box, one row a line, nothing cut. Names in the cells are printed as one_line
    writes them."""
    title = one_line(title) if title else title
    rows = [[one_line(text) for text in row] for row in rows]
    if not stdout.is_terminal or _boxed_width(columns, rows, right, fold) > stdout.width:
        from rich.cells import cell_len

        # measured as printed: in the terminal's cells (a CJK letter takes two), each character
        # stdout's encoding lacks already escaped as it would escape it (层 is \u5c42 in ASCII)
        shown = [[as_printed(text) for text in row] for row in (columns, *rows)]
        widths = [max(map(cell_len, column)) for column in zip(*shown)]
        if title:
            stdout.file.write(as_printed(title) + "\n")
        for row in shown:
            cells = [" " * (width - cell_len(text)) + text if name in right else text + " " * (width - cell_len(text))
                     for name, text, width in zip(columns, row, widths)]
            stdout.file.write("  ".join(cells).rstrip() + "\n")
        stdout.file.flush()
        return
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for number, name in enumerate(columns):
        table.add_column(name, justify="right" if name in right else "left", overflow="fold", no_wrap=number > 0 and name not in fold, min_width=4 if number == 0 else None)
    for row in rows:
        table.add_row(*row)
    stdout.print(table)


def _stdout_encoding() -> str:
    return getattr(sys.stdout, "encoding", None) or "utf-8"


def as_printed(text: str) -> str:
    """`text` as stdout writes it: a character its encoding lacks as the escape the CLI's stdout
    writes in its place (zoo.cli.main: errors="backslashreplace")."""
    try:
        return text.encode(_stdout_encoding(), "backslashreplace").decode(_stdout_encoding())
    except LookupError:  # an encoding Python does not know: the stream would have refused it first
        return text


def sign(character: str, stand_in: str) -> str:
    """One of zoo's own signs (×, ∞, ·), or its ASCII stand-in where stdout's encoding lacks it:
    escaped, a shape 8×8 read 8\\xd78, as a byte of a name that is not UTF-8 is shown."""
    return character if as_printed(character) == character else stand_in


def _boxed_width(columns: list[str], rows: list[list[str]], right: tuple[str, ...], fold: tuple[str, ...]) -> int:
    """The narrowest box that shows every cell whole: text that folds at least 4 wide, numbers
    (right-aligned) never folded, their folding headings as wide as their longest word; 3 columns
    of border each; in the terminal's cells (a CJK letter takes two). Narrower, rich drops columns
    and splits numbers into what reads as other values."""
    from rich.cells import cell_len

    total = 1
    for number, name in enumerate(columns):
        body = max((cell_len(row[number]) for row in rows), default=0)
        if name in right:
            heading = max(map(cell_len, name.split())) if name in fold else cell_len(name)
            total += max(body, heading) + 3
        else:
            total += (min(max(body, cell_len(name)), 4) if number == 0 or name in fold else max(body, cell_len(name))) + 3
    return total


JSON_PIECE = 1 << 16


def _valid_strings(value: Any) -> Any:
    """`value` with every string in it, keys included, as zoo.cli.valid_unicode writes it, and
    anything JSON has no form for as its str() (a path), written the same way."""
    if isinstance(value, str):
        return valid_unicode(value)
    if isinstance(value, dict):
        return {valid_unicode(key) if isinstance(key, str) else key: _valid_strings(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_valid_strings(item) for item in value]
    if value is None or isinstance(value, (bool, int, float)):
        return value
    return valid_unicode(str(value))


def print_json(document: Any) -> None:
    """`document` as JSON on stdout, in valid Unicode: a byte of a name that is not UTF-8 is
    written \\xNN, as the text reports write it (_valid_strings)."""
    from zoo.evaluate.result import json_safe

    text = json.dumps(_valid_strings(json_safe(document)), indent=2, allow_nan=False) + "\n"
    # in pieces: one write of a document larger than a pipe holds, to a reader that left, wrote part
    # of it and raised nothing (exit 0, the document cut); the next piece's write raises BrokenPipeError
    for start in range(0, len(text), JSON_PIECE):
        stdout.file.write(text[start:start + JSON_PIECE])


# The progress display on stderr, when one is shown. rich draws one live display at a time, so every
# bar a command opens (the stages of a compress, then its bytes, perhaps in a helper's own
# progress_bar) joins the one that is open.
_live: list[Any] = []
_stage: list[str] = []  # the stage a stage bar reported last: what a bytes bar shows until its bytes flow


@contextmanager
def _display(closes: bool = False) -> Iterator[Callable[[], Any]]:
    """A function that gives the stderr display, started on its first call: a stage may report
    after a download's own bars are done, and a command with nothing to report shows nothing.
    The display stops at the end of the block that used it; with `closes`, at the end of this
    block whoever opened it."""
    used = False

    def display() -> Any:
        nonlocal used
        used = True
        if not _live:
            from rich.progress import Progress

            progress = Progress(*_columns(), console=stderr, transient=True)
            progress.start()
            _live.append(progress)
        return _live[0]

    try:
        yield display
    finally:
        if _live and (used or closes):
            _live.pop().stop()


def _columns() -> list[Any]:
    """Description, bar, done/total and time left; done/total in the task's unit (bytes in human
    units with their speed, else a count such as "12/99 sequences")."""
    from rich.progress import BarColumn, ProgressColumn, TextColumn, TimeRemainingColumn
    from rich.text import Text

    class Amount(ProgressColumn):
        def render(self, task: Any) -> Text:
            unit = task.fields.get("unit", "")
            if unit == "bytes":
                speed = f" {human_bytes(task.speed)}/s" if task.speed else ""
                return Text(f"{human_bytes(task.completed)} / {human_bytes(task.total or 0)}{speed}", style="progress.download",
                            no_wrap=True, overflow="ellipsis")
            return Text(f"{task.completed:.0f}/{task.total or 0:.0f} {unit}".rstrip(), style="progress.download", no_wrap=True,
                        overflow="ellipsis")

    class Remaining(TimeRemainingColumn):
        """Time left. For bytes, measured only from their first arrival: until bytes flow (a lossy
        stage may work for a while before a tensor's first chunk), the stage at work instead."""

        def render(self, task: Any) -> Text:
            if task.fields.get("unit") != "bytes":
                return super().render(task)
            flowing = task.fields.get("flowing")  # (time, bytes done) at the first bytes
            elapsed = time.monotonic() - flowing[0] if flowing else 0.0
            if not flowing or elapsed < 1 or task.completed <= flowing[1]:
                return Text(task.fields.get("stage") or "starting", style="progress.remaining", no_wrap=True, overflow="ellipsis")
            seconds = int(((task.total or 0) - task.completed) / ((task.completed - flowing[1]) / elapsed))
            return Text(f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}", style="progress.remaining")

    # the description as it is, in its style: no markup, as the consoles read none (_console)
    return [TextColumn("{task.description}", style="progress.description", markup=False), BarColumn(bar_width=30), Amount(), Remaining()]


@contextmanager
def progress_bar(total: int | Callable[[], int], description: str, enabled: bool = True) -> Iterator[Callable[[int], None]]:
    """A byte-counting progress bar on stderr, shown from its first bytes; yields the callback
    that advances it. `total` may be a function, called only when there is a bar to draw (an
    archive's header parsed for its size costs a few milliseconds a command need not spend when
    piped). The bytes are the last phase of what they count: the block's end closes the
    display, stage bars opened around it included, so that what the command prints next (on
    stdout, which a live display captures) is not drawn into it."""
    if not enabled or not stderr.is_terminal:
        yield lambda advance: None
        return
    if callable(total):
        total = total()
    description = one_line(description)
    with _display(closes=True) as display:
        tasks: dict[Any, Any] = {}  # display -> this bar's task in it
        lock = threading.Lock()  # decompress's workers advance it side by side

        def advance(count: int) -> None:
            with lock:
                progress = display()
                if progress not in tasks:  # the first bytes: the time left is measured from here
                    tasks[progress] = progress.add_task(description, total=total, unit="bytes", stage=_stage[-1] if _stage else "encoding",
                                                        flowing=(time.monotonic(), count))
                progress.advance(tasks[progress], count)

        yield advance


@contextmanager
def stage_bars(units: dict[str, str], enabled: bool = True) -> Iterator[Callable[[str, int, int], None] | None]:
    """A bar per stage on stderr, fed by a library's progress(stage, done, total) callback (None
    when disabled); `units` names what each stage counts. A bytes bar opened inside joins them and
    closes the display when it ends; a stage reported after that opens a new one."""
    if not enabled or not stderr.is_terminal:
        yield None
        return
    with _display() as display:
        tasks: dict[tuple[Any, str], Any] = {}  # (display, stage) -> the stage's task in it

        def update(stage: str, done: int, total: int) -> None:
            progress = display()
            _stage[:] = [stage]
            if (progress, stage) not in tasks:
                tasks[progress, stage] = progress.add_task(stage, total=total, unit=units.get(stage, ""))
            progress.update(tasks[progress, stage], completed=done, total=total)

        yield update
