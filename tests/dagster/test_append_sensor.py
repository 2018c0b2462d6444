"""After `fraud import --append`: the new-snapshot sensor asks for the changed month only, and the month's data
version in Dagster is the DVC hash of the appended bytes."""

from __future__ import annotations

import subprocess
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest
from typer.testing import CliRunner

from fraud_assets.adapters import dvc_repo
from fraud_assets.cli.main import app
from fraud_assets.core.lineage import file_md5
from fraud_assets.core.simulate import simulate_months
from fraud_assets.orchestration.assets.ingestion import build_ingestion_assets
from fraud_assets.orchestration.automation import build_snapshot_sensor
from fraud_assets.orchestration.partitions import monthly_partitions
from fraud_assets.orchestration.resources import FrameIOManager, ProjectResource
from fraud_assets.params import load_params

P = load_params()


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A git+DVC project whose January (to the 24th) and February were imported whole."""
    monkeypatch.delenv("FRAUD_STATE_DIR", raising=False)
    monkeypatch.delenv("FRAUD_TOKEN_KEY", raising=False)
    root = tmp_path / "repo"
    root.mkdir()
    P.write(root / "params.yaml")
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    dvc_repo.ensure_repo(root)
    monkeypatch.setenv("FRAUD_PROJECT_ROOT", str(root))
    truth = pd.concat(simulate_months(P.data.model_copy(update={"n_customers": 40}), "2025-01", 2).values())
    t = truth["tx_datetime"]
    jan_end, week_end = pd.Timestamp("2025-01-25", tz="UTC"), pd.Timestamp("2025-02-01", tz="UTC")
    canonical = truth.iloc[:, :6]
    canonical[t < jan_end].to_parquet(tmp_path / "until-24th.parquet", index=False)
    canonical[(t >= jan_end) & (t < week_end)].to_parquet(tmp_path / "last-week.parquet", index=False)
    canonical[t >= week_end].to_parquet(tmp_path / "february.parquet", index=False)
    for name in ("until-24th", "february"):
        _import(str(tmp_path / f"{name}.parquet"))
    return root


def _import(*args: str) -> None:
    res = CliRunner().invoke(app, ["import", *args, "--no-push"])
    assert res.exit_code == 0, res.output


def test_the_sensor_asks_for_the_appended_month_only_and_not_after_a_resend(repo: Path) -> None:
    sensor = build_snapshot_sensor(P, repo)
    week = str(repo.parent / "last-week.parquet")
    with dg.instance_for_test() as instance:
        ctx = dg.build_sensor_context(instance=instance)
        assert sorted(r.partition_key for r in sensor(ctx)) == ["2025-01", "2025-02"]

        _import(week, "--append")
        ctx = dg.build_sensor_context(instance=instance, cursor=ctx.cursor)
        (request,) = sensor(ctx)
        version = file_md5(repo / P.data.dir / "2025-01.parquet")
        assert request.partition_key == "2025-01" and request.run_key == f"snapshot-2025-01-{version}"

        _import(week, "--append")  # the same week again: no new bytes, no run
        ctx = dg.build_sensor_context(instance=instance, cursor=ctx.cursor)
        assert isinstance(sensor(ctx), dg.SkipReason)


def test_the_ingested_months_data_version_is_the_hash_of_the_appended_bytes(repo: Path, tmp_path: Path) -> None:
    _import(str(repo.parent / "last-week.parquet"), "--append")
    path = repo / P.data.dir / "2025-01.parquet"
    (raw_transactions, _) = build_ingestion_assets(P, monthly_partitions("2025-01"))
    project = ProjectResource(root=str(repo), data_subdir=P.data.dir)  # DVC-backed, as in the deployed graph
    with dg.instance_for_test() as instance:
        result = dg.materialize([raw_transactions], partition_key="2025-01", instance=instance, resources={
            "project": project, "io_manager": FrameIOManager(base_dir=str(tmp_path / "assets"))})
        (mat,) = result.asset_materializations_for_node("raw_transactions")
    assert mat.tags["dagster/data_version"] == file_md5(path) == dvc_repo.month_hashes(repo)["2025-01"]
    assert mat.metadata["rows"].value == len(pd.read_parquet(path))
    assert project.snapshot_version("2025-01") == file_md5(path)  # what the data_version.* MLflow tags record
