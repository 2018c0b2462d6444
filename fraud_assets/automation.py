"""Jobs, the monthly schedule and the new-snapshot sensor."""


import json
from pathlib import Path
from typing import Any

import dagster as dg

from fraud_assets.core.lineage import file_md5
from fraud_assets.core.months import available_months, shift_month, snapshot_path
from fraud_assets.params import Params

MONTHLY_JOB = "monthly_pipeline"
INGEST_JOB = "ingest_month"


def build_jobs(partitions: dg.PartitionsDefinition) -> list[Any]:
    """A job for the whole monthly graph and one for ingestion + features only."""
    return [
        dg.define_asset_job(MONTHLY_JOB, selection=dg.AssetSelection.all(), partitions_def=partitions,
                            description="Ingest, featurize, train, evaluate and decide for one month."),
        dg.define_asset_job(INGEST_JOB, selection=dg.AssetSelection.groups("ingestion", "features"),
                            partitions_def=partitions, description="Ingest and featurize one month."),
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

    @dg.sensor(job_name=MONTHLY_JOB, minimum_interval_seconds=30,
               default_status=dg.DefaultSensorStatus.STOPPED)
    def new_snapshot_sensor(context: dg.SensorEvaluationContext):
        """Runs the month whose snapshot is new or changed."""
        seen: dict[str, str] = json.loads(context.cursor) if context.cursor else {}
        current = {m: file_md5(snapshot_path(data_dir, m)) for m in available_months(data_dir)}
        changed = [m for m, h in current.items() if seen.get(m) != h]
        context.update_cursor(json.dumps(current, sort_keys=True))
        if not changed:
            return dg.SkipReason("no new or changed snapshot")
        return [dg.RunRequest(partition_key=m, run_key=f"snapshot-{m}-{current[m]}") for m in changed]

    return new_snapshot_sensor
