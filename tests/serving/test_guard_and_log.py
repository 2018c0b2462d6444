"""The HTTP guard and the prediction log without Ray: auth before the body, body limits, durable batched rows."""

from __future__ import annotations

import re
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from fraud_assets.adapters.prediction_log import PredictionLog
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
