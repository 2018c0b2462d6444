"""Live performance: labels from the API win over the snapshot, unlabelled rows are counted, not guessed."""

from __future__ import annotations

import pandas as pd
import pytest

from fraud_assets.core.live import attach_labels, live_performance

PREDS = pd.DataFrame({
    "transaction_id": ["a", "b", "c", "d", "e"],
    "tx_datetime": pd.date_range("2025-06-01", periods=5, freq="h", tz="UTC"),
    "model_version": ["1", "1", "2", "2", "2"],
    "fraud_probability": [0.9, 0.2, 0.8, 0.1, 0.7],
    "alert": [1, 0, 1, 0, 1],
})


def test_api_labels_win_and_unlabelled_rows_are_left_out() -> None:
    api = pd.DataFrame({"transaction_id": ["a", "a", "c"], "is_fraud": [0, 1, 1],
                        "received_at": ["2025-07-01T00:00:00+00:00", "2025-07-02T00:00:00+00:00",
                                        "2025-07-01T00:00:00+00:00"]})
    snapshot = pd.DataFrame({"transaction_id": ["a", "b", "c", "d"], "is_fraud": [0, 0, 0, 0]})
    labelled = attach_labels(PREDS, api, snapshot)
    assert labelled["is_fraud"].tolist()[:4] == [1.0, 0.0, 1.0, 0.0]  # a: newest API label; c: API over snapshot
    assert pd.isna(labelled["is_fraud"].iloc[4]) and labelled["label_source"].tolist()[4] == "none"
    report = live_performance(labelled)
    overall = report["overall"]
    assert (overall["scored"], overall["labelled"], overall["frauds"], overall["alerts"]) == (5, 4, 2, 3)
    assert overall["precision"] == pytest.approx(1.0)  # both labelled alerts were fraud; e is unlabelled
    assert overall["recall"] == pytest.approx(1.0)
    assert overall["average_precision"] == pytest.approx(1.0)
    assert report["by_model_version"]["1"]["labelled"] == 2
    assert report["label_sources"] == {"api": 2, "snapshot": 2, "none": 1}


def test_no_labels_at_all() -> None:
    labelled = attach_labels(PREDS, pd.DataFrame(columns=["transaction_id", "is_fraud", "received_at"]), None)
    overall = live_performance(labelled)["overall"]
    assert overall["labelled"] == 0 and overall["average_precision"] is None and overall["precision"] is None
