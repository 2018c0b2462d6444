"""The Ray Serve application over real HTTP, against a model registered in a temporary MLflow store.

Ray starts once for this module (15-25 s and about 1 GB on two cores); every test shares it. The module
serves with one replica and a short reload interval so the alias swap is quick and observable.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sqlite3
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
import xgboost as xgb
from prometheus_client.parser import text_string_to_metric_families

from fraud_assets.adapters import mlflow_registry
from fraud_assets.adapters.mlflow_registry import LoadedModel
from fraud_assets.adapters.online_store import OnlineFeatures, SqliteTransactionStore
from fraud_assets.core.contract import feature_definition
from fraud_assets.core.features import FEATURE_COLUMNS, build_features, build_features_by_month
from fraud_assets.core.simulate import simulate_months
from fraud_assets.core.split import split_by_time
from fraud_assets.core.train import predict, train_model
from fraud_assets.params import FeatureParams, load_params
from serving.app import AppArgs
from serving.local import start_serving, stop_serving
from serving.predictor import Predictor

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
MODEL, ALIAS, THRESHOLD = "fraud-detector", "champion", 0.5
KEY = "test-key-" + "x" * 24
MAX_ROWS, MAX_BODY = 50, 64_000
TX = {"transaction_id": "tx-1", "tx_datetime": "2025-03-14T02:15:00+01:00", "customer_id": "c-17",
      "terminal_id": "k-3", "amount": 231.4}


@dataclass(frozen=True)
class Served:
    base_url: str
    tracking_uri: str
    artifact_root: str
    version: str
    booster: xgb.Booster
    start_seconds: float
    log_path: Path
    features: FeatureParams
    store_path: Path
    months: dict[str, pd.DataFrame]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _register(uri: str, artifact_root: str, booster: xgb.Booster, tags: dict[str, str],
              definition: bool = True) -> str:
    """A version with ``tags`` and (unless told not to) the feature definition of ``params.yaml``."""
    c = mlflow_registry.client_for(uri)
    run = c.create_run(mlflow_registry.ensure_experiment(c, "fraud-detection", artifact_root))
    model_uri = mlflow_registry.log_booster(booster, run.info.run_id, uri)
    tags = {**(mlflow_registry.definition_tags(load_params().features) if definition else {}), **tags}
    mv = mlflow_registry.register_version(c, MODEL, model_uri, run.info.run_id, tags)
    c.set_terminated(run.info.run_id)
    return str(mv.version)


def _trained_booster(months: dict[str, pd.DataFrame]) -> xgb.Booster:
    params = load_params()
    features = build_features_by_month(months, params.features)
    split = split_by_time(features, "2025-03", params.split)
    return train_model(split.train, split.valid, params.train)


# The replica's params.yaml says another label delay than the champion was trained with: it must serve with the
# champion's own (the offline comparisons below build features with ``load_params().features``, the champion's).
SERVE_OVERRIDES = {"serve.min_replicas": 1, "serve.max_replicas": 1, "serve.reload_interval_s": 0.5,
                   "serve.max_batch_rows": MAX_ROWS, "serve.max_body_bytes": MAX_BODY, "features.label_delay_days": 2}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp("serving")
    uri, artifact_root = f"sqlite:///{tmp / 'mlflow.db'}", (tmp / "artifacts").as_uri()
    months = simulate_months(load_params().data, "2025-01", 3)
    booster = _trained_booster(months)
    version = _register(uri, artifact_root, booster, {"threshold": str(THRESHOLD)})
    mlflow_registry.client_for(uri).set_registered_model_alias(MODEL, ALIAS, version)
    log_path, store_path = tmp / "predictions.sqlite", tmp / "online_store.sqlite"
    SqliteTransactionStore(store_path).seed(pd.concat([months["2025-01"], months["2025-02"]], ignore_index=True))
    args = AppArgs(overrides=SERVE_OVERRIDES, prediction_log=str(log_path), online_store=str(store_path))
    previous = os.environ.get("FRAUD_API_KEY")
    os.environ["FRAUD_API_KEY"] = KEY  # Ray's local workers inherit it
    started = time.perf_counter()
    try:
        base_url = start_serving(tracking_uri=uri, port=_free_port(), args=args)
        yield Served(base_url, uri, artifact_root, version, booster, time.perf_counter() - started, log_path,
                     load_params().features, store_path, months)
    finally:
        stop_serving()
        if previous is None:
            os.environ.pop("FRAUD_API_KEY", None)
        else:
            os.environ["FRAUD_API_KEY"] = previous


@pytest.fixture
def http(served: Served) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=served.base_url, timeout=30.0, headers={"x-api-key": KEY}) as client:
        yield client


def _store_now(served: Served) -> SqliteTransactionStore:
    """A copy of the served store as it is now (the service keeps appending to the original)."""
    copy = served.store_path.with_name(f"copy-{time.monotonic_ns()}.sqlite")
    with sqlite3.connect(served.store_path) as src, sqlite3.connect(copy) as dst:
        src.backup(dst)
    return SqliteTransactionStore(copy)


def _offline(served: Served, txs: list[dict], store: SqliteTransactionStore | None = None) -> list[float]:
    """Offline scores of ``txs`` against the store state before they were sent (pass it when sent later)."""
    features = OnlineFeatures(store or _store_now(served), served.features, remember=False)
    loaded = LoadedModel(served.version, served.booster, THRESHOLD, {}, feature_definition(served.features))
    predictor = Predictor(loaded, features)
    return predictor.probabilities(txs)


def test_binds_loopback_and_starts_in_bounded_time(served: Served) -> None:
    assert served.base_url.startswith("http://127.0.0.1:")
    print(f"\nRay + Serve + model ready in {served.start_seconds:.1f} s")
    assert served.start_seconds < 180


def test_health_and_ready_need_no_key_metrics_does(served: Served) -> None:
    with httpx.Client(base_url=served.base_url, timeout=10.0) as anonymous:
        assert anonymous.get("/health").json() == {"status": "ok"}
        body = anonymous.get("/ready").json()
        assert body["status"] == "ready" and body["model_version"] == served.version
        assert body["model_name"] == MODEL and body["alias"] == ALIAS and body["insecure_local"] is False
        assert body["calibrated"] is False  # registered without a calibrator: it serves raw scores, and says so
        assert anonymous.get("/metrics").status_code == 401  # serve.metrics_open is false by default
        assert anonymous.get("/metrics", headers={"authorization": "Bearer wrong"}).status_code == 401
        assert anonymous.get("/metrics", headers={"authorization": f"Bearer {KEY}"}).status_code == 200  # Prometheus
        assert "fraud_predictions" in anonymous.get("/metrics", headers={"x-api-key": KEY}).text


@pytest.mark.parametrize("headers", [{}, {"x-api-key": "wrong"}, {"x-api-key": KEY[:-1]}, {"x-api-key": ""}])
def test_scoring_without_the_key_is_401(served: Served, headers: dict) -> None:
    with httpx.Client(base_url=served.base_url, timeout=10.0) as client:
        for path in ("/predict", "/predict/batch", "/labels"):
            response = client.post(path, json=TX, headers=headers)
            assert response.status_code == 401, (path, response.text)
            assert response.json() == {"detail": "missing or invalid API key"}
            assert response.headers["x-request-id"]


def test_the_key_is_checked_before_the_body(served: Served) -> None:
    with httpx.Client(base_url=served.base_url, timeout=10.0, headers={"x-api-key": "wrong"}) as client:
        malformed = client.post("/predict", content=b"{not json", headers={"content-type": "application/json"})
        huge = client.post("/predict", content=b"x" * (MAX_BODY * 2), headers={"content-type": "application/json"})
    assert (malformed.status_code, huge.status_code) == (401, 401)


def test_predict_returns_a_decision_with_reasons(http: httpx.Client, served: Served) -> None:
    response = http.post("/predict", json=TX, headers={"x-request-id": "req-abc.1"})
    assert response.status_code == 200, response.text
    assert response.headers["x-request-id"] == "req-abc.1"
    assert float(response.headers["x-process-time-ms"]) >= 0
    body = response.json()
    assert set(body) == {"transaction_id", "fraud_probability", "alert", "threshold", "model_version", "reasons",
                         "degraded"} and body["degraded"] is False
    assert body["transaction_id"] == "tx-1" and body["model_version"] == served.version
    assert 0.0 <= body["fraud_probability"] <= 1.0
    assert body["threshold"] == THRESHOLD and body["alert"] == (body["fraud_probability"] >= THRESHOLD)
    # serve.reasons: alerts (the default): an alert names its three reasons, any other answer none
    assert len(body["reasons"]) == (3 if body["alert"] else 0)
    assert {r["feature"] for r in body["reasons"]} <= set(FEATURE_COLUMNS)
    magnitudes = [abs(r["contribution"]) for r in body["reasons"]]
    assert magnitudes == sorted(magnitudes, reverse=True)


def test_a_request_id_is_generated_when_absent(http: httpx.Client) -> None:
    first, second = (http.post("/predict", json=TX).headers["x-request-id"] for _ in range(2))
    assert len(first) >= 16 and first != second and "," not in first


def test_served_probability_equals_offline_scores(http: httpx.Client, served: Served) -> None:
    txs = [{**TX, "transaction_id": f"p-{i}", "amount": amount, "tx_datetime": when}
           for i, (amount, when) in enumerate([(3.2, "2025-03-14T13:00:00Z"), (231.4, "2025-03-15T02:15:00Z"),
                                                (999.0, "2025-03-16T23:59:59-05:00"), (0.0, "2025-03-17T06:00:00Z")])]
    before = _store_now(served)
    served_p = [http.post("/predict", json=tx).json()["fraud_probability"] for tx in txs]
    np.testing.assert_allclose(served_p, _offline(served, txs, before), atol=1e-6)
    assert max(served_p) > min(served_p)  # the model is not constant on these rows


def test_batch_endpoint_matches_offline_in_order(http: httpx.Client, served: Served) -> None:
    txs = [{**TX, "transaction_id": f"b-{i}", "amount": float(a)} for i, a in enumerate([1, 50, 250, 900])]
    before = _store_now(served)
    response = http.post("/predict/batch", json={"transactions": txs})
    assert response.status_code == 200, response.text
    scores = response.json()["scores"]
    assert [s["transaction_id"] for s in scores] == [tx["transaction_id"] for tx in txs]
    np.testing.assert_allclose([s["fraud_probability"] for s in scores], _offline(served, txs, before), atol=1e-6)


def _march_stream(served: Served, n: int, start: int = 0) -> tuple[list[dict], pd.DataFrame]:
    """``n`` March transactions in time order (first day of the month), as requests and as a labelled frame."""
    march = served.months["2025-03"].sort_values("tx_datetime", kind="stable").iloc[start:start + n]
    requests = [{"transaction_id": r.transaction_id, "tx_datetime": r.tx_datetime.isoformat(),
                 "customer_id": r.customer_id, "terminal_id": r.terminal_id, "amount": float(r.amount)}
                for r in march.itertuples()]
    return requests, march


def test_served_scores_equal_batch_mode_for_the_same_transactions_and_store(http: httpx.Client,
                                                                              served: Served) -> None:
    """The store holds January and February; March arrives one request at a time (each remembered), and
    every served score equals the training path: ``build_features`` over March with January-February as history."""
    requests, march = _march_stream(served, 150)
    served_p = []
    for tx in requests:
        response = http.post("/predict", json=tx)
        assert response.status_code == 200, response.text
        served_p.append(response.json()["fraud_probability"])
    history = pd.concat([served.months["2025-01"], served.months["2025-02"]], ignore_index=True)
    batch = predict(served.booster, build_features(march, served.features, history=history))
    np.testing.assert_allclose(served_p, batch, atol=1e-6)
    assert max(served_p) > min(served_p)
    # The history features are live: some of these rows have a customer seen in the last 30 days.
    seen = build_features(march, served.features, history=history)["customer_count_30d"]
    assert (seen > 0).any()


def test_batch_endpoint_equals_batch_mode_and_remembers_rows(http: httpx.Client, served: Served) -> None:
    requests, march = _march_stream(served, 40, start=150)
    response = http.post("/predict/batch", json={"transactions": requests})
    assert response.status_code == 200, response.text
    history = pd.concat([served.months["2025-01"], served.months["2025-02"],
                         served.months["2025-03"].sort_values("tx_datetime", kind="stable").iloc[:150]],
                        ignore_index=True)
    batch = predict(served.booster, build_features(march, served.features, history=history))
    np.testing.assert_allclose([s["fraud_probability"] for s in response.json()["scores"]], batch, atol=1e-6)
    stored = SqliteTransactionStore(served.store_path).history_frame(
        [r["customer_id"] for r in requests], [], 0, 2**40)
    assert set(r["transaction_id"] for r in requests) <= set(stored["transaction_id"])


def test_batch_over_the_row_limit_is_413_naming_it(http: httpx.Client) -> None:
    txs = [{**TX, "transaction_id": f"r-{i}"} for i in range(MAX_ROWS + 1)]
    response = http.post("/predict/batch", json={"transactions": txs})
    assert response.status_code == 413, response.text
    assert str(MAX_ROWS) in response.json()["detail"]


def test_body_over_the_limit_is_413_declared_or_streamed(http: httpx.Client) -> None:
    big = b'{"transactions": [' + b" " * MAX_BODY + b"]}"
    assert http.post("/predict/batch", content=big, headers={"content-type": "application/json"}).status_code == 413

    def chunks() -> Iterator[bytes]:  # no Content-Length: the guard counts the bytes as they arrive
        yield b'{"transactions": ['
        for _ in range(MAX_BODY // 1000 + 2):
            yield b" " * 1000
        yield b"]}"

    response = http.post("/predict/batch", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413 and str(MAX_BODY) in response.json()["detail"]


def test_concurrent_requests_are_batched_without_mixing_rows(served: Served) -> None:
    txs = [{**TX, "transaction_id": f"c-{i}", "amount": float(i * 13 % 700)} for i in range(64)]
    before = _store_now(served)  # all at one second: however they are batched, none is "before" another

    async def fire() -> list[dict]:
        async with httpx.AsyncClient(base_url=served.base_url, timeout=30.0, headers={"x-api-key": KEY}) as client:
            responses = await asyncio.gather(*(client.post("/predict", json=tx) for tx in txs))
        assert all(r.status_code == 200 for r in responses), [r.text for r in responses if r.status_code != 200]
        return [r.json() for r in responses]

    bodies = asyncio.run(fire())
    assert [b["transaction_id"] for b in bodies] == [tx["transaction_id"] for tx in txs]
    np.testing.assert_allclose([b["fraud_probability"] for b in bodies], _offline(served, txs, before), atol=1e-6)


@pytest.mark.parametrize(("body", "field"), [
    ({**TX, "amount": -1.0}, "amount"),
    ({**TX, "amount": "12"}, "amount"),
    ({**TX, "amount": None}, "amount"),
    ({**TX, "tx_datetime": "2025-03-14T02:15:00"}, "tx_datetime"),
    ({**TX, "tx_datetime": "next tuesday"}, "tx_datetime"),
    ({**TX, "tx_datetime": 1_740_000_000}, "tx_datetime"),
    ({**TX, "transaction_id": ""}, "transaction_id"),
    ({**TX, "customer_id": 17}, "customer_id"),
    ({**TX, "is_fraud": 1}, "is_fraud"),
    ({k: v for k, v in TX.items() if k != "terminal_id"}, "terminal_id"),
])
def test_bad_body_is_422_naming_the_field(http: httpx.Client, body: dict, field: str) -> None:
    response = http.post("/predict", json=body)
    assert response.status_code == 422, response.text
    assert [e["loc"] for e in response.json()["detail"]] == [["body", field]]
    assert "next tuesday" not in response.text and "1740000000" not in response.text  # input is not echoed


def test_bad_row_in_a_batch_names_its_index(http: httpx.Client) -> None:
    rows = [TX, {**TX, "amount": -3.0}]
    response = http.post("/predict/batch", json={"transactions": rows})
    assert response.status_code == 422
    assert [e["loc"] for e in response.json()["detail"]] == [["body", "transactions", 1, "amount"]]


@pytest.mark.parametrize("body", [[TX], {}, None, "tx"])
def test_wrong_shape_is_422(http: httpx.Client, body: object) -> None:
    response = http.post("/predict", json=body)
    assert response.status_code == 422, response.text
    assert response.json()["detail"]


@pytest.mark.parametrize("raw", [
    b'{"transaction_id":"t","tx_datetime":"2025-03-01T00:00:00Z","customer_id":"c","terminal_id":"k","amount":NaN}',
    b'{"transaction_id":"t","tx_datetime":"2025-03-01T00:00:00Z","customer_id":"c","terminal_id":"k","amount":1e400}',
    b'{"transaction_id":"t","tx_datetime":"2025-03-01T00:00:00Z","customer_id":"c","terminal_id":"k",'
    b'"amount":Infinity}',
    b'{"transaction_id":"t","tx_datetime":"2025-03-01T00:00:00Z","customer_id":"c","terminal_id":"k",'
    b'"amount":-Infinity}',
    b"not json",
    b'{"transaction_id": "t", ',
])
def test_non_finite_or_malformed_json_is_422_never_500(http: httpx.Client, raw: bytes) -> None:
    response = http.post("/predict", content=raw, headers={"content-type": "application/json"})
    assert response.status_code == 422, response.text
    assert "Traceback" not in response.text
    if b"amount" in raw and raw.endswith(b"}"):
        assert [e["loc"] for e in response.json()["detail"]] == [["body", "amount"]]


def _rows(path: Path, sql: str, args: tuple = ()) -> list[tuple]:
    with sqlite3.connect(path) as conn:
        return conn.execute(sql, args).fetchall()


def test_every_scored_transaction_is_logged(http: httpx.Client, served: Served) -> None:
    http.post("/predict", json={**TX, "transaction_id": "logged-1"}, headers={"x-request-id": "log-req-1"})
    txs = [{**TX, "transaction_id": f"logged-b{i}"} for i in range(3)]
    http.post("/predict/batch", json={"transactions": txs}, headers={"x-request-id": "log-req-2"})
    deadline, rows = time.monotonic() + 10, []
    while time.monotonic() < deadline and len(rows) < 4:
        rows = _rows(served.log_path, "SELECT request_id, transaction_id, model_version, features, fraud_probability,"
                     " alert, threshold FROM predictions WHERE request_id IN ('log-req-1', 'log-req-2')"
                     " ORDER BY transaction_id")
        time.sleep(0.2)
    assert [r[1] for r in rows] == ["logged-1", "logged-b0", "logged-b1", "logged-b2"]
    assert all(r[2] == served.version and 0 <= r[4] <= 1 and r[6] == THRESHOLD for r in rows)
    assert set(__import__("json").loads(rows[0][3])) == set(FEATURE_COLUMNS)
    assert _rows(served.log_path, "PRAGMA journal_mode")[0][0] == "wal"


def test_labels_are_stored_with_their_arrival_time(http: httpx.Client, served: Served) -> None:
    labels = [{"transaction_id": "logged-1", "is_fraud": 1},
              {"transaction_id": "logged-b0", "is_fraud": 0, "label_available_at": "2025-03-02T10:00:00+01:00"}]
    posted = int(time.time())
    response = http.post("/labels", json={"labels": labels}, headers={"x-request-id": "labels-1"})
    assert response.status_code == 200, response.text
    assert response.json() == {"stored": 2}
    in_store = {tid: (label, at) for tid, label, at in _rows(
        served.store_path, "SELECT transaction_id, is_fraud, label_at FROM transactions WHERE transaction_id"
        " IN ('logged-1', 'logged-b0')")}
    assert in_store["logged-b0"] == (0, 1_740_906_000)  # its own arrival time, 09:00 UTC
    assert in_store["logged-1"][0] == 1 and posted - 1 <= in_store["logged-1"][1] <= time.time()  # the request's
    rows = _rows(served.log_path, "SELECT transaction_id, is_fraud, received_at FROM labels WHERE request_id = ?",
                 ("labels-1",))
    assert sorted(r[:2] for r in rows) == [("logged-1", 1), ("logged-b0", 0)] and all(r[2] for r in rows)
    bad = http.post("/labels", json={"labels": [{"transaction_id": "x", "is_fraud": 2}]})
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["body", "labels", 0, "is_fraud"]


def test_metrics_parse_as_prometheus_text(http: httpx.Client, served: Served) -> None:
    http.post("/predict", json=TX)
    families = {f.name: f for f in text_string_to_metric_families(http.get("/metrics").text)}
    for name in ("fraud_http_requests", "fraud_http_errors", "fraud_http_request_duration_seconds",
                 "fraud_predictions", "fraud_alerts", "fraud_scoring_batch_rows", "fraud_model_version",
                 "fraud_model_info"):
        assert name in families, name
    predicted = sum(s.value for s in families["fraud_predictions"].samples if s.name == "fraud_predictions_total")
    assert predicted >= 1
    (info,) = [s for s in families["fraud_model_info"].samples if s.value == 1]
    assert info.labels["version"] == served.version
    assert any(s.labels.get("status") == "401" for s in families["fraud_http_requests"].samples)


def test_single_request_latency(http: httpx.Client) -> None:
    for _ in range(20):
        http.post("/predict", json=TX)
    timings = []
    for _ in range(200):
        started = time.perf_counter()
        assert http.post("/predict", json=TX).status_code == 200
        timings.append((time.perf_counter() - started) * 1000)
    p50, p99 = statistics.median(timings), float(np.percentile(timings, 99))
    print(f"\nsingle-request latency over HTTP: p50 {p50:.2f} ms, p99 {p99:.2f} ms")
    assert p50 < 250


def _wait_for(http: httpx.Client, check: object, timeout_s: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        body = http.get("/ready").json()
        if check(body):  # type: ignore[operator]
            return body
        time.sleep(0.2)
    raise AssertionError(f"/ready never reached the expected state; last: {body}")


def _register_corrupt(served: Served, tmp: Path) -> str:
    folder = tmp / "corrupt-model"
    folder.mkdir()
    (folder / "model.ubj").write_bytes(b"this is not an XGBoost model")
    c = mlflow_registry.client_for(served.tracking_uri)
    run = c.create_run(mlflow_registry.ensure_experiment(c, "fraud-detection", served.artifact_root))
    tags = {"threshold": "0.5", **mlflow_registry.definition_tags(served.features)}  # refused for its file alone
    mv = mlflow_registry.register_version(c, MODEL, folder.as_uri(), run.info.run_id, tags)
    return str(mv.version)


def _foreign_booster() -> xgb.Booster:
    x = np.random.default_rng(1).uniform(size=(50, 2))
    return xgb.train({"nthread": 1}, xgb.DMatrix(x, label=(x[:, 0] > 0.5), feature_names=["a", "b"]), 2)


@pytest.mark.parametrize("kind", ["no threshold tag", "no feature definition", "corrupt artifact",
                                  "fails its warm-up"])
def test_a_broken_version_is_refused_and_the_old_one_keeps_serving(http: httpx.Client, served: Served,
                                                                  tmp_path: Path, kind: str) -> None:
    c = mlflow_registry.client_for(served.tracking_uri)
    if kind == "no threshold tag":
        broken = _register(served.tracking_uri, served.artifact_root, served.booster, {"note": "no threshold"})
    elif kind == "no feature definition":  # registered before versions carried one: never today's params instead
        broken = _register(served.tracking_uri, served.artifact_root, served.booster, {"threshold": "0.5"},
                           definition=False)
    elif kind == "corrupt artifact":
        broken = _register_corrupt(served, tmp_path)
    else:
        broken = _register(served.tracking_uri, served.artifact_root, _foreign_booster(), {"threshold": "0.5"})
    c.set_registered_model_alias(MODEL, ALIAS, broken)
    try:
        body = _wait_for(http, lambda b: b.get("error"))
        assert f"v{broken} refused" in body["error"] and body["model_version"] == served.version
        assert http.post("/predict", json=TX).json()["model_version"] == served.version
        assert "Traceback" not in body["error"] and "Stack trace" not in body["error"] and "\n" not in body["error"]
        # Not downloaded again every 0.5 s interval: the next try is due 1 s after the refusal, the one after 2 s later
        before = _load_failures(http)
        time.sleep(1.6)
        assert _load_failures(http) - before <= 1
        assert f"v{broken} refused" in _wait_for(http, lambda b: b.get("error"))["error"]  # still refused
    finally:
        c.set_registered_model_alias(MODEL, ALIAS, served.version)
    assert _wait_for(http, lambda b: b.get("error") is None)["model_version"] == served.version


def _metric(metrics_text: str, name: str) -> float:
    """The sum of a Prometheus metric's samples (every label set) in a replica's ``/metrics`` text."""
    return sum(float(line.rsplit(" ", 1)[1]) for line in metrics_text.splitlines() if line.startswith(name))


def _load_failures(http: httpx.Client) -> float:
    """The replica's count of refused load attempts (its Prometheus counter)."""
    return _metric(http.get("/metrics").text, "fraud_model_load_failures_total")


def test_the_alias_moves_under_load_without_errors_or_going_back(http: httpx.Client, served: Served) -> None:
    c = mlflow_registry.client_for(served.tracking_uri)
    newer = _register(served.tracking_uri, served.artifact_root, served.booster, {"threshold": "0.25"})
    clients, total = 8, 2000
    seen: list[list[str]] = [[] for _ in range(clients)]
    errors: list[str] = []
    done = 0

    async def client_loop(i: int, client: httpx.AsyncClient) -> None:
        nonlocal done
        for j in range(total // clients):
            response = await client.post("/predict", json={**TX, "transaction_id": f"load-{i}-{j}"})
            if response.status_code != 200:
                errors.append(f"{response.status_code} {response.text}")
                continue
            body = response.json()
            seen[i].append(body["model_version"])
            if body["model_version"] == newer:
                assert body["threshold"] == 0.25
            done += 1
            if done == total // 2:
                await asyncio.to_thread(c.set_registered_model_alias, MODEL, ALIAS, newer)

    async def run() -> None:
        limits = httpx.Limits(max_connections=clients)
        async with httpx.AsyncClient(base_url=served.base_url, timeout=30.0, headers={"x-api-key": KEY},
                                     limits=limits) as client:
            await asyncio.gather(*(client_loop(i, client) for i in range(clients)))

    try:
        asyncio.run(run())
        assert errors == []
        assert sum(len(s) for s in seen) == total
        order = {served.version: 0, newer: 1}
        for versions in seen:
            ranks = [order[v] for v in versions]
            assert ranks == sorted(ranks), "a client saw the version go backwards"
        if not any(newer in s for s in seen):  # the load finished before the replica's next reload
            _wait_for(http, lambda b: b.get("model_version") == newer)
        assert http.post("/predict", json=TX).json()["model_version"] == newer
    finally:
        c.set_registered_model_alias(MODEL, ALIAS, served.version)
        _wait_for(http, lambda b: b.get("model_version") == served.version)


def test_fraud_promote_and_rollback_move_what_is_served(http: httpx.Client, served: Served,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """``fraud promote`` hands ``champion`` to a new version and the replica follows; ``fraud rollback``
    gives it back to the previous champion and the replica follows again; ``fraud history`` tells both."""
    from typer.testing import CliRunner

    from fraud_assets.cli.main import app as cli

    monkeypatch.setenv("MLFLOW_TRACKING_URI", served.tracking_uri)
    runner = CliRunner()
    newer = _register(served.tracking_uri, served.artifact_root, served.booster, {"threshold": "0.3"})
    promoted = runner.invoke(cli, ["promote", "--version", newer, "--reason", "hand-picked for the test"])
    assert promoted.exit_code == 0, promoted.output
    _wait_for(http, lambda b: b.get("model_version") == newer)
    assert http.post("/predict", json=TX).json()["model_version"] == newer
    rolled = runner.invoke(cli, ["rollback", "--reason", "alerts doubled overnight"])
    assert rolled.exit_code == 0, rolled.output
    assert f"v{newer} -> v{served.version}" in rolled.output
    _wait_for(http, lambda b: b.get("model_version") == served.version)
    body = http.post("/predict", json=TX).json()
    assert body["model_version"] == served.version and body["threshold"] == THRESHOLD
    history = runner.invoke(cli, ["history"])
    assert history.exit_code == 0 and "alerts doubled overnight" in history.output
    assert "hand-picked for the test" in history.output
