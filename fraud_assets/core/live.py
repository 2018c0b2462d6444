"""Live performance: what the served models scored, joined with the labels that arrived later.

Labels come from two places: ``POST /labels`` (the prediction log's ``labels`` table; the newest label
of a transaction wins) and the month's snapshot once it is pinned (its ``is_fraud`` column). A label
from the API wins over the snapshot's: it is what the investigators decided last. Rows with no
label yet are counted and left out of the metrics, never assumed legit.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score

PREDICTION_COLUMNS = ["transaction_id", "tx_datetime", "model_version", "fraud_probability", "alert"]


def attach_labels(predictions: pd.DataFrame, api_labels: pd.DataFrame, snapshot: pd.DataFrame | None
                  ) -> pd.DataFrame:
    """``predictions`` with ``is_fraud`` (NaN when unknown) and ``label_source`` (api, snapshot or none)."""
    out = predictions.loc[:, PREDICTION_COLUMNS].copy()
    latest = (api_labels.sort_values("received_at", kind="stable").drop_duplicates("transaction_id", keep="last")
              .set_index("transaction_id")["is_fraud"] if len(api_labels) else pd.Series(dtype="float64"))
    from_api = out["transaction_id"].map(latest)
    from_snapshot = (out["transaction_id"].map(snapshot.set_index("transaction_id")["is_fraud"])
                     if snapshot is not None and len(snapshot) else pd.Series(np.nan, index=out.index))
    out["is_fraud"] = from_api.combine_first(from_snapshot).astype("float64")
    out["label_source"] = np.where(from_api.notna(), "api", np.where(from_snapshot.notna(), "snapshot", "none"))
    return out


def _metrics(part: pd.DataFrame) -> dict[str, Any]:
    labelled = part[part["is_fraud"].notna()]
    y = labelled["is_fraud"].to_numpy(dtype=int)
    alert = labelled["alert"].to_numpy(dtype=bool)
    tp = int((alert & (y == 1)).sum())
    out: dict[str, Any] = {
        "scored": len(part), "labelled": len(labelled), "frauds": int(y.sum()), "alerts": int(part["alert"].sum()),
        "precision": tp / int(alert.sum()) if alert.any() else None,
        "recall": tp / int(y.sum()) if y.any() else None,
        "average_precision": None,
    }
    if len(np.unique(y)) == 2:
        out["average_precision"] = float(average_precision_score(y, labelled["fraud_probability"].to_numpy()))
    return out


def live_performance(labelled: pd.DataFrame) -> dict[str, Any]:
    """Precision, recall and AUPRC of the served decisions, overall and per model version."""
    versions = {str(v): _metrics(part) for v, part in labelled.groupby("model_version", sort=True)}
    return {"overall": _metrics(labelled), "by_model_version": versions,
            "label_sources": labelled["label_source"].value_counts().to_dict()}


def _utc(labelled: pd.DataFrame) -> pd.Series:
    return pd.to_datetime(labelled["tx_datetime"], utc=True, format="ISO8601")


def weekly_performance(labelled: pd.DataFrame) -> list[dict[str, Any]]:
    """:func:`live_performance`'s metrics per ISO week (starting Monday, UTC) and model version, oldest first;
    each row names its ``week`` (the Monday, ``YYYY-MM-DD``) and ``model_version``."""
    if labelled.empty:
        return []
    when = _utc(labelled)
    monday = (when.dt.normalize() - pd.to_timedelta(when.dt.weekday, unit="D")).dt.strftime("%Y-%m-%d")
    grouped = labelled.assign(_week=monday.to_numpy()).groupby(["_week", "model_version"], sort=True)
    return [{"week": week, "model_version": str(version), **_metrics(part)} for (week, version), part in grouped]


def daily_alerts(predictions: pd.DataFrame) -> list[dict[str, Any]]:
    """Transactions scored and alerts raised per UTC day of the transaction, oldest first."""
    if predictions.empty:
        return []
    day = _utc(predictions).dt.strftime("%Y-%m-%d")
    counts = predictions.assign(_day=day.to_numpy()).groupby("_day", sort=True)["alert"].agg(["size", "sum"])
    return [{"day": d, "scored": int(n), "alerts": int(a)} for d, n, a in counts.itertuples()]
