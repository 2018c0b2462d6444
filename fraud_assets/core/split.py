"""Time-ordered splits, never at random.

Two ways, both validating on the latest days of the training window:

* by month (:func:`split_by_time`): the holdout is a calendar month, training the months before it; the labels as
  the snapshots have them (a month is judged once it is complete);
* rolling (:func:`split_rolling`): a retrain *as of* a time ``t`` inside a month, when a new pattern cannot wait for
  the month's end: the holdout is the latest labelled ``split.holdout_days`` before ``t``, training the
  ``split.window_weeks`` weeks before the holdout, and only the rows whose label (fraud or not) had arrived before
  ``t`` take part (``label_available_at``; without that column, ``features.label_delay_days`` after the
  transaction), as for a bank retraining at ``t``: a row without its label yet is left out, never assumed legit
  (as live performance counts them); transactions at or after ``t`` do not exist yet.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd

from fraud_assets.core.months import shift_month
from fraud_assets.params import SplitParams

LABEL_AT = "label_available_at"


@dataclass(frozen=True)
class Window:
    """The times of a rolling split: training from ``train_start``, holdout ``[holdout_start, holdout_end)``, labels
    as known at ``as_of``; ``unlabelled``: rows of that span left out, their label not arrived yet
    (``frauds_unlabelled`` of them frauds, by the final labels)."""

    as_of: pd.Timestamp
    train_start: pd.Timestamp
    holdout_start: pd.Timestamp
    holdout_end: pd.Timestamp
    unlabelled: int
    frauds_unlabelled: int

    def describe(self) -> dict[str, Any]:
        """The window as JSON-ready values (ISO 8601 UTC times)."""
        return {"as_of": self.as_of.isoformat(), "train_start": self.train_start.isoformat(),
                "holdout_start": self.holdout_start.isoformat(), "holdout_end": self.holdout_end.isoformat(),
                "unlabelled": self.unlabelled, "frauds_unlabelled": self.frauds_unlabelled}


@dataclass(frozen=True)
class Split:
    train: pd.DataFrame
    valid: pd.DataFrame
    holdout: pd.DataFrame
    train_months: list[str]
    holdout_month: str
    window: Window | None = None  # set by split_rolling

    @property
    def labelled(self) -> pd.DataFrame:
        """Every row the split learned from or was judged on, oldest first (what a refit trains on)."""
        return pd.concat([self.train, self.valid, self.holdout], ignore_index=True)


def training_months(holdout_month: str, p: SplitParams) -> list[str]:
    """The months a model evaluated on ``holdout_month`` trains on (oldest first)."""
    return [shift_month(holdout_month, -k) for k in range(p.train_months, 0, -1)]


def split_by_time(features_by_month: dict[str, pd.DataFrame], holdout_month: str, p: SplitParams) -> Split:
    """Train/validation/holdout split by time, never at random.

    Raises:
        ValueError: the holdout month or every training month is missing.
    """
    if holdout_month not in features_by_month:
        raise ValueError(f"holdout month {holdout_month} has no features")
    months = [m for m in training_months(holdout_month, p) if m in features_by_month]
    if not months:
        raise ValueError(f"no training months before {holdout_month} (need up to {p.train_months})")
    window = pd.concat([features_by_month[m] for m in months], ignore_index=True)
    window = window.sort_values("tx_datetime", kind="stable").reset_index(drop=True)
    cutoff = window["tx_datetime"].max() - pd.Timedelta(days=p.validation_days)
    is_valid = window["tx_datetime"] > cutoff
    train, valid = window.loc[~is_valid], window.loc[is_valid]
    for name, part in (("training", train), ("validation", valid)):
        if part.empty or part["is_fraud"].nunique() < 2:
            raise ValueError(f"{name} window before {holdout_month} needs both classes, has {len(part)} rows")
    holdout = features_by_month[holdout_month].reset_index(drop=True)
    return Split(train.reset_index(drop=True), valid.reset_index(drop=True), holdout, months, holdout_month)


def label_arrival(frame: pd.DataFrame, label_delay_days: int) -> pd.Series:
    """When each row's label became known: ``label_available_at`` when the rows have it, else the transaction
    time plus ``label_delay_days`` (the import's default)."""
    if LABEL_AT in frame.columns:
        return pd.to_datetime(frame[LABEL_AT], utc=True)
    return pd.to_datetime(frame["tx_datetime"], utc=True) + pd.Timedelta(days=label_delay_days)


def split_rolling(features_by_month: dict[str, pd.DataFrame], as_of: pd.Timestamp, holdout_month: str,
                  p: SplitParams, label_delay_days: int) -> Split:
    """The rolling split as of ``as_of`` (see the module docstring) over the rows whose label arrived before it;
    ``holdout_month`` names the partition it is recorded under (the month of ``as_of``).

    The holdout ends with the newest transaction whose label (fraud or not) is known at ``as_of``: a few hours
    before it with labels that arrive continuously, ``label_delay_days`` before it with the import's default rule.
    Transactions after that end are left out (nothing is known of them yet). A challenger compared on this holdout
    and a champion refit on an earlier rolling split never share rows when retrains are ``holdout_days`` apart.

    Raises:
        ValueError: no label is known at ``as_of``, or the holdout or a training part is empty or has a single
            class (labels as known at ``as_of``).
    """
    as_of = pd.Timestamp(as_of)
    as_of = as_of.tz_localize("UTC") if as_of.tzinfo is None else as_of.tz_convert("UTC")
    frames = [f for f in features_by_month.values() if len(f)]
    if not frames:
        raise ValueError(f"no features before {as_of.isoformat()}")
    rows = pd.concat(frames, ignore_index=True)
    when = pd.to_datetime(rows["tx_datetime"], utc=True)
    rows, when = rows.loc[when < as_of], when.loc[when < as_of]
    arrived = label_arrival(rows, label_delay_days) < as_of
    if not arrived.any():
        raise ValueError(f"no label known by {as_of.isoformat()}: no rolling holdout")
    holdout_end = when.loc[arrived].max() + pd.Timedelta(seconds=1)
    holdout_start = holdout_end - pd.Timedelta(days=p.holdout_days)
    train_start = holdout_start - pd.Timedelta(weeks=p.window_weeks)
    inside = (when >= train_start) & (when < holdout_end)
    unlabelled = inside & ~arrived
    frauds_unlabelled = int((rows.loc[unlabelled, "is_fraud"] == 1).sum())
    rows, when = rows.loc[inside & arrived], when.loc[inside & arrived]
    order = when.argsort(kind="stable").to_numpy()
    rows = rows.iloc[order].reset_index(drop=True)
    when = when.iloc[order].reset_index(drop=True)
    is_holdout = when >= holdout_start
    window, holdout = rows.loc[~is_holdout].reset_index(drop=True), rows.loc[is_holdout].reset_index(drop=True)
    cutoff = holdout_start - pd.Timedelta(days=p.validation_days)
    is_valid = when.loc[~is_holdout].reset_index(drop=True) >= cutoff
    train, valid = window.loc[~is_valid], window.loc[is_valid]
    for name, part in (("training", train), ("validation", valid), ("holdout", holdout)):
        if part.empty or part["is_fraud"].nunique() < 2:
            raise ValueError(f"{name} part of the rolling split as of {as_of.isoformat()} needs both classes (labels "
                             f"known by then), has {len(part)} rows and {int(part['is_fraud'].sum())} frauds")
    months = sorted(pd.to_datetime(window["tx_datetime"], utc=True).dt.strftime("%Y-%m").unique())
    return Split(train.reset_index(drop=True), valid.reset_index(drop=True), holdout, months, holdout_month,
                 Window(as_of, train_start, holdout_start, holdout_end, int(unlabelled.sum()), frauds_unlabelled))
