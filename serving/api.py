"""Request and response models of the scoring API (pydantic v2).

Requests are strict: unknown fields are rejected, identifiers are non-empty strings of at most 128
characters, the amount is a finite number in ``[0, data.max_amount]`` (NaN, infinities and overflowing
literals such as ``1e400`` are refused) and the timestamp must carry a timezone, fall between
``data.min_tx_date`` (UTC midnight) and one day after now; it is normalised to UTC. The bounds are
parameters, so the transaction validators are built by :func:`request_types` once per replica. How many rows a
batch may carry (``serve.max_batch_rows``) is checked by the app (413); here it is only documented.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from typing import Annotated, Any, Literal, NamedTuple

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

FUTURE_SLACK = timedelta(days=1)  # a clock ahead of ours by less than this is not refused


def _iso_text_only(value: Any) -> Any:
    if isinstance(value, int | float) and not isinstance(value, bool):
        raise ValueError("tx_datetime must be an ISO 8601 string with a timezone, not a number")
    return value


def _whole_number(value: Any) -> Any:
    """1.0 and 0.0 are JSON Schema integers: read them as such (0.5, true or "1" stay refused)."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


Identifier = Annotated[str, Field(strict=True, min_length=1, max_length=128, pattern=r"\S")]


class RequestTypes(NamedTuple):
    """Validators of the scoring bodies under one set of bounds, each straight into dicts (the hot path)."""

    transaction: TypeAdapter[dict[str, Any]]
    transaction_batch: TypeAdapter[dict[str, Any]]


def request_types(max_amount: float, min_tx_date: date, max_batch_rows: int) -> RequestTypes:
    """Validators with ``amount`` in ``[0, max_amount]`` and ``tx_datetime`` from ``min_tx_date`` (UTC midnight)
    to one day after now; ``max_batch_rows`` becomes the batch's documented ``maxItems``."""
    earliest = datetime.combine(min_tx_date, time.min, tzinfo=UTC)

    def in_range_as_utc(value: datetime) -> datetime:  # bounds first: a far date may not convert to UTC at all
        if value < earliest:
            raise ValueError(f"must not be before {earliest:%Y-%m-%d}T00:00:00Z")
        if value > datetime.now(UTC) + FUTURE_SLACK:
            raise ValueError("must not be more than one day after now")
        return value.astimezone(UTC)

    tx_datetime = Annotated[AwareDatetime, BeforeValidator(_iso_text_only), AfterValidator(in_range_as_utc), Field(
        description=f"ISO 8601 with a timezone, from {earliest:%Y-%m-%d}T00:00:00Z to one day after now")]
    amount = Annotated[float, Field(strict=True, ge=0, le=max_amount, allow_inf_nan=False)]
    record = with_config(ConfigDict(extra="forbid"))(TypedDict("Transaction", {
        "transaction_id": Identifier, "tx_datetime": tx_datetime, "customer_id": Identifier,
        "terminal_id": Identifier, "amount": amount}))
    batch = with_config(ConfigDict(extra="forbid"))(TypedDict("TransactionBatch", {
        "transactions": Annotated[list[record], Field(min_length=1, json_schema_extra={"maxItems": max_batch_rows})]}))
    return RequestTypes(TypeAdapter(record), TypeAdapter(batch))


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
    reasons: list[Reason] = Field(default_factory=list, max_length=3, description=(
        "the features that moved the score most, largest first: for alerts (serve.reasons: alerts, the default) "
        "or for every answer (serve.reasons: all); empty otherwise"))
    degraded: bool = Field(default=False, description=(
        "true when the online store could not be read in time (serve.store_timeout_s): the transaction was scored "
        "without its card's and terminal's past, as a first-ever transaction; it is still recorded in the store "
        "once the store is back"))


class ScoreBatch(BaseModel):
    """Decisions for a batch, in request order."""

    model_config = ConfigDict(extra="forbid")

    scores: list[Score]


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _label_text_only(value: Any) -> Any:
    if isinstance(value, int | float) and not isinstance(value, bool):
        raise ValueError("label_available_at must be an ISO 8601 string with a timezone, not a number")
    return value


def _label_time_as_utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    if value < _EPOCH:  # bounds first: a far date may not convert to UTC at all
        raise ValueError("must not be before 1970-01-01T00:00:00Z")
    if value > datetime.now(UTC) + FUTURE_SLACK:
        raise ValueError("must not be more than one day after now")
    return value.astimezone(UTC)


class Label(BaseModel):
    """A fraud label that arrived after the transaction was scored, and when it arrived."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    transaction_id: Identifier
    is_fraud: Annotated[int, Field(strict=True, ge=0, le=1), BeforeValidator(_whole_number)]
    label_available_at: Annotated[AwareDatetime | None, BeforeValidator(_label_text_only),
                                  AfterValidator(_label_time_as_utc)] = Field(default=None, description=(
        "when the label became known (the chargeback, the investigation's end): ISO 8601 with a timezone, at most "
        "one day after now; default: when the request arrives. Features read the label only from then on"))


class LabelBatch(BaseModel):
    """Late labels, stored durably."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    labels: list[Label] = Field(min_length=1)


class LabelsStored(BaseModel):
    """How many labels were stored."""

    stored: int


class ErrorDetail(BaseModel):
    """A refusal that is not about one field: missing key, body too large, no model serving."""

    detail: str


class FieldError(BaseModel):
    """One refused field: where it is (``["body", "amount"]``), the kind of error and a message."""

    loc: list[str | int]
    type: str
    msg: str


class ValidationErrors(BaseModel):
    """A 422: every refused field, its input not echoed."""

    detail: list[FieldError]


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
    calibrated: bool | None = None  # False: a version without a calibrator serves its raw scores
    store: dict[str, Any] | None = Field(default=None, description=(
        "the online store as this replica sees it: rows and labels waiting for it, written late, dropped, failed "
        "reads and writes, the last error (null once healed)"))
    prediction_log: dict[str, Any] | None = Field(default=None, description=(
        "the prediction log's writer: rows written, queued, waiting for a retry, dropped, the last error"))
    token_key_id: str | None = Field(default=None, description=(
        "which $FRAUD_TOKEN_KEY turns card numbers into tokens (compare with `fraud import`'s line); null: ids are "
        "used as sent"))


LABEL_BATCH = TypeAdapter(LabelBatch)


class WordedReason(Reason):
    """A reason with the feature's value in words for a person (``amount 6.2x the card's 30-day mean``)."""

    direction: Literal["raises", "lowers"]
    text: str


class AlertedTransaction(BaseModel):
    """One alert of the queue: what was scored, by which version, why, and what the investigators decided."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    transaction_id: str
    tx_datetime: str
    terminal_id: str
    amount: float
    fraud_probability: float = Field(ge=0, le=1)
    threshold: float = Field(ge=0, le=1)
    model_version: str
    status: Literal["open", "fraud", "legitimate"]
    labelled_at: str | None
    reasons: list[WordedReason]


class StoredTransaction(BaseModel):
    """One of a card's recent transactions in the online store (``is_fraud`` None: no label yet)."""

    transaction_id: str
    tx_datetime: str
    terminal_id: str
    amount: float
    is_fraud: int | None


class AlertedCard(BaseModel):
    """A card in the queue: its rank (by its highest score), status, alerts of the day and recent transactions."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    rank: int
    customer_id: str
    max_probability: float = Field(ge=0, le=1)
    status: Literal["open", "fraud", "legitimate"]
    model_versions: list[str]
    alerts: list[AlertedTransaction]
    recent: list[StoredTransaction]


class QueueSummary(BaseModel):
    """How far the review of the day's queue is (all its cards, whatever the filters)."""

    cards: int
    alerts: int
    open_cards: int
    fraud_cards: int
    legitimate_cards: int
    reviewed_cards: int
    reviewed_today: int
    confirmed_fraud: int
    precision: float | None


class AlertQueue(BaseModel):
    """``GET /alerts``: the day's cards (filtered), the review summary, and what the filters can choose from."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    day: str | None
    days: list[str]
    model_versions: list[str]
    summary: QueueSummary
    cards: list[AlertedCard]


class WeekPerformance(BaseModel):
    """Live metrics of one model version over one week (Monday, UTC) of transactions."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    week: str
    model_version: str
    scored: int
    labelled: int
    frauds: int
    alerts: int
    precision: float | None
    recall: float | None
    average_precision: float | None


class DayAlerts(BaseModel):
    """Transactions scored and alerts raised on one UTC day."""

    day: str
    scored: int
    alerts: int


class AliasMove(BaseModel):
    """One recorded move of the champion alias (a promotion or a rollback) and its reason."""

    time: str
    version: str
    previous_version: str
    actor: str
    reason: str
    kind: str


class DriftFlag(BaseModel):
    """The newest drift report of a month."""

    month: str
    drift_detected: bool
    time: str
    score_psi: float | None


class Performance(BaseModel):
    """``GET /performance``: live performance per week and version, alerts per day, champion history, drift."""

    model_config = ConfigDict(extra="forbid")

    weeks: list[WeekPerformance]
    alerts_per_day: list[DayAlerts]
    champion_history: list[AliasMove]
    drift: list[DriftFlag]
