"""Micro-batching of lone ``/predict`` requests on one scoring thread: one hand-off a batch each way.

Requests arriving while a batch is scored queue up and form the next batch (at most ``max_batch_size``; with
``wait_s`` > 0 a batch that is not full waits that long for company). The thread scores a batch, resolves every
waiting request with one ``call_soon_threadsafe`` and only then runs the batch's after-work (metrics, prediction
log, shadow scoring), so no answer waits for it and the event loop does none of it.

A lone request (``inline_when_alone``, with no wait): when nothing is queued or being scored and no other request
arrived in the same turn of the event loop, it is scored on the event loop itself, as a plain FastAPI process
would, and its after-work runs on the loop once its answer is out (``call_soon``). The hand-off to a thread and
back cost a lone request more than batching can save: in one process, the replica's own scoring of one transaction
at a time took 1.32-1.45 ms through the thread against 1.05-1.25 ms on the loop (the hop, and the after-work
taking the GIL while the answer waits to be written). What arrives while it is scored waits in the sockets, is
read in one turn of the loop afterwards, finds company and goes to the thread as one batch. The loop is held for
the scoring: with a store that stalls, at most its read and write timeouts (the store's breaker then answers at
once).

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
                 name: str = "scoring", inline_when_alone: bool = False) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be at least 1, got {max_batch_size}")
        self._score, self._after = score, after
        self._max, self._wait_s = max_batch_size, max(0.0, wait_s)
        self._ready = threading.Condition()
        self._queue: deque[tuple[Item, asyncio.Future, asyncio.AbstractEventLoop]] = deque()
        self._closed = False
        self._inline = inline_when_alone and not wait_s  # a wait asks for company: a lone request waits for it
        self._arriving = 0  # requests deciding between the loop and the thread (event-loop side only)
        self._scoring = False  # the thread holds a batch whose answers are not out yet
        self.threaded = 0  # batches scored on the thread (written by the thread only)
        self.inline = 0  # lone requests scored on the event loop (written by the loop only)
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    async def submit(self, item: Item) -> Answer:
        """Queue ``item`` and wait for its answer (raises what scoring its batch raised); a lone one is scored here
        (``inline_when_alone``)."""
        if self._inline:
            self._arriving += 1
            try:
                await asyncio.sleep(0)  # the requests read in the same turn of the loop arrive meanwhile
                if self._arriving == 1 and not self._scoring and not self._queue and not self._closed:
                    return self._score_here(item)
            finally:
                self._arriving -= 1
        loop = asyncio.get_running_loop()
        future: asyncio.Future = loop.create_future()
        with self._ready:
            if self._closed:
                raise RuntimeError("the scoring thread is stopped")
            self._queue.append((item, future, loop))
            self._ready.notify()
        return await future

    @property
    def batches(self) -> int:
        """Batches scored, on the thread and on the loop (for tests and introspection)."""
        return self.threaded + self.inline

    def _scored(self, items: list[Item]) -> tuple[Sequence[Answer], Any]:
        answers, context = self._score(items)
        if len(answers) != len(items):
            raise RuntimeError(f"scoring returned {len(answers)} answers for {len(items)} requests")
        return answers, context

    def _score_here(self, item: Item) -> Answer:
        answers, context = self._scored([item])
        self.inline += 1
        if self._after is not None:  # after the answer is sent: the rest of this task's step writes it
            asyncio.get_running_loop().call_soon(self._after_safely, [item], context)
        return answers[0]

    def _after_safely(self, items: list[Item], context: Any) -> None:
        try:
            self._after(items, context)  # type: ignore[misc]  # only scheduled when there is after-work
        except Exception:  # the answers are out; what failed after them is logged, never raised
            logger.exception("after-work of a scored batch of %d failed", len(items))

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
            self._scoring = True
            return [self._queue.popleft() for _ in range(min(self._max, len(self._queue)))]

    def _run(self) -> None:
        while (batch := self._next_batch()) is not None:
            items = [item for item, _, _ in batch]
            try:
                answers, context = self._scored(items)
                error: BaseException | None = None
            except BaseException as exc:  # every request of the batch raises it (a 503 or a 500 with its id)
                answers, context, error = [], None, exc
            self.threaded += 1
            by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future, Any]]] = {}
            for i, (_, future, loop) in enumerate(batch):
                by_loop.setdefault(loop, []).append((future, error if error is not None else answers[i]))
            for loop, outcomes in by_loop.items():
                with contextlib.suppress(RuntimeError):  # a closed loop: the replica is stopping, nobody waits
                    loop.call_soon_threadsafe(_resolve, outcomes, error is not None)
            self._scoring = False
            if error is None and self._after is not None:
                self._after_safely(items, context)


def _resolve(outcomes: list[tuple[asyncio.Future, Any]], failed: bool) -> None:
    for future, outcome in outcomes:
        if future.done():  # the request was cancelled (its client went away)
            continue
        if failed:
            future.set_exception(outcome)
        else:
            future.set_result(outcome)
