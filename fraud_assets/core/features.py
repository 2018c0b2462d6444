"""Features, defined once and computed the same way in batch (training) and online (serving).

Only what is known when a transaction is scored may be used: the label and the simulator's oracle
columns are never features. Online scoring builds the same frame for one row, so both modes share
this code path exactly.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from fraud_assets.params import FeatureParams

KEY_COLUMNS = ["transaction_id", "tx_datetime", "customer_id", "terminal_id"]
FEATURE_COLUMNS = ["amount", "log_amount", "hour", "weekday", "is_night", "is_weekend"]
LABEL = "is_fraud"
NEVER_FEATURES = frozenset({LABEL, "fraud_scenario", "fraud_probability"})


def build_features(transactions: pd.DataFrame, p: FeatureParams) -> pd.DataFrame:
    """Key columns, the feature columns in ``FEATURE_COLUMNS`` order, and the label when present."""
    ts = pd.to_datetime(transactions["tx_datetime"], utc=True)
    amount = transactions["amount"].astype("float64")
    hour = ts.dt.hour
    start, end = p.night_hours
    out = transactions[KEY_COLUMNS].copy()
    out["amount"] = amount
    out["log_amount"] = np.log1p(amount)
    out["hour"] = hour.astype("float64")
    out["weekday"] = ts.dt.weekday.astype("float64")
    out["is_night"] = ((hour >= start) & (hour < end)).astype("float64")
    out["is_weekend"] = (ts.dt.weekday >= 5).astype("float64")
    if LABEL in transactions.columns:
        out[LABEL] = transactions[LABEL].astype("int8")
    return out


def online_features(transactions: Sequence[Mapping[str, Any]], p: FeatureParams) -> pd.DataFrame:
    """Features for incoming transactions (no label), through the same code as batch mode."""
    frame = pd.DataFrame.from_records(list(transactions), columns=[*KEY_COLUMNS, "amount"])
    return build_features(frame, p)


def feature_matrix(features: pd.DataFrame, columns: Sequence[str] = FEATURE_COLUMNS) -> np.ndarray:
    """The float32 matrix a model scores, in the model's own column order."""
    leaked = NEVER_FEATURES.intersection(columns)
    if leaked:
        raise ValueError(f"columns {sorted(leaked)} are never features")
    return features.loc[:, list(columns)].to_numpy(dtype=np.float32)
