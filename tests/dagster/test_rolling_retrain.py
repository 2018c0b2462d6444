"""A retrain as of a time inside a month: the rolling window through the real asset graph, then the refit."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

from fraud_assets.adapters.mlflow_registry import alias_history, alias_version, client_for
from fraud_assets.core.months import month_range
from fraud_assets.orchestration.definitions import build_assets
from fraud_assets.orchestration.partitions import AS_OF_TAG
from fraud_assets.params import load_params
from tests.conftest import write_small_project
from tests.dagster.test_pipeline import _resources

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def rolled(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = write_small_project(tmp_path_factory.mktemp("rolling"), months=4,
                               overrides={"split.window_weeks": 8, "split.holdout_days": 7})
    state = tmp_path_factory.mktemp("rolling-state")
    params = load_params(root / "params.yaml")
    instance = dg.DagsterInstance.ephemeral()
    months = month_range(params.data.start_month, params.data.months)
    for month in months:
        assert dg.materialize(build_assets(params), partition_key=month, resources=_resources(root, state),
                              instance=instance, selection=dg.AssetSelection.groups("ingestion", "features")).success
    month = months[-1]
    as_of = pd.Timestamp(f"{month}-18T06:30:00", tz="UTC")
    res = dg.materialize(build_assets(params), partition_key=month, resources=_resources(root, state),
                         instance=instance, selection=dg.AssetSelection.groups("training"),
                         tags={AS_OF_TAG: as_of.isoformat(), "fraud/trigger": "drift"})
    assert res.success
    return {"params": params, "root": root, "state": state, "as_of": as_of, "result": res}


def test_rolling_challenger_trains_on_the_weeks_before_its_holdout_week(rolled: dict) -> None:
    params, as_of, res = rolled["params"], rolled["as_of"], rolled["result"]
    model = res.output_for_node("challenger_model")
    window = model["window"]
    assert window["as_of"] == as_of.isoformat()
    end = pd.Timestamp(window["holdout_end"])
    assert as_of - pd.Timedelta(days=2) < end <= as_of  # the newest known label: hours before with arrival times
    assert pd.Timestamp(window["holdout_start"]) == end - pd.Timedelta(days=7)
    assert pd.Timestamp(window["train_start"]) == end - pd.Timedelta(days=7) - pd.Timedelta(weeks=8)
    client = client_for(_resources(rolled["root"], rolled["state"])["mlflow"].tracking_uri)
    version = client.get_model_version(params.registry.model_name, model["version"])
    assert version.tags["split"] == "rolling" and version.tags["window.as_of"] == as_of.isoformat()
    dataset = json.loads(Path(client.download_artifacts(version.run_id, "dataset.json")).read_text())
    assert dataset["rows_holdout"] > 0 and dataset["rows_train"] > dataset["rows_holdout"]
    evaluation = res.output_for_node("challenger_evaluation")
    assert evaluation["challenger"]["average_precision"] > 0


def test_promoted_rolling_challenger_is_refit_and_served(rolled: dict) -> None:
    params, res = rolled["params"], rolled["result"]
    decision = res.output_for_node("promotion_decision")
    assert decision["promoted"], decision["reason"]  # no champion yet
    refit = decision["refit"]
    challenger = res.output_for_node("challenger_model")["version"]
    assert refit["refit_of"] == challenger and refit["version"] != challenger
    assert decision["champion_version_after"] == refit["version"]
    client = client_for(_resources(rolled["root"], rolled["state"])["mlflow"].tracking_uri)
    name = params.registry.model_name
    assert str(alias_version(client, name, params.registry.champion_alias).version) == refit["version"]
    assert str(alias_version(client, name, params.registry.challenger_alias).version) == refit["version"]
    tags = client.get_model_version(name, refit["version"]).tags
    assert tags["refit_of"] == challenger and int(tags["refit_rows"]) == refit["rows"]
    assert tags["threshold"] == client.get_model_version(name, challenger).tags["threshold"]
    moves = alias_history(client, name, params.registry.champion_alias)
    assert [m["version"] for m in moves][-2:] == [challenger, refit["version"]]
    assert moves[-1]["kind"] == "refit"
