"""The prediction log on a real PostgreSQL: the same rows and the same reader answers as the SQLite log, retention,
a server that goes away for a while, and two replicas writing to one database.

`.ci/run` installs PostgreSQL and sets FRAUD_REQUIRE_POSTGRES=1, so there a missing server fails the test; on a
developer machine without PostgreSQL it is skipped with the reason (``tests/pg.py``).
"""

from __future__ import annotations

import itertools
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import psycopg
import pytest

from fraud_assets.adapters import prediction_log
from fraud_assets.adapters.prediction_log import (
    PredictionLog,
    label_status,
    read_alerts,
    read_between,
    read_labels,
    read_month,
    scored_days,
)
from tests.pg import PgCluster, pg_cluster

pytestmark = pytest.mark.slow

SECRET = "s3cret-Pa55"
_COLUMNS = ("request_id, transaction_id, tx_datetime, customer_id, terminal_id, scored_at, model_version, features, "
            "fraud_probability, alert, threshold, reasons, degraded")
_databases = itertools.count()


@pytest.fixture(scope="module")
def cluster() -> Iterator[PgCluster]:
    with pg_cluster() as running:
        yield running


@pytest.fixture
def log_url(cluster: PgCluster) -> str:
    """A new, empty database of the cluster, as a URL with a password (trust on loopback ignores it: what matters is
    that it never shows)."""
    name = f"log_{next(_databases)}"
    with psycopg.connect(cluster.dsn, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return cluster.dsn.replace("mlflow@", f"mlflow:{SECRET}@", 1).rsplit("/", 1)[0] + f"/{name}"


def _wait(condition: Callable[[], bool], timeout_s: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _table(location: str | Path, sql: str) -> pd.DataFrame:
    """Every row ``sql`` returns from either database, as a frame sorted by all its columns."""
    if str(location).startswith("postgresql://"):
        with psycopg.connect(str(location)) as conn:
            cur = conn.execute(sql)
            frame = pd.DataFrame(cur.fetchall(), columns=[d.name for d in cur.description])
    else:
        with sqlite3.connect(location) as conn:
            frame = pd.read_sql_query(sql, conn)
    return _sorted(frame)


def _sorted(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.sort_values(list(frame.columns), kind="stable").reset_index(drop=True)


class _Clock(datetime):
    """``datetime`` whose ``now`` ticks a second per call from a fixed start: both logs get the same ``scored_at``
    and ``received_at`` when written with the same calls in the same order."""

    ticks = 0

    @classmethod
    def now(cls, tz: Any = None) -> _Clock:  # type: ignore[override]
        cls.ticks += 1
        return cls(2025, 6, 1, tzinfo=UTC) + timedelta(seconds=cls.ticks)


Batch = tuple[list[str], list[dict[str, Any]], list[dict[str, Any]], np.ndarray, list[str]]


def _traffic() -> tuple[list[Batch], list[tuple[list[dict[str, Any]], str]]]:
    """A few hundred scores over five days (some with another offset, some scored again), alerts, three model
    versions, degraded answers; and label calls (one labels a transaction twice: the latter wins)."""
    rng = np.random.default_rng(7)
    batches: list[Batch] = []
    ids = [f"tx-{i:04d}" for i in range(400)]
    plus_one = timezone(timedelta(hours=1))
    for b in range(20):
        txs, decisions = [], []
        for i in range(b * 20, b * 20 + 20):
            when = datetime(2025, 3, 1, tzinfo=UTC) + timedelta(minutes=int(i * 17.3))
            txs.append({"transaction_id": ids[i], "tx_datetime": when.astimezone(plus_one) if i % 9 == 0 else when,
                        "customer_id": f"c-{i % 37}", "terminal_id": f"k-{i % 11}", "amount": float(i)})
            p = float(rng.random())
            decisions.append({"transaction_id": ids[i], "fraud_probability": p, "alert": p > 0.7, "threshold": 0.7,
                              "model_version": ("3", "4", "10")[b % 3], "degraded": i % 7 == 0,
                              "reasons": [{"feature": "a", "contribution": round(p, 3)}] if p > 0.7 else []})
        batches.append(([f"r-{b}"] * 20, txs, decisions, rng.random((20, 2)), ["a", "b"]))
    rescored = batches[3]  # scored again later by another version: the latest score is the one on the queue
    batches.append((["r-again"] * 20, rescored[1],
                    [{**d, "fraud_probability": 0.95, "alert": True, "model_version": "11"} for d in rescored[2]],
                    rescored[3], rescored[4]))
    labels = [([{"transaction_id": ids[i], "is_fraud": int(i % 5 == 0)} for i in range(0, 400, 3)], "l-1"),
              ([{"transaction_id": ids[60], "is_fraud": 0}, {"transaction_id": ids[60], "is_fraud": 1},
                {"transaction_id": "never-scored", "is_fraud": 1}], "l-2")]
    return batches, labels


def _write(location: str | Path, batches: list[Batch], labels: list[tuple[list[dict[str, Any]], str]]) -> None:
    _Clock.ticks = 0
    log = PredictionLog(location, flush_interval_s=0.01)
    for batch in batches:
        assert log.record(*batch)
    log.close()  # every batch built (one tick each, in order) before the labels' ticks
    for rows, request_id in labels:
        assert log.record_labels(rows, request_id) == len(rows)
    status = log.status()
    assert status["written"] == sum(len(b[1]) for b in batches) and status["dropped"] == 0 and status["error"] is None


def _answers(location: str | Path) -> dict[str, Any]:
    """What every reader says of the log at ``location``."""
    days = [date(2025, 2, 28) + timedelta(days=n) for n in range(8)]
    ids = [f"tx-{i:04d}" for i in range(0, 400, 2)] + ["never-scored"] + [f"unknown-{i}" for i in range(400)]
    return {"labels": read_labels(location), "status": label_status(location, ids),
            "days": scored_days(location), "latest_two": scored_days(location, 2),
            "month": [_sorted(f) for f in read_month(location, "2025-03")],
            "february": [_sorted(f) for f in read_month(location, "2025-02")],
            "between": _sorted(read_between(location, datetime(2025, 3, 2, 6, tzinfo=UTC),
                                            datetime(2025, 3, 4, tzinfo=UTC))),
            **{f"alerts {d}": _sorted(read_alerts(location, d)) for d in days}}


def _assert_same(ours: dict[str, Any], theirs: dict[str, Any]) -> None:
    assert ours.keys() == theirs.keys()
    for key, value in ours.items():
        if isinstance(value, pd.DataFrame):
            pd.testing.assert_frame_equal(value, theirs[key], obj=key)
        elif isinstance(value, list) and value and isinstance(value[0], pd.DataFrame):
            for mine, other in zip(value, theirs[key], strict=True):
                pd.testing.assert_frame_equal(mine, other, obj=key)
        else:
            assert value == theirs[key], key


def test_postgres_holds_the_same_rows_and_every_reader_answers_as_on_sqlite(
        log_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    empty_sqlite, empty_postgres = _answers(tmp_path / "none.sqlite"), _answers(log_url)  # no file, no tables yet
    _assert_same(empty_postgres, empty_sqlite)
    assert empty_postgres["days"] == [] and empty_postgres["labels"].empty
    monkeypatch.setattr(prediction_log, "datetime", _Clock)
    batches, labels = _traffic()
    sqlite_log = tmp_path / "predictions.sqlite"
    _write(sqlite_log, batches, labels)
    _write(log_url, batches, labels)
    for sql in (f"SELECT {_COLUMNS} FROM predictions", "SELECT transaction_id, is_fraud, received_at, request_id "
                                                      "FROM labels"):
        on_postgres, on_sqlite = _table(log_url, sql), _table(sqlite_log, sql)
        pd.testing.assert_frame_equal(on_postgres, on_sqlite, check_dtype=False)
    on_postgres = _table(log_url, f"SELECT {_COLUMNS} FROM predictions")
    assert len(on_postgres) == 420 and set(on_postgres["model_version"]) == {"3", "4", "10", "11"}
    assert on_postgres["degraded"].sum() == sum(d["degraded"] for b in batches for d in b[2]) > 0
    ours, theirs = _answers(log_url), _answers(sqlite_log)
    _assert_same(ours, theirs)
    assert ours["days"] == [date(2025, 3, 5), date(2025, 3, 4), date(2025, 3, 3), date(2025, 3, 2), date(2025, 3, 1)]
    assert ours["status"]["tx-0060"][0] == 1 and len(ours["month"][0]) == 420
    assert len(ours["month"][1]) == sum(len(rows) for rows, _ in labels)
    assert ours["february"][0].empty and len(ours["between"]) > 50
    rescored = ours[f"alerts {date(2025, 3, 1)}"].set_index("transaction_id").loc["tx-0060"]
    assert rescored["model_version"] == "11" and rescored["fraud_probability"] == 0.95


def test_retention_prunes_by_the_newest_row_on_postgres(log_url: str) -> None:
    log = PredictionLog(log_url, flush_interval_s=0.01, retention_days=30, prune_every_s=0.0)
    ids = iter(range(10))
    for day, n in (("2025-01-01", 3), ("2025-01-20", 2)):
        txs = [{"transaction_id": f"t{next(ids)}", "tx_datetime": f"{day}T00:00:00+00:00", "customer_id": "c",
                "terminal_id": "k"} for _ in range(n)]
        log.record(["r"] * n, txs, [{"transaction_id": t["transaction_id"], "model_version": "1",
                                     "fraud_probability": 0.1, "alert": False, "threshold": 0.5} for t in txs],
                   np.zeros((n, 1)), ["a"])
    assert _wait(lambda: log.written == 5)
    log.record(["r"], [{"transaction_id": "t5", "tx_datetime": "2025-03-01T00:00:00+00:00", "customer_id": "c",
                        "terminal_id": "k"}],
               [{"transaction_id": "t5", "model_version": "1", "fraud_probability": 0.1, "alert": False,
                 "threshold": 0.5}], np.zeros((1, 1)), ["a"])  # 59 days after the first: those go, the 20th too
    log.close()
    assert _table(log_url, "SELECT transaction_id FROM predictions")["transaction_id"].tolist() == ["t5"]
    assert log.pruned == 5 and log.status()["last_error"] is None


def _scores(prefix: str, start: int, n: int) -> Batch:
    txs = [{"transaction_id": f"{prefix}{i}", "tx_datetime": f"2025-04-0{1 + i % 5}T10:00:00+00:00",
            "customer_id": f"c{i % 13}", "terminal_id": "k"} for i in range(start, start + n)]
    decisions = [{"transaction_id": t["transaction_id"], "model_version": "7", "fraud_probability": 0.2,
                  "alert": False, "threshold": 0.5} for t in txs]
    return [prefix] * n, txs, decisions, np.zeros((n, 1)), ["a"]


def test_a_server_gone_for_seconds_loses_nothing_within_the_bound(cluster: PgCluster, log_url: str,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    """The database stops while scores keep coming: the rows wait (within the bound), ``error`` says why, the writer
    stays alive; once the server is back the rows are written and the error clears. No password anywhere."""
    caplog.set_level(logging.ERROR, logger="ray.serve")
    log = PredictionLog(log_url, flush_interval_s=0.05, max_queued_rows=50_000, timeout_s=5.0)
    sent = 0

    def score(seconds: float) -> None:
        nonlocal sent
        until = time.monotonic() + seconds
        while time.monotonic() < until:
            assert log.record(*_scores("s", sent, 20))
            sent += 20
            time.sleep(0.02)

    try:
        score(1.0)
        assert _wait(lambda: log.written > 0)
        cluster.stop()
        score(1.0)
        assert _wait(lambda: log.status()["error"] is not None)
        score(2.0)
        down = log.status()
        assert down["alive"] and down["retrying"] > 0 and down["dropped"] == 0 and down["error"] is not None
    finally:
        cluster.start()
    score(1.0)
    assert _wait(lambda: log.status()["error"] is None and log.status()["retrying"] == 0
                 and log.status()["queued"] == 0)
    log.close()
    after = log.status()
    assert after["dropped"] == 0 and after["alive"] is False and after["last_error"] is not None
    kept = _table(log_url, "SELECT COUNT(DISTINCT transaction_id) AS n FROM predictions")["n"].item()
    assert kept == sent
    shown = " ".join([str(down), str(after), caplog.text])
    assert SECRET not in shown and "could not write" in shown


def test_two_replicas_write_to_one_log_and_lose_nothing(log_url: str) -> None:
    """Two writers start together on an empty database (the tables are made once) and write at once."""
    logs: list[PredictionLog] = []
    ready = threading.Barrier(2)

    def replica(name: str) -> None:
        ready.wait(10)
        log = PredictionLog(log_url, flush_interval_s=0.01)
        logs.append(log)
        for start in range(0, 2000, 50):
            assert log.record(*_scores(name, start, 50))
            if start % 500 == 0:
                log.record_labels([{"transaction_id": f"{name}{start}", "is_fraud": 1}], name)
            time.sleep(0.002)
        log.close()

    threads = [threading.Thread(target=replica, args=(name,)) for name in ("a-", "b-")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(logs) == 2 and not any(thread.is_alive() for thread in threads)
    counts = _table(log_url, "SELECT COUNT(*) AS n, COUNT(DISTINCT transaction_id) AS ids FROM predictions")
    assert counts.to_dict("records") == [{"n": 4000, "ids": 4000}]
    assert sum(log.status()["written"] for log in logs) == 4000 and all(log.dropped == 0 for log in logs)
    assert sorted(read_labels(log_url)["transaction_id"]) == sorted(f"{n}{s}" for n in ("a-", "b-")
                                                                    for s in range(0, 2000, 500))
