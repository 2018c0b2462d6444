"""Credentials in the environment never reach what the Dagster UI shows (resource config) or asset metadata."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest
from dagster._core.remote_representation.external_data import RepositorySnap
from dagster_shared.serdes import serialize_value

from fraud_assets.orchestration.definitions import build_definitions
from fraud_assets.settings import redact_url

SECRET = "s3cret-Pa55"


def test_urls_with_passwords_are_redacted() -> None:
    assert redact_url(f"postgresql://fraud:{SECRET}@db.internal:5432/store") == \
        "postgresql://fraud:***@db.internal:5432/store"
    assert redact_url("/var/lib/fraud/online_store.sqlite") == "/var/lib/fraud/online_store.sqlite"
    assert redact_url("postgresql://fraud@db/store") == "postgresql://fraud@db/store"  # no password, nothing to hide


def test_resource_config_shows_the_variable_not_the_credentials(small_project: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"postgresql://mlflow:{SECRET}@127.0.0.1:1/mlflow")
    monkeypatch.setenv("FRAUD_ONLINE_STORE", f"postgresql://fraud:{SECRET}@127.0.0.1:1/store")
    defs = build_definitions(small_project)
    snapshot = serialize_value(RepositorySnap.from_def(defs.get_repository_def()))  # what the UI is sent
    assert SECRET not in snapshot
    assert "MLFLOW_TRACKING_URI" in snapshot and "FRAUD_ONLINE_STORE" in snapshot
    assert isinstance(defs.resources["store"].path, dg.EnvVar)


def test_the_serving_app_carries_no_credentials_in_its_arguments(monkeypatch: pytest.MonkeyPatch) -> None:
    """Serve keeps a deployment's arguments in its controller and shows them (`serve status`, the dashboard): the
    tracking URI and the store DSN stay in the environment, where each replica reads them."""
    import cloudpickle

    from serving.app import AppArgs, build_app

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"postgresql://mlflow:{SECRET}@127.0.0.1:1/mlflow")
    monkeypatch.setenv("FRAUD_ONLINE_STORE", f"postgresql://fraud:{SECRET}@127.0.0.1:1/store")
    bound = build_app(AppArgs())._bound_deployment
    assert SECRET.encode() not in cloudpickle.dumps((bound.init_args, bound.init_kwargs))  # what Serve keeps
    assert bound.init_kwargs["tracking_uri"] is None and bound.init_kwargs["online_store"] is None
    assert bound.init_kwargs["prediction_log"] is None
