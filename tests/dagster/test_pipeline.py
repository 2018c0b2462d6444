"""The asset graph: definitions load, and the whole graph materializes in-process on small data."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import average_precision_score

from fraud_assets.adapters.mlflow_registry import alias_version, client_for
from fraud_assets.core.features import FEATURE_COLUMNS
from fraud_assets.core.lineage import file_md5
from fraud_assets.core.months import month_range, shift_month, snapshot_path
from fraud_assets.orchestration.definitions import build_assets, build_definitions
from fraud_assets.orchestration.resources import (
    ComputeResource,
    FrameIOManager,
    MlflowResource,
    OnlineStoreResource,
    PredictionLogResource,
    ProjectResource,
)
from fraud_assets.params import load_params


class FileHashProject(ProjectResource):
    """Test fake: the data version is the file's MD5 without a DVC repo (DVC is tested on its own)."""

    def snapshot_version(self, month: str) -> str:
        return file_md5(snapshot_path(self.data_dir(), month))


def _resources(root: Path, state: Path) -> dict:
    uri = f"sqlite:///{state / 'mlflow.db'}"
    return {
        "project": FileHashProject(root=str(root), data_subdir=load_params(root / "params.yaml").data.dir),
        "mlflow": MlflowResource(tracking_uri=uri, artifact_root=(state / "artifacts").as_uri(),
                                 experiment_name=load_params().registry.experiment),
        "io_manager": FrameIOManager(base_dir=str(state / "assets")),
        "prediction_log": PredictionLogResource(path=str(state / "predictions.sqlite")),
        "store": OnlineStoreResource(path=str(state / "online_store.sqlite")),
        "compute": ComputeResource.of(load_params().compute),
    }


def test_definitions_load() -> None:
    defs = build_definitions()
    keys = {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}
    assert {"raw_transactions", "validated_transactions", "quarantined_transactions", "transaction_features",
            "challenger_model", "challenger_evaluation", "promotion_decision"} <= keys
    assert defs.resolve_job_def("monthly_pipeline").partitions_def is not None
    assert defs.resolve_sensor_def("new_snapshot_sensor")
    assert defs.resolve_schedule_def("monthly_retrain")


@pytest.fixture(scope="module")
def materialized(small_project: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    state = tmp_path_factory.mktemp("state")
    params = load_params(small_project / "params.yaml")
    assets = build_assets(params)
    resources = _resources(small_project, state)
    instance = dg.DagsterInstance.ephemeral()
    months = month_range(params.data.start_month, params.data.months)
    for month in months:
        res = dg.materialize(assets, partition_key=month, resources=resources, instance=instance,
                             selection=dg.AssetSelection.groups("ingestion", "features"))
        assert res.success
    last = dg.materialize(assets, partition_key=months[-1], resources=resources, instance=instance,
                          selection=dg.AssetSelection.groups("training"))
    return {"result": last, "params": params, "state": state, "months": months, "instance": instance,
            "uri": resources["mlflow"].tracking_uri}


def test_graph_registers_and_promotes_a_champion(materialized: dict) -> None:
    result, params = materialized["result"], materialized["params"]
    assert result.success
    decision = result.output_for_node("promotion_decision")
    assert decision["promoted"] is True
    champion = alias_version(client_for(materialized["uri"]), params.registry.model_name, "champion")
    assert champion is not None
    assert str(champion.version) == decision["challenger_version"]
    assert float(champion.tags["threshold"]) == pytest.approx(
        result.output_for_node("challenger_model")["threshold"], abs=1e-6)


def test_run_tags_carry_dvc_hashes(materialized: dict, small_project: Path) -> None:
    params = materialized["params"]
    client = client_for(materialized["uri"])
    champion = alias_version(client, params.registry.model_name, "champion")
    run = client.get_run(champion.run_id)
    for month in materialized["months"]:
        expected = file_md5(snapshot_path(small_project / params.data.dir, month))
        assert run.data.tags[f"data_version.{month}"] == expected
    inputs = {d.dataset.name: d for d in run.inputs.dataset_inputs}
    last = materialized["months"][-1]
    assert inputs[f"transactions-{last}"].dataset.digest == file_md5(snapshot_path(small_project / params.data.dir,
                                                                                     last))
    assert inputs[f"transactions-{last}"].tags[0].value == "evaluation"
    assert int(run.data.params["dataset.rows_holdout"]) > 0


def test_raw_data_version_is_the_snapshot_hash(materialized: dict, small_project: Path) -> None:
    instance, params = materialized["instance"], materialized["params"]
    month = materialized["months"][0]
    record = instance.get_latest_data_version_record(dg.AssetKey("raw_transactions"), partition_key=month)
    assert record is not None
    tags = record.asset_materialization.tags
    assert tags["dagster/data_version"] == file_md5(snapshot_path(small_project / params.data.dir, month))


def test_checks_pass_and_report_counts(materialized: dict) -> None:
    evaluations = materialized["result"].get_asset_check_evaluations()
    by_name = {e.check_name: e for e in evaluations}
    assert by_name["challenger_meets_minimum_bars"].passed
    assert "min_average_precision" in by_name["challenger_meets_minimum_bars"].metadata


def test_second_challenger_is_judged_against_champion(materialized: dict, small_project: Path) -> None:
    params, state = materialized["params"], materialized["state"]
    assets = build_assets(params)
    res = dg.materialize(assets, partition_key=materialized["months"][-1],
                         resources=_resources(small_project, state), instance=materialized["instance"],
                         selection=dg.AssetSelection.groups("training"))
    decision = res.output_for_node("promotion_decision")
    # Same data and seed: the retrained model cannot beat the champion by the margin, so it is not promoted.
    assert decision["promoted"] is False
    assert "does not beat champion" in decision["reason"]
    assert decision["champion_version_after"] == decision["champion_version_before"]


def test_bad_month_fails_loudly(small_project: Path, tmp_path: Path) -> None:
    params = load_params(small_project / "params.yaml")
    missing = shift_month(params.data.start_month, params.data.months + 2)  # a partition with no snapshot
    res = dg.materialize(build_assets(params), partition_key=missing,
                         resources=_resources(small_project, tmp_path), instance=dg.DagsterInstance.ephemeral(),
                         selection=["raw_transactions"], raise_on_error=False)
    assert not res.success
    failure = res.get_step_failure_events()[0].step_failure_data.error
    assert f"{missing}.parquet" in failure.message or f"{missing}.parquet" in str(failure.cause)


def test_evaluation_compares_baseline_and_oracle_and_logs_plots(materialized: dict) -> None:
    result = materialized["result"]
    evaluation = result.output_for_node("challenger_evaluation")
    for scorer in ("challenger", "baseline"):
        assert 0.0 <= evaluation[scorer]["average_precision"] <= 1.0
        assert 0.0 <= evaluation[scorer]["card_precision_at_k"] <= 1.0
    assert evaluation["oracle_average_precision"] is not None and evaluation["oracle_average_precision"] > 0.0
    client = client_for(materialized["uri"])
    run_id = result.output_for_node("challenger_model")["run_id"]
    metrics = client.get_run(run_id).data.metrics
    assert metrics["holdout_average_precision"] == pytest.approx(evaluation["challenger"]["average_precision"])
    assert metrics["baseline_holdout_average_precision"] == pytest.approx(evaluation["baseline"]["average_precision"])
    assert "oracle_holdout_average_precision" in metrics
    plots = {a.path for a in client.list_artifacts(run_id, "plots")}
    assert plots == {f"plots/{n}.png" for n in ("precision_recall", "score_distribution", "feature_importance",
                                                "calibration")}
    mats = result.asset_materializations_for_node("challenger_evaluation")
    md = mats[0].metadata["plot_precision_recall"].value
    assert md.startswith("![precision_recall.png](data:image/png;base64,")


def test_drift_report_against_preceding_months(materialized: dict, small_project: Path) -> None:
    params, months = materialized["params"], materialized["months"]
    resources = _resources(small_project, materialized["state"])
    res = dg.materialize(build_assets(params), partition_key=months[-1], resources=resources,
                         instance=materialized["instance"], selection=dg.AssetSelection.groups("monitoring"))
    assert res.success
    report = res.output_for_node("drift_report")
    # The first month (a cold start: no earlier transactions for its history features) is never a reference.
    expected = [m for m in months[-1 - params.monitor.reference_months:-1] if m != months[0]]
    assert expected and report["reference_months"] == expected
    assert {f["feature"] for f in report["features"]} == set(FEATURE_COLUMNS)
    assert report["score_psi"] is not None  # the champion scored both sides
    check = res.get_asset_check_evaluations()[0]
    assert check.check_name == "drift_within_thresholds" and check.passed == (not report["drift_detected"])
    first = dg.materialize(build_assets(params), partition_key=months[0], resources=resources,
                           instance=materialized["instance"], selection=dg.AssetSelection.groups("monitoring"))
    assert first.output_for_node("drift_report")["note"] == "no earlier month with a full feature history to compare"


def _write_prediction_log(path: Path, rows: list[tuple], labels: list[tuple]) -> None:
    """A prediction log as the serving replicas write it (the columns live_performance reads)."""
    import sqlite3

    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE predictions (request_id TEXT, transaction_id TEXT, tx_datetime TEXT, "
                     "model_version TEXT, fraud_probability REAL, alert INTEGER)")
        conn.execute("CREATE TABLE labels (transaction_id TEXT, is_fraud INTEGER, received_at TEXT)")
        conn.executemany("INSERT INTO predictions VALUES (?, ?, ?, ?, ?, ?)", rows)
        conn.executemany("INSERT INTO labels VALUES (?, ?, ?)", labels)


def test_live_performance_joins_served_scores_with_labels(materialized: dict, small_project: Path) -> None:
    params, months, state = materialized["params"], materialized["months"], materialized["state"]
    month = months[-1]
    snapshot = pd.read_parquet(snapshot_path(small_project / params.data.dir, month))
    served = snapshot.head(400)
    rows = [(f"r{i}", tx.transaction_id, tx.tx_datetime.tz_convert("Europe/Paris").isoformat(), "1",
             0.9 if tx.is_fraud else 0.1, int(tx.is_fraud)) for i, tx in enumerate(served.itertuples())]
    # One label arrives through the API (an hour after its transaction) and overrides the snapshot; a transaction
    # of another month is ignored. Labels count once arrived by the month's newest transaction (the data's "now").
    first = served.iloc[0]
    labels = [(first.transaction_id, 1 - int(first.is_fraud),
               (first.tx_datetime + pd.Timedelta(hours=1)).isoformat())]
    rows.append(("x", "elsewhere", "2019-01-01T00:00:00+00:00", "1", 0.5, 0))
    _write_prediction_log(state / "predictions.sqlite", rows, labels)
    res = dg.materialize(build_assets(params), partition_key=month, resources=_resources(small_project, state),
                         instance=materialized["instance"], selection=["live_performance"])
    assert res.success
    live = res.output_for_node("live_performance")
    overall = live["overall"]
    as_of = snapshot["tx_datetime"].max() + pd.Timedelta(seconds=1)
    arrived = (pd.to_datetime(served["label_available_at"], utc=True) <= as_of).to_numpy()
    arrived[0] = True  # the API's label
    assert live["as_of"] == as_of.isoformat() and 0 < arrived.sum() < 400  # later labels are not known yet
    assert overall["scored"] == 400 and overall["labelled"] == int(arrived.sum())
    assert live["label_sources"] == {"snapshot": int(arrived.sum()) - 1, "api": 1, "none": 400 - int(arrived.sum())}
    assert overall["alerts"] == int(served["is_fraud"].sum())
    assert set(live["by_model_version"]) == {"1"}
    expected = served["is_fraud"].to_numpy().copy()
    expected[0] = 1 - expected[0]
    scores = np.array([0.9 if f else 0.1 for f in served["is_fraud"]])
    assert overall["frauds"] == int(expected[arrived].sum())
    assert overall["average_precision"] == pytest.approx(average_precision_score(expected[arrived], scores[arrived]))
    assert res.get_asset_check_evaluations()[0].check_name == "live_performance_holds"


def test_online_store_holds_the_months_serving_reads(materialized: dict, small_project: Path) -> None:
    """Every month was loaded with its labels; what is older than the retention before the last month is gone."""
    import sqlite3

    params, state, instance = materialized["params"], materialized["state"], materialized["instance"]
    event = instance.get_latest_materialization_event(dg.AssetKey("online_store"))
    metadata = event.asset_materialization.metadata
    assert metadata["rows_loaded"].value > 0 and "rows_pruned" in metadata
    snapshots = pd.concat([pd.read_parquet(snapshot_path(small_project / params.data.dir, m))
                           for m in materialized["months"]], ignore_index=True)
    cutoff = snapshots["tx_datetime"].max() - pd.Timedelta(days=params.online_store.retention_days)
    kept = snapshots[snapshots["tx_datetime"] >= cutoff.floor("s")]
    with sqlite3.connect(state / "online_store.sqlite") as conn:
        count, unlabelled = conn.execute("SELECT COUNT(*), SUM(is_fraud IS NULL) FROM transactions").fetchone()
    assert unlabelled == 0  # seeded from snapshots: every row carries its label
    assert 0 < len(kept) < len(snapshots)  # four months span more than the retention: something was pruned
    assert count == len(kept) == metadata["store_rows"].value
