"""Shared fixtures: small simulated data and isolated state (temporary Dagster home, MLflow store)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from fraud_assets.settings import TELEMETRY_OFF

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True, scope="session")
def _no_phone_home() -> None:
    for key, value in TELEMETRY_OFF.items():
        os.environ.setdefault(key, value)


def write_small_project(root: Path, months: int = 4, n_customers: int = 600,
                        overrides: dict[str, Any] | None = None) -> Path:
    """A project folder with params.yaml scaled down and ``months`` simulated snapshots."""
    from fraud_assets.core.simulate import simulate_months
    from fraud_assets.params import load_params

    base = load_params()
    params = load_params(overrides={
        "data.n_customers": n_customers, "data.months": months,
        "split.train_months": min(base.split.train_months, months - 1),
        # A tenth of the default data learns less: the bars scale down with it (the gate itself is tested).
        "promote.min_average_precision": 0.1, "promote.min_roc_auc": 0.6, **(overrides or {})})
    root.mkdir(parents=True, exist_ok=True)
    params.write(root / "params.yaml")
    data_dir = root / params.data.dir
    data_dir.mkdir(parents=True, exist_ok=True)
    for month, frame in simulate_months(params.data, params.data.start_month, months).items():
        frame.to_parquet(data_dir / f"{month}.parquet", index=False)
    return root


@pytest.fixture(scope="module")
def small_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_small_project(tmp_path_factory.mktemp("project"))
