"""Ordered, bounded-concurrency map: enrichment runs in parallel but writes its map in input order,
so every map lines up with `standardized.jsonl` and the merge is a streaming zip."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

In = TypeVar("In")
Out = TypeVar("Out")


def ordered_map(
    fn: Callable[[In], Out], items: Iterable[In], *, workers: int, window: int | None = None,
    quick: Callable[[In], Out | None] | None = None,
) -> Iterator[Out]:
    """Like `executor.map`, but holds at most `window` items in flight (memory does not grow with input).

    `quick(item)`: the result when it is known without work (no image, a cached address), else None. Such
    items never go through the pool: handing thousands of no-op calls to threads costs more than the calls.
    """
    window = window or workers * 4
    pending: deque[Future[Out]] = deque()
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="harvest-enrich") as pool:
        for item in items:
            known = quick(item) if quick is not None else None
            if known is None:
                pending.append(pool.submit(fn, item))
            else:
                done: Future[Out] = Future()
                done.set_result(known)
                pending.append(done)
            if len(pending) >= window:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
