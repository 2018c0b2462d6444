"""The rolling split (time-ordered, labels as known at its time) and the adaptation measure, on built cases."""

from __future__ import annotations

from datetime import date, timedelta

import numpy as np
import pandas as pd
import pytest

from fraud_assets.cli.year_story import month_parts
from fraud_assets.core.adaptation import days_degraded, trailing_average_precision
from fraud_assets.core.split import split_rolling
from fraud_assets.params import load_params


def _features(start: str, days: int, per_day: int = 40, seed: int = 0) -> dict[str, pd.DataFrame]:
    """Rows every ``24 h / per_day`` from ``start``, 5 % frauds, labels arriving 0-20 days later; by month."""
    rng = np.random.default_rng(seed)
    n = days * per_day
    when = pd.Series(pd.Timestamp(start, tz="UTC") + pd.to_timedelta(np.arange(n) * (86400 // per_day), unit="s"))
    frame = pd.DataFrame({"transaction_id": [f"t{i}" for i in range(n)], "tx_datetime": when,
                          "customer_id": rng.integers(0, 50, n).astype(str), "terminal_id": "x",
                          "amount": rng.uniform(1, 100, n), "is_fraud": (rng.random(n) < 0.05).astype("int8")})
    frame["label_available_at"] = when + pd.to_timedelta(rng.uniform(0, 20 * 86400, n), unit="s")
    return {m: part.reset_index(drop=True) for m, part in frame.groupby(when.dt.strftime("%Y-%m"))}


def test_rolling_split_is_time_ordered_and_reads_labels_as_of_its_time() -> None:
    p = load_params().split.model_copy(update={"window_weeks": 6, "holdout_days": 7, "validation_days": 14})
    months = _features("2025-04-01", 100)
    as_of = pd.Timestamp("2025-06-20T12:00:00", tz="UTC")
    split = split_rolling(months, as_of, "2025-06", p, label_delay_days=7)
    train, valid, holdout = (pd.to_datetime(x["tx_datetime"], utc=True) for x in (split.train, split.valid,
                                                                                    split.holdout))
    assert train.max() < valid.min() and valid.max() < holdout.min() and holdout.max() < as_of
    assert train.is_monotonic_increasing and holdout.is_monotonic_increasing
    end = split.window.holdout_end  # the newest row with a known label: labels arrive within 0-20 days here
    assert as_of - pd.Timedelta(hours=12) < end <= as_of and holdout.max() < end
    assert holdout.min() >= end - pd.Timedelta(days=7) > holdout.min() - pd.Timedelta(minutes=40)
    assert train.min() >= split.window.train_start == end - pd.Timedelta(days=7 + 6 * 7)
    assert valid.min() >= split.window.holdout_start - pd.Timedelta(days=14)
    everything = pd.concat(months.values(), ignore_index=True).set_index("transaction_id")
    for part in (split.train, split.valid, split.holdout):  # only rows whose label arrived, with that label
        truth = everything.loc[part["transaction_id"]]
        assert (pd.to_datetime(truth["label_available_at"], utc=True) < as_of).all()
        assert (part["is_fraud"].to_numpy() == truth["is_fraud"].to_numpy()).all()
    span = (everything["tx_datetime"] >= split.window.train_start) & (everything["tx_datetime"] < end)
    late = span & (everything["label_available_at"] >= as_of)
    assert split.window.unlabelled == int(late.sum()) > 0
    assert split.window.frauds_unlabelled == int((late & (everything["is_fraud"] == 1)).sum())
    assert len(split.train) + len(split.valid) + len(split.holdout) == int(span.sum()) - int(late.sum())
    assert len(split.labelled) == len(split.train) + len(split.valid) + len(split.holdout)


def test_rolling_split_needs_both_classes_in_each_part() -> None:
    p = load_params().split.model_copy(update={"window_weeks": 4, "holdout_days": 7})
    months = _features("2025-04-01", 60)
    as_of = pd.Timestamp("2025-05-20", tz="UTC")
    recent_fraud = {m: (f["tx_datetime"] >= as_of - pd.Timedelta(days=8)) & (f["is_fraud"] == 1)
                    for m, f in months.items()}
    late = {m: f.assign(label_available_at=f["label_available_at"].mask(recent_fraud[m], pd.Timestamp(
        "2030-01-01", tz="UTC"))) for m, f in months.items()}
    with pytest.raises(ValueError, match=r"holdout part of the rolling split .* 0 frauds"):  # none known yet
        split_rolling(late, as_of, "2025-05", p, 7)


def test_without_arrival_times_the_holdout_ends_a_label_delay_before_its_time() -> None:
    p = load_params().split.model_copy(update={"window_weeks": 6, "holdout_days": 7})
    months = {m: f.drop(columns="label_available_at") for m, f in _features("2025-04-01", 100).items()}
    as_of = pd.Timestamp("2025-06-20T12:00:00", tz="UTC")
    split = split_rolling(months, as_of, "2025-06", p, label_delay_days=7)
    assert as_of - pd.Timedelta(days=7, hours=1) < split.window.holdout_end <= as_of - pd.Timedelta(days=7)
    assert split.window.unlabelled == 0  # every row of the split is older than the delay


def _answers(days: int, onset: date, bad_from: int, bad_until: int, seed: int = 1) -> pd.DataFrame:
    """Answers of ``days`` days from ``onset - 28``: good scores, except on the days ``[bad_from, bad_until)``
    after the onset, when every fraud gets a low score, and better ones after them (a model that learned more)."""
    rng = np.random.default_rng(seed)
    start = onset - timedelta(days=28)
    rows = []
    for d in range(days):
        day = start + timedelta(days=d)
        y = (rng.random(200) < 0.05).astype(int)
        bad = bad_from <= (day - onset).days < bad_until
        better = bad_until > 0 and (day - onset).days >= bad_until
        fraud = rng.uniform(0.0, 0.3, 200) if bad else rng.uniform(0.75 if better else 0.6, 1.0, 200)
        score = np.where(y == 1, fraud, rng.uniform(0.0, 0.7, 200))
        rows.append(pd.DataFrame({"tx_datetime": pd.Timestamp(day, tz="UTC") + pd.Timedelta(hours=12),
                                  "fraud_probability": score, "is_fraud": y}))
    return pd.concat(rows, ignore_index=True)


def test_days_degraded_counts_until_the_trailing_week_is_back_to_its_level() -> None:
    onset = date(2025, 7, 1)
    never_bad = days_degraded(_answers(60, onset, 0, 0), "card_testing", onset)
    assert never_bad.days_degraded == 0 and never_bad.recovered
    ten = days_degraded(_answers(60, onset, 0, 10), "card_testing", onset)
    # the trailing week (from the onset on) is all good again 6 days after day 10 at the latest
    assert 10 <= ten.days_degraded <= 16 and ten.recovered and ten.recovered_on is not None
    never = days_degraded(_answers(60, onset, 0, 99), "card_testing", onset)
    assert not never.recovered and never.days_degraded == 32  # every day to the end of the data
    assert len(trailing_average_precision(_answers(40, onset, 0, 0))) == 40


def test_month_parts_cover_the_month_once() -> None:
    parts = month_parts("2025-02", 7)
    assert [(a.day, b.day) for a, b in parts] == [(1, 8), (8, 15), (15, 22), (22, 1)]
    assert parts[-1][1] == pd.Timestamp("2025-03-01", tz="UTC")
    assert month_parts("2025-02", 0) == [(pd.Timestamp("2025-02-01", tz="UTC"), pd.Timestamp("2025-03-01", tz="UTC"))]
