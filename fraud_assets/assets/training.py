"""Training group: the challenger, its evaluation beside the champion, and the promotion decision."""


import json

import dagster as dg
import pandas as pd

from fraud_assets import registry
from fraud_assets.core.evaluate import evaluate_scores
from fraud_assets.core.features import FEATURE_COLUMNS
from fraud_assets.core.promote import decide_promotion, minimum_bar_failures
from fraud_assets.core.split import split_by_time
from fraud_assets.core.train import fit_challenger, predict
from fraud_assets.params import Params
from fraud_assets.resources import BY_PARTITION, MlflowResource, ProjectResource

GROUP = "training"
CHALLENGER, CHAMPION = "challenger", "champion"


def build_training_assets(params: Params, partitions: dg.PartitionsDefinition) -> list[dg.AssetsDefinition]:
    """The training assets for ``partitions``; a partition is the holdout month."""
    history = dg.AssetIn(
        "transaction_features",
        partition_mapping=dg.TimeWindowPartitionMapping(
            start_offset=-params.split.train_months, end_offset=0, allow_nonexistent_upstream_partitions=True),
        metadata={BY_PARTITION: True},
    )
    name = params.serve.model_name

    @dg.asset(group_name=GROUP, partitions_def=partitions, ins={"features_by_month": history},
              kinds={"xgboost", "mlflow"})
    def challenger_model(context: dg.AssetExecutionContext, features_by_month: dict[str, pd.DataFrame],
                         project: ProjectResource, mlflow: MlflowResource) -> dg.Output[dict]:
        """An XGBoost challenger trained on the months before the holdout month, registered in MLflow."""
        month = context.partition_key
        split = split_by_time(features_by_month, month, params.split)
        booster, threshold = fit_challenger(split.train, split.valid, params.train,
                                            params.evaluate.precision_target)
        versions = {m: project.snapshot_version(m) for m in [*split.train_months, month]}
        tags = {"dagster_run_id": context.run_id, "holdout_month": month, "threshold": f"{threshold:.6f}",
                "train_months": ",".join(split.train_months), "features": ",".join(FEATURE_COLUMNS),
                **{f"data_version.{m}": v for m, v in versions.items()}}
        run_id = mlflow.start_run(f"challenger-{month}", tags=tags)
        client = mlflow.client()
        for key, value in {**params.train.model_dump(), **params.split.model_dump()}.items():
            client.log_param(run_id, key, value)
        client.log_dict(run_id, {"rows_train": len(split.train), "rows_valid": len(split.valid),
                                 "fraud_rate_train": float(split.train["is_fraud"].mean()),
                                 "data_versions": versions}, "dataset.json")
        model_uri = registry.log_booster(booster, run_id, mlflow.tracking_uri)
        mv = registry.register_version(client, name, model_uri, run_id, tags)
        client.set_registered_model_alias(name, CHALLENGER, mv.version)
        client.set_terminated(run_id)
        info = {"version": str(mv.version), "run_id": run_id, "model_uri": model_uri, "threshold": threshold,
                "train_months": split.train_months, "holdout_month": month, "data_versions": versions,
                "best_iteration": int(booster.attr("best_iteration") or 0)}
        return dg.Output(info, metadata={"version": info["version"], "mlflow_run_id": run_id,
                                         "threshold": threshold, "rows_train": len(split.train),
                                         "train_months": ", ".join(split.train_months)})

    @dg.asset(group_name=GROUP, partitions_def=partitions, kinds={"mlflow"},
              check_specs=[dg.AssetCheckSpec("challenger_meets_minimum_bars", asset="challenger_evaluation",
                                             blocking=True, description="AUPRC and ROC-AUC above promote.* bars")])
    def challenger_evaluation(context: dg.AssetExecutionContext, challenger_model: dict,
                              transaction_features: pd.DataFrame, mlflow: MlflowResource):
        """The challenger and the serving champion scored on the same holdout month."""
        client = mlflow.client()
        challenger = registry.load_version(client, name, challenger_model["version"], params.train.n_threads)
        result = {"holdout_month": context.partition_key, "challenger_version": challenger.version,
                  "challenger": _score(challenger, transaction_features, params), "champion": None,
                  "champion_version": None, "champion_note": "no champion yet"}
        champ = registry.alias_version(client, name, CHAMPION)
        if champ is not None:
            loaded = registry.load_version(client, name, str(champ.version), params.train.n_threads)
            result["champion_version"] = loaded.version
            try:
                result["champion"] = _score(loaded, transaction_features, params)
                result["champion_note"] = "scored on the same holdout"
            except KeyError as exc:
                result["champion_note"] = f"champion needs features this code no longer builds: {exc}"
        for key, value in result["challenger"].items():
            client.log_metric(challenger_model["run_id"], f"holdout_{key}", value)
        failures = minimum_bar_failures(result["challenger"], params.promote)
        yield dg.Output(result, metadata={f"challenger_{k}": v for k, v in result["challenger"].items()})
        yield dg.AssetCheckResult(
            check_name="challenger_meets_minimum_bars", passed=not failures,
            metadata={"failures": "; ".join(failures) or "none",
                      "average_precision": result["challenger"]["average_precision"],
                      "min_average_precision": params.promote.min_average_precision,
                      "roc_auc": result["challenger"]["roc_auc"], "min_roc_auc": params.promote.min_roc_auc})

    @dg.asset(group_name=GROUP, partitions_def=partitions, kinds={"mlflow"})
    def promotion_decision(context: dg.AssetExecutionContext, challenger_model: dict,
                           challenger_evaluation: dict, mlflow: MlflowResource) -> dg.Output[dict]:
        """Moves alias ``champion`` to the challenger only when it beats the champion on the same holdout."""
        client = mlflow.client()
        decision = decide_promotion(challenger_evaluation["challenger"], challenger_evaluation["champion"],
                                    params.promote)
        record = {"holdout_month": context.partition_key, "challenger_version": challenger_model["version"],
                  "champion_version_before": challenger_evaluation["champion_version"],
                  "promoted": decision.promote, "reason": decision.reason,
                  "challenger_metrics": challenger_evaluation["challenger"],
                  "champion_metrics": challenger_evaluation["champion"], "dagster_run_id": context.run_id}
        if decision.promote:
            registry.move_alias(client, name, CHAMPION, challenger_model["version"], decision.reason,
                                actor=f"dagster run {context.run_id}")
        client.set_model_version_tag(name, challenger_model["version"], "promotion",
                                     json.dumps({"promoted": decision.promote, "reason": decision.reason}))
        client.log_dict(challenger_model["run_id"], record, "promotion_decision.json")
        record["champion_version_after"] = (challenger_model["version"] if decision.promote
                                            else challenger_evaluation["champion_version"])
        return dg.Output(record, metadata={"promoted": decision.promote, "reason": decision.reason,
                                           "champion_version": str(record["champion_version_after"])})

    return [challenger_model, challenger_evaluation, promotion_decision]


def _score(model: registry.LoadedModel, holdout: pd.DataFrame, params: Params) -> dict[str, float]:
    return evaluate_scores(holdout, predict(model.booster, holdout), model.threshold, params.evaluate)
