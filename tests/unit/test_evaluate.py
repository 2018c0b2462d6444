"""Threshold rules, the logistic baseline, the oracle AUPRC and the evaluation plots."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fraud_assets.core.evaluate import (
    choose_threshold,
    choose_threshold_on,
    oracle_average_precision,
    threshold_for_budget,
    threshold_for_cost,
)
from fraud_assets.core.plots import calibration_table, evaluation_plots
from fraud_assets.params import load_params

P = load_params()
Y = np.array([0, 0, 0, 1, 0, 1, 1, 1])
S = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8])
PNG = b"\x89PNG\r\n\x1a\n"


def test_budget_rule_caps_alerts_per_day() -> None:
    t = threshold_for_budget(S, days=2, alerts_per_day=1.5)  # at most 3 alerts over 2 days
    assert int((t <= S).sum()) == 3
    assert threshold_for_budget(S, days=1, alerts_per_day=100) == pytest.approx(0.1)
    assert int((threshold_for_budget(S, days=1, alerts_per_day=0) <= S).sum()) == 0


def test_budget_rule_never_exceeds_budget_on_ties() -> None:
    tied = np.array([0.9, 0.5, 0.5, 0.5, 0.1])
    t = threshold_for_budget(tied, days=1, alerts_per_day=2)
    assert int((tied >= t).sum()) <= 2


def test_cost_rule_minimises_expected_cost() -> None:
    # Reviews cost 1, a missed fraud 10: alerting from 0.4 up (5 alerts, 4 frauds caught, none missed) is cheapest.
    t = threshold_for_cost(Y, S, cost_missed_fraud=10, cost_review=1)
    assert t == pytest.approx(0.4)
    # When a review costs more than any fraud, alerting nothing is cheapest.
    t_none = threshold_for_cost(Y, S, cost_missed_fraud=1, cost_review=100)
    assert int((t_none <= S).sum()) == 0
    brute = min(S, key=lambda th: (Y[th > S].sum() * 10 + (th <= S).sum()))
    assert t == pytest.approx(brute)


def test_rule_is_selected_by_params() -> None:
    e = P.evaluate.model_copy(update={"threshold_rule": "alert_budget", "alerts_per_day": 2})
    assert int((choose_threshold(Y, S, e, days=1) <= S).sum()) == 2
    e = P.evaluate.model_copy(update={"threshold_rule": "precision_target", "precision_target": 0.99})
    assert choose_threshold(Y, S, e) == pytest.approx(0.6)
    valid = pd.DataFrame({"tx_datetime": pd.date_range("2025-01-01", periods=8, freq="6h", tz="UTC"), "is_fraud": Y})
    e = P.evaluate.model_copy(update={"threshold_rule": "alert_budget", "alerts_per_day": 1})
    assert int((choose_threshold_on(valid, S, e) <= S).sum()) == 2  # the frame spans 2 days


def test_oracle_average_precision() -> None:
    frame = pd.DataFrame({"is_fraud": Y, "fraud_probability": S})
    assert oracle_average_precision(frame) == pytest.approx((1 + 1 + 1 + 4 / 5) / 4)  # precision at each fraud, ranked
    assert oracle_average_precision(frame.drop(columns="fraud_probability")) is None


def test_plots_are_pngs_and_calibration_bins_count_every_row() -> None:
    rng = np.random.default_rng(0)
    y = (rng.random(500) < 0.1).astype(int)
    s = np.clip(y * 0.5 + rng.random(500) * 0.5, 0, 1)
    pngs = evaluation_plots(y, {"model": s, "other": rng.random(500)}, "model", 0.5, {"a": 2.0, "b": 1.0}, 10)
    assert set(pngs) == {"precision_recall.png", "score_distribution.png", "feature_importance.png",
                         "calibration.png"}
    assert all(v.startswith(PNG) and len(v) > 2000 for v in pngs.values())
    table = calibration_table(y, s, 10)
    assert sum(r["rows"] for r in table) == 500
    assert table[-1]["fraud_rate"] > table[0]["fraud_rate"]
