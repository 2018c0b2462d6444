"""The one place the Dagster Definitions are built (lazily, when Dagster loads the code location)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import dagster as dg

from fraud_assets import settings
from fraud_assets.orchestration.assets.features import build_feature_assets
from fraud_assets.orchestration.assets.ingestion import build_ingestion_assets
from fraud_assets.orchestration.assets.monitoring import build_monitoring_assets
from fraud_assets.orchestration.assets.training import build_training_assets
from fraud_assets.orchestration.automation import (
    build_drift_sensor,
    build_failure_sensor,
    build_jobs,
    build_live_performance_sensor,
    build_schedule,
    build_snapshot_sensor,
)
from fraud_assets.orchestration.partitions import first_month, monthly_partitions
from fraud_assets.orchestration.resources import (
    ComputeResource,
    FrameIOManager,
    MlflowResource,
    OnlineStoreResource,
    PredictionLogResource,
    ProjectResource,
)
from fraud_assets.params import Params, load_params


def build_assets(params: Params, first: str | None = None) -> list[dg.AssetsDefinition]:
    """Every asset of the graph, monthly partitioned from ``first`` (default: ``data.start_month``)."""
    parts = monthly_partitions(first or params.data.start_month)
    return [*build_ingestion_assets(params, parts), *build_feature_assets(params, parts),
            *build_training_assets(params, parts), *build_monitoring_assets(params, parts)]


def _from_env(name: str, value: str) -> str | dg.EnvVar:
    """A URL from the environment as a Dagster ``EnvVar``, so the UI shows its name, never its credentials; the
    embedded defaults (paths under the state folder) hold no secret and are given as they are."""
    return dg.EnvVar(name) if "://" in os.environ.get(name, "") else value


def default_resources(root: Path, params: Params) -> dict[str, Any]:
    """Resources on the embedded defaults: files, SQLite MLflow, all under the state folder."""
    return {
        "project": ProjectResource(root=str(root), data_subdir=params.data.dir),
        "mlflow": MlflowResource(tracking_uri=_from_env("MLFLOW_TRACKING_URI", settings.mlflow_tracking_uri()),
                                 artifact_root=settings.mlflow_artifact_root(),
                                 experiment_name=params.registry.experiment),
        "io_manager": FrameIOManager(base_dir=str(settings.state_dir() / "assets")),
        "prediction_log": PredictionLogResource(path=_from_env("FRAUD_PREDICTION_LOG",
                                                               settings.prediction_log_location())),
        "store": OnlineStoreResource(path=_from_env("FRAUD_ONLINE_STORE", settings.online_store_location())),
        "compute": ComputeResource.of(params.compute, os.environ.get("FRAUD_RAY_ADDRESS") or None),
    }


def build_definitions(root: Path | None = None, resources: Mapping[str, Any] | None = None,
                      params: Params | None = None) -> dg.Definitions:
    """Definitions for the project at ``root`` with its ``params.yaml`` (or ``params``; resources overridable)."""
    settings.disable_telemetry()
    root = root or settings.project_root()
    params = params or load_params(root / "params.yaml")
    first = first_month(root / params.data.dir, params)
    parts = monthly_partitions(first)
    return dg.Definitions(
        assets=build_assets(params, first),
        jobs=build_jobs(parts),
        schedules=[build_schedule(params, root)],
        sensors=[build_snapshot_sensor(params, root), build_drift_sensor(),
                 build_live_performance_sensor(), build_failure_sensor()],
        resources={**default_resources(root, params), **(resources or {})},
    )


@dg.definitions
def defs() -> dg.Definitions:
    """Loaded by ``dagster dev`` / ``dagster asset materialize`` through workspace.yaml."""
    return build_definitions()
