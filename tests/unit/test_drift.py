"""Drift measures: PSI and KS on known distributions, and the report's decision."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fraud_assets.core.drift import drift_report, ks_statistic, psi
from fraud_assets.params import load_params

M = load_params().monitor
RNG = np.random.default_rng(7)


def test_psi_is_zero_for_the_same_distribution_and_grows_with_shift() -> None:
    ref = RNG.normal(0, 1, 50_000)
    same = RNG.normal(0, 1, 50_000)
    assert psi(ref, same, 10) < 0.01
    small, large = psi(ref, RNG.normal(0.2, 1, 50_000), 10), psi(ref, RNG.normal(1.0, 1, 50_000), 10)
    assert 0.01 < small < 0.1 < 0.2 < large


def test_psi_handles_constant_and_empty_bins() -> None:
    ref = np.zeros(1000)
    assert psi(ref, np.zeros(500), 10) == pytest.approx(0.0)
    assert psi(ref, np.ones(500), 10) > 1.0  # all mass moved to a bin the reference never used
    with pytest.raises(ValueError, match="finite"):
        psi(np.array([np.nan]), ref, 10)


def test_ks_statistic() -> None:
    a = RNG.uniform(0, 1, 20_000)
    assert ks_statistic(a, RNG.uniform(0, 1, 20_000)) < 0.03
    assert ks_statistic(a, a + 2) == pytest.approx(1.0)


def _frame(n: int, shift: float, fraud_rate: float) -> pd.DataFrame:
    return pd.DataFrame({"a": RNG.normal(shift, 1, n), "b": RNG.normal(shift, 1, n), "c": RNG.normal(0, 1, n),
                         "is_fraud": (RNG.random(n) < fraud_rate).astype(int)})


def test_report_flags_feature_score_and_fraud_rate_drift() -> None:
    ref = _frame(20_000, 0.0, 0.01)
    stable = drift_report(ref, _frame(20_000, 0.0, 0.01), ["a", "b", "c"], M)
    assert not stable["drift_detected"] and stable["reasons"] == []
    shifted = drift_report(ref, _frame(20_000, 1.0, 0.01), ["a", "b", "c"], M)
    assert shifted["drift_detected"] and set(shifted["drifted_features"]) == {"a", "b"}
    assert shifted["features"][0]["feature"] in {"a", "b"}  # worst first
    more_fraud = drift_report(ref, _frame(20_000, 0.0, 0.03), ["a", "b", "c"], M)
    assert more_fraud["drift_detected"] and "fraud rate" in more_fraud["reasons"][0]
    scores = drift_report(ref, _frame(20_000, 0.0, 0.01), ["c"], M, RNG.beta(1, 20, 20_000), RNG.beta(3, 5, 20_000))
    assert scores["score_psi"] > M.score_psi_threshold and scores["drift_detected"]
