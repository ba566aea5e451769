"""zoo.evaluate.bench's timing, apart from the coders it times (those: tests/cli/test_native_cli.py)."""

from __future__ import annotations

import time

from zoo.evaluate import bench


def test_the_runs_are_timed_after_a_first_untimed_one():
    """A coder's first run in a process warms its threads' heaps: `zoo bench` leaves it out, and
    prepares every run's input, the untimed one's too."""
    calls, prepared = [], []

    def coder(argument):
        calls.append(argument)
        if len(calls) == 1:
            time.sleep(0.3)

    wall, _, _ = bench._best(coder, 1, prepare=lambda: prepared.append(None) or len(prepared))
    assert calls == [1, 2] and wall < 0.2
