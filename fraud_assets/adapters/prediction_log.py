"""The prediction log: every scored transaction and every late label, in SQLite (WAL) in the state folder.

Scoring never waits for the disk: :meth:`PredictionLog.record` puts rows on a bounded in-memory queue and a
background thread writes them in batches (one transaction per flush); :meth:`PredictionLog.close` flushes
what is left. When the queue is full (the disk stalled) rows are dropped and counted, never blocking a
request. Labels are written synchronously, so a 200 from ``POST /labels`` means they are on disk.

Schema (``live_performance`` joins ``predictions`` with ``labels`` on ``transaction_id``)::

    predictions(request_id TEXT, transaction_id TEXT, tx_datetime TEXT, customer_id TEXT, terminal_id TEXT,
                scored_at TEXT  -- ISO 8601 UTC, when the replica scored it
                model_version TEXT, features TEXT  -- JSON object {feature name: value}
                fraud_probability REAL, alert INTEGER  -- 0/1
                threshold REAL)
    labels(transaction_id TEXT, is_fraud INTEGER, received_at TEXT  -- ISO 8601 UTC
           request_id TEXT)

Several replicas (processes) may share one file: SQLite's WAL mode with a busy timeout serialises writers.
"""

from __future__ import annotations

import logging
import queue
import sqlite3
import threading
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import orjson
import pandas as pd

from fraud_assets.core.months import month_bounds

logger = logging.getLogger("ray.serve")

SCHEMA = """
CREATE TABLE IF NOT EXISTS predictions (
    request_id TEXT NOT NULL, transaction_id TEXT NOT NULL, tx_datetime TEXT NOT NULL, customer_id TEXT NOT NULL,
    terminal_id TEXT NOT NULL, scored_at TEXT NOT NULL, model_version TEXT NOT NULL, features TEXT NOT NULL,
    fraud_probability REAL NOT NULL, alert INTEGER NOT NULL, threshold REAL NOT NULL);
CREATE INDEX IF NOT EXISTS predictions_transaction ON predictions (transaction_id);
CREATE TABLE IF NOT EXISTS labels (
    transaction_id TEXT NOT NULL, is_fraud INTEGER NOT NULL, received_at TEXT NOT NULL, request_id TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS labels_transaction ON labels (transaction_id);
"""
_INSERT_PREDICTION = "INSERT INTO predictions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
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
                     int(d["alert"]), d["threshold"]))
    return rows


def read_month(path: str | Path, month: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Predictions of transactions dated in ``month`` and every label received (empty frames when no log yet)."""
    empty = (pd.DataFrame(columns=["transaction_id", "tx_datetime", "model_version", "fraud_probability", "alert"]),
             pd.DataFrame(columns=["transaction_id", "is_fraud", "received_at"]))
    if not Path(path).exists():
        return empty
    start, end = month_bounds(month)
    # Timestamps are ISO text with any UTC offset: narrow with a day of slack in SQL, then exactly in UTC.
    lo, hi = (start - pd.Timedelta(days=1)).strftime("%Y-%m-%d"), (end + pd.Timedelta(days=1)).strftime("%Y-%m-%d")
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30.0) as conn:
        preds = pd.read_sql_query(
            "SELECT transaction_id, tx_datetime, model_version, fraud_probability, alert FROM predictions "
            "WHERE tx_datetime >= ? AND tx_datetime < ?", conn, params=(lo, hi))
        labels = pd.read_sql_query("SELECT transaction_id, is_fraud, received_at FROM labels", conn)
    when = pd.to_datetime(preds["tx_datetime"], utc=True, format="ISO8601")
    return preds.loc[(when >= start) & (when < end)].reset_index(drop=True), labels


class PredictionLog:
    """Batched, off-the-hot-path writer of the ``predictions`` table, and a :class:`LabelSink`."""

    def __init__(self, path: str | Path, flush_interval_s: float = 0.25, max_queued_batches: int = 10_000,
                 on_drop: Callable[[int], None] | None = None) -> None:
        self.path = Path(path)
        self._on_drop = on_drop
        self._conn = connect(self.path)
        self._labels_lock = threading.Lock()
        self._queue: queue.Queue[tuple | None] = queue.Queue(maxsize=max_queued_batches)
        self._flush_interval_s = flush_interval_s
        self.dropped = 0
        self.written = 0
        self._writer = threading.Thread(target=self._run, name="prediction-log", daemon=True)
        self._writer.start()

    def record(self, request_ids: Sequence[str], transactions: Sequence[Mapping[str, Any]],
               decisions: Sequence[Mapping[str, Any]], features: Any, feature_names: Sequence[str]) -> bool:
        """Queue one scored batch for the background writer (rows are built there); False when the queue is full."""
        try:
            self._queue.put_nowait((request_ids, transactions, decisions, features, feature_names))
        except queue.Full:
            self._dropped(len(transactions))
            return False
        return True

    def record_labels(self, labels: Sequence[Mapping[str, Any]], request_id: str) -> int:
        """Write labels with their arrival time and commit before returning."""
        received_at = datetime.now(UTC).isoformat()
        rows = [(str(x["transaction_id"]), int(x["is_fraud"]), received_at, request_id) for x in labels]
        with self._labels_lock, connect(self.path) as conn:
            conn.executemany(_INSERT_LABEL, rows)
        conn.close()
        return len(rows)

    def close(self, timeout_s: float = 10.0) -> None:
        """Flush what is queued and stop the writer."""
        if self._writer.is_alive():
            self._queue.put(None)
            self._writer.join(timeout_s)

    def _run(self) -> None:
        stop = False
        while not stop:
            batch: list[tuple] = []
            try:
                item = self._queue.get(timeout=self._flush_interval_s)
            except queue.Empty:
                continue
            while True:
                if item is None:
                    stop = True
                    break
                batch.extend(prediction_rows(*item))
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
            self._write(batch)
        self._conn.close()

    def _write(self, batch: list[tuple]) -> None:
        if not batch:
            return
        try:
            with self._conn:
                self._conn.executemany(_INSERT_PREDICTION, batch)
            self.written += len(batch)
        except sqlite3.Error:
            self._dropped(len(batch))
            logger.exception("prediction log: could not write %d rows to %s", len(batch), self.path)

    def _dropped(self, n: int) -> None:
        self.dropped += n
        if self._on_drop is not None:
            self._on_drop(n)
