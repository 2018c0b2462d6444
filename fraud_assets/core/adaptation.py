"""How long a served model takes to adapt to a new fraud pattern, measured on what it actually answered.

For a pattern whose onset is day ``o``: the *level* is the served model's AUPRC over the ``reference_days`` (28)
before ``o``; on each day ``D`` from ``o`` on, the *trailing* AUPRC is taken over the transactions of the last
``window_days`` (7) days up to ``D`` (``[D - 6, D]``), counting only days from ``o`` on, so days before the onset
never lift it. ``days_degraded`` is the number of days from ``o`` until the first ``D`` whose trailing AUPRC is at
least the level (0: the model never fell below it); a model that never recovers counts every day to the end of
the data, ``recovered`` false. The scores are the answers given at the time (the prediction log), the labels the
truth (every label, matured or not: this is what the bank lost, not what it knew).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import date, timedelta
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score


@dataclass(frozen=True)
class Adaptation:
    """The adaptation to one pattern (see the module docstring)."""

    pattern: str
    onset: str
    days_degraded: int
    recovered: bool
    level: float | None
    recovered_on: str | None
    trailing: list[dict[str, Any]]  # {"day", "average_precision", "rows", "frauds"} per day from the onset

    def summary(self) -> dict[str, Any]:
        """What the report's JSON carries (the trailing series aside)."""
        return {k: v for k, v in asdict(self).items() if k != "trailing"}


def _ap(y: np.ndarray, s: np.ndarray) -> float | None:
    return float(average_precision_score(y, s)) if 0 < int(y.sum()) < len(y) else None


def days_degraded(scored: pd.DataFrame, pattern: str, onset: date, window_days: int = 7, reference_days: int = 28
                  ) -> Adaptation:
    """The adaptation to ``pattern`` from ``onset`` of the answers in ``scored`` (``tx_datetime``,
    ``fraud_probability``, ``is_fraud``; one row per answered transaction).

    Raises:
        ValueError: no answered transaction before the onset with both classes (no level to get back to).
    """
    day = pd.to_datetime(scored["tx_datetime"], utc=True, format="ISO8601").dt.date.to_numpy()
    y, s = scored["is_fraud"].to_numpy(np.int64), scored["fraud_probability"].to_numpy(np.float64)
    before = (day >= onset - timedelta(days=reference_days)) & (day < onset)
    level = _ap(y[before], s[before])
    if level is None:
        raise ValueError(f"no answered transactions of both classes in the {reference_days} days before {onset}: "
                         "no level to measure the adaptation against")
    last = max((d for d in day if d >= onset), default=onset - timedelta(days=1))
    trailing, recovered_on = [], None
    current = onset
    while current <= last:
        start = max(onset, current - timedelta(days=window_days - 1))
        inside = (day >= start) & (day <= current)
        ap = _ap(y[inside], s[inside])
        trailing.append({"day": current.isoformat(), "average_precision": ap, "rows": int(inside.sum()),
                         "frauds": int(y[inside].sum())})
        if recovered_on is None and ap is not None and ap >= level:
            recovered_on = current
        current += timedelta(days=1)
    if recovered_on is not None:
        n, recovered = (recovered_on - onset).days, True
    else:
        n, recovered = (last - onset).days + 1, False
    return Adaptation(pattern, onset.isoformat(), n, recovered, level,
                      recovered_on.isoformat() if recovered_on else None, trailing)


def trailing_average_precision(scored: pd.DataFrame, window_days: int = 7) -> list[dict[str, Any]]:
    """The AUPRC of the answers over the ``window_days`` up to each day with answers (``[D - 6, D]``), oldest
    first: ``{"day", "average_precision", "rows", "frauds"}`` (``average_precision`` None without both classes)."""
    day = pd.to_datetime(scored["tx_datetime"], utc=True, format="ISO8601").dt.date.to_numpy()
    y, s = scored["is_fraud"].to_numpy(np.int64), scored["fraud_probability"].to_numpy(np.float64)
    out = []
    for current in sorted(set(day)):
        inside = (day > current - timedelta(days=window_days)) & (day <= current)
        out.append({"day": current.isoformat(), "average_precision": _ap(y[inside], s[inside]),
                    "rows": int(inside.sum()), "frauds": int(y[inside].sum())})
    return out
