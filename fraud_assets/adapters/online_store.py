"""The online store: past transactions (and late labels) that online features read, behind one interface.

:class:`TransactionStore` is the seam: the embedded default is :class:`SqliteTransactionStore`, a SQLite
file in the state folder in WAL mode (many readers, such as Ray replicas and Dagster runs, and one writer
at a time), indexed by (customer, time) and (terminal, time), each index carrying the columns features
read. :class:`PostgresTransactionStore` is the same table in PostgreSQL, for replicas on several machines;
:func:`open_store` picks one from a location (``$FRAUD_ONLINE_STORE``: a path or a ``postgresql://`` URL).
Another networked store (Redis, say) implements the seven methods of the protocol. :class:`OnlineFeatures`
turns incoming transactions into the model's features through
:func:`fraud_assets.core.features.feature_values`, the function batch mode ends in.

Labels: a transaction's ``is_fraud`` is what the snapshot said when the store was seeded, or what
``add_labels`` recorded later (``POST /labels``); transactions appended by serving have no label until
then, and an unknown label counts as "not fraud" in the terminal fraud rates, as it would for a bank. Each
label's arrival is kept in ``label_at`` (epoch seconds; NULL with a NULL ``is_fraud``: no label yet), and the
features read a label only from then on: seeding stores the snapshot's ``label_available_at``, ``add_labels``
each label's own or the time of the call. A label with a NULL ``label_at`` (stored before arrival times were
kept, or seeded from a snapshot without the column) follows the default rule, ``features.label_delay_days``
after the transaction, as batch mode does for a frame without the column; so opening an older store only adds
the column, and the store never needs the delay.
"""

from __future__ import annotations

import logging
import re
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from itertools import compress
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import orjson
import pandas as pd

from fraud_assets.core.features import FEATURE_COLUMNS, KEY_COLUMNS, Incoming, Rows, online_matrix, timestamp_parts
from fraud_assets.params import FeatureParams
from fraud_assets.schemas import LABEL_AVAILABLE_AT
from fraud_assets.windows import DAY_S, lookback_days

logger = logging.getLogger(__name__)

# The history read is two index range scans. Both indexes carry every column it returns (covering indexes), so a
# card's rows come from the few index pages holding them instead of one table page each: rows are stored in arrival
# order, a card's scattered over the whole file. PostgreSQL keeps the carried columns out of the key (INCLUDE).
_INDEXES = {"transactions_by_customer": ("customer_id, ts", "terminal_id, amount, is_fraud, label_at"),
            "transactions_by_terminal": ("terminal_id, ts", "customer_id, amount, is_fraud, label_at")}
_REPLACED_INDEXES = ("transactions_customer", "transactions_terminal",  # (customer_id, ts), (terminal_id, ts)
                     "transactions_customer_covering", "transactions_terminal_covering")  # ... without label_at
_COLUMNS = "transaction_id, ts, customer_id, terminal_id, amount, is_fraud, label_at"  # what seed writes
_READ = "ts, customer_id, terminal_id, amount, is_fraud, label_at"  # what a history read returns (see _rows)
# SQLite's history read is one step: each column aggregated into one JSON array by SQLite itself, instead of one
# Python tuple per row. A row-by-row fetch releases and retakes the GIL at every row, so with the event loop busy
# beside it (serving) a 16-transaction read took 5.8 ms instead of 1.7 ms (README "Serving at a bank's volume").
# SQLite prints a REAL with 15 digits, not exactly, so amounts travel as whole thousandths when that is exact
# (``units / 1000.0`` in IEEE double arithmetic is then the stored value to the bit: SQLite checks it with the same
# division); other amounts (a fourth decimal, beyond 1e12) are read row by row, exactly as stored.
_AMOUNT_SCALE = 1000.0
_EXACT = f"(amount < 1e12 AND ROUND(amount * {_AMOUNT_SCALE}) / {_AMOUNT_SCALE} = amount)"
_AGGREGATED = ", ".join([*(f"json_group_array({c}) FILTER (WHERE e)" for c in (
    "ts", "customer_id", "terminal_id", f"CAST(ROUND(amount * {_AMOUNT_SCALE}) AS INTEGER)", "is_fraud",
    "label_at")), "count(*) FILTER (WHERE NOT e)"])


def _statements(postgres: bool = False, add_label_at: bool = False) -> list[str]:
    """The table and its indexes. A store made before the covering indexes or before ``label_at`` gets them (the
    column with ``add_label_at``) and drops the indexes they replace."""
    ts, amount = ("BIGINT", "DOUBLE PRECISION") if postgres else ("INTEGER", "REAL")
    table = ("CREATE TABLE IF NOT EXISTS transactions (\n    transaction_id TEXT PRIMARY KEY, "
             f"ts {ts} NOT NULL, customer_id TEXT NOT NULL, terminal_id TEXT NOT NULL,\n"
             f"    amount {amount} NOT NULL, is_fraud INTEGER, label_at {ts})")
    added = [f"ALTER TABLE transactions ADD COLUMN {'IF NOT EXISTS ' if postgres else ''}label_at {ts}"
             ] if add_label_at else []
    indexes = [f"CREATE INDEX IF NOT EXISTS {name} ON transactions "
               + (f"({key}) INCLUDE ({carried})" if postgres else f"({key}, {carried})")
               for name, (key, carried) in _INDEXES.items()]
    dropped = [f"DROP INDEX IF EXISTS {name}" for name in _REPLACED_INDEXES]  # first: their pages hold the new ones
    return [table, *added, *dropped, *indexes]


class StoreUnavailable(Exception):
    """The store could not be read within its timeout, or failed moments ago (raised by serving's guarded store)."""


class WritesHeldBack(Exception):
    """A write that was asked not to wait (``wait=False``) met the store's own checkpoint finishing its log (for some
    milliseconds): nothing was written, the caller keeps the rows. Not a failure of the store."""


class TransactionStore(Protocol):
    """What online features need from a store of past transactions."""

    def history(self, customers: Sequence[str], terminals: Sequence[str], since_s: int, until_s: int) -> Rows:
        """Rows of these customers or terminals with ``since_s <= ts < until_s`` (epoch seconds), each once, with
        their labels' arrival (``Rows.label_at``)."""
        ...

    def append(self, transactions: Sequence[Mapping[str, Any]], wait: bool = True) -> int:
        """Add scored transactions (no label yet); an id already stored is left as it is. With ``wait=False`` a
        store may raise :class:`WritesHeldBack` instead of waiting for a hold of its own to end."""
        ...

    def add_labels(self, labels: Sequence[Mapping[str, Any]]) -> int:
        """Set ``is_fraud`` of stored transactions and when it arrived (each label's ``label_available_at``, default
        the time of the call); return how many were found."""
        ...

    def seed(self, frame: pd.DataFrame) -> int:
        """Bulk-load labelled transactions (a validated snapshot); existing ids are replaced."""
        ...

    def prune(self, before_s: int) -> int:
        """Delete rows with ``ts < before_s`` (epoch seconds); return how many went."""
        ...

    def count(self) -> int:
        """How many transactions the store holds."""
        ...

    def card_transactions(self, customer: str, until_s: int, limit: int) -> list[dict[str, Any]]:
        """The card's latest ``limit`` transactions before ``until_s``, newest first (for people, not features)."""
        ...


_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")
_FEW_KEYS = 500  # above this many distinct keys a history read goes in chunks (SQLite's bound-parameter cap)
# A statement timeout is for a read of one micro-batch: up to this many keys (32 transactions' cards and terminals).
# A larger read (/predict/batch, 10,000 rows) gets the timeout once per this many keys, up to MAX_READ_S.
KEYS_PER_TIMEOUT = 64
MAX_READ_S = 30.0
# Writes likewise: a micro-batch's append (up to 32 rows) gets the timeout, a /predict/batch of 10,000 rows the timeout
# per this many rows (it took 0.1-0.2 s on this machine: under one timeout it failed every time and went through the
# backlog, which every read then merged).
ROWS_PER_TIMEOUT = 1_000
# A serving store's checkpoint thread finishes the write-ahead log with this process's writes held back once the log
# holds this many pages (SQLite's own automatic checkpoint is at 1,000): the log stays bounded under steady writes.
RESTART_PAGES = 1_000


def read_budget_s(timeout_s: float, n_keys: int) -> float:
    """How long a history read of ``n_keys`` customers and terminals may take with a statement timeout of
    ``timeout_s``: the timeout per :data:`KEYS_PER_TIMEOUT` keys, at most :data:`MAX_READ_S` (or the timeout)."""
    return _budget_s(timeout_s, n_keys / KEYS_PER_TIMEOUT)


def write_budget_s(timeout_s: float, n_rows: int) -> float:
    """How long a write of ``n_rows`` rows may take with a statement timeout of ``timeout_s``: the timeout per
    :data:`ROWS_PER_TIMEOUT` rows, at most :data:`MAX_READ_S` (or the timeout)."""
    return _budget_s(timeout_s, n_rows / ROWS_PER_TIMEOUT)


def _budget_s(timeout_s: float, timeouts: float) -> float:
    return min(max(MAX_READ_S, timeout_s), timeout_s * max(1.0, timeouts))


def _scored_rows(transactions: Sequence[Mapping[str, Any]]) -> list[tuple]:
    """``(id, ts, customer, terminal, amount)`` of transactions being scored (no label yet)."""
    return [(str(t["transaction_id"]), timestamp_parts(t["tx_datetime"])[0], str(t["customer_id"]),
             str(t["terminal_id"]), float(t["amount"])) for t in transactions]


def _label_arrival_s(label: Mapping[str, Any], now_s: int) -> int:
    """When ``label`` arrived, in epoch seconds (floored): its ``label_available_at`` (a datetime or ISO 8601 text)
    when it has one, else ``now_s``."""
    when = label.get(LABEL_AVAILABLE_AT)
    return now_s if when is None else timestamp_parts(when)[0]


def _label_rows(labels: Sequence[Mapping[str, Any]]) -> list[tuple[int, int, str]]:
    """``(is_fraud, label_at, id)`` of late labels, in the order the UPDATE statements bind them; a label without
    an arrival time arrived now (this call's wall-clock second)."""
    now_s = int(time.time())
    return [(int(lb["is_fraud"]), _label_arrival_s(lb, now_s), str(lb["transaction_id"])) for lb in labels]


def _snapshot_rows(frame: pd.DataFrame) -> Iterator[tuple]:
    """``(id, ts, customer, terminal, amount, is_fraud, label_at)`` of a canonical frame: a missing label is NULL,
    and so is its arrival (read as the default rule when the label is there but the column is not)."""
    ts = pd.to_datetime(frame["tx_datetime"], utc=True).astype("int64") // 1_000_000_000
    labels = frame["is_fraud"].tolist() if "is_fraud" in frame else [None] * len(frame)
    arrivals: list[Any] = [None] * len(frame)
    if LABEL_AVAILABLE_AT in frame:
        at = pd.to_datetime(frame[LABEL_AVAILABLE_AT], utc=True)
        arrivals = [None if missing else seconds for seconds, missing in
                    zip((at.astype("int64") // 1_000_000_000).tolist(), at.isna().tolist(), strict=True)]
    for row in zip(frame["transaction_id"].astype(str), ts.tolist(), frame["customer_id"].astype(str),
                   frame["terminal_id"].astype(str), frame["amount"].astype(float).tolist(), labels, arrivals,
                   strict=True):
        unlabelled = pd.isna(row[5])
        yield (*row[:5], None if unlabelled else int(row[5]), None if unlabelled else row[6])


class _OneConnectionPerThread:
    """What both stores do alike over their per-thread connection (``_connect``, ``_local``)."""

    _local: threading.local
    _mark: str  # the driver's parameter placeholder

    def _connect(self) -> Any:
        raise NotImplementedError

    def count(self) -> int:
        """How many transactions the store holds."""
        return int(self._connect().execute("SELECT COUNT(*) FROM transactions").fetchone()[0])

    def card_transactions(self, customer: str, until_s: int, limit: int) -> list[dict[str, Any]]:
        """The card's latest ``limit`` transactions before ``until_s`` (epoch seconds), newest first:
        ``transaction_id, tx_datetime`` (ISO 8601 UTC), ``terminal_id, amount, is_fraud`` (None: no label yet)."""
        m = self._mark
        rows = self._connect().execute(
            "SELECT transaction_id, ts, terminal_id, amount, is_fraud FROM transactions "
            f"WHERE customer_id = {m} AND ts < {m} ORDER BY ts DESC, transaction_id DESC LIMIT {m}",
            (str(customer), int(until_s), int(limit))).fetchall()
        return [{"transaction_id": tid, "tx_datetime": pd.Timestamp(int(ts), unit="s", tz="UTC").isoformat(),
                 "terminal_id": terminal, "amount": float(amount), "is_fraud": None if label is None else int(label)}
                for tid, ts, terminal, amount, label in rows]

    def close(self) -> None:
        """Close this thread's connection (the next call opens a new one)."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None


class SqliteTransactionStore(_OneConnectionPerThread):
    """The embedded store: one SQLite file, WAL mode, safe for several processes.

    With ``read_threads`` > 1 (serving), a large history read (``/predict/batch``: thousands of keys in chunks)
    runs its chunks on that many connections at once: SQLite answers a chunk without holding the GIL, so on a
    10,000-row batch two threads take the read from 0.6 s to about half of it on two cores.

    With ``checkpoint_every_s`` (serving), this process's writes never copy the write-ahead log into the database
    themselves (SQLite's automatic checkpoint runs inside the commit that crosses 1,000 pages: on the bank store a
    16-row append took 0.35 ms at p50 but 23 ms at p99 and up to 73 ms, on the answer's path); a thread of the
    store's own checkpoints every ``checkpoint_every_s`` instead (PASSIVE: it blocks neither readers nor writers).

    A log that is whole in the database starts over at the next write, but under steady writes it never is: the
    frames appended while a checkpoint copies are always left, so the log grew without end (317 MB after 15,000
    scored transactions in one process, and each read slower: 0.27 -> 0.36 ms at 170,000 frames). So once the log
    holds :data:`RESTART_PAGES`, the thread copies the rest a second time with this process's writers held back by
    a lock of the store (a few milliseconds, no SQLite busy-wait): the log is then whole, and the next write starts
    it over.
    """

    _mark = "?"

    def __init__(self, path: str | Path, timeout_s: float = 30.0, checkpoint_every_s: float | None = None,
                 read_threads: int = 1) -> None:
        if read_threads < 1:
            raise ValueError(f"read_threads must be at least 1, got {read_threads}")
        self.path = Path(path)
        self._read_threads = read_threads
        self._readers: ThreadPoolExecutor | None = None  # made at the first large read
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.timeout_s = timeout_s
        self._local = threading.local()
        self._checkpoint_every_s = checkpoint_every_s
        self._writes = threading.Lock()  # this process's writes; the checkpoint thread holds it to finish a log
        self._checkpoint_error: str | None = None
        self._stop_checkpoints = threading.Event()
        self.checkpoints_done = 0  # by the checkpoint thread
        # Not bound by the statement timeout; transactions by hand (BEGIN IMMEDIATE below).
        conn = sqlite3.connect(str(self.path), timeout=max(30.0, timeout_s), isolation_level=None)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            if self._outdated(conn):
                # Made or migrated in one transaction: other processes read the old indexes until the new are in
                # (a few seconds on a bank's 90 days). Once done, opening a store writes nothing.
                conn.execute("BEGIN IMMEDIATE")
                try:
                    if self._outdated(conn):  # still, now that it is ours (another process may have just done it)
                        columns = {row[1] for row in conn.execute("PRAGMA table_info(transactions)")}
                        for statement in _statements(add_label_at=bool(columns) and "label_at" not in columns):
                            conn.execute(statement)
                    conn.execute("COMMIT")
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
        finally:
            conn.close()
        self._checkpointer: threading.Thread | None = None
        if checkpoint_every_s is not None:
            self._checkpointer = threading.Thread(target=self._checkpoint_forever, name="store-checkpoint",
                                                  daemon=True)
            self._checkpointer.start()

    def checkpoint(self) -> tuple[int, int]:
        """Copy what the write-ahead log holds into the database as far as readers allow (PASSIVE): the log's
        pages and how many of them are in the database now. A log of :data:`RESTART_PAGES` or more is then
        finished with this process's writes held back, so that the next write starts it over."""
        conn = self._connect()
        self._local.deadline = time.monotonic() + MAX_READ_S
        _, pages, copied = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        if pages >= RESTART_PAGES:
            with self._writes:  # only what was appended during the copy above is left to copy
                self._local.deadline = time.monotonic() + MAX_READ_S
                _, pages, copied = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        return int(pages), int(copied)

    def checkpoints_alive(self) -> bool:
        """Whether the checkpoint thread runs (True when this store has none)."""
        return self._checkpointer is None or self._checkpointer.is_alive()

    def stop_checkpoints(self) -> None:
        """Stop the checkpoint thread after one last checkpoint."""
        self._stop_checkpoints.set()
        if self._checkpointer is not None:
            self._checkpointer.join(MAX_READ_S)

    def _checkpoint_forever(self) -> None:
        every_s = float(self._checkpoint_every_s or 1.0)
        while True:
            stopping = self._stop_checkpoints.wait(every_s)
            try:
                self.checkpoint()
                self.checkpoints_done += 1
                self._checkpoint_error = None
            except sqlite3.Error as exc:  # a locked or vanished file: tried again next interval, said once
                if self._checkpoint_error is None:
                    logger.warning("online store checkpoint failed (tried again every %.1f s): %s", every_s, exc)
                self._checkpoint_error = str(exc)
            if stopping:
                return

    @staticmethod
    def _outdated(conn: sqlite3.Connection) -> bool:
        """Whether the file lacks the table, its ``label_at`` column or its indexes, or has indexes they replace."""
        have = {name for (name,) in conn.execute("SELECT name FROM sqlite_master")}
        columns = {row[1] for row in conn.execute("PRAGMA table_info(transactions)")}
        return (not {"transactions", *_INDEXES} <= have or bool(have.intersection(_REPLACED_INDEXES))
                or "label_at" not in columns)

    def _connect(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            # timeout: how long a statement waits for another process's lock; a statement that runs longer than
            # that (a stalled disk, a huge scan) is interrupted by the progress handler: no call outlasts it by much.
            conn = sqlite3.connect(str(self.path), timeout=self.timeout_s, check_same_thread=False)
            conn.set_progress_handler(self._overdue, 20_000)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            if self._checkpoint_every_s is not None:  # the checkpoint thread copies the log, not the commits
                conn.execute("PRAGMA wal_autocheckpoint=0")
            # No memory map: with the covering indexes it saved ~5% of a read, and every mapped page of the store
            # counts in the replica's RSS (142 MB of a 110 MB bank store): read() into the OS page cache instead.
            self._local.conn = conn
        self._local.deadline = time.monotonic() + self.timeout_s
        return conn

    def _reading(self, n_keys: int) -> sqlite3.Connection:
        """The connection, its statement deadline sized for a history read of ``n_keys`` keys."""
        conn = self._connect()
        self._local.deadline = time.monotonic() + read_budget_s(self.timeout_s, n_keys)
        return conn

    def _writing(self, n_rows: int) -> sqlite3.Connection:
        """The connection, its statement deadline sized for a write of ``n_rows`` rows."""
        conn = self._connect()
        self._local.deadline = time.monotonic() + write_budget_s(self.timeout_s, n_rows)
        return conn

    def _overdue(self) -> int:
        """SQLite's progress handler: non-zero interrupts the statement (``sqlite3.OperationalError: interrupted``)."""
        return int(time.monotonic() > self._local.deadline)

    def history(self, customers: Sequence[str], terminals: Sequence[str], since_s: int, until_s: int) -> Rows:
        """Rows of these customers or terminals in ``[since_s, until_s)``, each once (two index range scans)."""
        cs, ts = list(dict.fromkeys(map(str, customers))), list(dict.fromkeys(map(str, terminals)))
        if len(cs) + len(ts) > _FEW_KEYS:
            return self._history_many(cs, ts, since_s, until_s)
        in_c, in_t = ",".join("?" * len(cs)), ",".join("?" * len(ts))
        # The terminals' rows of other customers only, so a row of both sides comes once (UNION ALL, no sort).
        return _read_aggregated(self._reading(len(cs) + len(ts)), [
            (f"customer_id IN ({in_c}) AND ts >= ? AND ts < ?", [*cs, since_s, until_s]),
            (f"terminal_id IN ({in_t}) AND ts >= ? AND ts < ? AND customer_id NOT IN ({in_c})",
             [*ts, since_s, until_s, *cs])])

    def _history_many(self, cs: list[str], ts: list[str], since_s: int, until_s: int) -> Rows:
        """:meth:`history` for a large batch: key lists in chunks (SQLite caps bound parameters), each row once, the
        chunks read on ``read_threads`` connections at once; the rows in chunk order whatever the threads."""
        deadline, customers = time.monotonic() + read_budget_s(self.timeout_s, len(cs) + len(ts)), set(cs)
        chunks = [(column, keys[i:i + _FEW_KEYS]) for column, keys in (("customer_id", cs), ("terminal_id", ts))
                  for i in range(0, len(keys), _FEW_KEYS)]

        def read(chunk: tuple[str, list[str]]) -> Rows:  # every chunk, on any thread, within the read's one budget
            column, keys = chunk
            conn = self._connect()
            self._local.deadline = deadline
            rows = _read_aggregated(conn, [
                (f"{column} IN ({','.join('?' * len(keys))}) AND ts >= ? AND ts < ?", [*keys, since_s, until_s])])
            # The terminals' rows of these customers came with the customers' already (as in :meth:`history`).
            return rows if column == "customer_id" else _without_customers(rows, customers)

        if self._read_threads == 1 or len(chunks) == 1:
            parts = [read(chunk) for chunk in chunks]
        else:
            if self._readers is None:
                self._readers = ThreadPoolExecutor(self._read_threads - 1, thread_name_prefix="store-read")
            n = self._read_threads  # chunk k is read here when k % n == 0, by one of the n - 1 readers otherwise
            theirs = {k: self._readers.submit(read, chunk) for k, chunk in enumerate(chunks) if k % n}
            mine = {k: read(chunk) for k, chunk in enumerate(chunks) if k % n == 0}
            parts = [mine[k] if k % n == 0 else theirs[k].result() for k in range(len(chunks))]
        return Rows.concat(parts) if parts else _rows([])

    def history_frame(self, customers: Sequence[str], terminals: Sequence[str], since_s: int, until_s: int
                      ) -> pd.DataFrame:
        """:meth:`history` as a canonical frame (for people and tests; serving uses the columns)."""
        rows = self._connect().execute(
            f"SELECT {_COLUMNS} FROM transactions WHERE "
            f"(customer_id IN ({','.join('?' * len(customers))}) OR terminal_id IN ({','.join('?' * len(terminals))}))"
            " AND ts >= ? AND ts < ?", [*customers, *terminals, since_s, until_s]).fetchall()
        frame = pd.DataFrame(rows, columns=["transaction_id", "ts", "customer_id", "terminal_id", "amount", "is_fraud",
                                            "label_at"])
        frame.insert(1, "tx_datetime", pd.to_datetime(frame.pop("ts").astype("int64"), unit="s", utc=True))
        frame[LABEL_AVAILABLE_AT] = pd.to_datetime(frame.pop("label_at").astype("float64"), unit="s", utc=True)
        return frame

    def append(self, transactions: Sequence[Mapping[str, Any]], wait: bool = True) -> int:
        """Insert scored transactions without a label (ids already stored are kept as they are); with ``wait=False``,
        :class:`WritesHeldBack` at once while the checkpoint thread finishes the log."""
        if not transactions:
            return 0
        if not self._writes.acquire(blocking=wait):
            raise WritesHeldBack("the online store's checkpoint is finishing its write-ahead log")
        try:
            conn = self._writing(len(transactions))
            with conn:
                cur = conn.executemany("INSERT OR IGNORE INTO transactions (transaction_id, ts, customer_id, "
                                       "terminal_id, amount) VALUES (?, ?, ?, ?, ?)", _scored_rows(transactions))
        finally:
            self._writes.release()
        return cur.rowcount

    def add_labels(self, labels: Sequence[Mapping[str, Any]]) -> int:
        """Record late labels (each with its ``label_available_at``, default now) on stored transactions; return how
        many matched."""
        conn = self._writing(len(labels))
        with self._writes, conn:
            cur = conn.executemany("UPDATE transactions SET is_fraud = ?, label_at = ? WHERE transaction_id = ?",
                                   _label_rows(labels))
        return cur.rowcount

    def seed(self, frame: pd.DataFrame) -> int:
        """Bulk-load a labelled frame (canonical columns, ``label_available_at`` optional); existing ids are
        replaced."""
        if frame.empty:
            return 0
        conn = self._connect()
        with self._writes, conn:
            conn.executemany(f"INSERT OR REPLACE INTO transactions ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
                             _snapshot_rows(frame))
        return len(frame)

    def prune(self, before_s: int) -> int:
        """Delete rows with ``ts < before_s`` (epoch seconds); return how many went."""
        conn = self._connect()
        with self._writes, conn:
            cur = conn.execute("DELETE FROM transactions WHERE ts < ?", (int(before_s),))
        return cur.rowcount


class PostgresTransactionStore(_OneConnectionPerThread):
    """The networked store: the same table in PostgreSQL, for replicas on several machines (psycopg 3)."""

    _mark = "%s"

    def __init__(self, dsn: str, schema: str | None = None, timeout_s: float | None = None) -> None:
        if schema is not None and not _SCHEMA_NAME.fullmatch(schema):
            raise ValueError(f"schema {schema!r} must be a lower-case identifier (letters, digits, _; 63 at most)")
        self.dsn, self.schema, self.timeout_s = dsn, schema, timeout_s
        self._local = threading.local()
        conn = self._connect()
        with conn.transaction():
            conn.execute(_statements(postgres=True)[0])  # the table
            # Looked up first: ALTER TABLE would queue for the table's exclusive lock behind every running read.
            has_label_at = conn.execute(
                "SELECT 1 FROM information_schema.columns WHERE table_schema = current_schema() "
                "AND table_name = 'transactions' AND column_name = 'label_at'").fetchone() is not None
            for statement in _statements(postgres=True, add_label_at=not has_label_at)[1:]:
                conn.execute(statement)

    def _connect(self) -> Any:
        conn = getattr(self._local, "conn", None)
        if conn is None or conn.closed:
            import psycopg  # only a PostgreSQL store needs the driver

            limits: dict[str, Any] = {}
            if self.timeout_s is not None:  # libpq counts whole seconds for the connect (2 at least) ...
                limits = {"connect_timeout": max(2, int(np.ceil(self.timeout_s))),  # ... the server milliseconds
                          "options": f"-c statement_timeout={max(1, int(self.timeout_s * 1000))}"}
            conn = psycopg.connect(self.dsn, autocommit=True, **limits)
            if self.schema is not None:  # a scratch schema (the parity audit's), the same table inside it
                from psycopg import sql

                conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(self.schema)))
            self._local.conn = conn
        return conn

    def history(self, customers: Sequence[str], terminals: Sequence[str], since_s: int, until_s: int) -> Rows:
        """Rows of these customers or terminals in ``[since_s, until_s)``, each once (arrays: no parameter cap)."""
        cs, ts = list(dict.fromkeys(map(str, customers))), list(dict.fromkeys(map(str, terminals)))
        conn = self._connect()
        budget = read_budget_s(self.timeout_s, len(cs) + len(ts)) if self.timeout_s is not None else None
        if budget is not None and budget > self.timeout_s:  # a batch's read: its own budget, for this statement only
            with conn.transaction():
                conn.execute(f"SET LOCAL statement_timeout = {int(budget * 1000)}")
                return _rows(self._history_rows(conn, cs, ts, since_s, until_s))
        return _rows(self._history_rows(conn, cs, ts, since_s, until_s))

    @staticmethod
    def _history_rows(conn: Any, cs: list[str], ts: list[str], since_s: int, until_s: int) -> list[tuple]:
        return conn.execute(
            f"SELECT {_READ} FROM transactions "
            "WHERE customer_id = ANY(%(cs)s) AND ts >= %(lo)s AND ts < %(hi)s UNION ALL "
            f"SELECT {_READ} FROM transactions "
            "WHERE terminal_id = ANY(%(ts)s) AND ts >= %(lo)s AND ts < %(hi)s AND NOT customer_id = ANY(%(cs)s)",
            {"cs": cs, "ts": ts, "lo": since_s, "hi": until_s}).fetchall()

    def append(self, transactions: Sequence[Mapping[str, Any]], wait: bool = True) -> int:
        """Insert scored transactions without a label (ids already stored are kept as they are); nothing of this
        store holds writes back, so ``wait`` changes nothing."""
        if not transactions:
            return 0
        with self._connect().transaction(), self._connect().cursor() as cur:
            cur.executemany("INSERT INTO transactions (transaction_id, ts, customer_id, terminal_id, amount) "
                            "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (transaction_id) DO NOTHING",
                            _scored_rows(transactions))
            return cur.rowcount

    def add_labels(self, labels: Sequence[Mapping[str, Any]]) -> int:
        """Record late labels (each with its ``label_available_at``, default now) on stored transactions; return how
        many matched."""
        if not labels:
            return 0
        with self._connect().transaction(), self._connect().cursor() as cur:
            cur.executemany("UPDATE transactions SET is_fraud = %s, label_at = %s WHERE transaction_id = %s",
                            _label_rows(labels))
            return cur.rowcount

    def seed(self, frame: pd.DataFrame) -> int:
        """Bulk-load a labelled frame with COPY into a staging table, then upsert (existing ids are replaced)."""
        if frame.empty:
            return 0
        conn = self._connect()
        with conn.transaction():
            conn.execute("CREATE TEMP TABLE staging (LIKE transactions) ON COMMIT DROP")
            with conn.cursor().copy(f"COPY staging ({_COLUMNS}) FROM STDIN") as copy:
                for row in _snapshot_rows(frame):
                    copy.write_row(row)
            conn.execute(f"INSERT INTO transactions ({_COLUMNS}) SELECT {_COLUMNS} FROM staging "
                         "ON CONFLICT (transaction_id) DO UPDATE SET "
                         "ts = EXCLUDED.ts, customer_id = EXCLUDED.customer_id, terminal_id = EXCLUDED.terminal_id, "
                         "amount = EXCLUDED.amount, is_fraud = EXCLUDED.is_fraud, label_at = EXCLUDED.label_at")
        return len(frame)

    def prune(self, before_s: int) -> int:
        """Delete rows with ``ts < before_s``; return how many went."""
        return self._connect().execute("DELETE FROM transactions WHERE ts < %s", (int(before_s),)).rowcount


def open_store(location: str | Path, timeout_s: float | None = None, checkpoint_every_s: float | None = None,
               read_threads: int = 1) -> TransactionStore:
    """The store at ``location``: a ``postgresql://`` URL, or the path of a SQLite file.

    ``timeout_s`` bounds each statement (a lock wait included; PostgreSQL: the connect too, in whole seconds, at
    least 2); unset: 30 s for SQLite, no limit for PostgreSQL (batch jobs). ``checkpoint_every_s``: a SQLite file's
    write-ahead log is copied by a thread of its own that often, never inside a commit (serving); ``read_threads``:
    a SQLite file's large history reads on that many connections at once (serving)."""
    text = str(location)
    if text.startswith(("postgresql://", "postgres://")):
        return PostgresTransactionStore(text, timeout_s=timeout_s)
    return SqliteTransactionStore(text, 30.0 if timeout_s is None else timeout_s, checkpoint_every_s, read_threads)


def _read_aggregated(conn: sqlite3.Connection, parts: list[tuple[str, list[Any]]]) -> Rows:
    """The rows matching any of ``parts`` (``WHERE`` clauses and their parameters; no row in two of them), the
    store's order kept: one statement whose one row holds every column as a JSON array (see :data:`_AGGREGATED`),
    then, only when some amount is not a whole number of thousandths, those rows one by one."""
    union = " UNION ALL ".join(f"SELECT {_READ}, {_EXACT} AS e FROM transactions WHERE {where}" for where, _ in parts)
    params = [p for _, ps in parts for p in ps]
    *columns, inexact = conn.execute(f"SELECT {_AGGREGATED} FROM ({union})", params).fetchone()
    ts, customers, terminals, units, labels, label_at = map(orjson.loads, columns)
    rows = Rows(np.array(ts, np.int64), customers, terminals, np.array(units, np.float64) / _AMOUNT_SCALE,
                np.array(labels, np.float64), np.array(label_at, np.float64))
    if inexact:
        rows = Rows.concat([rows, _rows(conn.execute(f"SELECT {_READ} FROM ({union}) WHERE NOT e", params).fetchall())])
    return rows


def _without_customers(rows: Rows, customers: set[str]) -> Rows:
    """``rows`` but those of ``customers``."""
    keep = [c not in customers for c in rows.customer]
    if all(keep):
        return rows
    mask = np.array(keep, bool)
    label_at = None if rows.label_at is None else rows.label_at[mask]
    return Rows(rows.ts[mask], list(compress(rows.customer, keep)), list(compress(rows.terminal, keep)),
                rows.amount[mask], rows.label[mask], label_at)


def _rows(records: list[tuple]) -> Rows:
    """Store rows ``(ts, customer, terminal, amount, is_fraud, label_at)`` as feature columns."""
    if not records:
        return Rows(np.zeros(0, np.int64), [], [], np.zeros(0), np.zeros(0), np.zeros(0))
    ts, customers, terminals, amounts, labels, label_at = zip(*records, strict=True)
    # A NULL label becomes NaN (unknown), a NULL arrival NaN too (no label yet, or the default rule for a label).
    return Rows(np.array(ts, np.int64), customers, terminals, np.array(amounts, np.float64),
                np.array(labels, np.float64), np.array(label_at, np.float64))


class OnlineFeatures:
    """Features of incoming transactions from a store, by the same code as batch mode; then remembers them."""

    def __init__(self, store: TransactionStore, p: FeatureParams, remember: bool = True) -> None:
        self.store, self.p, self.remember = store, p, remember
        self._lookback_s = lookback_days(p) * DAY_S

    def matrix(self, transactions: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """The feature matrix (:data:`FEATURE_COLUMNS` order, float64) of ``transactions``, in order."""
        return self.matrix_with_status(transactions)[0]

    def matrix_with_status(self, transactions: Sequence[Mapping[str, Any]]) -> tuple[np.ndarray, bool]:
        """:meth:`matrix` and whether it is *degraded*: the store could not be read (a store that raises
        ``StoreUnavailable``, as serving's :class:`~fraud_assets.adapters.resilient_store.ResilientStore` does), so
        the transactions are described by themselves alone, as first-ever transactions of their card and terminal."""
        if not transactions:
            return np.zeros((0, len(FEATURE_COLUMNS))), False
        incoming = Incoming.parse(transactions)  # timestamps parsed once, for the read and for the features
        ts = incoming.rows.ts
        degraded = False
        try:
            history = self.store.history(incoming.rows.customer, incoming.rows.terminal,
                                         int(ts.min()) - self._lookback_s, int(ts.max()) + 1)
        except StoreUnavailable:
            history, degraded = _rows([]), True
        values = online_matrix(incoming, history, self.p)
        if self.remember:
            self.store.append(transactions)
        return values, degraded

    def __call__(self, transactions: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
        """The feature frame (key columns + features, in order) of ``transactions``."""
        values = self.matrix(transactions)
        keys = pd.DataFrame.from_records(list(transactions), columns=KEY_COLUMNS)
        return pd.concat([keys, pd.DataFrame(values, columns=FEATURE_COLUMNS)], axis=1)

