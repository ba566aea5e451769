"""zoo.kernels.parallel.ordered_map: order, bounds on work in flight, errors, early close, nesting, fork."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from zoo.kernels import parallel as _parallel
from zoo.kernels.parallel import for_each, ordered_map


class Tracker:
    """Counts items started by workers against items the consumer has taken, to check how far
    ahead of the consumer the map runs."""

    def __init__(self, sizes: list[int] | None = None) -> None:
        self.sizes = sizes
        self.lock = threading.Lock()
        self.started: list[int] = []
        self.taken = 0
        self.most_ahead = 0
        self.most_bytes_ahead = 0

    def work(self, item: int) -> int:
        with self.lock:
            self.started.append(item)
            self.most_ahead = max(self.most_ahead, len(self.started) - self.taken)
            if self.sizes is not None:
                ahead = sum(self.sizes[i] for i in self.started[self.taken:]) if len(self.started) > self.taken else 0
                self.most_bytes_ahead = max(self.most_bytes_ahead, ahead)
        time.sleep(0.0005 * (item % 3))  # uneven work, so results finish out of order
        return item * item

    def take(self, iterator) -> list[int]:
        out = []
        for value in iterator:
            out.append(value)
            with self.lock:
                self.taken += 1
        return out


@pytest.mark.parametrize("threads", [1, 2, 3, 8])
@pytest.mark.parametrize("count", [0, 1, 7, 50])
def test_results_come_in_input_order(threads, count):
    assert list(ordered_map(lambda x: x * 3, range(count), threads)) == [3 * x for x in range(count)]
    sizes = [(x * 7919) % 300_000 for x in range(count)]
    assert list(ordered_map(lambda x: x * 3, range(count), threads, size=lambda x: sizes[x])) == [3 * x for x in range(count)]


def test_without_sizes_at_most_two_items_per_thread_run_ahead():
    tracker = Tracker()
    assert tracker.take(ordered_map(tracker.work, range(60), 2)) == [x * x for x in range(60)]
    assert tracker.most_ahead <= 4


def test_with_sizes_the_bytes_in_flight_stay_within_the_budget():
    big = 4 << 20
    sizes = [big if x % 5 == 0 else 1000 for x in range(80)]
    tracker = Tracker(sizes)
    assert tracker.take(ordered_map(tracker.work, range(80), 2, size=lambda x: sizes[x])) == [x * x for x in range(80)]
    # the budget, plus the batch being handed out to the consumer
    assert tracker.most_bytes_ahead <= _parallel.BUDGET_ITEMS * 2 * big + 2 * big


def test_with_sizes_small_items_run_ahead_of_a_large_one():
    """The case a window of 2 x threads items got wrong: one worker stuck on a large item while
    the other had nothing queued."""
    sizes = [4 << 20] + [1000] * 200
    tracker = Tracker(sizes)

    def work(x: int) -> int:
        if x == 0:
            time.sleep(0.1)  # the large item, slow enough for the rest to queue up behind it
        return tracker.work(x)

    tracker.take(ordered_map(work, range(201), 2, size=lambda x: sizes[x]))
    assert tracker.most_ahead > 100


def test_with_sizes_one_item_over_the_budget_still_goes_through():
    sizes = [10, 10, 1 << 30, 10, 10]
    assert list(ordered_map(lambda x: -x, range(5), 2, size=lambda x: sizes[x])) == [0, -1, -2, -3, -4]


def test_small_items_go_to_a_worker_in_batches():
    sizes = [1 << 20] + [100] * 5000
    workers = {}

    def work(x: int) -> int:
        workers[x] = threading.get_ident()
        return x

    assert list(ordered_map(work, range(5001), 2, size=lambda x: sizes[x])) == list(range(5001))
    switches = sum(workers[x] != workers[x + 1] for x in range(1, 5000))
    # a batch holds 1 MiB / BATCH_DIVISOR of them and runs on one thread
    assert switches <= 5000 // ((1 << 20) // _parallel.BATCH_DIVISOR // 100) + 1


@pytest.mark.parametrize("sized", [False, True])
def test_an_error_comes_out_in_order_and_later_items_are_dropped(sized):
    started = []

    def work(x: int) -> int:
        started.append(x)
        if x == 30:
            raise ValueError("item 30 is bad")
        return x

    results: list[int] = []
    with pytest.raises(ValueError, match="item 30 is bad"):
        results.extend(ordered_map(work, range(10_000), 2, size=(lambda x: 1000) if sized else None))  # keeps what came before
    assert results == list(range(30))
    # the map stopped within its bound of work in flight instead of running on to the end
    assert len(started) <= 31 + (_parallel.BUDGET_ITEMS * 2 + 2 if sized else 2 * 2)


@pytest.mark.parametrize("sized", [False, True])
def test_closing_early_waits_for_running_work(sized):
    running = []

    def work(x: int) -> int:
        running.append(x)
        time.sleep(0.01)
        running.remove(x)
        return x

    iterator = ordered_map(work, range(1000), 2, size=(lambda x: 200_000) if sized else None)
    assert next(iterator) == 0
    iterator.close()
    assert running == []
    time.sleep(0.03)
    assert running == []  # nothing left queued either


def test_a_map_inside_a_worker_runs_serially_without_deadlock():
    def outer(x: int) -> list[int]:
        return list(ordered_map(lambda y: x + y, range(5), 2))

    assert list(ordered_map(outer, range(20), 2)) == [[x + y for y in range(5)] for x in range(20)]


def test_the_pool_is_shared_between_calls():
    list(ordered_map(abs, range(10), 2))
    pool = _parallel._pool(2)
    list(ordered_map(abs, range(10), 2))
    assert _parallel._pool(2) is pool


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_gets_a_working_pool():
    list(ordered_map(abs, range(10), 2))  # the parent has a live pool before the fork
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        signal.alarm(20)
        try:
            ok = list(ordered_map(lambda x: x + 1, range(100), 2)) == list(range(1, 101))
        finally:
            os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


# -- for_each --------------------------------------------------------------------------------


@pytest.mark.parametrize("threads", [1, 2, 3, 8])
@pytest.mark.parametrize("count", [0, 1, 7, 50])
def test_for_each_calls_every_item_once(threads, count):
    seen: list[int] = []
    lock = threading.Lock()

    def work(item: int) -> None:
        time.sleep(0.0005 * (item % 3))
        with lock:
            seen.append(item)

    for_each(work, list(range(count)), threads)
    assert sorted(seen) == list(range(count))


def test_for_each_spreads_the_work_over_the_threads():
    names: set[str] = set()
    barrier = threading.Barrier(2, timeout=10)  # returns only once both workers hold an item

    def work(item: int) -> None:
        names.add(threading.current_thread().name)
        if item < 2:
            barrier.wait()

    for_each(work, range(10), 2)
    assert len(names) == 2


def test_for_each_raises_the_earliest_failure_after_every_call_returned():
    item_one_started, item_zero_failed = threading.Event(), threading.Event()
    finished: list[int] = []

    def work(item: int) -> None:
        if item == 0:
            assert item_one_started.wait(10)
            item_zero_failed.set()
            raise KeyError("item 0")
        if item == 1:
            item_one_started.set()
            assert item_zero_failed.wait(10)
            time.sleep(0.05)  # still running when item 0's failure is recorded
            finished.append(item)
            raise ValueError("item 1")
        finished.append(item)

    with pytest.raises(KeyError, match="item 0"):
        for_each(work, range(100), 2)
    assert finished == [1]  # item 1 returned before for_each raised; nothing was taken after the failure


def test_for_each_inside_a_worker_runs_serially_without_deadlock():
    results: dict[int, list[int]] = {}

    def outer(x: int) -> None:
        inner: list[int] = []
        for_each(inner.append, list(range(5)), 2)
        results[x] = inner

    for_each(outer, list(range(20)), 2)
    assert results == {x: list(range(5)) for x in range(20)}
