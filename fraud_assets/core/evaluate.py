"""Evaluation on the holdout month: ranking quality, the alert threshold and the investigators' view."""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

from fraud_assets.core.calibrate import brier_score, expected_calibration_error
from fraud_assets.params import EvaluateParams


def threshold_for_precision(y: np.ndarray, scores: np.ndarray, precision_target: float) -> float:
    """Lowest score threshold whose precision reaches the target (the highest-precision one if none does)."""
    precision, _, thresholds = precision_recall_curve(y, scores)
    ok = np.flatnonzero(precision[:-1] >= precision_target)
    if len(ok):
        return float(thresholds[ok[0]])
    return float(thresholds[int(np.argmax(precision[:-1]))])


def threshold_for_budget(scores: np.ndarray, days: int, alerts_per_day: float) -> float:
    """Lowest threshold that raises at most ``alerts_per_day`` alerts a day on average over ``days`` days."""
    budget = int(np.floor(alerts_per_day * max(days, 1)))
    ranked = np.sort(np.asarray(scores, dtype=np.float64))[::-1]
    if budget <= 0:
        return float(np.nextafter(ranked[0], np.inf))
    if budget >= len(ranked):
        return float(ranked[-1])
    # Ties at the cut would exceed the budget: step just above the first score left out.
    return float(np.nextafter(ranked[budget], np.inf))


def threshold_for_cost(y: np.ndarray, scores: np.ndarray, cost_missed_fraud: float, cost_review: float) -> float:
    """The threshold minimising ``missed frauds x cost_missed_fraud + alerts x cost_review``."""
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    s, labels = np.asarray(scores, dtype=np.float64)[order], np.asarray(y)[order]
    last_of_tie = np.r_[s[1:] != s[:-1], True]  # cut only between distinct scores
    alerts = np.arange(1, len(s) + 1)[last_of_tie]
    caught = np.cumsum(labels)[last_of_tie]
    cost = (labels.sum() - caught) * cost_missed_fraud + alerts * cost_review
    no_alert_cost = labels.sum() * cost_missed_fraud
    best = int(np.argmin(cost))
    if cost[best] >= no_alert_cost:
        return float(np.nextafter(s[0], np.inf))
    return float(s[last_of_tie][best])


def choose_threshold(y: np.ndarray, scores: np.ndarray, p: EvaluateParams, days: int = 1) -> float:
    """The alert threshold by the rule ``p.threshold_rule``, chosen on validation data (never the holdout)."""
    if p.threshold_rule == "precision_target":
        return threshold_for_precision(y, scores, p.precision_target)
    if p.threshold_rule == "alert_budget":
        return threshold_for_budget(scores, days, p.alerts_per_day)
    return threshold_for_cost(y, scores, p.cost_missed_fraud, p.cost_review)


def choose_threshold_on(valid: pd.DataFrame, scores: np.ndarray, p: EvaluateParams) -> float:
    """The alert threshold by ``p.threshold_rule`` on a validation frame (its days count for the alert budget)."""
    days = int(pd.to_datetime(valid["tx_datetime"], utc=True).dt.floor("D").nunique())
    return choose_threshold(valid["is_fraud"].to_numpy(), scores, p, days=days)


def daily_k(frame: pd.DataFrame, k_per_1000_daily: float) -> pd.Series:
    """Cards an investigation team reviews each day: ``k_per_1000_daily`` per 1,000 of the day's transactions (at
    least one), so k follows the volume (8 on a simulated day of 800, 100 on an import of 10,000 a day)."""
    days = pd.to_datetime(frame["tx_datetime"], utc=True).dt.floor("D")
    volume = days.value_counts().sort_index()
    return np.maximum(1, np.round(volume * k_per_1000_daily / 1000)).astype(int)


def card_precision_at_k(frame: pd.DataFrame, scores: np.ndarray, k: int | pd.Series) -> float:
    """Mean over days of: among the ``k`` cards scored highest that day (``k`` one number or one per day, as
    :func:`daily_k` gives), the share with a fraud that day."""
    daily = pd.DataFrame(
        {
            "day": pd.to_datetime(frame["tx_datetime"], utc=True).dt.floor("D"),
            "card": frame["customer_id"].to_numpy(),
            "score": scores,
            "fraud": frame["is_fraud"].to_numpy(),
        }
    ).groupby(["day", "card"], sort=False).agg(score=("score", "max"), fraud=("fraud", "max"))
    ranked = daily.sort_values("score", ascending=False)
    rank = ranked.groupby(level="day").cumcount().to_numpy()
    days = ranked.index.get_level_values("day")
    limit = np.full(len(ranked), k) if isinstance(k, int) else k.reindex(days).to_numpy()
    per_day = ranked[rank < limit].groupby(level="day")["fraud"].mean()
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
    k = daily_k(frame, p.k_per_1000_daily)
    return {
        "average_precision": float(average_precision_score(y, scores)),
        "roc_auc": float(roc_auc_score(y, scores)),
        "precision": float(precision),
        "recall": float(recall),
        "f1": float(f1),
        "recall_at_precision_target": float(reach.max()) if len(reach) else 0.0,
        "card_precision_at_k": card_precision_at_k(frame, scores, k),
        "card_precision_k": float(k.mean()),
        "ece": expected_calibration_error(y, scores, p.calibration_bins),
        "brier": brier_score(y, scores),
        **money_metrics(frame, alert, p),
        "threshold": float(threshold),
        "alerts": int(alert.sum()),
        "rows": len(y),
        "fraud_rate": float(y.mean()),
    }


def money_metrics(frame: pd.DataFrame, alert: np.ndarray, p: EvaluateParams) -> dict[str, float]:
    """What the alerts are worth over ``frame`` (the holdout month): the fraud amount they stop, its share of all
    fraud amount, and net savings = fraud amount stopped - ``cost_review`` x alerts."""
    fraud = frame["is_fraud"].to_numpy() == 1
    amount = frame["amount"].to_numpy(np.float64)
    stopped = float(amount[fraud & alert].sum())
    total = float(amount[fraud].sum())
    return {"fraud_amount": total, "fraud_amount_stopped": stopped,
            "amount_recall": stopped / total if total > 0 else 0.0,
            "net_savings": stopped - p.cost_review * float(alert.sum())}


def recall_by_scenario(scenario: np.ndarray, alert: np.ndarray) -> dict[str, float]:
    """Recall at the threshold per fraud scenario (simulated data names it; ``legit`` rows are skipped)."""
    names = sorted({str(s) for s in scenario} - {"legit"})
    return {f"recall_{name}": float(alert[scenario == name].mean()) for name in names}


ORACLE = "fraud_probability"
SCENARIO = "fraud_scenario"


def oracle_average_precision(transactions: pd.DataFrame) -> float | None:
    """AUPRC of the simulator's own ``fraud_probability`` on these rows (None on data without the oracle)."""
    if ORACLE not in transactions.columns or transactions["is_fraud"].nunique() < 2:
        return None
    return float(average_precision_score(transactions["is_fraud"].to_numpy(), transactions[ORACLE].to_numpy()))


def compare_on_holdout(holdout: pd.DataFrame, scored: dict[str, tuple[np.ndarray, float]], p: EvaluateParams
                       ) -> dict[str, dict[str, float]]:
    """Metrics of several scorers on the same holdout rows: ``{name: metrics}`` from ``{name: (scores, threshold)}``."""
    return {name: evaluate_scores(holdout, scores, threshold, p) for name, (scores, threshold) in scored.items()}
