"""Time-ordered splits: train on months before the holdout month, validate on the latest training days."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from fraud_assets.core.months import shift_month
from fraud_assets.params import SplitParams


@dataclass(frozen=True)
class Split:
    train: pd.DataFrame
    valid: pd.DataFrame
    holdout: pd.DataFrame
    train_months: list[str]
    holdout_month: str


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
