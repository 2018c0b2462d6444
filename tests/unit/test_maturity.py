"""Label maturity: a month's AUPRC estimate as of each day after its end, on a case whose answers are known."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fraud_assets.core.maturity import MATURITY_COLUMNS, label_maturity
from fraud_assets.params import load_params

END = pd.Timestamp("2025-04-01", tz="UTC")  # the end of March


def _scored() -> pd.DataFrame:
    """Four March rows: a fraud scored 0.9 labelled half a day after the month's end, a legit 0.8 two days after, a
    fraud 0.3 ten days after, a legit 0.1 before the end; and a row whose label never came."""
    return pd.DataFrame({
        "tx_datetime": pd.to_datetime(["2025-03-30", "2025-03-30", "2025-03-31", "2025-03-20", "2025-03-31"],
                                      utc=True),
        "fraud_probability": [0.9, 0.8, 0.3, 0.1, 0.5],
        "is_fraud": [1, 0, 1, 0, np.nan],
        "label_available_at": [END + pd.Timedelta(hours=12), END + pd.Timedelta(days=2), END + pd.Timedelta(days=10),
                               END - pd.Timedelta(days=1), pd.NaT],
    })


def test_the_estimate_moves_as_the_labels_arrive() -> None:
    report = label_maturity(_scored(), "2025-03", 12)
    assert list(report.columns) == MATURITY_COLUMNS and report["day"].tolist() == list(range(13))
    assert report["as_of"].iloc[0] == END and report["as_of"].iloc[12] == END + pd.Timedelta(days=12)
    by_day = report.set_index("day")
    assert by_day.loc[0, "labelled"] == 1 and np.isnan(by_day.loc[0, "average_precision"])  # one legit only
    assert by_day.loc[1, "labelled"] == 2 and by_day.loc[1, "average_precision"] == 1.0  # 0.9 fraud over 0.1 legit
    assert by_day.loc[2, "labelled"] == 3 and by_day.loc[2, "average_precision"] == 1.0  # the fraud still on top
    assert by_day.loc[9, "labelled"] == 3 and by_day.loc[9, "frauds"] == 1
    # Day 10 (the arrival second itself counts): 0.9 F, 0.8 L, 0.3 F, 0.1 L: precision 1 and 2/3 at the frauds.
    assert by_day.loc[10, "labelled"] == 4 and by_day.loc[10, "frauds"] == 2
    assert by_day.loc[10, "average_precision"] == pytest.approx((1 + 2 / 3) / 2)
    assert by_day["labelled_share"].tolist() == [0.2, 0.4, *[0.6] * 8, *[0.8] * 3]  # the fifth label never comes


def test_without_arrival_times_labels_follow_the_label_delay() -> None:
    scored = _scored().drop(columns="label_available_at")
    report = label_maturity(scored, "2025-03", 0, features=load_params().features)  # 7 days after each transaction
    assert report["labelled"].tolist() == [1]  # the March 20th row only, known March 27th
    with pytest.raises(ValueError, match="no label_available_at column"):
        label_maturity(scored, "2025-03", 3)


def test_missing_columns_and_negative_days_are_refused() -> None:
    with pytest.raises(ValueError, match="missing column"):
        label_maturity(_scored().drop(columns="fraud_probability"), "2025-03", 3)
    with pytest.raises(ValueError, match="days must be >= 0"):
        label_maturity(_scored(), "2025-03", -1)
