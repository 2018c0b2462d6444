"""The online store: past transactions (and late labels) that online features read, behind one interface.

:class:`TransactionStore` is the seam: the embedded default is :class:`SqliteTransactionStore`, a SQLite
file in the state folder in WAL mode (many readers, such as Ray replicas and Dagster runs, and one writer
at a time), indexed by (customer, time) and (terminal, time). A networked store (PostgreSQL, Redis)
implements the same four methods. :class:`OnlineFeatures` turns incoming transactions into the model's
feature frame through :func:`fraud_assets.core.features.compute_features`, the function batch mode uses.

Labels: a transaction's ``is_fraud`` is what the snapshot said when the store was seeded, or what
``add_labels`` recorded later (``POST /labels``); transactions appended by serving have no label until
then, and an unknown label counts as "not fraud" in the terminal fraud rates, as it would for a bank.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import pandas as pd

from fraud_assets.core.features import DAY_S, lookback_days, online_features
from fraud_assets.params import FeatureParams

SCHEMA = """
CREATE TABLE IF NOT EXISTS transactions (
    transaction_id TEXT PRIMARY KEY, ts INTEGER NOT NULL, customer_id TEXT NOT NULL, terminal_id TEXT NOT NULL,
    amount REAL NOT NULL, is_fraud INTEGER);
CREATE INDEX IF NOT EXISTS transactions_customer ON transactions (customer_id, ts);
CREATE INDEX IF NOT EXISTS transactions_terminal ON transactions (terminal_id, ts);
"""
_COLUMNS = ["transaction_id", "tx_datetime", "customer_id", "terminal_id", "amount", "is_fraud"]


class TransactionStore(Protocol):
    """What online features need from a store of past transactions."""

    def history(self, customers: Sequence[str], terminals: Sequence[str], since_s: int, until_s: int
                ) -> pd.DataFrame:
        """Rows of these customers or terminals with ``since_s <= ts < until_s`` (epoch seconds)."""
        ...

    def append(self, transactions: Sequence[Mapping[str, Any]]) -> int:
        """Add scored transactions (no label yet); an id already stored is left as it is."""
        ...

    def add_labels(self, labels: Sequence[Mapping[str, Any]]) -> int:
        """Set ``is_fraud`` of stored transactions; return how many were found."""
        ...

    def seed(self, frame: pd.DataFrame) -> int:
        """Bulk-load labelled transactions (a validated snapshot); existing ids are replaced."""
        ...


def _epoch_s(values: Any) -> pd.Series:
    return pd.to_datetime(pd.Series(values), utc=True).astype("int64") // 1_000_000_000


class SqliteTransactionStore:
    """The embedded store: one SQLite file, WAL mode, safe for several processes."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        with self._connect() as conn:
            conn.executescript(SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(str(self.path), timeout=30.0, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            self._local.conn = conn
        return conn

    def history(self, customers: Sequence[str], terminals: Sequence[str], since_s: int, until_s: int
                ) -> pd.DataFrame:
        """Rows of these customers or terminals in ``[since_s, until_s)``, as a canonical frame."""
        conn = self._connect()
        rows: dict[str, tuple] = {}
        for column, keys in (("customer_id", customers), ("terminal_id", terminals)):
            for key in dict.fromkeys(keys):
                for r in conn.execute(
                        f"SELECT transaction_id, ts, customer_id, terminal_id, amount, is_fraud FROM transactions "
                        f"WHERE {column} = ? AND ts >= ? AND ts < ?", (key, since_s, until_s)):
                    rows[r[0]] = r
        frame = pd.DataFrame(list(rows.values()), columns=["transaction_id", "ts", "customer_id", "terminal_id",
                                                             "amount", "is_fraud"])
        frame.insert(1, "tx_datetime", pd.to_datetime(frame.pop("ts").astype("int64"), unit="s", utc=True))
        return frame

    def append(self, transactions: Sequence[Mapping[str, Any]]) -> int:
        """Insert scored transactions without a label (ids already stored are kept as they are)."""
        if not transactions:
            return 0
        ts = _epoch_s([t["tx_datetime"] for t in transactions]).tolist()
        rows = [(str(t["transaction_id"]), int(s), str(t["customer_id"]), str(t["terminal_id"]), float(t["amount"]))
                for t, s in zip(transactions, ts, strict=True)]
        conn = self._connect()
        with conn:
            cur = conn.executemany("INSERT OR IGNORE INTO transactions (transaction_id, ts, customer_id, terminal_id, "
                                   "amount) VALUES (?, ?, ?, ?, ?)", rows)
        return cur.rowcount

    def add_labels(self, labels: Sequence[Mapping[str, Any]]) -> int:
        """Record late labels on stored transactions; return how many matched."""
        conn = self._connect()
        with conn:
            cur = conn.executemany("UPDATE transactions SET is_fraud = ? WHERE transaction_id = ?",
                                   [(int(lb["is_fraud"]), str(lb["transaction_id"])) for lb in labels])
        return cur.rowcount

    def seed(self, frame: pd.DataFrame) -> int:
        """Bulk-load a labelled frame (canonical columns); existing ids are replaced."""
        if frame.empty:
            return 0
        data = pd.DataFrame({
            "transaction_id": frame["transaction_id"].astype(str), "ts": _epoch_s(frame["tx_datetime"]).to_numpy(),
            "customer_id": frame["customer_id"].astype(str), "terminal_id": frame["terminal_id"].astype(str),
            "amount": frame["amount"].astype(float),
            "is_fraud": frame["is_fraud"].astype("Int64") if "is_fraud" in frame else pd.NA})
        conn = self._connect()
        with conn:
            conn.executemany("INSERT OR REPLACE INTO transactions VALUES (?, ?, ?, ?, ?, ?)",
                             [(r[0], int(r[1]), r[2], r[3], float(r[4]), None if pd.isna(r[5]) else int(r[5]))
                              for r in data.itertuples(index=False)])
        return len(data)

    def count(self) -> int:
        """How many transactions the store holds."""
        return int(self._connect().execute("SELECT COUNT(*) FROM transactions").fetchone()[0])


class OnlineFeatures:
    """Features of incoming transactions from a store, by the same code as batch mode; then remembers them."""

    def __init__(self, store: TransactionStore, p: FeatureParams, remember: bool = True) -> None:
        self.store, self.p, self.remember = store, p, remember

    def __call__(self, transactions: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
        """The feature frame (key columns + features, in order) of ``transactions``."""
        frame = pd.DataFrame.from_records(list(transactions), columns=_COLUMNS[:5])
        ts = _epoch_s(frame["tx_datetime"])
        history = self.store.history(frame["customer_id"].astype(str).tolist(),
                                     frame["terminal_id"].astype(str).tolist(),
                                     int(ts.min()) - lookback_days(self.p) * DAY_S, int(ts.max()) + 1)
        features = online_features(transactions, self.p, history=history)
        if self.remember:
            self.store.append(transactions)
        return features
