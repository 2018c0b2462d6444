"""Micro-batching of lone ``/predict`` requests on one scoring thread: one hand-off a batch each way.

Requests arriving while a batch is scored queue up and form the next batch (at most ``max_batch_size``; with
``wait_s`` > 0 a batch that is not full waits that long for company). The thread scores a batch, resolves every
waiting request with one ``call_soon_threadsafe`` and only then runs the batch's after-work (metrics, prediction
log, shadow scoring), so no answer waits for it and the event loop does none of it.

Why not ``@serve.batch``: in Ray 2.60 it records two Ray metrics per batch on the event loop (a gauge and a
histogram, uncached) and adds three asyncio hops per request, plus ``run_in_executor``'s own future chain to reach
a thread; on the bank benchmark those were about 9 % of the event loop's time at 16 connections (README
"Serving at a bank's volume"). Nothing here imports Ray.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

logger = logging.getLogger("ray.serve")

Item = TypeVar("Item")
Answer = TypeVar("Answer")

__all__ = ["MicroBatcher"]


class MicroBatcher(Generic[Item, Answer]):
    """Score queued items in batches on a thread of its own.

    ``score(items)`` returns one answer per item, in order, and a context handed to ``after(items, context)`` once
    the answers are out; an exception of ``score`` is every item's answer (raised in each waiting request).
    """

    def __init__(self, score: Callable[[list[Item]], tuple[Sequence[Answer], Any]], max_batch_size: int,
                 wait_s: float = 0.0, after: Callable[[list[Item], Any], None] | None = None,
                 name: str = "scoring") -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be at least 1, got {max_batch_size}")
        self._score, self._after = score, after
        self._max, self._wait_s = max_batch_size, max(0.0, wait_s)
        self._ready = threading.Condition()
        self._queue: deque[tuple[Item, asyncio.Future, asyncio.AbstractEventLoop]] = deque()
        self._closed = False
        self.batches = 0  # batches scored (for tests and /ready-style introspection)
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    async def submit(self, item: Item) -> Answer:
        """Queue ``item`` and wait for its answer (raises what scoring its batch raised)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future = loop.create_future()
        with self._ready:
            if self._closed:
                raise RuntimeError("the scoring thread is stopped")
            self._queue.append((item, future, loop))
            self._ready.notify()
        return await future

    def alive(self) -> bool:
        """Whether the scoring thread runs."""
        return self._thread.is_alive()

    def close(self, timeout_s: float = 30.0) -> None:
        """Score what is queued, then stop the thread."""
        with self._ready:
            self._closed = True
            self._ready.notify()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout_s)

    def _next_batch(self) -> list[tuple[Item, asyncio.Future, asyncio.AbstractEventLoop]] | None:
        with self._ready:
            while not self._queue:
                if self._closed:
                    return None
                self._ready.wait()
            if self._wait_s and len(self._queue) < self._max and not self._closed:
                deadline = time.monotonic() + self._wait_s
                while len(self._queue) < self._max and not self._closed:
                    left = deadline - time.monotonic()
                    if left <= 0 or not self._ready.wait(left):
                        break
            return [self._queue.popleft() for _ in range(min(self._max, len(self._queue)))]

    def _run(self) -> None:
        while (batch := self._next_batch()) is not None:
            items = [item for item, _, _ in batch]
            try:
                answers, context = self._score(items)
                if len(answers) != len(items):
                    raise RuntimeError(f"scoring returned {len(answers)} answers for {len(items)} requests")
                error: BaseException | None = None
            except BaseException as exc:  # every request of the batch raises it (a 503 or a 500 with its id)
                answers, context, error = [], None, exc
            self.batches += 1
            by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future, Any]]] = {}
            for i, (_, future, loop) in enumerate(batch):
                by_loop.setdefault(loop, []).append((future, error if error is not None else answers[i]))
            for loop, outcomes in by_loop.items():
                with contextlib.suppress(RuntimeError):  # a closed loop: the replica is stopping, nobody waits
                    loop.call_soon_threadsafe(_resolve, outcomes, error is not None)
            if error is None and self._after is not None:
                try:
                    self._after(items, context)
                except Exception:  # the answers are out; what failed after them is logged, never raised
                    logger.exception("after-work of a scored batch of %d failed", len(items))


def _resolve(outcomes: list[tuple[asyncio.Future, Any]], failed: bool) -> None:
    for future, outcome in outcomes:
        if future.done():  # the request was cancelled (its client went away)
            continue
        if failed:
            future.set_exception(outcome)
        else:
            future.set_result(outcome)
