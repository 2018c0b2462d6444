"""Typed parameters loaded from ``params.yaml``: the one place a size, hyperparameter or threshold lives.

Models here declare *types and bounds only*; every value comes from the YAML file, so nothing
re-declares a default in code.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date
from itertools import pairwise
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    ValidationInfo,
    field_validator,
    model_validator,
)

from fraud_assets.settings import project_root
from fraud_assets.windows import lookback_days

# The canonical string id columns (schemas.TransactionModel) that may be tokenized: transaction_id is not, since
# late labels and every answer are matched by it.
TOKENIZABLE_COLUMNS = ("customer_id", "terminal_id")
Month = Annotated[str, Field(pattern=r"^\d{4}-(0[1-9]|1[0-2])$")]  # YYYY-MM
Share = Annotated[float, Field(ge=0, le=1)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _ordered_pair(v: tuple[float, float], name: str) -> tuple[float, float]:
    if v[0] > v[1]:
        raise ValueError(f"{name} must be [low, high] with low <= high, got {list(v)}")
    return v


class FraudSimParams(_Strict):
    large_amount_threshold: PositiveFloat
    large_amount_rate: Share
    terminal_compromise_rate: Share
    terminal_compromise_days: PositiveInt
    card_compromise_rate: Share
    card_compromise_days: PositiveInt
    card_fraud_share: Share
    card_amount_multiplier: tuple[float, float]
    card_testing_start_month: Month
    card_testing_rate: Share
    card_testing_burst: tuple[int, int]
    card_testing_amount: tuple[float, float]
    card_testing_gap_minutes: tuple[float, float]

    @field_validator("card_amount_multiplier", "card_testing_burst", "card_testing_amount",
                     "card_testing_gap_minutes")
    @classmethod
    def _low_high(cls, v: tuple, info: ValidationInfo) -> tuple:
        if min(v) < 0 or (info.field_name == "card_testing_burst" and v[0] < 1):
            raise ValueError(f"{info.field_name} must be positive, got {list(v)}")
        return _ordered_pair(v, info.field_name)


class DataParams(_Strict):
    dir: str
    start_month: Month
    months: int = Field(ge=1, le=120)
    seed: int
    max_quarantine_share: Share
    max_amount: PositiveFloat
    min_tx_date: date
    sensitive_columns: tuple[str, ...]
    n_customers: PositiveInt
    n_terminals: PositiveInt
    area_size: PositiveFloat
    terminal_radius: PositiveFloat
    mean_tx_per_day: PositiveFloat
    amount_mean_range: tuple[float, float]
    hour_peak: float = Field(ge=0, lt=24)
    hour_spread: PositiveFloat
    weekend_volume_factor: NonNegativeFloat
    monthly_volume_growth: float = Field(gt=-1)
    monthly_amount_drift: float = Field(gt=-1)
    label_delay_cdf: tuple[tuple[NonNegativeFloat, Share], ...]
    fraud: FraudSimParams

    @field_validator("amount_mean_range")
    @classmethod
    def _amount_range(cls, v: tuple[float, float]) -> tuple[float, float]:
        if v[0] <= 0:
            raise ValueError(f"amount_mean_range must be positive, got {list(v)}")
        return _ordered_pair(v, "amount_mean_range")

    @field_validator("label_delay_cdf")
    @classmethod
    def _delay_cdf(cls, v: tuple[tuple[float, float], ...]) -> tuple[tuple[float, float], ...]:
        days, shares = [d for d, _ in v], [s for _, s in v]
        if len(v) < 2 or any(b <= a for a, b in pairwise(days)) or any(b < a for a, b in pairwise(shares)) \
                or shares[0] != 0 or shares[-1] != 1:
            raise ValueError("label_delay_cdf must be [[days, share], ...], at least two points, days increasing, "
                             f"shares non-decreasing from 0 to exactly 1; got {[list(p) for p in v]}")
        return v

    @field_validator("sensitive_columns")
    @classmethod
    def _tokenizable(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        wrong = [c for c in v if c not in TOKENIZABLE_COLUMNS]
        if wrong or len(set(v)) < len(v):
            raise ValueError(f"sensitive_columns: each of {list(TOKENIZABLE_COLUMNS)} at most once (the canonical "
                             f"string ids that can be tokenized), got {list(v)}")
        return v


class FeatureParams(_Strict):
    night_hours: tuple[int, int]
    label_delay_days: NonNegativeInt
    new_terminal_days: PositiveInt
    burst_window_seconds: PositiveInt


class OnlineStoreParams(_Strict):
    retention_days: PositiveInt


class SplitParams(_Strict):
    train_months: PositiveInt
    validation_days: PositiveInt
    window_weeks: PositiveInt
    holdout_days: PositiveInt
    refit_on_promotion: bool


class TrainParams(_Strict):
    n_estimators: PositiveInt
    max_depth: PositiveInt
    learning_rate: PositiveFloat
    subsample: float = Field(gt=0, le=1)
    colsample_bytree: float = Field(gt=0, le=1)
    min_child_weight: NonNegativeFloat
    early_stopping_rounds: PositiveInt
    n_threads: PositiveInt
    scale_pos_weight: float | Literal["auto"]
    seed: int
    baseline_c: PositiveFloat
    baseline_max_iter: PositiveInt


class ComputeParams(_Strict):
    """Where batch work (features, training) runs: ``local`` in this process, or ``ray`` on a Ray cluster
    (``address`` of an existing one, e.g. ``head:6379`` or ``ray://head:10001``; empty starts a local Ray)."""

    engine: Literal["local", "ray"]
    address: str
    partitions: PositiveInt
    train_workers: PositiveInt
    cpus_per_worker: PositiveInt


_TUNABLE = ("max_depth", "learning_rate", "subsample", "colsample_bytree", "min_child_weight")


class TuneParams(_Strict):
    enabled: bool
    budget_seconds: PositiveFloat
    grid: dict[str, list[float]]

    @field_validator("grid")
    @classmethod
    def _tunable(cls, v: dict[str, list[float]]) -> dict[str, list[float]]:
        unknown = sorted(set(v) - set(_TUNABLE))
        if unknown or not all(v.values()):
            raise ValueError(f"tune.grid: keys from {list(_TUNABLE)}, each with at least one value; got {unknown}")
        return {k: [int(x) for x in vals] if k == "max_depth" else vals for k, vals in v.items()}


class EvaluateParams(_Strict):
    threshold_rule: Literal["precision_target", "alert_budget", "cost"]
    precision_target: float = Field(gt=0, le=1)
    alerts_per_day: NonNegativeFloat
    cost_missed_fraud: NonNegativeFloat
    cost_review: NonNegativeFloat
    k_per_1000_daily: PositiveFloat
    calibration_bins: int = Field(ge=2)


class PromoteParams(_Strict):
    primary_metric: Literal["average_precision", "roc_auc"]
    min_improvement: NonNegativeFloat
    min_average_precision: Share
    min_roc_auc: Share
    shadow_min_frauds: PositiveInt
    shadow_bootstrap: int = Field(ge=100)
    shadow_seed: int
    shadow_promotes: bool


class RegistryParams(_Strict):
    """One name for one thing: the registered model, its two aliases and the tracking experiment."""

    model_name: str = Field(min_length=1)
    champion_alias: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_-]*$")
    challenger_alias: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_-]*$")
    experiment: str = Field(min_length=1)

    @model_validator(mode="after")
    def _distinct_aliases(self) -> RegistryParams:
        if self.champion_alias == self.challenger_alias:
            raise ValueError("registry.champion_alias and registry.challenger_alias must differ")
        return self


class ServeParams(_Strict):
    host: str
    port: int = Field(ge=1, le=65535)
    num_threads: PositiveInt
    min_replicas: PositiveInt
    max_replicas: PositiveInt
    target_ongoing_requests: PositiveFloat
    upscale_delay_s: NonNegativeFloat
    downscale_delay_s: NonNegativeFloat
    max_ongoing_requests: PositiveInt
    max_queued_requests: PositiveInt
    batch_wait_timeout_s: Share
    max_batch_size: PositiveInt
    reload_interval_s: PositiveFloat
    max_batch_rows: PositiveInt
    max_body_bytes: int = Field(ge=1024)
    reasons: Literal["alerts", "all"]
    access_log: bool
    ingress: Literal["haproxy", "proxy"]
    replica_port: int = Field(ge=1024, le=65000)
    store_timeout_s: PositiveFloat
    store_read_threads: PositiveInt
    store_retry_s: PositiveFloat
    max_pending_rows: PositiveInt
    prediction_log_max_rows: PositiveInt
    prediction_log_retention_days: PositiveInt
    metrics_open: bool
    shadow: bool


class MonitorParams(_Strict):
    reference_months: PositiveInt
    psi_bins: int = Field(ge=2)
    psi_threshold: PositiveFloat
    ks_threshold: float = Field(gt=0, le=1)
    min_drifted_features: PositiveInt
    score_psi_threshold: PositiveFloat
    fraud_rate_change_threshold: PositiveFloat
    min_live_labelled: PositiveInt
    min_live_average_precision: Share


class Params(_Strict):
    data: DataParams
    features: FeatureParams
    online_store: OnlineStoreParams
    split: SplitParams
    train: TrainParams
    compute: ComputeParams
    tune: TuneParams
    evaluate: EvaluateParams
    promote: PromoteParams
    registry: RegistryParams
    serve: ServeParams
    monitor: MonitorParams

    @model_validator(mode="after")
    def _store_keeps_what_features_read(self) -> Params:
        if self.online_store.retention_days < lookback_days(self.features):
            raise ValueError(f"online_store.retention_days ({self.online_store.retention_days}) must cover the "
                             f"{lookback_days(self.features)} days of history the features read")
        return self

    @field_validator("serve")
    @classmethod
    def _replicas_ordered(cls, v: ServeParams) -> ServeParams:
        if v.max_replicas < v.min_replicas:
            raise ValueError("serve.max_replicas must be >= serve.min_replicas")
        return v

    def updated(self, overrides: Mapping[str, Any]) -> Params:
        """A validated copy with ``overrides`` (dotted keys, ``{"data.months": 3}``) applied."""
        return Params.model_validate(_apply(self.model_dump(mode="json"), overrides))

    def write(self, path: str | Path) -> Path:
        """Write these parameters as a ``params.yaml`` (for a project folder that tools read from disk)."""
        target = Path(path)
        target.write_text(yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False))
        return target


def _apply(raw: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``raw`` with each dotted key of ``overrides`` set; a key that names nothing in ``raw`` is an error."""
    for dotted, value in overrides.items():
        *parents, leaf = dotted.split(".")
        node = raw
        for i, part in enumerate(parents):
            if not isinstance(node.get(part), dict):
                raise KeyError(f"params override {dotted!r}: no section {'.'.join(parents[:i + 1])!r}")
            node = node[part]
        if leaf not in node:
            raise KeyError(f"params override {dotted!r}: no key {leaf!r} in {'.'.join(parents) or 'the top level'}")
        node[leaf] = value
    return raw


def load_params(path: str | Path | None = None, overrides: Mapping[str, Any] | None = None) -> Params:
    """Load and validate ``params.yaml`` (default: the one at the project root), with dotted ``overrides``."""
    p = Path(path) if path is not None else project_root() / "params.yaml"
    try:
        raw = yaml.safe_load(p.read_text())
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"params file not found: {p}") from exc
    if not isinstance(raw, dict):
        raise ValueError(f"{p}: expected a mapping of sections, got {type(raw).__name__}")
    return Params.model_validate(_apply(raw, overrides or {}))
