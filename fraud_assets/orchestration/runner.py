"""Run the asset graph as real Dagster runs in the project's persistent instance (what `make demo` uses)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import dagster as dg

from fraud_assets import settings
from fraud_assets.orchestration.automation import SERIAL_TAG
from fraud_assets.orchestration.definitions import build_assets, default_resources
from fraud_assets.orchestration.partitions import first_month
from fraud_assets.params import Params

# Telemetry off (DAGSTER_DISABLE_TELEMETRY alone leaves the banner on). Runs that read each other's months (a month's
# features read the months before it; training reads them all) are queued one at a time in the order the sensor
# requested them, so N months arriving at once give the same bytes as a sequential `fraud pipeline`.
INSTANCE_CONFIG = f"""telemetry:
  enabled: false
concurrency:
  runs:
    tag_concurrency_limits:
      - key: "{SERIAL_TAG[0]}"
        value: "{SERIAL_TAG[1]}"
        limit: 1
"""


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
    assets = build_assets(params, first_month(root / params.data.dir, params))
    resources = default_resources(root, params)
    instance = instance or project_instance()
    for month in months:
        _run(assets, resources, instance, month, dg.AssetSelection.groups("ingestion", "features"))
    if train_month is None:
        return {}
    result = _run(assets, resources, instance, train_month, dg.AssetSelection.groups("training"))
    blocked = blocked_checks(result)
    if blocked:
        evaluation = result.output_for_node("challenger_evaluation")
        return {"holdout_month": train_month, "challenger_version": evaluation["challenger_version"],
                "promoted": False, "reason": "refused by " + "; ".join(blocked),
                "champion_version_after": evaluation["champion_version"],
                "challenger_metrics": evaluation["challenger"], "dagster_run_id": result.run_id}
    return result.output_for_node("promotion_decision")


# Dagster's own console lines stay off: what a person needs is printed here (steps, figures, decisions) and every
# event is still in the instance (the UI's run view). A failure is raised with its causes.
QUIET = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}


def blocked_checks(result: dg.ExecuteInProcessResult) -> list[str]:
    """``check: why`` for each failed blocking asset check of a run (a refused challenger, a bad month)."""
    return [f"{e.check_name}: {e.metadata['failures'].value if 'failures' in e.metadata else 'failed'}"
            for e in result.get_asset_check_evaluations() if not e.passed and e.severity == dg.AssetCheckSeverity.ERROR]


def failure_message(result: dg.ExecuteInProcessResult) -> str:
    """The errors of a failed run's steps, one after the other (Dagster's wrapper and the user's cause)."""
    errors = []
    for event in result.get_step_failure_events():
        error = event.step_failure_data.error
        while error is not None:
            errors.append(error.message.strip().splitlines()[0])
            error = error.cause
    return " | ".join(errors) or "see the run in Dagster"


def _run(assets: list, resources: dict, instance: dg.DagsterInstance, month: str,
         selection: dg.AssetSelection) -> dg.ExecuteInProcessResult:
    result = dg.materialize(assets, partition_key=month, resources=resources, instance=instance,
                            selection=selection, raise_on_error=False, tags={"fraud/launched_by": "cli"},
                            run_config=QUIET)
    if not result.success and not (blocked_checks(result) and selection == dg.AssetSelection.groups("training")):
        raise RuntimeError(f"Dagster run {result.run_id} for {month} failed: {failure_message(result)}")
    steps = len(result.get_step_success_events())
    print(f"dagster run {result.run_id[:8]} {month}: {steps} steps succeeded", flush=True)
    return result
