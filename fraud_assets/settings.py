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


def ray_train_storage() -> str:
    """Where Ray Train keeps its runs' checkpoints: ``$FRAUD_RAY_STORAGE`` (storage every node reaches, e.g.
    ``s3://bucket/ray`` or an NFS path, on a cluster of several machines) or a state-folder path (one machine)."""
    return os.environ.get("FRAUD_RAY_STORAGE") or str(state_dir() / "ray_train")


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


def prediction_log_location() -> str:
    """The serving prediction log: ``$FRAUD_PREDICTION_LOG`` (a ``postgresql://`` URL or a SQLite path), else
    ``predictions.sqlite`` in the state folder."""
    env = os.environ.get("FRAUD_PREDICTION_LOG")
    if env and env.startswith(("postgresql://", "postgres://")):
        return env
    return str(prediction_log_path())


def prediction_log_path() -> Path:
    """The serving prediction log's SQLite file: ``$FRAUD_PREDICTION_LOG`` or ``predictions.sqlite`` in the state
    folder.

    Raises:
        ValueError: ``$FRAUD_PREDICTION_LOG`` is a URL (read :func:`prediction_log_location`; the message hides the
            password).
    """
    env = os.environ.get("FRAUD_PREDICTION_LOG")
    if env and "://" in env:
        raise ValueError(f"$FRAUD_PREDICTION_LOG is a URL ({redact_url(env)}), not a file: read "
                         "prediction_log_location()")
    return Path(env).resolve() if env else state_dir() / "predictions.sqlite"


def online_store_location() -> str:
    """The online store: ``$FRAUD_ONLINE_STORE`` (a ``postgresql://`` URL or a SQLite path), else
    ``online_store.sqlite`` in the state folder."""
    env = os.environ.get("FRAUD_ONLINE_STORE")
    if env and env.startswith(("postgresql://", "postgres://")):
        return env
    return str(Path(env).resolve() if env else state_dir() / "online_store.sqlite")


TOKEN_KEY_ENV = "FRAUD_TOKEN_KEY"
MIN_TOKEN_KEY_BYTES = 16


def token_key() -> bytes | None:
    """The key of id tokens (``core.tokens``): ``$FRAUD_TOKEN_KEY`` as UTF-8 bytes without surrounding whitespace,
    or None when it is unset or empty (ids are then stored as given). The key is never logged or recorded.

    Raises:
        ValueError: the key is shorter than ``MIN_TOKEN_KEY_BYTES`` (the message names the variable, not the value).
    """
    key = os.environ.get(TOKEN_KEY_ENV, "").strip().encode()
    if not key:
        return None
    if len(key) < MIN_TOKEN_KEY_BYTES:
        raise ValueError(f"${TOKEN_KEY_ENV} is {len(key)} bytes; it must be at least {MIN_TOKEN_KEY_BYTES} "
                         "(make one with: python -c \"import secrets; print(secrets.token_hex(32))\")")
    return key


def redact_url(location: str) -> str:
    """``location`` with any password of a URL replaced by ``***`` (for metadata, logs and UIs)."""
    return re.sub(r"(://[^/:@]*:)[^@/]*@", r"\1***@", location)


# Console noise that helps no one in a pipeline log (download progress bars of tiny model files).
QUIET = {"MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}


def disable_telemetry() -> None:
    """Turn off phone-home (and progress-bar noise) for every engine, without overriding an explicit choice."""
    for key, value in {**TELEMETRY_OFF, **QUIET}.items():
        os.environ.setdefault(key, value)
