"""Where state lives. Every path is computed on call, never at import time.

All runtime state (Dagster home, MLflow store, DVC remote, prediction log, logs) lives under one
git-ignored folder: ``$FRAUD_STATE_DIR`` or ``<project>/.state``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

TELEMETRY_OFF = {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DVC_NO_ANALYTICS": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
    "DAGSTER_DISABLE_TELEMETRY": "1",
    "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
}


def project_root() -> Path:
    """The project folder: ``$FRAUD_PROJECT_ROOT`` or the folder holding params.yaml above this file."""
    env = os.environ.get("FRAUD_PROJECT_ROOT")
    if env:
        return Path(env).resolve()
    here = Path(__file__).resolve().parent.parent
    if (here / "params.yaml").exists():
        return here
    return Path.cwd().resolve()


def state_dir() -> Path:
    """The one folder that holds all runtime state."""
    env = os.environ.get("FRAUD_STATE_DIR")
    return Path(env).resolve() if env else project_root() / ".state"


def dagster_home() -> Path:
    return Path(os.environ.get("DAGSTER_HOME") or state_dir() / "dagster")


def mlflow_tracking_uri() -> str:
    """``$MLFLOW_TRACKING_URI`` or the embedded SQLite store in the state folder."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return f"sqlite:///{state_dir() / 'mlflow' / 'mlflow.db'}"


def mlflow_artifact_root() -> str:
    """Where new experiments keep artifacts: ``$FRAUD_MLFLOW_ARTIFACT_ROOT`` or a state-folder path."""
    env = os.environ.get("FRAUD_MLFLOW_ARTIFACT_ROOT")
    if env:
        return env
    return (state_dir() / "mlflow" / "artifacts").as_uri()


def prediction_log_path() -> Path:
    """The serving prediction log (SQLite): ``$FRAUD_PREDICTION_LOG`` or ``predictions.sqlite`` in the state folder."""
    env = os.environ.get("FRAUD_PREDICTION_LOG")
    return Path(env).resolve() if env else state_dir() / "predictions.sqlite"


def online_store_location() -> str:
    """The online store: ``$FRAUD_ONLINE_STORE`` (a ``postgresql://`` URL or a SQLite path), else
    ``online_store.sqlite`` in the state folder."""
    env = os.environ.get("FRAUD_ONLINE_STORE")
    if env and env.startswith(("postgresql://", "postgres://")):
        return env
    return str(Path(env).resolve() if env else state_dir() / "online_store.sqlite")


def redact_url(location: str) -> str:
    """``location`` with any password of a URL replaced by ``***`` (for metadata, logs and UIs)."""
    return re.sub(r"(://[^/:@]*:)[^@/]*@", r"\1***@", location)


# Console noise that helps no one in a pipeline log (download progress bars of tiny model files).
QUIET = {"MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}


def disable_telemetry() -> None:
    """Turn off phone-home (and progress-bar noise) for every engine, without overriding an explicit choice."""
    for key, value in {**TELEMETRY_OFF, **QUIET}.items():
        os.environ.setdefault(key, value)
