"""Ray Train fits the booster on two workers of a three-node cluster (XGBoost's collective over Ray Data shards);
calibration, threshold and saving are the same code as locally, and the model is as good on small data."""

from __future__ import annotations

from pathlib import Path

import pytest
import xgboost as xgb
from sklearn.metrics import average_precision_score

from fraud_assets.compute import LOCAL, open_engine
from fraud_assets.core.features import FEATURE_COLUMNS, build_features_by_month
from fraud_assets.core.simulate import simulate_months
from fraud_assets.core.split import split_by_time
from fraud_assets.core.train import fit_challenger, predict_calibrated, refit_model, save_model
from fraud_assets.params import load_params
from tests.scale.conftest import RayCluster, connected

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def test_booster_trained_on_two_workers(ray_cluster: RayCluster, monkeypatch: pytest.MonkeyPatch,
                                        tmp_path: Path) -> None:
    monkeypatch.setenv("FRAUD_RAY_STORAGE", str(tmp_path / "ray_train"))
    p = load_params(overrides={"data.n_customers": 800, "compute.engine": "ray", "compute.address": ray_cluster.address,
                               "compute.train_workers": 2, "split.train_months": 2})
    features = build_features_by_month(simulate_months(p.data, p.data.start_month, 3), p.features)
    split = split_by_time(features, "2025-03", p.split)
    local = fit_challenger(split.train, split.valid, p.train, p.evaluate, fit=LOCAL.fit)
    with connected(ray_cluster), open_engine(p.compute) as engine:  # a driver already connected is used as it is
        remote = fit_challenger(split.train, split.valid, p.train, p.evaluate, fit=engine.fit)
        refit = refit_model(split.labelled, p.train, 20, fit=engine.fit)
    booster = remote.booster
    assert booster.attr("train_workers") == "2"
    assert booster.attr("train_workers_on_node") in {"1", "2"}  # SPREAD is a preference: one or two nodes
    assert booster.feature_names == FEATURE_COLUMNS
    assert 0 < int(booster.attr("best_iteration")) < p.train.n_estimators - 1  # early stopping on the valid shards
    assert refit.num_boosted_rounds() == 20 and refit.attr("train_workers") == "2"

    holdout = split.holdout["is_fraud"]
    ap_local = average_precision_score(holdout, predict_calibrated(local.booster, local.calibrator, split.holdout))
    ap_remote = average_precision_score(holdout, predict_calibrated(booster, remote.calibrator, split.holdout))
    assert ap_remote > 0.2 and abs(ap_remote - ap_local) < 0.05, (ap_remote, ap_local)
    assert 0 < remote.threshold < 1

    path = save_model(booster, tmp_path / "model.ubj")  # XGBoost's own format, as every version is logged
    again = xgb.Booster(model_file=path)
    assert again.attr("train_workers") == "2"
    assert (again.inplace_predict(split.holdout[FEATURE_COLUMNS].to_numpy("float32"))
            == booster.inplace_predict(split.holdout[FEATURE_COLUMNS].to_numpy("float32"))).all()
