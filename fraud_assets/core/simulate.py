"""A deterministic simulator of card transactions with injected fraud, in the canonical schema.

Customers and terminals live on a square; a customer shops at the terminals within
``terminal_radius`` of home (its usual terminals), with its own spending profile (mean and std of
the amount, transactions a day). Volume follows a daily rhythm (a wrapped normal around
``hour_peak``) and a weekly one (``weekend_volume_factor``), and drifts month to month
(``monthly_volume_growth``, ``monthly_amount_drift``). Four fraud patterns, named in ``fraud_scenario``:

* ``large_amount``: a transaction above ``large_amount_threshold`` (legit amounts stay below it);
* ``compromised_terminal``: every transaction at a compromised terminal is fraud for
  ``terminal_compromise_days`` days;
* ``compromised_card``: for ``card_compromise_days`` days a share of a card's transactions are fraud,
  with inflated amounts;
* ``card_testing`` (from ``card_testing_start_month``: concept drift): bursts of small transactions,
  minutes apart, at terminals new to the customer.

``fraud_probability`` is the simulator's own probability that a row is fraud given its latent state (an
oracle to compare a model against). Neither oracle column is a feature. Compromise events are drawn per
calendar day from the seed, so a window that starts in one month goes on in the next, and each month is
still simulated on its own: the same params and month give byte-identical snapshots.

Labels arrive late: every row's ``label_available_at`` is its transaction time plus a delay drawn from
``label_delay_cdf`` (:func:`label_delay_seconds`), from a random stream of its own, so the other columns are
those of a simulator without it. Fraud and legit rows draw from the same distribution: a bank learns that a
transaction was legit when no chargeback came, which takes about as long as learning that it was not.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from fraud_assets.core.months import month_bounds, month_range
from fraud_assets.params import DataParams
from fraud_assets.schemas import LABEL_AVAILABLE_AT

ORACLE_COLUMNS = ["fraud_scenario", "fraud_probability"]
LEGIT = "legit"
SCENARIOS = (LEGIT, "large_amount", "compromised_terminal", "compromised_card", "card_testing")
DAY_S = 86_400
NS = 1_000_000_000
_CHUNK = 4096  # customers per block when finding usual terminals (bounds the distance matrix)


@dataclass(frozen=True)
class Population:
    """Customers, terminals and who shops where; fixed by the seed and shared by every month."""

    customer_xy: np.ndarray  # (n_customers, 2)
    terminal_xy: np.ndarray  # (n_terminals, 2)
    mean_amount: np.ndarray
    std_amount: np.ndarray
    tx_per_day: np.ndarray
    usual_ptr: np.ndarray  # CSR: customer c shops at usual_idx[usual_ptr[c]:usual_ptr[c + 1]]
    usual_idx: np.ndarray
    customer_ids: np.ndarray  # object arrays of the string ids, indexed by number
    terminal_ids: np.ndarray

    def usual_pair_keys(self) -> np.ndarray:
        """Sorted ``customer * n_terminals + terminal`` keys of every usual (customer, terminal) pair."""
        cust = np.repeat(np.arange(len(self.mean_amount)), np.diff(self.usual_ptr))
        return np.sort(cust.astype(np.int64) * len(self.terminal_xy) + self.usual_idx)


def make_population(p: DataParams) -> Population:
    """Draw customers and terminals from ``p.seed``; every customer has at least its nearest terminal."""
    rng = np.random.default_rng([p.seed, 0])
    n = p.n_customers
    customer_xy = rng.uniform(0, p.area_size, (n, 2))
    terminal_xy = rng.uniform(0, p.area_size, (p.n_terminals, 2))
    lo, hi = p.amount_mean_range
    mean_amount = rng.uniform(lo, hi, n)
    tx_per_day = rng.uniform(0, 2 * p.mean_tx_per_day, n)
    ptr, idx = _usual_terminals(customer_xy, terminal_xy, p.terminal_radius)
    return Population(
        customer_xy=customer_xy, terminal_xy=terminal_xy, mean_amount=mean_amount, std_amount=mean_amount / 2,
        tx_per_day=tx_per_day, usual_ptr=ptr, usual_idx=idx,
        customer_ids=np.array([f"C{c:06d}" for c in range(n)], dtype=object),
        terminal_ids=np.array([f"T{t:05d}" for t in range(p.n_terminals)], dtype=object),
    )


def _usual_terminals(cxy: np.ndarray, txy: np.ndarray, radius: float) -> tuple[np.ndarray, np.ndarray]:
    """CSR of the terminals within ``radius`` of each customer (the nearest one when none is).

    Terminals are bucketed in square cells of side ``radius``; only the 3 x 3 cells around a customer
    are compared, so the cost grows with the pairs found, not with customers x terminals.
    """
    n_cust = len(cxy)
    ccell, tcell = np.floor(cxy / radius).astype(np.int64), np.floor(txy / radius).astype(np.int64)
    width = int(max(ccell.max(initial=0), tcell.max(initial=0))) + 3
    tkey = (tcell[:, 0] + 1) * width + tcell[:, 1] + 1
    order = np.argsort(tkey, kind="stable")
    sorted_key = tkey[order]
    custs, terms = [], []
    for dx in (-1, 0, 1):
        for dy in (-1, 0, 1):
            key = (ccell[:, 0] + 1 + dx) * width + ccell[:, 1] + 1 + dy
            lo, hi = np.searchsorted(sorted_key, key, "left"), np.searchsorted(sorted_key, key, "right")
            cnt = hi - lo
            c = np.repeat(np.arange(n_cust), cnt)
            t = order[np.repeat(lo, cnt) + np.arange(cnt.sum()) - np.repeat(np.cumsum(cnt) - cnt, cnt)]
            near = ((cxy[c] - txy[t]) ** 2).sum(axis=1) <= radius * radius
            custs.append(c[near])
            terms.append(t[near])
    cust, term = np.concatenate(custs), np.concatenate(terms)
    lonely = np.setdiff1d(np.arange(n_cust), cust)
    for lo in range(0, len(lonely), _CHUNK):  # nobody within the radius: the nearest terminal
        block = lonely[lo:lo + _CHUNK]
        d2 = ((cxy[block, None, :] - txy[None, :, :]) ** 2).sum(axis=2)
        cust, term = np.concatenate([cust, block]), np.concatenate([term, d2.argmin(axis=1)])
    pair = np.lexsort((term, cust))
    cust, term = cust[pair], term[pair]
    ptr = np.concatenate([[0], np.cumsum(np.bincount(cust, minlength=n_cust))]).astype(np.int64)
    return ptr, term.astype(np.int64)


def label_delay_seconds(cdf: Sequence[tuple[float, float]], u: np.ndarray) -> np.ndarray:
    """Label delays in whole seconds (floored) at the quantiles ``u`` (in ``[0, 1)``) of ``cdf``, the piecewise
    linear ``[[days, share known], ...]`` of ``data.label_delay_cdf`` (shares from 0 to exactly 1, validated)."""
    days, shares = np.array([d for d, _ in cdf], np.float64), np.array([s for _, s in cdf], np.float64)
    i = np.clip(np.searchsorted(shares, u, side="right"), 1, len(shares) - 1)  # shares[i - 1] <= u < shares[i]
    frac = (u - shares[i - 1]) / (shares[i] - shares[i - 1])
    return np.floor((days[i - 1] + frac * (days[i] - days[i - 1])) * DAY_S).astype(np.int64)


def _month_index(p: DataParams, month: str) -> int:
    return (pd.Period(month, freq="M") - pd.Period(p.start_month, freq="M")).n


def _events(seed: int, kind: int, first_day: int, last_day: int, rate: float, population: int
            ) -> tuple[np.ndarray, np.ndarray]:
    """Compromise events started on absolute days ``[first_day, last_day)``: (start day, entity) arrays."""
    days, who = [], []
    for d in range(first_day, last_day):
        rng = np.random.default_rng([seed, kind, d])
        k = rng.poisson(rate * population)
        days.append(np.full(k, d, dtype=np.int64))
        who.append(rng.integers(0, population, k))
    return np.concatenate(days), np.concatenate(who)


def _in_windows(entity: np.ndarray, abs_day: np.ndarray, ev_day: np.ndarray, ev_who: np.ndarray,
                length: int) -> np.ndarray:
    """Per transaction: the start day of the latest event window covering it for its entity, else -1."""
    hit = np.full(len(entity), -1, dtype=np.int64)
    if not len(ev_day):
        return hit
    order = np.argsort(entity, kind="stable")
    sorted_entity = entity[order]
    lo = np.searchsorted(sorted_entity, ev_who, side="left")
    hi = np.searchsorted(sorted_entity, ev_who, side="right")
    for start, a, b in zip(ev_day, lo, hi, strict=True):
        rows = order[a:b]
        inside = rows[(abs_day[rows] >= start) & (abs_day[rows] < start + length)]
        hit[inside] = np.maximum(hit[inside], start)
    return hit


def simulate_month(p: DataParams, month: str, population: Population | None = None) -> pd.DataFrame:
    """Simulate one calendar month of transactions; the same params and month give the same frame."""
    pop = population or make_population(p)
    m = _month_index(p, month)
    rng = np.random.default_rng([p.seed, 1, m + 10_000])
    start, end = month_bounds(month)
    days = (end - start).days
    day0 = start.value // (DAY_S * NS)  # absolute day number of the 1st
    n_cust, n_term = len(pop.mean_amount), len(pop.terminal_xy)
    f = p.fraud

    # Legit volume: Poisson per customer and day, weekly rhythm, monthly growth.
    weekday = (np.arange(days) + start.weekday()) % 7
    day_factor = np.where(weekday >= 5, p.weekend_volume_factor, 1.0) * (1 + p.monthly_volume_growth) ** m
    counts = rng.poisson(pop.tx_per_day[:, None] * day_factor[None, :])
    cust = np.repeat(np.repeat(np.arange(n_cust), days), counts.ravel())
    day = np.repeat(np.tile(np.arange(days), n_cust), counts.ravel())
    n = len(cust)
    sod = np.mod(rng.normal(p.hour_peak * 3600, p.hour_spread * 3600, n), DAY_S).astype(np.int64)
    ts = start.value + (day * DAY_S + sod) * NS
    amount = np.abs(rng.normal(pop.mean_amount[cust], pop.std_amount[cust])) * (1 + p.monthly_amount_drift) ** m
    amount = np.minimum(amount, f.large_amount_threshold * 0.99)
    deg = np.diff(pop.usual_ptr)
    terminal = pop.usual_idx[pop.usual_ptr[cust] + (rng.random(n) * deg[cust]).astype(np.int64)]

    scenario = np.zeros(n, dtype=np.int8)  # index into SCENARIOS
    prob = np.zeros(n)
    abs_day = day0 + day

    # Compromised cards: a share of the card's transactions in the window are fraud, amounts inflated.
    c_day, c_who = _events(p.seed, 3, day0 - f.card_compromise_days + 1, day0 + days, f.card_compromise_rate, n_cust)
    card_window = _in_windows(cust, abs_day, c_day, c_who, f.card_compromise_days) >= 0
    prob[card_window] = f.card_fraud_share
    card_fraud = card_window & (rng.random(n) < f.card_fraud_share)
    amount = np.where(card_fraud, amount * rng.uniform(*f.card_amount_multiplier, n), amount)
    scenario[card_fraud] = SCENARIOS.index("compromised_card")

    # Large amounts: always fraud, by the simulator's rule.
    large = ~card_fraud & (rng.random(n) < f.large_amount_rate)
    amount = np.where(large, rng.uniform(1.05, 5.0, n) * f.large_amount_threshold, amount)
    scenario[large] = SCENARIOS.index("large_amount")
    prob[large] = 1.0

    # Compromised terminals: every transaction there is fraud during the window (overrides the others).
    t_day, t_who = _events(p.seed, 2, day0 - f.terminal_compromise_days + 1, day0 + days,
                           f.terminal_compromise_rate, n_term)
    at_bad_terminal = _in_windows(terminal, abs_day, t_day, t_who, f.terminal_compromise_days) >= 0
    scenario[at_bad_terminal] = SCENARIOS.index("compromised_terminal")
    prob[at_bad_terminal] = 1.0

    parts = {"cust": cust, "terminal": terminal, "ts": ts, "amount": amount, "scenario": scenario, "prob": prob}
    if month >= f.card_testing_start_month:
        parts = {k: np.concatenate([v, w]) for (k, v), w in
                 zip(parts.items(), _card_testing(p, pop, start, days, day0).values(), strict=True)}
    delay_rng = np.random.default_rng([p.seed, 6, m + 10_000])  # its own stream: the columns above stay as they were
    parts["delay_s"] = label_delay_seconds(p.label_delay_cdf, delay_rng.random(len(parts["ts"])))
    return _frame(month, parts, pop)


def _card_testing(p: DataParams, pop: Population, start: pd.Timestamp, days: int, day0: int
                  ) -> dict[str, np.ndarray]:
    """Bursts of small transactions, minutes apart, each at a terminal the customer never uses."""
    f = p.fraud
    n_cust, n_term = len(pop.mean_amount), len(pop.terminal_xy)
    b_day, b_who = _events(p.seed, 4, day0, day0 + days, f.card_testing_rate, n_cust)
    rng = np.random.default_rng([p.seed, 5, day0])
    size = rng.integers(f.card_testing_burst[0], f.card_testing_burst[1] + 1, len(b_day))
    cust = np.repeat(b_who, size)
    n = len(cust)
    gap_s = rng.uniform(*f.card_testing_gap_minutes, n) * 60
    first = np.cumsum(size) - size
    gap_s[first] = 0.0  # the burst's first transaction starts it
    elapsed = np.cumsum(gap_s)
    offset = elapsed - np.repeat(elapsed[first], size)
    span = f.card_testing_burst[1] * f.card_testing_gap_minutes[1] * 60
    burst_start = rng.uniform(0, max(DAY_S - span - 1, 0), len(b_day))
    sec = np.repeat((b_day - day0) * DAY_S + burst_start, size) + offset
    ts = start.value + (sec * NS).astype(np.int64)
    terminal = rng.integers(0, n_term, n)
    usual = pop.usual_pair_keys()
    for _ in range(n_term):  # move each clash to the next terminal until none is usual for its customer
        key = cust * n_term + terminal
        pos = np.minimum(np.searchsorted(usual, key), len(usual) - 1)
        clash = usual[pos] == key if len(usual) else np.zeros(n, dtype=bool)
        if not clash.any():
            break
        terminal = np.where(clash, (terminal + 1) % n_term, terminal)
    return {"cust": cust, "terminal": terminal, "ts": ts, "amount": rng.uniform(*f.card_testing_amount, n),
            "scenario": np.full(n, SCENARIOS.index("card_testing"), dtype=np.int8), "prob": np.ones(n)}


def _frame(month: str, parts: dict[str, np.ndarray], pop: Population) -> pd.DataFrame:
    """The canonical frame, sorted by time (stable, so ties keep generation order), ids numbered in order."""
    order = np.argsort(parts["ts"], kind="stable")
    n = len(order)
    scenario = parts["scenario"][order]
    ts = parts["ts"][order]
    return pd.DataFrame({
        "transaction_id": _ids(f"tx-{month.replace('-', '')}-", n),
        "tx_datetime": pd.to_datetime(ts, utc=True),
        "customer_id": pop.customer_ids[parts["cust"][order]],
        "terminal_id": pop.terminal_ids[parts["terminal"][order]],
        "amount": np.round(parts["amount"][order], 2),
        "is_fraud": (scenario > 0).astype(np.int8),
        LABEL_AVAILABLE_AT: pd.to_datetime(ts + parts["delay_s"][order] * NS, utc=True),
        "fraud_scenario": np.array(SCENARIOS, dtype=object)[scenario],
        "fraud_probability": parts["prob"][order],
    })


def _ids(prefix: str, n: int) -> np.ndarray:
    """``prefix`` + a 7-digit running number for ``n`` rows."""
    if n >= 10_000_000:
        raise ValueError(f"{n} transactions in a month: ids have 7 digits")
    return np.char.add(prefix, np.char.zfill(np.arange(n).astype("U7"), 7)).astype(object)


def iter_months(p: DataParams, start: str, months: int, progress: Callable[[str], None] | None = None
                ) -> Iterator[tuple[str, pd.DataFrame]]:
    """Yield ``(month, frame)`` for ``months`` consecutive months from ``start``, one at a time."""
    pop = make_population(p)
    for month in month_range(start, months):
        frame = simulate_month(p, month, pop)
        if progress is not None:
            progress(f"{month}: {len(frame)} transactions")
        yield month, frame


def simulate_months(p: DataParams, start: str, months: int, progress: Callable[[str], None] | None = None
                    ) -> dict[str, pd.DataFrame]:
    """Simulate ``months`` consecutive months from ``start``; keys are ``YYYY-MM``."""
    return dict(iter_months(p, start, months, progress))
