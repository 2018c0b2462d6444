"""The local engine's memory-saving paths give the numbers the plain ones give: windows taken in runs, matrices
filled by chunks, boosters trained on binned data, splits without ids, months read when looked up."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import numpy as np
import pandas as pd
import pytest
import xgboost as xgb

from fraud_assets.core import features as F
from fraud_assets.core import train as T
from fraud_assets.core.features import FEATURE_COLUMNS, LABEL, build_features_by_month, feature_matrix
from fraud_assets.core.simulate import simulate_months
from fraud_assets.core.split import IDS, split_by_time
from fraud_assets.orchestration.resources import PartitionFrames
from fraud_assets.params import load_params

P = load_params()


class CountingMonths(Mapping[str, pd.DataFrame]):
    """Months that count how often each is looked up."""

    def __init__(self, frames: dict[str, pd.DataFrame]) -> None:
        self.frames, self.lookups = frames, dict.fromkeys(frames, 0)

    def __getitem__(self, month: str) -> pd.DataFrame:
        self.lookups[month] += 1
        return self.frames[month]

    def __contains__(self, month: object) -> bool:  # as PartitionFrames: without reading (Mapping's would)
        return month in self.frames

    def __iter__(self) -> Iterator[str]:
        return iter(self.frames)

    def __len__(self) -> int:
        return len(self.frames)


@pytest.fixture(scope="module")
def features() -> dict[str, pd.DataFrame]:
    return build_features_by_month(simulate_months(P.data, "2025-01", 3), P.features)


def test_window_max_in_runs_equals_all_windows_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(7)
    values = rng.gamma(2.0, 40.0, 5_000)
    lo = np.sort(rng.integers(0, 5_000, 3_000))
    hi = np.minimum(lo + rng.integers(-3, 80, 3_000), 5_000)  # empty windows among them (hi <= lo)
    whole = F._Segments.of(lo, hi).reduce(np.maximum, values, 0.0)
    for rows in (1, 7, 1_000):  # a run shorter than one window, a few windows, many
        monkeypatch.setattr(F, "_SEGMENT_ROWS", rows)
        assert np.array_equal(F._window_max(values, lo, hi), whole)
    assert (hi <= lo).any() and (whole > 0).any()


def test_matrix_by_chunks_is_the_feature_matrix(features: dict[str, pd.DataFrame],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    frame = features["2025-02"]
    monkeypatch.setattr(T, "CHUNK_ROWS", 999)  # several chunks and a short last one
    for dtype in (np.float32, np.float64):
        got = T.matrix_by_chunks(frame, FEATURE_COLUMNS, dtype)
        assert got.dtype == dtype and got.flags.c_contiguous
        assert np.array_equal(got, feature_matrix(frame, FEATURE_COLUMNS).astype(dtype))


def test_binned_training_gives_the_booster_a_dmatrix_gives(features: dict[str, pd.DataFrame]) -> None:
    split = split_by_time(features, "2025-03", P.split)
    params = T.booster_params(split.train, P.train)
    fitted = T.fit_booster(split.train, split.valid, params, 40, 10, FEATURE_COLUMNS)
    dm = {name: xgb.DMatrix(T.matrix_by_chunks(part, FEATURE_COLUMNS), label=part[LABEL].to_numpy(),
                            feature_names=FEATURE_COLUMNS) for name, part in (("t", split.train), ("v", split.valid))}
    plain = xgb.train(params, dm["t"], num_boost_round=40, evals=[(dm["v"], "valid")], early_stopping_rounds=10,
                      verbose_eval=False)
    assert fitted.best_iteration == plain.best_iteration
    assert np.array_equal(fitted.predict(dm["v"]), plain.predict(dm["v"]))


def test_monthly_split_reads_each_month_once_and_trains_without_ids(features: dict[str, pd.DataFrame]) -> None:
    months = CountingMonths(features)
    split = split_by_time(months, "2025-03", P.split)
    assert months.lookups == {"2025-01": 1, "2025-02": 1, "2025-03": 1}
    for part in (split.train, split.valid):
        assert not set(IDS) & set(part.columns) and set(FEATURE_COLUMNS) <= set(part.columns)
    assert set(IDS) <= set(split.holdout.columns)  # its evaluation joins on transactions and ranks cards
    rows = split.labelled
    assert len(rows) == len(split.train) + len(split.valid) + len(split.holdout)
    assert list(rows.columns) == list(split.train.columns) and rows["tx_datetime"].is_monotonic_increasing
    window = pd.concat([features["2025-01"], features["2025-02"]], ignore_index=True)
    assert len(split.train) + len(split.valid) == len(window)
    assert split.train[FEATURE_COLUMNS].to_numpy().sum() == pytest.approx(
        window.sort_values("tx_datetime", kind="stable").head(len(split.train))[FEATURE_COLUMNS].to_numpy().sum())


def test_partition_frames_read_a_partition_only_when_it_is_looked_up() -> None:
    reads: list[str] = []

    def load(partition: str) -> pd.DataFrame:
        reads.append(partition)
        return pd.DataFrame({"month": [partition]})

    frames = PartitionFrames(load, ["2025-01", "2025-02"])
    assert "2025-01" in frames and "2025-03" not in frames and len(frames) == 2
    assert list(frames) == ["2025-01", "2025-02"] and reads == []
    assert frames["2025-02"]["month"].iat[0] == "2025-02" and reads == ["2025-02"]
    with pytest.raises(KeyError, match="2025-03"):
        frames["2025-03"]
    assert reads == ["2025-02"]
