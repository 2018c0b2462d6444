"""The answers behind the analyst page (``/ui/``): the alert queue of a day and how the model is doing.

Thin glue, no Ray and no HTTP: reads go to the prediction log (:mod:`fraud_assets.adapters.prediction_log`), the
online store and the registry (:mod:`fraud_assets.adapters.mlflow_registry`); the grouping, the reasons in words and
the review summary are :mod:`fraud_assets.core.alerts`; live performance is :mod:`fraud_assets.core.live`. The
replica calls these in a worker thread and returns their dicts as JSON (shapes: ``serving.api.AlertQueue`` and
``serving.api.Performance``).
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any

from mlflow import MlflowClient

from fraud_assets.adapters import mlflow_registry
from fraud_assets.adapters.online_store import TransactionStore
from fraud_assets.adapters.prediction_log import label_status, read_alerts, read_between, read_labels, scored_days
from fraud_assets.core.alerts import Status, alert_queue, filter_cards, queue_summary
from fraud_assets.core.live import attach_labels, daily_alerts, weekly_performance

RECENT_TRANSACTIONS = 10  # of each card in the queue, from the online store
DAYS_LISTED = 31  # the day selector's choices: the latest days with scores


def _end_of(day: date) -> int:
    return int(datetime.combine(day, time.min, tzinfo=UTC).timestamp()) + 86_400


def alerts_answer(log_path: str | Path, store: TransactionStore, day: date | None, model_version: str | None,
                  status: Status | None, today: date) -> dict[str, Any]:
    """The queue of ``day`` (default: the latest day with scores), filtered by status and model version; the summary
    and the filters' choices cover the whole day."""
    days = scored_days(log_path, DAYS_LISTED)
    day = day or (days[0] if days else None)
    if day is None:
        return {"day": None, "days": [], "model_versions": [], "summary": queue_summary([], today), "cards": []}
    alerts = read_alerts(log_path, day)
    labels = label_status(log_path, alerts["transaction_id"].tolist())
    until = _end_of(day)
    recent = {c: store.card_transactions(c, until, RECENT_TRANSACTIONS) for c in alerts["customer_id"].unique()}
    cards = alert_queue(alerts, labels, recent)
    return {"day": day.isoformat(), "days": [d.isoformat() for d in days],
            "model_versions": sorted({str(v) for v in alerts["model_version"]}, key=lambda v: (len(v), v)),
            "summary": queue_summary(cards, today), "cards": filter_cards(cards, status, model_version)}


def performance_answer(log_path: str | Path, client: MlflowClient, model_name: str, alias: str,
                       weeks: int) -> dict[str, Any]:
    """Live performance per week and version and alerts per day over the last ``weeks`` weeks with scores (API labels
    only: a snapshot's labels reach the ``live_performance`` asset instead), the champion's history, drift flags."""
    days = scored_days(log_path, 1)
    per_week: list[dict[str, Any]] = []
    per_day: list[dict[str, Any]] = []
    if days:
        latest = datetime.combine(days[0], time.min, tzinfo=UTC)
        start = latest - timedelta(days=latest.weekday() + 7 * (weeks - 1))
        predictions = read_between(log_path, start, latest + timedelta(days=1))
        per_week = weekly_performance(attach_labels(predictions, read_labels(log_path), None))
        per_day = daily_alerts(predictions)
    return {"weeks": per_week, "alerts_per_day": per_day,
            "champion_history": mlflow_registry.alias_history(client, model_name, alias),
            "drift": mlflow_registry.drift_flags(client)}
