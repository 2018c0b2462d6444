"""Monitoring group: how far a month has drifted from the months before it."""


import base64
import json
from typing import Any

import dagster as dg
import numpy as np
import pandas as pd

from fraud_assets.adapters import mlflow_registry
from fraud_assets.core.contract import knob_changes, rebuild_features
from fraud_assets.core.drift import drift_report as compute_drift
from fraud_assets.core.features import FEATURE_COLUMNS
from fraud_assets.core.live import attach_labels
from fraud_assets.core.live import live_performance as live_perf
from fraud_assets.core.plots import drift_png
from fraud_assets.core.shadow import shadow_evidence
from fraud_assets.core.train import missing_features, predict
from fraud_assets.orchestration.partitions import months_before, partition_start
from fraud_assets.orchestration.resources import (
    BY_PARTITION,
    LAZY,
    MlflowResource,
    PartitionFrames,
    PredictionLogResource,
)
from fraud_assets.params import Params

GROUP = "monitoring"
SHADOW_LOOKBACK_DAYS = 62  # how far back a shadow review pairs the live scores (a shadow serves weeks, not years)
EXPERIMENT = mlflow_registry.MONITORING_EXPERIMENT


def build_monitoring_assets(params: Params, partitions: dg.PartitionsDefinition) -> list[dg.AssetsDefinition]:
    """The monitoring assets for ``partitions``."""
    m = params.monitor
    first = partition_start(partitions)
    window = dg.AssetIn(  # the month itself and the months before it (one input: Dagster maps one per asset),
        "transaction_features",  # each read when looked up
        partition_mapping=months_before(m.reference_months),
        metadata={BY_PARTITION: True, LAZY: True},
    )

    @dg.asset(group_name=GROUP, partitions_def=partitions, kinds={"mlflow"},
              ins={"features_by_month": window},
              check_specs=[dg.AssetCheckSpec("drift_within_thresholds", asset="drift_report", blocking=False,
                                             description="no drift beyond the monitor.* thresholds")])
    def drift_report(context: dg.AssetExecutionContext, features_by_month: PartitionFrames,
                     mlflow: MlflowResource):
        """Per-feature PSI and KS, champion score drift and fraud-rate change against the preceding months."""
        month = context.partition_key
        transaction_features = features_by_month[month]
        as_of = data_as_of(transaction_features)
        # The first month of data has no earlier transactions, so its history features (counts, means, terminal
        # rates) are those of a cold start; comparing against it would flag every history feature as drift.
        reference_months = sorted(k for k in features_by_month if k not in (month, first))
        if not reference_months:
            report = {"month": month, "as_of": as_of, "drift_detected": False, "reasons": [],
                      "note": "no earlier month with a full feature history to compare"}
            yield dg.Output(report, metadata={"note": report["note"], "as_of": as_of})
            yield dg.AssetCheckResult(check_name="drift_within_thresholds", passed=True,
                                      metadata={"note": report["note"]})
            return
        ref = pd.concat([features_by_month[k] for k in reference_months], ignore_index=True)
        ref_scores, cur_scores, version = _champion_scores(mlflow, params, ref, transaction_features)
        report = {"month": month, "as_of": as_of, "reference_months": reference_months,
                  "champion_version": version,
                  **compute_drift(ref, transaction_features, FEATURE_COLUMNS, m, ref_scores, cur_scores)}
        png = drift_png(report["features"], m.psi_threshold,
                        f"Feature drift {month} vs {', '.join(reference_months)}")
        _log_drift(mlflow, report, png)
        yield dg.Output(report, metadata={**_drift_metadata(report, png), "as_of": as_of})
        yield dg.AssetCheckResult(
            check_name="drift_within_thresholds", passed=not report["drift_detected"],
            severity=dg.AssetCheckSeverity.WARN,
            metadata={"reasons": "; ".join(report["reasons"]) or "none", "psi_threshold": m.psi_threshold,
                      "max_psi": max(f["psi"] for f in report["features"])})

    @dg.asset(group_name=GROUP, partitions_def=partitions, kinds={"sqlite"},
              check_specs=[dg.AssetCheckSpec("live_performance_holds", asset="live_performance", blocking=False,
                                             description="served AUPRC >= monitor.min_live_average_precision")])
    def live_performance(context: dg.AssetExecutionContext, validated_transactions: pd.DataFrame,
                         prediction_log: PredictionLogResource):
        """The served models' precision, recall and AUPRC on a month, from the prediction log and late labels."""
        predictions, api_labels = prediction_log.read_month(context.partition_key)
        as_of = data_as_of(validated_transactions) or None  # the labels a report written then would have
        labelled = attach_labels(predictions, api_labels, validated_transactions, as_of, features=params.features)
        result = {"month": context.partition_key, **live_perf(labelled, as_of)}
        overall = result["overall"]
        judged = overall["labelled"] >= m.min_live_labelled and overall["average_precision"] is not None
        result["performance_dropped"] = bool(judged and overall["average_precision"] < m.min_live_average_precision)
        result["as_of"] = as_of or ""
        yield dg.Output(result, metadata={"as_of": result["as_of"],
            "scored": overall["scored"], "labelled": overall["labelled"], "alerts": overall["alerts"],
            "average_precision": overall["average_precision"], "precision": overall["precision"],
            "recall": overall["recall"], "performance_dropped": result["performance_dropped"],
            "by_model_version": dg.MetadataValue.json(result["by_model_version"])})
        yield dg.AssetCheckResult(
            check_name="live_performance_holds", passed=not result["performance_dropped"],
            severity=dg.AssetCheckSeverity.WARN,
            metadata={"average_precision": overall["average_precision"], "labelled": overall["labelled"],
                      "min_live_average_precision": m.min_live_average_precision,
                      "judged": judged})

    @dg.asset(group_name=GROUP, partitions_def=partitions, kinds={"mlflow"},
              check_specs=[dg.AssetCheckSpec("shadow_not_worse", asset="shadow_review", blocking=False,
                                             description="the shadowed challenger does not rank live frauds worse")])
    def shadow_review(context: dg.AssetExecutionContext, validated_transactions: pd.DataFrame,
                      prediction_log: PredictionLogResource, mlflow: MlflowResource):
        """The challenger serving in the shadow against the champion on the same live transactions whose labels
        have arrived: a paired bootstrap of the AUPRC difference; when it says the shadow ranks frauds better, the
        shadow is promoted (``promote.shadow_promotes``), the decision recorded on both versions."""
        as_of = data_as_of(validated_transactions)
        review = _shadow_review(prediction_log, mlflow, params, pd.Timestamp(as_of) if as_of else None,
                                context.run_id)
        yield dg.Output(review, metadata={k: v for k, v in review.items() if k != "comparison"}
                        | {k: v for k, v in (review.get("comparison") or {}).items()})
        yield dg.AssetCheckResult(check_name="shadow_not_worse", passed=review["verdict"] != "worse",
                                  severity=dg.AssetCheckSeverity.WARN, metadata={"verdict": review["verdict"]})

    return [drift_report, live_performance, shadow_review]


def _shadow_review(prediction_log: PredictionLogResource, mlflow: MlflowResource, params: Params,
                   as_of: pd.Timestamp | None, run_id: str) -> dict[str, Any]:
    """What the live evidence says of the shadowed challenger as of ``as_of`` (see ``shadow_review``)."""
    client, reg = mlflow.client(), params.registry
    champion = mlflow_registry.alias_version(client, reg.model_name, reg.champion_alias)
    shadow = mlflow_registry.alias_version(client, reg.model_name, reg.challenger_alias)
    out: dict[str, Any] = {"as_of": as_of.isoformat() if as_of is not None else "", "verdict": "no shadow",
                           "champion_version": str(champion.version) if champion else "",
                           "shadow_version": str(shadow.version) if shadow else "", "promoted": False}
    if (not params.serve.shadow or as_of is None or champion is None or shadow is None
            or str(shadow.version) == str(champion.version)):
        return out
    start = (as_of - pd.Timedelta(days=SHADOW_LOOKBACK_DAYS)).to_pydatetime()
    pairs = prediction_log.shadow_pairs(str(shadow.version), start, as_of.to_pydatetime())
    pairs = pairs.loc[pairs["champion_version"].astype(str) == str(champion.version)]  # against this champion
    comparison, verdict = shadow_evidence(pairs, as_of, params.promote)
    out |= {"verdict": verdict, "comparison": comparison.as_dict(), "pairs": len(pairs)}
    if verdict == "better" and params.promote.shadow_promotes:
        reason = (f"shadow evidence: AUPRC {comparison.shadow_ap:.3f} vs champion {comparison.champion_ap:.3f} on "
                  f"{comparison.n} live transactions ({comparison.n_frauds} frauds) labelled by {as_of.isoformat()}, "
                  f"difference {comparison.diff:+.3f}, 95 % CI [{comparison.ci_low:+.3f}, {comparison.ci_high:+.3f}]")
        try:
            mlflow_registry.move_alias(client, reg.model_name, reg.champion_alias, str(shadow.version), reason,
                                       actor=f"dagster run {run_id}", kind="shadow")
        except mlflow_registry.NotServable as exc:
            out["note"] = f"not promoted: {exc}"
        else:
            out |= {"promoted": True, "reason": reason}
    client.set_model_version_tag(reg.model_name, str(shadow.version), "shadow_review", json.dumps(
        {k: out[k] for k in ("as_of", "verdict", "champion_version", "promoted")} | {"comparison": out["comparison"]}))
    return out


def data_as_of(frame: pd.DataFrame) -> str:
    """The "now" of a month's data: one second after its newest transaction (ISO 8601 UTC), the time a retrain
    it triggers is as of (rows strictly before it are known)."""
    newest = pd.to_datetime(frame["tx_datetime"], utc=True).max()
    return (newest + pd.Timedelta(seconds=1)).isoformat() if pd.notna(newest) else ""


def _champion_scores(mlflow: MlflowResource, params: Params, reference: pd.DataFrame, current: pd.DataFrame
                     ) -> tuple[np.ndarray | None, np.ndarray | None, str | None]:
    """The serving champion's scores on both sides, on features built with its own knobs (rebuilt from the rows
    when they differ from ``params.features``), or Nones when there is no (compatible) champion."""
    client, reg = mlflow.client(), params.registry
    if mlflow_registry.alias_version(client, reg.model_name, reg.champion_alias) is None:
        return None, None, None
    champion = mlflow_registry.load_alias(client, reg.model_name, reg.champion_alias, params.train.n_threads)
    if missing_features(champion.booster, current.columns):  # it needs features this code no longer builds
        return None, None, champion.version
    if knob_changes(champion.features.params, params.features):
        reference, current = rebuild_features(champion.features.params, [reference, current])
    return predict(champion.booster, reference), predict(champion.booster, current), champion.version


def _log_drift(mlflow: MlflowResource, report: dict, png: bytes) -> None:
    exp_id = mlflow_registry.ensure_experiment(mlflow.client(), EXPERIMENT, mlflow.artifact_root)
    client = mlflow.client()
    tags = {"month": report["month"], "drift_detected": str(report["drift_detected"])}
    run_id = client.create_run(exp_id, run_name=f"drift-{report['month']}", tags=tags).info.run_id
    for f in report["features"]:
        client.log_metric(run_id, f"psi.{f['feature']}", f["psi"])
        client.log_metric(run_id, f"ks.{f['feature']}", f["ks"])
    if report["score_psi"] is not None:
        client.log_metric(run_id, "score_psi", report["score_psi"])
    client.log_metric(run_id, "fraud_rate_change", report["fraud_rate_change"])
    client.log_dict(run_id, report, "drift_report.json")
    mlflow_registry.log_pngs(client, run_id, {"feature_drift.png": png})
    client.set_terminated(run_id)


def _drift_metadata(report: dict, png: bytes) -> dict:
    table = "| feature | PSI | KS | drifted |\n| --- | --- | --- | --- |\n" + "\n".join(
        f"| {f['feature']} | {f['psi']:.4f} | {f['ks']:.4f} | {'yes' if f['drifted'] else ''} |"
        for f in report["features"])
    return {"drift_detected": report["drift_detected"], "reasons": "; ".join(report["reasons"]) or "none",
            "score_psi": report["score_psi"] if report["score_psi"] is not None else "no champion",
            "fraud_rate_change": report["fraud_rate_change"],
            "features": dg.MetadataValue.md(table),
            "plot_feature_drift": dg.MetadataValue.md(
                f"![feature drift](data:image/png;base64,{base64.b64encode(png).decode()})")}
