"""The monthly schedule and the new-snapshot sensor decide the right runs."""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

import dagster as dg

from fraud_assets.automation import build_schedule, build_snapshot_sensor
from fraud_assets.params import load_params


def test_sensor_requests_new_and_changed_months_once(small_project: Path, tmp_path: Path) -> None:
    root = tmp_path / "proj"
    shutil.copytree(small_project, root)
    params = load_params(root / "params.yaml")
    sensor = build_snapshot_sensor(params, root)
    with dg.instance_for_test() as instance:
        ctx = dg.build_sensor_context(instance=instance)
        first = list(sensor(ctx))
        assert sorted(r.partition_key for r in first) == ["2025-01", "2025-02", "2025-03", "2025-04"]
        ctx = dg.build_sensor_context(instance=instance, cursor=ctx.cursor)
        assert isinstance(sensor(ctx), dg.SkipReason)
        # A changed snapshot (new bytes, so a new DVC hash) triggers exactly that month again.
        path = root / params.data.dir / "2025-02.parquet"
        path.write_bytes(path.read_bytes() + b"\0")
        ctx = dg.build_sensor_context(instance=instance, cursor=ctx.cursor)
        again = list(sensor(ctx))
        assert [r.partition_key for r in again] == ["2025-02"]
        assert again[0].run_key != next(r.run_key for r in first if r.partition_key == "2025-02")


def test_schedule_runs_last_month_or_skips(small_project: Path) -> None:
    params = load_params(small_project / "params.yaml")
    schedule = build_schedule(params, small_project)
    with dg.instance_for_test() as instance:
        ctx = dg.build_schedule_context(instance=instance,
                                        scheduled_execution_time=dt.datetime(2025, 5, 2, 6, tzinfo=dt.UTC))
        req = schedule(ctx)
        assert isinstance(req, dg.RunRequest) and req.partition_key == "2025-04"
        ctx = dg.build_schedule_context(instance=instance,
                                        scheduled_execution_time=dt.datetime(2025, 9, 2, 6, tzinfo=dt.UTC))
        skip = schedule(ctx)
        assert isinstance(skip, dg.SkipReason) and "2025-08" in skip.skip_message
