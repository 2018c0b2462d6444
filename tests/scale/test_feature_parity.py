"""Features on the ``ray`` engine, on a cluster of three nodes, equal the local engine's to 1e-9: every month of a
run (month boundaries, history months), late labels, and a frame without label arrival times (the default rule);
the DVC stage ``featurize`` on that engine writes the same files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fraud_assets.compute import LOCAL, open_engine
from fraud_assets.core.features import FEATURE_COLUMNS, build_features_by_month
from fraud_assets.core.simulate import simulate_months
from fraud_assets.params import load_params
from fraud_assets.schemas import LABEL_AVAILABLE_AT
from fraud_assets.stages.featurize import featurize
from tests.conftest import assert_features_match
from tests.scale.conftest import RayCluster, client_env

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def _assert_same(local: dict[str, pd.DataFrame], remote: dict[str, pd.DataFrame]) -> None:
    assert list(remote) == list(local)
    for month in local:
        a, b = local[month], remote[month]
        assert list(b.columns) == list(a.columns), month
        pd.testing.assert_frame_equal(b.drop(columns=FEATURE_COLUMNS), a.drop(columns=FEATURE_COLUMNS))
        assert_features_match(b[FEATURE_COLUMNS].to_numpy(), a[FEATURE_COLUMNS].to_numpy(), month)


def test_ray_features_equal_local_on_three_nodes(ray_cluster: RayCluster, tmp_path: Path) -> None:
    p = load_params(overrides={"data.n_customers": 500, "data.n_terminals": 400, "compute.engine": "ray",
                               "compute.address": ray_cluster.address, "compute.partitions": 4})
    months = simulate_months(p.data, "2024-11", 3)  # December to January: a year boundary inside the history
    assert months["2024-11"][LABEL_AVAILABLE_AT].notna().all()  # labels arrive late, some after the label delay
    without_arrivals = {m: f.drop(columns=[LABEL_AVAILABLE_AT]) for m, f in months.items()}
    local = build_features_by_month(months, p.features, LOCAL.features)
    local_rule = build_features_by_month(without_arrivals, p.features, LOCAL.features)
    with client_env(ray_cluster), open_engine(p.compute) as engine:  # the engine connects to compute.address
        import ray

        assert engine.name == "ray"
        assert len([n for n in ray.nodes() if n["Alive"]]) == ray_cluster.nodes == 3
        remote = build_features_by_month(months, p.features, engine.features)
        remote_rule = build_features_by_month(without_arrivals, p.features, engine.features)
        empty = engine.features(months["2024-12"].iloc[0:0], p.features, months["2024-11"])
        prepared = tmp_path / "prepared"  # the DVC stage `featurize` on the same engine
        prepared.mkdir()
        for month, frame in months.items():
            frame.to_parquet(prepared / f"{month}.parquet", index=False)
        rows = featurize(prepared, tmp_path / "features", p.features, engine)
    assert not ray.is_initialized()  # and disconnects the driver it connected
    _assert_same(local, remote)
    _assert_same(local_rule, remote_rule)
    assert not np.allclose(local["2025-01"][FEATURE_COLUMNS].to_numpy(), local_rule["2025-01"][FEATURE_COLUMNS]
                           .to_numpy())  # the arrivals matter: the comparison above is not of identical inputs
    assert len(empty) == 0 and list(empty.columns) == list(local["2024-12"].columns)
    assert rows == {m: len(f) for m, f in months.items()}
    staged = {m: pd.read_parquet(tmp_path / "features" / f"{m}.parquet") for m in months}
    _assert_same({m: f.reset_index(drop=True) for m, f in local.items()}, staged)
