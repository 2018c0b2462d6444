"""Features: known answers, a naive reference, batch/online parity, point-in-time and the label delay."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fraud_assets.core.features import (
    DAY_S,
    FEATURE_COLUMNS,
    NO_HISTORY,
    build_features,
    compute_features,
    online_features,
)
from fraud_assets.core.simulate import simulate_months
from fraud_assets.params import load_params

P = load_params()
F = P.features


def _tx(i: int, when: str, customer: str, terminal: str, amount: float, fraud: int = 0) -> dict:
    return {"transaction_id": f"t{i}", "tx_datetime": pd.Timestamp(when, tz="UTC"), "customer_id": customer,
            "terminal_id": terminal, "amount": amount, "is_fraud": fraud}


def test_known_answers() -> None:
    frame = pd.DataFrame([
        _tx(0, "2025-03-01 10:00", "A", "T1", 10.0),
        _tx(1, "2025-03-01 10:30", "A", "T1", 30.0),
        _tx(2, "2025-03-01 10:30", "B", "T1", 99.0, fraud=1),  # same second as t1: not "before" t1
        _tx(3, "2025-03-03 09:00", "A", "T2", 80.0),
    ])
    f = build_features(frame, F).set_index("transaction_id")
    assert f.loc["t0", "customer_count_1d"] == 0 and f.loc["t0", "seconds_since_previous"] == NO_HISTORY
    assert f.loc["t0", "terminal_new_to_customer"] == 1.0 and f.loc["t0", "amount_to_customer_mean"] == NO_HISTORY
    assert f.loc["t1", "customer_count_1d"] == 1 and f.loc["t1", "customer_mean_amount_1d"] == 10.0
    assert f.loc["t1", "seconds_since_previous"] == 1800 and f.loc["t1", "customer_count_burst"] == 1
    assert f.loc["t1", "terminal_new_to_customer"] == 0.0 and f.loc["t1", "amount_to_customer_mean"] == 3.0
    assert f.loc["t1", "terminal_count_recent_1d"] == 1  # t0 only: t2 is at the same second
    assert f.loc["t3", "customer_count_1d"] == 0 and f.loc["t3", "customer_count_7d"] == 2
    assert f.loc["t3", "customer_mean_amount_7d"] == 20.0 and f.loc["t3", "customer_std_amount_7d"] == 10.0
    assert f.loc["t3", "terminal_new_to_customer"] == 1.0 and f.loc["t3", "customer_count_burst"] == 0
    assert list(f.columns) == ["tx_datetime", "customer_id", "terminal_id", *FEATURE_COLUMNS, "is_fraud"]


def _naive(frame: pd.DataFrame) -> pd.DataFrame:
    """The definitions written the slow, obvious way (one row at a time)."""
    ts = (frame["tx_datetime"].astype("int64") // 10**9).to_numpy()
    rows = []
    d = F.label_delay_days * DAY_S
    for i in range(len(frame)):
        t, c, term = ts[i], frame["customer_id"].iat[i], frame["terminal_id"].iat[i]
        cust = (frame["customer_id"] == c).to_numpy() & (ts < t)
        r: dict[str, float] = {}
        for w in (1, 7, 30):
            a = frame["amount"].to_numpy()[cust & (ts >= t - w * DAY_S)]
            r[f"customer_count_{w}d"] = len(a)
            r[f"customer_mean_amount_{w}d"] = a.mean() if len(a) else 0.0
            r[f"customer_std_amount_{w}d"] = a.std() if len(a) else 0.0
        m30 = r["customer_mean_amount_30d"]
        r["amount_to_customer_mean"] = frame["amount"].iat[i] / m30 if m30 > 0 else NO_HISTORY
        r["seconds_since_previous"] = t - ts[cust].max() if cust.any() else NO_HISTORY
        r["customer_count_burst"] = int((cust & (ts >= t - F.burst_window_seconds)).sum())
        pair = cust & (frame["terminal_id"] == term).to_numpy() & (ts >= t - F.new_terminal_days * DAY_S)
        r["terminal_new_to_customer"] = float(not pair.any())
        at = (frame["terminal_id"] == term).to_numpy()
        for w in (1, 7, 30):
            win = at & (ts >= t - d - w * DAY_S) & (ts < t - d)
            r[f"terminal_count_{w}d"] = int(win.sum())
            r[f"terminal_fraud_rate_{w}d"] = frame["is_fraud"].to_numpy()[win].mean() if win.any() else 0.0
        r["terminal_count_recent_1d"] = int((at & (ts >= t - DAY_S) & (ts < t)).sum())
        r |= _naive_behaviour(frame, ts, i, cust, r)
        rows.append(r)
    return pd.DataFrame(rows)


def _naive_behaviour(frame: pd.DataFrame, ts: np.ndarray, i: int, cust: np.ndarray, base: dict[str, float]
                     ) -> dict[str, float]:
    """The behaviour groups (the card's label history, its amount habit), one row."""
    t, amount, fraud = ts[i], frame["amount"].to_numpy(), frame["is_fraud"].to_numpy()
    d = F.label_delay_days * DAY_S
    r: dict[str, float] = {}
    m30, s30 = base["customer_mean_amount_30d"], base["customer_std_amount_30d"]
    spread = max(s30, 0.01 * abs(m30))  # the deviation floored at 1% of the card's mean
    r["amount_zscore_30d"] = (amount[i] - m30) / spread if spread > 0 else 0.0
    last30 = cust & (ts >= t - 30 * DAY_S)
    r["amount_to_customer_max_30d"] = amount[i] / amount[last30].max() if last30.any() else NO_HISTORY
    known = cust & (ts >= t - d - 30 * DAY_S) & (ts < t - d)
    r["card_known_frauds"] = fraud[known].sum()
    r["card_known_fraud_rate"] = fraud[known].mean() if known.any() else 0.0
    r["card_days_since_known_fraud"] = ((t - ts[known & (fraud == 1)].max()) / DAY_S
                                        if (known & (fraud == 1)).any() else NO_HISTORY)
    return r


@pytest.fixture(scope="module")
def months() -> dict[str, pd.DataFrame]:
    data = P.data.model_copy(update={"n_customers": 150, "n_terminals": 60})
    return simulate_months(data, "2025-01", 2)


def test_batch_matches_the_naive_definitions(months: dict[str, pd.DataFrame]) -> None:
    frame = pd.concat(months.values(), ignore_index=True)
    batch = build_features(frame, F)
    naive = _naive(frame)
    assert set(naive.columns) == set(FEATURE_COLUMNS) - {"amount", "log_amount", "hour", "weekday", "is_night",
                                                         "is_weekend"}
    for col in naive.columns:
        gap = np.abs(batch[col].to_numpy() - naive[col].to_numpy()).max()
        assert gap <= 1e-9, f"{col}: batch differs from the naive definition by {gap}"


def test_online_replay_matches_batch(months: dict[str, pd.DataFrame]) -> None:
    history, month = months["2025-01"], months["2025-02"]
    batch = build_features(month, F, history=history).set_index("transaction_id")
    past = history
    for i, row in enumerate(month.head(300).to_dict("records")):
        incoming = {k: row[k] for k in ("transaction_id", "tx_datetime", "customer_id", "terminal_id", "amount")}
        online = online_features([incoming], F, history=past).iloc[0]
        expected = batch.loc[row["transaction_id"], FEATURE_COLUMNS].to_numpy(np.float64)
        gap = np.abs(online[FEATURE_COLUMNS].to_numpy(np.float64) - expected).max()
        assert gap <= 1e-9, f"row {i}: online differs from batch by {gap}"
        past = pd.concat([past, month.iloc[[i]]], ignore_index=True)


def test_later_transactions_change_no_earlier_feature(months: dict[str, pd.DataFrame]) -> None:
    month = months["2025-02"]
    cut = month["tx_datetime"].iloc[len(month) // 2]
    early = month[month["tx_datetime"] < cut]
    alone = build_features(early, F, history=months["2025-01"])
    with_future = build_features(month, F, history=months["2025-01"]).set_index("transaction_id")
    assert 0 < len(early) < len(month)
    a = alone.set_index("transaction_id")[FEATURE_COLUMNS].to_numpy()
    b = with_future.loc[early["transaction_id"], FEATURE_COLUMNS].to_numpy()
    assert np.abs(a - b).max() <= 1e-9


def test_a_label_newer_than_the_delay_never_changes_a_terminal_feature(months: dict[str, pd.DataFrame]) -> None:
    month = months["2025-02"].reset_index(drop=True)
    flipped = month.copy()
    i = len(month) // 2
    flipped.loc[i, "is_fraud"] = 1 - flipped.loc[i, "is_fraud"]
    t = month.loc[i, "tx_datetime"]
    a = build_features(month, F, history=months["2025-01"])
    b = build_features(flipped, F, history=months["2025-01"])
    within = (month["tx_datetime"] < t + pd.Timedelta(days=F.label_delay_days)).to_numpy()
    pd.testing.assert_frame_equal(a.loc[within, FEATURE_COLUMNS], b.loc[within, FEATURE_COLUMNS])
    later = ~within & (month["terminal_id"] == month.loc[i, "terminal_id"]).to_numpy()
    if later.any():  # once the label is old enough, it does count
        assert not a.loc[later, "terminal_fraud_rate_30d"].equals(b.loc[later, "terminal_fraud_rate_30d"])


def test_no_history_means_a_first_transaction() -> None:
    tx = {"transaction_id": "x", "tx_datetime": "2025-05-01T12:00:00+00:00", "customer_id": "C", "terminal_id": "T",
          "amount": 12.5}
    f = online_features([tx], F).iloc[0]
    assert f["customer_count_30d"] == 0 and f["terminal_new_to_customer"] == 1.0
    assert f["seconds_since_previous"] == NO_HISTORY and f["terminal_fraud_rate_30d"] == 0.0


def test_input_is_not_mutated(months: dict[str, pd.DataFrame]) -> None:
    month = months["2025-02"]
    before = month.copy()
    out = compute_features(month, month, F)
    assert len(out) == len(month) and before.equals(month)


def test_store_replay_matches_batch_and_serves_other_processes(months: dict[str, pd.DataFrame], tmp_path) -> None:
    import subprocess
    import sys

    from fraud_assets.adapters.online_store import OnlineFeatures, SqliteTransactionStore

    history, month = months["2025-01"], months["2025-02"]
    store = SqliteTransactionStore(tmp_path / "online.sqlite")
    assert store.seed(history) == len(history)
    online = OnlineFeatures(store, F)
    batch = build_features(month, F, history=history).set_index("transaction_id")
    head = month.head(250)
    for row in head.to_dict("records"):
        tx = {k: row[k] for k in ("transaction_id", "tx_datetime", "customer_id", "terminal_id", "amount")}
        got = online([tx]).iloc[0][FEATURE_COLUMNS].to_numpy(np.float64)
        # Labels arrive for what was scored (here at once; the delay rule decides when they count).
        store.add_labels([{"transaction_id": row["transaction_id"], "is_fraud": row["is_fraud"]}])
        np.testing.assert_allclose(got, batch.loc[row["transaction_id"], FEATURE_COLUMNS].to_numpy(np.float64),
                                   rtol=0, atol=1e-9)
    assert store.count() == len(history) + len(head)
    code = ("import sys; from fraud_assets.adapters.online_store import SqliteTransactionStore as S; "
            "print(S(sys.argv[1]).count())")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "online.sqlite")], capture_output=True,
                         text=True, check=True)
    assert int(out.stdout) == store.count()


def test_a_large_batch_through_the_store_matches_batch_mode(months: dict[str, pd.DataFrame], tmp_path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Many keys in one call: the store reads them in chunks and still returns each row once."""
    from fraud_assets.adapters import online_store as store_module
    from fraud_assets.adapters.online_store import OnlineFeatures, SqliteTransactionStore

    monkeypatch.setattr(store_module, "_FEW_KEYS", 10)  # this small population has about a hundred customers

    history, month = months["2025-01"], months["2025-02"]
    store = SqliteTransactionStore(tmp_path / "online.sqlite")
    store.seed(history)
    first_day = month[month["tx_datetime"] < month["tx_datetime"].min() + pd.Timedelta(days=1)]
    assert first_day["customer_id"].nunique() > 2 * store_module._FEW_KEYS  # the chunked read is exercised
    txs = first_day[["transaction_id", "tx_datetime", "customer_id", "terminal_id", "amount"]].to_dict("records")
    got = OnlineFeatures(store, F, remember=False).matrix(txs)
    # Labels of the same day are inside the delay, so batch mode may see them and still must agree.
    expected = build_features(first_day, F, history=history)[FEATURE_COLUMNS].to_numpy(np.float64)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-9)
    few = OnlineFeatures(store, F, remember=False).matrix(txs[:50])
    np.testing.assert_allclose(few, expected[:50], rtol=0, atol=1e-9)


def test_pruning_older_than_the_lookback_changes_no_new_feature(months: dict[str, pd.DataFrame],
                                                                tmp_path) -> None:
    from fraud_assets.adapters.online_store import OnlineFeatures, SqliteTransactionStore
    from fraud_assets.windows import lookback_days

    history, month = months["2025-01"], months["2025-02"]
    store = SqliteTransactionStore(tmp_path / "online.sqlite")
    store.seed(pd.concat([history, month], ignore_index=True))
    newest = pd.concat([history, month])["tx_datetime"].max()
    # Transactions arriving after everything stored (what serving sees) with the customers and terminals of the
    # month's last ones.
    probe = month.tail(20)[["transaction_id", "tx_datetime", "customer_id", "terminal_id", "amount"]]
    txs = probe.assign(transaction_id=[f"late-{i}" for i in range(len(probe))],
                       tx_datetime=newest + pd.Timedelta(minutes=1)).to_dict("records")
    before = OnlineFeatures(store, F, remember=False).matrix(txs)
    keep = lookback_days(F)
    old = (pd.concat([history, month])["tx_datetime"] < newest - pd.Timedelta(days=keep)).sum()
    cutoff = int(newest.timestamp()) - keep * DAY_S
    assert old > 0 and store.prune(cutoff) == old
    assert store.count() == len(history) + len(month) - old
    after = OnlineFeatures(store, F, remember=False).matrix(txs)
    # Nothing the features of the newest transactions read was pruned (running sums start later: 1e-9, not bits).
    assert np.abs(before - after).max() <= 1e-9
    assert store.prune(cutoff) == 0  # idempotent


def test_retention_shorter_than_the_features_lookback_is_refused() -> None:
    with pytest.raises(ValueError, match=r"online_store.retention_days \(10\) must cover the 37 days"):
        P.updated({"online_store.retention_days": 10})


@pytest.fixture(scope="module")
def three_months() -> dict[str, pd.DataFrame]:
    """Three busy months (a 37-day lookback reaches two months back from a month's first days)."""
    data = P.data.model_copy(update={"n_customers": 300, "n_terminals": 40})
    return simulate_months(data, "2025-01", 3)


def test_features_by_month_read_the_months_the_windows_reach_into(three_months: dict[str, pd.DataFrame]) -> None:
    from fraud_assets.core.features import build_features_by_month, history_months

    assert history_months(F) == 2  # 30 + 7 days: March 1st reads back to January 23rd
    shuffled = {m: three_months[m] for m in sorted(three_months, reverse=True)}  # the mapping's order is irrelevant
    by_month = build_features_by_month(shuffled, F)
    jan, feb, mar = sorted(three_months)
    assert list(by_month) == [jan, feb, mar]
    assert by_month[jan].equals(build_features(three_months[jan], F))
    both = pd.concat([three_months[jan], three_months[feb]], ignore_index=True)
    assert by_month[mar].equals(build_features(three_months[mar], F, history=both))


def test_month_boundary_training_features_equal_a_store_holding_everything_before(
        tmp_path: Path, three_months: dict[str, pd.DataFrame]) -> None:
    """The train/serve skew real exports showed: early-month rows read history older than the previous month."""
    from fraud_assets.adapters.online_store import OnlineFeatures, SqliteTransactionStore
    from fraud_assets.core.features import KEY_COLUMNS as KEY
    from fraud_assets.core.features import build_features_by_month

    _, feb, mar = sorted(three_months)
    batch = build_features_by_month(three_months, F)[mar]
    early = three_months[mar].sort_values("tx_datetime").head(600)  # the first days of March, scored together
    store = SqliteTransactionStore(tmp_path / "store.sqlite")  # the past, labels included (the batch is not in it)
    store.seed(pd.concat([three_months["2025-01"], three_months[feb], three_months[mar].drop(early.index)]))
    assert early["tx_datetime"].max() < pd.Timestamp("2025-03-08", tz="UTC")
    online = OnlineFeatures(store, F, remember=False).matrix(early[[*KEY, "amount"]].to_dict("records"))
    expected = batch.loc[early.index, FEATURE_COLUMNS].to_numpy()
    assert np.abs(online - expected).max() <= 1e-9
    # It would not hold with only February as history: the 30-day terminal windows end 7 days back in January.
    short = build_features(three_months[mar], F, history=three_months[feb]).loc[early.index, FEATURE_COLUMNS]
    assert np.abs(online - short.to_numpy()).max() > 1e-6
