"""The prediction log: every scored transaction and every late label, in SQLite (WAL) in the state folder.

Scoring never waits for the disk: :meth:`PredictionLog.record` puts rows on an in-memory queue bounded by rows
and a background thread writes them in batches (one transaction per flush); :meth:`PredictionLog.close` flushes
what is left. When the disk refuses a write (full, locked too long) the rows wait for the next flush within the
same bound; beyond it rows are dropped and counted, never blocking a request. A batch whose rows cannot be built
is dropped and counted alone. :meth:`PredictionLog.status` reports all of it (``/ready``). Labels are written
synchronously, so a 200 from ``POST /labels`` means they are on disk. Retention (``retention_days``) prunes rows
dated that long before the newest row.

Schema (``live_performance`` joins ``predictions`` with ``labels`` on ``transaction_id``)::

    predictions(request_id TEXT, transaction_id TEXT, tx_datetime TEXT, customer_id TEXT, terminal_id TEXT,
                scored_at TEXT  -- ISO 8601 UTC, when the replica scored it
                model_version TEXT, features TEXT  -- JSON object {feature name: value}
                fraud_probability REAL, alert INTEGER  -- 0/1
                threshold REAL, reasons TEXT  -- JSON list [{feature, contribution}], the answer's reasons
                degraded INTEGER  -- 1: scored without the stored past (the online store was unreadable))
    labels(transaction_id TEXT, is_fraud INTEGER, received_at TEXT  -- ISO 8601 UTC
           request_id TEXT)

Both tables are indexed by ``transaction_id``; ``predictions`` also by ``tx_datetime`` (the analyst queue reads a
day). Serving writes ``tx_datetime`` in UTC (``+00:00``), so a day's rows are a range of that column; readers still
narrow with a day of slack and filter exactly in UTC, for rows written with another offset.

Several replicas (processes) may share one file: SQLite's WAL mode with a busy timeout serialises writers.
"""

from __future__ import annotations

import logging
import queue
import sqlite3
import threading
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from time import monotonic
from typing import Any, Protocol

import orjson
import pandas as pd

from fraud_assets.core.months import month_bounds

logger = logging.getLogger("ray.serve")

SCHEMA = """
CREATE TABLE IF NOT EXISTS predictions (
    request_id TEXT NOT NULL, transaction_id TEXT NOT NULL, tx_datetime TEXT NOT NULL, customer_id TEXT NOT NULL,
    terminal_id TEXT NOT NULL, scored_at TEXT NOT NULL, model_version TEXT NOT NULL, features TEXT NOT NULL,
    fraud_probability REAL NOT NULL, alert INTEGER NOT NULL, threshold REAL NOT NULL,
    reasons TEXT NOT NULL DEFAULT '[]', degraded INTEGER NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS predictions_transaction ON predictions (transaction_id);
CREATE TABLE IF NOT EXISTS labels (
    transaction_id TEXT NOT NULL, is_fraud INTEGER NOT NULL, received_at TEXT NOT NULL, request_id TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS labels_transaction ON labels (transaction_id);
"""
_TIME_INDEX = "CREATE INDEX IF NOT EXISTS predictions_time ON predictions (tx_datetime)"
_INSERT_PREDICTION = ("INSERT INTO predictions (request_id, transaction_id, tx_datetime, customer_id, terminal_id, "
                      "scored_at, model_version, features, fraud_probability, alert, threshold, reasons, degraded) "
                      "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
ALERT_COLUMNS = ["transaction_id", "tx_datetime", "customer_id", "terminal_id", "scored_at", "model_version",
                 "features", "fraud_probability", "threshold", "reasons"]
_INSERT_LABEL = "INSERT INTO labels VALUES (?, ?, ?, ?)"


class LabelSink(Protocol):
    """Anything that receives late labels (the prediction log today, the online store later)."""

    def record_labels(self, labels: Sequence[Mapping[str, Any]], request_id: str) -> int:
        """Store ``labels`` durably and return how many were stored."""
        ...


def connect(path: str | Path) -> sqlite3.Connection:
    """A connection to the log in WAL mode with the schema in place."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(str(path), timeout=30.0, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.executescript(SCHEMA)
    columns = {row[1] for row in conn.execute("PRAGMA table_info(predictions)")}
    if "reasons" not in columns:  # a log written before the answer's reasons were kept
        conn.execute("ALTER TABLE predictions ADD COLUMN reasons TEXT NOT NULL DEFAULT '[]'")
    if "degraded" not in columns:  # ... or before degraded answers were flagged
        conn.execute("ALTER TABLE predictions ADD COLUMN degraded INTEGER NOT NULL DEFAULT 0")
    conn.execute(_TIME_INDEX)
    conn.commit()
    return conn


def prediction_rows(request_ids: Sequence[str], transactions: Sequence[Mapping[str, Any]],
                    decisions: Sequence[Mapping[str, Any]], features: Any, feature_names: Sequence[str]) -> list[tuple]:
    """Rows of the ``predictions`` table (``features``: a 2-D array, one row per transaction)."""
    scored_at = datetime.now(UTC).isoformat()
    rows = []
    for rid, tx, d, x in zip(request_ids, transactions, decisions, features.tolist(), strict=True):
        when = tx["tx_datetime"]
        rows.append((rid, d["transaction_id"], when.isoformat() if hasattr(when, "isoformat") else str(when),
                     str(tx["customer_id"]), str(tx["terminal_id"]), scored_at, d["model_version"],
                     orjson.dumps(dict(zip(feature_names, x, strict=True))).decode(), d["fraud_probability"],
                     int(d["alert"]), d["threshold"], orjson.dumps(d.get("reasons", [])).decode(),
                     int(d.get("degraded", False))))
    return rows


_LIVE_COLUMNS = ["transaction_id", "tx_datetime", "model_version", "fraud_probability", "alert"]
_LABEL_COLUMNS = ["transaction_id", "is_fraud", "received_at"]


def _read_only(path: str | Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30.0)


def _slack_bounds(start: datetime, end: datetime) -> tuple[str, str]:
    """``[start, end)`` widened by a day each side, as ISO date text (timestamps are stored with any offset)."""
    day = timedelta(days=1)
    lo = start - day if start > datetime.min.replace(tzinfo=start.tzinfo) + day else start
    hi = end + day if end < datetime.max.replace(tzinfo=end.tzinfo) - day else end
    return lo.strftime("%Y-%m-%d"), hi.strftime("%Y-%m-%d")


def _in_utc_range(frame: pd.DataFrame, start: datetime, end: datetime) -> pd.DataFrame:
    if frame.empty:
        return frame.reset_index(drop=True)
    when = pd.to_datetime(frame["tx_datetime"], utc=True, format="ISO8601")
    return frame.loc[(when >= pd.Timestamp(start)) & (when < pd.Timestamp(end))].reset_index(drop=True)


def read_labels(path: str | Path) -> pd.DataFrame:
    """Every label received: ``transaction_id, is_fraud, received_at`` (empty when no log yet)."""
    if not Path(path).exists():
        return pd.DataFrame(columns=_LABEL_COLUMNS)
    with _read_only(path) as conn:
        return pd.read_sql_query(f"SELECT {', '.join(_LABEL_COLUMNS)} FROM labels", conn)


def _read_range(path: str | Path, columns: list[str], start: datetime, end: datetime, where: str = "TRUE"
                ) -> pd.DataFrame:
    """``columns`` of the predictions matching ``where`` dated in ``[start, end)`` UTC (empty when no log yet)."""
    if not Path(path).exists():
        return pd.DataFrame(columns=columns)
    lo, hi = _slack_bounds(start, end)
    with _read_only(path) as conn:
        rows = pd.read_sql_query(f"SELECT {', '.join(columns)} FROM predictions "
                                 f"WHERE {where} AND tx_datetime >= ? AND tx_datetime < ?", conn, params=(lo, hi))
    return _in_utc_range(rows, start, end)


def read_between(path: str | Path, start: datetime, end: datetime) -> pd.DataFrame:
    """Predictions (the columns ``live_performance`` reads) of transactions dated in ``[start, end)`` UTC."""
    return _read_range(path, _LIVE_COLUMNS, start, end)


def read_month(path: str | Path, month: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Predictions of transactions dated in ``month`` and every label received (empty frames when no log yet)."""
    start, end = month_bounds(month)
    return read_between(path, start.to_pydatetime(), end.to_pydatetime()), read_labels(path)


def read_alerts(path: str | Path, day: date) -> pd.DataFrame:
    """The alerts of transactions dated on ``day`` (UTC), every :data:`ALERT_COLUMNS`; the latest score of a
    transaction scored more than once."""
    start = datetime.combine(day, time.min, tzinfo=UTC)
    end = start + timedelta(days=1) if day < date.max else datetime.max.replace(tzinfo=UTC)
    alerts = _read_range(path, ALERT_COLUMNS, start, end, "alert = 1")
    return alerts.sort_values("scored_at", kind="stable").drop_duplicates("transaction_id", keep="last").reset_index(
        drop=True)


def scored_days(path: str | Path, limit: int = 31) -> list[date]:
    """The latest ``limit`` UTC days with scored transactions, newest first (one index seek per day)."""
    if not Path(path).exists():
        return []
    days: list[date] = []
    with _read_only(path) as conn:
        below = "9999-12-31T23:59:59"
        while len(days) < limit:
            (latest,) = conn.execute("SELECT MAX(tx_datetime) FROM predictions WHERE tx_datetime < ?",
                                     (below,)).fetchone()
            if latest is None:
                break
            day = datetime.fromisoformat(latest).astimezone(UTC).date()
            if not days or day < days[-1]:
                days.append(day)
            below = min(latest[:10], day.isoformat())  # the next seek starts below this day
    return days


def label_status(path: str | Path, transaction_ids: Sequence[str]) -> dict[str, tuple[int, str]]:
    """The latest label of each of ``transaction_ids`` that has one: ``{id: (is_fraud, received_at)}``."""
    ids = list(dict.fromkeys(map(str, transaction_ids)))
    if not ids or not Path(path).exists():
        return {}
    found: dict[str, tuple[int, str]] = {}
    with _read_only(path) as conn:
        for i in range(0, len(ids), 500):  # SQLite caps bound parameters
            chunk = ids[i:i + 500]
            for tid, is_fraud, received_at in conn.execute(
                    "SELECT transaction_id, is_fraud, received_at FROM labels WHERE transaction_id IN "
                    f"({','.join('?' * len(chunk))}) ORDER BY received_at, rowid", chunk):
                found[tid] = (int(is_fraud), received_at)  # ordered by arrival: the last one wins
    return found


class PredictionLog:
    """Batched, off-the-hot-path writer of the ``predictions`` table, and a :class:`LabelSink`.

    Bounded by rows: at most ``max_queued_rows`` wait in memory (queued, or built and waiting for a retry after a
    failed write such as a full disk); beyond that a scored batch is dropped and counted (``on_drop``, the
    ``dropped`` count, ``/ready``), never blocking a request. A batch whose rows cannot be built is dropped and
    counted alone; the writer thread keeps going. With ``retention_days``, rows dated more than that before the
    newest row are deleted once per ``prune_every_s`` (by the newest row, not the clock: a replayed year keeps its
    rows).
    """

    def __init__(self, path: str | Path, flush_interval_s: float = 0.25, max_queued_rows: int = 200_000,
                 on_drop: Callable[[int], None] | None = None, retention_days: int | None = None,
                 prune_every_s: float = 3600.0) -> None:
        self.path = Path(path)
        self._on_drop = on_drop
        self._conn = connect(self.path)
        self._labels_lock = threading.Lock()
        self._count_lock = threading.Lock()
        self._queue: queue.Queue[tuple | None] = queue.Queue()
        self._flush_interval_s = flush_interval_s
        self._max_rows = max_queued_rows
        self._retention_days, self._prune_every_s = retention_days, prune_every_s
        self._next_prune = 0.0
        self._stopping = threading.Event()
        self._queued = 0  # rows queued, not built yet
        self._retry: list[tuple] = []  # rows built whose write failed, written first on the next flush
        self.dropped = 0
        self.written = 0
        self.pruned = 0
        self.error: str | None = None  # writes failing now (cleared by the next write that succeeds)
        self.last_error: str | None = None  # the latest error of any kind, kept
        self._writer = threading.Thread(target=self._run, name="prediction-log", daemon=True)
        self._writer.start()

    def record(self, request_ids: Sequence[str], transactions: Sequence[Mapping[str, Any]],
               decisions: Sequence[Mapping[str, Any]], features: Any, feature_names: Sequence[str]) -> bool:
        """Queue one scored batch for the background writer (rows are built there); False when it is full."""
        n = len(transactions)
        with self._count_lock:
            full = self._queued + len(self._retry) + n > self._max_rows
            if not full:
                self._queued += n
        if full:
            self._dropped(n)
            return False
        self._queue.put_nowait((request_ids, transactions, decisions, features, feature_names))
        return True

    def record_labels(self, labels: Sequence[Mapping[str, Any]], request_id: str) -> int:
        """Write labels with their arrival time and commit before returning."""
        received_at = datetime.now(UTC).isoformat()
        rows = [(str(x["transaction_id"]), int(x["is_fraud"]), received_at, request_id) for x in labels]
        with self._labels_lock, connect(self.path) as conn:
            conn.executemany(_INSERT_LABEL, rows)
        conn.close()
        return len(rows)

    def status(self) -> dict[str, Any]:
        """What ``/ready`` shows: rows written, queued, waiting for a retry, dropped, pruned, the errors."""
        return {"written": self.written, "queued": self._queued, "retrying": len(self._retry),
                "dropped": self.dropped, "pruned": self.pruned, "error": self.error, "last_error": self.last_error,
                "alive": self.alive()}

    def alive(self) -> bool:
        """Whether the writer thread runs (Serve's health check restarts a replica without it)."""
        return self._writer.is_alive()

    def close(self, timeout_s: float = 10.0) -> None:
        """Flush what is queued and stop the writer."""
        if self._writer.is_alive():
            self._stopping.set()
            self._queue.put(None)
            self._writer.join(timeout_s)

    def _run(self) -> None:
        stop = False
        while not stop:
            try:
                item = self._queue.get(timeout=self._flush_interval_s)
            except queue.Empty:
                if self._retry:
                    self._write([])
                continue
            if item is not None:  # let a flush interval's batches gather: one transaction for them all, not one
                self._stopping.wait(self._flush_interval_s)  # per request competing with the next request for the GIL
            batch: list[tuple] = []
            while True:
                if item is None:
                    stop = True
                    break
                batch.extend(self._built(item))
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
            self._write(batch)
        self._conn.close()

    def _built(self, item: tuple) -> list[tuple]:
        """The rows of one queued batch; a batch that cannot be built is dropped and counted, the writer goes on."""
        n = len(item[1])
        try:
            return prediction_rows(*item)
        except Exception as exc:
            self._dropped(n)
            self._note(exc, f"could not build {n} rows", failing=False)
            return []
        finally:
            with self._count_lock:
                self._queued -= n

    def _write(self, batch: list[tuple]) -> None:
        rows = self._retry + batch
        if not rows:
            return
        try:
            with self._conn:
                self._conn.executemany(_INSERT_PREDICTION, rows)
        except sqlite3.Error as exc:  # a full disk, a lock held too long: kept for the next flush, within the bound
            with self._count_lock:
                over = max(0, len(rows) + self._queued - self._max_rows)
                self._retry = rows[over:]
            self._dropped(over)
            self._note(exc, f"could not write {len(rows)} rows (kept {len(rows) - over} for a retry)")
            return
        with self._count_lock:
            self._retry = []
        self.written += len(rows)
        self.error = None
        self._prune_when_due()

    def _prune_when_due(self) -> None:
        now = monotonic()
        if self._retention_days is None or now < self._next_prune:
            return
        self._next_prune = now + self._prune_every_s
        try:
            (newest,) = self._conn.execute("SELECT MAX(tx_datetime) FROM predictions").fetchone()
            if newest is None:
                return
            cutoff = datetime.fromisoformat(newest).astimezone(UTC) - timedelta(days=self._retention_days + 1)
            with self._conn:  # a day of slack: rows are compared as text, written with any offset
                self.pruned += self._conn.execute("DELETE FROM predictions WHERE tx_datetime < ?",
                                                  (cutoff.isoformat(),)).rowcount
        except (sqlite3.Error, ValueError) as exc:
            self._note(exc, "could not prune", failing=False)

    def _note(self, exc: BaseException, what: str, failing: bool = True) -> None:
        message = f"{what}: {type(exc).__name__}: {exc}".splitlines()[0][:300]
        if not (failing and self.error is not None):  # one line per episode of failing writes, not one per flush
            logger.error("prediction log %s: %s", self.path.name, message)
        self.last_error = message
        if failing:
            self.error = message

    def _dropped(self, n: int) -> None:
        if not n:
            return
        self.dropped += n
        if self._on_drop is not None:
            self._on_drop(n)
