"""Shadow scoring: the challenger scores live traffic beside the champion and never changes an answer.

One Ray for the module serves two applications from one real MLflow registry (champion v1, challenger v2): the
scorer with ``serve.shadow: true`` at ``/`` and the same scorer with ``serve.shadow: false`` at ``/plain``, each with
its own copy of the online store and its own prediction log. Every transaction goes to both, so every answer can be
compared byte for byte and every log row by row. The first tests need no Ray: the predictor's matrix reuse and the
shadow worker's counting.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
import ray
import xgboost as xgb
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from ray import serve

from fraud_assets.adapters import mlflow_registry
from fraud_assets.adapters.mlflow_registry import LoadedModel
from fraud_assets.adapters.online_store import SqliteTransactionStore
from fraud_assets.adapters.prediction_log import (
    PredictionLog,
    label_status,
    read_alerts,
    read_between,
    read_month,
    scored_days,
    shadow_pairs,
)
from fraud_assets.core.contract import feature_definition
from fraud_assets.core.features import FEATURE_COLUMNS, build_features_by_month
from fraud_assets.core.shadow import compare_shadow
from fraud_assets.core.simulate import simulate_months
from fraud_assets.core.split import split_by_time
from fraud_assets.core.train import train_model
from fraud_assets.params import load_params
from serving.app import AppArgs, _Shadow, build_app
from serving.local import start_serving, stop_serving
from serving.predictor import Predictor, Scored

MODEL, CHAMPION, CHALLENGER = "fraud-detector", "champion", "challenger"
KEY = "shadow-key-" + "x" * 24
CHAMPION_THRESHOLD, CHALLENGER_THRESHOLD = 0.2, 0.3
MARCH = (datetime(2025, 3, 1, tzinfo=UTC), datetime(2025, 4, 1, tzinfo=UTC))
OVERRIDES = {"serve.min_replicas": 1, "serve.max_replicas": 1, "serve.reload_interval_s": 0.5,
             "serve.max_batch_rows": 100}


# ---- without Ray: the predictor's reuse of the champion's matrix, the shadow worker's counts ----------------------

def _tiny_booster(columns: list[str], seed: int) -> xgb.Booster:
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 1, size=(300, len(columns)))
    y = (x[:, 0] + 0.3 * rng.random(300) > 0.7).astype(int)
    return xgb.train({"max_depth": 2, "seed": seed, "nthread": 1}, xgb.DMatrix(x, label=y, feature_names=columns), 4)


def _predictor(version: str, columns: list[str] | None = None, label_delay_days: int | None = None,
               seed: int = 1) -> Predictor:
    p = load_params().features
    if label_delay_days is not None:
        p = p.model_copy(update={"label_delay_days": label_delay_days})
    booster = _tiny_booster(columns or list(FEATURE_COLUMNS), seed)
    return Predictor(LoadedModel(version, booster, 0.5, {}, feature_definition(p)))


def _txs(n: int, prefix: str = "t") -> list[dict[str, Any]]:
    return [{"transaction_id": f"{prefix}{i}", "tx_datetime": datetime(2025, 3, 2, 10, i % 60, tzinfo=UTC),
             "customer_id": f"c{i % 5}", "terminal_id": "k1", "amount": float(10 * i)} for i in range(n)]


def test_the_shadow_reuses_the_champions_matrix_only_with_the_same_feature_definition() -> None:
    champion = _predictor("1")
    same = _predictor("2", seed=2)
    fewer = _predictor("3", columns=list(reversed(FEATURE_COLUMNS[:5])), seed=3)
    other_knobs = _predictor("4", label_delay_days=load_params().features.label_delay_days + 1)
    txs = _txs(12)
    scored = champion.score_with_features(txs)
    assert same.shadow_positions(champion) == list(range(len(FEATURE_COLUMNS)))
    np.testing.assert_allclose(same.probabilities_of_matrix(scored.features), same.probabilities(txs), atol=1e-7)
    positions = fewer.shadow_positions(champion)  # its own columns, picked from the champion's by name
    assert positions == [FEATURE_COLUMNS.index(c) for c in reversed(FEATURE_COLUMNS[:5])]
    np.testing.assert_allclose(fewer.probabilities_of_matrix(scored.features[:, positions]),
                               fewer.probabilities(txs), atol=1e-7)
    assert other_knobs.shadow_positions(champion) is None  # its features would be other numbers
    assert champion.shadow_positions(fewer) is None  # the champion's columns are not all in that matrix
    with pytest.raises(ValueError, match="feature columns"):
        fewer.probabilities_of_matrix(scored.features)


def _shadow(tmp_path: Path, max_rows: int = 1000) -> tuple[_Shadow, PredictionLog]:
    log = PredictionLog(tmp_path / "p.sqlite", flush_interval_s=0.01)
    return _Shadow(CHALLENGER, log, max_rows, CollectorRegistry(), 0.5), log


def _roles(path: Path) -> list[tuple[str, str, str]]:
    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT role, model_version, transaction_id FROM predictions ORDER BY role, rowid"
                            ).fetchall()


def _answer(worker: _Shadow, log: PredictionLog, champion: Predictor, txs: list[dict[str, Any]]) -> Scored:
    scored = champion.score_with_features(txs)
    rids = [f"r-{tx['transaction_id']}" for tx in txs]
    log.record(rids, txs, scored.decisions, scored.features, scored.feature_names)
    worker.submit(champion, rids, txs, scored)
    return scored


def test_the_worker_logs_shadow_scores_skips_another_definition_and_counts_everything(tmp_path: Path) -> None:
    worker, log = _shadow(tmp_path)
    champion, challenger = _predictor("1"), _predictor("2", seed=2)
    _answer(worker, log, champion, _txs(3, "none-"))  # no shadow version yet: nothing to do
    worker.predictor = challenger
    _answer(worker, log, champion, _txs(4, "a-"))
    worker.predictor = _predictor("5", label_delay_days=load_params().features.label_delay_days + 1)
    _answer(worker, log, champion, _txs(2, "b-"))  # another definition: skipped and counted
    worker.predictor = champion
    _answer(worker, log, champion, _txs(2, "c-"))  # the champion's own version: never its own shadow
    worker.close()
    log.close()
    assert worker.counts == {"scored": 4, "skipped": 2, "dropped": 0, "errors": 0}
    shadow_rows = [r for r in _roles(tmp_path / "p.sqlite") if r[0] == "shadow"]
    assert shadow_rows == [("shadow", "2", f"a-{i}") for i in range(4)]
    pairs = shadow_pairs(tmp_path / "p.sqlite", "2", datetime(2025, 3, 1, tzinfo=UTC), datetime(2025, 4, 1, tzinfo=UTC))
    np.testing.assert_allclose(pairs.sort_values("transaction_id")["shadow_score"],
                               challenger.probabilities(_txs(4, "a-")), atol=1e-7)


def test_a_failing_shadow_is_counted_and_logged_once_never_raised(tmp_path: Path,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="ray.serve")
    worker, log = _shadow(tmp_path)
    champion, challenger = _predictor("1"), _predictor("2", seed=2)

    def broken(x: np.ndarray) -> np.ndarray:
        raise RuntimeError("booster exploded")

    challenger.probabilities_of_matrix = broken  # type: ignore[method-assign]
    worker.predictor = challenger
    answers = [_answer(worker, log, champion, _txs(3, f"e{k}-")).decisions for k in range(3)]
    worker.close()
    log.close()
    assert worker.counts["errors"] == 3 and worker.counts["scored"] == 0
    assert caplog.text.count("booster exploded") == 1  # once per episode of failures
    assert all(r[0] == "champion" for r in _roles(tmp_path / "p.sqlite")) and len(_roles(tmp_path / "p.sqlite")) == 9
    assert all(len(a) == 3 for a in answers)
    worker.refused("v9 refused: ValueError: no feature definition")
    worker.refused("v9 refused: ValueError: no feature definition")  # the same refusal, retried after its backoff
    assert caplog.text.count("not shadowing challenger") == 1 and worker.status()["version"] is None


def test_batches_beyond_the_bound_are_dropped_and_counted_not_waited_for(tmp_path: Path) -> None:
    worker, log = _shadow(tmp_path, max_rows=5)
    champion, challenger = _predictor("1"), _predictor("2", seed=2)
    gate = threading.Event()
    original = challenger.probabilities_of_matrix

    def slow(x: np.ndarray) -> np.ndarray:
        gate.wait(10)
        return original(x)

    challenger.probabilities_of_matrix = slow  # type: ignore[method-assign]
    worker.predictor = challenger
    started = time.perf_counter()
    for k in range(3):
        _answer(worker, log, champion, _txs(3, f"d{k}-"))  # the first waits in the worker; 3 + 3 > 5: dropped
    handed_over_s = time.perf_counter() - started
    gate.set()
    worker.close()
    log.close()
    assert worker.counts == {"scored": 3, "skipped": 0, "dropped": 6, "errors": 0}
    assert handed_over_s < 5  # the answers never waited for the blocked shadow


# ---- a real served app --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Served:
    base_url: str
    tracking_uri: str
    champion: str
    challenger: str
    unloadable: str
    challenger_booster: xgb.Booster
    shadow_log: Path
    plain_log: Path
    march: pd.DataFrame

    def set_challenger(self, version: str) -> None:
        mlflow_registry.client_for(self.tracking_uri).set_registered_model_alias(MODEL, CHALLENGER, version)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _register(uri: str, artifact_root: str, booster: xgb.Booster, threshold: float, definition: bool = True) -> str:
    c = mlflow_registry.client_for(uri)
    run = c.create_run(mlflow_registry.ensure_experiment(c, "fraud-detection", artifact_root))
    model_uri = mlflow_registry.log_booster(booster, run.info.run_id, uri)
    tags = {**(mlflow_registry.definition_tags(load_params().features) if definition else {}),
            "threshold": str(threshold)}
    mv = mlflow_registry.register_version(c, MODEL, model_uri, run.info.run_id, tags)
    c.set_terminated(run.info.run_id)
    return str(mv.version)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp("shadow")
    uri, artifact_root = f"sqlite:///{tmp / 'mlflow.db'}", (tmp / "artifacts").as_uri()
    params = load_params()
    months = simulate_months(params.data, "2025-01", 3)
    split = split_by_time(build_features_by_month(months, params.features), "2025-03", params.split)
    booster = train_model(split.train, split.valid, params.train)
    challenger_booster = booster[0:max(3, booster.num_boosted_rounds() // 4)]  # fewer trees: other scores
    champion = _register(uri, artifact_root, booster, CHAMPION_THRESHOLD)
    challenger = _register(uri, artifact_root, challenger_booster, CHALLENGER_THRESHOLD)
    unloadable = _register(uri, artifact_root, challenger_booster, CHALLENGER_THRESHOLD, definition=False)
    client = mlflow_registry.client_for(uri)
    client.set_registered_model_alias(MODEL, CHAMPION, champion)
    client.set_registered_model_alias(MODEL, CHALLENGER, challenger)
    store = tmp / "store.sqlite"
    SqliteTransactionStore(store).seed(pd.concat([months["2025-01"], months["2025-02"]], ignore_index=True))
    shutil.copy(store, tmp / "plain-store.sqlite")  # the same past for both applications
    shadow_log, plain_log = tmp / "shadow-log.sqlite", tmp / "plain-log.sqlite"
    previous = os.environ.get("FRAUD_API_KEY")
    os.environ["FRAUD_API_KEY"] = KEY  # Ray's local workers inherit it
    try:
        base_url = start_serving(tracking_uri=uri, port=_free_port(), args=AppArgs(
            overrides={**OVERRIDES, "serve.shadow": True}, prediction_log=str(shadow_log), online_store=str(store)))
        serve.run(build_app(AppArgs(tracking_uri=uri, overrides={**OVERRIDES, "serve.shadow": False},
                                    prediction_log=str(plain_log), online_store=str(tmp / "plain-store.sqlite"))),
                  name="plain", route_prefix="/plain", blocking=False)
        with httpx.Client(base_url=base_url, timeout=10.0, headers={"x-api-key": KEY}) as http:  # the guard opens
            _wait(lambda: http.get("/plain/ready").status_code == 200, "the plain application", 180)  # only "/ready"
        march = months["2025-03"].sort_values("tx_datetime", kind="stable").reset_index(drop=True)
        yield Served(base_url, uri, champion, challenger, unloadable, challenger_booster, shadow_log, plain_log,
                     march)
    finally:
        try:
            if ray.is_initialized():
                serve.delete("plain")  # its replica flushes its log, as stop_serving has the other one do
        finally:
            stop_serving()
        if previous is None:
            os.environ.pop("FRAUD_API_KEY", None)
        else:
            os.environ["FRAUD_API_KEY"] = previous


@pytest.fixture(scope="module")
def http(served: Served) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=served.base_url, timeout=30.0, headers={"x-api-key": KEY}) as client:
        yield client


def _requests(served: Served, start: int, n: int) -> list[dict[str, Any]]:
    rows = served.march.iloc[start:start + n]
    return [{"transaction_id": r.transaction_id, "tx_datetime": r.tx_datetime.isoformat(),
             "customer_id": r.customer_id, "terminal_id": r.terminal_id, "amount": float(r.amount)}
            for r in rows.itertuples()]


def _wait(condition: Callable[[], Any], what: str, timeout_s: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _rows(path: Path, ids: list[str]) -> list[tuple]:
    marks = ",".join("?" * len(ids))
    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT role, model_version, transaction_id, fraud_probability, features, request_id "
                            f"FROM predictions WHERE transaction_id IN ({marks})", ids).fetchall()


def _logged(path: Path, ids: list[str], roles: dict[str, int]) -> list[tuple]:
    """The rows of ``ids`` once the log holds ``roles`` (role: count) of them."""
    def done() -> list[tuple] | None:
        rows = _rows(path, ids)
        counts = {role: sum(r[0] == role for r in rows) for role in roles}
        return rows if counts == roles else None

    return _wait(done, f"{roles} rows of {len(ids)} transactions in {path.name}")


def _ready(http: httpx.Client, prefix: str = "") -> dict[str, Any]:
    return http.get(f"{prefix}/ready").json()


def _ready_when(http: httpx.Client, condition: Callable[[dict[str, Any]], bool], what: str) -> dict[str, Any]:
    """The first ``/ready`` body that meets ``condition``."""
    return _wait(lambda: (body if condition(body := _ready(http)) else None), what)


def _metric(http: httpx.Client, prefix: str, name: str) -> float:
    families = {f.name: f for f in text_string_to_metric_families(http.get(f"{prefix}/metrics").text)}
    return sum(s.value for s in families[name].samples if s.name == f"{name}_total")


@pytest.mark.slow
def test_ready_names_the_shadow_version_beside_the_champion(http: httpx.Client, served: Served) -> None:
    body = _ready_when(http, lambda b: b["shadow_version"] == served.challenger, "the shadow version in /ready")
    assert body["status"] == "ready" and body["model_version"] == served.champion and body["error"] is None
    assert body["shadow"]["alias"] == CHALLENGER and body["shadow"]["error"] is None
    plain = _ready(http, "/plain")
    assert plain["model_version"] == served.champion and plain["shadow_version"] is None and plain["shadow"] is None


@pytest.mark.slow
def test_answers_are_byte_identical_to_a_service_without_shadow(http: httpx.Client, served: Served) -> None:
    singles, batch = _requests(served, 0, 60), _requests(served, 60, 40)
    answers = []
    for tx in singles:
        ours, plain = http.post("/predict", json=tx), http.post("/plain/predict", json=tx)
        assert ours.status_code == plain.status_code == 200, (ours.text, plain.text)
        assert ours.content == plain.content
        answers.append(ours.json())
    ours, plain = (http.post(f"{prefix}/predict/batch", json={"transactions": batch}) for prefix in ("", "/plain"))
    assert ours.status_code == plain.status_code == 200 and ours.content == plain.content
    answers += ours.json()["scores"]
    assert all(a["model_version"] == served.champion for a in answers)
    alerted = [a for a in answers if a["alert"]]
    assert alerted and all(len(a["reasons"]) == 3 for a in alerted)  # the compared bytes carry reasons too
    assert _ready(http)["shadow_version"] == served.challenger  # the shadow was on all along


@pytest.mark.slow
def test_every_answer_has_a_shadow_row_with_the_challengers_score(http: httpx.Client, served: Served) -> None:
    ids = [tx["transaction_id"] for tx in _requests(served, 0, 100)]
    rows = _logged(served.shadow_log, ids, {"champion": 100, "shadow": 100})
    assert _logged(served.plain_log, ids, {"champion": 100, "shadow": 0})
    champion = {(r[5], r[2]): r for r in rows if r[0] == "champion"}
    shadow = [r for r in rows if r[0] == "shadow"]
    assert all(r[1] == served.challenger for r in shadow) and all(r[1] == served.champion for r in champion.values())
    assert {(r[5], r[2]) for r in shadow} == set(champion)  # one shadow row per answer, the same request
    names = list(served.challenger_booster.feature_names or FEATURE_COLUMNS)
    x = np.array([[json.loads(champion[(r[5], r[2])][4])[c] for c in names] for r in shadow], dtype=np.float32)
    offline = served.challenger_booster.inplace_predict(x)  # the challenger on the features the champion answered
    np.testing.assert_allclose([r[3] for r in shadow], offline, atol=1e-6)
    assert not np.allclose([r[3] for r in shadow], [champion[(r[5], r[2])][3] for r in shadow])
    status = _ready(http)["shadow"]
    assert status["scored"] == 100 and status["errors"] == status["skipped"] == status["dropped"] == 0


def _without(frame: pd.DataFrame, *columns: str) -> pd.DataFrame:
    return frame.drop(columns=list(columns)).sort_values("transaction_id").reset_index(drop=True)


@pytest.mark.slow
def test_no_answer_facing_reader_ever_reads_a_shadow_row(http: httpx.Client, served: Served) -> None:
    """Every reader of answers says of the shadow service's log what it says of the plain one's, though the former
    holds as many shadow rows as answers (with other scores and alerts)."""
    ids = [tx["transaction_id"] for tx in _requests(served, 0, 100)]
    _logged(served.shadow_log, ids, {"champion": 100, "shadow": 100})
    ours, plain = served.shadow_log, served.plain_log
    pd.testing.assert_frame_equal(_without(read_between(ours, *MARCH)), _without(read_between(plain, *MARCH)))
    pd.testing.assert_frame_equal(_without(read_month(ours, "2025-03")[0]), _without(read_month(plain, "2025-03")[0]))
    assert scored_days(ours) == scored_days(plain) and scored_days(ours)
    for day in scored_days(ours):
        pd.testing.assert_frame_equal(_without(read_alerts(ours, day), "scored_at"),
                                      _without(read_alerts(plain, day), "scored_at"))
    assert set(read_between(ours, *MARCH)["model_version"]) == {served.champion}
    shadow_alerts = read_between(ours, *MARCH, role="shadow")
    assert len(shadow_alerts) == 100 and set(shadow_alerts["model_version"]) == {served.challenger}
    assert label_status(ours, ids) == label_status(plain, ids) == {}
    day = scored_days(ours)[0].isoformat()
    for path in (f"/alerts?day={day}", "/performance?weeks=4"):  # the analyst page's answers
        assert http.get(path).json() == http.get(f"/plain{path}").json(), path
    for name in ("fraud_predictions", "fraud_alerts"):  # /metrics' answer counts
        assert _metric(http, "", name) == _metric(http, "/plain", name) > 0


@pytest.mark.slow
def test_shadow_pairs_pair_both_scores_with_the_labels_received(http: httpx.Client, served: Served) -> None:
    txs = _requests(served, 0, 100)
    _logged(served.shadow_log, [tx["transaction_id"] for tx in txs], {"champion": 100, "shadow": 100})
    labels = [{"transaction_id": tx["transaction_id"], "is_fraud": int(i % 4 == 0)} for i, tx in enumerate(txs[:40])]
    before = datetime.now(UTC)
    assert http.post("/labels", json={"labels": labels}).json() == {"stored": 40}
    pairs = shadow_pairs(served.shadow_log, served.challenger, *MARCH)
    assert sorted(pairs["transaction_id"]) == sorted(tx["transaction_id"] for tx in txs)  # the latest pair of each
    assert (pairs["champion_version"] == served.champion).all() and pairs["tx_datetime"].is_monotonic_increasing
    labelled = pairs.set_index("transaction_id").loc[[x["transaction_id"] for x in labels]]
    assert labelled["is_fraud"].tolist() == [float(x["is_fraud"]) for x in labels]
    assert (labelled["label_available_at"] >= pd.Timestamp(before).floor("s")).all()
    assert pairs["is_fraud"].isna().sum() == 60 and pairs["label_available_at"].isna().sum() == 60
    answers = read_between(served.shadow_log, *MARCH).drop_duplicates("transaction_id", keep="last")
    np.testing.assert_allclose(pairs.set_index("transaction_id")["champion_score"].sort_index(),
                               answers.set_index("transaction_id")["fraud_probability"].sort_index(), atol=1e-12)
    comparison = compare_shadow(pairs, datetime.now(UTC), n_boot=200, seed=0)
    assert comparison.n == 40 and comparison.n_frauds == 10
    assert shadow_pairs(served.plain_log, served.challenger, *MARCH).empty
    assert shadow_pairs(served.shadow_log, served.champion, *MARCH).empty  # the champion was never a shadow here


@pytest.mark.slow
def test_no_shadow_rows_when_the_challenger_alias_names_the_champion(http: httpx.Client, served: Served) -> None:
    served.set_challenger(served.champion)
    try:
        _ready_when(http, lambda b: b["shadow_version"] is None, "the shadow to stop")
        txs = _requests(served, 100, 30)
        for tx in txs[:10]:
            assert http.post("/predict", json=tx).status_code == 200
        assert http.post("/predict/batch", json={"transactions": txs[10:]}).status_code == 200
        ids = [tx["transaction_id"] for tx in txs]
        _logged(served.shadow_log, ids, {"champion": 30, "shadow": 0})
        time.sleep(1.0)  # what a shadow would have queued has had time to be written
        assert all(r[0] == "champion" for r in _rows(served.shadow_log, ids))
        body = _ready(http)
        assert body["status"] == "ready" and body["shadow"]["error"] is None
    finally:
        served.set_challenger(served.challenger)
    _ready_when(http, lambda b: b["shadow_version"] == served.challenger, "the shadow to come back")


@pytest.mark.slow
def test_an_unloadable_challenger_is_not_shadowed_and_serving_never_notices(http: httpx.Client,
                                                                            served: Served) -> None:
    failures = _metric(http, "", "fraud_model_load_failures")
    served.set_challenger(served.unloadable)
    try:
        body = _ready_when(http, lambda b: b["shadow"]["error"] is not None, "the refused shadow in /ready")
        assert f"v{served.unloadable} refused" in body["shadow"]["error"] and "feature_definition" in body[
            "shadow"]["error"]
        assert body["shadow_version"] is None and body["status"] == "ready" and body["error"] is None
        assert body["model_version"] == served.champion
        txs = _requests(served, 130, 10)
        for tx in txs:
            response = http.post("/predict", json=tx)
            assert response.status_code == 200 and response.json()["model_version"] == served.champion
        _logged(served.shadow_log, [tx["transaction_id"] for tx in txs], {"champion": 10, "shadow": 0})
        assert _metric(http, "", "fraud_model_load_failures") == failures  # the serving version's count: untouched
    finally:
        served.set_challenger(served.challenger)
    body = _ready_when(http, lambda b: b["shadow_version"] == served.challenger,
                       "the loadable challenger to be shadowed again")
    assert body["shadow"]["error"] is None
