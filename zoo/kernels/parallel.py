"""Two ways to spread work over a shared thread pool: `ordered_map`, results in input order with a
bounded amount of work in flight (small items handed out in batches), and `for_each`, for work
whose results go somewhere themselves (a chunk decoded into its place in a tensor): each worker
takes the next item as it finishes one, with no future or wake-up per item. And `InOrder`, for
what the workers must pass on in order (a file's sha256 over its pieces)."""

from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Any, TypeVar

from zoo.errors import InputError

T = TypeVar("T")
R = TypeVar("R")

# With sizes, the work in flight is bounded by bytes: BUDGET_ITEMS x threads of the largest item
# seen so far. A window of 2 x threads items left a worker idle behind a 4 MiB chunk on MiniLM's
# mix of 4 MiB and 768-byte chunks; counted in bytes, the small ones behind it fill the gap, and
# memory stays what a window of BUDGET_ITEMS x threads items of that size would hold.
BUDGET_ITEMS = 4
# Items under 1/BATCH_DIVISOR of the largest go to a worker together, in batches up to that
# size: a task costs ~20 us of Python on top of its work, more than decoding a bias vector.
BATCH_DIVISOR = 16
MAX_TASKS_PER_THREAD = 16

_pools: dict[int, ThreadPoolExecutor] = {}
_pools_lock = threading.Lock()
_in_worker = threading.local()


# The most threads anything is given: a count past it (-t 100000) made torch and ZipNN fail to start
# threads, ZipNN's C core then crashing, and one past a C int overflowed where it was handed on.
MAX_THREADS = 1024


def resolve_threads(threads: int | None) -> int:
    """The thread count to use: the default (up to 8, one per core) for None or less than 1, and
    never more than MAX_THREADS. Anything but a whole number or None is an InputError."""
    if threads is not None and (isinstance(threads, bool) or not hasattr(type(threads), "__index__")):
        raise InputError(f"threads must be a whole number or None, got {threads!r}")
    if threads is None or threads <= 0:
        return max(1, min(8, os.cpu_count() or 1))
    return min(threads.__index__(), MAX_THREADS)


def _mark_worker() -> None:
    _in_worker.active = True


def _pool(threads: int) -> ThreadPoolExecutor:
    """One pool per thread count, kept for the life of the process: starting threads for every
    tensor read cost more than decoding a small tensor."""
    with _pools_lock:
        pool = _pools.get(threads)
        if pool is None:
            pool = _pools[threads] = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="zoo", initializer=_mark_worker)
        return pool


def _forget_pools() -> None:
    global _pools_lock
    _pools.clear()
    _pools_lock = threading.Lock()  # another thread may have held it at the fork


# A forked child has none of the parent's threads: its pools would take work and never run it.
os.register_at_fork(after_in_child=_forget_pools)


def _run_batch(function: Callable[[T], R], batch: list[T]) -> tuple[list[R], BaseException | None]:
    """The results of a batch up to its first failure, and that failure: the items before it
    still come out in order before the error is raised."""
    results: list[R] = []
    try:
        for item in batch:
            results.append(function(item))
    except BaseException as error:  # noqa: BLE001 - handed back to be raised in order
        return results, error
    return results, None


def _results(future: Future[tuple[list[R], BaseException | None]]) -> Iterator[R]:
    results, error = future.result()
    yield from results
    if error is not None:
        raise error


def ordered_map(function: Callable[[T], R], items: Iterable[T], threads: int,
                size: Callable[[T], int] | None = None) -> Iterator[R]:
    """Like map(), on `threads` workers; memory stays bounded however long `items` is.

    Without `size`, at most 2 x threads items are submitted and not yet yielded. With
    `size(item)` (the bytes its result will hold), the items submitted and not yet yielded add
    up to at most BUDGET_ITEMS x threads x the largest size seen (plus one batch), in at most
    MAX_TASKS_PER_THREAD x threads tasks; consecutive small items go to a worker as one task.
    An exception raised by `function` comes out where its item's result would have; the items
    after it are cancelled. Called from inside a worker (a nested map), it runs serially:
    waiting there on the same pool could deadlock."""
    if threads <= 1 or getattr(_in_worker, "active", False):
        yield from map(function, items)
        return
    sized = size is not None
    max_tasks = MAX_TASKS_PER_THREAD * threads if sized else 2 * threads
    pool = _pool(threads)
    pending: deque[tuple[Future[tuple[list[R], BaseException | None]], int]] = deque()
    held = largest = 0
    batch: list[T] = []
    batch_size = 0
    try:
        for item in items:
            batch.append(item)
            if sized:
                item_size = size(item)  # type: ignore[misc]
                batch_size += item_size
                largest = max(largest, item_size)
                if batch_size * BATCH_DIVISOR < largest:
                    continue
            while pending and (len(pending) >= max_tasks or (sized and held + batch_size > BUDGET_ITEMS * threads * largest)):
                future, done_size = pending.popleft()
                held -= done_size
                yield from _results(future)
            pending.append((pool.submit(_run_batch, function, batch), batch_size))
            held += batch_size
            batch, batch_size = [], 0
        if batch:
            pending.append((pool.submit(_run_batch, function, batch), batch_size))
        while pending:
            yield from _results(pending.popleft()[0])
    finally:
        # On an error or an early close, nothing may still be running once we return: the
        # caller may free what the work reads (a memory map, an open archive).
        for future, _ in pending:
            future.cancel()
        wait([future for future, _ in pending])


def for_each(function: Callable[[T], object], items: Sequence[T], threads: int) -> None:
    """Call `function` on every item, on `threads` workers; results are dropped. A worker takes
    the next item when it is done with one: the per-item hand-off of ordered_map (a future, a
    wake-up of the caller, its Python between chunks) cost MiniLM's two-thread decoding a
    fifth of its speed (BF16: 6.9 GB/s against 8.9). Memory holds what `threads` calls hold at once. When calls raise, the
    workers stop taking items and the error of the earliest item that failed is raised; every
    call has returned by then. Called from inside a worker, it runs serially, as ordered_map does."""
    if threads <= 1 or len(items) <= 1 or getattr(_in_worker, "active", False):
        for item in items:
            function(item)
        return
    pending = iter(enumerate(items))
    lock = threading.Lock()
    failures: list[tuple[int, BaseException]] = []
    stopping = threading.Event()  # set on the first failure, or when the caller is interrupted

    def work() -> None:
        while not stopping.is_set():
            with lock:
                taken = next(pending, None)
            if taken is None:
                return
            try:
                function(taken[1])
            except BaseException as error:  # noqa: BLE001 - raised by the caller, earliest item first
                failures.append((taken[0], error))
                stopping.set()

    futures = [_pool(threads).submit(work) for _ in range(min(threads, len(items)))]
    try:
        wait(futures)
    finally:
        # Interrupted (Ctrl-C), the caller may free what the calls write to: none may still run.
        stopping.set()
        wait(futures)
    if failures:
        raise min(failures, key=lambda failure: failure[0])[1]


class InOrder:
    """Calls `function` on numbered pieces in their order (None: nothing to pass, a turn all the
    same), each, where it can be, from the thread that coded it, while the piece is in the cache
    of that thread's core (hashing a piece decoded on another core cost about 30% more).

    A thread whose piece's turn has not come waits only while the piece just before it is being
    passed; otherwise it leaves its piece and goes on with its own work, and whichever thread is
    passing pieces passes it when its turn comes. Waiting for every turn kept each of two workers
    idle for a third of MiniLM's decompression, behind batches of small pieces and pieces of
    unequal sizes; never waiting had every piece of a file of equal chunks hashed on the other
    core, 30% more CPU. Once stopped (a piece failed, or the reader closed), no piece is passed."""

    def __init__(self, function: Callable[[Any], object]) -> None:
        self._function = function
        self._next = 0
        self._ready: dict[int, Any] = {}  # left by their threads until their turn
        self._passing = False  # a thread is passing pieces
        self._stopped = False
        self._turn = threading.Condition()

    def take(self, number: int, piece: Any) -> None:
        with self._turn:
            if self._passing and self._next == number - 1:
                while self._next != number and not self._stopped:
                    self._turn.wait()
            if self._stopped:
                return
            if self._passing or self._next != number:
                self._ready[number] = piece
                return
            self._passing = True
        try:
            while True:
                if piece is not None:
                    self._function(piece)
                with self._turn:
                    self._next += 1
                    if self._stopped or self._next not in self._ready:
                        self._passing = False
                        self._turn.notify_all()
                        return
                    piece = self._ready.pop(self._next)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        with self._turn:
            self._stopped = True
            self._ready.clear()
            self._passing = False
            self._turn.notify_all()
