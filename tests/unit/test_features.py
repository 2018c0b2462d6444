"""Features: known answers, a naive reference, batch/online parity, point-in-time, the label delay and the labels'
arrival times."""

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
    build_features_by_month,
    compute_features,
    label_arrival_seconds,
    online_features,
)
from fraud_assets.core.simulate import simulate_months
from fraud_assets.params import load_params
from fraud_assets.schemas import LABEL_AVAILABLE_AT, default_label_available_at

P = load_params()
F = P.features


def stored(values: np.ndarray) -> np.ndarray:
    """Float64 features at the precision batch mode stores them (float32, ``core.features.features_frame``; the
    amount is exact either way): how a stored frame is compared with the float64 definitions or an online matrix."""
    return np.asarray(values, dtype=np.float64).astype(np.float32)


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
    """The definitions written the slow, obvious way (one row at a time); a label counts once it has arrived."""
    ts = (frame["tx_datetime"].astype("int64") // 10**9).to_numpy()
    arrival = label_arrival_seconds(frame, F)
    rows = []
    d = F.label_delay_days * DAY_S
    for i in range(len(frame)):
        t, c, term = ts[i], frame["customer_id"].iat[i], frame["terminal_id"].iat[i]
        known_fraud = frame["is_fraud"].to_numpy() * (arrival < t)
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
            r[f"terminal_fraud_rate_{w}d"] = known_fraud[win].mean() if win.any() else 0.0
        r["terminal_count_recent_1d"] = int((at & (ts >= t - DAY_S) & (ts < t)).sum())
        r |= _naive_behaviour(frame, ts, i, cust, r, known_fraud)
        rows.append(r)
    return pd.DataFrame(rows)


def _naive_behaviour(frame: pd.DataFrame, ts: np.ndarray, i: int, cust: np.ndarray, base: dict[str, float],
                     fraud: np.ndarray) -> dict[str, float]:
    """The behaviour groups (the card's label history from the labels ``fraud`` known at row ``i``, its amount
    habit), one row."""
    t, amount = ts[i], frame["amount"].to_numpy()
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
        gap = np.abs(batch[col].to_numpy() - stored(naive[col].to_numpy())).max()
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
    month = months["2025-02"].reset_index(drop=True).drop(columns=LABEL_AVAILABLE_AT)  # the default rule alone
    flipped = month.copy()
    i = len(month) // 2
    flipped.loc[i, "is_fraud"] = 1 - flipped.loc[i, "is_fraud"]
    t = month.loc[i, "tx_datetime"]
    history = months["2025-01"].drop(columns=LABEL_AVAILABLE_AT)
    a = build_features(month, F, history=history)
    b = build_features(flipped, F, history=history)
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
        # Labels arrive for what was scored (posted at once, dated when they arrive: they count from then on).
        store.add_labels([{"transaction_id": row["transaction_id"], "is_fraud": row["is_fraud"],
                           "label_available_at": row["label_available_at"]}])
        np.testing.assert_allclose(stored(got), batch.loc[row["transaction_id"], FEATURE_COLUMNS].to_numpy(np.float32),
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
    expected = build_features(first_day, F, history=history)[FEATURE_COLUMNS].to_numpy(np.float32)
    np.testing.assert_allclose(stored(got), expected, rtol=0, atol=1e-9)
    few = OnlineFeatures(store, F, remember=False).matrix(txs[:50])
    np.testing.assert_allclose(stored(few), expected[:50], rtol=0, atol=1e-9)


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
    expected = batch.loc[early.index, FEATURE_COLUMNS].to_numpy(np.float32)
    assert np.abs(stored(online) - expected).max() <= 1e-9
    # It would not hold with only February as history: the 30-day terminal windows end 7 days back in January.
    short = build_features(three_months[mar], F, history=three_months[feb]).loc[early.index, FEATURE_COLUMNS]
    assert np.abs(online - short.to_numpy()).max() > 1e-6


def _one_fraud_at_a_terminal(arrival: pd.Timestamp) -> pd.DataFrame:
    """Card A's fraud at terminal T on March 1st, its label arriving at ``arrival``; card B's later legit rows."""
    frame = pd.DataFrame([_tx(0, "2025-03-01 12:00", "A", "T", 50.0, fraud=1),
                          _tx(1, "2025-03-02 12:00", "B", "T", 20.0)])
    return frame.assign(label_available_at=[arrival, pd.Timestamp("2025-03-02 12:00", tz="UTC")])


def test_a_label_is_read_by_no_feature_before_it_arrives(tmp_path: Path) -> None:
    """A terminal's one fraud, labelled 20 days later: a query one second before the label arrives sees a rate of 0,
    one second after sees it, in batch mode, online from a frame and online from a store alike; the card's own label
    history likewise."""
    from fraud_assets.adapters.online_store import OnlineFeatures, SqliteTransactionStore

    arrival = pd.Timestamp("2025-03-21 08:00", tz="UTC")
    past = _one_fraud_at_a_terminal(arrival)
    probes = [_tx(10 + k, str(arrival + pd.Timedelta(seconds=s)), "A", "T", 10.0) for k, s in enumerate((-1, 0, 1))]
    store = SqliteTransactionStore(tmp_path / "store.sqlite")
    store.seed(past)
    label_columns = ["terminal_fraud_rate_30d", "card_known_frauds", "card_days_since_known_fraud"]
    seen = []
    for probe in probes:  # each alone, so no probe is the past of another
        keys = {k: probe[k] for k in ("transaction_id", "tx_datetime", "customer_id", "terminal_id", "amount")}
        batch = build_features(pd.DataFrame([probe]), F, history=past).iloc[0][FEATURE_COLUMNS].to_numpy(np.float64)
        online = online_features([keys], F, history=past).iloc[0][FEATURE_COLUMNS].to_numpy(np.float64)
        from_store = stored(OnlineFeatures(store, F, remember=False).matrix([keys])[0])
        assert np.array_equal(batch, online) and np.array_equal(batch, from_store)
        seen.append(pd.Series(batch, index=FEATURE_COLUMNS)[label_columns].tolist())
    before, at, after = seen
    assert before == at == [0.0, 0.0, NO_HISTORY]  # strictly before the query's second, like a transaction
    assert after == [0.5, 1.0, pytest.approx(19.8334, abs=1e-4)]  # 1 fraud of 2 rows; 19 days 20 hours ago
    # Under the default rule (no arrival time) the same label was known since March 8th.
    rule = build_features(pd.DataFrame([probes[0]]), F, history=past.drop(columns=LABEL_AVAILABLE_AT)).iloc[0]
    assert rule["terminal_fraud_rate_30d"] == 0.5 and rule["card_known_frauds"] == 1.0


def test_the_days_since_a_known_fraud_skip_a_later_fraud_not_known_yet() -> None:
    frame = pd.DataFrame([_tx(0, "2025-03-01 12:00", "A", "T1", 50.0, fraud=1),
                          _tx(1, "2025-03-05 12:00", "A", "T2", 60.0, fraud=1)])
    frame["label_available_at"] = pd.to_datetime(["2025-03-08 12:00", "2025-04-20 00:00"], utc=True)
    probe = pd.DataFrame([_tx(2, "2025-03-20 12:00", "A", "T3", 10.0)])
    f = build_features(probe, F, history=frame).iloc[0]
    assert f["card_known_frauds"] == 1.0 and f["card_known_fraud_rate"] == 0.5
    assert f["card_days_since_known_fraud"] == 19.0  # the first fraud: the second's label comes in April


def test_labels_arriving_with_the_delay_give_the_rules_features_to_the_bit(three_months: dict[str, pd.DataFrame]
                                                                            ) -> None:
    rule = {m: f.drop(columns=LABEL_AVAILABLE_AT) for m, f in three_months.items()}
    on_time = {m: f.assign(label_available_at=default_label_available_at(f["tx_datetime"], F))
               for m, f in three_months.items()}
    by_rule, by_arrival = build_features_by_month(rule, F), build_features_by_month(on_time, F)
    simulated = build_features_by_month(three_months, F)
    for m in three_months:
        assert np.array_equal(by_rule[m][FEATURE_COLUMNS].to_numpy(), by_arrival[m][FEATURE_COLUMNS].to_numpy())
    # The simulator's spread of delays does change the label features (about half its labels come later).
    march = "2025-03"
    changed = (simulated[march][FEATURE_COLUMNS] != by_rule[march][FEATURE_COLUMNS]).any()
    assert set(changed[changed].index) == {f"terminal_fraud_rate_{w}d" for w in (1, 7, 30)} | {
        "card_known_frauds", "card_known_fraud_rate", "card_days_since_known_fraud"}


def test_a_store_migrated_or_seeded_without_arrival_times_reads_them_by_the_rule(
        months: dict[str, pd.DataFrame], tmp_path: Path) -> None:
    """A store made before label_at (its labelled rows have none) and one seeded from snapshots without the column
    both give batch mode's features of those snapshots: the default rule, label_delay_days after the transaction."""
    from fraud_assets.adapters.online_store import OnlineFeatures, SqliteTransactionStore
    from tests.unit.test_online_speed_paths import _old_store

    history, month = (months[m].drop(columns=LABEL_AVAILABLE_AT) for m in ("2025-01", "2025-02"))
    old = tmp_path / "old.sqlite"
    _old_store(old, list(zip(history["transaction_id"], (history["tx_datetime"].astype("int64") // 10**9).tolist(),
                             history["customer_id"], history["terminal_id"], history["amount"].tolist(),
                             history["is_fraud"].astype(int).tolist(), strict=True)), "before label arrival times")
    seeded = SqliteTransactionStore(tmp_path / "seeded.sqlite")
    seeded.seed(history)
    first_week = month[month["tx_datetime"] < pd.Timestamp("2025-02-08", tz="UTC")]
    txs = first_week[["transaction_id", "tx_datetime", "customer_id", "terminal_id", "amount"]].to_dict("records")
    expected = build_features(first_week, F, history=history)[FEATURE_COLUMNS].to_numpy(np.float32)
    for store in (SqliteTransactionStore(old), seeded):
        got = OnlineFeatures(store, F, remember=False).matrix(txs)
        assert np.abs(stored(got) - expected).max() <= 1e-9
    assert (expected[:, FEATURE_COLUMNS.index("terminal_fraud_rate_30d")] > 0).any()  # labels were read
