"""Features, defined once and computed the same way in batch (training) and online (serving).

Every feature of a transaction at time ``t`` uses only what is known at ``t``:

* per transaction: amount, log amount, hour, weekday, night and weekend flags;
* per customer, from the customer's transactions strictly before ``t`` (to the second): count, mean and
  standard deviation of the amount over 1, 7 and 30 days; the amount relative
  to the customer's 30-day mean; seconds since the previous transaction; the count in
  the last ``features.burst_window_seconds``; whether the terminal is new to the customer (not used by
  them in the last ``features.new_terminal_days``);
* per terminal, honouring the label delay ``d = features.label_delay_days``: over each window ``w`` of
  1, 7 and 30 days, the count of transactions and the share of known frauds among the
  transactions in ``[t - d - w, t - d)``; plus the count over the last day (no labels needed);
* the card's own label history (:data:`FEATURE_GROUPS`): among its transactions in ``[t - d - 30 days, t - d)``
  the known frauds, their share and the days since the latest one;
* the amount against the card's habit: its z-score against the card's 30-day mean and deviation, its ratio to
  the card's 30-day maximum.

Labels arrive late. A label is *known* at ``t`` when it arrived strictly before ``t``, to the second, as a
transaction is "before" ``t``: ``floor(label_available_at) < t``. A label not known yet counts as not fraud,
as an unknown (NaN) label always has. A row without an arrival time (no ``label_available_at`` column, a NaT in
it, a store row labelled before arrival times were kept) follows the rule of
:func:`fraud_assets.schemas.default_label_available_at`: its label arrived ``d`` after the transaction, so it is
known in every window above, which end ``d`` back; with such arrivals the features are those of the rule alone,
to the bit. The windows keep ending ``d`` back whatever the arrivals: a label that came early adds nothing, one
that comes late is not read until it arrives.

Both modes call :func:`compute_features` with a *reference* set (the past) and the *queries* (the rows to
describe): batch mode passes earlier months plus the month itself, online mode the rows a store returns
for the incoming transactions' customers and terminals. A window only ever reads rows of one key within
its time range, so both give the same numbers (tested to 1e-9). Ties at the same second are not "before".
The label, its arrival time and the simulator's oracle columns are never features.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from itertools import accumulate, chain, compress, count, pairwise, repeat
from typing import Any, Literal, NamedTuple, Protocol

import numpy as np
import pandas as pd

from fraud_assets.params import FeatureParams
from fraud_assets.schemas import LABEL_AVAILABLE_AT
from fraud_assets.windows import CUSTOMER_WINDOWS_DAYS, DAY_S, TERMINAL_WINDOWS_DAYS, lookback_days

KEY_COLUMNS = ["transaction_id", "tx_datetime", "customer_id", "terminal_id"]
LABEL = "is_fraud"
NEVER_FEATURES = frozenset({LABEL, LABEL_AVAILABLE_AT, "fraud_scenario", "fraud_probability"})
Z_FLOOR_SHARE = 0.01  # the amount z-score's deviation is at least this share of the card's mean
NO_HISTORY = -1.0  # seconds-since-previous and amount ratio when the customer has no earlier transaction
_SHIFT = np.int64(1) << np.int64(33)  # key * 2**33 + seconds: sortable, seconds < 2**33 (year 2242)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_SECOND = timedelta(seconds=1)

TX_FEATURES = ["amount", "log_amount", "hour", "weekday", "is_night", "is_weekend"]
EXACT_FEATURES = ["amount"]  # stored as they came (float64); every other feature is stored as float32 (features_frame)


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
# The columns each key's windows make (window_values): a card's own past, a terminal's own past.
TERMINAL_PART = [c for c in FEATURE_COLUMNS if c.startswith("terminal_") and c != "terminal_new_to_customer"]
CUSTOMER_PART = [c for c in FEATURE_COLUMNS if c not in TX_FEATURES and c not in TERMINAL_PART]


def _utc(when: pd.Series) -> pd.Series:
    """Timestamps as UTC nanoseconds; a column that already holds timestamps skips ``pd.to_datetime``, whose check
    of the values costs more than the rest of reading them (a naive one is taken as UTC, as it would)."""
    if isinstance(when.dtype, pd.DatetimeTZDtype):
        return when.dt.tz_convert("UTC").dt.as_unit("ns")
    if when.dtype.kind == "M":
        return when.dt.tz_localize("UTC").dt.as_unit("ns")
    return pd.to_datetime(when, utc=True).dt.as_unit("ns")


def _seconds(ts: pd.Series) -> np.ndarray:
    return (_utc(ts).astype("int64") // 1_000_000_000).to_numpy(np.int64)


def _arrival_seconds(when: pd.Series) -> np.ndarray:
    """Epoch seconds (floored, float64) of label arrival times; NaN where there is none (NaT)."""
    at = _utc(when)
    out = (at.astype("int64") // 1_000_000_000).to_numpy(np.float64)
    out[at.isna().to_numpy()] = np.nan
    return out


def label_arrival_seconds(frame: pd.DataFrame, p: FeatureParams) -> np.ndarray:
    """When the label of each row of a canonical frame arrives, in epoch seconds (floored, int64): its
    ``label_available_at``, or ``label_delay_days`` after the transaction where the frame has none (the rule)."""
    ts = _seconds(frame["tx_datetime"]) if len(frame) else np.zeros(0, np.int64)
    rule = ts + p.label_delay_days * DAY_S
    if LABEL_AVAILABLE_AT not in frame.columns:
        return rule
    at = _arrival_seconds(frame[LABEL_AVAILABLE_AT])
    return np.where(np.isnan(at), rule, at).astype(np.int64)


# Below this many rows the per-key running sums are taken with numpy segment by segment (no pandas call
# overhead, which dominates an online request); above it with one pandas groupby. Both restart at each key;
# pandas compensates its sums (Kahan) and numpy does not, so they agree to about 1e-12 of a key's total, far
# inside the 1e-9 batch/online parity the tests demand. Up to this many queries an index keeps only the rows of
# the queried keys. These small paths take fewer numpy calls (on ~100 rows each call's overhead is its cost),
# never other arithmetic.
_SMALL = 4096
_ZERO = np.zeros(1, np.int64)


class _Marks(NamedTuple):
    """How far before each query the window bounds lie (seconds, one row per bound), for one set of knobs."""

    customer: np.ndarray  # the windows' starts, the label history's start; the query; the label delay; burst; lookback
    terminal: np.ndarray  # the fraud windows' starts; the label delay; the query; a day
    pair: np.ndarray  # the new-terminal window's start; the query


_K = len(CUSTOMER_WINDOWS_DAYS)
_LONGEST = CUSTOMER_WINDOWS_DAYS.index(max(CUSTOMER_WINDOWS_DAYS))
_CUSTOMER_ENDS = np.array([_K + 1] * _K + [_K + 2])  # rows of Marks.customer ending the windows and label history
_TERMINAL_ENDS = np.array([len(TERMINAL_WINDOWS_DAYS)] * len(TERMINAL_WINDOWS_DAYS))  # ... ending the fraud windows
_CUSTOMER_COLUMNS = [(f"customer_count_{w}d", f"customer_mean_amount_{w}d", f"customer_std_amount_{w}d")
                     for w in CUSTOMER_WINDOWS_DAYS]
_TERMINAL_COLUMNS = [(f"terminal_count_{w}d", f"terminal_fraud_rate_{w}d") for w in TERMINAL_WINDOWS_DAYS]


def _column(seconds: list[int]) -> np.ndarray:
    return np.array(seconds, np.int64)[:, None]


@lru_cache(maxsize=16)
def _marks(p: FeatureParams) -> _Marks:
    """The window bounds of the knobs ``p`` (made once per set of knobs)."""
    delay, longest_label = p.label_delay_days * DAY_S, max(TERMINAL_WINDOWS_DAYS) * DAY_S
    return _Marks(_column([*(w * DAY_S for w in CUSTOMER_WINDOWS_DAYS), delay + longest_label, 0, delay,
                           p.burst_window_seconds, lookback_days(p) * DAY_S]),
                  _column([*(delay + w * DAY_S for w in TERMINAL_WINDOWS_DAYS), delay, 0, DAY_S]),
                  _column([p.new_terminal_days * DAY_S, 0]))


def _per_key_cumsum(key: np.ndarray, values: np.ndarray, out: np.ndarray) -> None:
    """Running sums of ``values`` into ``out`` that restart at each new ``key`` (sorted)."""
    if len(key) > _SMALL:
        out[:] = pd.Series(values).groupby(key).cumsum().to_numpy(np.float64)
        return
    cuts = [0, *(np.flatnonzero(key[1:] != key[:-1]) + 1).tolist(), len(key)] if len(key) else []
    for lo, hi in pairwise(cuts):  # one key (one query online): one running sum
        np.add.accumulate(values[lo:hi], out=out[lo:hi])


def _rows_of(key: np.ndarray, queried: np.ndarray, width: int) -> np.ndarray | None:
    """Positions (in order) of the rows whose key is among a few ``queried`` ones (codes below ``width``); None
    for many queries (batch), which keep every row."""
    if len(queried) > _SMALL:
        return None
    if len(queried) == 1:
        return np.flatnonzero(key == queried[0])
    wanted = np.zeros(width, bool)
    wanted[queried] = True
    return np.flatnonzero(wanted[key])


class _Index:
    """Reference rows sorted by (key, time), with per-key running sums, for window queries.

    For a few queries (online) only the rows of their keys are kept: windows never read another key, and within
    a key the rows and their order are unchanged. With one queried key, time alone orders and finds the rows.
    """

    def __init__(self, key: np.ndarray, ts: np.ndarray, queried: np.ndarray, width: int) -> None:
        at = _rows_of(key, queried, width)
        self.single = at is not None and len(queried) == 1
        if at is None:
            self.order = np.lexsort((ts, key))
        else:
            self.order = at[ts[at].argsort(kind="stable") if self.single else np.lexsort((ts[at], key[at]))]
        self.key, self.n = key[self.order], len(self.order)
        # The times and a 0 after them, so ``ts_pad[i - 1]`` of a window ending at 0 is a harmless read.
        self.ts_pad = np.concatenate((ts[self.order], _ZERO))
        self.ts = self.ts_pad[: self.n]
        self.combined = self.ts if self.single else self.key * _SHIFT + self.ts
        self.upto, self.starts = np.zeros((1, 0)), None

    def first_at(self, qkey: np.ndarray, q_ts: np.ndarray, marks: np.ndarray) -> np.ndarray:
        """Sorted position of the first row of key ``qkey`` at or after ``q_ts - marks`` (a row per mark)."""
        needles = q_ts - marks
        if not self.single:
            needles += qkey * _SHIFT
        return self.combined.searchsorted(needles)

    def add_sums(self, *values: np.ndarray) -> None:
        """Per-key running sums of each of ``values`` (rows in index order), for :meth:`window_sums`."""
        # upto[i]: the running sum through row i - 1 of its key, so a window [lo, hi) of one key sums to upto[hi]
        # minus upto[lo], or upto[hi] alone if lo starts its key: it never subtracts two keys' totals.
        self.upto = np.zeros((self.n + 1, len(values)))
        for j, v in enumerate(values):
            _per_key_cumsum(self.key, v, self.upto[1:, j])
        self.starts = None  # one key: row 0 alone starts it, and upto[0] is 0
        if self.n and self.key[0] != self.key[-1]:
            self.starts = np.ones(self.n + 1, bool)
            self.starts[1:self.n] = self.key[1:] != self.key[:-1]

    def window_sums(self, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        """Sums of the :meth:`add_sums` quantities over each ``[lo, hi)`` (same shapes; 0 where empty), x quantities."""
        sums, before = self.upto[hi], self.upto[lo]
        if self.starts is not None:
            before[self.starts[lo]] = 0.0
        sums -= before
        # With one key an empty window is upto[lo] - upto[lo], exactly 0; at a key's edge it would read two keys.
        if self.starts is not None:
            sums[hi <= lo] = 0.0
        return sums


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
            out[has] = ufunc.reduceat(values[self.pos].astype(np.float64, copy=False), self.starts[has])
        return out


_SEGMENT_ROWS = 1 << 21  # rows of windows laid end to end at once (:func:`_window_max`): about 16 MB an array


def _window_max(values: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """The maximum of ``values`` (in index order) over each ``[lo, hi)``, 0 where empty.

    The windows are taken a run of queries at a time, each run's windows holding about :data:`_SEGMENT_ROWS` rows
    together: laid end to end at once, a month's 30-day windows are some 60 rows a query, four arrays of 145 MB
    for 300,000 queries. A maximum is exact, so the runs change no bit.
    """
    if len(lo) == 1:  # one window (online): a slice
        return np.array([values[lo[0]:hi[0]].max() if hi[0] > lo[0] else 0.0])
    ends = np.cumsum(np.maximum(hi - lo, 0))
    out = np.empty(len(lo))
    start = 0
    while start < len(lo):
        before = int(ends[start - 1]) if start else 0
        stop = max(int(ends.searchsorted(before + _SEGMENT_ROWS, side="right")), start + 1)
        out[start:stop] = _Segments.of(lo[start:stop], hi[start:stop]).reduce(np.maximum, values, 0.0)
        start = stop
    return out


def _codes(reference: Sequence[str], queries: Sequence[str]) -> tuple[np.ndarray, np.ndarray, int]:
    """Integer codes of the keys of both sides, and a bound above every code.

    For a few rows (online) only the queried keys get a code of their own and every other key shares one: the
    windows of a few queries only read their own keys' rows (see :class:`_Index`). For many, pandas numbers them.
    """
    if len(reference) + len(queries) <= _SMALL:
        table: dict[str, int] = {}
        qry = np.fromiter(map(table.setdefault, queries, count()), np.int64, len(queries))
        other = len(queries)
        return np.fromiter(map(table.get, reference, repeat(other)), np.int64, len(reference)), qry, other + 1
    codes, uniques = pd.factorize(pd.concat([pd.Series(reference, dtype=object), pd.Series(queries, dtype=object)],
                                            ignore_index=True))
    codes = codes.astype(np.int64)
    return codes[: len(reference)], codes[len(reference):], len(uniques)


class Rows(NamedTuple):
    """Transactions as columns: epoch seconds, customer and terminal ids, amounts, labels (NaN = unknown) and when
    each label arrived (``label_at``, epoch seconds as float64).

    ``label_at`` NaN, or ``None`` for every row, is the default rule (the label arrived ``label_delay_days`` after
    the transaction); ``+inf`` is a label that has not arrived. Ids are strings (the constructors below and
    :class:`Incoming` convert them), compared as they are.
    """

    ts: np.ndarray
    customer: Sequence[str]
    terminal: Sequence[str]
    amount: np.ndarray
    label: np.ndarray
    label_at: np.ndarray | None = None

    @classmethod
    def from_frame(cls, frame: pd.DataFrame) -> Rows:
        """Columns of a canonical frame (``is_fraud`` and ``label_available_at`` optional)."""
        n = len(frame)
        label = (pd.to_numeric(frame[LABEL], errors="coerce").to_numpy(np.float64) if LABEL in frame.columns
                 else np.full(n, np.nan))
        label_at = _arrival_seconds(frame[LABEL_AVAILABLE_AT]) if LABEL_AVAILABLE_AT in frame.columns else None
        return cls(_seconds(frame["tx_datetime"]) if n else np.zeros(0, np.int64),
                   frame["customer_id"].astype(str).to_numpy(), frame["terminal_id"].astype(str).to_numpy(),
                   frame["amount"].to_numpy(np.float64), label, label_at)

    @classmethod
    def concat(cls, parts: Sequence[Rows]) -> Rows:
        """The rows of ``parts``, one after the other (ids as lists: the features iterate them)."""
        label_at = None
        if any(r.label_at is not None for r in parts):
            label_at = np.concatenate([np.full(len(r.ts), np.nan) if r.label_at is None else r.label_at
                                       for r in parts]).astype(np.float64, copy=False)
        return cls(np.concatenate([r.ts for r in parts]).astype(np.int64, copy=False),
                   list(chain.from_iterable(r.customer for r in parts)),
                   list(chain.from_iterable(r.terminal for r in parts)),
                   np.concatenate([r.amount for r in parts]).astype(np.float64, copy=False),
                   np.concatenate([r.label for r in parts]).astype(np.float64, copy=False), label_at)


def feature_values(reference: Rows, queries: Rows, hour: np.ndarray, weekday: np.ndarray, p: FeatureParams
                   ) -> np.ndarray:
    """The feature matrix (float64, :data:`FEATURE_COLUMNS` order) of ``queries`` given the past in ``reference``.

    The one entry point of the definitions: batch mode and online mode both end here. Rows of
    ``reference`` at or after a query's second are ignored; unknown labels, and labels that arrive at or after
    the query's second, count as not fraud. One query
    against a few rows (an online request) takes :func:`_one_query`, anything else the vectorized
    :func:`_window_features`; the two agree to the bit (``tests/unit/test_online_speed_paths.py``).
    """
    nq = len(queries.ts)
    if not nq:
        return np.zeros((0, len(FEATURE_COLUMNS)))
    feats = transaction_values(queries.amount, hour, weekday, p)
    if nq == 1 and len(reference.ts) <= _SMALL:
        feats = {c: v[0] for c, v in feats.items()} | _one_query(reference, queries, p)
        return np.array([[feats[c] for c in FEATURE_COLUMNS]], dtype=np.float64)
    feats |= _window_features(reference, queries, p)
    return np.column_stack([feats[c] for c in FEATURE_COLUMNS])


def transaction_values(amount: np.ndarray, hour: np.ndarray, weekday: np.ndarray, p: FeatureParams
                       ) -> dict[str, np.ndarray]:
    """The per-transaction columns (:data:`TX_FEATURES`): the row alone, no past."""
    start, end = p.night_hours
    return {"amount": amount, "log_amount": np.log1p(amount), "hour": hour.astype(np.float64),
            "weekday": weekday.astype(np.float64), "is_night": ((hour >= start) & (hour < end)).astype(np.float64),
            "is_weekend": (weekday >= 5).astype(np.float64)}


KeyPart = Literal["customer", "terminal"]


def window_values(reference: Rows, queries: Rows, p: FeatureParams, by: KeyPart) -> dict[str, np.ndarray]:
    """The columns of ``queries`` that read only the past of one key: ``by="customer"`` the card's windows, habit,
    label history and new-terminal flag (:data:`CUSTOMER_PART`), ``"terminal"`` the terminal's
    (:data:`TERMINAL_PART`).

    A window reads rows of its own key only, so a partition holding every row of some cards (or terminals) gives
    those cards' (terminals') columns exactly as the whole data would: how a distributed engine computes features
    by key with this same code. The numbers differ from :func:`feature_values` on the whole data only by the order
    of floating-point sums (about 1e-12 of a key's total).
    """
    if not len(queries.ts):
        return {c: np.zeros(0) for c in (CUSTOMER_PART if by == "customer" else TERMINAL_PART)}
    return _window_features(reference, queries, p, by)


def _window_features(reference: Rows, queries: Rows, p: FeatureParams, by: KeyPart | None = None
                     ) -> dict[str, np.ndarray]:
    """The customer and terminal columns of any number of queries, vectorized (batch mode; several online); only
    one key's columns with ``by``."""
    marks = _marks(p)
    r_term, q_term, n_term = _codes(reference.terminal, queries.terminal)
    fraud = np.where(np.isnan(reference.label), 0.0, reference.label)  # an unknown label counts as not fraud
    late = _late_frauds(reference, fraud, p)
    feats: dict[str, np.ndarray] = {}
    if by != "terminal":
        r_cust, q_cust, n_cust = _codes(reference.customer, queries.customer)
        feats = _customer_features(reference, queries, fraud, late, r_cust, q_cust, n_cust, marks.customer)
        feats["terminal_new_to_customer"] = _new_to_customer(reference.ts, queries.ts, r_cust * n_term + r_term,
                                                             q_cust * n_term + q_term, marks.pair)
    if by != "customer":
        feats |= _terminal_features(reference, queries, fraud, late, r_term, q_term, n_term, marks.terminal)
    return feats


def _late_frauds(reference: Rows, fraud: np.ndarray, p: FeatureParams) -> np.ndarray | None:
    """Which frauds of ``reference`` have their label arrive after the label delay (None: none do).

    They are the only rows a label window (it ends ``label_delay_days`` before the query) can hold before their
    label is known: every other row of a window is older than the delay, and so is its label. Few rows (a share of
    the frauds), so the windows count all frauds as before and take away these when still unknown at the query.
    """
    if reference.label_at is None:
        return None
    late = (fraud > 0) & (reference.label_at > reference.ts + p.label_delay_days * DAY_S)  # NaN: the rule, not late
    return late if late.any() else None


def _unknown_in_windows(late_pos: np.ndarray, late_at: np.ndarray, lo: np.ndarray, hi: np.ndarray,
                        q_ts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The late frauds (index positions ``late_pos``, increasing, arriving at ``late_at``) inside each query's
    ``[lo, hi)``, as pairs: the query's number, the fraud's position, whether its label is still unknown at the
    query's second (it arrives at or after it)."""
    found = _Segments.of(late_pos.searchsorted(lo), late_pos.searchsorted(hi))
    query = np.repeat(np.arange(len(lo)), found.n)
    return query, late_pos[found.pos], late_at[found.pos] >= q_ts[query]


def _one_query(reference: Rows, queries: Rows, p: FeatureParams) -> dict[str, float]:
    """:func:`_window_features` of a single query, row by row in plain Python.

    An online request is one query against ~100 rows, where the vectorized path's cost is its ~150 numpy
    calls (1-5 us each, whatever their size). This is the same arithmetic on the same rows in the same order
    (a card's centre summed in reference order, running sums in time order, ties kept in reference order), so
    it gives the same bits; ``tests/unit/test_online_speed_paths.py`` compares the two on random cases.
    """
    t, amount = int(queries.ts[0]), float(queries.amount[0])
    customer, terminal = queries.customer[0], queries.terminal[0]
    ts, amounts, labels = reference.ts.tolist(), reference.amount.tolist(), reference.label.tolist()
    frauds = [0.0 if v != v else v for v in labels]  # an unknown (NaN) label counts as not fraud ...
    if reference.label_at is not None:  # ... and so does one arriving at or after the query's second (NaN: the rule)
        frauds = [0.0 if at >= t else f for f, at in zip(frauds, reference.label_at.tolist(), strict=True)]
    mine = list(compress(count(), map(customer.__eq__, reference.customer)))  # the card's rows, reference order
    total = 0.0
    for i in mine:
        total += amounts[i]
    centre = total / max(len(mine), 1)  # np.bincount's sum: in reference order, from 0
    mine.sort(key=ts.__getitem__)  # stable: rows of one second keep their reference order
    c_ts, c_amounts, c_frauds = [ts[i] for i in mine], [amounts[i] for i in mine], [frauds[i] for i in mine]
    shifted = [a - centre for a in c_amounts]
    up1, up2, upf = ([0.0, *accumulate(v)] for v in (shifted, [s * s for s in shifted], c_frauds))
    feats: dict[str, float] = {}

    def first_at(seconds_before: int, times: list[int] = c_ts) -> int:
        return bisect_left(times, t - seconds_before)

    now, means, stds = first_at(0), [], []
    for (count_c, mean_c, std_c), w in zip(_CUSTOMER_COLUMNS, CUSTOMER_WINDOWS_DAYS, strict=True):
        lo = first_at(w * DAY_S)
        n = float(now - lo)
        div = max(n, 1.0)
        offset = (up1[now] - up1[lo]) / div
        mean = centre + offset if n > 0 else 0.0
        var = (up2[now] - up2[lo]) / div - offset * offset
        std = math.sqrt(var) if n >= 2 and var > 1e-10 * max(mean * mean, 1.0) else 0.0
        feats[count_c], feats[mean_c], feats[std_c] = n, mean, std
        means.append(mean)
        stds.append(std)
    mean_long, std_long = means[_LONGEST], stds[_LONGEST]
    feats["amount_to_customer_mean"] = amount / mean_long if mean_long > 0 else NO_HISTORY
    since = first_at(lookback_days(p) * DAY_S)
    feats["seconds_since_previous"] = float(t - c_ts[now - 1]) if now > since else NO_HISTORY
    feats["customer_count_burst"] = float(now - first_at(p.burst_window_seconds))
    spread = max(std_long, Z_FLOOR_SHARE * abs(mean_long))
    feats["amount_zscore_30d"] = (amount - mean_long) / spread if spread > 0 else 0.0
    lo = first_at(max(CUSTOMER_WINDOWS_DAYS) * DAY_S)
    long_max = max(c_amounts[lo:now]) if now > lo else 0.0
    feats["amount_to_customer_max_30d"] = amount / long_max if long_max > 0 else NO_HISTORY
    delay = p.label_delay_days * DAY_S
    lo, hi = first_at(delay + max(TERMINAL_WINDOWS_DAYS) * DAY_S), first_at(delay)
    known = upf[hi] - upf[lo]
    feats["card_known_frauds"], feats["card_known_fraud_rate"] = known, known / max(float(hi - lo), 1.0)
    latest = next((j for j in range(hi - 1, lo - 1, -1) if c_frauds[j] > 0), -1)
    feats["card_days_since_known_fraud"] = (t - c_ts[latest]) / DAY_S if latest >= 0 else NO_HISTORY

    start = t - p.new_terminal_days * DAY_S
    used = any(reference.terminal[i] == terminal and start <= ts[i] < t for i in mine)
    feats["terminal_new_to_customer"] = 0.0 if used else 1.0

    there = list(compress(count(), map(terminal.__eq__, reference.terminal)))
    there.sort(key=ts.__getitem__)
    t_ts = [ts[i] for i in there]
    upt = [0.0, *accumulate(frauds[i] for i in there)]
    hi = first_at(delay, t_ts)
    for (count_c, rate_c), w in zip(_TERMINAL_COLUMNS, TERMINAL_WINDOWS_DAYS, strict=True):
        lo = first_at(delay + w * DAY_S, t_ts)
        n = float(hi - lo)
        feats[count_c], feats[rate_c] = n, (upt[hi] - upt[lo]) / max(n, 1.0)
    feats["terminal_count_recent_1d"] = float(first_at(0, t_ts) - first_at(DAY_S, t_ts))
    return feats


def _customer_features(reference: Rows, queries: Rows, fraud: np.ndarray, late: np.ndarray | None,
                       r_cust: np.ndarray, q_cust: np.ndarray, width: int, marks: np.ndarray
                       ) -> dict[str, np.ndarray]:
    """Per customer (card): windows of its own past amounts, its amount habit and its label history."""
    q_ts, amount = queries.ts, queries.amount
    nq = len(q_ts)
    feats: dict[str, np.ndarray] = {}
    # Sums of amounts shifted by each card's own mean: a variance taken as E[x^2] - E[x]^2 of raw amounts loses
    # ~1e-10 on a card whose amounts barely vary (a 7-day std of 0.02 on amounts near 94 came out 1e-9 apart in
    # the two modes); around the card's mean the same sums keep ~1e-16 of the spread, whichever rows each mode has.
    centre = (np.bincount(r_cust, weights=reference.amount, minlength=width)
              / np.maximum(np.bincount(r_cust, minlength=width), 1))
    cust = _Index(r_cust, reference.ts, q_cust, width)
    amounts, frauds = reference.amount[cust.order], fraud[cust.order]
    shifted = amounts - centre[cust.key]
    cust.add_sums(shifted, shifted ** 2, frauds)
    # Every bound with one search: row i of ``at`` is the first row at or after ``q_ts - marks[i]`` (see _marks):
    # the windows, then the card's label history (it ends label_delay_days back).
    at = cust.first_at(q_cust, q_ts, marks)
    lo, hi, now, burst, horizon = at[:_K + 1], at[_CUSTOMER_ENDS], at[_K + 1], at[_K + 3], at[_K + 4]
    n = np.subtract(hi, lo, dtype=np.float64)
    sums = cust.window_sums(lo, hi)
    count = np.maximum(n[:_K], 1.0)
    offset = sums[:_K, :, 0] / count  # the window's mean minus the card's centre (0 where empty)
    mean = np.where(n[:_K] > 0, centre[q_cust] + offset, 0.0)
    var = sums[:_K, :, 1] / count - offset ** 2
    # Running sums leave ~1e-12 of noise in a variance; below that it is zero (sqrt would magnify it).
    std = np.sqrt(var, out=np.zeros_like(var), where=(n[:_K] >= 2) & (var > 1e-10 * np.maximum(mean ** 2, 1.0)))
    for i, names in enumerate(_CUSTOMER_COLUMNS):
        feats |= zip(names, (n[i], mean[i], std[i]), strict=True)
    mean_long, std_long = mean[_LONGEST], std[_LONGEST]
    feats["amount_to_customer_mean"] = np.divide(amount, mean_long, out=np.full(nq, NO_HISTORY), where=mean_long > 0)
    # Like every other feature, the previous transaction is looked for within the lookback only: what a store
    # holding the last lookback_days returns, whatever longer history a batch run happens to have.
    feats["seconds_since_previous"] = np.where(now > horizon, q_ts - cust.ts_pad[now - 1], NO_HISTORY)
    feats["customer_count_burst"] = np.subtract(now, burst, dtype=np.float64)

    # Amount against the card's habit: z-score against its 30-day mean and deviation, ratio to its 30-day max.
    # The deviation is floored at 1% of the card's mean: a card whose amounts barely vary (a subscription) would
    # otherwise divide by a near-zero std, whose last digits differ between the two modes (z = 489 +- 1e-9).
    spread = np.maximum(std_long, Z_FLOOR_SHARE * np.abs(mean_long))
    feats["amount_zscore_30d"] = np.divide(amount - mean_long, spread, out=np.zeros(nq), where=spread > 0)
    long_max = _window_max(amounts, lo[_LONGEST], now)
    feats["amount_to_customer_max_30d"] = np.divide(amount, long_max, out=np.full(nq, NO_HISTORY),
                                                    where=long_max > 0)
    # The card's own label history: its transactions of the longest window ending label_delay_days back (labels
    # younger than the delay are never read), less the late frauds whose label has not arrived by the query.
    # Frauds are whole numbers, so their running sums and the difference are exact.
    known, sure = sums[_K, :, 2], frauds > 0
    latest_late = None
    if late is not None:
        late = late[cust.order]
        late_pos = np.flatnonzero(late)
        query, pos, unknown = _unknown_in_windows(late_pos, reference.label_at[cust.order[late_pos]], lo[_K],
                                                  hi[_K], q_ts)
        known = known - np.bincount(query, weights=unknown, minlength=nq)
        sure &= ~late  # frauds known at every query whose window holds them
        latest_late = np.full(nq, -1)
        np.maximum.at(latest_late, query[~unknown], pos[~unknown])
    feats["card_known_frauds"] = known
    feats["card_known_fraud_rate"] = known / np.maximum(n[_K], 1.0)
    # The latest known fraud before each row (its position, -1 if none) is in the window if at or after its start.
    latest = np.maximum.accumulate(np.concatenate(([-1], np.where(sure, np.arange(cust.n), -1))))[hi[_K]]
    if latest_late is not None:
        latest = np.maximum(latest, latest_late)
    feats["card_days_since_known_fraud"] = np.where(latest >= lo[_K], (q_ts - cust.ts_pad[latest]) / DAY_S,
                                                    NO_HISTORY)
    return feats


def _new_to_customer(r_ts: np.ndarray, q_ts: np.ndarray, r_pair: np.ndarray, q_pair: np.ndarray, marks: np.ndarray
                     ) -> np.ndarray:
    """Whether each query's terminal is new to its customer (no row of the (customer, terminal) pair, one integer,
    in ``new_terminal_days``)."""
    width = 0
    if len(q_ts) > 1:  # renumbered densely (key * 2**33 must fit in int64); one query's index only compares pairs
        uniques, pairs = np.unique(np.concatenate([r_pair, q_pair]), return_inverse=True)
        r_pair, q_pair, width = pairs[: len(r_ts)].astype(np.int64), pairs[len(r_ts):].astype(np.int64), len(uniques)
    at = _Index(r_pair, r_ts, q_pair, width).first_at(q_pair, q_ts, marks)
    return (at[0] == at[1]).astype(np.float64)


def _terminal_features(reference: Rows, queries: Rows, fraud: np.ndarray, late: np.ndarray | None,
                       r_term: np.ndarray, q_term: np.ndarray, width: int, marks: np.ndarray
                       ) -> dict[str, np.ndarray]:
    """Per terminal: known fraud rates (the label delay and the labels' arrival honoured) and the count of the last
    day."""
    feats: dict[str, np.ndarray] = {}
    term = _Index(r_term, reference.ts, q_term, width)
    term.add_sums(fraud[term.order])
    # Row i of ``at``: the first row at or after ``q_ts - marks[i]``; the fraud windows end label_delay_days back.
    at = term.first_at(q_term, queries.ts, marks)
    k = len(TERMINAL_WINDOWS_DAYS)
    lo, hi = at[:k], at[_TERMINAL_ENDS]
    n = np.subtract(hi, lo, dtype=np.float64)
    frauds = term.window_sums(lo, hi)[..., 0]
    if late is not None:  # the windows share their end: the widest one holds every late fraud of the others
        late_pos = np.flatnonzero(late[term.order])
        widest = TERMINAL_WINDOWS_DAYS.index(max(TERMINAL_WINDOWS_DAYS))
        query, pos, unknown = _unknown_in_windows(late_pos, reference.label_at[term.order[late_pos]], lo[widest],
                                                  hi[widest], queries.ts)
        for i in range(k):
            frauds[i] -= np.bincount(query, weights=unknown & (pos >= lo[i][query]), minlength=len(queries.ts))
    rate = frauds / np.maximum(n, 1.0)  # 0 where empty
    for i, names in enumerate(_TERMINAL_COLUMNS):
        feats |= zip(names, (n[i], rate[i]), strict=True)
    feats["terminal_count_recent_1d"] = np.subtract(at[k + 1], at[k + 2], dtype=np.float64)
    return feats


def compute_features(reference: pd.DataFrame, queries: pd.DataFrame, p: FeatureParams) -> pd.DataFrame:
    """Features of ``queries`` from the past in ``reference`` (rows at or after a query's second are ignored).

    ``reference`` needs ``tx_datetime, customer_id, terminal_id, amount`` and ``is_fraud`` (missing or NaN
    labels count as not fraud), and may have ``label_available_at`` (missing or NaT: the default rule, see the
    module); ``queries`` needs the key columns and ``amount``. Returns the key columns,
    the features in :data:`FEATURE_COLUMNS` order and the label when ``queries`` has one, in query order.
    """
    hour, weekday = calendar(queries)
    return features_frame(queries, feature_values(Rows.from_frame(reference), Rows.from_frame(queries), hour, weekday,
                                                  p))


def calendar(queries: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """The UTC hour and weekday of each row's ``tx_datetime``."""
    when = _utc(queries["tx_datetime"])
    return when.dt.hour.to_numpy(), when.dt.weekday.to_numpy()


def features_frame(queries: pd.DataFrame, values: np.ndarray) -> pd.DataFrame:
    """The features frame of ``queries`` from their matrix (:data:`FEATURE_COLUMNS` order): the key columns, the
    features, and the label with its arrival time when ``queries`` has them, on ``queries``' index.

    The features are kept as float32, the precision every model reads them at (:func:`feature_matrix`): half the
    memory and the file size of float64, the same matrix for training and scoring. ``amount`` stays float64: it is
    the transaction's own amount, not a derived number, and what money metrics sum and what features rebuilt from a
    features frame read (``core.contract``). The definitions compute in float64 (:func:`feature_values`), so batch
    and online agree to 1e-9 before the rounding and at the stored precision after it: stored features compare with
    online ones cast to their dtype (``core.parity``).
    """
    features = pd.DataFrame(values.astype(np.float32), columns=FEATURE_COLUMNS)
    features[EXACT_FEATURES] = values[:, [FEATURE_COLUMNS.index(c) for c in EXACT_FEATURES]]
    out = pd.concat([queries[KEY_COLUMNS].reset_index(drop=True), features], axis=1)
    out.index = queries.index
    if LABEL in queries.columns:
        out[LABEL] = queries[LABEL].astype("int8").to_numpy()
        if LABEL_AVAILABLE_AT in queries.columns:  # when the label became known (training reads it by then)
            out[LABEL_AVAILABLE_AT] = _utc(queries[LABEL_AVAILABLE_AT])
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
    used, and nothing older than the lookback changes a feature. Labels are read by their ``label_available_at``
    where a frame has it (a frame without it follows the default rule, also next to one with it).
    """
    return compute_features(batch_reference(transactions, history), transactions, p)


def batch_reference(transactions: pd.DataFrame, history: pd.DataFrame | None) -> pd.DataFrame:
    """The past batch mode reads for ``transactions``: ``history``'s rows, then the month's own (the columns the
    features read)."""
    cols = ["tx_datetime", "customer_id", "terminal_id", "amount"]
    past = [h[cols + [c for c in (LABEL, LABEL_AVAILABLE_AT) if c in h.columns]] for h in (history, transactions)
            if h is not None and len(h)]
    return pd.concat(past, ignore_index=True) if past else transactions.iloc[0:0]


class BatchBuild(Protocol):
    """How one month's batch features are built: :func:`build_features`, or an engine's own (same contract)."""

    def __call__(self, transactions: pd.DataFrame, p: FeatureParams, history: pd.DataFrame | None = None
                 ) -> pd.DataFrame: ...


def build_features_by_month(months: Mapping[str, pd.DataFrame], p: FeatureParams,
                            build: BatchBuild = build_features) -> dict[str, pd.DataFrame]:
    """Batch mode over consecutive months (``YYYY-MM`` keys): each month with the :func:`history_months` before it
    as history, as the asset graph and ``dvc repro`` compute them."""
    ordered = sorted(months)
    k = history_months(p)
    out: dict[str, pd.DataFrame] = {}
    for i, month in enumerate(ordered):
        earlier = [months[m] for m in ordered[max(0, i - k):i] if len(months[m])]
        out[month] = build(months[month], p, history=pd.concat(earlier, ignore_index=True) if earlier else None)
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
                    [str(tx["customer_id"]) for tx in transactions], [str(tx["terminal_id"]) for tx in transactions],
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
