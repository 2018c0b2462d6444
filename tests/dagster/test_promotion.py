"""Champion / challenger through the real asset graph: a worse challenger is refused, a better one promoted."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

from fraud_assets.adapters.mlflow_registry import alias_version, client_for
from fraud_assets.core.months import month_range, snapshot_path
from fraud_assets.orchestration.definitions import build_assets
from fraud_assets.params import Params, load_params
from tests.dagster.test_pipeline import _resources

WEAK = {"max_depth": 1, "n_estimators": 5}


def _train(params: Params, root: Path, state: Path, instance: dg.DagsterInstance, month: str) -> dict:
    res = dg.materialize(build_assets(params), partition_key=month, resources=_resources(root, state),
                         instance=instance, selection=dg.AssetSelection.groups("training"))
    assert res.success
    return res.output_for_node("promotion_decision")


@pytest.fixture(scope="module")
def ingested(small_project: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    state = tmp_path_factory.mktemp("promotion-state")
    params = load_params(small_project / "params.yaml")
    instance = dg.DagsterInstance.ephemeral()
    months = month_range(params.data.start_month, params.data.months)
    for month in months:
        assert dg.materialize(build_assets(params), partition_key=month, resources=_resources(small_project, state),
                              instance=instance, selection=dg.AssetSelection.groups("ingestion", "features")).success
    return {"params": params, "state": state, "instance": instance, "month": months[-1], "root": small_project}


def test_better_challenger_promoted_then_worse_refused(ingested: dict) -> None:
    params, root, state, instance, month = (ingested[k] for k in ("params", "root", "state", "instance", "month"))
    weak = params.model_copy(update={"train": params.train.model_copy(update=WEAK)})
    first = _train(weak, root, state, instance, month)
    assert first["promoted"] and "no champion yet" in first["reason"]

    better = _train(params, root, state, instance, month)
    assert better["promoted"], better["reason"]
    assert better["reason"].startswith("beats champion")
    assert better["challenger_metrics"]["average_precision"] > first["challenger_metrics"]["average_precision"]

    worse = _train(weak, root, state, instance, month)
    assert not worse["promoted"]
    assert worse["reason"].startswith("does not beat champion")
    assert worse["champion_version_after"] == better["challenger_version"]

    client = client_for(_resources(root, state)["mlflow"].tracking_uri)
    name = params.registry.model_name
    assert str(alias_version(client, name, "champion").version) == better["challenger_version"]
    tag = json.loads(client.get_model_version(name, worse["challenger_version"]).tags["promotion"])
    assert tag == {"promoted": False, "reason": worse["reason"]}
    recorded = client.get_run(client.get_model_version(name, worse["challenger_version"]).run_id)
    assert recorded.info.run_id  # the decision artifact lives on the challenger's run
    artifacts = {a.path for a in client.list_artifacts(recorded.info.run_id)}
    assert {"promotion_decision.json", "evaluation.json"} <= artifacts


def test_a_champion_trained_with_other_feature_params_is_judged_on_its_own(ingested: dict) -> None:
    """``features.label_delay_days`` changed after the champion was trained: the evaluation rebuilds the
    holdout with the champion's own knobs, so its metrics are those it has on the features it was trained on."""
    from fraud_assets.core.features import build_features_by_month
    from fraud_assets.core.split import split_by_time
    from fraud_assets.orchestration.assets.training import _evaluate

    params, root, state, instance, month = (ingested[k] for k in ("params", "root", "state", "instance", "month"))
    client = client_for(_resources(root, state)["mlflow"].tracking_uri)
    name = params.registry.model_name
    if alias_version(client, name, "champion") is None:
        _train(params, root, state, instance, month)
    champion = {"version": str(alias_version(client, name, "champion").version)}
    frames = {m: pd.read_parquet(snapshot_path(root / params.data.dir, m)) for m in month_range(
        params.data.start_month, params.data.months)}
    changed = params.updated({"features.label_delay_days": 2})

    def evaluate(p: Params) -> dict:
        features = build_features_by_month(frames, p.features)
        result, _ = _evaluate(split_by_time(features, month, p.split), features, champion, frames[month], client, p)
        return result

    same, moved = evaluate(params), evaluate(changed)
    assert same["champion_note"] == "scored on the same holdout"
    assert moved["champion_note"].endswith("with its own feature params: label_delay_days 7 (now 2)")
    assert moved["champion"] == pytest.approx(same["champion"], abs=1e-9)
    # The challenger here is the same version scored on today's features: they did change.
    assert moved["challenger"] != pytest.approx(same["challenger"], abs=1e-9)
