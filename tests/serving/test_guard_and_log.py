"""The HTTP guard and the prediction log without Ray: auth before the body, body limits, durable batched rows."""

from __future__ import annotations

import re
import sqlite3
import time
from collections.abc import Iterator
from contextlib import closing
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from fraud_assets.adapters.prediction_log import (
    PredictionLog,
    read_alerts,
    read_between,
    read_month,
    scored_days,
    shadow_pairs,
)
from serving.app import AppArgs
from serving.guard import Guard, GuardConfig, Metrics
from serving.local import start_serving

KEY = "unit-test-key"


@pytest.fixture
def client() -> Iterator[tuple[TestClient, list[bytes], Metrics]]:
    seen: list[bytes] = []
    app = FastAPI()
    app.add_middleware(Guard)

    @app.post("/predict")
    async def predict(request: Request) -> dict:
        seen.append(await request.body())
        return {"ok": True, "request_id": request.state.request_id}

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    metrics = Metrics()
    previous = Guard.config
    Guard.configure(GuardConfig(KEY.encode(), 1000, metrics))
    try:
        with TestClient(app) as test_client:
            yield test_client, seen, metrics
    finally:
        Guard.config = previous


def test_wrong_or_missing_key_is_401_and_the_body_is_never_read(client: tuple) -> None:
    http, seen, _ = client
    for headers in ({}, {"x-api-key": "nope"}, {"x-api-key": KEY + "x"}):
        response = http.post("/predict", content=b"x" * 5000, headers=headers)
        assert response.status_code == 401 and response.json() == {"detail": "missing or invalid API key"}
    assert seen == []


def test_open_paths_need_no_key_and_every_answer_is_timed(client: tuple) -> None:
    http, _, _ = client
    response = http.get("/health")
    assert response.status_code == 200 and float(response.headers["x-process-time-ms"]) >= 0


def test_body_over_the_limit_is_413_declared_or_streamed(client: tuple) -> None:
    http, seen, _ = client
    assert http.post("/predict", content=b"x" * 1001, headers={"x-api-key": KEY}).status_code == 413
    streamed = http.post("/predict", content=iter([b"x" * 600, b"x" * 600]), headers={"x-api-key": KEY})
    assert streamed.status_code == 413 and "1000 bytes" in streamed.json()["detail"]
    ok = http.post("/predict", content=b"y" * 1000, headers={"x-api-key": KEY, "x-request-id": "r-1"})
    assert ok.status_code == 200 and ok.json()["request_id"] == "r-1" and seen == [b"y" * 1000]


def test_requests_are_counted_by_route_and_status(client: tuple) -> None:
    http, _, metrics = client
    http.post("/predict", content=b"{}")
    http.post("/predict", content=b"{}", headers={"x-api-key": KEY})
    from prometheus_client import generate_latest

    families = {f.name: f for f in text_string_to_metric_families(generate_latest(metrics.registry).decode())}
    counts = {(s.labels["route"], s.labels["status"]): s.value for s in families["fraud_http_requests"].samples
              if s.name == "fraud_http_requests_total"}
    assert counts == {("/predict", "401"): 1.0, ("/predict", "200"): 1.0}


def test_unconfigured_guard_answers_503() -> None:
    app = FastAPI()
    app.add_middleware(Guard)
    previous, Guard.config = Guard.config, None
    try:
        assert TestClient(app).get("/health").status_code == 503
    finally:
        Guard.config = previous


def test_prediction_log_writes_batches_and_labels(tmp_path: Path) -> None:
    log = PredictionLog(tmp_path / "p.sqlite", flush_interval_s=0.05)
    txs = [{"transaction_id": f"t{i}", "tx_datetime": "2025-01-01T00:00:00+00:00", "customer_id": "c",
            "terminal_id": "k", "amount": 1.0} for i in range(3)]
    decisions = [{"transaction_id": f"t{i}", "model_version": "4", "fraud_probability": 0.1 * i, "alert": i == 2,
                  "threshold": 0.15} for i in range(3)]
    assert log.record(["r1"] * 3, txs, decisions, np.ones((3, 2), dtype=np.float32), ["a", "b"])
    assert log.record_labels([{"transaction_id": "t2", "is_fraud": 1}], "r2") == 1
    log.close()
    with sqlite3.connect(tmp_path / "p.sqlite") as conn:
        rows = conn.execute("SELECT transaction_id, model_version, features, alert FROM predictions").fetchall()
        labels = conn.execute("SELECT transaction_id, is_fraud, request_id FROM labels").fetchall()
    assert rows == [("t0", "4", '{"a":1.0,"b":1.0}', 0), ("t1", "4", '{"a":1.0,"b":1.0}', 0),
                    ("t2", "4", '{"a":1.0,"b":1.0}', 1)]
    assert labels == [("t2", 1, "r2")] and log.dropped == 0


def _scored(n: int, day: str = "2025-01-01", start: int = 0) -> tuple[list, list, list, np.ndarray, list]:
    txs = [{"transaction_id": f"t{start + i}", "tx_datetime": f"{day}T00:00:00+00:00", "customer_id": "c",
            "terminal_id": "k"} for i in range(n)]
    ds = [{"transaction_id": f"t{start + i}", "model_version": "1", "fraud_probability": 0.1, "alert": False,
           "threshold": 0.5} for i in range(n)]
    return ["r"] * n, txs, ds, np.zeros((n, 1)), ["a"]


def test_the_queue_is_bounded_by_rows_and_drops_count_instead_of_blocking(tmp_path: Path) -> None:
    dropped: list[int] = []
    log = PredictionLog(tmp_path / "p.sqlite", max_queued_rows=5, on_drop=dropped.append)
    log._queue.put(None)  # stop the writer first, so what is queued stays queued
    log._writer.join(5)
    assert log.record(*_scored(3)) and log.record(*_scored(2, start=3))
    assert not log.record(*_scored(1, start=5))  # 5 rows wait: a sixth is over the bound, whatever the batches
    assert dropped == [1] and log.dropped == 1 and log.status()["queued"] == 5


def test_a_batch_that_cannot_be_built_is_dropped_alone_and_the_writer_goes_on(tmp_path: Path) -> None:
    log = PredictionLog(tmp_path / "p.sqlite", flush_interval_s=0.01)
    rids, txs, ds, _x, names = _scored(2)
    assert log.record(rids, txs, ds, np.zeros((2, 3)), names)  # 3 features, 1 name: zip(strict) fails in the writer
    assert log.record(*_scored(4, start=2))
    log.close()
    with sqlite3.connect(tmp_path / "p.sqlite") as conn:
        ids = [r[0] for r in conn.execute("SELECT transaction_id FROM predictions ORDER BY rowid")]
    status = log.status()
    assert ids == ["t2", "t3", "t4", "t5"] and status["dropped"] == 2 and status["written"] == 4
    assert "could not build 2 rows" in status["last_error"] and status["error"] is None


def test_a_failed_write_is_retried_and_nothing_is_lost(tmp_path: Path) -> None:
    """A disk that refuses writes for a while (SQLite's page limit on the writer's connection): rows wait, within
    the bound, and are written once it takes them again; scoring is never blocked."""
    log = PredictionLog(tmp_path / "p.sqlite", flush_interval_s=0.01)
    (pages,) = log._conn.execute("PRAGMA page_count").fetchone()
    log._conn.execute(f"PRAGMA max_page_count = {pages}")  # full: no new page can be written
    for i in range(20):
        assert log.record(*_scored(50, start=50 * i))
    deadline = time.monotonic() + 10
    while log.status()["retrying"] < 1000 and time.monotonic() < deadline:
        time.sleep(0.02)
    status = log.status()
    assert status["retrying"] == 1000 and status["written"] == 0 and "full" in status["error"]
    log._conn.execute("PRAGMA max_page_count = 1073741823")  # space again
    log.close()
    with sqlite3.connect(tmp_path / "p.sqlite") as conn:
        (n,) = conn.execute("SELECT COUNT(DISTINCT transaction_id) FROM predictions").fetchone()
    assert n == 1000 and log.dropped == 0 and log.status()["error"] is None


def test_a_full_disk_beyond_the_bound_drops_the_oldest_and_counts_them(tmp_path: Path) -> None:
    log = PredictionLog(tmp_path / "p.sqlite", flush_interval_s=0.01, max_queued_rows=300)
    (pages,) = log._conn.execute("PRAGMA page_count").fetchone()
    log._conn.execute(f"PRAGMA max_page_count = {pages}")
    for i in range(10):
        log.record(*_scored(100, start=100 * i))
        time.sleep(0.05)
    status = log.status()
    assert status["retrying"] + status["queued"] <= 300 and status["written"] == 0
    assert status["retrying"] + status["queued"] + status["dropped"] == 1000  # every row kept or counted


def test_retention_prunes_by_the_newest_row_not_the_clock(tmp_path: Path) -> None:
    log = PredictionLog(tmp_path / "p.sqlite", flush_interval_s=0.01, retention_days=30, prune_every_s=0.0)
    log.record(*_scored(3, day="2025-01-01"))
    log.record(*_scored(2, day="2025-01-20", start=3))
    time.sleep(0.2)
    log.record(*_scored(1, day="2025-03-01", start=5))  # 59 days after the first: those go, the 20th too
    log.close()
    with sqlite3.connect(tmp_path / "p.sqlite") as conn:
        ids = sorted(r[0] for r in conn.execute("SELECT transaction_id FROM predictions"))
    assert ids == ["t5"] and log.pruned == 5


def test_serving_refuses_to_start_without_a_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FRAUD_API_KEY", raising=False)
    monkeypatch.delenv("FRAUD_INSECURE_LOCAL", raising=False)
    with pytest.raises(RuntimeError, match="FRAUD_API_KEY"):
        start_serving(args=AppArgs())
    import ray

    assert not ray.is_initialized()


def test_insecure_local_mode_lets_requests_through_without_a_key() -> None:
    app = FastAPI()
    app.add_middleware(Guard)

    @app.post("/predict")
    async def predict() -> dict:
        return {"ok": True}

    previous = Guard.config
    Guard.configure(GuardConfig(None, 1000, Metrics()))
    try:
        assert TestClient(app).post("/predict", content=b"{}").status_code == 200
    finally:
        Guard.config = previous


def test_the_analyst_key_opens_the_analyst_endpoints_only_and_ui_answers_are_locked_down() -> None:
    app = FastAPI()
    app.add_middleware(Guard)
    for path in ("/alerts", "/predict", "/ui/index.html"):
        app.add_api_route(path, lambda: {"ok": True}, methods=["GET"])
    previous = Guard.config
    Guard.configure(GuardConfig(KEY.encode(), 1000, Metrics(), b"analyst-key"))
    try:
        with TestClient(app) as http:
            assert http.get("/alerts", headers={"x-api-key": "analyst-key"}).status_code == 200
            assert http.get("/alerts", headers={"x-api-key": KEY}).status_code == 200
            assert http.get("/alerts").status_code == 401
            assert http.get("/predict", headers={"x-api-key": "analyst-key"}).status_code == 401
            page = http.get("/ui/index.html")  # the page's files are open; what it shows is keyed
            assert page.status_code == 200
            csp = page.headers["content-security-policy"]
            assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe" not in csp
            assert (page.headers["x-content-type-options"], page.headers["x-frame-options"],
                    page.headers["referrer-policy"]) == ("nosniff", "DENY", "no-referrer")
            assert "content-security-policy" not in http.get("/alerts", headers={"x-api-key": KEY}).headers
    finally:
        Guard.config = previous


def test_the_page_has_no_inline_code_and_renders_data_as_text() -> None:
    ui = Path(__file__).resolve().parents[2] / "serving" / "ui"
    html, js = (ui / "index.html").read_text(), (ui / "app.js").read_text()
    assert "<script src=\"app.js\"" in html and "<script>" not in html and "style=" not in html
    assert re.search(r"\son[a-z]+\s*=", html) is None  # no inline event handler
    for risky in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "localStorage"):
        assert risky not in js, risky
    assert "sessionStorage" in js and re.findall(r"https?://[^\s\"]+", js) == ["http://www.w3.org/2000/svg"]


# A log from before shadow scoring: no ``role`` column.
_OLD_PREDICTIONS = ("CREATE TABLE predictions (request_id TEXT NOT NULL, transaction_id TEXT NOT NULL, "
                    "tx_datetime TEXT NOT NULL, customer_id TEXT NOT NULL, terminal_id TEXT NOT NULL, "
                    "scored_at TEXT NOT NULL, model_version TEXT NOT NULL, features TEXT NOT NULL, "
                    "fraud_probability {real} NOT NULL, alert INTEGER NOT NULL, threshold {real} NOT NULL, "
                    "reasons TEXT NOT NULL DEFAULT '[]', degraded INTEGER NOT NULL DEFAULT 0)")
_OLD_LABELS = ("CREATE TABLE labels (transaction_id TEXT NOT NULL, is_fraud INTEGER NOT NULL, received_at TEXT NOT "
               "NULL, request_id TEXT NOT NULL{more})")
_OLD_ROWS = [("r-old", f"old{i}", "2025-01-01T10:00:00+00:00", "c", "k", "2025-01-01T10:00:01+00:00", "1",
              '{"a":1.0}', 0.9 if i == 0 else 0.1, int(i == 0), 0.5) for i in range(2)]


def _old_sqlite_log(path: Path) -> None:
    with closing(sqlite3.connect(path)) as conn:
        conn.execute(_OLD_PREDICTIONS.format(real="REAL"))
        conn.execute(_OLD_LABELS.format(more=""))
        conn.executemany(_OLD_INSERT, _OLD_ROWS)
        conn.commit()
_OLD_INSERT = ("INSERT INTO predictions (request_id, transaction_id, tx_datetime, customer_id, terminal_id, scored_at, "
               f"model_version, features, fraud_probability, alert, threshold) VALUES ({', '.join('?' * 11)})")
_JANUARY = (datetime(2025, 1, 1, tzinfo=UTC), datetime(2025, 2, 1, tzinfo=UTC))


def _answers(location: str | Path) -> dict[str, Any]:
    """What the answer-facing readers and the shadow reader say of the log at ``location``."""
    return {"between": read_between(location, *_JANUARY), "month": read_month(location, "2025-01")[0],
            "alerts": {d: read_alerts(location, date(2025, 1, d)).drop(columns="scored_at") for d in (1, 2)},
            "days": scored_days(location), "shadow": read_between(location, *_JANUARY, role="shadow"),
            "pairs": shadow_pairs(location, "2", *_JANUARY)}


def _write_answers_and_shadow(location: str | Path) -> None:
    """v1 answers t0 and t1 (0.1, no alert); shadow v2 scores them 0.7 (an alert at its threshold) and 0.2."""
    log = PredictionLog(location, flush_interval_s=0.01)
    rids, txs, ds, x, names = _scored(2, day="2025-01-02")
    assert log.record(rids, txs, ds, x, names)
    assert log.record_shadow(rids, txs, "2", 0.5, [0.7, 0.2], False)
    log.close()
    assert log.status()["written"] == 4 and log.dropped == 0


def _assert_only_champion_rows_are_answers(answers: dict[str, Any]) -> None:
    assert sorted(answers["between"]["transaction_id"]) == ["old0", "old1", "t0", "t1"]
    assert (answers["between"]["model_version"] == "1").all() and answers["between"]["fraud_probability"].max() == 0.9
    pd.testing.assert_frame_equal(answers["month"], answers["between"])
    assert answers["alerts"][1]["transaction_id"].tolist() == ["old0"]
    assert answers["alerts"][2].empty  # the shadow alerted on t0, the champion did not: no alert on the queue
    assert answers["days"] == [date(2025, 1, 2), date(2025, 1, 1)]
    shadow = answers["shadow"].sort_values("transaction_id")
    assert shadow["transaction_id"].tolist() == ["t0", "t1"] and shadow["alert"].tolist() == [1, 0]
    assert (shadow["model_version"] == "2").all()
    pairs = answers["pairs"]
    assert pairs["transaction_id"].tolist() == ["t0", "t1"] and pairs["shadow_score"].tolist() == [0.7, 0.2]
    assert pairs["champion_score"].tolist() == [0.1, 0.1] and (pairs["champion_version"] == "1").all()
    assert pairs["is_fraud"].isna().all() and pairs["label_available_at"].isna().all()


def test_an_older_log_is_read_as_champion_rows_and_gains_the_role_column(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    _old_sqlite_log(path)
    before = _answers(path)  # read before any writer opened it: every row is the champion's
    assert sorted(before["between"]["transaction_id"]) == ["old0", "old1"] and before["days"] == [date(2025, 1, 1)]
    assert before["shadow"].empty and before["pairs"].empty
    _write_answers_and_shadow(path)
    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT transaction_id, role, model_version, features, reasons FROM predictions "
                            "ORDER BY rowid").fetchall()
    assert [r[:3] for r in rows] == [("old0", "champion", "1"), ("old1", "champion", "1"), ("t0", "champion", "1"),
                                     ("t1", "champion", "1"), ("t0", "shadow", "2"), ("t1", "shadow", "2")]
    assert [r[3:] for r in rows[-2:]] == [("{}", "[]")] * 2  # a shadow row's features are its champion row's
    _assert_only_champion_rows_are_answers(_answers(path))


def test_shadow_pairs_carry_the_latest_label_and_when_it_became_available(tmp_path: Path) -> None:
    path = tmp_path / "p.sqlite"
    _write_answers_and_shadow(path)
    log = PredictionLog(path)
    log.record_labels([{"transaction_id": "t0", "is_fraud": 0}], "l-1")
    log.record_labels([{"transaction_id": "t0", "is_fraud": 1}], "l-2")  # the investigators changed their mind
    log.close()
    (pair,) = shadow_pairs(path, "2", *_JANUARY).loc[lambda f: f["transaction_id"] == "t0"].itertuples()
    with sqlite3.connect(path) as conn:
        received = conn.execute("SELECT MAX(received_at) FROM labels").fetchone()[0]
    assert pair.is_fraud == 1.0 and pair.label_available_at == pd.Timestamp(received)
    with closing(sqlite3.connect(path)) as conn:  # a labels table that keeps each label's own arrival time
        if "label_available_at" not in {r[1] for r in conn.execute("PRAGMA table_info(labels)")}:
            conn.execute("ALTER TABLE labels ADD COLUMN label_available_at TEXT")
        conn.execute("UPDATE labels SET label_available_at = '2025-01-05T09:00:00+00:00' WHERE request_id = 'l-2'")
        conn.commit()
    pairs = shadow_pairs(path, "2", *_JANUARY).set_index("transaction_id")
    assert pairs.loc["t0", "label_available_at"] == pd.Timestamp("2025-01-05T09:00:00Z")
    assert pd.isna(pairs.loc["t1", "label_available_at"]) and np.isnan(pairs.loc["t1", "is_fraud"])


def test_shadow_rows_share_the_answers_bound(tmp_path: Path) -> None:
    dropped: list[int] = []
    log = PredictionLog(tmp_path / "p.sqlite", max_queued_rows=5, on_drop=dropped.append)
    log._queue.put(None)  # stop the writer first, so what is queued stays queued
    log._writer.join(5)
    rids, txs, ds, x, names = _scored(3)
    assert log.record(rids, txs, ds, x, names) and log.record_shadow(rids[:2], txs[:2], "2", 0.5, [0.1, 0.2], False)
    assert not log.record_shadow(rids[2:], txs[2:], "2", 0.5, [0.3], False)
    assert dropped == [1] and log.status()["queued"] == 5


@pytest.fixture(scope="module")
def postgres() -> Iterator[Any]:
    from tests.pg import pg_cluster

    with pg_cluster() as running:
        yield running


@pytest.mark.slow
def test_an_older_postgresql_log_gains_the_role_column_and_reads_as_sqlite(postgres: Any, tmp_path: Path) -> None:
    import psycopg

    with psycopg.connect(postgres.dsn, autocommit=True) as conn:
        conn.execute("CREATE DATABASE old_log")
    url = postgres.dsn.rsplit("/", 1)[0] + "/old_log"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(_OLD_PREDICTIONS.format(real="DOUBLE PRECISION"))
        conn.execute(_OLD_LABELS.format(more=", arrival BIGINT GENERATED ALWAYS AS IDENTITY"))
        for index in ("predictions_transaction ON predictions (transaction_id)",
                      "predictions_time ON predictions (tx_datetime)", "labels_transaction ON labels (transaction_id)"):
            conn.execute(f"CREATE INDEX {index}")
        with conn.cursor() as cur:
            cur.executemany(_OLD_INSERT.replace("?", "%s"), _OLD_ROWS)
    sqlite_log = tmp_path / "old.sqlite"
    _old_sqlite_log(sqlite_log)
    before = _answers(url)
    assert sorted(before["between"]["transaction_id"]) == ["old0", "old1"] and before["pairs"].empty
    _write_answers_and_shadow(url)
    _write_answers_and_shadow(sqlite_log)
    with psycopg.connect(url) as conn:
        roles = conn.execute("SELECT transaction_id, role FROM predictions ORDER BY role, transaction_id").fetchall()
    assert roles == [("old0", "champion"), ("old1", "champion"), ("t0", "champion"), ("t1", "champion"),
                     ("t0", "shadow"), ("t1", "shadow")]
    on_postgres, on_sqlite = _answers(url), _answers(sqlite_log)
    _assert_only_champion_rows_are_answers(on_postgres)
    for key in ("between", "month", "shadow", "pairs"):
        pd.testing.assert_frame_equal(on_postgres[key].sort_values("transaction_id").reset_index(drop=True),
                                      on_sqlite[key].sort_values("transaction_id").reset_index(drop=True), obj=key)
    assert on_postgres["days"] == on_sqlite["days"]
