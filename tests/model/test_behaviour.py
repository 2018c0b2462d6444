"""Behavioural tests of a model trained the way the pipeline trains it (Made-With-ML's model tests).

* invariance: the transaction id never changes a score;
* direction: the same transaction scores higher at a terminal with confirmed fraud (older than the label
  delay) than at a clean one, and higher when its amount is far above the customer's habit;
* minimum functionality: on the holdout month the model ranks each fraud scenario above legit traffic.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from fraud_assets.core.features import build_features, build_features_by_month
from fraud_assets.core.months import month_range
from fraud_assets.core.simulate import simulate_months
from fraud_assets.core.split import split_by_time
from fraud_assets.core.train import fit_challenger, predict
from fraud_assets.params import Params, load_params

pytestmark = pytest.mark.slow

# The scenarios and the lowest ROC-AUC against legit rows each must reach on the holdout month.
MIN_AUC = {"large_amount": 0.95, "compromised_card": 0.75, "compromised_terminal": 0.75, "card_testing": 0.75}


@pytest.fixture(scope="module")
def trained() -> dict:
    base = load_params()
    # Eight months so card testing (from 2025-07) is in the training window and in the holdout.
    params: Params = base.model_copy(update={"data": base.data.model_copy(update={"months": 8})})
    months = month_range(params.data.start_month, params.data.months)
    raw = simulate_months(params.data, params.data.start_month, params.data.months)
    feats = build_features_by_month(raw, params.features)
    split = split_by_time(feats, months[-1], params.split)
    booster, _, threshold, _, _ = fit_challenger(split.train, split.valid, params.train, params.evaluate)
    return {"params": params, "booster": booster, "threshold": threshold, "raw": raw, "months": months,
            "holdout": split.holdout, "holdout_raw": raw[months[-1]]}


def _score_one(t: dict, tx: pd.Series, history: pd.DataFrame) -> float:
    frame = build_features(tx.to_frame().T.astype(history.dtypes.to_dict()), t["params"].features, history=history)
    return float(predict(t["booster"], frame)[0])


def test_transaction_id_does_not_change_the_score(trained: dict) -> None:
    month = trained["holdout_raw"].head(500)
    renamed = month.assign(transaction_id=[f"other-{i}" for i in range(len(month))])
    history = trained["raw"][trained["months"][-2]]
    p = trained["params"].features
    a = predict(trained["booster"], build_features(month, p, history=history))
    b = predict(trained["booster"], build_features(renamed, p, history=history))
    assert len(a) == len(month) and np.array_equal(a, b)


def test_compromised_terminal_scores_higher_than_a_clean_one(trained: dict) -> None:
    legit = trained["holdout_raw"][trained["holdout_raw"]["fraud_scenario"] == "legit"]
    tx = legit.iloc[len(legit) // 2]
    history = trained["raw"][trained["months"][-2]]
    history = history[history["terminal_id"] != tx["terminal_id"]]
    delay = trained["params"].features.label_delay_days
    # Ten confirmed frauds at the terminal, all older than the label delay (so known at scoring time).
    frauds = pd.DataFrame({
        "transaction_id": [f"past-{i}" for i in range(10)],
        "tx_datetime": [tx["tx_datetime"] - pd.Timedelta(days=delay + 1 + i % 5, hours=i) for i in range(10)],
        "customer_id": [f"X{i:06d}" for i in range(10)], "terminal_id": tx["terminal_id"],
        "amount": 30.0, "is_fraud": 1, "fraud_scenario": "compromised_terminal", "fraud_probability": 1.0,
    })
    clean = frauds.assign(is_fraud=0, fraud_scenario="legit", fraud_probability=0.0)
    at_compromised = _score_one(trained, tx, pd.concat([history, frauds], ignore_index=True))
    at_clean = _score_one(trained, tx, pd.concat([history, clean], ignore_index=True))
    assert at_compromised > at_clean


def test_amount_far_above_habit_scores_higher(trained: dict) -> None:
    legit = trained["holdout_raw"][trained["holdout_raw"]["fraud_scenario"] == "legit"]
    tx = legit.iloc[len(legit) // 3]
    history = trained["raw"][trained["months"][-2]]
    usual = _score_one(trained, tx, history)
    bigger = tx.copy()
    bigger["amount"] = tx["amount"] * 4
    assert _score_one(trained, bigger, history) > usual


@pytest.mark.parametrize("scenario", sorted(MIN_AUC))
def test_each_fraud_scenario_is_ranked_above_legit(trained: dict, scenario: str) -> None:
    holdout, raw = trained["holdout"], trained["holdout_raw"]
    scores = pd.Series(predict(trained["booster"], holdout), index=holdout["transaction_id"])
    kind = raw.set_index("transaction_id")["fraud_scenario"].reindex(scores.index)
    mask = kind.isin(["legit", scenario])
    assert (kind == scenario).sum() >= 20, f"too few {scenario} rows in the holdout to judge"
    auc = roc_auc_score((kind[mask] == scenario).astype(int), scores[mask])
    assert auc >= MIN_AUC[scenario], f"{scenario}: ROC-AUC {auc:.3f} < {MIN_AUC[scenario]}"
