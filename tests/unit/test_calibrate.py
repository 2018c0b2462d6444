"""Calibration and the money metrics: the isotonic table, ECE and Brier, daily k, savings, the bounded search."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from fraud_assets.core.calibrate import Calibrator, brier_score, expected_calibration_error, fit_calibrator
from fraud_assets.core.evaluate import card_precision_at_k, daily_k, money_metrics, recall_by_scenario
from fraud_assets.core.features import FEATURE_COLUMNS
from fraud_assets.core.train import tune_train_params
from fraud_assets.params import load_params

P = load_params()


def _inflated(n: int = 20_000, seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from a true probability, and scores that overstate it (as class weighting does)."""
    rng = np.random.default_rng(seed)
    truth = rng.beta(0.3, 20, n)
    return (rng.random(n) < truth).astype(int), np.sqrt(truth)


def test_the_calibrator_turns_inflated_scores_into_probabilities() -> None:
    y, scores = _inflated()
    calibrator = fit_calibrator(y[:10_000], scores[:10_000])
    test_y, test_s = y[10_000:], scores[10_000:]
    before = expected_calibration_error(test_y, test_s, 10)
    after = expected_calibration_error(test_y, calibrator.apply(test_s), 10)
    assert before > 0.05 and after < 0.01 and after < before
    assert brier_score(test_y, calibrator.apply(test_s)) < brier_score(test_y, test_s)
    # Strictly increasing between its first and last knot: the ranking there is kept, not tied.
    inside = (test_s > calibrator.x[0]) & (test_s < calibrator.x[-1])
    assert len(np.unique(calibrator.apply(test_s[inside]))) > 0.9 * len(np.unique(test_s[inside]))


def test_the_table_round_trips_as_json_and_malformed_tables_are_refused() -> None:
    y, scores = _inflated(4000)
    calibrator = fit_calibrator(y, scores)
    again = Calibrator.from_dict(json.loads(json.dumps(calibrator.to_dict())))
    np.testing.assert_array_equal(again.apply(scores), calibrator.apply(scores))
    for bad in ({"x": [0.2, 0.1], "y": [0.0, 1.0]}, {"x": [0.1, 0.2], "y": [0.5, 0.1]}, {"x": [0.1]},
                {"x": [0.1, 0.2], "y": [0.0, 1.5]}):
        with pytest.raises(ValueError, match="calibrator table"):
            Calibrator.from_dict(bad)
    with pytest.raises(ValueError, match="both fraud and legit"):
        fit_calibrator(np.zeros(10), np.linspace(0, 1, 10))


def test_ece_uses_equal_count_bins() -> None:
    y = np.array([0, 0, 0, 1])
    p = np.array([0.0, 0.0, 0.5, 0.5])
    # Two bins of two rows: |0 - 0| and |0.5 - 0.5|.
    assert expected_calibration_error(y, p, 2) == pytest.approx(0.0)
    assert expected_calibration_error(y, np.array([0.0, 0.0, 0.0, 0.0]), 2) == pytest.approx(0.25)


def _days(volumes: list[int]) -> pd.DataFrame:
    times = [pd.Timestamp("2025-01-01", tz="UTC") + pd.Timedelta(days=d, seconds=i * 86_000 // n)
             for d, n in enumerate(volumes) for i in range(n)]
    return pd.DataFrame({"tx_datetime": times, "customer_id": [f"c{i}" for i in range(len(times))],
                         "is_fraud": np.zeros(len(times), int), "amount": np.ones(len(times))})


def test_k_follows_the_daily_volume() -> None:
    k = daily_k(_days([800, 10_000, 20]), 10.0)
    assert k.tolist() == [8, 100, 1]
    frame = _days([4, 4])
    frame.loc[[0, 4, 5], "is_fraud"] = 1
    scores = np.array([0.9, 0.8, 0.1, 0.0, 0.9, 0.8, 0.1, 0.0])
    per_day = pd.Series([1, 2], index=daily_k(frame, 250.0).index)
    assert card_precision_at_k(frame, scores, per_day) == pytest.approx((1.0 + 1.0) / 2)
    assert card_precision_at_k(frame, scores, 2) == pytest.approx((0.5 + 1.0) / 2)


def test_money_metrics_and_recall_per_scenario() -> None:
    frame = pd.DataFrame({"is_fraud": [1, 1, 0, 0], "amount": [100.0, 300.0, 50.0, 20.0]})
    alert = np.array([True, False, True, False])
    m = money_metrics(frame, alert, P.evaluate)
    assert m["fraud_amount_stopped"] == 100.0 and m["amount_recall"] == pytest.approx(0.25)
    assert m["net_savings"] == pytest.approx(100.0 - 2 * P.evaluate.cost_review)
    scenario = np.array(["card", "terminal", "legit", "legit"])
    assert recall_by_scenario(scenario, alert) == {"recall_card": 1.0, "recall_terminal": 0.0}


def test_the_search_is_bounded_and_starts_from_the_params() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(600, len(FEATURE_COLUMNS)))
    y = (x[:, 0] + 0.5 * rng.normal(size=600) > 1.0).astype(int)
    frame = pd.DataFrame(x, columns=FEATURE_COLUMNS).assign(is_fraud=y)
    train, valid = frame.iloc[:400], frame.iloc[400:]
    p = P.train.model_copy(update={"n_estimators": 20})
    everything = P.tune.model_copy(update={"budget_seconds": 600.0})
    best, trials = tune_train_params(train, valid, p, everything)
    n_grid = int(np.prod([len(v) for v in P.tune.grid.values()]))
    assert len(trials) == 1 + n_grid
    assert trials[0]["max_depth"] == p.max_depth
    assert max(t["valid_average_precision"] for t in trials) == pytest.approx(
        max(trials, key=lambda t: t["valid_average_precision"])["valid_average_precision"])
    assert best.n_estimators == 20
    _, one = tune_train_params(train, valid, p, P.tune.model_copy(update={"budget_seconds": 1e-9}))
    assert len(one) == 1  # out of time after the first trial: the params as given
