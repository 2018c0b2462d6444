"""Evaluation plots as PNG bytes: precision-recall, score distribution, feature importance, calibration.

Pure functions over arrays. They draw on a bare :class:`matplotlib.figure.Figure` with the Agg canvas, so
no pyplot global state and no GUI backend is touched; MLflow and the Dagster UI both show the same bytes.
"""

from __future__ import annotations

import io
from collections.abc import Mapping

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn.metrics import average_precision_score, precision_recall_curve

SIZE = (5.0, 3.6)
DPI = 90


def _png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()


def precision_recall_png(y: np.ndarray, scores: Mapping[str, np.ndarray]) -> bytes:
    """Precision-recall curves of several scorers on the same rows, with their AUPRC in the legend."""
    fig = Figure(figsize=SIZE)
    ax = fig.add_subplot()
    for name, s in scores.items():
        precision, recall, _ = precision_recall_curve(y, s)
        ax.step(recall, precision, where="post", label=f"{name} (AUPRC {average_precision_score(y, s):.3f})")
    ax.axhline(float(np.mean(y)), color="grey", linestyle=":", label=f"base rate {np.mean(y):.4f}")
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02), title="Precision-recall, holdout")
    ax.legend(fontsize=7, loc="upper right")
    return _png(fig)


def score_distribution_png(y: np.ndarray, scores: np.ndarray, threshold: float) -> bytes:
    """Histograms of the score for legit and fraud rows (densities, log scale), with the alert threshold."""
    fig = Figure(figsize=SIZE)
    ax = fig.add_subplot()
    bins = np.linspace(0.0, 1.0, 41)
    for label, name, color in ((0, "legit", "tab:blue"), (1, "fraud", "tab:red")):
        part = scores[y == label]
        if len(part):
            ax.hist(part, bins=bins, density=True, alpha=0.55, color=color, label=f"{name} ({len(part)})")
    ax.axvline(threshold, color="black", linestyle="--", label=f"threshold {threshold:.3f}")
    ax.set(xlabel="fraud probability", ylabel="density", yscale="log", title="Score distribution by class")
    ax.legend(fontsize=7)
    return _png(fig)


def feature_importance_png(importance: Mapping[str, float], title: str = "Feature importance (gain)") -> bytes:
    """Horizontal bars of feature importance, largest on top."""
    items = sorted(importance.items(), key=lambda kv: kv[1])
    fig = Figure(figsize=(SIZE[0], max(2.5, 0.22 * len(items) + 1)))
    ax = fig.add_subplot()
    ax.barh([k for k, _ in items], [v for _, v in items], color="tab:green")
    ax.set(xlabel="gain", title=title)
    ax.tick_params(axis="y", labelsize=7)
    return _png(fig)


def calibration_table(y: np.ndarray, scores: np.ndarray, bins: int) -> list[dict[str, float]]:
    """Reliability diagram data: per score bin, mean predicted probability, observed fraud rate, count."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(scores, edges[1:-1]), 0, bins - 1)
    rows = []
    for b in range(bins):
        mask = which == b
        if mask.any():
            rows.append({"bin_low": float(edges[b]), "bin_high": float(edges[b + 1]), "rows": int(mask.sum()),
                         "mean_score": float(scores[mask].mean()), "fraud_rate": float(y[mask].mean())})
    return rows


def calibration_png(y: np.ndarray, scores: np.ndarray, bins: int) -> bytes:
    """Reliability diagram: observed fraud rate against mean predicted probability per bin."""
    table = calibration_table(y, scores, bins)
    fig = Figure(figsize=SIZE)
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfectly calibrated")
    ax.plot([r["mean_score"] for r in table], [r["fraud_rate"] for r in table], marker="o", label="model")
    ax.set(xlabel="mean predicted probability", ylabel="observed fraud rate", xlim=(0, 1), ylim=(0, 1),
           title="Reliability on the holdout month")
    ax.legend(fontsize=7)
    return _png(fig)


def evaluation_plots(y: np.ndarray, scores: Mapping[str, np.ndarray], primary: str, threshold: float,
                     importance: Mapping[str, float], bins: int) -> dict[str, bytes]:
    """The four evaluation plots of the ``primary`` scorer (PR curves of every scorer), keyed by file name."""
    return {
        "precision_recall.png": precision_recall_png(y, scores),
        "score_distribution.png": score_distribution_png(y, scores[primary], threshold),
        "feature_importance.png": feature_importance_png(importance),
        "calibration.png": calibration_png(y, scores[primary], bins),
    }


def drift_png(features: list[Mapping[str, object]], threshold: float, title: str) -> bytes:
    """Horizontal bars of each feature's PSI against the threshold, drifted features in red."""
    items = sorted(features, key=lambda r: float(r["psi"]))  # type: ignore[arg-type]
    fig = Figure(figsize=(SIZE[0], max(2.5, 0.22 * len(items) + 1)))
    ax = fig.add_subplot()
    colors = ["tab:red" if r["drifted"] else "tab:blue" for r in items]
    ax.barh([str(r["feature"]) for r in items], [float(r["psi"]) for r in items], color=colors)  # type: ignore[arg-type]
    ax.axvline(threshold, color="black", linestyle="--", label=f"PSI threshold {threshold}")
    ax.set(xlabel="PSI", title=title)
    ax.tick_params(axis="y", labelsize=7)
    ax.legend(fontsize=7)
    return _png(fig)
