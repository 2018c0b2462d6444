"""The engines batch work runs on: ``local`` (this process) and ``ray`` (Ray Data features by key, Ray Train
XGBoost), chosen by ``compute.engine`` in params.yaml.

An engine builds a month's batch features with the contract of :func:`fraud_assets.core.features.build_features`
and fits boosters with that of :func:`fraud_assets.core.train.fit_booster`: the core code (the feature definitions,
the split, calibration, thresholds, evaluation) is the same on both, only where it runs changes. This floor and
serving are the only places that import ray, and only inside :func:`open_engine` (nothing at import time).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol

import pandas as pd

from fraud_assets.core.features import BatchBuild, build_features
from fraud_assets.core.train import BoosterFit, fit_booster
from fraud_assets.params import ComputeParams, FeatureParams


class Engine(Protocol):
    """Where features and boosters are computed."""

    name: str
    features: BatchBuild  # one month's batch features, with its history
    fit: BoosterFit  # one booster


class LocalEngine:
    """This process: the core functions called directly."""

    name = "local"

    def features(self, transactions: pd.DataFrame, p: FeatureParams, history: pd.DataFrame | None = None
                 ) -> pd.DataFrame:
        return build_features(transactions, p, history)

    fit = staticmethod(fit_booster)


LOCAL = LocalEngine()


@contextmanager
def open_engine(c: ComputeParams) -> Iterator[Engine]:
    """The engine ``c`` names, ready: for ``ray``, connected to ``c.address`` (or a local Ray it starts and stops)."""
    if c.engine == "local":
        yield LOCAL
        return
    from fraud_assets.compute.on_ray import connect

    with connect(c) as engine:
        yield engine
