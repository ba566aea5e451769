"""An ordered, bounded map over a thread pool: results in input order, a fixed number in flight."""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def resolve_threads(threads: int | None) -> int:
    if threads is None or threads <= 0:
        return max(1, min(8, os.cpu_count() or 1))
    return threads


def ordered_map(function: Callable[[T], R], items: Iterable[T], threads: int) -> Iterator[R]:
    """Like map(), on `threads` workers; at most 2 x threads items are held at once, so memory
    stays bounded however long `items` is."""
    if threads <= 1:
        yield from map(function, items)
        return
    window = 2 * threads
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="zoo") as pool:
        pending: deque[Future[R]] = deque()
        try:
            for item in items:
                pending.append(pool.submit(function, item))
                if len(pending) >= window:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()
