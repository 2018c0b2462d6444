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

Both concatenate the months once, in time order, and cut that frame into its parts without copying them again
(training, validation and holdout are consecutive rows): at a bank's size a copy of the window is hundreds of MB.
``features_by_month`` may be any mapping, e.g. one that reads each month when it is looked up: every month is
looked up once. A monthly split's training and validation rows come without the :data:`IDS` columns, each month
dropping them as it is looked up.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from fraud_assets.core.months import shift_month
from fraud_assets.params import SplitParams

LABEL_AT = "label_available_at"
# Columns a monthly split's training and validation rows go without: nothing fitted or chosen on them reads an id
# (models, calibration, thresholds and the baseline read features, labels and times), and a transaction id is a
# string a row, at a bank's size about a third of the window's memory. The holdout keeps them (its evaluation
# reads cards and joins on transactions).
IDS = ("transaction_id", "customer_id", "terminal_id")


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
    """A time-ordered split. Its frames share their data with the frame they were cut from: read them, never
    write into them."""

    train: pd.DataFrame
    valid: pd.DataFrame
    holdout: pd.DataFrame
    train_months: list[str]
    holdout_month: str
    window: Window | None = None  # set by split_rolling

    @property
    def labelled(self) -> pd.DataFrame:
        """Every row the split learned from or was judged on, oldest first (what a refit trains on), in the columns
        the three parts share."""
        parts = [self.train, self.valid, self.holdout]
        shared = [c for c in self.train.columns if all(c in p.columns for p in parts)]
        return pd.concat([p[shared] for p in parts], ignore_index=True)


def training_months(holdout_month: str, p: SplitParams) -> list[str]:
    """The months a model evaluated on ``holdout_month`` trains on (oldest first)."""
    return [shift_month(holdout_month, -k) for k in range(p.train_months, 0, -1)]


def split_by_time(features_by_month: Mapping[str, pd.DataFrame], holdout_month: str, p: SplitParams) -> Split:
    """Train/validation/holdout split by time, never at random.

    Raises:
        ValueError: the holdout month or every training month is missing.
    """
    if holdout_month not in features_by_month:
        raise ValueError(f"holdout month {holdout_month} has no features")
    months = [m for m in training_months(holdout_month, p) if m in features_by_month]
    if not months:
        raise ValueError(f"no training months before {holdout_month} (need up to {p.train_months})")
    window = _by_time(pd.concat([_without_ids(features_by_month[m]) for m in months], ignore_index=True))
    when = window["tx_datetime"]
    cutoff = when.max() - pd.Timedelta(days=p.validation_days)
    first_valid = int(when.searchsorted(cutoff, side="right"))  # validation: every row after the cutoff
    train, valid = _rows(window, 0, first_valid), _rows(window, first_valid, len(window))
    for name, part in (("training", train), ("validation", valid)):
        if part.empty or part["is_fraud"].nunique() < 2:
            raise ValueError(f"{name} window before {holdout_month} needs both classes, has {len(part)} rows")
    holdout = _rows(features_by_month[holdout_month])
    return Split(train, valid, holdout, months, holdout_month)


def _without_ids(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` without the :data:`IDS` columns."""
    return frame.drop(columns=[c for c in IDS if c in frame.columns])


def _by_time(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` in ``tx_datetime`` order (ties keep their order), numbered from 0; without a copy when it is in
    that order already (the months of a snapshot usually are)."""
    when = frame["tx_datetime"]
    return _rows(frame if when.is_monotonic_increasing else frame.iloc[when.argsort(kind="stable").to_numpy()])


def _rows(frame: pd.DataFrame, start: int = 0, stop: int | None = None) -> pd.DataFrame:
    """Rows ``start:stop`` of ``frame`` numbered from 0, sharing its data (no copy: read it, never write it)."""
    part = frame.iloc[start:stop].copy(deep=False)
    part.index = pd.RangeIndex(len(part))
    return part


def _concat(frames: Iterable[pd.DataFrame]) -> pd.DataFrame | None:
    """The non-empty ``frames`` one after the other, numbered from 0 (None when every one is empty)."""
    parts = [f for f in frames if len(f)]
    return pd.concat(parts, ignore_index=True) if parts else None


def label_arrival(frame: pd.DataFrame, label_delay_days: int) -> pd.Series:
    """When each row's label became known: ``label_available_at`` when the rows have it, else the transaction
    time plus ``label_delay_days`` (the import's default)."""
    if LABEL_AT in frame.columns:
        return pd.to_datetime(frame[LABEL_AT], utc=True)
    return pd.to_datetime(frame["tx_datetime"], utc=True) + pd.Timedelta(days=label_delay_days)


def split_rolling(features_by_month: Mapping[str, pd.DataFrame], as_of: pd.Timestamp, holdout_month: str,
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
    rows = _concat(features_by_month[m] for m in features_by_month)
    if rows is None:
        raise ValueError(f"no features before {as_of.isoformat()}")
    when = pd.to_datetime(rows["tx_datetime"], utc=True)
    known = (when < as_of) & (label_arrival(rows, label_delay_days) < as_of)
    if not known.any():
        raise ValueError(f"no label known by {as_of.isoformat()}: no rolling holdout")
    holdout_end = when.loc[known].max() + pd.Timedelta(seconds=1)
    holdout_start = holdout_end - pd.Timedelta(days=p.holdout_days)
    train_start = holdout_start - pd.Timedelta(weeks=p.window_weeks)
    inside = (when >= train_start) & (when < holdout_end)
    unlabelled = inside & (when < as_of) & ~known
    frauds_unlabelled = int((rows.loc[unlabelled, "is_fraud"] == 1).sum())
    keep = (inside & known).to_numpy()
    order = np.flatnonzero(keep)[when.loc[keep].argsort(kind="stable").to_numpy()]
    rows, when = _rows(rows.iloc[order]), when.iloc[order].reset_index(drop=True)
    cutoff = holdout_start - pd.Timedelta(days=p.validation_days)
    # In time order the parts are consecutive: training before the cutoff, validation up to the holdout, the holdout.
    first_valid, first_holdout = (int(when.searchsorted(t, side="left")) for t in (cutoff, holdout_start))
    first_valid = min(first_valid, first_holdout)
    train, valid = _rows(rows, 0, first_valid), _rows(rows, first_valid, first_holdout)
    holdout = _rows(rows, first_holdout)
    for name, part in (("training", train), ("validation", valid), ("holdout", holdout)):
        if part.empty or part["is_fraud"].nunique() < 2:
            raise ValueError(f"{name} part of the rolling split as of {as_of.isoformat()} needs both classes (labels "
                             f"known by then), has {len(part)} rows and {int(part['is_fraud'].sum())} frauds")
    months = sorted(pd.to_datetime(rows["tx_datetime"].iloc[:first_holdout], utc=True).dt.strftime("%Y-%m").unique())
    return Split(train, valid, holdout, months, holdout_month,
                 Window(as_of, train_start, holdout_start, holdout_end, int(unlabelled.sum()), frauds_unlabelled))
