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
  day (no labels needed);
* the card's own label history (:data:`FEATURE_GROUPS`): among its transactions in ``[t - d - 30 days, t - d)``
  the known frauds, their share and the days since the latest one;
* the amount against the card's habit: its z-score against the card's 30-day mean and deviation, its ratio to
  the card's 30-day maximum.

Both modes call :func:`compute_features` with a *reference* set (the past) and the *queries* (the rows to
describe): batch mode passes earlier months plus the month itself, online mode the rows a store returns
for the incoming transactions' customers and terminals. A window only ever reads rows of one key within
its time range, so both give the same numbers (tested to 1e-9). Ties at the same second are not "before".
The label and the simulator's oracle columns are never features.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from fraud_assets.params import FeatureParams
from fraud_assets.windows import CUSTOMER_WINDOWS_DAYS, DAY_S, TERMINAL_WINDOWS_DAYS, lookback_days

KEY_COLUMNS = ["transaction_id", "tx_datetime", "customer_id", "terminal_id"]
LABEL = "is_fraud"
NEVER_FEATURES = frozenset({LABEL, "fraud_scenario", "fraud_probability"})
Z_FLOOR_SHARE = 0.01  # the amount z-score's deviation is at least this share of the card's mean
NO_HISTORY = -1.0  # seconds-since-previous and amount ratio when the customer has no earlier transaction
_SHIFT = np.int64(1) << np.int64(33)  # key * 2**33 + seconds: sortable, seconds < 2**33 (year 2242)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_SECOND = timedelta(seconds=1)

TX_FEATURES = ["amount", "log_amount", "hour", "weekday", "is_night", "is_weekend"]


def _feature_columns() -> list[str]:
    cols = list(TX_FEATURES)
    for w in CUSTOMER_WINDOWS_DAYS:
        cols += [f"customer_count_{w}d", f"customer_mean_amount_{w}d", f"customer_std_amount_{w}d"]
    cols += ["amount_to_customer_mean", "seconds_since_previous", "customer_count_burst", "terminal_new_to_customer"]
    for w in TERMINAL_WINDOWS_DAYS:
        cols += [f"terminal_count_{w}d", f"terminal_fraud_rate_{w}d"]
    return [*cols, "terminal_count_recent_1d", *(c for group in FEATURE_GROUPS.values() for c in group)]


# Behaviour groups on top of the base columns, each kept because dropping it lowers the mean holdout AUPRC over
# two simulator seeds (``benchmarks/bench_quality.py`` drops one group at a time; the README has the table).
# Velocity (10-minute count and amount, distinct terminals), the terminal's amounts, gaps and new-card share, and
# the hour against the card's usual hours were measured too and left out: none helped on both seeds.
FEATURE_GROUPS: dict[str, list[str]] = {
    "card_label_history": ["card_known_frauds", "card_known_fraud_rate", "card_days_since_known_fraud"],
    "amount_habit": ["amount_zscore_30d", "amount_to_customer_max_30d"],
}
FEATURE_COLUMNS = _feature_columns()


def _seconds(ts: pd.Series) -> np.ndarray:
    return (pd.to_datetime(ts, utc=True).astype("int64") // 1_000_000_000).to_numpy(np.int64)


# Below this many rows the per-key running sums are taken with numpy segment by segment (no pandas call
# overhead, which dominates an online request); above it with one pandas groupby. Both restart at each key;
# pandas compensates its sums (Kahan) and numpy does not, so they agree to about 1e-12 of a key's total, far
# inside the 1e-9 batch/online parity the tests demand.
_SMALL = 4096


def _per_key_cumsum(key: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Running sums of ``values`` that restart at each new ``key`` (``key`` sorted)."""
    if len(key) <= _SMALL:
        cuts = np.flatnonzero(key[1:] != key[:-1]) + 1
        return np.concatenate([np.cumsum(seg) for seg in np.split(values, cuts)]) if len(key) else values
    return pd.Series(values).groupby(key).cumsum().to_numpy(np.float64)


class _Index:
    """Reference rows sorted by (key, time) with per-key running sums, for window queries."""

    def __init__(self, key: np.ndarray, ts: np.ndarray, values: Mapping[str, np.ndarray],
                 queried: np.ndarray | None = None, rows: Mapping[str, np.ndarray] | None = None) -> None:
        rows = dict(rows or {})
        if queried is not None and len(queried) <= _SMALL:
            # A few queries (online): keep only their keys' rows. Windows never read another key, and within a
            # key the rows and their order are unchanged.
            keep = (key == queried[0]) if len(queried) == 1 else np.isin(key, queried)
            key, ts = key[keep], ts[keep]
            values, rows = {k: v[keep] for k, v in values.items()}, {k: v[keep] for k, v in rows.items()}
        order = np.lexsort((ts, key))
        self.key, self.ts = key[order], ts[order]
        self.combined = self.key * _SHIFT + self.ts
        self.n = len(order)
        # Running sums restart at each key, so a window's sum never subtracts two large totals (exact parity).
        self.incl = {k: _per_key_cumsum(self.key, v[order].astype(np.float64)) for k, v in values.items()}
        # Row values in (key, time) order, for window statistics taken row by row (a maximum, an exact sum).
        self.rows = {k: v[order] for k, v in rows.items()}

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

    def previous(self, qkey: np.ndarray, q_ts: np.ndarray, horizon_s: int) -> np.ndarray:
        """Seconds since the key's latest row strictly before each query, within ``horizon_s``; else NO_HISTORY."""
        prev = np.searchsorted(self.combined, qkey * _SHIFT + q_ts, side="left") - 1
        if not self.n:
            return np.full(len(qkey), NO_HISTORY)
        at = np.maximum(prev, 0)
        ok = (prev >= 0) & (self.key[at] == qkey) & (q_ts - self.ts[at] <= horizon_s)
        return np.where(ok, q_ts - self.ts[at], NO_HISTORY).astype(np.float64)


class _Segments(NamedTuple):
    """The rows of many windows laid end to end: ``pos`` into an index, ``starts``/``n`` per window."""

    pos: np.ndarray
    starts: np.ndarray
    n: np.ndarray

    @classmethod
    def of(cls, lo: np.ndarray, hi: np.ndarray) -> _Segments:
        n = np.maximum(hi - lo, 0)
        starts = np.cumsum(n) - n
        return cls(np.repeat(lo - starts, n) + np.arange(int(n.sum())), starts, n)

    def reduce(self, ufunc: np.ufunc, values: np.ndarray, empty: float) -> np.ndarray:
        """``ufunc`` over each window's rows of ``values`` (in time order, so both modes add alike); ``empty``
        for an empty window."""
        out = np.full(len(self.n), empty, dtype=np.float64)
        has = self.n > 0
        if has.any():
            out[has] = ufunc.reduceat(values[self.pos].astype(np.float64), self.starts[has])
        return out


def _codes(reference: Sequence[Any], queries: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
    """Integer codes of string keys, shared by both sides (a dict for a handful, pandas for many)."""
    if len(reference) + len(queries) <= _SMALL:
        table: dict[str, int] = {}
        ref = np.fromiter((table.setdefault(str(k), len(table)) for k in reference), np.int64, len(reference))
        qry = np.fromiter((table.setdefault(str(k), len(table)) for k in queries), np.int64, len(queries))
        return ref, qry
    codes, _ = pd.factorize(pd.concat([pd.Series(reference, dtype=object).astype(str),
                                       pd.Series(queries, dtype=object).astype(str)], ignore_index=True))
    codes = codes.astype(np.int64)
    return codes[: len(reference)], codes[len(reference):]


class Rows(NamedTuple):
    """Transactions as columns: epoch seconds, customer and terminal ids, amounts, labels (NaN = unknown)."""

    ts: np.ndarray
    customer: Sequence[Any]
    terminal: Sequence[Any]
    amount: np.ndarray
    label: np.ndarray

    @classmethod
    def from_frame(cls, frame: pd.DataFrame) -> Rows:
        """Columns of a canonical frame (``is_fraud`` optional)."""
        n = len(frame)
        label = (pd.to_numeric(frame[LABEL], errors="coerce").to_numpy(np.float64) if LABEL in frame.columns
                 else np.full(n, np.nan))
        return cls(_seconds(frame["tx_datetime"]) if n else np.zeros(0, np.int64),
                   frame["customer_id"].to_numpy(), frame["terminal_id"].to_numpy(),
                   frame["amount"].to_numpy(np.float64), label)

    @classmethod
    def concat(cls, parts: Sequence[Rows]) -> Rows:
        """The rows of ``parts``, one after the other."""
        return cls(np.concatenate([r.ts for r in parts]).astype(np.int64),
                   np.concatenate([np.asarray(r.customer, dtype=object) for r in parts]),
                   np.concatenate([np.asarray(r.terminal, dtype=object) for r in parts]),
                   np.concatenate([r.amount for r in parts]).astype(np.float64),
                   np.concatenate([r.label for r in parts]).astype(np.float64))


def feature_values(reference: Rows, queries: Rows, hour: np.ndarray, weekday: np.ndarray, p: FeatureParams
                   ) -> np.ndarray:
    """The feature matrix (float64, :data:`FEATURE_COLUMNS` order) of ``queries`` given the past in ``reference``.

    The one implementation of the definitions: batch mode and online mode both end here. Rows of
    ``reference`` at or after a query's second are ignored; unknown labels count as not fraud.
    """
    q_ts, r_ts, amount = queries.ts, reference.ts, queries.amount
    nq = len(q_ts)
    start, end = p.night_hours
    feats: dict[str, np.ndarray] = {
        "amount": amount, "log_amount": np.log1p(amount), "hour": hour.astype(np.float64),
        "weekday": weekday.astype(np.float64), "is_night": ((hour >= start) & (hour < end)).astype(np.float64),
        "is_weekend": (weekday >= 5).astype(np.float64)}

    r_cust, q_cust = _codes(reference.customer, queries.customer)
    r_term, q_term = _codes(reference.terminal, queries.terminal)
    feats |= _customer_features(reference, queries, r_cust, q_cust, p)
    feats["terminal_new_to_customer"] = _new_to_customer(r_ts, q_ts, r_cust, q_cust, r_term, q_term, p)
    feats |= _terminal_features(reference, queries, r_term, q_term, p)
    return np.column_stack([feats[c] for c in FEATURE_COLUMNS]) if nq else np.zeros((0, len(FEATURE_COLUMNS)))


def _customer_features(reference: Rows, queries: Rows, r_cust: np.ndarray, q_cust: np.ndarray,
                       p: FeatureParams) -> dict[str, np.ndarray]:
    """Per customer (card): windows of its own past amounts, its amount habit and its label history."""
    q_ts, r_ts, amount = queries.ts, reference.ts, queries.amount
    nq = len(q_ts)
    feats: dict[str, np.ndarray] = {}
    # Sums of amounts shifted by each card's own mean: a variance taken as E[x^2] - E[x]^2 of raw amounts loses
    # ~1e-10 on a card whose amounts barely vary (a 7-day std of 0.02 on amounts near 94 came out 1e-9 apart in
    # the two modes); around the card's mean the same sums keep ~1e-16 of the spread, whichever rows each mode has.
    width = int(max(r_cust.max(initial=-1), q_cust.max(initial=-1))) + 1
    counts = np.bincount(r_cust, minlength=width)
    centre = np.divide(np.bincount(r_cust, weights=reference.amount, minlength=width), counts,
                       out=np.zeros(width), where=counts > 0)
    shifted = reference.amount - centre[r_cust]
    fraud = np.nan_to_num(reference.label, nan=0.0)
    cust = _Index(r_cust, r_ts, {"amount": shifted, "amount2": shifted ** 2}, q_cust,
                  rows={"amount": reference.amount, "fraud": fraud, "ts": r_ts})
    # All windows at once: row i of a (windows x queries) array is window i (fewer, larger numpy calls).
    windows = np.asarray(CUSTOMER_WINDOWS_DAYS, np.int64)[:, None] * DAY_S
    keys = np.broadcast_to(q_cust, (len(windows), nq)).ravel()
    lo, hi = cust.bounds(keys, (q_ts - windows).ravel(), np.broadcast_to(q_ts, (len(windows), nq)).ravel())
    n = (hi - lo).astype(np.float64)
    s1, s2 = cust.window_sum("amount", lo, hi), cust.window_sum("amount2", lo, hi)
    offset = np.divide(s1, n, out=np.zeros_like(s1), where=n > 0)  # the window's mean minus the card's centre
    mean = np.where(n > 0, centre[keys] + offset, 0.0)
    var = np.divide(s2, n, out=np.zeros_like(s2), where=n > 0) - offset ** 2
    # Running sums leave ~1e-12 of noise in a variance; below that it is zero (sqrt would magnify it).
    var = np.where((n >= 2) & (var > 1e-10 * np.maximum(mean ** 2, 1.0)), var, 0.0)
    n, mean, std = n.reshape(-1, nq), mean.reshape(-1, nq), np.sqrt(var).reshape(-1, nq)
    for i, w in enumerate(CUSTOMER_WINDOWS_DAYS):
        feats[f"customer_count_{w}d"] = n[i]
        feats[f"customer_mean_amount_{w}d"] = mean[i]
        feats[f"customer_std_amount_{w}d"] = std[i]
    longest = int(np.argmax(CUSTOMER_WINDOWS_DAYS))
    mean_long, std_long = mean[longest], std[longest]
    feats["amount_to_customer_mean"] = np.divide(amount, mean_long, out=np.full(nq, NO_HISTORY), where=mean_long > 0)
    # Like every other feature, the previous transaction is looked for within the lookback only: what a store
    # holding the last lookback_days returns, whatever longer history a batch run happens to have.
    feats["seconds_since_previous"] = cust.previous(q_cust, q_ts, lookback_days(p) * DAY_S)
    lo, hi = cust.bounds(q_cust, q_ts - p.burst_window_seconds, q_ts)
    feats["customer_count_burst"] = (hi - lo).astype(np.float64)

    # Amount against the card's habit: z-score against its 30-day mean and deviation, ratio to its 30-day max.
    # The deviation is floored at 1% of the card's mean: a card whose amounts barely vary (a subscription) would
    # otherwise divide by a near-zero std, whose last digits differ between the two modes (z = 489 +- 1e-9).
    spread = np.maximum(std_long, Z_FLOOR_SHARE * np.abs(mean_long))
    feats["amount_zscore_30d"] = np.divide(amount - mean_long, spread, out=np.zeros(nq), where=spread > 0)
    lo, hi = cust.bounds(q_cust, q_ts - max(CUSTOMER_WINDOWS_DAYS) * DAY_S, q_ts)
    long_max = _Segments.of(lo, hi).reduce(np.maximum, cust.rows["amount"], 0.0)
    feats["amount_to_customer_max_30d"] = np.divide(amount, long_max, out=np.full(nq, NO_HISTORY),
                                                    where=long_max > 0)
    # The card's own label history: its transactions of the longest window ending label_delay_days back (labels
    # younger than the delay are never read).
    delay = p.label_delay_days * DAY_S
    lo, hi = cust.bounds(q_cust, q_ts - delay - max(TERMINAL_WINDOWS_DAYS) * DAY_S, q_ts - delay)
    seg = _Segments.of(lo, hi)
    known = seg.reduce(np.add, cust.rows["fraud"], 0.0)
    feats["card_known_frauds"] = known
    feats["card_known_fraud_rate"] = np.divide(known, seg.n.astype(np.float64), out=np.zeros(nq), where=seg.n > 0)
    last = seg.reduce(np.maximum, np.where(cust.rows["fraud"] > 0, cust.rows["ts"], -1).astype(np.float64), -1.0)
    feats["card_days_since_known_fraud"] = np.where(last >= 0, (q_ts - last) / DAY_S, NO_HISTORY)
    return feats


def _new_to_customer(r_ts: np.ndarray, q_ts: np.ndarray, r_cust: np.ndarray, q_cust: np.ndarray, r_term: np.ndarray,
                     q_term: np.ndarray, p: FeatureParams) -> np.ndarray:
    """Whether each query's terminal is new to its customer (unused by them in ``new_terminal_days``)."""
    # A (customer, terminal) pair as one integer, then renumbered densely (key * 2**33 must fit in int64).
    width = np.int64(max(int(r_term.max(initial=-1)), int(q_term.max(initial=-1))) + 1)
    _, pairs = np.unique(np.concatenate([r_cust * width + r_term, q_cust * width + q_term]), return_inverse=True)
    pairs = pairs.astype(np.int64)
    pair = _Index(pairs[: len(r_ts)], r_ts, {}, pairs[len(r_ts):])
    lo, hi = pair.bounds(pairs[len(r_ts):], q_ts - p.new_terminal_days * DAY_S, q_ts)
    return (hi == lo).astype(np.float64)


def _terminal_features(reference: Rows, queries: Rows, r_term: np.ndarray, q_term: np.ndarray, p: FeatureParams
                       ) -> dict[str, np.ndarray]:
    """Per terminal: known fraud rates (the label delay honoured) and the count of the last day."""
    q_ts, r_ts = queries.ts, reference.ts
    nq = len(q_ts)
    feats: dict[str, np.ndarray] = {}
    term = _Index(r_term, r_ts, {"fraud": np.nan_to_num(reference.label, nan=0.0)}, q_term)
    delay = p.label_delay_days * DAY_S
    windows = np.asarray(TERMINAL_WINDOWS_DAYS, np.int64)[:, None] * DAY_S
    keys = np.broadcast_to(q_term, (len(windows), nq)).ravel()
    lo, hi = term.bounds(keys, (q_ts - delay - windows).ravel(),
                         np.broadcast_to(q_ts - delay, (len(windows), nq)).ravel())
    n = (hi - lo).astype(np.float64)
    rate = np.divide(term.window_sum("fraud", lo, hi), n, out=np.zeros_like(n), where=n > 0)
    n, rate = n.reshape(-1, nq), rate.reshape(-1, nq)
    for i, w in enumerate(TERMINAL_WINDOWS_DAYS):
        feats[f"terminal_count_{w}d"] = n[i]
        feats[f"terminal_fraud_rate_{w}d"] = rate[i]
    lo, hi = term.bounds(q_term, q_ts - DAY_S, q_ts)
    feats["terminal_count_recent_1d"] = (hi - lo).astype(np.float64)
    return feats


def compute_features(reference: pd.DataFrame, queries: pd.DataFrame, p: FeatureParams) -> pd.DataFrame:
    """Features of ``queries`` from the past in ``reference`` (rows at or after a query's second are ignored).

    ``reference`` needs ``tx_datetime, customer_id, terminal_id, amount`` and ``is_fraud`` (missing or NaN
    labels count as not fraud); ``queries`` needs the key columns and ``amount``. Returns the key columns,
    the features in :data:`FEATURE_COLUMNS` order and the label when ``queries`` has one, in query order.
    """
    when = pd.to_datetime(queries["tx_datetime"], utc=True)
    values = feature_values(Rows.from_frame(reference), Rows.from_frame(queries),
                            when.dt.hour.to_numpy(), when.dt.weekday.to_numpy(), p)
    out = pd.concat([queries[KEY_COLUMNS].reset_index(drop=True),
                     pd.DataFrame(values, columns=FEATURE_COLUMNS)], axis=1)
    out.index = queries.index
    if LABEL in queries.columns:
        out[LABEL] = queries[LABEL].astype("int8").to_numpy()
    return out


def history_months(p: FeatureParams) -> int:
    """How many calendar months before a month its features can read: the lookback in days over the shortest
    month (28 days), rounded up. With a 37-day lookback, two: March 1st reads back to January 23rd."""
    return -(-lookback_days(p) // 28)


def build_features(transactions: pd.DataFrame, p: FeatureParams, history: pd.DataFrame | None = None
                   ) -> pd.DataFrame:
    """Batch mode: features of every row of ``transactions``, with ``history`` (earlier months) as the past.

    Pass the :func:`history_months` before the month (``lookback_days`` of history at least) so the first days
    of a month see what a store holding everything before them would; the month's own earlier rows are always
    used, and nothing older than the lookback changes a feature.
    """
    cols = ["tx_datetime", "customer_id", "terminal_id", "amount"]
    past = [h[cols + ([LABEL] if LABEL in h.columns else [])] for h in (history, transactions)
            if h is not None and len(h)]
    reference = pd.concat(past, ignore_index=True) if past else transactions.iloc[0:0]
    return compute_features(reference, transactions, p)


def build_features_by_month(months: Mapping[str, pd.DataFrame], p: FeatureParams) -> dict[str, pd.DataFrame]:
    """Batch mode over consecutive months (``YYYY-MM`` keys): each month with the :func:`history_months` before it
    as history, as the asset graph and ``dvc repro`` compute them."""
    ordered = sorted(months)
    k = history_months(p)
    out: dict[str, pd.DataFrame] = {}
    for i, month in enumerate(ordered):
        earlier = [months[m] for m in ordered[max(0, i - k):i] if len(months[m])]
        out[month] = build_features(months[month], p, history=pd.concat(earlier, ignore_index=True) if earlier
                                    else None)
    return out


def online_features(transactions: Sequence[Mapping[str, Any]], p: FeatureParams,
                    history: pd.DataFrame | None = None) -> pd.DataFrame:
    """Online mode as a frame: features of incoming transactions (no label) given past rows from a store.

    The incoming rows' own earlier members count as past too, as in batch mode; with no ``history`` the
    customer and terminal features are those of a first-ever transaction.
    """
    frame = pd.DataFrame.from_records(list(transactions), columns=[*KEY_COLUMNS, "amount"])
    reference = pd.concat([history, frame], ignore_index=True) if history is not None and len(history) else frame
    return compute_features(reference, frame, p)


def timestamp_parts(value: Any) -> tuple[int, int, int]:
    """Epoch seconds (floored, as batch mode floors nanoseconds), UTC hour and weekday of a timestamp."""
    when = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    when = when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)
    return (when - _EPOCH) // _SECOND, when.hour, when.weekday()


class Incoming(NamedTuple):
    """Incoming transactions (request dicts) parsed once: their rows, UTC hours and weekdays."""

    rows: Rows
    hour: np.ndarray
    weekday: np.ndarray

    @classmethod
    def parse(cls, transactions: Sequence[Mapping[str, Any]]) -> Incoming:
        """Parse the timestamps and amounts of ``transactions`` (no label: they are being scored)."""
        parsed = [timestamp_parts(tx["tx_datetime"]) for tx in transactions]
        n = len(transactions)
        rows = Rows(np.fromiter((t[0] for t in parsed), np.int64, n),
                    [tx["customer_id"] for tx in transactions], [tx["terminal_id"] for tx in transactions],
                    np.fromiter((float(tx["amount"]) for tx in transactions), np.float64, n), np.full(n, np.nan))
        return cls(rows, np.fromiter((t[1] for t in parsed), np.int64, n),
                   np.fromiter((t[2] for t in parsed), np.int64, n))


def online_matrix(incoming: Incoming, history: Rows, p: FeatureParams) -> np.ndarray:
    """Online mode without pandas: the matrix of incoming transactions given the past ``history`` rows.

    Same definitions and same numbers as :func:`online_features` (it calls :func:`feature_values` too);
    this is the serving path, where a pandas frame would cost more than the features themselves.
    """
    reference = Rows.concat([history, incoming.rows]) if len(history.ts) else incoming.rows
    return feature_values(reference, incoming.rows, incoming.hour, incoming.weekday, p)


def feature_matrix(features: pd.DataFrame, columns: Sequence[str] = FEATURE_COLUMNS) -> np.ndarray:
    """The float32 matrix a model scores, in the model's own column order."""
    cols = list(columns)
    leaked = NEVER_FEATURES.intersection(cols)
    if leaked:
        raise ValueError(f"columns {sorted(leaked)} are never features")
    return features.loc[:, cols].to_numpy(dtype=np.float32)
