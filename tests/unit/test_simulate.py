"""The simulator: determinism, population, rhythms, drift, and the signature of every fraud scenario."""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from fraud_assets.cli.main import app
from fraud_assets.core.lineage import file_md5
from fraud_assets.core.months import month_bounds
from fraud_assets.core.simulate import (
    ORACLE_COLUMNS,
    SCENARIOS,
    label_delay_seconds,
    make_population,
    simulate_month,
    simulate_months,
)
from fraud_assets.params import DataParams, load_params
from fraud_assets.schemas import LABEL_AVAILABLE_AT, REQUIRED_COLUMNS

P = load_params()


def _data(fraud: dict | None = None, **over: object) -> DataParams:
    """Default data params with overrides; small enough to simulate in a blink."""
    base = {"n_customers": 600, "n_terminals": 400, "terminal_radius": 8.0, **over}
    return P.data.model_copy(update={**base, "fraud": P.data.fraud.model_copy(update=fraud or {})})


# Every pattern switched on hard, so each one shows up plenty in a few months.
LOUD = _data(fraud={"terminal_compromise_rate": 0.002, "card_compromise_rate": 0.004,
                    "card_testing_start_month": "2025-02", "card_testing_rate": 0.002})


@pytest.fixture(scope="module")
def loud() -> dict[str, pd.DataFrame]:
    return simulate_months(LOUD, "2025-01", 3)


def _parquet_bytes(frame: pd.DataFrame) -> bytes:
    buf = io.BytesIO()
    frame.to_parquet(buf, index=False)
    return buf.getvalue()


def test_same_params_and_month_give_byte_identical_parquet() -> None:
    a = _parquet_bytes(simulate_month(LOUD, "2025-02"))
    b = _parquet_bytes(simulate_months(LOUD, "2025-01", 2)["2025-02"])  # shared population, other path
    assert a == b
    other_seed = _parquet_bytes(simulate_month(LOUD.model_copy(update={"seed": 7}), "2025-02"))
    assert other_seed != a


def test_canonical_and_oracle_columns_sorted_ids(loud: dict[str, pd.DataFrame]) -> None:
    frame = loud["2025-02"]
    assert list(frame.columns) == [*REQUIRED_COLUMNS, LABEL_AVAILABLE_AT, *ORACLE_COLUMNS]
    assert frame["transaction_id"].str.fullmatch(r"tx-202502-\d{7}").all()
    assert frame["transaction_id"].is_monotonic_increasing and frame["tx_datetime"].is_monotonic_increasing
    start, end = month_bounds("2025-02")
    assert frame["tx_datetime"].between(start, end, inclusive="left").all()
    assert set(frame["fraud_scenario"]) <= set(SCENARIOS)
    assert frame["fraud_probability"].between(0, 1).all()
    assert (frame["is_fraud"] == (frame["fraud_scenario"] != "legit")).all()
    ids = pd.concat([f["transaction_id"] for f in loud.values()])
    assert ids.is_unique


def _share_within(delay_s: np.ndarray, days: float) -> float:
    return float(np.mean(delay_s <= days * 86_400))


def test_label_delays_follow_the_cdf_of_the_params() -> None:
    frame = simulate_month(P.data, "2025-03")  # the default population: about 22,000 rows
    assert len(frame) >= 20_000
    delay_s = (frame[LABEL_AVAILABLE_AT] - frame["tx_datetime"]).dt.total_seconds().to_numpy()
    assert str(frame[LABEL_AVAILABLE_AT].dtype) == "datetime64[ns, UTC]"
    assert delay_s.min() >= 0 and delay_s.max() <= 60 * 86_400  # never before the transaction, all within 60 days
    for days, share in P.data.label_delay_cdf:  # [[0, 0], [7, 0.5], [30, 0.9], [60, 1]]: within 2 points
        assert abs(_share_within(delay_s, days) - share) <= 0.02, (days, share, _share_within(delay_s, days))
    assert abs(_share_within(delay_s, 18.5) - 0.7) <= 0.02  # linear between the points
    fraud = frame["is_fraud"].to_numpy() == 1  # the same distribution for frauds
    assert abs(_share_within(delay_s[fraud], 30) - 0.9) <= 0.1


def test_a_label_delay_cdf_with_a_minimum_and_a_gap() -> None:
    u = np.random.default_rng(0).random(20_000)
    late = label_delay_seconds([(2, 0.0), (3, 1.0)], u)
    assert late.min() >= 2 * 86_400 and late.max() < 3 * 86_400 and late.dtype == np.int64
    gap = label_delay_seconds([(0, 0.0), (1, 0.5), (5, 0.5), (6, 1.0)], u)  # nothing arrives between days 1 and 5
    assert not ((gap > 86_400) & (gap < 5 * 86_400)).any() and abs(_share_within(gap, 1) - 0.5) <= 0.02
    assert label_delay_seconds([(0, 0.0), (7, 1.0)], np.array([0.0, 0.5])).tolist() == [0, 302_400]


def test_label_arrivals_are_drawn_on_their_own_and_leave_the_other_columns_alone() -> None:
    a = simulate_month(LOUD, "2025-02")
    slower = simulate_month(LOUD.model_copy(update={"label_delay_cdf": ((0, 0.0), (90, 1.0))}), "2025-02")
    pd.testing.assert_frame_equal(a.drop(columns=LABEL_AVAILABLE_AT), slower.drop(columns=LABEL_AVAILABLE_AT))
    assert (slower[LABEL_AVAILABLE_AT] - slower["tx_datetime"]).max() > pd.Timedelta(days=60)


def test_population_customers_shop_near_home() -> None:
    p = _data()
    pop = make_population(p)
    deg = np.diff(pop.usual_ptr)
    assert (deg >= 1).all() and 3 < deg.mean() < 20
    for c in range(0, p.n_customers, 50):
        terms = pop.usual_idx[pop.usual_ptr[c]:pop.usual_ptr[c + 1]]
        dist = np.hypot(*(pop.terminal_xy[terms] - pop.customer_xy[c]).T)
        assert (dist <= p.terminal_radius).all() or len(terms) == 1


def test_customers_use_only_their_usual_terminals_when_legit(loud: dict[str, pd.DataFrame]) -> None:
    pop = make_population(LOUD)
    frame = loud["2025-01"]
    legit = frame[frame["fraud_scenario"] == "legit"]
    cust = legit["customer_id"].str[1:].astype(int).to_numpy()
    term = legit["terminal_id"].str[1:].astype(int).to_numpy()
    keys = pop.usual_pair_keys()
    assert np.isin(cust * LOUD.n_terminals + term, keys).all()


def test_daily_and_weekly_rhythm() -> None:
    frame = simulate_month(_data(n_customers=1500), "2025-03")
    hours = frame["tx_datetime"].dt.hour.value_counts()
    assert hours[14] > 5 * hours[3]
    per_day = frame.groupby(frame["tx_datetime"].dt.date).size()
    weekend = pd.to_datetime(pd.Series(per_day.index)).dt.weekday.ge(5).to_numpy()
    assert per_day[~weekend].mean() > 1.2 * per_day[weekend].mean()


def test_drift_month_six_has_more_volume_and_larger_amounts() -> None:
    frames = simulate_months(_data(n_customers=1500), "2025-01", 6)
    first, last = frames["2025-01"], frames["2025-06"]
    per_day = [len(f) / f["tx_datetime"].dt.day.max() for f in (first, last)]
    assert per_day[1] > 1.08 * per_day[0]
    legit = [f.loc[f["fraud_scenario"] == "legit", "amount"].mean() for f in (first, last)]
    assert legit[1] > 1.05 * legit[0]


def test_large_amounts_are_above_the_threshold_and_legit_below(loud: dict[str, pd.DataFrame]) -> None:
    frame = pd.concat(loud.values())
    threshold = LOUD.fraud.large_amount_threshold
    large = frame[frame["fraud_scenario"] == "large_amount"]
    assert len(large) > 10
    assert (large["amount"] > threshold).all() and (large["fraud_probability"] == 1.0).all()
    assert (frame.loc[frame["is_fraud"] == 0, "amount"] < threshold).all()


def test_compromised_terminal_frauds_everything_there_within_its_window(loud: dict[str, pd.DataFrame]) -> None:
    frame = pd.concat(loud.values(), ignore_index=True)
    bad = frame[frame["fraud_scenario"] == "compromised_terminal"]
    assert bad["terminal_id"].nunique() >= 3
    assert (bad["fraud_probability"] == 1.0).all()
    window = pd.Timedelta(days=LOUD.fraud.terminal_compromise_days)
    spans = bad.groupby("terminal_id")["tx_datetime"].agg(["min", "max"])
    single = spans[spans["max"] - spans["min"] < window]  # compromised once (a few are hit twice)
    assert len(single) >= 0.7 * len(spans)
    for terminal, (first, last) in single.iterrows():
        at = frame[(frame["terminal_id"] == terminal) & frame["tx_datetime"].between(first, last)]
        assert (at["is_fraud"] == 1).all(), terminal  # every transaction there in the window is fraud


def test_terminal_compromise_goes_on_into_the_next_month(loud: dict[str, pd.DataFrame]) -> None:
    def bad_terminals(frame: pd.DataFrame, days: range) -> set[str]:
        rows = frame[(frame["fraud_scenario"] == "compromised_terminal") & frame["tx_datetime"].dt.day.isin(days)]
        return set(rows["terminal_id"])

    assert bad_terminals(loud["2025-01"], range(25, 32)) & bad_terminals(loud["2025-02"], range(1, 8))


def test_compromised_card_frauds_share_and_inflated_amounts(loud: dict[str, pd.DataFrame]) -> None:
    frame = pd.concat(loud.values(), ignore_index=True)
    card = frame[frame["fraud_scenario"] == "compromised_card"]
    assert card["customer_id"].nunique() >= 10
    assert (card["fraud_probability"] == LOUD.fraud.card_fraud_share).all()
    window = pd.Timedelta(days=LOUD.fraud.card_compromise_days)
    spans = card.groupby("customer_id")["tx_datetime"].agg(lambda t: t.max() - t.min())
    assert (spans < window).mean() > 0.8  # frauds of a card fall in its window (a few cards are hit twice)
    in_window = frame[frame["fraud_probability"] == LOUD.fraud.card_fraud_share]
    share = in_window["is_fraud"].mean()
    assert abs(share - LOUD.fraud.card_fraud_share) < 0.1  # the share of the card's transactions in the window
    legit_mean = frame[frame["fraud_scenario"] == "legit"].groupby("customer_id")["amount"].mean()
    ratio = (card.groupby("customer_id")["amount"].mean() / legit_mean.reindex(card["customer_id"].unique()))
    assert ratio.median() > 1.8


def test_card_testing_only_from_its_start_month_small_new_terminals_minutes_apart(
        loud: dict[str, pd.DataFrame]) -> None:
    assert (loud["2025-01"]["fraud_scenario"] != "card_testing").all()
    frame = pd.concat(loud.values(), ignore_index=True)
    tests = frame[frame["fraud_scenario"] == "card_testing"].sort_values(["customer_id", "tx_datetime"])
    assert len(tests) > 30
    lo, hi = LOUD.fraud.card_testing_amount
    assert tests["amount"].between(lo, hi).all() and (tests["fraud_probability"] == 1.0).all()
    usual = set(zip(*[make_population(LOUD).usual_pair_keys() // LOUD.n_terminals,
                      make_population(LOUD).usual_pair_keys() % LOUD.n_terminals], strict=True))
    pairs = zip(tests["customer_id"].str[1:].astype(int), tests["terminal_id"].str[1:].astype(int), strict=True)
    assert not any(pair in usual for pair in pairs)
    gaps = tests.groupby("customer_id")["tx_datetime"].diff().dropna()
    in_burst = gaps[gaps < pd.Timedelta(hours=1)]
    assert len(in_burst) > 0.5 * len(gaps)
    assert (in_burst <= pd.Timedelta(minutes=LOUD.fraud.card_testing_gap_minutes[1] + 1e-3)).all()
    bursts = (tests.groupby("customer_id")["tx_datetime"].diff() > pd.Timedelta(hours=1)).cumsum()
    sizes = tests.groupby([tests["customer_id"], bursts]).size()
    assert sizes.max() <= LOUD.fraud.card_testing_burst[1] * 2  # two bursts of one card can touch
    assert sizes.median() >= LOUD.fraud.card_testing_burst[0]


def test_default_months_have_no_card_testing_and_a_small_fraud_rate() -> None:
    calls: list[str] = []
    frames = simulate_months(P.data, P.data.start_month, P.data.months, progress=calls.append)
    assert len(calls) == P.data.months and calls[0].startswith(P.data.start_month)
    for month, frame in frames.items():
        assert 15_000 < len(frame) < 35_000, month
        assert 0.004 < frame["is_fraud"].mean() < 0.02, month
        assert "card_testing" not in set(frame["fraud_scenario"]), month
    assert P.data.fraud.card_testing_start_month > max(frames)


def test_cli_simulate_writes_months_and_prints_a_summary_each(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                              ) -> None:
    params = load_params(overrides={"data.n_customers": 200}).write(tmp_path / "params.yaml")
    monkeypatch.setenv("FRAUD_PROJECT_ROOT", str(tmp_path))
    res = CliRunner().invoke(app, ["simulate", "--start", "2025-06", "--months", "2"])
    assert res.exit_code == 0, res.output
    data = tmp_path / load_params(params).data.dir
    for month in ("2025-06", "2025-07"):
        path = data / f"{month}.parquet"
        frame = pd.read_parquet(path)
        line = rf"^{month}\s+{len(frame)}\s+{100 * frame['is_fraud'].mean():.2f}%\s+0\s+{file_md5(path)}"
        assert re.search(line, res.output, re.MULTILINE), res.output
    assert "testing=" in res.output.splitlines()[-1] and "testing=" not in res.output.splitlines()[-2]
    assert not (tmp_path / "data.dvc").exists()  # --no-pin is the default
