"""Evaluation on the holdout month: ranking quality, the alert threshold and the investigators' view."""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

from fraud_assets.params import EvaluateParams


def choose_threshold(y: np.ndarray, scores: np.ndarray, precision_target: float) -> float:
    """Lowest score threshold whose precision reaches the target (the highest-precision one if none does)."""
    precision, _, thresholds = precision_recall_curve(y, scores)
    ok = np.flatnonzero(precision[:-1] >= precision_target)
    if len(ok):
        return float(thresholds[ok[0]])
    return float(thresholds[int(np.argmax(precision[:-1]))])


def card_precision_at_k(frame: pd.DataFrame, scores: np.ndarray, k: int) -> float:
    """Mean over days of: among the ``k`` cards scored highest that day, the share with a fraud that day."""
    daily = pd.DataFrame(
        {
            "day": pd.to_datetime(frame["tx_datetime"], utc=True).dt.floor("D"),
            "card": frame["customer_id"].to_numpy(),
            "score": scores,
            "fraud": frame["is_fraud"].to_numpy(),
        }
    ).groupby(["day", "card"], sort=False).agg(score=("score", "max"), fraud=("fraud", "max"))
    top = daily.sort_values("score", ascending=False).groupby(level="day").head(k)
    per_day = top.groupby(level="day")["fraud"].mean()
    return float(per_day.mean()) if len(per_day) else 0.0


def evaluate_scores(frame: pd.DataFrame, scores: np.ndarray, threshold: float, p: EvaluateParams
                    ) -> dict[str, float]:
    """Metrics of ``scores`` against ``frame['is_fraud']`` at ``threshold``."""
    y = frame["is_fraud"].to_numpy()
    if len(np.unique(y)) < 2:
        raise ValueError("evaluation needs both fraud and legit rows")
    alert = scores >= threshold
    tp = int((alert & (y == 1)).sum())
    precision = tp / max(int(alert.sum()), 1)
    recall = tp / max(int(y.sum()), 1)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    prec_curve, rec_curve, _ = precision_recall_curve(y, scores)
    reach = rec_curve[prec_curve >= p.precision_target]
    return {
        "average_precision": float(average_precision_score(y, scores)),
        "roc_auc": float(roc_auc_score(y, scores)),
        "precision": float(precision),
        "recall": float(recall),
        "f1": float(f1),
        "recall_at_precision_target": float(reach.max()) if len(reach) else 0.0,
        "card_precision_at_k": card_precision_at_k(frame, scores, p.card_precision_k),
        "threshold": float(threshold),
        "alerts": int(alert.sum()),
        "rows": len(y),
        "fraud_rate": float(y.mean()),
    }
