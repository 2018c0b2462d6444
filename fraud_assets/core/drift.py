"""Drift of a month against the training reference: per-feature PSI and KS, score drift, fraud-rate change.

PSI (population stability index) bins the reference by its own quantiles and compares the share of
rows per bin; the usual reading is < 0.1 stable, 0.1-0.2 moderate, > 0.2 significant. KS is the
two-sample Kolmogorov-Smirnov statistic (the largest gap between the two empirical CDFs); with
hundreds of thousands of rows its p-value is always tiny, so the statistic itself is thresholded.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import ks_2samp

from fraud_assets.params import MonitorParams

EPS = 1e-6  # floor on a bin's share so an empty bin gives a large but finite PSI


def psi(reference: np.ndarray, current: np.ndarray, bins: int) -> float:
    """Population stability index of ``current`` against ``reference`` on the reference's quantile bins."""
    ref = np.asarray(reference, dtype=np.float64)
    cur = np.asarray(current, dtype=np.float64)
    ref, cur = ref[np.isfinite(ref)], cur[np.isfinite(cur)]
    if len(ref) == 0 or len(cur) == 0:
        raise ValueError("PSI needs finite values on both sides")
    # Bin i holds values in (edge[i-1], edge[i]]: a discrete feature (a flag, a count) keeps each value apart.
    edges = np.unique(np.quantile(ref, np.linspace(0, 1, bins + 1)[1:-1]))
    ref_share = np.bincount(np.searchsorted(edges, ref, side="left"), minlength=len(edges) + 1) / len(ref)
    cur_share = np.bincount(np.searchsorted(edges, cur, side="left"), minlength=len(edges) + 1) / len(cur)
    ref_share, cur_share = np.maximum(ref_share, EPS), np.maximum(cur_share, EPS)
    return float(np.sum((cur_share - ref_share) * np.log(cur_share / ref_share)))


def ks_statistic(reference: np.ndarray, current: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov statistic (0 = same distribution, 1 = disjoint)."""
    return float(ks_2samp(reference, current, method="asymp").statistic)


def feature_drift(reference: pd.DataFrame, current: pd.DataFrame, columns: Sequence[str], p: MonitorParams
                  ) -> pd.DataFrame:
    """One row per feature: PSI, KS statistic and whether either crosses its threshold; worst first."""
    rows = []
    for col in columns:
        ref, cur = reference[col].to_numpy(np.float64), current[col].to_numpy(np.float64)
        value_psi, value_ks = psi(ref, cur, p.psi_bins), ks_statistic(ref, cur)
        rows.append({"feature": col, "psi": value_psi, "ks": value_ks,
                     "reference_mean": float(np.nanmean(ref)), "current_mean": float(np.nanmean(cur)),
                     "drifted": value_psi > p.psi_threshold or value_ks > p.ks_threshold})
    return pd.DataFrame(rows).sort_values("psi", ascending=False, kind="stable").reset_index(drop=True)


def drift_report(reference: pd.DataFrame, current: pd.DataFrame, columns: Sequence[str], p: MonitorParams,
                 reference_scores: np.ndarray | None = None, current_scores: np.ndarray | None = None
                 ) -> dict[str, Any]:
    """Feature drift, score drift (when the champion's scores are given) and the fraud-rate change.

    ``drift_detected`` is True when at least ``p.min_drifted_features`` features drift, when the score
    PSI crosses ``p.score_psi_threshold``, or when the fraud rate moves by more than
    ``p.fraud_rate_change_threshold`` (relative).
    """
    features = feature_drift(reference, current, columns, p)
    ref_rate, cur_rate = float(reference["is_fraud"].mean()), float(current["is_fraud"].mean())
    rate_change = (cur_rate - ref_rate) / ref_rate if ref_rate > 0 else float("inf") if cur_rate > 0 else 0.0
    score_psi = None
    if reference_scores is not None and current_scores is not None:
        score_psi = psi(reference_scores, current_scores, p.psi_bins)
    reasons = []
    drifted = features.loc[features["drifted"], "feature"].tolist()
    if len(drifted) >= p.min_drifted_features:
        reasons.append(f"{len(drifted)} features drifted: {', '.join(drifted)}")
    if score_psi is not None and score_psi > p.score_psi_threshold:
        reasons.append(f"score PSI {score_psi:.3f} > {p.score_psi_threshold}")
    if abs(rate_change) > p.fraud_rate_change_threshold:
        reasons.append(f"fraud rate {ref_rate:.4%} -> {cur_rate:.4%} ({rate_change:+.0%})")
    return {
        "drift_detected": bool(reasons),
        "reasons": reasons,
        "drifted_features": drifted,
        "features": features.to_dict("records"),
        "score_psi": score_psi,
        "fraud_rate_reference": ref_rate,
        "fraud_rate_current": cur_rate,
        "fraud_rate_change": rate_change,
        "rows_reference": len(reference),
        "rows_current": len(current),
    }
