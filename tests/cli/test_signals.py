"""SIGTERM and SIGHUP stop a command as Ctrl-C does: its temporaries removed, no output, one line on
stderr and the exit status 128 + the signal's number (zoo.cli.stopping)."""

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import numpy as np
import pytest

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """64 MiB of F16 weights: about a tenth of a second of compress or decompress on two cores."""
    from safetensors.numpy import save_file

    folder = tmp_path_factory.mktemp("weights")
    rng = np.random.default_rng(0)
    save_file({f"layer.{i}.weight": (rng.standard_normal((2048, 2048), dtype=np.float32) * 0.02).astype(np.float16)
               for i in range(8)}, str(folder / "model.safetensors"))
    return folder / "model.safetensors"


@pytest.fixture(scope="module")
def archive(weights, tmp_path_factory):
    archive = tmp_path_factory.mktemp("archive") / "model.zoo"
    subprocess.run([sys.executable, "-m", "zoo", "compress", weights, "-o", archive], check=True, capture_output=True)
    return archive


def writing(folder, least=8 << 20):
    """Whether a temporary in `folder` (a file, or a folder of files) holds `least` bytes on disk."""
    for temporary in folder.glob(".*.zoo-tmp-*"):
        try:
            if sum(path.stat().st_blocks * 512 for path in (temporary, *temporary.rglob("*")) if path.is_file()) >= least:
                return True
        except FileNotFoundError:  # renamed or removed meanwhile
            pass
    return False


def as_a_terminal_starts_it():
    """In the child before it runs zoo: the stopping signals at their defaults, as a terminal
    starts a command. A suite itself run under `nohup` (SIGHUP ignored) or in a shell's background
    (SIGINT ignored) hands its ignored signals down, and zoo rightly leaves an ignored signal alone."""
    for number in (signal.SIGHUP, signal.SIGINT, signal.SIGTERM):
        signal.signal(number, signal.SIG_DFL)


def start_zoo(args, stdout_closed=False, environment=None, ignoring=()):
    def child():
        as_a_terminal_starts_it()
        for number in ignoring:  # as `nohup` starts it
            signal.signal(number, signal.SIG_IGN)
        if stdout_closed:
            os.close(1)
    return subprocess.Popen([sys.executable, "-m", "zoo", *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=environment, preexec_fn=child)


def stop_once_writing(args, folder, signals, stdout_closed=False, ignoring=()):
    """Run `zoo ARGS`, freeze it once its temporary in `folder` holds some MiB, send `signals` and
    let it go on. Frozen, the command cannot finish before the signals land, on any machine.
    Waiting for bytes, the signals land in the body of the write, where every command spends its
    time; the instants around it (a temporary made, a pool's first thread started) are covered by
    zoo.hub.temporaries.locked_temporary and by zoo.cli.main ending the process once it has cleaned up."""
    environment = {k: v for k, v in os.environ.items() if k != "ZOO_DEBUG"}
    process = start_zoo(args, stdout_closed, environment, ignoring)
    try:
        deadline = time.monotonic() + 60
        while not writing(folder):
            assert process.poll() is None, f"finished before its temporary was seen: {process.communicate()}"
            assert time.monotonic() < deadline
            time.sleep(0.001)
        process.send_signal(signal.SIGSTOP)
        for number in signals:
            process.send_signal(number)
        process.send_signal(signal.SIGCONT)
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    return process.returncode, stderr


@pytest.mark.parametrize("number, status, message", [(signal.SIGTERM, 143, "terminated (SIGTERM)"),
                                                     (signal.SIGHUP, 129, "terminated (SIGHUP)"),
                                                     (signal.SIGINT, 130, "interrupted")])
@pytest.mark.parametrize("threads", [1, 2])
def test_a_stopped_compress_leaves_nothing(weights, tmp_path, number, status, message, threads):
    output = tmp_path / "model.zoo"
    returncode, stderr = stop_once_writing(["compress", weights, "-o", output, "-t", threads], tmp_path, [number])
    assert (returncode, stderr) == (status, message + "\n")
    assert list(tmp_path.iterdir()) == []


def test_a_signal_ignored_when_zoo_starts_stays_ignored(weights, tmp_path):
    """`nohup zoo compress ...` goes on when the terminal closes."""
    output = tmp_path / "model.zoo"
    returncode, stderr = stop_once_writing(["compress", weights, "-o", output], tmp_path, [signal.SIGHUP], ignoring=[signal.SIGHUP])
    assert (returncode, stderr) == (0, "")
    assert output.is_file()


@pytest.mark.parametrize("threads", [1, 2])
def test_a_terminated_decompress_into_a_new_folder_leaves_nothing(archive, tmp_path, threads):
    returncode, stderr = stop_once_writing(["decompress", archive, "-o", tmp_path / "model", "-t", threads], tmp_path, [signal.SIGTERM])
    assert (returncode, stderr) == (143, "terminated (SIGTERM)\n")
    assert list(tmp_path.iterdir()) == []


def test_a_command_stopped_with_its_stdout_closed_says_so_in_one_line(archive, tmp_path):
    """Started with `>&-`, Python's sys.stdout is None: flushing it after the cleanup was a traceback and status 1."""
    returncode, stderr = stop_once_writing(["decompress", archive, "-o", tmp_path / "model"], tmp_path, [signal.SIGTERM],
                                           stdout_closed=True)
    assert (returncode, stderr) == (143, "terminated (SIGTERM)\n")


def test_a_second_signal_while_cleaning_up_is_ignored(weights, tmp_path):
    """Pending together, the lower number runs first (Python's order); the other comes while the
    first one's cleanup runs."""
    returncode, stderr = stop_once_writing(["compress", weights, "-o", tmp_path / "model.zoo"], tmp_path,
                                           [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
    assert (returncode, stderr) == (129, "terminated (SIGHUP)\n")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("number, status, message", [(signal.SIGTERM, 143, "terminated (SIGTERM)"), (signal.SIGINT, 130, "interrupted")])
def test_serve_stops_on_a_signal(tmp_path, number, status, message):
    """uvicorn handles SIGINT and SIGTERM while it serves, then hands them back to the CLI."""
    environment = {k: v for k, v in os.environ.items() if k != "ZOO_DEBUG"} | {"ZOO_HOME": str(tmp_path / "home")}
    process = start_zoo(["serve", "--port", "0", "--quiet"], environment=environment)
    try:
        serving = process.stderr.readline()
        assert serving.startswith("serving 0 models from "), serving
        try:  # an answer: uvicorn serves, its handlers in place
            urllib.request.urlopen(serving.split(" at ")[1].split()[0] + "/api/models", timeout=30)
        except urllib.error.HTTPError:
            pass
        process.send_signal(number)
        _, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert (process.returncode, stderr) == (status, message + "\n")


def test_serve_leaves_a_signal_ignored_when_it_starts_ignored(tmp_path):
    """Run as a script's background job (`zoo serve & ...`: SIGINT ignored, as a shell starts it),
    serve stopped on SIGINT with status 0 and no word: uvicorn put its handler in place of the
    ignored signal. SIGTERM still stops it."""
    environment = {k: v for k, v in os.environ.items() if k != "ZOO_DEBUG"} | {"ZOO_HOME": str(tmp_path / "home")}
    process = start_zoo(["serve", "--port", "0", "--quiet"], environment=environment, ignoring=[signal.SIGINT])

    def answers() -> bool:
        try:
            urllib.request.urlopen(serving.split(" at ")[1].split()[0] + "/api/models", timeout=30)
        except urllib.error.HTTPError:
            pass
        return True

    try:
        serving = process.stderr.readline()
        assert serving.startswith("serving 0 models from "), serving
        assert answers()  # uvicorn serves, its handlers in place
        process.send_signal(signal.SIGINT)
        with pytest.raises(subprocess.TimeoutExpired):  # uvicorn would see it at its next tick, a tenth of a second
            process.wait(timeout=1)
        assert answers()
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert (process.returncode, stderr) == (143, "terminated (SIGTERM)\n")


def test_the_command_loads_nothing_heavy_before_its_handlers():
    """What zoo.cli.main loads before the command itself (its `_run` a stub here), seen in a fresh
    interpreter: in this one an earlier test may have loaded typer, rich or numpy already, which
    the in-process test of the handlers cannot see past."""
    code = ("import sys, zoo.cli\n"
            "zoo.cli._run = lambda: print(sorted(m for m in ('typer', 'click', 'rich', 'numpy') if m in sys.modules))\n"
            "zoo.cli.main()")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stderr


@pytest.mark.parametrize("number", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_in_the_interpreters_teardown_after_the_command_succeeded_is_ignored(number):
    """Past the exit handlers, Python's teardown put its defaults back in place of the CLI's: a
    signal there (a tenth of a second and more after a pull or a decompress had printed its
    result) ended the process with no word, and a script saw a failure for work done. The
    signal comes from an object the teardown collects, after every exit handler has run."""
    code = ("import os, sys, zoo.cli\n"
            "class Late:\n"  # os is None by the time the teardown collects it: bound now
            f"    def __del__(self, kill=os.kill, me=os.getpid()): kill(me, {int(number)})\n"
            "late = Late()\n"
            "sys.argv = ['zoo', 'env']\n"
            "zoo.cli.main()\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert (done.returncode, done.stderr) == (0, ""), done.stderr
    assert "kernels:" in done.stdout


def test_the_handlers_are_in_place_before_anything_heavy_loads_and_quiet_once_the_command_ends(monkeypatch):
    """A signal in the first tenth of a second (typer, rich and numpy loading) got Python's
    defaults: a traceback of an import, or an end with no word. And one landing after the result
    was printed cut the exit short, with no word either."""
    import zoo.cli
    from zoo.cli import stopping

    seen = {}

    def command() -> None:
        seen["handlers"] = [signal.getsignal(number) for number in stopping.STOPPING]
        seen["typer loaded"] = "typer" in sys.modules

    saved = {number: signal.getsignal(number) for number in stopping.STOPPING}
    for number, handler in saved.items():  # as a terminal starts it (above): the suite may run under nohup
        if handler == signal.SIG_IGN:
            signal.signal(number, signal.SIG_DFL)
    run = zoo.cli._run
    monkeypatch.delitem(sys.modules, "typer", raising=False)
    monkeypatch.setattr(zoo.cli, "_run", command)
    try:
        zoo.cli.main()
        assert seen == {"handlers": [stopping._stop] * len(stopping.STOPPING), "typer loaded": False}
        # the command itself (its app a stub): once it has ended, the handlers are the ones that let the exit finish
        import warnings

        monkeypatch.setattr("zoo.cli.app.app_for", lambda argv: lambda prog_name: None)
        monkeypatch.setattr(sys, "argv", ["zoo", "env"])  # what _run sets of the process goes back after the test
        monkeypatch.setattr(warnings, "showwarning", warnings.showwarning)
        monkeypatch.setenv("OPENBLAS_THREAD_TIMEOUT", "4")
        run()
        assert [signal.getsignal(number) for number in stopping.STOPPING] == [stopping._ending] * len(stopping.STOPPING)
    finally:
        for number, handler in saved.items():
            signal.signal(number, handler)


# A SIGTERM sent from the first line that runs in a chosen function, once zoo's handlers are in place.
SIGTERM_IN = """
import os, signal, sys
where = sys.argv[1]
fired = []

def sending(frame, event, arg):
    if not fired and event == "line":
        fired.append(1)
        os.kill(os.getpid(), signal.SIGTERM)
    return sending

def chosen(frame, event, arg):
    if fired or signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
        return None
    code = frame.f_code
    if where == "__set_name__" and code.co_name == "__set_name__" and type(frame.f_locals.get("self")).__name__ == "Field":
        return sending
    if where == "make_parser" and code.co_name == "make_parser" and code.co_filename.endswith(os.path.join("zoo", "cli", "app.py")):
        return sending
    return None

sys.settrace(chosen)
sys.argv = ["zoo", "env"]
from zoo.cli import main
main()
"""


@pytest.mark.parametrize("where", ["make_parser", "__set_name__"])
def test_a_signal_while_the_command_line_is_read_or_a_module_loads_stops_the_command(where):
    """Two short windows at the start: typer turned a KeyboardInterrupt while click parsed the
    command line into a silent exit 130, whatever the signal; and Python 3.11 raises one that comes
    while a dataclass is made (a module loaded on first use) as the cause of a RuntimeError, which
    read as a bug of zoo's ("unexpected RuntimeError: Error calling __set_name__"), exit 1."""
    environment = {k: v for k, v in os.environ.items() if k != "ZOO_DEBUG"}
    done = subprocess.run([sys.executable, "-c", SIGTERM_IN, where], capture_output=True, text=True, timeout=120, env=environment,
                          preexec_fn=as_a_terminal_starts_it)
    assert (done.returncode, done.stderr) == (143, "terminated (SIGTERM)\n")


def test_a_plain_keyboard_interrupt_after_a_sigterm_is_said_as_the_sigterm():
    """Ray runs Python's handlers from its compiled code while a batch waits for its tasks, catches
    the Terminated zoo's raised and raises a plain KeyboardInterrupt in its place: a SIGTERM
    stopped a --ray batch with "interrupted" and 130."""
    from zoo.cli import stopping

    saved = {number: signal.getsignal(number) for number in stopping.STOPPING}
    try:
        stopping.stop_on_signals()
        with pytest.raises(stopping.Terminated):
            signal.raise_signal(signal.SIGTERM)
        stopped = stopping.Stopped.by(KeyboardInterrupt())  # what Ray raised in its place
        assert stopped.status == 143 and stopped.message.startswith("terminated (SIGTERM)")
        stopping.stop_on_signals()  # the next command starts afresh
        assert stopping.Stopped.by(KeyboardInterrupt()).status == 130
    finally:
        for number, handler in saved.items():
            signal.signal(number, handler)
