"""The pure predictor: batch scoring, decisions against the version's threshold, warm-up checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xgboost as xgb

from fraud_assets.adapters import mlflow_registry
from fraud_assets.adapters.mlflow_registry import LoadedModel
from fraud_assets.adapters.online_store import OnlineFeatures, SqliteTransactionStore
from fraud_assets.core.contract import feature_definition
from fraud_assets.core.features import FEATURE_COLUMNS, online_features
from fraud_assets.core.train import predict
from fraud_assets.params import FeatureParams, load_params
from serving.predictor import WARMUP_TRANSACTION, Predictor


def _booster() -> xgb.Booster:
    rng = np.random.default_rng(7)
    # Only the amount carries signal; the other columns are noise, so a score is decided by the amount.
    x = rng.uniform(0, 1, size=(400, len(FEATURE_COLUMNS)))
    x[:, 0] = rng.uniform(0, 300, size=400)
    y = (x[:, 0] > 150).astype(int)
    return xgb.train({"max_depth": 2, "seed": 7, "nthread": 1},
                     xgb.DMatrix(x, label=y, feature_names=FEATURE_COLUMNS), 5)


def _loaded(version: str, booster: xgb.Booster, threshold: float, features: FeatureParams | None = None
            ) -> LoadedModel:
    """A version as the registry returns it, trained with ``features`` (default: today's ``params.yaml``)."""
    return LoadedModel(version, booster, threshold, {"threshold": str(threshold)},
                       feature_definition(features or load_params().features))


def _tx(i: int, amount: float) -> dict:
    return {"transaction_id": f"t{i}", "tx_datetime": "2025-03-01T02:30:00+00:00", "customer_id": "c1",
            "terminal_id": "k1", "amount": amount}


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    return Predictor(_loaded("7", _booster(), 0.5))


def test_scores_match_offline_predict(predictor: Predictor) -> None:
    txs = [_tx(i, a) for i, a in enumerate([1.0, 90.0, 160.0, 299.0])]
    scores = predictor.score(txs)
    offline = predict(predictor._model.booster, online_features(txs, load_params().features))
    assert [s["transaction_id"] for s in scores] == ["t0", "t1", "t2", "t3"]
    np.testing.assert_allclose([s["fraud_probability"] for s in scores], offline, atol=1e-7)


def test_decision_fields_and_alert_follow_threshold(predictor: Predictor) -> None:
    scores = predictor.score([_tx(0, 1.0), _tx(1, 299.0)])
    assert all(s["model_version"] == "7" and s["threshold"] == 0.5 for s in scores)
    assert all(s["alert"] == (s["fraud_probability"] >= 0.5) for s in scores)
    assert scores[0]["fraud_probability"] < 0.5 <= scores[1]["fraud_probability"]


def test_batch_equals_rows_one_by_one(predictor: Predictor) -> None:
    txs = [_tx(i, float(a)) for i, a in enumerate(range(0, 300, 7))]
    batch = predictor.probabilities(txs)
    single = [predictor.probabilities([tx])[0] for tx in txs]
    assert len(batch) == len(txs) and np.allclose(batch, single, rtol=0, atol=1e-7)


def test_empty_batch_scores_nothing(predictor: Predictor) -> None:
    assert predictor.score([]) == []


def test_warm_up_returns_a_probability(predictor: Predictor) -> None:
    assert 0.0 <= predictor.warm_up() <= 1.0
    assert WARMUP_TRANSACTION["amount"] >= 0


def test_threshold_outside_unit_interval_is_refused() -> None:
    with pytest.raises(ValueError, match=r"threshold 1\.5"):
        Predictor(_loaded("3", _booster(), 1.5))


def test_model_with_foreign_features_fails_loudly() -> None:
    x = np.zeros((10, 2))
    other = xgb.train({}, xgb.DMatrix(x, label=np.arange(10) % 2, feature_names=["a", "b"]), 1)
    with pytest.raises(KeyError):
        Predictor(_loaded("4", other, 0.5)).score([_tx(0, 1.0)])


def test_reasons_are_the_top_three_contributions(predictor: Predictor) -> None:
    (decision,) = predictor.score([_tx(0, 299.0)])
    reasons = decision["reasons"]
    assert len(reasons) == 3 and {r["feature"] for r in reasons} <= set(FEATURE_COLUMNS)
    x = predictor.matrix([_tx(0, 299.0)])
    contribs = predictor.booster.predict(xgb.DMatrix(x, feature_names=FEATURE_COLUMNS), pred_contribs=True,
                                         approx_contribs=True)[0, :-1]
    expected = sorted(zip(FEATURE_COLUMNS, contribs, strict=True), key=lambda fc: -abs(fc[1]))[:3]
    assert [r["feature"] for r in reasons] == [f for f, _ in expected]
    np.testing.assert_allclose([r["contribution"] for r in reasons], [c for _, c in expected], rtol=1e-5)


def test_reasons_for_alerts_only_explain_the_alerted_rows_with_the_same_reasons() -> None:
    txs = [_tx(i, amount) for i, amount in enumerate([3.0, 299.0, 40.0, 1500.0, 12.0, 880.0])]
    everything = Predictor(_loaded("9", _booster(), 0.5)).score(txs)
    threshold = sorted(d["fraud_probability"] for d in everything)[3]  # the three highest rows alert
    every = Predictor(_loaded("9", _booster(), threshold), reasons="all").score(txs)
    alerts = Predictor(_loaded("9", _booster(), threshold), reasons="alerts").score(txs)
    assert sum(d["alert"] for d in alerts) == 3
    for full, lean in zip(every, alerts, strict=True):
        assert lean["fraud_probability"] == full["fraud_probability"] and len(full["reasons"]) == 3
        assert lean["reasons"] == (full["reasons"] if lean["alert"] else [])
    nobody = Predictor(_loaded("9", _booster(), 1.0), reasons="alerts").score(txs)
    assert all(not d["alert"] and d["reasons"] == [] for d in nobody)


def test_an_injected_feature_provider_is_used() -> None:
    calls: list[int] = []

    def provider(transactions: list) -> object:
        calls.append(len(transactions))
        return online_features([{**tx, "amount": 299.0} for tx in transactions], load_params().features)

    p = Predictor(_loaded("8", _booster(), 0.5), feature_provider=provider)
    default = Predictor(_loaded("8", _booster(), 0.5))
    assert p.probabilities([_tx(0, 1.0)]) == default.probabilities([_tx(0, 299.0)]) and calls == [1]


def test_score_with_features_returns_the_scored_matrix(predictor: Predictor) -> None:
    scored = predictor.score_with_features([_tx(0, 5.0), _tx(1, 6.0)])
    assert scored.features.shape == (2, len(FEATURE_COLUMNS)) and scored.feature_names == FEATURE_COLUMNS
    assert scored.features[:, FEATURE_COLUMNS.index("amount")].tolist() == [5.0, 6.0]


def _terminal_rate_booster() -> xgb.Booster:
    """Only the 1-day terminal fraud rate carries signal: it reads labels older than the label delay."""
    rng = np.random.default_rng(11)
    x = rng.uniform(0, 1, size=(400, len(FEATURE_COLUMNS)))
    y = (x[:, FEATURE_COLUMNS.index("terminal_fraud_rate_1d")] > 0.5).astype(int)
    return xgb.train({"max_depth": 2, "seed": 11, "nthread": 1},
                     xgb.DMatrix(x, label=y, feature_names=FEATURE_COLUMNS), 5)


def _past_at_terminal() -> pd.DataFrame:
    """Terminal k1 the day before 2025-03-10 12:00 (all fraud) and a week before that (all legitimate)."""
    rows = [(f"fraud-{i}", f"2025-03-09T{10 + i % 10:02d}:00:00+00:00", f"other-{i}", 1) for i in range(10)]
    rows += [(f"legit-{i}", f"2025-03-02T{10 + i % 10:02d}:00:00+00:00", f"other-{i}", 0) for i in range(10)]
    frame = pd.DataFrame(rows, columns=["transaction_id", "tx_datetime", "customer_id", "is_fraud"])
    return frame.assign(tx_datetime=pd.to_datetime(frame["tx_datetime"], utc=True), terminal_id="k1", amount=50.0)


def test_served_scores_follow_the_champions_feature_params_after_params_yaml_changed(tmp_path: Path) -> None:
    """The changed-params test: the champion was trained with a 7-day label delay; ``params.yaml`` now says 0.
    Served through the registry and the online store, it still scores with its own 7 days."""
    trained_with = load_params().features
    assert trained_with.label_delay_days == 7
    now = load_params(overrides={"features.label_delay_days": 0}).features  # what the replica's params.yaml says
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow_registry.client_for(uri)
    run = client.create_run(mlflow_registry.ensure_experiment(client, "fraud-detection", (tmp_path / "a").as_uri()))
    booster = _terminal_rate_booster()
    model_uri = mlflow_registry.log_booster(booster, run.info.run_id, uri)
    version = mlflow_registry.register_version(client, "fraud-detector", model_uri, run.info.run_id, {
        "threshold": "0.5", **mlflow_registry.definition_tags(trained_with)}).version
    store = SqliteTransactionStore(tmp_path / "store.sqlite")
    past = _past_at_terminal()
    store.seed(past)
    txs = [{"transaction_id": f"n{i}", "tx_datetime": "2025-03-10T12:00:00+00:00", "customer_id": f"c{i}",
            "terminal_id": "k1", "amount": 20.0} for i in range(3)]

    loaded = mlflow_registry.check_servable(client, "fraud-detector", str(version))  # what a replica loads
    assert loaded.features.params == trained_with
    served = Predictor(loaded, OnlineFeatures(store, loaded.features.params, remember=False)).probabilities(txs)

    own = predict(booster, online_features(txs, trained_with, history=past))
    today = predict(booster, online_features(txs, now, history=past))
    np.testing.assert_allclose(served, own, atol=1e-7)
    assert np.all(np.abs(np.asarray(served) - today) > 0.1)  # the label delay decides these scores
    with pytest.raises(ValueError, match="feature provider builds with"):  # today's knobs are refused outright
        Predictor(loaded, OnlineFeatures(store, now, remember=False))


def test_a_calibrated_version_answers_calibrated_probabilities() -> None:
    from fraud_assets.core.calibrate import Calibrator

    calibrator = Calibrator((0.0, 0.5, 1.0), (0.0, 0.1, 0.9))
    loaded = _loaded("8", _booster(), 0.05)
    calibrated = Predictor(LoadedModel(loaded.version, loaded.booster, 0.05, loaded.tags, loaded.features,
                                       calibrator=calibrator))
    raw = Predictor(loaded)
    txs = [_tx(i, a) for i, a in enumerate([1.0, 160.0, 299.0])]
    expected = calibrator.apply(np.asarray(raw.probabilities(txs)))
    np.testing.assert_allclose(calibrated.probabilities(txs), expected, atol=1e-7)
    assert calibrated.calibrated and not raw.calibrated  # a version without a calibrator serves, flagged
    assert all(d["alert"] == (d["fraud_probability"] >= 0.05) for d in calibrated.score(txs))
