"""The DVC stage entry points and the `fraud` pipeline commands, run in-process on a small pinned project."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fraud_assets.adapters import dvc_repo
from fraud_assets.cli.main import app
from fraud_assets.core.contract import feature_definition, parse_definition
from fraud_assets.params import load_params
from fraud_assets.stages import evaluate, featurize, prepare, train
from tests.conftest import write_small_project

DATA_DIR = load_params().data.dir


@pytest.fixture(scope="module")
def pinned(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = write_small_project(tmp_path_factory.mktemp("pinned"), months=4)
    dvc_repo.ensure_repo(root)
    dvc_repo.pin_snapshots(root, DATA_DIR, push=True)
    return root


def test_stages_write_prepared_features_model_and_metrics(pinned: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(pinned)
    for stage in (prepare, featurize, train, evaluate):
        stage.main()
    counts = json.loads((pinned / "data/prepared/counts.json").read_text())
    assert all(c["rows_in"] == c["rows_valid"] + c["rows_quarantined"] for c in counts.values())
    meta = json.loads((pinned / "models/model_meta.json").read_text())
    hashes = dvc_repo.month_hashes(pinned)
    assert meta["data_versions"] == {m: hashes[m] for m in meta["data_versions"]}
    knobs = load_params(pinned / "params.yaml").features
    assert parse_definition(meta["feature_definition"]) == feature_definition(knobs)
    assert (pinned / "models/model.ubj").stat().st_size > 0
    metrics = json.loads((pinned / "metrics/evaluation.json").read_text())
    assert 0.0 < metrics["average_precision"] <= 1.0 and metrics["rows"] == counts[meta["holdout_month"]]["rows_valid"]


def test_cli_pipeline_status_and_history(pinned: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FRAUD_PROJECT_ROOT", str(pinned))
    monkeypatch.setenv("FRAUD_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    runner = CliRunner()
    res = runner.invoke(app, ["pipeline"])
    assert res.exit_code == 0, res.output
    assert "PROMOTED -> champion v1" in res.output and "holdout AUPRC" in res.output
    res = runner.invoke(app, ["status"])
    assert res.exit_code == 0 and "champion: fraud-detector v1" in res.output
    assert '"data_version.' in res.output
    res = runner.invoke(app, ["history"])
    assert res.exit_code == 0 and "-> v1" in res.output and "no champion yet" in res.output
    assert (tmp_path / "state" / "dagster").is_dir()  # the runs went to the project's persistent instance


def test_cli_report_exports_evaluation_and_history(pinned: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                   ) -> None:
    monkeypatch.setenv("FRAUD_PROJECT_ROOT", str(pinned))
    monkeypatch.setenv("FRAUD_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    runner = CliRunner()
    res = runner.invoke(app, ["report", "--out", str(tmp_path / "r")])
    assert res.exit_code != 0 and "no challenger" in res.output
    assert runner.invoke(app, ["pipeline"]).exit_code == 0
    res = runner.invoke(app, ["report", "--out", str(tmp_path / "r")])
    assert res.exit_code == 0, res.output
    decision = json.loads((tmp_path / "r" / "promotion_decision.json").read_text())
    assert decision["promoted"] is True
    assert json.loads((tmp_path / "r" / "champion_history.json").read_text())[0]["version"] == "1"
    assert (tmp_path / "r" / "plots" / "precision_recall.png").stat().st_size > 1000
