"""Live performance: labels from the API win over the snapshot, unlabelled rows are counted, not guessed, and a
label counts only once it has arrived."""

from __future__ import annotations

import pandas as pd
import pytest

from fraud_assets.core.live import attach_labels, live_performance, weekly_performance
from fraud_assets.params import load_params

PREDS = pd.DataFrame({
    "transaction_id": ["a", "b", "c", "d", "e"],
    "tx_datetime": pd.date_range("2025-06-01", periods=5, freq="h", tz="UTC"),
    "model_version": ["1", "1", "2", "2", "2"],
    "fraud_probability": [0.9, 0.2, 0.8, 0.1, 0.7],
    "alert": [1, 0, 1, 0, 1],
})
API = pd.DataFrame({"transaction_id": ["a", "a", "c"], "is_fraud": [0, 1, 1],
                    "received_at": ["2025-07-01T00:00:00+00:00", "2025-07-02T00:00:00+00:00",
                                    "2025-07-01T00:00:00+00:00"]})
SNAPSHOT = pd.DataFrame({"transaction_id": ["a", "b", "c", "d"], "is_fraud": [0, 0, 0, 0],
                         "tx_datetime": PREDS["tx_datetime"][:4],
                         "label_available_at": pd.to_datetime(["2025-06-05", "2025-06-10", "2025-06-20", "2025-07-20"],
                                                              utc=True)})


def test_api_labels_win_and_unlabelled_rows_are_left_out() -> None:
    labelled = attach_labels(PREDS, API, SNAPSHOT)  # as of the latest arrival: July 20th, every label
    assert labelled["is_fraud"].tolist()[:4] == [1.0, 0.0, 1.0, 0.0]  # a: newest API label; c: API over snapshot
    assert pd.isna(labelled["is_fraud"].iloc[4]) and labelled["label_source"].tolist()[4] == "none"
    assert labelled["label_available_at"].tolist()[:4] == [pd.Timestamp(t, tz="UTC") for t in (
        "2025-07-02", "2025-06-10", "2025-07-01", "2025-07-20")] and pd.isna(labelled["label_available_at"].iloc[4])
    report = live_performance(labelled)
    overall = report["overall"]
    assert (overall["scored"], overall["labelled"], overall["frauds"], overall["alerts"]) == (5, 4, 2, 3)
    assert overall["precision"] == pytest.approx(1.0)  # both labelled alerts were fraud; e is unlabelled
    assert overall["recall"] == pytest.approx(1.0)
    assert overall["average_precision"] == pytest.approx(1.0)
    assert report["by_model_version"]["1"]["labelled"] == 2
    assert report["label_sources"] == {"api": 2, "snapshot": 2, "none": 1}
    assert report["labels_as_of"] == "2025-07-20T00:00:00+00:00"


def test_as_of_a_time_only_the_labels_arrived_by_then_count() -> None:
    labelled = attach_labels(PREDS, API, SNAPSHOT, as_of="2025-07-01T12:00:00Z")
    # a: the API's first label (its second came on July 2nd); c: the API's; b: the snapshot's; d: not yet (July 20th)
    assert labelled["is_fraud"].tolist()[:3] == [0.0, 0.0, 1.0] and labelled["is_fraud"].isna().tolist()[3:] == [
        True, True]
    assert labelled["label_source"].tolist() == ["api", "snapshot", "api", "none", "none"]
    earlier = attach_labels(PREDS, API, SNAPSHOT, as_of=pd.Timestamp("2025-06-30", tz="UTC"))
    assert earlier["label_source"].tolist() == ["snapshot", "snapshot", "snapshot", "none", "none"]  # no API yet
    assert earlier["is_fraud"].tolist()[:3] == [0.0, 0.0, 0.0]
    on_the_second = attach_labels(PREDS, API, SNAPSHOT, as_of="2025-06-10T00:00:00+00:00")  # arrived at as_of
    assert on_the_second["label_source"].tolist()[:2] == ["snapshot", "snapshot"]


def test_live_performance_as_of_counts_only_labels_arrived_by_then() -> None:
    labelled = attach_labels(PREDS, API, SNAPSHOT)
    # b's label only: a's and c's are the API's of July (pass as_of to attach_labels to fall back on older labels)
    report = live_performance(labelled, as_of="2025-06-15T00:00:00Z")
    assert report["overall"]["labelled"] == 1 and report["overall"]["frauds"] == 0
    assert report["label_sources"] == {"none": 4, "snapshot": 1} and report["labels_as_of"].startswith("2025-06-15")
    assert labelled["label_source"].tolist()[:4] == ["api", "snapshot", "api", "snapshot"]  # input not mutated
    weeks = weekly_performance(labelled, as_of="2025-06-15T00:00:00Z")
    assert sum(w["labelled"] for w in weeks) == 1


def test_a_snapshot_without_arrival_times_follows_the_label_delay_or_is_refused() -> None:
    snapshot = SNAPSHOT.drop(columns="label_available_at")
    with pytest.raises(ValueError, match="has no label_available_at column: pass features="):
        attach_labels(PREDS, API.iloc[:0], snapshot)
    labelled = attach_labels(PREDS, API.iloc[:0], snapshot, features=load_params().features)
    assert labelled["label_available_at"].tolist()[:4] == list(SNAPSHOT["tx_datetime"] + pd.Timedelta(days=7))


def test_no_labels_at_all() -> None:
    labelled = attach_labels(PREDS, pd.DataFrame(columns=["transaction_id", "is_fraud", "received_at"]), None)
    report = live_performance(labelled)
    overall = report["overall"]
    assert overall["labelled"] == 0 and overall["average_precision"] is None and overall["precision"] is None
    assert report["labels_as_of"] is None and labelled["label_available_at"].isna().all()
