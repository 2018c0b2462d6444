"""Run the asset graph as real Dagster runs in the project's persistent instance (what `make demo` uses)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import dagster as dg

from fraud_assets import settings
from fraud_assets.orchestration.definitions import build_assets, default_resources
from fraud_assets.params import Params

INSTANCE_CONFIG = "telemetry:\n  enabled: false\n"  # DAGSTER_DISABLE_TELEMETRY alone leaves the banner on


def ensure_dagster_home(home: Path | None = None) -> Path:
    """The Dagster home folder (default: the state folder's), with a ``dagster.yaml`` turning telemetry off
    unless one is there already (a team's own instance config is never overwritten)."""
    home = home or settings.dagster_home()
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists():
        config.write_text(INSTANCE_CONFIG)
    return home


def project_instance() -> dg.DagsterInstance:
    """The persistent Dagster instance under the state folder (the one `dagster dev` shows)."""
    os.environ["DAGSTER_HOME"] = str(ensure_dagster_home())
    return dg.DagsterInstance.get()


def run_months(months: Sequence[str], train_month: str | None, root: Path, params: Params,
               instance: dg.DagsterInstance | None = None) -> dict:
    """Ingest and featurize each of ``months``, then train, evaluate and decide for ``train_month``.

    Returns the promotion decision record (empty when ``train_month`` is None).
    Raises:
        RuntimeError: a run failed; the message names the run and the month.
    """
    assets = build_assets(params)
    resources = default_resources(root, params)
    instance = instance or project_instance()
    for month in months:
        _run(assets, resources, instance, month, dg.AssetSelection.groups("ingestion", "features"))
    if train_month is None:
        return {}
    result = _run(assets, resources, instance, train_month, dg.AssetSelection.groups("training"))
    return result.output_for_node("promotion_decision")


# The console shows warnings and errors only; every event is still in the instance (the UI's run view).
QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


def _run(assets: list, resources: dict, instance: dg.DagsterInstance, month: str,
         selection: dg.AssetSelection) -> dg.ExecuteInProcessResult:
    result = dg.materialize(assets, partition_key=month, resources=resources, instance=instance,
                            selection=selection, raise_on_error=False, tags={"fraud/launched_by": "cli"},
                            run_config=QUIET)
    if not result.success:
        errors = [e.step_failure_data.error.message.strip() for e in result.get_step_failure_events()
                  if e.step_failure_data.error]
        raise RuntimeError(f"Dagster run {result.run_id} for {month} failed: {' | '.join(errors) or 'see dagster'}")
    steps = len(result.get_step_success_events())
    print(f"dagster run {result.run_id[:8]} {month}: {steps} steps succeeded", flush=True)
    return result
