"""Label maturity: how a month's AUPRC estimate moves as its late labels arrive.

A month's scores can be judged only on the labels known so far, and labels keep arriving for weeks after the
month ends (``data.label_delay_cdf``). :func:`label_maturity` replays that: as of the month's end and each day
after it, the share of the month's rows whose label has arrived (at or before that time, as
:mod:`fraud_assets.core.live` counts them) and the AUPRC on those rows alone, so a report can show when a month's
estimate settles.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score

from fraud_assets.core.live import label_arrivals
from fraud_assets.core.months import month_bounds
from fraud_assets.params import FeatureParams

MATURITY_COLUMNS = ["day", "as_of", "labelled", "labelled_share", "frauds", "average_precision"]
_NEEDED = ("fraud_probability", "is_fraud")


def label_maturity(scored: pd.DataFrame, month: str, days: int, *, features: FeatureParams | None = None
                   ) -> pd.DataFrame:
    """The AUPRC estimate of ``month``'s scored rows as of its end (day 0) and each of the ``days`` days after.

    Args:
        scored: the month's rows with ``fraud_probability`` (the score), ``is_fraud`` (the label, NaN: none ever)
            and ``label_available_at`` (when it arrived; without the column, ``features`` gives the default rule).
        month: ``YYYY-MM``; day ``k`` is ``k`` days after the month's end (midnight UTC of the next month's 1st).
        days: the last day reported (``data.label_delay_cdf``'s last day: every label is known by then).
        features: the default arrival rule, for a frame without ``label_available_at``.

    Returns:
        One row per day: ``day``, ``as_of`` (UTC), ``labelled`` (rows whose label arrived by then),
        ``labelled_share`` (of all rows), ``frauds`` among them and ``average_precision`` on them (NaN while they
        hold a single class).

    Raises:
        ValueError: a needed column is missing, or ``days`` is negative.
    """
    missing = [c for c in _NEEDED if c not in scored.columns]
    if missing:
        raise ValueError(f"label maturity of {month}: missing column(s) {', '.join(missing)}")
    if days < 0:
        raise ValueError(f"label maturity of {month}: days must be >= 0, got {days}")
    end = month_bounds(month)[1]
    arrival = label_arrivals(scored, features)
    label = pd.to_numeric(scored["is_fraud"], errors="coerce").to_numpy(np.float64)
    score = scored["fraud_probability"].to_numpy(np.float64)
    rows = []
    for day in range(days + 1):
        as_of = end + pd.Timedelta(days=day)
        known = ~np.isnan(label) & (arrival <= as_of).to_numpy()  # NaT: never arrived
        y = label[known].astype(int)
        ap = float(average_precision_score(y, score[known])) if len(np.unique(y)) == 2 else np.nan
        rows.append((day, as_of, int(known.sum()), float(known.mean()) if len(known) else 0.0, int(y.sum()), ap))
    return pd.DataFrame(rows, columns=MATURITY_COLUMNS)
