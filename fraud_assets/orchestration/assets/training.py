"""Training group: the challenger, its evaluation beside the champion, and the promotion decision."""


import base64
import json
from collections.abc import Mapping
from typing import Any

import dagster as dg
import pandas as pd
from mlflow import MlflowClient

from fraud_assets.adapters import mlflow_registry
from fraud_assets.core.contract import holdout_as_trained, knob_changes
from fraud_assets.core.evaluate import (
    ORACLE,
    SCENARIO,
    choose_threshold_on,
    compare_on_holdout,
    oracle_average_precision,
    recall_by_scenario,
)
from fraud_assets.core.plots import evaluation_plots
from fraud_assets.core.promote import Decision, blocking_bar_failures, confirm_champion, decide_promotion
from fraud_assets.core.split import Split, split_by_time, split_rolling
from fraud_assets.core.train import fit_challenger, predict_baseline, predict_calibrated, refit_model, train_baseline
from fraud_assets.orchestration.partitions import AS_OF_TAG, months_before
from fraud_assets.orchestration.resources import (
    BY_PARTITION,
    LAZY,
    ComputeResource,
    MlflowResource,
    PartitionFrames,
    ProjectResource,
)
from fraud_assets.params import Params, TrainParams

GROUP = "training"


def build_training_assets(params: Params, partitions: dg.PartitionsDefinition) -> list[dg.AssetsDefinition]:
    """The training assets for ``partitions``; a partition is the holdout month.

    The months come in as :class:`PartitionFrames`, each read when a step looks it up: a step holds the one frame
    its split concatenates them into, not every month beside it (and a monthly decision reads none).
    """
    history = dg.AssetIn(
        "transaction_features",
        partition_mapping=months_before(params.split.train_months),
        metadata={BY_PARTITION: True, LAZY: True},
    )
    reg = params.registry

    @dg.asset(group_name=GROUP, partitions_def=partitions, ins={"features_by_month": history},
              kinds={"xgboost", "mlflow"})
    def challenger_model(context: dg.AssetExecutionContext, features_by_month: PartitionFrames,
                         project: ProjectResource, mlflow: MlflowResource, compute: ComputeResource
                         ) -> dg.Output[dict]:
        """An XGBoost challenger, registered in MLflow: trained on the months before the holdout month, or, in a run
        tagged ``fraud/as_of``, on the rolling window before the latest days (``split.window_weeks``)."""
        month = context.partition_key
        split = _split(context, features_by_month, params)
        engine = compute.get()
        fitted = fit_challenger(split.train, split.valid, params.train, params.evaluate, tune=params.tune,
                                fit=engine.fit)
        versions = {m: project.snapshot_version(m) for m in [*split.train_months, month]}
        run_name = f"challenger-{month}" + (f"-as-of-{split.window.as_of:%Y%m%dT%H%M}" if split.window else "")
        info = _register(context.run_id, run_name, split, features_by_month, versions, fitted.booster,
                         fitted.calibrator, fitted.threshold, fitted.params, mlflow, params,
                         trials=fitted.trials, extra_tags={"compute_engine": engine.name})
        client = mlflow.client()
        client.set_registered_model_alias(reg.model_name, reg.challenger_alias, info["version"])
        client.set_terminated(info["run_id"])
        return dg.Output(info, metadata={"version": info["version"], "mlflow_run_id": info["run_id"],
                                         "threshold": info["threshold"], "rows_train": len(split.train),
                                         "train_months": ", ".join(split.train_months),
                                         "split": "rolling" if split.window else "monthly",
                                         "engine": engine.name,
                                         **({"as_of": split.window.as_of.isoformat()} if split.window else {})})

    @dg.asset(group_name=GROUP, partitions_def=partitions, kinds={"mlflow"},
              ins={"features_by_month": history, "transactions_by_month": dg.AssetIn(
                  "validated_transactions", partition_mapping=months_before(1),
                  metadata={BY_PARTITION: True, LAZY: True})},
              check_specs=[dg.AssetCheckSpec("challenger_meets_minimum_bars", asset="challenger_evaluation",
                                             blocking=True, description="AUPRC and ROC-AUC above promote.* bars "
                                             "(a bar the champion fails on the same holdout does not block)")])
    def challenger_evaluation(context: dg.AssetExecutionContext, challenger_model: dict,
                              features_by_month: PartitionFrames, transactions_by_month: PartitionFrames,
                              mlflow: MlflowResource):
        """The challenger, the serving champion and a logistic baseline scored on the same holdout month."""
        split = _split(context, features_by_month, params)
        transactions = pd.concat([_oracle_columns(f) for f in transactions_by_month.values() if len(f)],
                                 ignore_index=True)
        result, pngs = _evaluate(split, features_by_month, challenger_model, transactions, mlflow.client(), params)
        _log_evaluation(mlflow.client(), challenger_model["run_id"], result, pngs)
        failures = blocking_bar_failures(result["challenger"], result["champion"], params.promote)
        yield dg.Output(result, metadata=_evaluation_metadata(result, pngs))
        yield dg.AssetCheckResult(
            check_name="challenger_meets_minimum_bars", passed=not failures,
            metadata={"failures": "; ".join(failures) or "none",
                      "average_precision": result["challenger"]["average_precision"],
                      "min_average_precision": params.promote.min_average_precision,
                      "roc_auc": result["challenger"]["roc_auc"], "min_roc_auc": params.promote.min_roc_auc})

    @dg.asset(group_name=GROUP, partitions_def=partitions, kinds={"mlflow"}, ins={"features_by_month": history})
    def promotion_decision(context: dg.AssetExecutionContext, challenger_model: dict,
                           challenger_evaluation: dict, features_by_month: PartitionFrames,
                           project: ProjectResource, mlflow: MlflowResource, compute: ComputeResource
                           ) -> dg.Output[dict]:
        """Moves the champion alias to the challenger only when it beats the champion on the same holdout; a
        promoted rolling challenger is then refit on its whole window, holdout included, and that refit serves."""
        client = mlflow.client()
        decision = decide_promotion(challenger_evaluation["challenger"], challenger_evaluation["champion"],
                                    params.promote)
        now = mlflow_registry.alias_version(client, reg.model_name, reg.champion_alias)  # re-read just before moving
        decision = confirm_champion(decision, challenger_evaluation["champion_version"],
                                    str(now.version) if now is not None else None)
        record = {"holdout_month": context.partition_key, "challenger_version": challenger_model["version"],
                  "champion_version_before": challenger_evaluation["champion_version"],
                  "promoted": decision.promote, "reason": decision.reason,
                  "challenger_metrics": challenger_evaluation["challenger"],
                  "champion_metrics": challenger_evaluation["champion"], "dagster_run_id": context.run_id}
        if decision.promote:
            try:
                mlflow_registry.move_alias(client, reg.model_name, reg.champion_alias, challenger_model["version"],
                                           decision.reason, actor=f"dagster run {context.run_id}")
            except mlflow_registry.NotServable as exc:
                decision = Decision(False, f"refused: {exc}")
        record.update(promoted=decision.promote, reason=decision.reason)
        if decision.promote and challenger_model.get("as_of") and params.split.refit_on_promotion:
            record["refit"] = _refit(context, challenger_model, features_by_month, project, mlflow, compute,
                                     params)
        client.set_model_version_tag(reg.model_name, challenger_model["version"], "promotion",
                                     json.dumps({"promoted": decision.promote, "reason": decision.reason}))
        client.log_dict(challenger_model["run_id"], record, "promotion_decision.json")
        record["champion_version_after"] = (record["refit"]["version"] if record.get("refit")
                                            else challenger_model["version"] if decision.promote
                                            else str(now.version) if now is not None else None)
        return dg.Output(record, metadata={"promoted": decision.promote, "reason": decision.reason,
                                           "champion_version": str(record["champion_version_after"]),
                                           "refit_version": str((record.get("refit") or {}).get("version"))})

    return [challenger_model, challenger_evaluation, promotion_decision]


def _split(context: dg.AssetExecutionContext, features_by_month: Mapping[str, pd.DataFrame], params: Params
           ) -> Split:
    """The run's split: rolling as of the run's ``fraud/as_of`` tag when it has one, else by month."""
    as_of = context.run.tags.get(AS_OF_TAG)
    if as_of:
        return split_rolling(features_by_month, pd.Timestamp(as_of), context.partition_key, params.split,
                             params.features.label_delay_days)
    return split_by_time(features_by_month, context.partition_key, params.split)


def _register(run_id_dagster: str, run_name: str, split: Split, features_by_month: Mapping[str, pd.DataFrame],
              versions: dict[str, str], booster: Any, calibrator: Any, threshold: float, train_params: TrainParams,
              mlflow: MlflowResource, params: Params, trials: list[dict[str, Any]] | None = None,
              extra_tags: dict[str, str] | None = None) -> dict[str, Any]:
    """Log a trained booster as an MLflow run (params, calibrator, dataset, lineage, feature definition) and
    register it as a version of the model; return what the training assets record of it (the run stays open)."""
    reg, month = params.registry, split.holdout_month
    window = split.window.describe() if split.window else {}
    tags = {"dagster_run_id": run_id_dagster, "holdout_month": month, "threshold": f"{threshold:.6f}",
            "train_months": ",".join(split.train_months), "split": "rolling" if split.window else "monthly",
            **{f"window.{k}": str(v) for k, v in window.items()},
            **mlflow_registry.definition_tags(params.features), **mlflow_registry.calibrator_tags(calibrator),
            **{f"data_version.{m}": v for m, v in versions.items()}, **(extra_tags or {})}
    run_id = mlflow.start_run(run_name, tags=tags)
    client = mlflow.client()
    for key, value in {**train_params.model_dump(), **params.split.model_dump()}.items():
        client.log_param(run_id, key, value)  # the train params used (the tuned ones when tuning is on)
    client.log_dict(run_id, calibrator.to_dict(), mlflow_registry.CALIBRATOR_ARTIFACT)
    if trials:
        client.log_dict(run_id, {"trials": trials}, "tuning.json")
    dataset = _dataset_info(split, features_by_month, versions, params)
    client.log_dict(run_id, dataset, "dataset.json")
    for key in ("rows_train", "rows_valid", "rows_holdout", "fraud_rate_train", "fraud_rate_holdout"):
        client.log_param(run_id, f"dataset.{key}", dataset[key])
    client.log_param(run_id, "dataset.train_months", ",".join(split.train_months))
    mlflow_registry.log_snapshot_inputs(client, run_id, dataset["snapshots"])
    mlflow_registry.log_feature_definition(client, run_id, params.features)
    model_uri = mlflow_registry.log_booster(booster, run_id, mlflow.tracking_uri)
    mv = mlflow_registry.register_version(client, reg.model_name, model_uri, run_id, tags)
    return {"version": str(mv.version), "run_id": run_id, "model_uri": model_uri, "threshold": threshold,
            "train_months": split.train_months, "holdout_month": month, "data_versions": versions,
            "best_iteration": int(booster.attr("best_iteration") or 0), "train_params": train_params.model_dump(),
            **({"as_of": window["as_of"], "window": window} if window else {})}


def _refit(context: dg.AssetExecutionContext, challenger_model: dict, features_by_month: Mapping[str, pd.DataFrame],
           project: ProjectResource, mlflow: MlflowResource, compute: ComputeResource, params: Params
           ) -> dict[str, Any]:
    """Refit a promoted rolling challenger on its training, validation and holdout rows (labels as known at its
    ``as_of``) for the rounds its early stopping chose, with its calibrator and threshold; register the refit as a
    version tagged ``refit_of`` and point the champion (and the challenger: nothing left to shadow) at it."""
    reg, client = params.registry, mlflow.client()
    split = _split(context, features_by_month, params)
    challenger = mlflow_registry.load_version(client, reg.model_name, challenger_model["version"],
                                              params.train.n_threads)
    train_params = TrainParams(**challenger_model["train_params"])
    rows = split.labelled
    engine = compute.get()
    booster = refit_model(rows, train_params, challenger_model["best_iteration"] + 1, fit=engine.fit)
    versions = {m: project.snapshot_version(m) for m in [*split.train_months, split.holdout_month]}
    info = _register(context.run_id, f"refit-of-v{challenger.version}", split, features_by_month, versions, booster,
                     challenger.calibrator, challenger.threshold, train_params, mlflow, params,
                     extra_tags={"refit_of": challenger.version, "refit_rows": str(len(rows)),
                                 "refit_rounds": str(challenger_model["best_iteration"] + 1),
                                 "compute_engine": engine.name,
                                 "refit_note": "trained on the challenger's window and holdout together; calibrator "
                                               "and threshold of the challenger; not judged on a holdout of its own"})
    reason = (f"refit of v{challenger.version} (promoted) on {len(rows)} rows, its holdout included, as of "
              f"{challenger_model['as_of']}")
    mlflow_registry.move_alias(client, reg.model_name, reg.champion_alias, info["version"], reason,
                               actor=f"dagster run {context.run_id}", kind="refit")
    client.set_registered_model_alias(reg.model_name, reg.challenger_alias, info["version"])
    client.set_terminated(info["run_id"])
    return {"version": info["version"], "refit_of": challenger.version, "rows": len(rows),
            "rounds": challenger_model["best_iteration"] + 1, "run_id": info["run_id"]}


def _dataset_info(split: Split, features_by_month: Mapping[str, pd.DataFrame], versions: dict[str, str],
                  params: Params) -> dict[str, Any]:
    """Months, rows, fraud rates and DVC data versions of what a challenger learned from and is judged on."""
    snapshots = []
    for m in [*split.train_months, split.holdout_month]:
        labels = features_by_month[m]["is_fraud"]  # each month looked up once
        snapshots.append({"month": m, "digest": versions[m], "source": f"{params.data.dir}/{m}.parquet",
                          "context": "evaluation" if m == split.holdout_month else "training",
                          "rows": len(labels), "fraud_rate": float(labels.mean())})
    return {"train_months": split.train_months, "holdout_month": split.holdout_month,
            "rows_train": len(split.train), "rows_valid": len(split.valid), "rows_holdout": len(split.holdout),
            "fraud_rate_train": float(split.train["is_fraud"].mean()),
            "fraud_rate_holdout": float(split.holdout["is_fraud"].mean()),
            "data_versions": versions, "snapshots": snapshots}


def _evaluate(split: Split, features_by_month: Mapping[str, pd.DataFrame], challenger_model: dict,
              transactions: pd.DataFrame, client: MlflowClient, params: Params) -> tuple[dict, dict[str, bytes]]:
    """Score challenger, champion, a logistic baseline and the simulator's oracle on the holdout; plot them."""
    name, holdout = params.registry.model_name, split.holdout
    challenger = mlflow_registry.load_version(client, name, challenger_model["version"], params.train.n_threads)
    baseline = train_baseline(split.train, params.train)
    scored = {
        "challenger": (predict_calibrated(challenger.booster, challenger.calibrator, holdout), challenger.threshold),
        "baseline": (predict_baseline(baseline, holdout),
                     choose_threshold_on(split.valid, predict_baseline(baseline, split.valid), params.evaluate)),
    }
    result: dict = {"holdout_month": split.holdout_month, "challenger_version": challenger.version,
                    "champion": None, "champion_version": None, "champion_note": "no champion yet"}
    champ = mlflow_registry.alias_version(client, name, params.registry.champion_alias)
    if champ is not None:
        result["champion_version"] = str(champ.version)
        try:
            loaded = mlflow_registry.load_version(client, name, str(champ.version), params.train.n_threads)
        except ValueError as exc:  # no feature definition, or one this code cannot build: not compared
            result["champion_note"] = f"champion not compared: {exc}"
        else:
            # The months before the holdout are read only when the champion's features are rebuilt from them.
            history = [features_by_month[m] for m in sorted(features_by_month) if m < split.holdout_month
                       ] if knob_changes(loaded.features.params, params.features) else []
            features, note = holdout_as_trained(loaded.features.params, params.features, holdout, history)
            scored["champion"] = (predict_calibrated(loaded.booster, loaded.calibrator, features), loaded.threshold)
            result["champion_note"] = note
    result.update(compare_on_holdout(holdout, scored, params.evaluate))
    # The holdout's own labels (a rolling one's as known at its time), the simulator's oracle and scenario beside them
    rows = holdout[["transaction_id", "is_fraud"]].merge(_oracle_columns(transactions), on="transaction_id",
                                                         how="left")
    result["oracle_average_precision"] = oracle_average_precision(rows)
    if SCENARIO in rows.columns:  # simulated data: recall at the threshold per fraud pattern
        result["challenger"].update(recall_by_scenario(rows[SCENARIO].to_numpy(),
                                                       scored["challenger"][0] >= challenger.threshold))
    scores = {k: v[0] for k, v in scored.items()}
    if result["oracle_average_precision"] is not None:
        scores["simulator oracle"] = rows["fraud_probability"].to_numpy()
    pngs = evaluation_plots(holdout["is_fraud"].to_numpy(), scores, "challenger", challenger.threshold,
                            challenger.booster.get_score(importance_type="gain"), params.evaluate.calibration_bins)
    return result, pngs


def _oracle_columns(transactions: pd.DataFrame) -> pd.DataFrame:
    """What the evaluation reads of validated transactions beside the holdout: the id, and the simulator's oracle
    and scenario where the data has them."""
    return transactions[[c for c in ("transaction_id", ORACLE, SCENARIO) if c in transactions.columns]]


def _log_evaluation(client: MlflowClient, run_id: str, result: dict, pngs: dict[str, bytes]) -> None:
    for scorer in ("challenger", "baseline", "champion"):
        prefix = "holdout" if scorer == "challenger" else f"{scorer}_holdout"
        for key, value in (result.get(scorer) or {}).items():
            client.log_metric(run_id, f"{prefix}_{key}", value)
    if result["oracle_average_precision"] is not None:
        client.log_metric(run_id, "oracle_holdout_average_precision", result["oracle_average_precision"])
    client.log_dict(run_id, result, "evaluation.json")
    mlflow_registry.log_pngs(client, run_id, pngs)


def _evaluation_metadata(result: dict, pngs: dict[str, bytes]) -> dict[str, Any]:
    meta: dict[str, Any] = {f"challenger_{k}": v for k, v in result["challenger"].items()}
    for scorer in ("baseline", "champion"):
        if result.get(scorer):
            meta[f"{scorer}_average_precision"] = result[scorer]["average_precision"]
            meta[f"{scorer}_card_precision_at_k"] = result[scorer]["card_precision_at_k"]
    if result["oracle_average_precision"] is not None:
        meta["oracle_average_precision"] = result["oracle_average_precision"]
    meta["champion_version"] = str(result["champion_version"])
    for file, data in pngs.items():
        meta[f"plot_{file.removesuffix('.png')}"] = dg.MetadataValue.md(
            f"![{file}](data:image/png;base64,{base64.b64encode(data).decode()})")
    return meta
