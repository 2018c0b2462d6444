"""The shadow review: live pairs of champion and shadow scores, their labels by the data's time, the decision."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from fraud_assets.adapters import mlflow_registry
from fraud_assets.adapters.prediction_log import PredictionLog
from fraud_assets.orchestration.assets.monitoring import _shadow_review
from fraud_assets.orchestration.resources import MlflowResource, PredictionLogResource
from fraud_assets.params import Params, load_params
from tests.unit.test_registry import _tiny_booster

START = pd.Timestamp("2025-07-01", tz="UTC")


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Params, MlflowResource, MlflowClient, list[str]]:
    params = load_params()
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow = MlflowResource(tracking_uri=uri, artifact_root=(tmp_path / "artifacts").as_uri(),
                            experiment_name=params.registry.experiment)
    client = mlflow.client()
    exp = mlflow_registry.ensure_experiment(client, params.registry.experiment, mlflow.artifact_root)
    tags = {"threshold": "0.5", **mlflow_registry.definition_tags(params.features)}
    versions = []
    for seed in (1, 2):
        run = client.create_run(exp)
        uri_model = mlflow_registry.log_booster(_tiny_booster(seed), run.info.run_id, uri)
        versions.append(str(mlflow_registry.register_version(client, params.registry.model_name, uri_model,
                                                             run.info.run_id, tags).version))
        client.set_terminated(run.info.run_id)
    name = params.registry.model_name
    mlflow_registry.move_alias(client, name, params.registry.champion_alias, versions[0], "test", actor="test")
    client.set_registered_model_alias(name, params.registry.challenger_alias, versions[1])
    return params, mlflow, client, versions


def _log(path: Path, champion: str, shadow: str, shadow_better: bool, label_delay: timedelta, n: int = 4000,
         seed: int = 0) -> None:
    """``n`` answered transactions over 10 days from START, each scored by both versions, labels arriving
    ``label_delay`` after the transaction; the shadow's scores separate the frauds better when ``shadow_better``."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.03).astype(int)
    good = np.where(y == 1, rng.uniform(0.5, 1.0, n), rng.uniform(0.0, 0.6, n))
    poor = np.where(y == 1, rng.uniform(0.2, 1.0, n), rng.uniform(0.0, 0.9, n))
    champ, shade = (poor, good) if shadow_better else (good, poor)
    when = [START + pd.Timedelta(seconds=int(s)) for s in np.sort(rng.uniform(0, 10 * 86400, n))]
    txs = [{"transaction_id": f"t{i}", "tx_datetime": when[i], "customer_id": f"c{i % 300}",
            "terminal_id": f"x{i % 90}", "amount": 10.0} for i in range(n)]
    ids = [f"r{i}" for i in range(n)]
    decisions = [{"transaction_id": t["transaction_id"], "model_version": champion, "fraud_probability": float(p),
                  "alert": p >= 0.5, "threshold": 0.5} for t, p in zip(txs, champ, strict=True)]
    log = PredictionLog(path)
    log.record(ids, txs, decisions, np.zeros((n, 1)), ["amount"])
    log.record_shadow(ids, txs, shadow, 0.5, shade.tolist(), False)
    log.record_labels([{"transaction_id": t["transaction_id"], "is_fraud": int(f),
                        "label_available_at": t["tx_datetime"] + label_delay} for t, f in zip(txs, y, strict=True)],
                      "labels")
    log.close()


def test_a_shadow_ranking_live_frauds_better_is_promoted_with_its_interval(setup, tmp_path: Path) -> None:
    params, mlflow, client, (champion, shadow) = setup
    path = tmp_path / "predictions.sqlite"
    _log(path, champion, shadow, shadow_better=True, label_delay=timedelta(days=2))
    review = _shadow_review(PredictionLogResource(path=str(path)), mlflow, params, START + pd.Timedelta(days=14), "r1")
    assert review["verdict"] == "better" and review["promoted"], review
    assert review["comparison"]["ci_low"] > 0 and review["comparison"]["n"] == 4000
    name = params.registry.model_name
    assert str(mlflow_registry.alias_version(client, name, params.registry.champion_alias).version) == shadow
    move = mlflow_registry.alias_history(client, name, params.registry.champion_alias)[-1]
    assert move["kind"] == "shadow" and "95 % CI" in move["reason"]
    tag = json.loads(client.get_model_version(name, shadow).tags["shadow_review"])
    assert tag["verdict"] == "better" and tag["promoted"]


def test_labels_not_arrived_by_the_data_time_are_no_evidence(setup, tmp_path: Path) -> None:
    params, mlflow, client, (champion, shadow) = setup
    path = tmp_path / "predictions.sqlite"
    _log(path, champion, shadow, shadow_better=True, label_delay=timedelta(days=30))
    review = _shadow_review(PredictionLogResource(path=str(path)), mlflow, params, START + pd.Timedelta(days=14), "r1")
    assert review["verdict"] == "not enough evidence" and not review["promoted"]
    assert review["comparison"]["n"] == 0
    name = params.registry.model_name
    assert str(mlflow_registry.alias_version(client, name, params.registry.champion_alias).version) == champion


def test_a_worse_shadow_stays_in_the_shadow(setup, tmp_path: Path) -> None:
    params, mlflow, client, (champion, shadow) = setup
    path = tmp_path / "predictions.sqlite"
    _log(path, champion, shadow, shadow_better=False, label_delay=timedelta(days=1))
    review = _shadow_review(PredictionLogResource(path=str(path)), mlflow, params, START + pd.Timedelta(days=14), "r1")
    assert review["verdict"] == "worse" and not review["promoted"]
    name = params.registry.model_name
    assert str(mlflow_registry.alias_version(client, name, params.registry.champion_alias).version) == champion
