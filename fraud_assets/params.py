"""Typed parameters loaded from ``params.yaml``: the one place a size, hyperparameter or threshold lives.

Models here declare *types and bounds only*; every value comes from the YAML file, so nothing
re-declares a default in code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _ordered_pair(v: tuple[float, float], name: str) -> tuple[float, float]:
    if v[0] > v[1]:
        raise ValueError(f"{name} must be [low, high] with low <= high, got {list(v)}")
    return v


class FraudSimParams(_Strict):
    large_amount_threshold: float = Field(gt=0)
    large_amount_rate: float = Field(ge=0, le=1)
    terminal_compromise_rate: float = Field(ge=0, le=1)
    terminal_compromise_days: int = Field(ge=1)
    card_compromise_rate: float = Field(ge=0, le=1)
    card_compromise_days: int = Field(ge=1)
    card_fraud_share: float = Field(ge=0, le=1)
    card_amount_multiplier: tuple[float, float]
    card_testing_start_month: str = Field(pattern=r"^\d{4}-(0[1-9]|1[0-2])$")
    card_testing_rate: float = Field(ge=0, le=1)
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
    start_month: str = Field(pattern=r"^\d{4}-(0[1-9]|1[0-2])$")
    months: int = Field(ge=1, le=120)
    seed: int
    max_quarantine_share: float = Field(ge=0, le=1)
    n_customers: int = Field(ge=1)
    n_terminals: int = Field(ge=1)
    area_size: float = Field(gt=0)
    terminal_radius: float = Field(gt=0)
    mean_tx_per_day: float = Field(gt=0)
    amount_mean_range: tuple[float, float]
    hour_peak: float = Field(ge=0, lt=24)
    hour_spread: float = Field(gt=0)
    weekend_volume_factor: float = Field(ge=0)
    monthly_volume_growth: float = Field(gt=-1)
    monthly_amount_drift: float = Field(gt=-1)
    fraud: FraudSimParams

    @field_validator("amount_mean_range")
    @classmethod
    def _amount_range(cls, v: tuple[float, float]) -> tuple[float, float]:
        if v[0] <= 0:
            raise ValueError(f"amount_mean_range must be positive, got {list(v)}")
        return _ordered_pair(v, "amount_mean_range")


class FeatureParams(_Strict):
    night_hours: tuple[int, int]
    label_delay_days: int = Field(ge=0)
    new_terminal_days: int = Field(ge=1)
    burst_window_seconds: int = Field(ge=1)


class OnlineStoreParams(_Strict):
    retention_days: int = Field(ge=1)


class SplitParams(_Strict):
    train_months: int = Field(ge=1)
    validation_days: int = Field(ge=1)


class TrainParams(_Strict):
    n_estimators: int = Field(ge=1)
    max_depth: int = Field(ge=1)
    learning_rate: float = Field(gt=0)
    subsample: float = Field(gt=0, le=1)
    colsample_bytree: float = Field(gt=0, le=1)
    min_child_weight: float = Field(ge=0)
    early_stopping_rounds: int = Field(ge=1)
    n_threads: int = Field(ge=1)
    scale_pos_weight: float | Literal["auto"]
    seed: int
    baseline_c: float = Field(gt=0)
    baseline_max_iter: int = Field(ge=1)


class EvaluateParams(_Strict):
    threshold_rule: Literal["precision_target", "alert_budget", "cost"]
    precision_target: float = Field(gt=0, le=1)
    alerts_per_day: float = Field(ge=0)
    cost_missed_fraud: float = Field(ge=0)
    cost_review: float = Field(ge=0)
    card_precision_k: int = Field(ge=1)
    calibration_bins: int = Field(ge=2)


class PromoteParams(_Strict):
    primary_metric: Literal["average_precision", "roc_auc"]
    min_improvement: float = Field(ge=0)
    min_average_precision: float = Field(ge=0, le=1)
    min_roc_auc: float = Field(ge=0, le=1)


class ServeParams(_Strict):
    host: str
    port: int = Field(ge=1, le=65535)
    model_name: str
    alias: str
    num_threads: int = Field(ge=1)
    min_replicas: int = Field(ge=1)
    max_replicas: int = Field(ge=1)
    target_ongoing_requests: float = Field(gt=0)
    max_ongoing_requests: int = Field(ge=1)
    max_queued_requests: int = Field(ge=1)
    batch_wait_timeout_s: float = Field(ge=0, le=1)
    max_batch_size: int = Field(ge=1)
    reload_interval_s: float = Field(gt=0)
    max_batch_rows: int = Field(ge=1)
    max_body_bytes: int = Field(ge=1024)
    direct_ingress: bool
    direct_ingress_port: int = Field(ge=1024, le=65000)


class MonitorParams(_Strict):
    reference_months: int = Field(ge=1)
    psi_bins: int = Field(ge=2)
    psi_threshold: float = Field(gt=0)
    ks_threshold: float = Field(gt=0, le=1)
    min_drifted_features: int = Field(ge=1)
    score_psi_threshold: float = Field(gt=0)
    fraud_rate_change_threshold: float = Field(gt=0)
    min_live_labelled: int = Field(ge=1)
    min_live_average_precision: float = Field(ge=0, le=1)


class Params(_Strict):
    data: DataParams
    features: FeatureParams
    online_store: OnlineStoreParams
    split: SplitParams
    train: TrainParams
    evaluate: EvaluateParams
    promote: PromoteParams
    serve: ServeParams
    monitor: MonitorParams

    @model_validator(mode="after")
    def _store_keeps_what_features_read(self) -> Params:
        from fraud_assets.core.features import lookback_days  # core imports this module: import late

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


def load_params(path: str | Path | None = None) -> Params:
    """Load and validate ``params.yaml`` (default: the one at the project root)."""
    from fraud_assets.settings import project_root

    p = Path(path) if path is not None else project_root() / "params.yaml"
    try:
        raw = yaml.safe_load(p.read_text())
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"params file not found: {p}") from exc
    if not isinstance(raw, dict):
        raise ValueError(f"{p}: expected a mapping of sections, got {type(raw).__name__}")
    return Params.model_validate(raw)
