"""History at the seams: a month's features need the months before them, and runs of several months are ordered.

A month's features read ``history_months`` (two) months back. If one of them is not materialized the run fails
naming it, instead of computing features with no history; the sensor's runs of several months carry the serial
tag the instance's run queue starts one at a time, oldest first, and run in that order they give the same bytes
as a sequential `fraud pipeline`.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import dagster as dg
import pytest
import yaml

from fraud_assets.orchestration.automation import INGEST_JOB, MONTHLY_JOB, RETRAIN_JOB, SERIAL_TAG
from fraud_assets.orchestration.definitions import build_assets, build_definitions
from fraud_assets.orchestration.runner import ensure_dagster_home
from fraud_assets.params import load_params
from tests.dagster.test_pipeline import _resources

FEATURES = ("ingestion", "features")


def _features_file(state: Path, month: str) -> bytes:
    return (state / "assets" / "transaction_features" / f"{month}.parquet").read_bytes()


def test_a_month_whose_history_is_missing_fails_naming_it(small_project: Path, tmp_path: Path) -> None:
    params = load_params(small_project / "params.yaml")
    assets, resources = build_assets(params), _resources(small_project, tmp_path)
    instance = dg.DagsterInstance.ephemeral()
    for month in ("2025-01", "2025-03"):  # February never materialized
        dg.materialize(assets, partition_key=month, resources=resources, instance=instance,
                       selection=dg.AssetSelection.groups("ingestion"))
    res = dg.materialize(assets, partition_key="2025-03", resources=resources, instance=instance,
                         selection=["transaction_features"], raise_on_error=False)
    assert not res.success
    message = res.get_step_failure_events()[0].step_failure_data.error.message
    assert "features of 2025-03 needs 2025-02, not materialized yet" in message
    # The first month of data is a cold start: nothing before it is needed.
    first = dg.materialize(assets, partition_key="2025-01", resources=resources, instance=instance,
                           selection=["transaction_features"])
    assert first.success


def test_three_months_at_once_through_the_sensor_equal_a_sequential_pipeline(small_project: Path, tmp_path: Path
                                                                            ) -> None:
    root = tmp_path / "project"
    shutil.copytree(small_project, root)
    months = ["2025-01", "2025-02", "2025-03"]
    (root / "data" / "transactions" / "2025-04.parquet").unlink()
    # Sequential: one month after the other, as `fraud pipeline` runs them.
    sequential = tmp_path / "sequential"
    params = load_params(root / "params.yaml")
    assets = build_assets(params)
    for month in months:
        assert dg.materialize(assets, partition_key=month, resources=_resources(root, sequential),
                              instance=dg.DagsterInstance.ephemeral(), selection=dg.AssetSelection.groups(*FEATURES)
                              ).success
    # At once: the real sensor sees three new snapshots and asks for three runs.
    at_once = tmp_path / "at-once"
    defs = build_definitions(root, resources=_resources(root, at_once))
    with dg.instance_for_test() as instance:
        ctx = dg.build_sensor_context(instance=instance, definitions=defs)
        requests = list(defs.resolve_sensor_def("new_snapshot_sensor")(ctx))
        assert [r.partition_key for r in requests] == months  # submitted oldest first: the queue keeps that order
        job = defs.resolve_job_def(INGEST_JOB)
        assert job.tags[SERIAL_TAG[0]] == SERIAL_TAG[1]  # ... and starts one run with this tag at a time
        for request in requests:
            assert job.execute_in_process(partition_key=request.partition_key, instance=instance).success
    for month in months:
        assert _features_file(at_once, month) == _features_file(sequential, month), month


def test_the_dagster_home_queues_serial_runs_one_at_a_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = ensure_dagster_home(tmp_path / "dagster")
    config = yaml.safe_load((home / "dagster.yaml").read_text())
    assert config["telemetry"] == {"enabled": False}
    assert {"key": SERIAL_TAG[0], "value": SERIAL_TAG[1], "limit": 1} in config["concurrency"]["runs"][
        "tag_concurrency_limits"]
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    with dg.DagsterInstance.get() as instance:  # the instance `dagster dev` and the daemon load from it
        limits = instance.get_concurrency_config().run_queue_config.tag_concurrency_limits
    assert limits == [{"key": SERIAL_TAG[0], "value": SERIAL_TAG[1], "limit": 1}]
    defs = build_definitions()
    for name in (INGEST_JOB, MONTHLY_JOB, RETRAIN_JOB):
        assert defs.resolve_job_def(name).tags.get(SERIAL_TAG[0]) == SERIAL_TAG[1], name
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: true\n")  # a team's own config is kept
    ensure_dagster_home(home)
    assert "enabled: true" in (home / "dagster.yaml").read_text()


def test_asset_files_are_replaced_whole_or_not_at_all(tmp_path: Path) -> None:
    from fraud_assets.orchestration.resources import write_atomically

    path = write_atomically(tmp_path / "m" / "2025-01.json", lambda tmp: tmp.write_text('{"v": 1}'))

    def crash(tmp: Path) -> None:
        tmp.write_text('{"v": 2, "trunc')
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomically(path, crash)
    assert path.read_text() == '{"v": 1}'  # the previous version, whole
    assert [p.name for p in path.parent.iterdir()] == ["2025-01.json"]  # no temporary file left behind
