"""Request and response models of the scoring API (pydantic v2).

Requests are strict: unknown fields are rejected, identifiers are non-empty strings, the amount is a
finite non-negative number (NaN, infinities and overflowing literals such as ``1e400`` are refused)
and the timestamp must carry a timezone; it is normalised to UTC.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator

MAX_BATCH = 1000

Identifier = Annotated[str, Field(strict=True, min_length=1, max_length=128, pattern=r"\S")]


class Transaction(BaseModel):
    """One canonical card transaction to score (no label)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    transaction_id: Identifier
    tx_datetime: AwareDatetime
    customer_id: Identifier
    terminal_id: Identifier
    amount: float = Field(strict=True, ge=0, allow_inf_nan=False)

    @field_validator("tx_datetime", mode="before")
    @classmethod
    def _iso_text_only(cls, value: Any) -> Any:
        if isinstance(value, int | float) and not isinstance(value, bool):
            raise ValueError("tx_datetime must be an ISO 8601 string with a timezone, not a number")
        return value

    @field_validator("tx_datetime")
    @classmethod
    def _to_utc(cls, value: datetime) -> datetime:
        return value.astimezone(UTC)


class Score(BaseModel):
    """The decision for one transaction, naming the model version that scored it."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    transaction_id: str
    fraud_probability: float = Field(ge=0, le=1)
    alert: bool
    threshold: float = Field(ge=0, le=1)
    model_version: str


class TransactionBatch(BaseModel):
    """Several transactions scored in one request."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    transactions: list[Transaction] = Field(min_length=1, max_length=MAX_BATCH)


class ScoreBatch(BaseModel):
    """Decisions for a batch, in request order."""

    model_config = ConfigDict(extra="forbid")

    scores: list[Score]


class Health(BaseModel):
    """Liveness answer."""

    status: str


class Readiness(BaseModel):
    """Readiness answer: the serving version once a model is loaded, else why not."""

    model_config = ConfigDict(protected_namespaces=())

    status: str
    model_version: str | None = None
    model_name: str
    alias: str
    error: str | None = None
