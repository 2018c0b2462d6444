"""A deterministic simulator of card transactions with injected fraud, in the canonical schema.

Customers have a spending profile and a handful of usual terminals; transactions follow a daily
rhythm. Two fraud patterns are injected:

* ``large_amount``: a transaction whose amount is above ``large_amount_threshold`` (legit amounts are
  kept below it), so the simulator's own fraud probability for it is 1;
* ``compromised_card``: for some days a card is in a fraudster's hands, and a share of its
  transactions are fraud with inflated amounts. The simulator's probability for every transaction in
  the window is that share.

``fraud_probability`` is the simulator's own probability that the row is fraud given its latent state
(an oracle to compare a model against); ``fraud_scenario`` names the pattern. Neither is a feature.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from fraud_assets.core.months import month_bounds, month_range
from fraud_assets.params import DataParams

CANONICAL_COLUMNS = ["transaction_id", "tx_datetime", "customer_id", "terminal_id", "amount", "is_fraud"]
ORACLE_COLUMNS = ["fraud_scenario", "fraud_probability"]
LEGIT = "legit"


@dataclass(frozen=True)
class Population:
    """Customer profiles, fixed by the seed and shared by every month."""

    mean_amount: np.ndarray
    std_amount: np.ndarray
    tx_per_day: np.ndarray
    terminals: np.ndarray  # shape (n_customers, terminals_per_customer)


def make_population(p: DataParams) -> Population:
    """Draw the customer population from ``p.seed``."""
    rng = np.random.default_rng([p.seed, 0])
    n = p.n_customers
    mean_amount = rng.uniform(5, 100, n)
    return Population(
        mean_amount=mean_amount,
        std_amount=mean_amount / 2,
        tx_per_day=rng.uniform(0, 2 * p.mean_tx_per_day, n),
        terminals=rng.integers(0, p.n_terminals, size=(n, p.terminals_per_customer)),
    )


def _month_index(p: DataParams, month: str) -> int:
    return (pd.Period(month, freq="M") - pd.Period(p.start_month, freq="M")).n


def simulate_month(p: DataParams, month: str, population: Population | None = None) -> pd.DataFrame:
    """Simulate one calendar month of transactions; the same params and month give the same frame."""
    pop = population or make_population(p)
    idx = _month_index(p, month)
    rng = np.random.default_rng([p.seed, 1, idx + 10_000])
    start, end = month_bounds(month)
    days = (end - start).days
    n_cust = len(pop.mean_amount)

    counts = rng.poisson(pop.tx_per_day * days)
    cust = np.repeat(np.arange(n_cust), counts)
    n = len(cust)
    day = rng.integers(0, days, n)
    # Daily rhythm: most spending in the day, centred on 14:00, a tail through the night.
    seconds_of_day = np.clip(rng.normal(14 * 3600, 4.5 * 3600, n), 0, 86_399).astype(np.int64)
    ts = start.value + (day.astype(np.int64) * 86_400 + seconds_of_day) * 1_000_000_000
    amount = np.abs(rng.normal(pop.mean_amount[cust], pop.std_amount[cust]))
    terminal = pop.terminals[cust, rng.integers(0, pop.terminals.shape[1], n)]

    f = p.fraud
    amount = np.minimum(amount, f.large_amount_threshold * 0.99)
    scenario = np.full(n, LEGIT, dtype=object)
    prob = np.zeros(n)
    is_fraud = np.zeros(n, dtype=np.int8)

    # Compromised cards: a window of days per card, a share of its transactions fraudulent.
    n_cards = rng.poisson(f.compromised_cards_per_day * days)
    cards = rng.choice(n_cust, size=min(n_cards, n_cust), replace=False)
    win_start = rng.integers(0, days, len(cards))
    in_window = np.zeros(n, dtype=bool)
    if len(cards):
        lookup = np.full(n_cust, -1)
        lookup[cards] = win_start
        s = lookup[cust]
        in_window = (s >= 0) & (day >= s) & (day < s + f.card_compromise_days)
    prob[in_window] = f.card_fraud_share
    card_fraud = in_window & (rng.random(n) < f.card_fraud_share)
    lo, hi = f.card_amount_multiplier
    amount = np.where(card_fraud, amount * rng.uniform(lo, hi, n), amount)
    scenario[card_fraud] = "compromised_card"
    is_fraud[card_fraud] = 1

    # Large amounts: always fraud, by the simulator's rule.
    large = ~card_fraud & (rng.random(n) < f.large_amount_rate)
    amount = np.where(large, rng.uniform(1.05, 5.0, n) * f.large_amount_threshold, amount)
    scenario[large] = "large_amount"
    prob[large] = 1.0
    is_fraud[large] = 1

    order = np.argsort(ts, kind="stable")
    tag = month.replace("-", "")
    frame = pd.DataFrame(
        {
            "transaction_id": [f"tx-{tag}-{i:07d}" for i in range(n)],
            "tx_datetime": pd.to_datetime(ts[order], utc=True),
            "customer_id": [f"C{c:06d}" for c in cust[order]],
            "terminal_id": [f"T{t:05d}" for t in terminal[order]],
            "amount": np.round(amount[order], 2),
            "is_fraud": is_fraud[order],
            "fraud_scenario": scenario[order],
            "fraud_probability": prob[order],
        }
    )
    return frame


def simulate_months(p: DataParams, start: str, months: int) -> dict[str, pd.DataFrame]:
    """Simulate ``months`` consecutive months from ``start``; keys are ``YYYY-MM``."""
    pop = make_population(p)
    return {m: simulate_month(p, m, pop) for m in month_range(start, months)}
