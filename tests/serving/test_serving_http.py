"""The Ray Serve application over real HTTP, against a model registered in a temporary MLflow store.

Ray starts once for this module (15-25 s and about 1 GB on two cores); every test shares it.
"""

from __future__ import annotations

import asyncio
import socket
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import numpy as np
import pytest
import xgboost as xgb

from fraud_assets import registry
from fraud_assets.core.features import build_features, online_features
from fraud_assets.core.simulate import simulate_months
from fraud_assets.core.split import split_by_time
from fraud_assets.core.train import predict, train_model
from fraud_assets.params import load_params
from serving.app import start_serving, stop_serving

pytestmark = pytest.mark.slow

MODEL, ALIAS, THRESHOLD = "fraud-detector", "champion", 0.5
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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _register(uri: str, artifact_root: str, booster: xgb.Booster, tags: dict[str, str]) -> str:
    c = registry.client_for(uri)
    run = c.create_run(registry.ensure_experiment(c, "fraud-detection", artifact_root))
    model_uri = registry.log_booster(booster, run.info.run_id, uri)
    mv = registry.register_version(c, MODEL, model_uri, run.info.run_id, tags)
    c.set_terminated(run.info.run_id)
    return str(mv.version)


def _trained_booster() -> xgb.Booster:
    params = load_params()
    months = simulate_months(params.data, "2025-01", 3)
    features = {m: build_features(frame, params.features) for m, frame in months.items()}
    split = split_by_time(features, "2025-03", params.split)
    return train_model(split.train, split.valid, params.train)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp("serving")
    uri, artifact_root = f"sqlite:///{tmp / 'mlflow.db'}", (tmp / "artifacts").as_uri()
    booster = _trained_booster()
    version = _register(uri, artifact_root, booster, {"threshold": str(THRESHOLD)})
    registry.client_for(uri).set_registered_model_alias(MODEL, ALIAS, version)
    started = time.perf_counter()
    base_url = start_serving(tracking_uri=uri, port=_free_port())
    try:
        yield Served(base_url, uri, artifact_root, version, booster, time.perf_counter() - started)
    finally:
        stop_serving()


@pytest.fixture
def http(served: Served) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=served.base_url, timeout=30.0) as client:
        yield client


def test_binds_loopback_and_starts_in_bounded_time(served: Served) -> None:
    assert served.base_url.startswith("http://127.0.0.1:")
    print(f"\nRay + Serve + model ready in {served.start_seconds:.1f} s")
    assert served.start_seconds < 180


def test_health_is_ok(http: httpx.Client) -> None:
    response = http.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_ready_names_the_registered_version(http: httpx.Client, served: Served) -> None:
    response = http.get("/ready")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ready" and body["model_version"] == served.version
    assert body["model_name"] == MODEL and body["alias"] == ALIAS


def test_predict_returns_a_decision_from_the_champion(http: httpx.Client, served: Served) -> None:
    response = http.post("/predict", json=TX)
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"transaction_id", "fraud_probability", "alert", "threshold", "model_version"}
    assert body["transaction_id"] == "tx-1" and body["model_version"] == served.version
    assert 0.0 <= body["fraud_probability"] <= 1.0
    assert body["threshold"] == THRESHOLD
    assert body["alert"] == (body["fraud_probability"] >= THRESHOLD)


def test_served_probability_equals_offline_predict(http: httpx.Client, served: Served) -> None:
    txs = [{**TX, "transaction_id": f"tx-{i}", "amount": amount, "tx_datetime": when}
           for i, (amount, when) in enumerate([(3.2, "2025-03-14T13:00:00Z"), (231.4, "2025-03-15T02:15:00Z"),
                                                (999.0, "2025-03-16T23:59:59-05:00"), (0.0, "2025-03-17T06:00:00Z")])]
    served_p = [http.post("/predict", json=tx).json()["fraud_probability"] for tx in txs]
    offline = predict(served.booster, online_features(txs, load_params().features))
    np.testing.assert_allclose(served_p, offline, atol=1e-6)
    assert max(served_p) > min(served_p)  # the model is not constant on these rows


def test_batch_endpoint_matches_single_predictions(http: httpx.Client, served: Served) -> None:
    txs = [{**TX, "transaction_id": f"b-{i}", "amount": float(a)} for i, a in enumerate([1, 50, 250, 900])]
    response = http.post("/predict/batch", json={"transactions": txs})
    assert response.status_code == 200, response.text
    scores = response.json()["scores"]
    assert [s["transaction_id"] for s in scores] == [tx["transaction_id"] for tx in txs]
    offline = predict(served.booster, online_features(txs, load_params().features))
    np.testing.assert_allclose([s["fraud_probability"] for s in scores], offline, atol=1e-6)


def test_concurrent_requests_are_batched_without_mixing_rows(served: Served) -> None:
    txs = [{**TX, "transaction_id": f"c-{i}", "amount": float(i * 13 % 700)} for i in range(64)]

    async def fire() -> list[dict]:
        async with httpx.AsyncClient(base_url=served.base_url, timeout=30.0) as client:
            responses = await asyncio.gather(*(client.post("/predict", json=tx) for tx in txs))
        assert all(r.status_code == 200 for r in responses), [r.text for r in responses if r.status_code != 200]
        return [r.json() for r in responses]

    bodies = asyncio.run(fire())
    assert [b["transaction_id"] for b in bodies] == [tx["transaction_id"] for tx in txs]
    offline = predict(served.booster, online_features(txs, load_params().features))
    np.testing.assert_allclose([b["fraud_probability"] for b in bodies], offline, atol=1e-6)


@pytest.mark.parametrize(("body", "field"), [
    ({**TX, "amount": -1.0}, "amount"),
    ({**TX, "amount": "12"}, "amount"),
    ({**TX, "tx_datetime": "2025-03-14T02:15:00"}, "tx_datetime"),
    ({**TX, "transaction_id": ""}, "transaction_id"),
    ({**TX, "is_fraud": 1}, "is_fraud"),
    ({k: v for k, v in TX.items() if k != "terminal_id"}, "terminal_id"),
])
def test_bad_body_is_422_naming_the_field(http: httpx.Client, body: dict, field: str) -> None:
    response = http.post("/predict", json=body)
    assert response.status_code == 422, response.text
    assert [e["loc"] for e in response.json()["detail"]] == [["body", field]]


@pytest.mark.parametrize("body", [[TX], {}, None, "tx"])
def test_wrong_shape_is_422(http: httpx.Client, body: object) -> None:
    response = http.post("/predict", json=body)
    assert response.status_code == 422, response.text
    assert response.json()["detail"]


@pytest.mark.parametrize("raw", [
    b'{"transaction_id":"t","tx_datetime":"2025-03-01T00:00:00Z","customer_id":"c","terminal_id":"k","amount":NaN}',
    b'{"transaction_id":"t","tx_datetime":"2025-03-01T00:00:00Z","customer_id":"c","terminal_id":"k","amount":1e400}',
    b'{"transaction_id":"t","tx_datetime":"2025-03-01T00:00:00Z","customer_id":"c","terminal_id":"k",'
    b'"amount":-Infinity}',
    b"not json",
])
def test_non_finite_or_malformed_json_is_422_never_500(http: httpx.Client, raw: bytes) -> None:
    response = http.post("/predict", content=raw, headers={"content-type": "application/json"})
    assert response.status_code == 422, response.text
    if raw != b"not json":
        assert [e["loc"] for e in response.json()["detail"]] == [["body", "amount"]]


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
        time.sleep(0.5)
    raise AssertionError(f"/ready never reached the expected state; last: {body}")


def test_alias_move_reloads_and_a_broken_version_keeps_the_old_one(http: httpx.Client, served: Served) -> None:
    c = registry.client_for(served.tracking_uri)
    broken = _register(served.tracking_uri, served.artifact_root, served.booster, {"note": "no threshold tag"})
    c.set_registered_model_alias(MODEL, ALIAS, broken)
    body = _wait_for(http, lambda b: b.get("error"))
    assert "threshold" in body["error"] and body["model_version"] == served.version
    assert http.post("/predict", json=TX).json()["model_version"] == served.version
    c.set_registered_model_alias(MODEL, ALIAS, served.version)
    assert _wait_for(http, lambda b: b.get("error") is None)["model_version"] == served.version

    better = _register(served.tracking_uri, served.artifact_root, served.booster, {"threshold": "0.25"})
    c.set_registered_model_alias(MODEL, ALIAS, better)
    body = _wait_for(http, lambda b: b.get("model_version") == better)
    assert body["error"] is None
    scored = http.post("/predict", json=TX).json()
    assert scored["model_version"] == better and scored["threshold"] == 0.25
    c.set_registered_model_alias(MODEL, ALIAS, served.version)
    _wait_for(http, lambda b: b.get("model_version") == served.version)
