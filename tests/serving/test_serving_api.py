"""Request validation: every bad input class is refused with an error naming the field."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from serving.api import Score, Transaction, TransactionBatch

GOOD = {"transaction_id": "t1", "tx_datetime": "2025-03-01T10:00:00+02:00", "customer_id": "c1",
        "terminal_id": "k1", "amount": 12.5}


def test_valid_transaction_is_normalised_to_utc() -> None:
    tx = Transaction.model_validate(GOOD)
    assert tx.tx_datetime == datetime(2025, 3, 1, 8, 0, tzinfo=UTC)
    assert tx.tx_datetime.utcoffset().total_seconds() == 0


def test_integer_amount_and_zulu_time_are_accepted() -> None:
    tx = Transaction.model_validate({**GOOD, "amount": 0, "tx_datetime": "2025-03-01T10:00:00Z"})
    assert tx.amount == 0.0 and tx.tx_datetime.hour == 10


@pytest.mark.parametrize(("field", "value"), [
    ("amount", float("nan")),
    ("amount", float("inf")),
    ("amount", float("-inf")),
    ("amount", -0.01),
    ("amount", "12.5"),
    ("amount", True),
    ("amount", None),
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
    with pytest.raises(ValidationError) as info:
        Transaction.model_validate({**GOOD, field: value})
    assert [e["loc"][0] for e in info.value.errors()] == [field]


def test_overflowing_json_amount_is_refused() -> None:
    body = '{"transaction_id":"t1","tx_datetime":"2025-03-01T10:00:00Z","customer_id":"c","terminal_id":"k",' \
           '"amount":1e400}'
    with pytest.raises(ValidationError) as info:
        Transaction.model_validate_json(body)
    assert info.value.errors()[0]["loc"] == ("amount",)


@pytest.mark.parametrize("missing", sorted(GOOD))
def test_missing_field_is_named(missing: str) -> None:
    body = {k: v for k, v in GOOD.items() if k != missing}
    with pytest.raises(ValidationError) as info:
        Transaction.model_validate(body)
    assert info.value.errors()[0]["loc"] == (missing,)
    assert info.value.errors()[0]["type"] == "missing"


def test_extra_fields_are_forbidden_including_the_label() -> None:
    with pytest.raises(ValidationError) as info:
        Transaction.model_validate({**GOOD, "is_fraud": 1})
    assert info.value.errors()[0]["loc"] == ("is_fraud",)
    assert info.value.errors()[0]["type"] == "extra_forbidden"


def test_batch_must_not_be_empty() -> None:
    with pytest.raises(ValidationError) as info:
        TransactionBatch.model_validate({"transactions": []})
    assert info.value.errors()[0]["loc"] == ("transactions",)


def test_score_rejects_probability_outside_unit_interval() -> None:
    with pytest.raises(ValidationError) as info:
        Score(transaction_id="t", fraud_probability=1.2, alert=True, threshold=0.5, model_version="1")
    assert info.value.errors()[0]["loc"] == ("fraud_probability",)
