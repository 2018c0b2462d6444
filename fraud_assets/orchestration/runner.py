"""Run the asset graph as real Dagster runs in the project's persistent instance (what `make demo` uses).

Each run is ``dagster.execute_job`` of a job Dagster rebuilds from the project folder and the params
(:func:`pipeline_job`), with the in-process executor: every output goes to the IO manager and nowhere else, and the
runner reads back only what it reports (the evaluation and the decision). ``dagster.materialize`` would also keep
every step's output in memory until the run ends (its result can return them): at a bank's size, the raw,
validated and quarantined month beside the features being computed. After each step the memory it freed is given
back (:func:`~fraud_assets.orchestration.resources.release_memory`, before a step reads its inputs and after each
run), so the next step starts from what the process holds, not from its predecessor's peak. (A Dagster hook would be
the obvious place, but a job with any hook keeps every step's outputs for its hooks: the frames stay alive.)
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import dagster as dg

from fraud_assets import settings
from fraud_assets.orchestration.automation import SERIAL_TAG
from fraud_assets.orchestration.definitions import build_assets, default_resources
from fraud_assets.orchestration.partitions import first_month
from fraud_assets.orchestration.resources import frugal_allocators, release_memory
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


INGEST_GROUPS = ("ingestion", "features")
TRAIN_GROUPS = ("training",)
PARTITION_TAG = "dagster/partition"  # the run tag naming a run's partition (as the UI, schedules and sensors set it)


def pipeline_job(root: str, params_json: str, groups: Sequence[str]) -> dg.JobDefinition:
    """The job of one `fraud pipeline` run: the asset ``groups`` of the project at ``root`` with the params
    ``params_json`` (JSON), on the embedded resources, in this process. Dagster calls it to rebuild the job from
    these arguments, so they are plain strings."""
    params = Params.model_validate_json(params_json)
    project = Path(root)
    name = "pipeline_" + "_".join(groups)
    job = dg.define_asset_job(name, selection=dg.AssetSelection.groups(*groups), executor_def=dg.in_process_executor)
    defs = dg.Definitions(assets=build_assets(params, first_month(project / params.data.dir, params)),
                          resources=default_resources(project, params), jobs=[job])
    return defs.resolve_job_def(name)


def run_months(months: Sequence[str], train_month: str | None, root: Path, params: Params,
               instance: dg.DagsterInstance | None = None) -> dict:
    """Ingest and featurize each of ``months``, then train, evaluate and decide for ``train_month``.

    Returns the promotion decision record (empty when ``train_month`` is None).
    Raises:
        RuntimeError: a run failed; the message names the run and the month.
    """
    frugal_allocators()
    instance = instance or project_instance()
    project = (str(root), params.model_dump_json())
    for month in months:
        _run(project, INGEST_GROUPS, instance, month)
    if train_month is None:
        return {}
    result = _run(project, TRAIN_GROUPS, instance, train_month)
    stored = default_resources(root, params)["io_manager"]
    blocked = blocked_checks(result)
    if blocked:
        evaluation = stored.load_partition("challenger_evaluation", train_month)
        return {"holdout_month": train_month, "challenger_version": evaluation["challenger_version"],
                "promoted": False, "reason": "refused by " + "; ".join(blocked),
                "champion_version_after": evaluation["champion_version"],
                "challenger_metrics": evaluation["challenger"], "dagster_run_id": result.run_id}
    return stored.load_partition("promotion_decision", train_month)


# Dagster's own console lines stay off: what a person needs is printed here (steps, figures, decisions) and every
# event is still in the instance (the UI's run view). A failure is raised with its causes.
QUIET = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}


def blocked_checks(result: dg.ExecuteInProcessResult | dg.JobExecutionResult) -> list[str]:
    """``check: why`` for each failed blocking asset check of a run (a refused challenger, a bad month)."""
    return [f"{e.check_name}: {e.metadata['failures'].value if 'failures' in e.metadata else 'failed'}"
            for e in result.get_asset_check_evaluations() if not e.passed and e.severity == dg.AssetCheckSeverity.ERROR]


def failure_message(result: dg.ExecuteInProcessResult | dg.JobExecutionResult) -> str:
    """The errors of a failed run's steps, one after the other (Dagster's wrapper and the user's cause)."""
    errors = []
    for event in result.get_step_failure_events():
        error = event.step_failure_data.error
        while error is not None:
            errors.append(error.message.strip().splitlines()[0])
            error = error.cause
    return " | ".join(errors) or "see the run in Dagster"


def _run(project: tuple[str, str], groups: tuple[str, ...], instance: dg.DagsterInstance, month: str
         ) -> dg.JobExecutionResult:
    """Run :func:`pipeline_job` of ``project`` (root, params JSON) for ``groups`` on partition ``month``."""
    job = dg.build_reconstructable_job(__name__, pipeline_job.__name__, reconstructable_args=(*project, groups))
    result = dg.execute_job(job, instance, run_config=QUIET, raise_on_error=False,
                            tags={PARTITION_TAG: month, "fraud/launched_by": "cli"})
    release_memory()
    if not result.success and not (blocked_checks(result) and groups == TRAIN_GROUPS):
        raise RuntimeError(f"Dagster run {result.run_id} for {month} failed: {failure_message(result)}")
    steps = len(result.get_step_success_events())
    print(f"dagster run {result.run_id[:8]} {month}: {steps} steps succeeded", flush=True)
    return result
