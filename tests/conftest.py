"""Shared fixtures: small simulated data and isolated state (temporary Dagster home, MLflow store)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fraud_assets.settings import TELEMETRY_OFF

ROOT = Path(__file__).resolve().parent.parent


def assert_features_match(got: Any, expected: Any, what: str = "") -> None:
    """Features compared at the precision batch mode stores them (float32): both sides rounded to it, then equal
    within 1e-9 or one float32 step. Two computations that agree to 1e-9 in float64 (batch and online, or two
    engines summing in another order) can round to neighbouring float32 values where they straddle a rounding
    point; nothing else passes."""
    a = np.asarray(got, dtype=np.float64).astype(np.float32).astype(np.float64)
    b = np.asarray(expected, dtype=np.float64).astype(np.float32).astype(np.float64)
    assert a.shape == b.shape, f"{what}: shapes {a.shape} and {b.shape}"
    step = np.spacing(np.abs(b).astype(np.float32)).astype(np.float64)
    same = (a == b) | (np.isnan(a) & np.isnan(b)) | (np.abs(a - b) <= 1e-9 + step)
    if not same.all():
        at = np.unravel_index(np.argmax(~same), same.shape)
        raise AssertionError(f"{what}: {int((~same).sum())} feature values differ at the stored precision, first at "
                             f"{tuple(int(i) for i in at)}: {a[at]!r} vs {b[at]!r}")


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
