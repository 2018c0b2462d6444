"""The monthly schedule and the new-snapshot sensor decide the right runs."""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

import dagster as dg

from fraud_assets.orchestration.automation import build_schedule, build_snapshot_sensor
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


def test_drift_sensor_requests_a_retrain_only_on_drift() -> None:
    from fraud_assets.orchestration.automation import RETRAIN_JOB, build_drift_sensor

    sensor = build_drift_sensor()
    @dg.asset
    def challenger_model() -> None:
        return None

    defs = dg.Definitions(assets=[dg.AssetSpec("drift_report"), challenger_model], sensors=[sensor],
                          jobs=[dg.define_asset_job(RETRAIN_JOB, selection=["challenger_model"])])
    with dg.instance_for_test() as instance:
        cursor = None
        answers = []
        for month, drifted in (("2025-03", False), ("2025-04", True)):
            instance.report_runless_asset_event(dg.AssetMaterialization(
                "drift_report", partition=month, metadata={"drift_detected": drifted, "reasons": "2 features"}))
            ctx = dg.build_sensor_context(instance=instance, definitions=defs, cursor=cursor)
            answers.append(list(sensor(ctx)))
            cursor = ctx.cursor
        (skip,), (request,) = answers
        assert isinstance(skip, dg.SkipReason) and "2025-03" in skip.skip_message
        assert isinstance(request, dg.RunRequest)
        assert request.partition_key == "2025-04" and request.tags["fraud/trigger"] == "drift"


def test_live_performance_sensor_requests_a_retrain_on_a_drop() -> None:
    from fraud_assets.orchestration.automation import RETRAIN_JOB, build_live_performance_sensor

    sensor = build_live_performance_sensor()

    @dg.asset
    def challenger_model() -> None:
        return None

    defs = dg.Definitions(assets=[dg.AssetSpec("live_performance"), challenger_model], sensors=[sensor],
                          jobs=[dg.define_asset_job(RETRAIN_JOB, selection=["challenger_model"])])
    with dg.instance_for_test() as instance:
        instance.report_runless_asset_event(dg.AssetMaterialization(
            "live_performance", partition="2025-05", metadata={"performance_dropped": True}))
        (request,) = list(sensor(dg.build_sensor_context(instance=instance, definitions=defs)))
        assert request.partition_key == "2025-05" and request.tags["fraud/trigger"] == "live_performance_drop"


def test_failure_sensor_posts_to_the_webhook(monkeypatch) -> None:
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    from fraud_assets.orchestration.automation import WEBHOOK_ENV, build_failure_sensor

    received: list[dict] = []

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            return

    server = HTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv(WEBHOOK_ENV, f"http://127.0.0.1:{server.server_port}/alerts")

    @dg.asset
    def broken() -> None:
        raise ValueError("snapshot 2025-04.parquet is unreadable")

    try:
        with dg.instance_for_test() as instance:
            result = dg.materialize([broken], instance=instance, raise_on_error=False)
            assert not result.success
            run = instance.get_run_by_id(result.run_id)
            failure = next(e for e in result.all_events if e.event_type == dg.DagsterEventType.RUN_FAILURE)
            ctx = dg.build_run_status_sensor_context(sensor_name="run_failure_alert", dagster_instance=instance,
                                                     dagster_run=run, dagster_event=failure).for_run_failure()
            build_failure_sensor()(ctx)
    finally:
        server.shutdown()
    (alert,) = received
    assert alert["event"] == "dagster_run_failed" and alert["run_id"] == result.run_id
    assert "unreadable" in alert["steps"][0]["error"]
