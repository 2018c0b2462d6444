"""Shadow evidence: the champion and the challenger scored the same live transactions (serving's shadow scoring);
once labels arrive, a paired bootstrap of the AUPRC difference says whether the challenger ranks frauds better.

Paired: every resample draws transactions with replacement and scores *both* models on the same draw, so the
variation the two share (which frauds happened to occur) cancels out of the difference. The bootstrap is vectorized:
each model's scores are sorted once, a block of resamples becomes a matrix of draw counts, and the average precision
of every resample is read off cumulative sums at the score ties' boundaries, as :func:`sklearn.metrics.
average_precision_score` computes it with those counts as sample weights. 20,000 pairs x 1,000 resamples take a few
seconds on one core.

Only transactions whose label had arrived by ``as_of`` (``label_available_at``) count; unlabelled ones are left out,
never assumed legit.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any, Literal

import numpy as np
import pandas as pd

from fraud_assets.params import PromoteParams

Verdict = Literal["not enough evidence", "better", "worse", "no difference"]
CONFIDENCE = 0.95  # of the interval the verdict reads (the rule: better when it lies above 0, worse when below)
_BLOCK_CELLS = 4_000_000  # resamples x transactions per block: ~16 MB a matrix, whatever the number of pairs


@dataclass(frozen=True)
class ShadowComparison:
    """Champion and shadow on the same labelled transactions: AUPRC of each, the difference (shadow - champion) and
    its 95 % paired-bootstrap percentile interval (NaN when there are no frauds)."""

    n: int
    n_frauds: int
    champion_ap: float
    shadow_ap: float
    diff: float
    ci_low: float
    ci_high: float

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready mapping (asset metadata, reports)."""
        return asdict(self)


def labelled_by(pairs: pd.DataFrame, as_of: datetime | pd.Timestamp) -> pd.DataFrame:
    """The pairs (:data:`fraud_assets.adapters.prediction_log.PAIR_COLUMNS`) whose label had arrived
    (``label_available_at``) at or before ``as_of``, a timezone-aware time."""
    when = pd.Timestamp(as_of)
    if when.tzinfo is None:
        raise ValueError(f"as_of must be timezone-aware (labels are timed in UTC), got {as_of!r}")
    known = pairs["is_fraud"].notna() & (pairs["label_available_at"] <= when)
    return pairs.loc[known].reset_index(drop=True)


def paired_bootstrap(is_fraud: Any, champion: Any, shadow: Any, n_boot: int, seed: int) -> ShadowComparison:
    """AUPRC of ``champion`` and ``shadow`` scores of the same transactions (labels ``is_fraud``, 0/1) and the paired
    bootstrap of their difference over ``n_boot`` resamples drawn with ``seed``."""
    y, scores = _checked(is_fraud, champion, shadow, n_boot)
    n, frauds = len(y), int(y.sum())
    if frauds == 0:
        return ShadowComparison(n, 0, *([float("nan")] * 5))
    sorted_models = [_sorted_model(y, s) for s in scores]
    ones = np.ones((1, n), dtype=np.int32)
    champion_ap, shadow_ap = (float(_average_precision(ones, m)[0]) for m in sorted_models)
    rng = np.random.default_rng(seed)
    block = max(1, min(n_boot, _BLOCK_CELLS // n))
    diffs = np.empty(n_boot)
    for start in range(0, n_boot, block):
        b = min(block, n_boot - start)
        counts = _draw_counts(rng, b, n)
        diffs[start:start + b] = _average_precision(counts, sorted_models[1]) - _average_precision(counts,
                                                                                                   sorted_models[0])
    tail = 100 * (1 - CONFIDENCE) / 2
    low, high = np.nanpercentile(diffs, [tail, 100 - tail])  # a resample without a fraud has no AUPRC: left out
    return ShadowComparison(n, frauds, champion_ap, shadow_ap, shadow_ap - champion_ap, float(low), float(high))


def compare_shadow(pairs: pd.DataFrame, as_of: datetime | pd.Timestamp, n_boot: int, seed: int) -> ShadowComparison:
    """:func:`paired_bootstrap` over the pairs labelled by ``as_of`` (``champion_score``, ``shadow_score``)."""
    known = labelled_by(pairs, as_of)
    return paired_bootstrap(known["is_fraud"], known["champion_score"], known["shadow_score"], n_boot, seed)


def recommend(comparison: ShadowComparison, min_frauds: int) -> Verdict:
    """What the live evidence says: "not enough evidence" below ``min_frauds`` labelled frauds (the offline holdout
    decides, as without a shadow); else "better" when the interval lies above 0, "worse" below it, "no difference"."""
    if comparison.n_frauds < min_frauds:
        return "not enough evidence"
    if comparison.ci_low > 0:
        return "better"
    if comparison.ci_high < 0:
        return "worse"
    return "no difference"


def shadow_evidence(pairs: pd.DataFrame, as_of: datetime | pd.Timestamp, p: PromoteParams
                    ) -> tuple[ShadowComparison, Verdict]:
    """The comparison and its verdict with ``promote.shadow_*``."""
    comparison = compare_shadow(pairs, as_of, p.shadow_bootstrap, p.shadow_seed)
    return comparison, recommend(comparison, p.shadow_min_frauds)


@dataclass(frozen=True)
class _SortedModel:
    """One model's scores sorted once: the order, the labels in that order and the last index of each tie."""

    order: np.ndarray
    y: np.ndarray
    ends: np.ndarray


def _checked(is_fraud: Any, champion: Any, shadow: Any, n_boot: int) -> tuple[np.ndarray, list[np.ndarray]]:
    y = np.asarray(is_fraud, dtype=float)
    scores = [np.asarray(champion, dtype=float), np.asarray(shadow, dtype=float)]
    if y.ndim != 1 or any(s.shape != y.shape for s in scores):
        raise ValueError(f"is_fraud, champion and shadow must be 1-D of one length, got shapes {y.shape}, "
                         f"{scores[0].shape}, {scores[1].shape}")
    if not np.isin(y, (0.0, 1.0)).all():
        raise ValueError("is_fraud must be 0 or 1 for every pair (drop unlabelled pairs first: labelled_by)")
    if not all(np.isfinite(s).all() for s in scores):
        raise ValueError("champion and shadow scores must be finite")
    if n_boot < 1:
        raise ValueError(f"n_boot must be at least 1, got {n_boot}")
    return y.astype(np.int32), scores


def _sorted_model(y: np.ndarray, score: np.ndarray) -> _SortedModel:
    order = np.argsort(-score, kind="stable")
    ranked = score[order]
    ends = np.flatnonzero(np.r_[ranked[1:] != ranked[:-1], True])  # a threshold at every distinct score
    return _SortedModel(order, y[order], ends)


def _draw_counts(rng: np.random.Generator, b: int, n: int) -> np.ndarray:
    """How often each of ``n`` transactions is drawn in each of ``b`` resamples of size ``n`` (``b x n``)."""
    draws = rng.integers(0, n, size=(b, n)) + (np.arange(b) * n)[:, None]
    return np.bincount(draws.ravel(), minlength=b * n).reshape(b, n).astype(np.int32)


def _average_precision(counts: np.ndarray, m: _SortedModel) -> np.ndarray:
    """The AUPRC of each row of ``counts`` (a resample's weights): sum over thresholds of the recall gained times the
    precision there; NaN for a resample without a fraud."""
    w = counts[:, m.order]
    tp = np.cumsum(w * m.y, axis=1, dtype=np.int64)[:, m.ends]
    taken = np.cumsum(w, axis=1, dtype=np.int64)[:, m.ends]
    precision = np.divide(tp, taken, out=np.zeros(tp.shape), where=taken > 0)
    gained = np.diff(tp, axis=1, prepend=0)
    positives = tp[:, -1].astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(positives > 0, (gained * precision).sum(axis=1) / positives, np.nan)
