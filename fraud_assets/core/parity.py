"""Batch/online parity audit: which transactions to replay, which earlier months they need, how the two compare.

The replay itself (a scratch online store, seeded as time advances) lives in ``adapters.parity_replay``; this
module only chooses, bounds and compares, so it runs on any two frames.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import pandas as pd

from fraud_assets.core.months import month_bounds, shift_month

TOLERANCE = 1e-9  # the batch/online contract of core.features: the same numbers to 1e-9


class WorstRow(NamedTuple):
    """One differing transaction: the column where it differs most, both values and the gap."""

    transaction_id: str
    tx_datetime: pd.Timestamp
    column: str
    batch: float
    online: float
    abs_diff: float


@dataclass(frozen=True)
class ParityReport:
    """How far online features are from the stored training features of the same transactions."""

    rows_compared: int
    rows_differing: int
    tolerance: float
    max_abs_diff: dict[str, float]  # every compared column, 0.0 where both sides agree exactly
    rows_by_column: dict[str, int]  # how many rows differ by more than the tolerance in each column
    worst: tuple[WorstRow, ...]  # the rows with the largest gap, largest first

    @property
    def ok(self) -> bool:
        """Whether no row differs by more than the tolerance."""
        return self.rows_differing == 0


def by_time(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` sorted by time, ties by transaction id (a stable, repeatable order)."""
    return frame.sort_values(["tx_datetime", "transaction_id"], kind="stable")


def sample_rows(frame: pd.DataFrame, n_first: int, n_random: int, seed: int) -> pd.DataFrame:
    """The first ``n_first`` transactions by time plus ``n_random`` others drawn with ``seed``, sorted by time."""
    ordered = by_time(frame)
    first, rest = ordered.iloc[:max(n_first, 0)], ordered.iloc[max(n_first, 0):]
    drawn = rest.sample(n=min(max(n_random, 0), len(rest)), random_state=seed)
    return by_time(pd.concat([first, drawn]))


def months_needed(month: str, lookback_days: int, first_month: str) -> list[str]:
    """Earlier months holding rows within ``lookback_days`` of ``month``'s start, none before ``first_month``."""
    start, _ = month_bounds(month)
    earliest = (start - pd.Timedelta(days=lookback_days)).strftime("%Y-%m")
    months, m = [], shift_month(month, -1)
    while m >= max(earliest, first_month):
        months.append(m)
        m = shift_month(m, -1)
    return sorted(months)


def _gaps(batch: np.ndarray, online: np.ndarray) -> np.ndarray:
    """``|batch - online|``, 0 where both are NaN and infinite where only one is."""
    both_nan = np.isnan(batch) & np.isnan(online)
    gap = np.abs(batch - online)
    return np.where(both_nan, 0.0, np.where(np.isnan(gap), np.inf, gap))


def _step(values: np.ndarray) -> np.ndarray:
    """One step of ``values``' own dtype at each value (float64), 0 where a value is NaN or infinite."""
    step = np.spacing(np.abs(values)).astype(np.float64)
    return np.where(np.isfinite(step), step, 0.0)


def compare_features(batch: pd.DataFrame, online: pd.DataFrame, columns: Sequence[str],
                     tolerance: float = TOLERANCE, worst: int = 5) -> ParityReport:
    """Compare ``online`` rows with the ``batch`` rows of the same ``transaction_id`` at the stored precision.

    Each online value is first cast to the dtype of the batch column (float32 if the features are stored as
    float32), then both are compared as float64: a row differs where a gap exceeds ``tolerance`` plus one step of
    the stored dtype at the stored value (two float64 computations within ``tolerance`` of each other can round to
    neighbouring float32 values where they straddle a rounding point). Raises KeyError naming online ids that batch
    mode lacks.
    """
    cols = list(columns)
    stored = batch.set_index("transaction_id")
    ids = online["transaction_id"]
    missing = ids[~ids.isin(stored.index)]
    if len(missing):
        raise KeyError(f"{len(missing)} transaction(s) have no stored features, e.g. {list(missing[:3])}")
    times = (stored.loc[ids, "tx_datetime"].to_numpy() if "tx_datetime" in stored
             else np.full(len(ids), np.datetime64("NaT")))
    stored = stored.loc[ids, cols]
    gaps = np.column_stack([
        _gaps(stored[c].to_numpy(np.float64), online[c].to_numpy().astype(stored[c].dtype).astype(np.float64))
        for c in cols]) if len(ids) else np.zeros((0, len(cols)))
    over = gaps > tolerance + (np.column_stack([_step(stored[c].to_numpy()) for c in cols]) if len(ids)
                               else np.zeros((0, len(cols))))
    row_gap = np.where(over, gaps, 0.0).max(axis=1, initial=0.0)
    order = [i for i in np.argsort(-row_gap, kind="stable")[:worst] if over[i].any()]
    worst_gaps = np.where(over, gaps, -1.0)  # a row's worst column among those over the bound
    rows = tuple(WorstRow(str(ids.iat[i]), pd.Timestamp(times[i]), cols[j := int(np.argmax(worst_gaps[i]))],
                          float(stored.iat[i, j]), float(online[cols[j]].iat[i]), float(gaps[i, j]))
                 for i in order)
    return ParityReport(rows_compared=len(ids), rows_differing=int(over.any(axis=1).sum()), tolerance=tolerance,
                        max_abs_diff={c: float(gaps[:, k].max(initial=0.0)) for k, c in enumerate(cols)},
                        rows_by_column={c: int(over[:, k].sum()) for k, c in enumerate(cols)}, worst=rows)
