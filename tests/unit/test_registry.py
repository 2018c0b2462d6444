"""The MLflow boundary: versions in XGBoost format, aliases, and the recorded champion history."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import xgboost as xgb
from typer.testing import CliRunner

from fraud_assets.adapters import mlflow_registry
from fraud_assets.cli.main import app
from fraud_assets.core.contract import feature_definition
from fraud_assets.core.features import FEATURE_COLUMNS
from fraud_assets.params import load_params


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
        tags = {"threshold": "0.5", **mlflow_registry.definition_tags(load_params().features)}
        versions.append(mlflow_registry.register_version(client, "fraud-detector", uri_model, run.info.run_id,
                                                         tags).version)
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


def _add_version(store: dict, tags: dict[str, str], booster: xgb.Booster | None = None) -> str:
    """Register one more version with exactly ``tags`` (a corrupt model file when ``booster`` is None)."""
    c = store["client"]
    run = c.create_run(c.get_experiment_by_name("fraud-detection").experiment_id)
    if booster is None:
        folder = store["tmp"] / f"corrupt-{run.info.run_id}"
        folder.mkdir()
        (folder / "model.ubj").write_bytes(b"this is not an XGBoost model")
        source = folder.as_uri()
    else:
        source = mlflow_registry.log_booster(booster, run.info.run_id, store["uri"])
    c.set_terminated(run.info.run_id)
    return str(mlflow_registry.register_version(c, "fraud-detector", source, run.info.run_id, tags).version)


def test_feature_definition_is_stored_with_the_version_and_read_back(store: dict) -> None:
    trained_with = load_params().features.model_copy(update={"label_delay_days": 3, "burst_window_seconds": 600})
    version = _add_version(store, {"threshold": "0.4", **mlflow_registry.definition_tags(trained_with)},
                           _tiny_booster(4))
    loaded = mlflow_registry.load_version(store["client"], "fraud-detector", version)
    assert loaded.features.params == trained_with and loaded.features.params != load_params().features
    assert loaded.features == feature_definition(trained_with)
    assert list(loaded.features.columns) == FEATURE_COLUMNS
    assert loaded.tags["features"] == ",".join(FEATURE_COLUMNS)


def test_a_version_without_a_feature_definition_is_refused_naming_it(store: dict) -> None:
    version = _add_version(store, {"threshold": "0.5"}, _tiny_booster(5))
    with pytest.raises(ValueError, match=f"v{version} has no 'feature_definition' tag"):
        mlflow_registry.load_version(store["client"], "fraud-detector", version)


def test_a_foreign_feature_definition_is_refused_naming_what_this_code_cannot_build(store: dict) -> None:
    foreign = feature_definition(load_params().features).to_dict()
    foreign["windows"]["customer_days"] = [1, 7, 14]
    foreign["columns"] = [*FEATURE_COLUMNS, "customer_count_14d"]
    version = _add_version(store, {"threshold": "0.5", "feature_definition": json.dumps(foreign)}, _tiny_booster(6))
    with pytest.raises(ValueError, match=r"customer windows \[14\].*customer_count_14d"):
        mlflow_registry.load_version(store["client"], "fraud-detector", version)
    garbled = _add_version(store, {"threshold": "0.5", "feature_definition": "{not json"}, _tiny_booster(6))
    with pytest.raises(ValueError, match="malformed feature definition"):
        mlflow_registry.load_version(store["client"], "fraud-detector", garbled)


def _champion(store: dict) -> str | None:
    mv = mlflow_registry.alias_version(store["client"], "fraud-detector", "champion")
    return None if mv is None else str(mv.version)


@pytest.mark.parametrize("kind", ["corrupt model file", "no threshold", "no feature definition",
                                  "threshold outside [0, 1]"])
def test_promote_refuses_a_version_serving_would_refuse(store: dict, kind: str) -> None:
    v1 = store["versions"][0]
    mlflow_registry.move_alias(store["client"], "fraud-detector", "champion", v1, "first", actor="test")
    definition = mlflow_registry.definition_tags(load_params().features)
    bad = {"corrupt model file": lambda: _add_version(store, {"threshold": "0.5", **definition}),
           "no threshold": lambda: _add_version(store, definition, _tiny_booster(7)),
           "no feature definition": lambda: _add_version(store, {"threshold": "0.5"}, _tiny_booster(7)),
           "threshold outside [0, 1]": lambda: _add_version(store, {"threshold": "1.5", **definition},
                                                            _tiny_booster(7))}[kind]()
    res = CliRunner().invoke(app, ["promote", "--version", bad, "--reason", "looks fine to me"])
    assert res.exit_code == 1, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"refused: fraud-detector v{bad} is not servable"), res.output
    assert "Traceback" not in res.output and isinstance(res.exception, SystemExit)  # typer.Exit, not a crash
    assert _champion(store) == v1
    assert [h["version"] for h in mlflow_registry.alias_history(store["client"], "fraud-detector", "champion")] == [v1]
    with pytest.raises(mlflow_registry.NotServable):
        mlflow_registry.check_servable(store["client"], "fraud-detector", bad)


def test_rollback_to_a_version_that_no_longer_serves_is_refused(store: dict) -> None:
    c, (v1, v2, _) = store["client"], store["versions"]
    mlflow_registry.move_alias(c, "fraud-detector", "champion", v1, "first", actor="test")
    mlflow_registry.move_alias(c, "fraud-detector", "champion", v2, "better", actor="test")
    c.delete_model_version_tag("fraud-detector", v1, "threshold")
    res = CliRunner().invoke(app, ["rollback", "--reason", "v2 misbehaves"])
    assert res.exit_code == 1 and f"v{v1} is not servable" in res.output and "threshold" in res.output
    assert _champion(store) == v2


def test_check_servable_returns_the_loaded_version_after_its_warm_up(store: dict) -> None:
    loaded = mlflow_registry.check_servable(store["client"], "fraud-detector", store["versions"][1])
    assert loaded.version == store["versions"][1] and loaded.features == feature_definition(load_params().features)
