"""Request validation: every bad input class is refused with an error naming the field."""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime, timedelta

import orjson
import pytest
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from fraud_assets.params import load_params
from serving.api import LABEL_BATCH, Score, request_types
from serving.app import _invalid_request, _parse

GOOD = {"transaction_id": "t1", "tx_datetime": "2025-03-01T10:00:00+02:00", "customer_id": "c1",
        "terminal_id": "k1", "amount": 12.5}
DATA = load_params().data
REQUESTS = request_types(DATA.max_amount, DATA.min_tx_date, 50)
TRANSACTION = REQUESTS.transaction


def test_valid_transaction_is_normalised_to_utc() -> None:
    tx = TRANSACTION.validate_python(GOOD)
    assert tx["tx_datetime"] == datetime(2025, 3, 1, 8, 0, tzinfo=UTC)
    assert tx["tx_datetime"].utcoffset().total_seconds() == 0


def test_integer_amount_and_zulu_time_are_accepted() -> None:
    tx = TRANSACTION.validate_python({**GOOD, "amount": 0, "tx_datetime": "2025-03-01T10:00:00Z"})
    assert tx["amount"] == 0.0 and tx["tx_datetime"].hour == 10


@pytest.mark.parametrize(("field", "value"), [
    ("amount", float("nan")),
    ("amount", float("inf")),
    ("amount", float("-inf")),
    ("amount", -0.01),
    ("amount", "12.5"),
    ("amount", True),
    ("amount", None),
    ("amount", 10_000_000.01),  # above data.max_amount
    ("amount", 1.4e308),  # overflowed the features' variance once (a 500)
    ("tx_datetime", "1792-03-01T10:00:00Z"),
    ("tx_datetime", "1999-12-31T23:59:59Z"),  # before data.min_tx_date (UTC midnight)
    ("tx_datetime", "2000-01-01T00:30:00+01:00"),  # 1999-12-31 23:30 in UTC
    ("tx_datetime", "0001-01-01T00:00:00+01:00"),  # not even convertible to UTC
    ("tx_datetime", timedelta(days=1, minutes=5)),  # from now, when the test runs (not when it was collected)
    ("tx_datetime", "2025-03-01T10:00:00"),
    ("tx_datetime", "yesterday"),
    ("tx_datetime", 1_740_000_000),
    ("transaction_id", ""),
    ("transaction_id", "   "),
    ("transaction_id", 17),
    ("customer_id", ""),
    ("terminal_id", None),
    ("terminal_id", "x" * 129),
])
def test_bad_value_names_its_field(field: str, value: object) -> None:
    value = _from_now(value)
    with pytest.raises(ValidationError) as info:
        TRANSACTION.validate_python({**GOOD, field: value})
    assert [e["loc"][0] for e in info.value.errors()] == [field]


@pytest.mark.parametrize(("field", "value"), [
    ("amount", 0),
    ("amount", DATA.max_amount),
    ("tx_datetime", "2000-01-01T00:00:00Z"),
    ("tx_datetime", "2000-01-01T01:00:00+01:00"),  # the same instant
    ("tx_datetime", timedelta(hours=23)),  # a clock ahead of ours
])
def test_values_at_the_bounds_are_accepted(field: str, value: object) -> None:
    assert TRANSACTION.validate_python({**GOOD, field: _from_now(value)})[field] is not None


def _from_now(value: object) -> object:
    """A timedelta parameter as an ISO timestamp that far after the moment the test runs."""
    return (datetime.now(UTC) + value).isoformat() if isinstance(value, timedelta) else value


def test_bounds_come_from_the_arguments() -> None:
    strict = request_types(100.0, date(2025, 3, 1), 50).transaction  # GOOD is 2025-03-01 08:00 UTC
    for field, value in (("amount", 100.5), ("tx_datetime", "2025-02-28T23:59:59Z")):
        with pytest.raises(ValidationError) as info:
            strict.validate_python({**GOOD, field: value})
        assert info.value.errors()[0]["loc"] == (field,)


def test_out_of_bounds_body_is_a_422_naming_the_field() -> None:
    """The replica's path: the raw body parsed by :func:`_parse`, answered by the app's 422 handler."""
    body = orjson.dumps({**GOOD, "amount": 1.4e308, "tx_datetime": "1792-03-01T10:00:00Z"})
    with pytest.raises(RequestValidationError) as info:
        _parse(TRANSACTION, body)
    response = asyncio.run(_invalid_request(None, info.value))  # type: ignore[arg-type]
    assert response.status_code == 422
    detail = orjson.loads(response.body)["detail"]
    assert [d["loc"] for d in detail] == [["body", "tx_datetime"], ["body", "amount"]]
    assert all(set(d) == {"loc", "type", "msg"} for d in detail)
    assert "2000-01-01" in detail[0]["msg"] and detail[1]["type"] == "less_than_equal"


def test_batch_documents_its_row_limit_and_bounds() -> None:
    schema = REQUESTS.transaction_batch.json_schema()
    assert schema["properties"]["transactions"]["maxItems"] == 50
    (record,) = schema["$defs"].values()
    assert record["properties"]["amount"]["maximum"] == DATA.max_amount
    assert record["properties"]["amount"]["minimum"] == 0


@pytest.mark.parametrize(("value", "stored"), [(1, 1), (0, 0), (1.0, 1), (0.0, 0)])
def test_label_accepts_json_integers_written_either_way(value: float, stored: int) -> None:
    body = orjson.dumps({"labels": [{"transaction_id": "t1", "is_fraud": value}]})
    (label,) = LABEL_BATCH.validate_json(body).labels
    assert label.is_fraud == stored and type(label.is_fraud) is int


@pytest.mark.parametrize("value", [0.5, 2, -1, True, False, "1", "true", None])
def test_label_refuses_anything_else(value: object) -> None:
    with pytest.raises(ValidationError) as info:
        LABEL_BATCH.validate_json(orjson.dumps({"labels": [{"transaction_id": "t1", "is_fraud": value}]}))
    assert info.value.errors()[0]["loc"] == ("labels", 0, "is_fraud")


def test_a_label_may_say_when_it_arrived_normalised_to_utc() -> None:
    def parse(**extra: object) -> object:
        body = orjson.dumps({"labels": [{"transaction_id": "t1", "is_fraud": 1, **extra}]})
        return LABEL_BATCH.validate_json(body).labels[0]

    assert parse(label_available_at="2025-03-01T10:00:00+02:00").label_available_at == datetime(2025, 3, 1, 8,
                                                                                                tzinfo=UTC)
    assert parse().label_available_at is None and parse(label_available_at=None).label_available_at is None
    assert parse(label_available_at=_from_now(timedelta(hours=23))).label_available_at is not None  # clock skew


@pytest.mark.parametrize("value", ["2025-03-01T10:00:00", "yesterday", 1_740_000_000, "1969-12-31T23:59:59Z",
                                   "0001-01-01T00:00:00+01:00", timedelta(days=1, minutes=5), True])
def test_a_label_arrival_time_is_refused_unless_a_plausible_aware_timestamp(value: object) -> None:
    body = orjson.dumps({"labels": [{"transaction_id": "t1", "is_fraud": 1, "label_available_at": _from_now(value)}]})
    with pytest.raises(ValidationError) as info:
        LABEL_BATCH.validate_json(body)
    assert info.value.errors()[0]["loc"] == ("labels", 0, "label_available_at")


def test_overflowing_json_amount_is_refused() -> None:
    body = '{"transaction_id":"t1","tx_datetime":"2025-03-01T10:00:00Z","customer_id":"c","terminal_id":"k",' \
           '"amount":1e400}'
    with pytest.raises(ValidationError) as info:
        TRANSACTION.validate_json(body)
    assert info.value.errors()[0]["loc"] == ("amount",)


@pytest.mark.parametrize("missing", sorted(GOOD))
def test_missing_field_is_named(missing: str) -> None:
    body = {k: v for k, v in GOOD.items() if k != missing}
    with pytest.raises(ValidationError) as info:
        TRANSACTION.validate_python(body)
    assert info.value.errors()[0]["loc"] == (missing,)
    assert info.value.errors()[0]["type"] == "missing"


def test_extra_fields_are_forbidden_including_the_label() -> None:
    with pytest.raises(ValidationError) as info:
        TRANSACTION.validate_python({**GOOD, "is_fraud": 1})
    assert info.value.errors()[0]["loc"] == ("is_fraud",)
    assert info.value.errors()[0]["type"] == "extra_forbidden"


def test_batch_must_not_be_empty() -> None:
    with pytest.raises(ValidationError) as info:
        REQUESTS.transaction_batch.validate_python({"transactions": []})
    assert info.value.errors()[0]["loc"] == ("transactions",)


def test_score_rejects_probability_outside_unit_interval() -> None:
    with pytest.raises(ValidationError) as info:
        Score(transaction_id="t", fraud_probability=1.2, alert=True, threshold=0.5, model_version="1")
    assert info.value.errors()[0]["loc"] == ("fraud_probability",)
