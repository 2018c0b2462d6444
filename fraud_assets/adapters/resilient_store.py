"""The online store as serving sees it: a failing or locked store slows no answer and loses no transaction.

:class:`ResilientStore` wraps any :class:`~fraud_assets.adapters.online_store.TransactionStore` (opened with a
short statement timeout, ``serve.store_timeout_s``) with two circuit breakers and a backlog:

- **Reads.** A history read that fails or times out raises :class:`StoreUnavailable`; for the next
  ``retry_s`` every read raises it at once, without touching the store, then one read tries again. Online
  features turn it into a *degraded* answer: the transaction described without its stored past, flagged and
  counted (:mod:`fraud_assets.adapters.online_store`), never a 500.
- **Writes.** A scored transaction that cannot be appended goes to an in-memory backlog (bounded by
  ``max_pending_rows``; beyond it the oldest rows are dropped and counted, never silently), and so do the appends
  of the next ``retry_s`` without trying the store. A background thread writes the backlog when the store takes
  writes again, then direct appends resume. Until then, reads merge the backlog's rows of the keys they read,
  so a card's next transaction still sees this one: a store that only refuses writes (another process holding
  SQLite's write lock, as a seed or prune does) costs no degraded answer at all. An append that meets the SQLite
  store's own checkpoint finishing its log (:class:`~fraud_assets.adapters.online_store.WritesHeldBack`, some
  milliseconds a second under steady writes) takes the same way at once, without counting as a failure: no answer
  waits for a checkpoint.
- **Labels** that cannot be written wait in the same way (bounded by the same number) and are applied after
  the backlog's rows, so a label never misses the transaction it is for. Each carries its arrival time
  (``label_available_at``; one without it is stamped with the wall-clock time of the call), so a label written
  late still counts from when it came, not from when the store took it.

What it cannot promise: rows still in the backlog when the process is killed are lost to the store (the
prediction log has them); with several replicas each merges only its own backlog.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd

from fraud_assets.adapters.online_store import Rows, StoreUnavailable, TransactionStore, WritesHeldBack
from fraud_assets.core.features import timestamp_parts
from fraud_assets.schemas import LABEL_AVAILABLE_AT

logger = logging.getLogger("ray.serve")

__all__ = ["ResilientStore", "StoreStatus", "StoreUnavailable", "store_errors"]


def store_errors() -> tuple[type[BaseException], ...]:
    """The exceptions that mean "the store failed", not "the code is wrong" (a TypeError still propagates)."""
    errors: tuple[type[BaseException], ...] = (sqlite3.Error, OSError, TimeoutError)
    try:
        import psycopg
    except ImportError:  # pragma: no cover - psycopg is a dependency; a SQLite-only install still works
        return errors
    return (*errors, psycopg.Error)


@dataclass(frozen=True)
class _Pending:
    """A scored transaction waiting for the store, with what a history read matches it on."""

    transaction: Mapping[str, Any]
    ts: int
    customer: str
    terminal: str
    amount: float


@dataclass(frozen=True)
class StoreStatus:
    """What ``/ready`` and ``/metrics`` say about the store."""

    pending_rows: int
    pending_labels: int
    written_late: int
    dropped_rows: int
    failed_reads: int
    failed_writes: int
    error: str | None

    def as_dict(self) -> dict[str, Any]:
        """The status as a JSON object."""
        return dict(self.__dict__)


class ResilientStore:
    """A :class:`TransactionStore` whose reads fail fast and whose writes never fail (see the module)."""

    def __init__(self, store: TransactionStore, retry_s: float = 1.0, max_pending_rows: int = 100_000,
                 on_dropped: Callable[[int], None] | None = None,
                 clock: Callable[[], float] = time.monotonic, wall_clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self._retry_s, self._max_pending = retry_s, max_pending_rows
        self._on_dropped, self._clock, self._wall_clock = on_dropped, clock, wall_clock
        self._errors = store_errors()
        self._lock = threading.Lock()
        self._pending: deque[_Pending] = deque()
        self._pending_labels: deque[Mapping[str, Any]] = deque()
        self._by_customer: dict[str, list[_Pending]] = {}
        self._by_terminal: dict[str, list[_Pending]] = {}
        self._reads_blocked_until = self._writes_blocked_until = 0.0
        self._written_late = self._dropped = self._failed_reads = self._failed_writes = 0
        self._error: str | None = None
        self._wake, self._stop = threading.Event(), threading.Event()
        self._flusher = threading.Thread(target=self._run, name="store-backlog", daemon=True)
        self._flusher.start()

    # -- reads ---------------------------------------------------------------------------------------------------

    def history(self, customers: Sequence[str], terminals: Sequence[str], since_s: int, until_s: int) -> Rows:
        """The store's rows of these keys plus the backlog's; :class:`StoreUnavailable` when it cannot be read."""
        if self._clock() < self._reads_blocked_until:
            raise StoreUnavailable(self._error or "the store failed recently")
        try:
            rows = self.store.history(customers, terminals, since_s, until_s)
        except self._errors as exc:
            self._failed(exc, reads=True)
            raise StoreUnavailable(self._error) from exc
        if self._error is not None and not self._pending:
            self._error = None  # read again, nothing waiting: healed
        return self._with_backlog(rows, customers, terminals, since_s, until_s) if self._pending else rows

    def _with_backlog(self, rows: Rows, customers: Sequence[str], terminals: Sequence[str], since_s: int,
                      until_s: int) -> Rows:
        with self._lock:
            found: dict[int, _Pending] = {}
            for index, keys in ((self._by_customer, customers), (self._by_terminal, terminals)):
                for key in set(map(str, keys)):
                    for p in index.get(key, ()):
                        if since_s <= p.ts < until_s:
                            found[id(p)] = p  # a row of both a customer and a terminal read comes once
        if not found:
            return rows
        extra = list(found.values())
        waiting = Rows(np.array([p.ts for p in extra], np.int64), [p.customer for p in extra],
                       [p.terminal for p in extra], np.array([p.amount for p in extra], np.float64),
                       np.full(len(extra), np.nan))
        return Rows.concat([rows, waiting]) if len(rows.ts) else waiting

    # -- writes --------------------------------------------------------------------------------------------------

    def append(self, transactions: Sequence[Mapping[str, Any]]) -> int:
        """Append to the store, or to the backlog when it fails (or failed less than ``retry_s`` ago)."""
        if not transactions:
            return 0
        if self._clock() >= self._writes_blocked_until:  # rows still waiting need not go first: ids and times are
            try:  # explicit, and the store keeps the first copy of an id
                return self.store.append(transactions, wait=False)
            except WritesHeldBack:  # for a moment: the backlog's writer waits for the store, the answer does not
                pass
            except self._errors as exc:
                self._failed(exc, reads=False)
        self._queue(transactions)
        return 0

    def add_labels(self, labels: Sequence[Mapping[str, Any]]) -> int:
        """Labels into the store, or after the backlog when it fails; the number applied now. A label without a
        ``label_available_at`` arrived now (the wall clock, UTC), whenever the store gets it."""
        if not labels:
            return 0
        now = datetime.fromtimestamp(self._wall_clock(), UTC)
        labels = [lb if lb.get(LABEL_AVAILABLE_AT) is not None else {**lb, LABEL_AVAILABLE_AT: now} for lb in labels]
        if not self._pending and not self._pending_labels and self._clock() >= self._writes_blocked_until:
            try:
                return self.store.add_labels(labels)
            except self._errors as exc:
                self._failed(exc, reads=False)
        with self._lock:
            self._pending_labels.extend(labels)
            over = max(0, len(self._pending_labels) - self._max_pending)
            for _ in range(over):
                self._pending_labels.popleft()
        self._count_dropped(over)
        self._wake.set()
        return 0

    def _queue(self, transactions: Sequence[Mapping[str, Any]]) -> None:
        items = [_Pending(tx, timestamp_parts(tx["tx_datetime"])[0], str(tx["customer_id"]), str(tx["terminal_id"]),
                          float(tx["amount"])) for tx in transactions]
        with self._lock:
            self._pending.extend(items)
            for p in items:
                self._by_customer.setdefault(p.customer, []).append(p)
                self._by_terminal.setdefault(p.terminal, []).append(p)
            over = max(0, len(self._pending) - self._max_pending)
            self._forget_oldest(over)
        self._count_dropped(over)
        self._wake.set()

    def _forget_oldest(self, n: int, written: set[int] | None = None) -> None:
        """Drop the ``n`` oldest waiting rows (or, with ``written``, the oldest ones whose ids are in it) from the
        backlog and its key indexes (under the lock): the oldest row of a key is the first of its list."""
        while self._pending and (n > 0 if written is None else id(self._pending[0]) in written):
            p = self._pending.popleft()
            n -= 1
            for index, key in ((self._by_customer, p.customer), (self._by_terminal, p.terminal)):
                rows = index[key]
                rows.pop(0)
                if not rows:
                    del index[key]

    def _count_dropped(self, n: int) -> None:
        if n:
            self._dropped += n
            if self._on_dropped is not None:
                self._on_dropped(n)
            logger.error("online store: backlog full (%d rows), %d oldest dropped", self._max_pending, n)

    def _failed(self, exc: BaseException, reads: bool) -> None:
        until = self._clock() + self._retry_s
        if reads:
            self._failed_reads += 1
            self._reads_blocked_until = until
        else:
            self._failed_writes += 1
            self._writes_blocked_until = until
        first = self._error is None
        self._error = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
        if first:
            logger.warning("online store failed (%s): %s for %.1f s, then retried", self._error,
                           "answers degraded" if reads else "writes held back", self._retry_s)
        close = getattr(self.store, "close", None)
        if close is not None:  # a broken connection is not reused
            with contextlib.suppress(Exception):
                close()

    # -- the backlog's writer --------------------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self._retry_s)
            self._wake.clear()
            if self._clock() < self._writes_blocked_until:
                self._stop.wait(max(0.0, self._writes_blocked_until - self._clock()))
            while not self._stop.is_set() and (self._pending or self._pending_labels) and self.flush() is False \
                    and self._clock() >= self._writes_blocked_until:
                pass  # more arrived while writing (the store works): write them now, not after another interval

    def flush(self) -> bool:
        """Write the backlog (rows, then labels) to the store; True when nothing is left waiting."""
        with self._lock:
            rows = list(self._pending)
            labels = list(self._pending_labels)
        try:
            for i in range(0, len(rows), 10_000):
                self.store.append([p.transaction for p in rows[i:i + 10_000]])
            if labels:
                self.store.add_labels(labels)
        except self._errors as exc:
            self._failed(exc, reads=False)
            return False
        with self._lock:  # by identity: rows dropped meanwhile (a full backlog) must not take newer rows with them
            self._forget_oldest(0, {id(p) for p in rows})
            sent = {id(label) for label in labels}
            while self._pending_labels and id(self._pending_labels[0]) in sent:
                self._pending_labels.popleft()
            self._written_late += len(rows)
            left = bool(self._pending or self._pending_labels)
        if rows or labels:
            self._writes_blocked_until = self._reads_blocked_until = 0.0
            if self._error is not None:  # not after a checkpoint's hold, which is no failure
                logger.warning("online store is back: %d rows and %d labels written late", len(rows), len(labels))
            self._error = None
        return not left

    def status(self) -> StoreStatus:
        """Counts for ``/ready`` and ``/metrics``."""
        return StoreStatus(len(self._pending), len(self._pending_labels), self._written_late, self._dropped,
                           self._failed_reads, self._failed_writes, self._error)

    def alive(self) -> bool:
        """Whether the backlog's writer runs, and the store's checkpoint thread when it has one (Serve's health
        check restarts a replica without them)."""
        checkpoints = getattr(self.store, "checkpoints_alive", None)
        return self._flusher.is_alive() and (checkpoints is None or checkpoints())

    def close(self, timeout_s: float = 10.0) -> int:
        """Try a last flush, stop the writer; the number of rows that never reached the store (logged)."""
        self._stop.set()
        self._wake.set()
        self._flusher.join(timeout_s)
        deadline = self._clock() + timeout_s
        while self._pending and self._clock() < deadline and not self.flush():
            time.sleep(min(0.2, self._retry_s))
        lost = len(self._pending)
        if lost:
            logger.error("online store: %d scored rows never reached the store (they are in the prediction log)", lost)
        stop_checkpoints = getattr(self.store, "stop_checkpoints", None)
        if stop_checkpoints is not None:  # after the last write: its log is copied too
            stop_checkpoints()
        return lost

    # -- the rest of the protocol: straight through -----------------------------------------------------------------

    def seed(self, frame: pd.DataFrame) -> int:
        """Bulk-load (not guarded: batch jobs want the error)."""
        return self.store.seed(frame)

    def prune(self, before_s: int) -> int:
        """Delete old rows (not guarded)."""
        return self.store.prune(before_s)

    def count(self) -> int:
        """How many rows the store holds (not counting the backlog)."""
        return self.store.count()

    def card_transactions(self, customer: str, until_s: int, limit: int) -> list[dict[str, Any]]:
        """A card's latest transactions for people (not guarded: the analyst endpoint answers 503 on error)."""
        return self.store.card_transactions(customer, until_s, limit)
