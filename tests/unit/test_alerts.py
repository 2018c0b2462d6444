"""The analyst's queue: reasons in words, cards ranked by score, statuses from labels, the review summary; and the
prediction log's reads behind it (a day's alerts, the days with scores, label status, per-week inputs)."""

from __future__ import annotations

from datetime import UTC, date, datetime

import numpy as np
import orjson
import pandas as pd
import pytest

from fraud_assets.adapters import mlflow_registry
from fraud_assets.adapters.online_store import SqliteTransactionStore
from fraud_assets.adapters.prediction_log import (
    ALERT_COLUMNS,
    PredictionLog,
    connect,
    label_status,
    read_alerts,
    read_between,
    read_month,
    scored_days,
)
from fraud_assets.core.alerts import (
    alert_queue,
    card_status,
    describe_reasons,
    filter_cards,
    queue_summary,
    reason_text,
)
from fraud_assets.core.live import attach_labels, daily_alerts, weekly_performance

VALUES = {"amount": 250.0, "log_amount": 5.5, "amount_to_customer_mean": 6.2, "customer_mean_amount_30d": 40.32,
          "terminal_fraud_rate_30d": 0.12, "terminal_count_30d": 25.0, "customer_count_7d": 1.0,
          "seconds_since_previous": 5400.0, "terminal_new_to_customer": 1.0, "weekday": 5.0, "hour": 2.0}


@pytest.mark.parametrize(("feature", "words"), [
    ("amount_to_customer_mean", "amount 6.2x the card's 30-day mean (40.32)"),
    ("terminal_fraud_rate_30d", "terminal had 3 known frauds in the last 30 days (12% of 25)"),
    ("customer_count_7d", "card used 1 time in the last 7 days"),
    ("seconds_since_previous", "2 hours since the card's previous transaction"),
    ("terminal_new_to_customer", "terminal new to the card"),
    ("log_amount", "amount 250.00 (on a log scale)"),
    ("amount", "amount 250.00"),
    ("weekday", "on a Saturday"),
    ("hour", "at 02:00-02:59 UTC"),
    ("customer_std_amount_1d", "customer_std_amount_1d (value not logged)"),
])
def test_reasons_read_as_words(feature: str, words: str) -> None:
    assert reason_text(feature, VALUES) == words


def test_every_feature_reads_as_words() -> None:
    from fraud_assets.core.features import FEATURE_COLUMNS

    for feature in FEATURE_COLUMNS:
        for value in (-1.0, 0.0, 3.0):
            text = reason_text(feature, {feature: value})
            assert text and (feature == "amount" or feature not in text), (feature, value, text)  # words


def test_no_history_and_direction() -> None:
    assert reason_text("amount_to_customer_mean", {"amount_to_customer_mean": -1.0}).startswith("no earlier")
    assert reason_text("seconds_since_previous", {"seconds_since_previous": -1.0}) == "first transaction of the card"
    worded = describe_reasons([{"feature": "amount", "contribution": -0.4}], VALUES)
    assert worded == [{"feature": "amount", "contribution": -0.4, "direction": "lowers", "text": "amount 250.00"}]


def _alert(tid: str, card: str, p: float, version: str = "1", when: str = "2025-03-02T10:00:00+00:00") -> dict:
    return {"transaction_id": tid, "tx_datetime": when, "customer_id": card, "terminal_id": "k-1",
            "scored_at": "2025-03-02T10:00:01+00:00", "model_version": version,
            "features": orjson.dumps(VALUES).decode(), "fraud_probability": p, "threshold": 0.5,
            "reasons": orjson.dumps([{"feature": "amount_to_customer_mean", "contribution": 1.5}]).decode()}


ALERTS = pd.DataFrame([_alert("t1", "c-a", 0.7), _alert("t2", "c-b", 0.95, "2"), _alert("t3", "c-a", 0.9),
                       _alert("<img src=x onerror=alert(1)>", "c-c", 0.6)], columns=ALERT_COLUMNS)


def test_cards_are_ranked_by_their_highest_score_and_carry_worded_reasons() -> None:
    cards = alert_queue(ALERTS, {}, {"c-a": [{"transaction_id": "old"}]})
    assert [(c["rank"], c["customer_id"]) for c in cards] == [(1, "c-b"), (2, "c-a"), (3, "c-c")]
    assert [t["transaction_id"] for t in cards[1]["alerts"]] == ["t3", "t1"]  # highest score first
    assert cards[1]["recent"] == [{"transaction_id": "old"}] and cards[0]["recent"] == []
    assert cards[1]["alerts"][0]["amount"] == 250.0
    assert cards[1]["alerts"][0]["reasons"][0]["text"] == "amount 6.2x the card's 30-day mean (40.32)"
    assert {c["status"] for c in cards} == {"open"}


def test_labels_set_statuses_and_the_summary() -> None:
    labels = {"t3": (1, "2025-03-02T12:00:00+00:00"), "t2": (0, "2025-03-01T12:00:00+00:00")}
    cards = alert_queue(ALERTS, labels)
    by_card = {c["customer_id"]: c for c in cards}
    assert (by_card["c-a"]["status"], by_card["c-b"]["status"], by_card["c-c"]["status"]) == ("fraud", "legitimate",
                                                                                            "open")
    summary = queue_summary(cards, date(2025, 3, 2))
    assert summary == {"cards": 3, "alerts": 4, "open_cards": 1, "fraud_cards": 1, "legitimate_cards": 1,
                       "reviewed_cards": 2, "reviewed_today": 1, "confirmed_fraud": 1, "precision": 0.5}
    assert [c["customer_id"] for c in filter_cards(cards, status="open")] == ["c-c"]
    only_v2 = filter_cards(cards, model_version="2")
    assert [c["customer_id"] for c in only_v2] == ["c-b"]
    assert queue_summary([], date(2025, 3, 2))["precision"] is None
    assert card_status(["legitimate", "open"]) == "open" and card_status(["legitimate"]) == "legitimate"


def _log_with_rows(path, rows: list[tuple[str, str, str, float, int]]) -> None:
    """Score rows ``(transaction_id, tx_datetime, customer, probability, alert)`` into a log the way serving does."""
    log = PredictionLog(path, flush_interval_s=0.01)
    txs = [{"transaction_id": t, "tx_datetime": datetime.fromisoformat(w), "customer_id": c, "terminal_id": "k-9",
            "amount": 10.0} for t, w, c, _, _ in rows]
    decisions = [{"transaction_id": t, "fraud_probability": p, "alert": bool(a), "threshold": 0.5,
                  "model_version": "3", "reasons": [{"feature": "amount", "contribution": 0.2}]}
                 for t, _, _, p, a in rows]
    log.record(["r"] * len(rows), txs, decisions, np.full((len(rows), 1), 10.0), ["amount"])
    log.close()


def test_the_log_reads_a_days_alerts_and_the_days_with_scores(tmp_path) -> None:
    path = tmp_path / "log.sqlite"
    assert scored_days(path) == [] and read_alerts(path, date(2025, 3, 2)).empty and label_status(path, ["x"]) == {}
    _log_with_rows(path, [("a", "2025-03-01T23:30:00+00:00", "c1", 0.9, 1),
                          ("b", "2025-03-02T00:30:00+01:00", "c1", 0.8, 1),  # 2025-03-01 23:30 UTC
                          ("c", "2025-03-02T09:00:00+00:00", "c2", 0.7, 1),
                          ("d", "2025-03-02T10:00:00+00:00", "c2", 0.1, 0),
                          ("e", "2025-02-20T10:00:00+00:00", "c3", 0.9, 1)])
    assert scored_days(path) == [date(2025, 3, 2), date(2025, 3, 1), date(2025, 2, 20)]
    assert scored_days(path, 1) == [date(2025, 3, 2)]
    day = read_alerts(path, date(2025, 3, 1))
    assert sorted(day["transaction_id"]) == ["a", "b"] and list(day.columns) == ALERT_COLUMNS
    assert orjson.loads(day["reasons"].iloc[0]) == [{"feature": "amount", "contribution": 0.2}]
    assert read_alerts(path, date(2025, 3, 2))["transaction_id"].tolist() == ["c"]
    assert read_alerts(path, date(1, 1, 1)).empty and read_alerts(path, date(9999, 12, 31)).empty
    log = PredictionLog(path)
    log.record_labels([{"transaction_id": "a", "is_fraud": 0}], "r1")
    log.record_labels([{"transaction_id": "a", "is_fraud": 1}, {"transaction_id": "c", "is_fraud": 0}], "r2")
    log.close()
    status = label_status(path, ["a", "c", "zzz"])
    assert {k: v[0] for k, v in status.items()} == {"a": 1, "c": 0}  # the newest label wins
    week = read_between(path, datetime(2025, 2, 24, tzinfo=UTC), datetime(2025, 3, 3, tzinfo=UTC))
    assert sorted(week["transaction_id"]) == ["a", "b", "c", "d"]
    assert len(read_month(path, "2025-02")[0]) == 1


def test_an_older_log_gains_the_reasons_column(tmp_path) -> None:
    import sqlite3

    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE predictions (request_id TEXT NOT NULL, transaction_id TEXT NOT NULL, "
                     "tx_datetime TEXT NOT NULL, customer_id TEXT NOT NULL, terminal_id TEXT NOT NULL, "
                     "scored_at TEXT NOT NULL, model_version TEXT NOT NULL, features TEXT NOT NULL, "
                     "fraud_probability REAL NOT NULL, alert INTEGER NOT NULL, threshold REAL NOT NULL)")
        conn.execute("INSERT INTO predictions VALUES ('r', 't', '2025-03-01T00:00:00+00:00', 'c', 'k', "
                     "'2025-03-01T00:00:00+00:00', '1', '{}', 0.9, 1, 0.5)")
    connect(path).close()
    assert read_alerts(path, date(2025, 3, 1))["reasons"].tolist() == ["[]"]


def test_weekly_performance_and_daily_alerts() -> None:
    preds = pd.DataFrame({"transaction_id": ["a", "b", "c", "d"],
                          "tx_datetime": ["2025-03-02T10:00:00+00:00", "2025-03-03T10:00:00+00:00",
                                          "2025-03-03T11:00:00+00:00", "2025-03-04T10:00:00+01:00"],
                          "model_version": ["1", "1", "2", "2"], "fraud_probability": [0.9, 0.8, 0.7, 0.1],
                          "alert": [1, 1, 1, 0]})
    labels = pd.DataFrame({"transaction_id": ["a", "b", "c"], "is_fraud": [1, 0, 1],
                           "received_at": ["2025-03-05T00:00:00+00:00"] * 3})
    weeks = weekly_performance(attach_labels(preds, labels, None))
    assert [(w["week"], w["model_version"], w["scored"], w["precision"]) for w in weeks] == [
        ("2025-02-24", "1", 1, 1.0), ("2025-03-03", "1", 1, 0.0), ("2025-03-03", "2", 2, 1.0)]
    assert daily_alerts(preds) == [{"day": "2025-03-02", "scored": 1, "alerts": 1},
                                   {"day": "2025-03-03", "scored": 2, "alerts": 2},
                                   {"day": "2025-03-04", "scored": 1, "alerts": 0}]
    assert weekly_performance(preds.iloc[:0].assign(is_fraud=[], label_source=[])) == [] and daily_alerts(
        preds.iloc[:0]) == []


def test_a_cards_recent_transactions_newest_first(tmp_path) -> None:
    store = SqliteTransactionStore(tmp_path / "store.sqlite")
    store.seed(pd.DataFrame({"transaction_id": ["x1", "x2", "x3", "y1"],
                             "tx_datetime": pd.to_datetime(["2025-03-01T10:00:00Z", "2025-03-01T11:00:00Z",
                                                            "2025-03-02T11:00:00Z", "2025-03-01T12:00:00Z"]),
                             "customer_id": ["c1", "c1", "c1", "c2"], "terminal_id": ["k1", "k2", "k3", "k1"],
                             "amount": [1.0, 2.0, 3.0, 4.0], "is_fraud": [0, 1, 0, 0]}))
    store.append([{"transaction_id": "x4", "tx_datetime": "2025-03-01T12:00:00Z", "customer_id": "c1",
                   "terminal_id": "k1", "amount": 5.0}])
    until = int(datetime(2025, 3, 2, tzinfo=UTC).timestamp())
    recent = store.card_transactions("c1", until, 2)
    assert recent == [{"transaction_id": "x4", "tx_datetime": "2025-03-01T12:00:00+00:00", "terminal_id": "k1",
                       "amount": 5.0, "is_fraud": None},
                      {"transaction_id": "x2", "tx_datetime": "2025-03-01T11:00:00+00:00", "terminal_id": "k2",
                       "amount": 2.0, "is_fraud": 1}]
    assert store.card_transactions("nobody", until, 5) == []


def test_drift_flags_read_the_monitoring_runs(tmp_path) -> None:
    client = mlflow_registry.client_for(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert mlflow_registry.drift_flags(client) == []
    exp = mlflow_registry.ensure_experiment(client, mlflow_registry.MONITORING_EXPERIMENT, tmp_path.as_uri())
    for month, drifted in (("2025-03", "False"), ("2025-02", "True"), ("2025-03", "True")):
        run = client.create_run(exp, tags={"month": month, "drift_detected": drifted})
        client.log_metric(run.info.run_id, "score_psi", 0.3)
        client.set_terminated(run.info.run_id)
    flags = mlflow_registry.drift_flags(client)
    assert [(f["month"], f["drift_detected"], f["score_psi"]) for f in flags] == [
        ("2025-02", True, 0.3), ("2025-03", True, 0.3)]  # the newest report of March wins


def test_the_answers_behind_the_page_from_a_log_a_store_and_the_registry(tmp_path) -> None:
    from serving.analyst import alerts_answer, performance_answer

    log, store = tmp_path / "log.sqlite", SqliteTransactionStore(tmp_path / "store.sqlite")
    client = mlflow_registry.client_for(f"sqlite:///{tmp_path / 'mlflow.db'}")
    empty = alerts_answer(log, store, None, None, None, date(2025, 3, 3))
    assert (empty["day"], empty["cards"], empty["summary"]["precision"]) == (None, [], None)
    assert performance_answer(log, client, "fraud-detector", "champion", 12) == {
        "weeks": [], "alerts_per_day": [], "champion_history": [], "drift": []}
    _log_with_rows(log, [("a", "2025-03-01T23:30:00+00:00", "c1", 0.9, 1),
                         ("c", "2025-03-02T09:00:00+00:00", "c2", 0.7, 1),
                         ("d", "2025-03-02T10:00:00+00:00", "c2", 0.1, 0)])
    store.append([{"transaction_id": "c", "tx_datetime": "2025-03-02T09:00:00Z", "customer_id": "c2",
                   "terminal_id": "k-9", "amount": 10.0}])
    queue = alerts_answer(log, store, None, None, "open", date(2025, 3, 3))
    assert (queue["day"], queue["days"], queue["model_versions"]) == ("2025-03-02", ["2025-03-02", "2025-03-01"], ["3"])
    assert [c["customer_id"] for c in queue["cards"]] == ["c2"]
    assert queue["cards"][0]["recent"][0]["transaction_id"] == "c"
    assert alerts_answer(log, store, date(2025, 3, 1), "9", None, date(2025, 3, 3))["cards"] == []
    performance = performance_answer(log, client, "fraud-detector", "champion", 1)
    assert [w["week"] for w in performance["weeks"]] == ["2025-02-24"]
    assert [d["day"] for d in performance["alerts_per_day"]] == ["2025-03-01", "2025-03-02"]
