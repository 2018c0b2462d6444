"""Calibrated scores: an isotonic map from booster scores to fraud probabilities, stored as a plain JSON table.

The map is fitted on the validation window (never the holdout) and travels with the model version: a table of
knots ``(score, probability)``, applied with ``np.interp`` (linear between knots, flat beyond the ends), so
serving and batch scoring read the same few numbers and no pickle is ever loaded. The knots are the centres of
the isotonic fit's plateaus (centred isotonic regression): the map is strictly increasing between the first and
last knot, so it keeps the booster's ranking there instead of tying every score of a plateau.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.isotonic import IsotonicRegression


@dataclass(frozen=True)
class Calibrator:
    """Knots of a monotone map from raw scores to probabilities (``x`` increasing, ``y`` non-decreasing)."""

    x: tuple[float, ...]
    y: tuple[float, ...]

    def apply(self, scores: np.ndarray) -> np.ndarray:
        """Calibrated probabilities of raw ``scores`` (float64)."""
        return np.interp(np.asarray(scores, dtype=np.float64), self.x, self.y)

    def to_dict(self) -> dict[str, Any]:
        """The JSON table stored with the version (tag, artifact, ``model_meta.json``)."""
        return {"method": "centred_isotonic", "x": list(self.x), "y": list(self.y)}

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Calibrator:
        """The calibrator of a stored table; ``ValueError`` when it is not a monotone table of probabilities."""
        try:
            x, y = tuple(float(v) for v in raw["x"]), tuple(float(v) for v in raw["y"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"malformed calibrator table ({type(exc).__name__}: {exc})") from exc
        if not x or len(x) != len(y) or np.any(np.diff(x) <= 0) or np.any(np.diff(y) < 0) \
                or min(y) < 0 or max(y) > 1:
            raise ValueError("calibrator table must have increasing x and non-decreasing y in [0, 1], of one length")
        return cls(x, y)


def fit_calibrator(y: np.ndarray, scores: np.ndarray) -> Calibrator:
    """Centred isotonic regression of labels ``y`` on ``scores`` (the validation window's)."""
    labels, raw = np.asarray(y, dtype=np.float64), np.asarray(scores, dtype=np.float64)
    if len(np.unique(labels)) < 2:
        raise ValueError("a calibrator needs both fraud and legit rows")
    iso = IsotonicRegression(out_of_bounds="clip", y_min=0.0, y_max=1.0).fit(raw, labels)
    order = np.argsort(raw, kind="stable")
    fitted, sorted_scores = iso.predict(raw[order]), raw[order]
    cuts = np.flatnonzero(np.diff(fitted) != 0) + 1
    x = np.array([part.mean() for part in np.split(sorted_scores, cuts)])
    knots_y = fitted[np.r_[0, cuts]]
    if len(x) == 1:  # one plateau: a constant map
        return Calibrator((float(x[0]),), (float(knots_y[0]),))
    return Calibrator(tuple(map(float, x)), tuple(map(float, knots_y)))


def expected_calibration_error(y: np.ndarray, probabilities: np.ndarray, bins: int) -> float:
    """ECE over ``bins`` equal-count bins (rows sorted by probability): sum of share x |mean p - fraud rate|."""
    p = np.asarray(probabilities, dtype=np.float64)
    labels = np.asarray(y, dtype=np.float64)
    parts = np.array_split(np.argsort(p, kind="stable"), bins)
    return float(sum(len(i) / len(p) * abs(p[i].mean() - labels[i].mean()) for i in parts if len(i)))


def brier_score(y: np.ndarray, probabilities: np.ndarray) -> float:
    """Mean squared difference between probability and label."""
    return float(np.mean((np.asarray(probabilities, dtype=np.float64) - np.asarray(y, dtype=np.float64)) ** 2))
