"""The pure predictor: batch scoring, decisions against the version's threshold, warm-up checks."""

from __future__ import annotations

import numpy as np
import pytest
import xgboost as xgb

from fraud_assets.adapters.mlflow_registry import LoadedModel
from fraud_assets.core.features import FEATURE_COLUMNS, online_features
from fraud_assets.core.train import predict
from fraud_assets.params import load_params
from serving.predictor import WARMUP_TRANSACTION, Predictor


def _booster() -> xgb.Booster:
    rng = np.random.default_rng(7)
    # Only the amount carries signal; the other columns are noise, so a score is decided by the amount.
    x = rng.uniform(0, 1, size=(400, len(FEATURE_COLUMNS)))
    x[:, 0] = rng.uniform(0, 300, size=400)
    y = (x[:, 0] > 150).astype(int)
    return xgb.train({"max_depth": 2, "seed": 7, "nthread": 1},
                     xgb.DMatrix(x, label=y, feature_names=FEATURE_COLUMNS), 5)


def _tx(i: int, amount: float) -> dict:
    return {"transaction_id": f"t{i}", "tx_datetime": "2025-03-01T02:30:00+00:00", "customer_id": "c1",
            "terminal_id": "k1", "amount": amount}


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    return Predictor(LoadedModel("7", _booster(), 0.5, {"threshold": "0.5"}), load_params().features)


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
        Predictor(LoadedModel("3", _booster(), 1.5, {}), load_params().features)


def test_model_with_foreign_features_fails_loudly() -> None:
    x = np.zeros((10, 2))
    other = xgb.train({}, xgb.DMatrix(x, label=np.arange(10) % 2, feature_names=["a", "b"]), 1)
    with pytest.raises(KeyError):
        Predictor(LoadedModel("4", other, 0.5, {}), load_params().features).score([_tx(0, 1.0)])


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


def test_an_injected_feature_provider_is_used() -> None:
    calls: list[int] = []

    def provider(transactions: list) -> object:
        calls.append(len(transactions))
        return online_features([{**tx, "amount": 299.0} for tx in transactions], load_params().features)

    p = Predictor(LoadedModel("8", _booster(), 0.5, {}), load_params().features, feature_provider=provider)
    default = Predictor(LoadedModel("8", _booster(), 0.5, {}), load_params().features)
    assert p.probabilities([_tx(0, 1.0)]) == default.probabilities([_tx(0, 299.0)]) and calls == [1]


def test_score_with_features_returns_the_scored_matrix(predictor: Predictor) -> None:
    scored = predictor.score_with_features([_tx(0, 5.0), _tx(1, 6.0)])
    assert scored.features.shape == (2, len(FEATURE_COLUMNS)) and scored.feature_names == FEATURE_COLUMNS
    assert scored.features[:, FEATURE_COLUMNS.index("amount")].tolist() == [5.0, 6.0]
