"""Pure scoring: a registry version plus a feature provider turns transactions into decisions with reasons.

No Ray, no HTTP and no registry access here: the deployment in ``serving.app`` loads a
:class:`~fraud_assets.adapters.mlflow_registry.LoadedModel` and merely holds a :class:`Predictor`, so the same
class scores in tests, scripts and replicas alike.

Features come from an injectable provider, ``features(transactions) -> DataFrame`` (key columns plus the
model's feature columns): the service passes :class:`fraud_assets.adapters.online_store.OnlineFeatures` (the
customer's and terminal's past from the online store); without one, :func:`fraud_assets.core.features.online_features`
describes the transactions with no stored past (as first-ever transactions), which scripts and tests use. Either
way the features are built with the version's own knobs (``LoadedModel.features``), never today's
``params.yaml``: a provider built with other knobs is refused.

Scores are calibrated probabilities: the version's calibrator table (fitted on its validation window, the
``calibrator`` tag) maps the booster's score with ``np.interp``, as batch scoring does
(:func:`fraud_assets.core.train.predict_calibrated`), and the threshold is on that scale. A version from before
calibration still serves its raw scores, flagged by :attr:`Predictor.calibrated` (and a warning at load).

Reasons are per-row feature contributions in log-odds from XGBoost (``pred_contribs=True``) with
``approx_contribs=True`` (Saabas attribution): exact TreeSHAP costs about 0.5 ms a row on a 300-tree model,
which would cap the batch endpoint near 2,000 rows/s; the approximation costs about 10 µs a row, but a call costs
about 0.75 ms for a single row on a 500-tree model (a DMatrix, a second pass over the trees), as much as the
probability and a third of a lone request. So ``reasons="alerts"`` (the service's default, ``serve.reasons``)
explains the alerted rows only, the ones an analyst reads; the others answer with no reasons, and the prediction
log keeps every row's features to explain any of them later. ``reasons="all"`` explains every row.

Shadow scoring (``serve.shadow``): a second :class:`Predictor` (the challenger) rescores the feature matrix the
champion answered with (:attr:`Scored.features`) when both versions build their features with the same definition
(:meth:`Predictor.shadow_positions`); its scores never reach the answer.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal

import numpy as np
import pandas as pd
import xgboost as xgb

from fraud_assets.adapters.mlflow_registry import LoadedModel
from fraud_assets.core.contract import WARMUP_TRANSACTION, FeatureDefinition, check_probability
from fraud_assets.core.features import FEATURE_COLUMNS, feature_matrix, online_features
from fraud_assets.params import FeatureParams

__all__ = ["WARMUP_TRANSACTION", "FeatureProvider", "Predictor", "Scored", "default_feature_provider"]

FeatureProvider = Callable[[Sequence[Mapping[str, Any]]], pd.DataFrame]
N_REASONS = 3


@dataclass(frozen=True)
class Scored:
    """Decisions for a list of transactions, plus the feature matrix they were scored on (for the log)."""

    decisions: list[dict[str, Any]]
    features: np.ndarray
    feature_names: list[str]
    degraded: bool = False  # the store could not be read: features of the transactions alone


def default_feature_provider(features: FeatureParams) -> FeatureProvider:
    """Online features with no stored past (the same code as batch mode)."""
    return partial(online_features, p=features)


class Predictor:
    """A loaded model version and the feature provider it scores with (built with the version's own knobs)."""

    def __init__(self, model: LoadedModel, feature_provider: FeatureProvider | None = None,
                 reasons: Literal["all", "alerts"] = "all") -> None:
        if not 0.0 <= model.threshold <= 1.0:
            raise ValueError(f"model version {model.version}: threshold {model.threshold} is outside [0, 1]")
        knobs = model.features.params
        provided = getattr(feature_provider, "p", knobs)  # the online store's provider says which knobs it uses
        if provided != knobs:
            raise ValueError(f"model version {model.version} was trained with feature params {knobs.model_dump()}; "
                             f"the feature provider builds with {provided.model_dump()}")
        self._model = model
        self._explain_all = reasons == "all"
        self._provide = feature_provider or default_feature_provider(knobs)
        self._columns = list(model.booster.feature_names or FEATURE_COLUMNS)
        # A provider with a ``matrix`` method (the online store's) skips the pandas frame: its columns come in
        # FEATURE_COLUMNS order and are picked by position for this model.
        known = set(self._columns) <= set(FEATURE_COLUMNS)
        self._provide_matrix = getattr(feature_provider, "matrix_with_status", None) if known else None
        self._positions = [FEATURE_COLUMNS.index(c) for c in self._columns] if known else []
        best = model.booster.attr("best_iteration")
        self._range = (0, int(best) + 1) if best is not None else (0, 0)

    @property
    def version(self) -> str:
        """The registry version that scores."""
        return self._model.version

    @property
    def threshold(self) -> float:
        """The alert threshold carried by the version's ``threshold`` tag."""
        return self._model.threshold

    @property
    def calibrated(self) -> bool:
        """Whether the probabilities are calibrated (False: a version without a calibrator, raw scores)."""
        return self._model.calibrated

    @property
    def booster(self) -> xgb.Booster:
        """The XGBoost booster of this version."""
        return self._model.booster

    @property
    def feature_definition(self) -> FeatureDefinition:
        """How this version's features are built (its ``feature_definition`` tag)."""
        return self._model.features

    @property
    def columns(self) -> list[str]:
        """The feature columns of this version's matrix, in order."""
        return list(self._columns)

    def shadow_positions(self, champion: Predictor) -> list[int] | None:
        """Where this version's columns are in ``champion``'s feature matrix, when both versions build features
        with the same definition (the champion's matrix is then this version's too, picked by position); None when
        the definitions differ or a column of this version is not in the champion's matrix."""
        if self._model.features != champion.feature_definition:
            return None
        names = champion.columns
        if not set(self._columns) <= set(names):
            return None
        return [names.index(c) for c in self._columns]

    def probabilities_of_matrix(self, x: np.ndarray) -> np.ndarray:
        """Fraud probabilities of a feature matrix already in this version's column order (:meth:`matrix`)."""
        if x.ndim != 2 or x.shape[1] != len(self._columns):
            raise ValueError(f"model version {self.version} scores {len(self._columns)} feature columns, the matrix "
                             f"has shape {x.shape}")
        return self._predict(x)

    def matrix(self, transactions: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """The float32 feature matrix of ``transactions`` in the model's column order."""
        return self._matrix(transactions)[0]

    def _matrix(self, transactions: Sequence[Mapping[str, Any]]) -> tuple[np.ndarray, bool]:
        """:meth:`matrix` and whether it is degraded (the provider could not read the stored past)."""
        if self._provide_matrix is not None:
            values, degraded = self._provide_matrix(transactions)
            return np.asarray(values)[:, self._positions].astype(np.float32), degraded
        return feature_matrix(self._provide(transactions), self._columns), False

    def probabilities(self, transactions: Sequence[Mapping[str, Any]]) -> list[float]:
        """Fraud probabilities for ``transactions``, in order, with one ``inplace_predict`` call."""
        if not transactions:
            return []
        return self._predict(self.matrix(transactions)).tolist()

    def score(self, transactions: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """One decision per transaction: id, probability, alert, threshold, model version and reasons."""
        return self.score_with_features(transactions).decisions

    def score_with_features(self, transactions: Sequence[Mapping[str, Any]]) -> Scored:
        """Decisions and the feature matrix behind them, in request order."""
        if not transactions:
            return Scored([], np.empty((0, len(self._columns)), dtype=np.float32), self._columns)
        x, degraded = self._matrix(transactions)
        probabilities = self._predict(x).tolist()
        threshold, version = self._model.threshold, self._model.version
        decisions = [
            {"transaction_id": str(tx["transaction_id"]), "fraud_probability": p, "alert": p >= threshold,
             "threshold": threshold, "model_version": version, "reasons": [], "degraded": degraded}
            for tx, p in zip(transactions, probabilities, strict=True)
        ]
        explained = range(len(decisions)) if self._explain_all else [i for i, d in enumerate(decisions) if d["alert"]]
        if explained:
            rows = x if self._explain_all else x[list(explained)]
            for i, r in zip(explained, self.reasons(rows), strict=True):
                decisions[i]["reasons"] = r
        return Scored(decisions, x, self._columns, degraded)

    def reasons(self, x: np.ndarray, k: int = N_REASONS) -> list[list[dict[str, Any]]]:
        """The ``k`` features with the largest absolute contribution (log-odds) for each row of ``x``."""
        matrix = xgb.DMatrix(x, feature_names=self._columns, nthread=1)  # all-core OpenMP spins on a busy box
        contribs = self._model.booster.predict(matrix, pred_contribs=True,
                                               approx_contribs=True, iteration_range=self._range)[:, :-1]
        top = np.argsort(-np.abs(contribs), axis=1, kind="stable")[:, :k]
        values = np.take_along_axis(contribs, top, axis=1).tolist()
        names = self._columns
        return [[{"feature": names[j], "contribution": v} for j, v in zip(row, vals, strict=True)]
                for row, vals in zip(top.tolist(), values, strict=True)]

    def warm_up(self) -> float:
        """Score a synthetic row and check the answer is a probability (run before serving a version)."""
        (decision,) = self.score([WARMUP_TRANSACTION])
        probability = check_probability(self.version, decision["fraud_probability"])
        if not all(np.isfinite(r["contribution"]) for r in decision["reasons"]):
            raise ValueError(f"model version {self.version}: warm-up reasons are not finite")
        return probability

    def _predict(self, x: np.ndarray) -> np.ndarray:
        raw = self._model.booster.inplace_predict(x, iteration_range=self._range)
        return self._model.calibrator.apply(raw) if self._model.calibrator is not None else raw

