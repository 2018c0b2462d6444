"""Features, defined once and computed the same way in batch (training) and online (serving).

Every feature of a transaction at time ``t`` uses only what is known at ``t``:

* per transaction: amount, log amount, hour, weekday, night and weekend flags;
* per customer, from the customer's transactions strictly before ``t`` (to the second): count, mean and
  standard deviation of the amount over 1, 7 and 30 days; the amount relative
  to the customer's 30-day mean; seconds since the previous transaction; the count in
  the last ``features.burst_window_seconds``; whether the terminal is new to the customer (not used by
  them in the last ``features.new_terminal_days``);
* per terminal, honouring the label delay ``d = features.label_delay_days``: over each window ``w`` of
  1, 7 and 30 days, the count of transactions and the share of frauds among the
  transactions in ``[t - d - w, t - d)``, whose labels are known by ``t``; plus the count over the last
  day (no labels needed).

Both modes call :func:`compute_features` with a *reference* set (the past) and the *queries* (the rows to
describe): batch mode passes earlier months plus the month itself, online mode the rows a store returns
for the incoming transactions' customers and terminals. A window only ever reads rows of one key within
its time range, so both give the same numbers (tested to 1e-9). Ties at the same second are not "before".
The label and the simulator's oracle columns are never features.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from fraud_assets.params import FeatureParams

KEY_COLUMNS = ["transaction_id", "tx_datetime", "customer_id", "terminal_id"]
LABEL = "is_fraud"
NEVER_FEATURES = frozenset({LABEL, "fraud_scenario", "fraud_probability"})
DAY_S = 86_400
NO_HISTORY = -1.0  # seconds-since-previous and amount ratio when the customer has no earlier transaction
_SHIFT = np.int64(1) << np.int64(33)  # key * 2**33 + seconds: sortable, seconds < 2**33 (year 2242)

TX_FEATURES = ["amount", "log_amount", "hour", "weekday", "is_night", "is_weekend"]


# The windows are part of the feature definitions (they name the columns a model is trained on), so they
# live here; the knobs that change values but not names (label delay, burst window, night hours) are params.
CUSTOMER_WINDOWS_DAYS = (1, 7, 30)
TERMINAL_WINDOWS_DAYS = (1, 7, 30)


def _feature_columns() -> list[str]:
    cols = list(TX_FEATURES)
    for w in CUSTOMER_WINDOWS_DAYS:
        cols += [f"customer_count_{w}d", f"customer_mean_amount_{w}d", f"customer_std_amount_{w}d"]
    cols += ["amount_to_customer_mean", "seconds_since_previous", "customer_count_burst", "terminal_new_to_customer"]
    for w in TERMINAL_WINDOWS_DAYS:
        cols += [f"terminal_count_{w}d", f"terminal_fraud_rate_{w}d"]
    return [*cols, "terminal_count_recent_1d"]


FEATURE_COLUMNS = _feature_columns()


def _seconds(ts: pd.Series) -> np.ndarray:
    return (pd.to_datetime(ts, utc=True).astype("int64") // 1_000_000_000).to_numpy(np.int64)


class _Index:
    """Reference rows sorted by (key, time) with per-key running sums, for window queries."""

    def __init__(self, key: np.ndarray, ts: np.ndarray, values: Mapping[str, np.ndarray]) -> None:
        order = np.lexsort((ts, key))
        self.key, self.ts = key[order], ts[order]
        self.combined = self.key * _SHIFT + self.ts
        self.n = len(order)
        grp = pd.Series(self.key)
        # Running sums restart at each key, so a window's sum never subtracts two large totals (exact parity).
        self.incl = {k: pd.Series(v[order]).groupby(grp.to_numpy()).cumsum().to_numpy(np.float64)
                     for k, v in values.items()}

    def bounds(self, qkey: np.ndarray, lo_ts: np.ndarray, hi_ts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Sorted positions ``[lo, hi)`` of the rows with key ``qkey`` and ``lo_ts <= ts < hi_ts``."""
        lo = np.searchsorted(self.combined, qkey * _SHIFT + lo_ts, side="left")
        hi = np.searchsorted(self.combined, qkey * _SHIFT + hi_ts, side="left")
        return lo, hi

    def window_sum(self, name: str, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        """Sum of ``name`` over each ``[lo, hi)`` (0 where empty)."""
        cs = self.incl[name]
        has = hi > lo
        out = np.zeros(len(lo))
        if self.n == 0:
            return out
        last = cs[np.where(has, hi - 1, 0)]
        before = np.where(lo > 0, cs[np.maximum(lo - 1, 0)], 0.0)
        same_key = np.where(lo > 0, self.key[np.maximum(lo - 1, 0)] == self.key[np.minimum(lo, self.n - 1)], False)
        out[has] = (last - np.where(same_key, before, 0.0))[has]
        return out


def _codes(reference: pd.Series, queries: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    codes, _ = pd.factorize(pd.concat([reference.astype(str), queries.astype(str)], ignore_index=True))
    codes = codes.astype(np.int64)
    return codes[: len(reference)], codes[len(reference):]


def compute_features(reference: pd.DataFrame, queries: pd.DataFrame, p: FeatureParams) -> pd.DataFrame:
    """Features of ``queries`` from the past in ``reference`` (rows at or after a query's second are ignored).

    ``reference`` needs ``tx_datetime, customer_id, terminal_id, amount`` and ``is_fraud`` (missing or NaN
    labels count as not fraud); ``queries`` needs the key columns and ``amount``. Returns the key columns,
    the features in :func:`feature_columns` order and the label when ``queries`` has one, in query order.
    """
    q_ts = _seconds(queries["tx_datetime"])
    r_ts = _seconds(reference["tx_datetime"]) if len(reference) else np.zeros(0, np.int64)
    amount = queries["amount"].to_numpy(np.float64)
    r_amount = reference["amount"].to_numpy(np.float64) if len(reference) else np.zeros(0)
    r_label = (pd.to_numeric(reference[LABEL], errors="coerce").fillna(0).to_numpy(np.float64)
               if LABEL in reference.columns and len(reference) else np.zeros(len(reference)))
    out = queries[KEY_COLUMNS].copy()
    out = out.assign(**_transaction_features(queries, amount, p))

    r_cust, q_cust = _codes(reference["customer_id"] if len(reference) else pd.Series([], dtype=str),
                            queries["customer_id"])
    cust = _Index(r_cust, r_ts, {"n": np.ones(len(r_ts)), "amount": r_amount, "amount2": r_amount ** 2})
    feats: dict[str, np.ndarray] = {}
    mean_long = np.zeros(len(queries))
    for w in CUSTOMER_WINDOWS_DAYS:
        lo, hi = cust.bounds(q_cust, q_ts - w * DAY_S, q_ts)
        n = (hi - lo).astype(np.float64)
        s1, s2 = cust.window_sum("amount", lo, hi), cust.window_sum("amount2", lo, hi)
        mean = np.divide(s1, n, out=np.zeros_like(s1), where=n > 0)
        var = np.divide(s2, n, out=np.zeros_like(s2), where=n > 0) - mean ** 2
        # Running sums leave ~1e-12 of noise in a variance; below that it is zero (sqrt would magnify it).
        var = np.where((n >= 2) & (var > 1e-10 * np.maximum(mean ** 2, 1.0)), var, 0.0)
        feats[f"customer_count_{w}d"] = n
        feats[f"customer_mean_amount_{w}d"] = mean
        feats[f"customer_std_amount_{w}d"] = np.sqrt(np.clip(var, 0.0, None))
        mean_long = mean  # the windows grow: the last is the longest
    feats["amount_to_customer_mean"] = np.divide(amount, mean_long, out=np.full(len(amount), NO_HISTORY),
                                                 where=mean_long > 0)
    prev = np.searchsorted(cust.combined, q_cust * _SHIFT + q_ts, side="left") - 1
    has_prev = (prev >= 0) & (cust.key[np.maximum(prev, 0)] == q_cust) if cust.n else np.zeros(len(q_ts), bool)
    feats["seconds_since_previous"] = np.where(
        has_prev, q_ts - (cust.ts[np.maximum(prev, 0)] if cust.n else 0), NO_HISTORY).astype(np.float64)
    lo, hi = cust.bounds(q_cust, q_ts - p.burst_window_seconds, q_ts)
    feats["customer_count_burst"] = (hi - lo).astype(np.float64)

    r_pair, q_pair = _codes(reference["customer_id"].astype(str) + "\x1f" + reference["terminal_id"].astype(str)
                            if len(reference) else pd.Series([], dtype=str),
                            queries["customer_id"].astype(str) + "\x1f" + queries["terminal_id"].astype(str))
    pair = _Index(r_pair, r_ts, {})
    lo, hi = pair.bounds(q_pair, q_ts - p.new_terminal_days * DAY_S, q_ts)
    feats["terminal_new_to_customer"] = (hi == lo).astype(np.float64)

    r_term, q_term = _codes(reference["terminal_id"] if len(reference) else pd.Series([], dtype=str),
                            queries["terminal_id"])
    term = _Index(r_term, r_ts, {"fraud": r_label})
    delay = p.label_delay_days * DAY_S
    for w in TERMINAL_WINDOWS_DAYS:
        lo, hi = term.bounds(q_term, q_ts - delay - w * DAY_S, q_ts - delay)
        n = (hi - lo).astype(np.float64)
        frauds = term.window_sum("fraud", lo, hi)
        feats[f"terminal_count_{w}d"] = n
        feats[f"terminal_fraud_rate_{w}d"] = np.divide(frauds, n, out=np.zeros_like(n), where=n > 0)
    lo, hi = term.bounds(q_term, q_ts - DAY_S, q_ts)
    feats["terminal_count_recent_1d"] = (hi - lo).astype(np.float64)

    out = out.assign(**feats)
    out = out[[*KEY_COLUMNS, *FEATURE_COLUMNS]]
    if LABEL in queries.columns:
        out[LABEL] = queries[LABEL].astype("int8").to_numpy()
    return out


def _transaction_features(frame: pd.DataFrame, amount: np.ndarray, p: FeatureParams) -> dict[str, Any]:
    ts = pd.to_datetime(frame["tx_datetime"], utc=True)
    hour = ts.dt.hour.to_numpy()
    weekday = ts.dt.weekday.to_numpy()
    start, end = p.night_hours
    return {"amount": amount, "log_amount": np.log1p(amount), "hour": hour.astype(np.float64),
            "weekday": weekday.astype(np.float64), "is_night": ((hour >= start) & (hour < end)).astype(np.float64),
            "is_weekend": (weekday >= 5).astype(np.float64)}


def build_features(transactions: pd.DataFrame, p: FeatureParams, history: pd.DataFrame | None = None
                   ) -> pd.DataFrame:
    """Batch mode: features of every row of ``transactions``, with ``history`` (earlier months) as the past.

    Pass at least ``max(customer windows, label delay + terminal windows)`` days of history so the first
    days of a month see what came before; the month's own earlier rows are always used.
    """
    cols = ["tx_datetime", "customer_id", "terminal_id", "amount"]
    past = [h[cols + ([LABEL] if LABEL in h.columns else [])] for h in (history, transactions)
            if h is not None and len(h)]
    reference = pd.concat(past, ignore_index=True) if past else transactions.iloc[0:0]
    return compute_features(reference, transactions, p)


def online_features(transactions: Sequence[Mapping[str, Any]], p: FeatureParams,
                    history: pd.DataFrame | None = None) -> pd.DataFrame:
    """Online mode: features of incoming transactions (no label) given the past rows a store returned.

    The incoming rows' own earlier members count as past too, as in batch mode; with no ``history`` the
    customer and terminal features are those of a first-ever transaction.
    """
    frame = pd.DataFrame.from_records(list(transactions), columns=[*KEY_COLUMNS, "amount"])
    reference = pd.concat([history, frame], ignore_index=True) if history is not None and len(history) else frame
    return compute_features(reference, frame, p)


def lookback_days(p: FeatureParams) -> int:
    """How many days of past transactions the features of a transaction can read."""
    return max(max(CUSTOMER_WINDOWS_DAYS), p.new_terminal_days, p.label_delay_days + max(TERMINAL_WINDOWS_DAYS), 1)


def feature_matrix(features: pd.DataFrame, columns: Sequence[str] = FEATURE_COLUMNS) -> np.ndarray:
    """The float32 matrix a model scores, in the model's own column order."""
    cols = list(columns)
    leaked = NEVER_FEATURES.intersection(cols)
    if leaked:
        raise ValueError(f"columns {sorted(leaked)} are never features")
    return features.loc[:, cols].to_numpy(dtype=np.float32)
