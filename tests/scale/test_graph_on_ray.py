"""The asset graph with ``compute.engine: ray``: the Dagster assets submit features and training to the
three-node cluster through the ``compute`` resource; the features equal the local engine's, and the challenger
is logged, registered, evaluated and promoted exactly as on the local engine."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

from fraud_assets.adapters.mlflow_registry import alias_version, client_for, load_version
from fraud_assets.compute import LOCAL
from fraud_assets.core.features import FEATURE_COLUMNS, build_features_by_month
from fraud_assets.core.months import month_range
from fraud_assets.orchestration.definitions import build_assets
from fraud_assets.orchestration.resources import ComputeResource
from fraud_assets.params import load_params
from tests.conftest import assert_features_match, write_small_project
from tests.dagster.test_pipeline import _resources
from tests.scale.conftest import RayCluster, client_env

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def test_asset_graph_runs_on_the_ray_engine(ray_cluster: RayCluster, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FRAUD_RAY_STORAGE", str(tmp_path / "ray_train"))
    root = write_small_project(tmp_path / "project", months=3, overrides={
        "compute.engine": "ray", "compute.address": ray_cluster.address, "compute.partitions": 4})
    params = load_params(root / "params.yaml")
    state = tmp_path / "state"
    resources = _resources(root, state) | {"compute": ComputeResource.of(params.compute)}
    assets, instance = build_assets(params), dg.DagsterInstance.ephemeral()
    months = month_range(params.data.start_month, params.data.months)
    with client_env(ray_cluster):
        for month in months:
            res = dg.materialize(assets, partition_key=month, resources=resources, instance=instance,
                                 selection=dg.AssetSelection.groups("ingestion", "features"))
            assert res.success, month
            (features,) = [e for e in res.get_asset_materialization_events()
                           if e.asset_key == dg.AssetKey("transaction_features")]
            assert features.materialization.metadata["engine"].value == "ray"
        last = dg.materialize(assets, partition_key=months[-1], resources=resources, instance=instance,
                              selection=dg.AssetSelection.groups("training"))
    assert last.success

    stored = {m: pd.read_parquet(state / "assets" / "transaction_features" / f"{m}.parquet") for m in months}
    validated = {m: pd.read_parquet(state / "assets" / "validated_transactions" / f"{m}.parquet") for m in months}
    local = build_features_by_month(validated, params.features, LOCAL.features)
    for m in months:
        assert_features_match(stored[m][FEATURE_COLUMNS].to_numpy(), local[m][FEATURE_COLUMNS].to_numpy(), m)
        assert (stored[m]["transaction_id"].to_numpy() == local[m]["transaction_id"].to_numpy()).all()

    decision = last.output_for_node("promotion_decision")
    assert decision["promoted"] is True
    client = client_for(resources["mlflow"].tracking_uri)
    champion = alias_version(client, params.registry.model_name, params.registry.champion_alias)
    assert str(champion.version) == decision["challenger_version"]
    assert champion.tags["compute_engine"] == "ray"
    loaded = load_version(client, params.registry.model_name, str(champion.version))
    assert loaded.booster.attr("train_workers") == "2"  # fitted by Ray Train's two workers, served as any version
    evaluation = last.output_for_node("challenger_evaluation")
    assert evaluation["challenger"]["average_precision"] > 0.2
