"""Live performance: what the served models scored, joined with the labels that arrived later.

Labels come from two places: ``POST /labels`` (the prediction log's ``labels`` table; the newest label
of a transaction wins) and the month's snapshot once it is pinned (its ``is_fraud`` column). A label
from the API wins over the snapshot's: it is what the investigators decided last. Rows with no
label yet are counted and left out of the metrics, never assumed legit.

Every label has an arrival time: an API label its ``label_available_at`` when the log has one, else when it was
received (``received_at``); a snapshot label its ``label_available_at``, or ``features.label_delay_days`` after the
transaction when the snapshot has none. Metrics computed *as of* a time count only the labels that had arrived by
then (at or before it), as a report written at that time would; by default, as of the latest arrival in the data.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score

from fraud_assets.params import FeatureParams
from fraud_assets.schemas import LABEL_AVAILABLE_AT, default_label_available_at

PREDICTION_COLUMNS = ["transaction_id", "tx_datetime", "model_version", "fraud_probability", "alert"]


def _timestamps(values: pd.Series) -> pd.Series:
    return pd.to_datetime(values, utc=True, format="ISO8601")


def _api_arrivals(api_labels: pd.DataFrame) -> pd.Series:
    """When each API label arrived: its own ``label_available_at`` where it has one, else ``received_at``."""
    received = _timestamps(api_labels["received_at"])
    if LABEL_AVAILABLE_AT in api_labels.columns:
        return _timestamps(api_labels[LABEL_AVAILABLE_AT]).fillna(received)
    return received


def label_arrivals(frame: pd.DataFrame, features: FeatureParams | None = None) -> pd.Series:
    """When the label of each row of ``frame`` arrived (UTC): its ``label_available_at``, or, for a frame without
    the column, the default rule of ``features`` (ValueError naming the column when ``features`` is not given)."""
    if LABEL_AVAILABLE_AT in frame.columns:
        return _timestamps(frame[LABEL_AVAILABLE_AT])
    if features is None:
        raise ValueError(f"the frame has no {LABEL_AVAILABLE_AT} column: pass features= so its labels arrive "
                         "features.label_delay_days after their transactions")
    return default_label_available_at(frame["tx_datetime"], features)


def _as_utc(when: pd.Timestamp | str) -> pd.Timestamp:
    """A time as a UTC timestamp (a naive one is taken as UTC)."""
    stamp = pd.Timestamp(when)
    return stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")


def _latest_arrival(*labels: pd.DataFrame | None) -> pd.Timestamp | None:
    arrivals = [f["_at"].max() for f in labels if f is not None and len(f)]
    return max((a for a in arrivals if pd.notna(a)), default=None)


def _known_by(ids: pd.Series, labels: pd.DataFrame | None, cutoff: pd.Timestamp | None) -> pd.DataFrame:
    """Per id of ``ids`` (same index) the label arrived last by ``cutoff`` (``is_fraud``, its arrival ``_at``)."""
    if labels is None or not len(labels):
        never = pd.Series(pd.NaT, index=ids.index, dtype="datetime64[ns, UTC]")
        return pd.DataFrame({"is_fraud": np.nan, "_at": never}, index=ids.index)
    arrived = labels.loc[labels["_at"] <= cutoff] if cutoff is not None else labels
    latest = (arrived.sort_values("_at", kind="stable").drop_duplicates("transaction_id", keep="last")
              .set_index("transaction_id")[["is_fraud", "_at"]])
    return latest.reindex(ids.to_numpy()).set_axis(ids.index)


def attach_labels(predictions: pd.DataFrame, api_labels: pd.DataFrame, snapshot: pd.DataFrame | None,
                  as_of: pd.Timestamp | str | None = None, *, features: FeatureParams | None = None
                  ) -> pd.DataFrame:
    """``predictions`` with ``is_fraud`` (NaN when unknown), ``label_source`` (api, snapshot or none) and
    ``label_available_at`` (when the label used arrived, NaT without one).

    Only labels that arrived by ``as_of`` (default: the latest arrival among all of them) are used; among a
    transaction's labels of one source the newest wins. ``features`` gives the default arrival rule, needed only
    when the snapshot has no ``label_available_at`` column (ValueError otherwise).
    """
    out = predictions.loc[:, PREDICTION_COLUMNS].copy()
    api = api_labels.assign(_at=_api_arrivals(api_labels)) if len(api_labels) else None
    snap = (snapshot.assign(_at=label_arrivals(snapshot, features)) if snapshot is not None and len(snapshot)
            else None)
    cutoff = _as_utc(as_of) if as_of is not None else _latest_arrival(api, snap)
    from_api, from_snapshot = (_known_by(out["transaction_id"], labels, cutoff) for labels in (api, snap))
    out["is_fraud"] = from_api["is_fraud"].combine_first(from_snapshot["is_fraud"]).astype("float64")
    out["label_source"] = np.where(from_api["is_fraud"].notna(), "api",
                                   np.where(from_snapshot["is_fraud"].notna(), "snapshot", "none"))
    out[LABEL_AVAILABLE_AT] = from_api["_at"].combine_first(from_snapshot["_at"])
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


def _known_as_of(labelled: pd.DataFrame, as_of: pd.Timestamp | str | None
                 ) -> tuple[pd.DataFrame, pd.Timestamp | None]:
    """``labelled`` with the labels that arrived after ``as_of`` unknown again (NaN, source ``none``), and the
    time used (default: the latest ``label_available_at``; a frame without the column keeps every label)."""
    if LABEL_AVAILABLE_AT not in labelled.columns:
        return labelled, None if as_of is None else _as_utc(as_of)
    arrival = pd.to_datetime(labelled[LABEL_AVAILABLE_AT], utc=True)
    cutoff = _as_utc(as_of) if as_of is not None else (arrival.max() if arrival.notna().any() else None)
    if cutoff is None:
        return labelled, None
    late = (arrival > cutoff).to_numpy()
    if not late.any():
        return labelled, cutoff
    out = labelled.copy()
    out.loc[late, "is_fraud"] = np.nan
    out.loc[late, "label_source"] = "none"
    out.loc[late, LABEL_AVAILABLE_AT] = pd.NaT
    return out, cutoff


def live_performance(labelled: pd.DataFrame, as_of: pd.Timestamp | str | None = None) -> dict[str, Any]:
    """Precision, recall and AUPRC of the served decisions, overall and per model version, from the labels that had
    arrived by ``as_of`` (default: the latest arrival in ``labelled``; ``labels_as_of`` in the result, ISO 8601)."""
    known, cutoff = _known_as_of(labelled, as_of)
    versions = {str(v): _metrics(part) for v, part in known.groupby("model_version", sort=True)}
    return {"overall": _metrics(known), "by_model_version": versions,
            "label_sources": known["label_source"].value_counts().to_dict(),
            "labels_as_of": None if cutoff is None else cutoff.isoformat()}


def _utc(labelled: pd.DataFrame) -> pd.Series:
    return pd.to_datetime(labelled["tx_datetime"], utc=True, format="ISO8601")


def weekly_performance(labelled: pd.DataFrame, as_of: pd.Timestamp | str | None = None) -> list[dict[str, Any]]:
    """:func:`live_performance`'s metrics per ISO week (starting Monday, UTC) and model version, oldest first, from
    the labels arrived by ``as_of`` (the same default); each row names its ``week`` (the Monday, ``YYYY-MM-DD``)
    and ``model_version``."""
    if labelled.empty:
        return []
    labelled = _known_as_of(labelled, as_of)[0]
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
