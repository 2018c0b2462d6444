"""Request and response models of the scoring API (pydantic v2).

Requests are strict: unknown fields are rejected, identifiers are non-empty strings, the amount is a
finite non-negative number (NaN, infinities and overflowing literals such as ``1e400`` are refused)
and the timestamp must carry a timezone; it is normalised to UTC. How many rows a batch may carry is a
parameter (``serve.max_batch_rows``) checked by the app, so it is not fixed here.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    with_config,
)
from typing_extensions import TypedDict


def _iso_text_only(value: Any) -> Any:
    if isinstance(value, int | float) and not isinstance(value, bool):
        raise ValueError("tx_datetime must be an ISO 8601 string with a timezone, not a number")
    return value


def _to_utc(value: datetime) -> datetime:
    return value.astimezone(UTC)


Identifier = Annotated[str, Field(strict=True, min_length=1, max_length=128, pattern=r"\S")]
UtcDatetime = Annotated[AwareDatetime, BeforeValidator(_iso_text_only), AfterValidator(_to_utc)]
Amount = Annotated[float, Field(strict=True, ge=0, allow_inf_nan=False)]


class Transaction(BaseModel):
    """One canonical card transaction to score (no label)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    transaction_id: Identifier
    tx_datetime: UtcDatetime
    customer_id: Identifier
    terminal_id: Identifier
    amount: Amount


@with_config(ConfigDict(extra="forbid"))
class TransactionRecord(TypedDict):
    """The same contract as :class:`Transaction`, validated straight into a dict (the serving hot path)."""

    transaction_id: Identifier
    tx_datetime: UtcDatetime
    customer_id: Identifier
    terminal_id: Identifier
    amount: Amount


@with_config(ConfigDict(extra="forbid"))
class TransactionBatchRecord(TypedDict):
    """A batch body validated straight into dicts."""

    transactions: Annotated[list[TransactionRecord], Field(min_length=1)]


TRANSACTION = TypeAdapter(TransactionRecord)
TRANSACTION_BATCH = TypeAdapter(TransactionBatchRecord)


class Reason(BaseModel):
    """One feature's contribution to the score, in log-odds (positive pushes towards fraud)."""

    feature: str
    contribution: float


class Score(BaseModel):
    """The decision for one transaction, naming the model version that scored it and why."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    transaction_id: str
    fraud_probability: float = Field(ge=0, le=1)
    alert: bool
    threshold: float = Field(ge=0, le=1)
    model_version: str
    reasons: list[Reason] = Field(default_factory=list, max_length=3)


class TransactionBatch(BaseModel):
    """Several transactions scored in one request."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    transactions: list[Transaction] = Field(min_length=1)


class ScoreBatch(BaseModel):
    """Decisions for a batch, in request order."""

    model_config = ConfigDict(extra="forbid")

    scores: list[Score]


class Label(BaseModel):
    """A fraud label that arrived after the transaction was scored."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    transaction_id: Identifier
    is_fraud: int = Field(strict=True, ge=0, le=1)


class LabelBatch(BaseModel):
    """Late labels, stored durably."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    labels: list[Label] = Field(min_length=1)


class LabelsStored(BaseModel):
    """How many labels were stored."""

    stored: int


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
    insecure_local: bool = False


LABEL_BATCH = TypeAdapter(LabelBatch)
