"""The analyst's queue: a day's alerts grouped by card and ranked by score, the reasons in words, the review so far.

Pure functions over what the prediction log holds (one row per alert: ids, time, model version, the logged
feature values and the answer's top reasons) and the labels investigators gave. A transaction is ``open`` until it
has a label, then ``fraud`` or ``legitimate`` (the newest label wins). A card is ``fraud`` when any of its alerts
was confirmed, ``open`` when any is still open, else ``legitimate``. Cards are ranked by their highest score, the
order in which an investigator works through the card-precision@k view; the queue's precision is the share of
reviewed cards that were fraud.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from datetime import date
from typing import Any, Literal

import orjson
import pandas as pd

Status = Literal["open", "fraud", "legitimate"]
STATUSES: tuple[Status, ...] = ("open", "fraud", "legitimate")
WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_WINDOWED = re.compile(r"(customer_count|customer_mean_amount|customer_std_amount|terminal_count|"
                       r"terminal_fraud_rate)_(\d+)d")


def _money(value: float) -> str:
    return f"{value:,.2f}"


def _times(n: float, one: str, many: str) -> str:
    count = round(n)
    return f"{count} {one if count == 1 else many}"


def _duration(seconds: float) -> str:
    for unit, size in (("day", 86_400), ("hour", 3_600), ("minute", 60)):
        if seconds >= size:
            return _times(seconds / size, unit, unit + "s")
    return _times(seconds, "second", "seconds")


def _terminal_frauds(days: int, span: str, rate: float, values: Mapping[str, float]) -> str:
    count = values.get(f"terminal_count_{days}d")
    if count is None:
        return f"terminal's known fraud rate over {span}: {rate:.0%}"
    frauds = _times(rate * count, "known fraud", "known frauds")
    return f"terminal had {frauds} in {span} ({rate:.0%} of {round(count)})"


def _relative_amount(v: float, values: Mapping[str, float]) -> str:
    if v < 0:
        return "no earlier transaction of the card to compare the amount with"
    mean = values.get("customer_mean_amount_30d")
    return f"amount {v:.1f}x the card's 30-day mean" + (f" ({_money(mean)})" if mean is not None else "")


Words = Callable[[float, Mapping[str, float]], str]
_WINDOW_WORDS: dict[str, Callable[[float, str], str]] = {  # value, "the last 7 days"
    "customer_count": lambda v, span: f"card used {_times(v, 'time', 'times')} in {span}",
    "customer_mean_amount": lambda v, span: f"card's mean amount over {span}: {_money(v)}",
    "customer_std_amount": lambda v, span: f"card's amounts over {span} vary by {_money(v)} (standard deviation)",
    "terminal_count": lambda v, span: f"terminal had {_times(v, 'transaction', 'transactions')} with known labels "
                                      f"in {span}",
}


def _flag(yes: str, no: str) -> Words:
    return lambda v, _: yes if v >= 0.5 else no


def _unless_none(none: str, words: Callable[[float], str]) -> Words:
    """``none`` for the no-history sentinel (-1), else ``words(value)``."""
    return lambda v, _: none if v < 0 else words(v)


def _count(template: str, one: str, many: str) -> Words:
    """``template`` with ``{n}`` replaced by the count and its noun (``card used {n} in the last day``)."""
    return lambda v, _: template.format(n=_times(v, one, many))


_WORDS: dict[str, Words] = {
    "amount": lambda v, _: f"amount {_money(v)}",
    "log_amount": lambda v, values: f"amount {_money(float(values.get('amount', v)))} (on a log scale)",
    "amount_to_customer_mean": _relative_amount,
    "seconds_since_previous": _unless_none("first transaction of the card",
                                           lambda v: f"{_duration(v)} since the card's previous transaction"),
    "customer_count_burst": _count("{n} of the card within minutes", "earlier transaction", "earlier transactions"),
    "terminal_new_to_customer": _flag("terminal new to the card", "terminal the card has used before"),
    "terminal_count_recent_1d": _count("terminal had {n} in the last day", "transaction", "transactions"),
    "hour": lambda v, _: f"at {round(v):02d}:00-{round(v):02d}:59 UTC",
    "weekday": lambda v, _: f"on a {WEEKDAYS[round(v) % 7]}",
    "is_night": _flag("at night", "in the daytime"),
    "is_weekend": _flag("on a weekend", "on a weekday"),
    # the behaviour groups (core.features.FEATURE_GROUPS); -1 is "no history" where a feature has that sentinel
    "card_known_frauds": _count("card had {n} before", "known fraud", "known frauds"),
    "card_known_fraud_rate": lambda v, _: f"{v:.0%} of the card's labelled past transactions were fraud",
    "card_days_since_known_fraud": _unless_none("no known fraud on the card",
                                                lambda v: f"card's last known fraud {_duration(v * 86_400)} ago"),
    "amount_zscore_30d": lambda v, _: f"amount {v:+.1f} standard deviations from the card's 30-day mean",
    "amount_to_customer_max_30d": _unless_none("no earlier amount of the card in 30 days",
                                               lambda v: f"amount {v:.1f}x the card's largest in the last 30 days"),
    "customer_count_velocity": _count("card used {n} in the last minutes", "time", "times"),
    "customer_amount_velocity": lambda v, _: f"card spent {_money(v)} in the last minutes",
    "customer_terminals_1d": _count("card used {n} in the last day", "terminal", "terminals"),
    "customer_terminals_7d": _count("card used {n} in the last 7 days", "terminal", "terminals"),
    "terminal_mean_amount_7d": lambda v, _: f"terminal's mean amount over the last 7 days: {_money(v)}",
    "terminal_std_amount_7d": lambda v, _: f"terminal's amounts over the last 7 days vary by {_money(v)}",
    "terminal_seconds_since_previous": _unless_none(
        "first transaction at the terminal in a while", lambda v: f"{_duration(v)} since the terminal's previous "
                                                                  "transaction"),
    "terminal_new_card_share_1d": lambda v, _: f"{v:.0%} of the terminal's cards in the last day were new to it",
    "hour_distance_to_card_30d": _unless_none("no earlier hour of the card to compare with",
                                              lambda v: f"hour unusual for the card ({v:.2f}; 0 usual, 1 never seen)"),
}


def reason_text(feature: str, values: Mapping[str, float]) -> str:
    """One reason in words from its feature name and the row's logged feature values
    (``amount_to_customer_mean`` 6.2 -> "amount 6.2x the card's 30-day mean (41.20)")."""
    if feature not in values:
        return f"{feature} (value not logged)"
    v = float(values[feature])
    windowed = _WINDOWED.fullmatch(feature)
    if windowed:
        kind, days = windowed.group(1), int(windowed.group(2))
        span = "the last day" if days == 1 else f"the last {days} days"
        if kind == "terminal_fraud_rate":
            return _terminal_frauds(days, span, v, values)
        return _WINDOW_WORDS[kind](v, span)
    words = _WORDS.get(feature)
    return words(v, values) if words is not None else f"{feature} = {v:g}"


def describe_reasons(reasons: Sequence[Mapping[str, Any]], values: Mapping[str, float]) -> list[dict[str, Any]]:
    """The answer's reasons with ``text`` (in words) and ``direction`` (``raises`` or ``lowers`` the score)."""
    return [{"feature": str(r["feature"]), "contribution": float(r["contribution"]),
             "direction": "raises" if r["contribution"] >= 0 else "lowers",
             "text": reason_text(str(r["feature"]), values)} for r in reasons]


def _transaction(row: Mapping[str, Any], labels: Mapping[str, tuple[int, str]]) -> dict[str, Any]:
    values = orjson.loads(row["features"])
    label = labels.get(row["transaction_id"])
    status: Status = "open" if label is None else ("fraud" if label[0] == 1 else "legitimate")
    return {"transaction_id": row["transaction_id"], "tx_datetime": row["tx_datetime"],
            "terminal_id": row["terminal_id"], "amount": float(values.get("amount", float("nan"))),
            "fraud_probability": float(row["fraud_probability"]), "threshold": float(row["threshold"]),
            "model_version": str(row["model_version"]), "status": status,
            "labelled_at": None if label is None else label[1],
            "reasons": describe_reasons(orjson.loads(row["reasons"]), values)}


def card_status(statuses: Sequence[Status]) -> Status:
    """A card's status from its alerts' statuses: fraud if any was confirmed, open if any is open, else legitimate."""
    if "fraud" in statuses:
        return "fraud"
    return "open" if "open" in statuses or not statuses else "legitimate"


def alert_queue(alerts: pd.DataFrame, labels: Mapping[str, tuple[int, str]],
                recent: Mapping[str, list[dict[str, Any]]] | None = None) -> list[dict[str, Any]]:
    """Cards with alerts, highest score first (then card id): each with its alerts (highest score first), its
    status, the versions that scored it and (when given) its recent transactions from the online store.

    ``alerts``: the prediction log's alert rows (:data:`~fraud_assets.adapters.prediction_log.ALERT_COLUMNS`);
    ``labels``: ``{transaction_id: (is_fraud, received_at)}``, the latest label of each."""
    cards = []
    for customer, part in alerts.groupby("customer_id", sort=False):
        txs = sorted((_transaction(row, labels) for row in part.to_dict("records")),
                     key=lambda t: (-t["fraud_probability"], t["transaction_id"]))
        cards.append({"customer_id": str(customer), "max_probability": txs[0]["fraud_probability"],
                      "status": card_status([t["status"] for t in txs]),
                      "model_versions": sorted({t["model_version"] for t in txs}), "alerts": txs,
                      "recent": list((recent or {}).get(str(customer), []))})
    cards.sort(key=lambda c: (-c["max_probability"], c["customer_id"]))
    for rank, card in enumerate(cards, start=1):
        card["rank"] = rank
    return cards


def filter_cards(cards: Sequence[dict[str, Any]], status: Status | None = None,
                 model_version: str | None = None) -> list[dict[str, Any]]:
    """Cards of this status and with alerts of this model version (only those alerts kept); None keeps all."""
    kept = []
    for card in cards:
        if status is not None and card["status"] != status:
            continue
        if model_version is not None:
            alerts = [t for t in card["alerts"] if t["model_version"] == model_version]
            if not alerts:
                continue
            card = {**card, "alerts": alerts}
        kept.append(card)
    return kept


def queue_summary(cards: Sequence[dict[str, Any]], today: date) -> dict[str, Any]:
    """How far the review of a queue is: counts of cards and alerts by status, labels given ``today`` (UTC) and
    the precision so far (fraud cards / reviewed cards; None before any review)."""
    by_status = {s: sum(c["status"] == s for c in cards) for s in STATUSES}
    alerts = [t for c in cards for t in c["alerts"]]
    reviewed = by_status["fraud"] + by_status["legitimate"]
    return {"cards": len(cards), "alerts": len(alerts), "open_cards": by_status["open"],
            "fraud_cards": by_status["fraud"], "legitimate_cards": by_status["legitimate"],
            "reviewed_cards": reviewed,
            "reviewed_today": sum(1 for t in alerts if (t["labelled_at"] or "")[:10] == today.isoformat()),
            "confirmed_fraud": sum(t["status"] == "fraud" for t in alerts),
            "precision": by_status["fraud"] / reviewed if reviewed else None}

