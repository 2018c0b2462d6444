"""Pure scoring: a registry version plus the feature definition turns transactions into decisions.

No Ray, no HTTP and no registry access here: the deployment in ``serving.app`` loads a
:class:`~fraud_assets.registry.LoadedModel` and merely holds a :class:`Predictor`, so the same
class scores in tests, notebooks-free scripts and replicas alike.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from fraud_assets.core.features import online_features
from fraud_assets.core.train import predict
from fraud_assets.params import FeatureParams
from fraud_assets.registry import LoadedModel

WARMUP_TRANSACTION: dict[str, Any] = {
    "transaction_id": "warm-up",
    "tx_datetime": "2025-01-01T12:00:00+00:00",
    "customer_id": "warm-up",
    "terminal_id": "warm-up",
    "amount": 42.0,
}


class Predictor:
    """A loaded model version and the feature definition it was trained with."""

    def __init__(self, model: LoadedModel, features: FeatureParams) -> None:
        if not 0.0 <= model.threshold <= 1.0:
            raise ValueError(f"model version {model.version}: threshold {model.threshold} is outside [0, 1]")
        self._model = model
        self._features = features

    @property
    def version(self) -> str:
        """The registry version that scores."""
        return self._model.version

    @property
    def threshold(self) -> float:
        """The alert threshold carried by the version's ``threshold`` tag."""
        return self._model.threshold

    def probabilities(self, transactions: Sequence[Mapping[str, Any]]) -> list[float]:
        """Fraud probabilities for ``transactions``, in order, with one ``inplace_predict`` call."""
        if not transactions:
            return []
        frame = online_features(transactions, self._features)
        return [float(p) for p in predict(self._model.booster, frame)]

    def score(self, transactions: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """One decision per transaction: id, probability, alert, threshold and model version."""
        probabilities = self.probabilities(transactions)
        return [self._decision(str(tx["transaction_id"]), p) for tx, p in zip(transactions, probabilities, strict=True)]

    def warm_up(self) -> float:
        """Score a synthetic row and check the answer is a probability (run before serving a version)."""
        probability = self.probabilities([WARMUP_TRANSACTION])[0]
        if not (math.isfinite(probability) and 0.0 <= probability <= 1.0):
            raise ValueError(f"model version {self.version}: warm-up score {probability} is not a probability")
        return probability

    def _decision(self, transaction_id: str, probability: float) -> dict[str, Any]:
        return {
            "transaction_id": transaction_id,
            "fraud_probability": probability,
            "alert": probability >= self._model.threshold,
            "threshold": self._model.threshold,
            "model_version": self._model.version,
        }
