"""Jobs, the monthly schedule and the new-snapshot sensor."""


import json
import os
from pathlib import Path
from typing import Any

import dagster as dg

from fraud_assets.core.lineage import file_md5
from fraud_assets.core.months import available_months, shift_month, snapshot_path
from fraud_assets.orchestration.partitions import AS_OF_TAG
from fraud_assets.params import Params

MONTHLY_JOB = "monthly_pipeline"
INGEST_JOB = "ingest_month"
RETRAIN_JOB = "retrain_month"
WEBHOOK_ENV = "FRAUD_ALERT_WEBHOOK_URL"
# On every job: the run queue (dagster.yaml in the Dagster home, see runner.ensure_dagster_home) starts one run with
# this tag at a time, oldest first. A month's features read the months before it and training reads them all, so N
# months arriving at once run in order and give the bytes of a sequential `fraud pipeline`; and two challengers are
# never trained, evaluated and promoted against the same champion at once.
SERIAL_TAG = ("fraud/queue", "serial")


def build_jobs(partitions: dg.PartitionsDefinition) -> list[Any]:
    """A job for the whole monthly graph and one for ingestion + features only."""
    return [
        dg.define_asset_job(MONTHLY_JOB, selection=dg.AssetSelection.all(), partitions_def=partitions,
                            description="Ingest, featurize, train, evaluate and decide for one month.",
                            tags=dict([SERIAL_TAG])),
        dg.define_asset_job(INGEST_JOB, selection=dg.AssetSelection.groups("ingestion", "features", "monitoring"),
                            partitions_def=partitions, description="Ingest, featurize and check drift for one month.",
                            tags=dict([SERIAL_TAG])),
        dg.define_asset_job(RETRAIN_JOB, selection=dg.AssetSelection.groups("training"), partitions_def=partitions,
                            description="Train, evaluate and decide with this month as the holdout.",
                            tags=dict([SERIAL_TAG])),
    ]


def build_schedule(params: Params, root: Path) -> dg.ScheduleDefinition:
    """On the 2nd of each month, run the whole graph for the month that just ended, if its snapshot is in."""
    data_dir = root / params.data.dir

    @dg.schedule(job_name=MONTHLY_JOB, cron_schedule="0 6 2 * *", execution_timezone="UTC",
                 default_status=dg.DefaultScheduleStatus.STOPPED)
    def monthly_retrain(context: dg.ScheduleEvaluationContext):
        """Retrain on the month that just ended."""
        month = shift_month(context.scheduled_execution_time.strftime("%Y-%m"), -1)
        if not snapshot_path(data_dir, month).exists():
            return dg.SkipReason(f"no snapshot for {month} yet in {params.data.dir}")
        return dg.RunRequest(partition_key=month, run_key=f"scheduled-{month}")

    return monthly_retrain


def build_snapshot_sensor(params: Params, root: Path) -> dg.SensorDefinition:
    """Start the monthly graph when a month's snapshot appears or its bytes change (a new DVC hash)."""
    data_dir = root / params.data.dir

    @dg.sensor(job_name=INGEST_JOB, minimum_interval_seconds=30,
               default_status=dg.DefaultSensorStatus.STOPPED)
    def new_snapshot_sensor(context: dg.SensorEvaluationContext):
        """Ingests, featurizes and checks drift for the month whose snapshot is new or changed."""
        seen: dict[str, str] = json.loads(context.cursor) if context.cursor else {}
        current = {m: file_md5(snapshot_path(data_dir, m)) for m in available_months(data_dir)}
        changed = [m for m, h in current.items() if seen.get(m) != h]
        context.update_cursor(json.dumps(current, sort_keys=True))
        if not changed:
            return dg.SkipReason("no new or changed snapshot")
        return [dg.RunRequest(partition_key=m, run_key=f"snapshot-{m}-{current[m]}") for m in changed]

    return new_snapshot_sensor


def make_retrain_sensor(name: str, asset: str, flag: str, trigger: str) -> dg.SensorDefinition:
    """A sensor that runs ``retrain_month`` for a partition whose ``asset`` materialized with ``flag`` true."""

    @dg.asset_sensor(name=name, asset_key=dg.AssetKey(asset), job_name=RETRAIN_JOB, minimum_interval_seconds=30,
                     default_status=dg.DefaultSensorStatus.STOPPED)
    def _sensor(context: dg.SensorEvaluationContext, asset_event: dg.EventLogEntry):
        mat = asset_event.asset_materialization
        if mat is None or mat.partition is None:
            return dg.SkipReason(f"{asset} without a partition")
        value = mat.metadata.get(flag)
        if value is None or not value.value:
            return dg.SkipReason(f"no {trigger} in {mat.partition}")
        reasons = mat.metadata.get("reasons")
        context.log.info(f"{trigger} in {mat.partition}: {reasons.value if reasons else flag}")
        # Inside a month the retrain cannot wait for its end: it trains on the rolling window as of the newest
        # transaction the asset saw (core.split.split_rolling).
        as_of = mat.metadata.get("as_of")
        tags = {"fraud/trigger": trigger}
        if as_of is not None and as_of.value:
            tags[AS_OF_TAG] = str(as_of.value)
        return dg.RunRequest(partition_key=mat.partition, run_key=f"{trigger}-{mat.partition}-{asset_event.run_id}",
                             tags=tags)

    _sensor.__doc__ = f"Retrains when {asset} reports {flag}."
    return _sensor


def build_drift_sensor() -> dg.SensorDefinition:
    """Retrain with a month as holdout when its drift report says the data moved."""
    return make_retrain_sensor("drift_retrain_sensor", "drift_report", "drift_detected", "drift")


def build_live_performance_sensor() -> dg.SensorDefinition:
    """Retrain when the served model's live AUPRC on a month falls below its floor."""
    return make_retrain_sensor("live_performance_retrain_sensor", "live_performance", "performance_dropped",
                               "live_performance_drop")


def failure_payload(context: dg.RunFailureSensorContext) -> dict[str, Any]:
    """What a failure alert says: job, run, partition and the failing steps' errors (never secrets)."""
    run = context.dagster_run
    steps = [{"step": e.step_key, "error": _error_text(e.event_specific_data.error)[:2000]}
             for e in context.get_step_failure_events() if e.event_specific_data and e.event_specific_data.error]
    return {"event": "dagster_run_failed", "job": run.job_name, "run_id": run.run_id,
            "partition": run.tags.get("dagster/partition"), "failure": context.failure_event.message, "steps": steps}


def _error_text(error: Any) -> str:
    """The error and its causes, one line each (Dagster wraps the user's exception as the cause)."""
    lines = []
    while error is not None:
        lines.append(error.message.strip())
        error = error.cause
    return " <- ".join(lines)


def build_failure_sensor() -> dg.SensorDefinition:
    """Report every failed run: to the log, and to a webhook when ``FRAUD_ALERT_WEBHOOK_URL`` is set."""

    @dg.run_failure_sensor(name="run_failure_alert", minimum_interval_seconds=30,
                           default_status=dg.DefaultSensorStatus.STOPPED)
    def run_failure_alert(context: dg.RunFailureSensorContext) -> None:
        """Logs a failed run and posts it to the configured webhook."""
        payload = failure_payload(context)
        context.log.error(f"run {payload['run_id']} of {payload['job']} failed: {json.dumps(payload)}")
        url = os.environ.get(WEBHOOK_ENV)
        if url:
            import httpx

            httpx.post(url, json=payload, timeout=10.0).raise_for_status()

    return run_failure_alert
