"""The MLflow boundary: versions in XGBoost format, aliases, and the recorded champion history."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import xgboost as xgb
from typer.testing import CliRunner

from fraud_assets.adapters import mlflow_registry
from fraud_assets.cli.main import app
from fraud_assets.core.features import FEATURE_COLUMNS


def _tiny_booster(seed: int) -> xgb.Booster:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(200, len(FEATURE_COLUMNS)))
    y = (x[:, 0] > 0.5).astype(int)
    return xgb.train({"max_depth": 2, "seed": seed}, xgb.DMatrix(x, label=y, feature_names=FEATURE_COLUMNS), 3)


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    client = mlflow_registry.client_for(uri)
    exp = mlflow_registry.ensure_experiment(client, "fraud-detection", (tmp_path / "artifacts").as_uri())
    versions = []
    for seed in (1, 2, 3):
        run = client.create_run(exp)
        uri_model = mlflow_registry.log_booster(_tiny_booster(seed), run.info.run_id, uri)
        versions.append(mlflow_registry.register_version(client, "fraud-detector", uri_model, run.info.run_id,
                                                  {"threshold": "0.5"}).version)
        client.set_terminated(run.info.run_id)
    return {"uri": uri, "client": client, "versions": [str(v) for v in versions], "tmp": tmp_path}


def test_model_is_stored_as_xgboost_ubj(store: dict) -> None:
    loaded = mlflow_registry.load_version(store["client"], "fraud-detector", store["versions"][0])
    assert loaded.booster.feature_names == FEATURE_COLUMNS
    assert loaded.threshold == 0.5
    artifacts = list((store["tmp"] / "artifacts").rglob("*.ubj"))
    assert artifacts and not list((store["tmp"] / "artifacts").rglob("*.pkl"))


def test_alias_moves_are_recorded_and_rollback_restores(store: dict) -> None:
    c, (v1, v2, v3) = store["client"], store["versions"]
    assert mlflow_registry.alias_version(c, "fraud-detector", "champion") is None
    assert mlflow_registry.move_alias(c, "fraud-detector", "champion", v1, "first", actor="test") is None
    assert mlflow_registry.move_alias(c, "fraud-detector", "champion", v2, "better", actor="test") == v1
    runner = CliRunner()
    res = runner.invoke(app, ["promote", "--version", v3, "--reason", "hand-picked"])
    assert res.exit_code == 0, res.output
    assert str(mlflow_registry.alias_version(c, "fraud-detector", "champion").version) == v3
    res = runner.invoke(app, ["rollback", "--reason", "v3 misbehaves"])
    assert res.exit_code == 0, res.output
    assert str(mlflow_registry.alias_version(c, "fraud-detector", "champion").version) == v2
    hist = mlflow_registry.alias_history(c, "fraud-detector", "champion")
    assert [h["version"] for h in hist] == [v1, v2, v3, v2]
    assert hist[-1]["reason"] == "rollback: v3 misbehaves" and hist[-1]["actor"].startswith("cli:")
    out = runner.invoke(app, ["history"]).output
    assert "hand-picked" in out and "rollback: v3 misbehaves" in out
    # A second rollback walks further back (v2 replaced v1), it does not flip back to v3.
    assert runner.invoke(app, ["rollback", "--reason", "v2 too"]).exit_code == 0
    assert str(mlflow_registry.alias_version(c, "fraud-detector", "champion").version) == v1
    res = runner.invoke(app, ["rollback", "--reason", "nothing left"])
    assert res.exit_code != 0 and "no recorded predecessor" in res.output


def test_promote_unknown_version_fails(store: dict) -> None:
    res = CliRunner().invoke(app, ["promote", "--version", "99", "--reason", "typo"])
    assert res.exit_code != 0
    assert mlflow_registry.alias_version(store["client"], "fraud-detector", "champion") is None
