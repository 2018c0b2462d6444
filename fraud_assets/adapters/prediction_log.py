"""The prediction log, serving's audit trail: every scored transaction and every late label, in a SQLite file (WAL)
in the state folder or, for replicas on several machines, in PostgreSQL.

Scoring never waits for the database: :meth:`PredictionLog.record` puts rows on an in-memory queue bounded by rows
and a background thread writes them in batches (one transaction per flush); :meth:`PredictionLog.close` flushes
what is left. When the disk refuses a write (full, locked too long) the rows wait for the next flush within the
same bound; beyond it rows are dropped and counted, never blocking a request. A batch whose rows cannot be built
is dropped and counted alone. :meth:`PredictionLog.status` reports all of it (``/ready``). Labels are written
synchronously, so a 200 from ``POST /labels`` means they are on disk. Retention (``retention_days``) prunes rows
dated that long before the newest row.

Where it lives (``$FRAUD_PREDICTION_LOG``): the path of a SQLite file (the default) or a ``postgresql://`` URL. The
writer reaches either through one small seam (:class:`_SqliteBackend`, :class:`_PostgresBackend`); the readers
(``read_*``, :func:`scored_days`, :func:`label_status`, :func:`shadow_pairs`) take either location. A PostgreSQL
server that goes away is a disk that refuses writes: the rows wait within the bound and the writer reconnects at the
next flush. Neither ``status()`` nor the log's lines show a URL's password.

Schema (``live_performance`` joins ``predictions`` with ``labels`` on ``transaction_id``)::

    predictions(request_id TEXT, transaction_id TEXT, tx_datetime TEXT, customer_id TEXT, terminal_id TEXT,
                scored_at TEXT  -- ISO 8601 UTC, when the replica scored it
                model_version TEXT, features TEXT  -- JSON object {feature name: value}
                fraud_probability REAL, alert INTEGER  -- 0/1
                threshold REAL, reasons TEXT  -- JSON list [{feature, contribution}], the answer's reasons
                degraded INTEGER  -- 1: scored without the stored past (the online store was unreadable)
                role TEXT  -- 'champion': the answer; 'shadow': the challenger's score of the same request)
    labels(transaction_id TEXT, is_fraud INTEGER, received_at TEXT  -- ISO 8601 UTC
           request_id TEXT)

Shadow rows (``serve.shadow``) are the challenger's scores of the transactions the champion answered, from the same
feature matrix: the same ``request_id``, ``transaction_id`` and times, the challenger's ``model_version``,
``fraud_probability``, ``alert`` and ``threshold``, no ``reasons`` and ``features`` ``{}`` (they are the champion
row's). Every reader of answers (:func:`read_between`, :func:`read_month`, :func:`read_alerts`, :func:`scored_days`)
reads champion rows only; :func:`shadow_pairs` pairs the two. A log from before shadow scoring gains ``role`` when a
writer opens it (its rows are the champion's), and readers take a log without the column as all champion rows.

Both tables are indexed by ``transaction_id``; ``predictions`` also by ``tx_datetime`` (the analyst queue reads a
day). Serving writes ``tx_datetime`` in UTC (``+00:00``), so a day's rows are a range of that column; readers still
narrow with a day of slack and filter exactly in UTC, for rows written with another offset.

In PostgreSQL (:data:`POSTGRES_SCHEMA`) the tables are the same, REAL as DOUBLE PRECISION, the time columns
compared byte by byte as SQLite compares text (``COLLATE "C"``, whatever the database's locale); ``labels`` also has
``arrival``, an identity column standing for SQLite's ``rowid`` (the order labels came in). PostgreSQL text holds no
NUL character: one is written as U+FFFD.

Several replicas (processes) may share one file: SQLite's WAL mode with a busy timeout serialises writers. Replicas
on several machines share one PostgreSQL database.
"""

from __future__ import annotations

import logging
import math
import queue
import sqlite3
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import closing, contextmanager
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from time import monotonic
from typing import Any, Literal, Protocol

import orjson
import pandas as pd

from fraud_assets.core.months import month_bounds
from fraud_assets.settings import redact_url

logger = logging.getLogger("ray.serve")

SCHEMA = """
CREATE TABLE IF NOT EXISTS predictions (
    request_id TEXT NOT NULL, transaction_id TEXT NOT NULL, tx_datetime TEXT NOT NULL, customer_id TEXT NOT NULL,
    terminal_id TEXT NOT NULL, scored_at TEXT NOT NULL, model_version TEXT NOT NULL, features TEXT NOT NULL,
    fraud_probability REAL NOT NULL, alert INTEGER NOT NULL, threshold REAL NOT NULL,
    reasons TEXT NOT NULL DEFAULT '[]', degraded INTEGER NOT NULL DEFAULT 0, role TEXT NOT NULL DEFAULT 'champion');
CREATE INDEX IF NOT EXISTS predictions_transaction ON predictions (transaction_id);
CREATE TABLE IF NOT EXISTS labels (
    transaction_id TEXT NOT NULL, is_fraud INTEGER NOT NULL, received_at TEXT NOT NULL, request_id TEXT NOT NULL,
    label_available_at TEXT);
CREATE INDEX IF NOT EXISTS labels_transaction ON labels (transaction_id);
"""
_TIME_INDEX = "CREATE INDEX IF NOT EXISTS predictions_time ON predictions (tx_datetime)"
_INSERT_PREDICTION = ("INSERT INTO predictions (request_id, transaction_id, tx_datetime, customer_id, terminal_id, "
                      "scored_at, model_version, features, fraud_probability, alert, threshold, reasons, degraded, "
                      "role) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
ALERT_COLUMNS = ["transaction_id", "tx_datetime", "customer_id", "terminal_id", "scored_at", "model_version",
                 "features", "fraud_probability", "threshold", "reasons"]
_INSERT_LABEL = ("INSERT INTO labels (transaction_id, is_fraud, received_at, request_id, label_available_at) "
                 "VALUES (?, ?, ?, ?, ?)")
_PREDICTION_COLUMNS = ("request_id", "transaction_id", "tx_datetime", "customer_id", "terminal_id", "scored_at",
                       "model_version", "features", "fraud_probability", "alert", "threshold", "reasons", "degraded",
                       "role")
CHAMPION, SHADOW = "champion", "shadow"  # the values of ``predictions.role``
Role = Literal["champion", "shadow"]
PAIR_COLUMNS = ["transaction_id", "tx_datetime", "champion_score", "shadow_score", "champion_version", "is_fraud",
                "label_available_at"]
_LABEL_AVAILABLE = "label_available_at"  # when a label became known, where the labels table keeps it
_LABEL_ROW_COLUMNS = ("transaction_id", "is_fraud", "received_at", "request_id", "label_available_at")

POSTGRES_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS predictions (
    request_id TEXT NOT NULL, transaction_id TEXT NOT NULL, tx_datetime TEXT COLLATE "C" NOT NULL,
    customer_id TEXT NOT NULL, terminal_id TEXT NOT NULL, scored_at TEXT COLLATE "C" NOT NULL,
    model_version TEXT NOT NULL, features TEXT NOT NULL, fraud_probability DOUBLE PRECISION NOT NULL,
    alert INTEGER NOT NULL, threshold DOUBLE PRECISION NOT NULL, reasons TEXT NOT NULL DEFAULT '[]',
    degraded INTEGER NOT NULL DEFAULT 0, role TEXT NOT NULL DEFAULT 'champion')""",
    "ALTER TABLE predictions ADD COLUMN IF NOT EXISTS role TEXT NOT NULL DEFAULT 'champion'",  # a log from before
    "CREATE INDEX IF NOT EXISTS predictions_transaction ON predictions (transaction_id)",
    "CREATE INDEX IF NOT EXISTS predictions_time ON predictions (tx_datetime)",
    """CREATE TABLE IF NOT EXISTS labels (
    transaction_id TEXT NOT NULL, is_fraud INTEGER NOT NULL, received_at TEXT COLLATE "C" NOT NULL,
    request_id TEXT NOT NULL, arrival BIGINT GENERATED ALWAYS AS IDENTITY, label_available_at TEXT COLLATE "C")""",
    "ALTER TABLE labels ADD COLUMN IF NOT EXISTS label_available_at TEXT COLLATE \"C\"",  # a log from before
    "CREATE INDEX IF NOT EXISTS labels_transaction ON labels (transaction_id)",
)
_POSTGRES_OBJECTS = ("predictions", "predictions_transaction", "predictions_time", "labels", "labels_transaction")
_HAS_ROLE = ("EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = to_regclass('predictions') AND attname = 'role' "
             "AND NOT attisdropped), EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = to_regclass('labels') AND "
             "attname = 'label_available_at' AND NOT attisdropped)")  # a log from before gains the columns
_SCHEMA_LOCK = 0x70726564  # the advisory lock replicas starting together take to make the tables once
_POSTGRES_PREFIXES = ("postgresql://", "postgres://")
_READ_CONNECT_TIMEOUT_S = 30.0


class LabelSink(Protocol):
    """Anything that receives late labels (the prediction log today, the online store later)."""

    def record_labels(self, labels: Sequence[Mapping[str, Any]], request_id: str) -> int:
        """Store ``labels`` durably and return how many were stored."""
        ...


def _iso_utc(value: Any) -> str | None:
    """An ISO 8601 UTC text of a time (a datetime or ISO text), None for None."""
    if value is None:
        return None
    when = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    return (when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)).isoformat()


def is_postgres(location: str | Path) -> bool:
    """Whether ``location`` is a PostgreSQL URL (else the path of a SQLite file)."""
    return str(location).startswith(_POSTGRES_PREFIXES)


def connect(path: str | Path, timeout_s: float = 30.0) -> sqlite3.Connection:
    """A connection to the SQLite log in WAL mode with the schema in place (``timeout_s``: the busy timeout)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(str(path), timeout=timeout_s, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.executescript(SCHEMA)
    columns = {row[1] for row in conn.execute("PRAGMA table_info(predictions)")}
    if "reasons" not in columns:  # a log written before the answer's reasons were kept
        conn.execute("ALTER TABLE predictions ADD COLUMN reasons TEXT NOT NULL DEFAULT '[]'")
    if "degraded" not in columns:  # ... or before degraded answers were flagged
        conn.execute("ALTER TABLE predictions ADD COLUMN degraded INTEGER NOT NULL DEFAULT 0")
    if "role" not in columns:  # ... or before shadow scoring: every row is the champion's answer
        conn.execute("ALTER TABLE predictions ADD COLUMN role TEXT NOT NULL DEFAULT 'champion'")
    if "label_available_at" not in {row[1] for row in conn.execute("PRAGMA table_info(labels)")}:
        conn.execute("ALTER TABLE labels ADD COLUMN label_available_at TEXT")  # ... or before labels had arrivals
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
                     int(d.get("degraded", False)), CHAMPION))
    return rows


def shadow_rows(request_ids: Sequence[str], transactions: Sequence[Mapping[str, Any]], version: str,
                threshold: float, probabilities: Sequence[float], degraded: bool) -> list[tuple]:
    """Rows of the ``predictions`` table for the shadow version's scores of an answered batch (role ``shadow``)."""
    scored_at = datetime.now(UTC).isoformat()
    rows = []
    for rid, tx, p in zip(request_ids, transactions, probabilities, strict=True):
        when = tx["tx_datetime"]
        rows.append((rid, str(tx["transaction_id"]), when.isoformat() if hasattr(when, "isoformat") else str(when),
                     str(tx["customer_id"]), str(tx["terminal_id"]), scored_at, version, "{}", float(p),
                     int(p >= threshold), threshold, "[]", int(degraded), SHADOW))
    return rows


_LIVE_COLUMNS = ["transaction_id", "tx_datetime", "model_version", "fraud_probability", "alert"]
_LABEL_COLUMNS = ["transaction_id", "is_fraud", "received_at"]


def _read_only(path: str | Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30.0)


def _pg_connect(dsn: str, timeout_s: float, read_only: bool = False) -> Any:
    """A psycopg connection in autocommit mode, the connect bounded by ``timeout_s`` (libpq counts whole seconds, 2
    at least); a writer's statements are bounded too, a reader's session is read-only (a month's read may be long)."""
    import psycopg  # only a PostgreSQL log needs the driver

    conn = psycopg.connect(dsn, autocommit=True, connect_timeout=max(2, math.ceil(timeout_s)))
    try:  # set_config, not the connect's `options`: those would replace any the URL gives (a search_path)
        if read_only:
            conn.execute("SELECT set_config('default_transaction_read_only', 'on', false)")
        else:
            conn.execute("SELECT set_config('statement_timeout', %s, false)", (str(max(1, int(timeout_s * 1000))),))
    except BaseException:
        conn.close()
        raise
    return conn


class _Reading:
    """A reader's connection (None: no log yet, no rows). SQL is written with SQLite's ``?`` marks."""

    def __init__(self, conn: Any, postgres: bool = False) -> None:
        self._conn, self._postgres = conn, postgres
        self._columns: dict[str, set[str]] = {}  # per table, the columns it has (read once)
        self.arrival = "arrival" if postgres else "rowid"  # the column ordering labels by arrival
        if postgres:
            import psycopg

            self._missing: tuple[type[Exception], ...] = (psycopg.errors.UndefinedTable,)
        else:
            self._missing = ()

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        """The rows of ``sql``; none when there is no log yet (a missing file, tables not made yet in PostgreSQL)."""
        if self._conn is None:
            return []
        try:
            return self._conn.execute(sql.replace("?", "%s") if self._postgres else sql, params).fetchall()
        except self._missing:
            return []

    def frame(self, columns: Sequence[str], sql: str, params: Sequence[Any] = ()) -> pd.DataFrame:
        """:meth:`rows` as a frame of ``columns`` (the same dtypes from either database)."""
        return pd.DataFrame.from_records(self.rows(sql, params), columns=list(columns), coerce_float=True)

    def has_column(self, table: str, column: str) -> bool:
        """Whether ``table`` has ``column`` (False when there is no such table yet)."""
        if table not in self._columns:
            sql = ("SELECT attname FROM pg_attribute WHERE attrelid = to_regclass(?) AND attnum > 0 AND "
                   "NOT attisdropped" if self._postgres else "SELECT name FROM pragma_table_info(?)")
            self._columns[table] = {row[0] for row in self.rows(sql, (table,))}
        return column in self._columns[table]

    def role_is(self, role: Role, qualifier: str = "predictions") -> str:
        """The SQL condition "a ``predictions`` row (named ``qualifier`` in the query) has ``role``"; on a log from
        before shadow scoring (no ``role`` column) every row is the champion's."""
        if role not in (CHAMPION, SHADOW):
            raise ValueError(f"role must be {CHAMPION!r} or {SHADOW!r}, got {role!r}")
        if not self.has_column("predictions", "role"):
            return "TRUE" if role == CHAMPION else "FALSE"
        return f"{qualifier}.role = '{role}'"  # one of two literals, checked above


@contextmanager
def _reading(location: str | Path) -> Iterator[_Reading]:
    """A read-only connection to the log at ``location`` (a SQLite file opened read-only, or PostgreSQL)."""
    if is_postgres(location):
        with closing(_pg_connect(str(location), _READ_CONNECT_TIMEOUT_S, read_only=True)) as conn:
            yield _Reading(conn, postgres=True)
    elif not Path(location).exists():
        yield _Reading(None)
    else:
        with closing(_read_only(location)) as conn:
            yield _Reading(conn)


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
    """Every label received, in arrival order: ``transaction_id, is_fraud, received_at, label_available_at`` (when
    it became known: NaN on a log from before labels carried it; empty when no log yet)."""
    with _reading(path) as log:
        own = _LABEL_AVAILABLE if log.has_column("labels", _LABEL_AVAILABLE) else "NULL"
        return log.frame([*_LABEL_COLUMNS, _LABEL_AVAILABLE],
                         f"SELECT {', '.join(_LABEL_COLUMNS)}, {own} FROM labels ORDER BY {log.arrival}")


def _read_range(path: str | Path, columns: list[str], start: datetime, end: datetime, where: str = "TRUE",
                role: Role = CHAMPION) -> pd.DataFrame:
    """``columns`` of the ``role`` predictions matching ``where`` dated in ``[start, end)`` UTC (empty when no log
    yet)."""
    lo, hi = _slack_bounds(start, end)
    with _reading(path) as log:
        rows = log.frame(columns, f"SELECT {', '.join(columns)} FROM predictions WHERE {log.role_is(role)} "
                                  f"AND {where} AND tx_datetime >= ? AND tx_datetime < ?", (lo, hi))
    return _in_utc_range(rows, start, end)


def read_between(path: str | Path, start: datetime, end: datetime, role: Role = CHAMPION) -> pd.DataFrame:
    """Predictions (the columns ``live_performance`` reads) of transactions dated in ``[start, end)`` UTC: the
    answers (champion rows) unless ``role`` asks for the shadow's."""
    return _read_range(path, _LIVE_COLUMNS, start, end, role=role)


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
    """The latest ``limit`` UTC days with answered (champion) transactions, newest first (one index seek per day)."""
    days: list[date] = []
    with _reading(path) as log:
        below = "9999-12-31T23:59:59"
        champion = log.role_is(CHAMPION)
        while len(days) < limit:
            found = log.rows(f"SELECT MAX(tx_datetime) FROM predictions WHERE {champion} AND tx_datetime < ?",
                             (below,))
            latest = found[0][0] if found else None
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
    if not ids:
        return {}
    with _reading(path) as log:
        latest = _latest_labels(log, ids, "is_fraud, received_at")
    return {tid: (int(is_fraud), received_at) for tid, (is_fraud, received_at) in latest.items()}


def _latest_labels(log: _Reading, ids: Sequence[str], columns: str) -> dict[str, tuple]:
    """``columns`` of the latest label received for each of ``ids`` that has one."""
    found: dict[str, tuple] = {}
    for i in range(0, len(ids), 500):  # SQLite caps bound parameters
        chunk = ids[i:i + 500]
        for tid, *values in log.rows(f"SELECT transaction_id, {columns} FROM labels WHERE transaction_id IN "
                                     f"({','.join('?' * len(chunk))}) ORDER BY received_at, {log.arrival}", chunk):
            found[tid] = tuple(values)  # ordered by arrival: the last one wins
    return found


def shadow_pairs(location: str | Path, shadow_version: str, start: datetime, end: datetime) -> pd.DataFrame:
    """The transactions dated in ``[start, end)`` UTC that shadow version ``shadow_version`` scored, each with the
    champion's score of the same request and its label: :data:`PAIR_COLUMNS`, oldest first.

    ``tx_datetime`` and ``label_available_at`` are UTC timestamps; ``is_fraud`` is 0/1, NaN (and
    ``label_available_at`` NaT) while no label was received. A transaction scored in several requests keeps its latest
    pair; of its labels the latest received wins, available from its own ``label_available_at`` when the ``labels``
    table keeps one, else from when it was received (``received_at``).
    """
    lo, hi = _slack_bounds(start, end)
    columns = ["transaction_id", "tx_datetime", "champion_score", "shadow_score", "champion_version", "scored_at"]
    with _reading(location) as log:
        shadow, champion = log.role_is(SHADOW, "s"), log.role_is(CHAMPION, "c")
        found = pd.DataFrame(columns=columns) if shadow == "FALSE" else log.frame(columns, (
            "SELECT s.transaction_id, s.tx_datetime, c.fraud_probability, s.fraud_probability, c.model_version, "
            "s.scored_at FROM predictions AS s JOIN predictions AS c ON c.transaction_id = s.transaction_id AND "
            f"c.request_id = s.request_id AND {champion} WHERE {shadow} AND s.model_version = ? AND "
            "s.tx_datetime >= ? AND s.tx_datetime < ?"), (str(shadow_version), lo, hi))
        pairs = (_in_utc_range(found, start, end).sort_values("scored_at", kind="stable")
                 .drop_duplicates("transaction_id", keep="last"))
        own = _LABEL_AVAILABLE if log.has_column("labels", _LABEL_AVAILABLE) else "NULL"
        labels = _latest_labels(log, pairs["transaction_id"].astype(str).tolist(), f"is_fraud, received_at, {own}")
    label = [labels.get(t, (math.nan, None, None)) for t in pairs["transaction_id"]]
    out = pd.DataFrame({
        "transaction_id": pairs["transaction_id"].astype(str).to_numpy(),
        "tx_datetime": pd.to_datetime(pairs["tx_datetime"], utc=True, format="ISO8601").to_numpy(),
        "champion_score": pairs["champion_score"].to_numpy(dtype="float64"),
        "shadow_score": pairs["shadow_score"].to_numpy(dtype="float64"),
        "champion_version": pairs["champion_version"].astype(str).to_numpy(),
        "is_fraud": pd.Series([x[0] for x in label], dtype="float64"),
        "label_available_at": pd.to_datetime(pd.Series([x[2] or x[1] for x in label], dtype=object), utc=True,
                                             format="ISO8601"),
    }, columns=PAIR_COLUMNS)
    return out.sort_values(["tx_datetime", "transaction_id"], kind="stable").reset_index(drop=True)


class _Backend(Protocol):
    """Where the writer's rows go: a SQLite file or a PostgreSQL database, each connection used by one thread."""

    errors: tuple[type[Exception], ...]  # what a refused write raises: its rows are kept for a retry

    def connect(self) -> Any:
        """A new connection, with the schema in place."""
        ...

    def usable(self, conn: Any) -> bool:
        """Whether ``conn`` still works (False once the server cut it: the writer reconnects)."""
        ...

    def insert_predictions(self, conn: Any, rows: Sequence[tuple]) -> None:
        """Insert ``predictions`` rows (:data:`_PREDICTION_COLUMNS` order) in one transaction."""
        ...

    def insert_labels(self, conn: Any, rows: Sequence[tuple]) -> None:
        """Insert ``labels`` rows (:data:`_LABEL_ROW_COLUMNS` order) in one transaction."""
        ...

    def newest(self, conn: Any) -> str | None:
        """The newest ``tx_datetime`` logged (None: no rows)."""
        ...

    def prune(self, conn: Any, before: str) -> int:
        """Delete predictions with ``tx_datetime < before`` (as text); return how many went."""
        ...


class _SqliteBackend:
    """The log in a SQLite file (WAL)."""

    errors: tuple[type[Exception], ...] = (sqlite3.Error,)

    def __init__(self, path: Path, timeout_s: float) -> None:
        self.path, self.timeout_s = path, timeout_s

    def connect(self) -> sqlite3.Connection:
        """A connection in WAL mode with the schema in place (an older log gains the newer columns)."""
        return connect(self.path, self.timeout_s)

    def usable(self, conn: sqlite3.Connection) -> bool:
        """A file's connection stays usable."""
        return True

    def insert_predictions(self, conn: sqlite3.Connection, rows: Sequence[tuple]) -> None:
        """Insert ``predictions`` rows in one transaction."""
        with conn:
            conn.executemany(_INSERT_PREDICTION, rows)

    def insert_labels(self, conn: sqlite3.Connection, rows: Sequence[tuple]) -> None:
        """Insert ``labels`` rows in one transaction."""
        with conn:
            conn.executemany(_INSERT_LABEL, rows)

    def newest(self, conn: sqlite3.Connection) -> str | None:
        """The newest ``tx_datetime`` logged."""
        return conn.execute("SELECT MAX(tx_datetime) FROM predictions").fetchone()[0]

    def prune(self, conn: sqlite3.Connection, before: str) -> int:
        """Delete predictions dated before ``before``."""
        with conn:
            return conn.execute("DELETE FROM predictions WHERE tx_datetime < ?", (before,)).rowcount


class _PostgresBackend:
    """The log in PostgreSQL (psycopg 3): the same tables, for replicas on several machines."""

    def __init__(self, dsn: str, timeout_s: float) -> None:
        import psycopg  # only a PostgreSQL log needs the driver

        self.dsn, self.timeout_s = dsn, timeout_s
        self.errors: tuple[type[Exception], ...] = (psycopg.Error,)
        self._schema_made = False

    def connect(self) -> Any:
        """A connection, each statement bounded by the timeout; the tables are made on the first."""
        conn = _pg_connect(self.dsn, self.timeout_s)
        try:
            if not self._schema_made:
                _make_postgres_schema(conn)
                self._schema_made = True
        except BaseException:
            conn.close()
            raise
        return conn

    def usable(self, conn: Any) -> bool:
        """False once the server cut the connection (it stopped, restarted, or the network failed)."""
        return not (conn.closed or conn.broken)

    def insert_predictions(self, conn: Any, rows: Sequence[tuple]) -> None:
        """COPY ``predictions`` rows in one transaction."""
        _copy(conn, "predictions", _PREDICTION_COLUMNS, rows)

    def insert_labels(self, conn: Any, rows: Sequence[tuple]) -> None:
        """COPY ``labels`` rows in one transaction (``arrival`` numbers them)."""
        _copy(conn, "labels", _LABEL_ROW_COLUMNS, rows)

    def newest(self, conn: Any) -> str | None:
        """The newest ``tx_datetime`` logged (an index seek)."""
        return conn.execute("SELECT MAX(tx_datetime) FROM predictions").fetchone()[0]

    def prune(self, conn: Any, before: str) -> int:
        """Delete predictions dated before ``before``."""
        return conn.execute("DELETE FROM predictions WHERE tx_datetime < %s", (before,)).rowcount


def _make_postgres_schema(conn: Any) -> None:
    """The tables and indexes of :data:`POSTGRES_SCHEMA` unless all are there (then no DDL, no table lock); replicas
    starting together take turns on an advisory lock (concurrent ``CREATE ... IF NOT EXISTS`` can collide)."""
    have = conn.execute("SELECT " + ", ".join(["to_regclass(%s) IS NOT NULL"] * len(_POSTGRES_OBJECTS)) + ", "
                        + _HAS_ROLE, _POSTGRES_OBJECTS).fetchone()
    if all(have):
        return
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
        for statement in POSTGRES_SCHEMA:
            conn.execute(statement)


def _copy(conn: Any, table: str, columns: Sequence[str], rows: Sequence[tuple]) -> None:
    """``rows`` into ``table`` with COPY in one transaction (PostgreSQL text holds no NUL: one becomes U+FFFD)."""
    with conn.transaction(), conn.cursor() as cur, cur.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
        for row in rows:
            copy.write_row([v.replace("\x00", "\ufffd") if isinstance(v, str) else v for v in row])


class PredictionLog:
    """Batched, off-the-hot-path writer of the ``predictions`` table, and a :class:`LabelSink`.

    ``path``: the log's location, a SQLite file or a ``postgresql://`` URL (kept as :attr:`path`, what the readers
    take: a ``Path`` or the URL). ``timeout_s``: SQLite's busy timeout; PostgreSQL's connect and statement timeout.

    Bounded by rows: at most ``max_queued_rows`` wait in memory (queued, or built and waiting for a retry after a
    failed write such as a full disk); beyond that a scored batch is dropped and counted (``on_drop``, the
    ``dropped`` count, ``/ready``), never blocking a request. A batch whose rows cannot be built is dropped and
    counted alone; the writer thread keeps going. With ``retention_days``, rows dated more than that before the
    newest row are deleted once per ``prune_every_s`` (by the newest row, not the clock: a replayed year keeps its
    rows). A failed write (a full disk, a PostgreSQL server gone) is retried at the next flush, on a new connection
    when the server cut the old one.
    """

    def __init__(self, path: str | Path, flush_interval_s: float = 0.25, max_queued_rows: int = 200_000,
                 on_drop: Callable[[int], None] | None = None, retention_days: int | None = None,
                 prune_every_s: float = 3600.0, timeout_s: float = 30.0) -> None:
        self.path: Path | str
        self._backend: _Backend
        if is_postgres(path):
            self.path = str(path)
            self._name = redact_url(self.path)  # for the log's lines: never a password
            self._backend = _PostgresBackend(self.path, timeout_s)
        else:
            self.path = Path(path)
            self._name = self.path.name
            self._backend = _SqliteBackend(self.path, timeout_s)
        self._on_drop = on_drop
        self._conn: Any = self._backend.connect()  # the writer thread's (None after a failed reconnect)
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
        return self._enqueue(len(transactions), prediction_rows,
                             (request_ids, transactions, decisions, features, feature_names))

    def record_shadow(self, request_ids: Sequence[str], transactions: Sequence[Mapping[str, Any]], version: str,
                      threshold: float, probabilities: Sequence[float], degraded: bool) -> bool:
        """Queue the shadow version's scores of an answered batch (role ``shadow``, :func:`shadow_rows`), within the
        same bound as the answers; False when it is full."""
        return self._enqueue(len(transactions), shadow_rows,
                             (request_ids, transactions, version, threshold, probabilities, degraded))

    def _enqueue(self, n: int, build: Callable[..., list[tuple]], args: tuple) -> bool:
        with self._count_lock:
            full = self._queued + len(self._retry) + n > self._max_rows
            if not full:
                self._queued += n
        if full:
            self._dropped(n)
            return False
        self._queue.put_nowait((n, build, args))
        return True

    def record_labels(self, labels: Sequence[Mapping[str, Any]], request_id: str) -> int:
        """Write labels with the time they were received and the time they became known (each label's own
        ``label_available_at`` when it has one, else the time received), and commit before returning."""
        received_at = datetime.now(UTC).isoformat()
        rows = [(str(x["transaction_id"]), int(x["is_fraud"]), received_at, request_id,
                 _iso_utc(x.get("label_available_at")) or received_at) for x in labels]
        with self._labels_lock:
            conn = self._backend.connect()
            try:
                self._backend.insert_labels(conn, rows)
            finally:
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
        if self._conn is not None:
            self._conn.close()

    def _built(self, item: tuple) -> list[tuple]:
        """The rows of one queued batch; a batch that cannot be built is dropped and counted, the writer goes on."""
        n, build, args = item
        try:
            return build(*args)
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
            if self._conn is None or not self._backend.usable(self._conn):
                self._reconnect()
            self._backend.insert_predictions(self._conn, rows)
        except self._backend.errors as exc:  # a full disk, a lock held too long, a server gone: the rows are kept
            # for the next flush, within the bound
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

    def _reconnect(self) -> None:
        """A new connection for the writer in place of one the server cut (raises while the server is away)."""
        old, self._conn = self._conn, None
        if old is not None:
            old.close()
        self._conn = self._backend.connect()

    def _prune_when_due(self) -> None:
        now = monotonic()
        if self._retention_days is None or now < self._next_prune:
            return
        self._next_prune = now + self._prune_every_s
        try:
            newest = self._backend.newest(self._conn)
            if newest is None:
                return
            cutoff = datetime.fromisoformat(newest).astimezone(UTC) - timedelta(days=self._retention_days + 1)
            # a day of slack: rows are compared as text, written with any offset
            self.pruned += self._backend.prune(self._conn, cutoff.isoformat())
        except (*self._backend.errors, ValueError) as exc:
            self._note(exc, "could not prune", failing=False)

    def _note(self, exc: BaseException, what: str, failing: bool = True) -> None:
        message = redact_url(f"{what}: {type(exc).__name__}: {exc}".splitlines()[0])[:300]
        if not (failing and self.error is not None):  # one line per episode of failing writes, not one per flush
            logger.error("prediction log %s: %s", self._name, message)
        self.last_error = message
        if failing:
            self.error = message

    def _dropped(self, n: int) -> None:
        if not n:
            return
        self.dropped += n
        if self._on_drop is not None:
            self._on_drop(n)
