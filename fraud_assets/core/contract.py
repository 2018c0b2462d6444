"""What a model version carries and must pass before it serves: its feature definition and a warm-up score.

A version is trained on features built with one set of ``params.yaml`` ``features`` knobs (label delay, burst
window, ...), the windows of :mod:`fraud_assets.windows` and the columns of
:data:`fraud_assets.core.features.FEATURE_COLUMNS`. The :class:`FeatureDefinition` records all three, so
whoever scores the version later (serving, the evaluation beside a challenger, drift) builds its features as
it was trained, whatever ``params.yaml`` says by then, and refuses a version this code cannot build.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import xgboost as xgb
from pydantic import ValidationError

from fraud_assets.core.features import FEATURE_COLUMNS, KEY_COLUMNS, LABEL, build_features, online_features
from fraud_assets.core.train import predict
from fraud_assets.params import FeatureParams
from fraud_assets.schemas import LABEL_AVAILABLE_AT
from fraud_assets.windows import CUSTOMER_WINDOWS_DAYS, TERMINAL_WINDOWS_DAYS

WARMUP_TRANSACTION: dict[str, Any] = {
    "transaction_id": "warm-up",
    "tx_datetime": "2025-01-01T12:00:00+00:00",
    "customer_id": "warm-up",
    "terminal_id": "warm-up",
    "amount": 42.0,
}
_RAW = [*KEY_COLUMNS, "amount"]


@dataclass(frozen=True)
class FeatureDefinition:
    """The feature knobs, windows and columns a model version was trained on."""

    params: FeatureParams
    customer_windows_days: tuple[int, ...]
    terminal_windows_days: tuple[int, ...]
    columns: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready mapping (the version tag and the artifact beside the model)."""
        return {"params": self.params.model_dump(mode="json"),
                "windows": {"customer_days": list(self.customer_windows_days),
                            "terminal_days": list(self.terminal_windows_days)},
                "columns": list(self.columns)}

    def to_json(self) -> str:
        """The definition as compact JSON."""
        return json.dumps(self.to_dict(), separators=(",", ":"))


def feature_definition(p: FeatureParams) -> FeatureDefinition:
    """The definition this code builds with the knobs ``p``."""
    return FeatureDefinition(p, tuple(CUSTOMER_WINDOWS_DAYS), tuple(TERMINAL_WINDOWS_DAYS), tuple(FEATURE_COLUMNS))


def parse_definition(raw: str | Mapping[str, Any]) -> FeatureDefinition:
    """A definition from its JSON (or mapping); ``ValueError`` naming what is malformed."""
    try:
        d = json.loads(raw) if isinstance(raw, str) else dict(raw)
        windows = d["windows"]
        return FeatureDefinition(FeatureParams.model_validate(d["params"]),
                                 tuple(int(w) for w in windows["customer_days"]),
                                 tuple(int(w) for w in windows["terminal_days"]),
                                 tuple(str(c) for c in d["columns"]))
    except (json.JSONDecodeError, KeyError, TypeError, ValidationError) as exc:
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ValueError(f"malformed feature definition ({type(exc).__name__}: {detail})") from exc


def unbuildable(d: FeatureDefinition) -> list[str]:
    """What of ``d`` this code cannot build (empty: it builds every column with the same windows)."""
    problems = []
    for name, wanted, built in (("customer", d.customer_windows_days, CUSTOMER_WINDOWS_DAYS),
                                ("terminal", d.terminal_windows_days, TERMINAL_WINDOWS_DAYS)):
        foreign = [w for w in wanted if w not in built]
        if foreign:
            problems.append(f"{name} windows {foreign} (this code builds {list(built)})")
    missing = [c for c in d.columns if c not in FEATURE_COLUMNS]
    if missing:
        problems.append(f"columns {missing}")
    return problems


def check_probability(version: str, probability: float) -> float:
    """``probability`` when it is one (finite, in [0, 1]); else ``ValueError`` naming the version."""
    if not (math.isfinite(probability) and 0.0 <= probability <= 1.0):
        raise ValueError(f"model version {version}: warm-up score {probability} is not a probability")
    return probability


def warm_up_probability(version: str, booster: xgb.Booster, p: FeatureParams) -> float:
    """Score :data:`WARMUP_TRANSACTION` with features built from ``p`` (no stored past); check the answer."""
    features = online_features([WARMUP_TRANSACTION], p)
    return check_probability(version, float(predict(booster, features)[0]))


def rebuild_features(p: FeatureParams, parts: Sequence[pd.DataFrame]) -> list[pd.DataFrame]:
    """Each of ``parts`` (consecutive periods, oldest first) described again with the knobs ``p``.

    A part may be transactions or feature frames (both hold the key columns, the amount and the label); each
    row's past is every row of its own and earlier parts, so the first part sees no history before it. This
    is how a version trained with other feature knobs sees the same rows. Rows keep their order and index.
    """
    frames = [part[_RAW + [c for c in (LABEL, LABEL_AVAILABLE_AT) if c in part.columns]] for part in parts]
    built = build_features(pd.concat(frames, ignore_index=True), p)
    bounds = np.cumsum([0, *(len(f) for f in frames)])
    out = []
    for part, lo, hi in zip(parts, bounds[:-1], bounds[1:], strict=True):
        piece = built.iloc[lo:hi].copy()
        piece.index = part.index
        out.append(piece)
    return out


def knob_changes(trained: FeatureParams, current: FeatureParams) -> list[str]:
    """The feature knobs whose value differs between ``trained`` and ``current`` (``name trained (now current)``)."""
    now = current.model_dump(mode="json")
    return [f"{k} {v} (now {now[k]})" for k, v in trained.model_dump(mode="json").items() if now[k] != v]


def holdout_as_trained(trained: FeatureParams, current: FeatureParams, holdout: pd.DataFrame,
                       history: Sequence[pd.DataFrame]) -> tuple[pd.DataFrame, str]:
    """The holdout's features as a version trained with ``trained`` knobs sees them, and a note saying how.

    ``holdout`` was built with the ``current`` knobs; when they differ, its rows are described again with
    ``trained`` (``history``, the months before it oldest first, as their past), so both models are judged on
    the same rows, each with its own features.
    """
    changes = knob_changes(trained, current)
    if not changes:
        return holdout, "scored on the same holdout"
    rebuilt = rebuild_features(trained, [*history, holdout])[-1]
    return rebuilt, f"scored on the same holdout with its own feature params: {', '.join(changes)}"
