"""The parity audit: sample and comparison rules, and `fraud check-parity` on stored assets of a small project."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from fraud_assets.cli.main import app
from fraud_assets.cli.parity import FEATURES_ASSET, VALIDATED_ASSET, asset_path
from fraud_assets.core.features import FEATURE_COLUMNS, build_features
from fraud_assets.core.parity import compare_features, months_needed, sample_rows
from fraud_assets.core.validate import validate_transactions
from fraud_assets.params import load_params
from tests.conftest import write_small_project
from tests.unit.test_features import stored

MONTH = "2025-03"  # two earlier months: the one the batch side used to miss, and the one before


def write_parity_state(root: Path, state: Path, history_months: int | None = None) -> None:
    """Store validated rows and training features per month as the IO manager lays them out; the features of a
    month read ``history_months`` earlier months (None: all of them, what a store holding everything sees)."""
    params = load_params(root / "params.yaml")
    data_dir = root / params.data.dir
    valid: dict[str, pd.DataFrame] = {}
    for path in sorted(data_dir.glob("*.parquet")):
        valid[path.stem] = validate_transactions(pd.read_parquet(path), path.stem, source=path.name,
                                              data=params.data).valid
    for i, (month, frame) in enumerate(valid.items()):
        earlier = list(valid.values())[:i][-(history_months or len(valid)):] if i else []
        history = pd.concat(earlier, ignore_index=True) if earlier else None
        features = build_features(frame, params.features, history=history)
        for asset, value in ((VALIDATED_ASSET, frame), (FEATURES_ASSET, features)):
            target = state / "assets" / asset / f"{month}.parquet"
            target.parent.mkdir(parents=True, exist_ok=True)
            value.to_parquet(target, index=False)


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_small_project(tmp_path_factory.mktemp("parity"), months=3, n_customers=300)


@pytest.fixture()
def state(project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "state"
    write_parity_state(project, folder)
    monkeypatch.setenv("FRAUD_PROJECT_ROOT", str(project))
    monkeypatch.setenv("FRAUD_STATE_DIR", str(folder))
    monkeypatch.delenv("FRAUD_ONLINE_STORE", raising=False)
    return folder


def _audit(*args: str) -> tuple[int, str]:
    res = CliRunner().invoke(app, ["check-parity", "--month", MONTH, *args])
    return res.exit_code, res.output


def test_the_paths_are_the_io_managers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import dagster as dg

    from fraud_assets.orchestration.resources import FrameIOManager

    monkeypatch.setenv("FRAUD_STATE_DIR", str(tmp_path))
    manager = FrameIOManager(base_dir=str(tmp_path / "assets"))
    for asset in (FEATURES_ASSET, VALIDATED_ASSET):
        assert asset_path(asset, MONTH) == manager._path(dg.AssetKey(asset), MONTH, ".parquet")


def test_sample_is_the_months_start_plus_a_seeded_draw() -> None:
    times = pd.date_range("2025-03-01", periods=50, freq="h", tz="UTC")
    frame = pd.DataFrame({"transaction_id": [f"t{i:02d}" for i in range(50)], "tx_datetime": times})
    shuffled = frame.sample(frac=1.0, random_state=1)
    sample = sample_rows(shuffled, 5, 10, seed=3)
    assert list(sample["transaction_id"][:5]) == ["t00", "t01", "t02", "t03", "t04"]
    assert len(sample) == 15 and sample["transaction_id"].is_unique and sample["tx_datetime"].is_monotonic_increasing
    assert sample.equals(sample_rows(shuffled, 5, 10, seed=3)) and not sample.equals(sample_rows(shuffled, 5, 10, 4))
    assert len(sample_rows(frame, 40, 40, seed=0)) == 50  # no more rows than the month has


def test_months_needed_cover_the_lookback_from_the_first_month() -> None:
    assert months_needed("2025-03", 37, "2025-01") == ["2025-01", "2025-02"]  # March 1st - 37 days = January 23rd
    assert months_needed("2025-03", 28, "2025-01") == ["2025-02"]
    assert months_needed("2025-02", 37, "2025-01") == ["2025-01"]  # nothing exists before the first month
    assert months_needed("2025-01", 37, "2025-01") == []


def test_compare_at_the_stored_precision_and_name_the_worst_row() -> None:
    ids, when = ["a", "b", "c"], pd.Timestamp("2025-03-01", tz="UTC")
    online = pd.DataFrame({"transaction_id": ["c", "a", "b"], "tx_datetime": when, "x": [0.1, 0.1, 0.1],
                           "y": [1.0, 1.0, 1.0]})
    batch = pd.DataFrame({"transaction_id": ids, "tx_datetime": when, "x": np.full(3, 0.1, np.float32),
                          "y": [1.0, 3.0, 1.0]})
    report = compare_features(batch, online, ["x", "y"], 1e-9)
    assert report.max_abs_diff == {"x": 0.0, "y": 2.0}  # 0.1 is compared as the float32 it is stored as
    assert report.rows_compared == 3 and report.rows_differing == 1 and report.rows_by_column == {"x": 0, "y": 1}
    assert [(w.transaction_id, w.column, w.batch, w.online) for w in report.worst] == [("b", "y", 3.0, 1.0)]
    with pytest.raises(KeyError, match="no stored features"):
        compare_features(batch.iloc[:2], online, ["x", "y"])


def test_audit_passes_when_training_features_read_the_full_history(state: Path) -> None:
    code, out = _audit("--rows", "300")
    assert code == 0, out
    assert "rows compared   600" in out and "rows differing  0 " in out
    assert "history 2025-01, 2025-02" in out and "a temporary SQLite file" in out


def test_one_edited_training_value_fails_naming_its_column(state: Path) -> None:
    path = asset_path(FEATURES_ASSET, MONTH)
    features = pd.read_parquet(path)
    first = features["tx_datetime"].idxmin()
    features.loc[first, "terminal_count_30d"] += 1.0
    features.to_parquet(path, index=False)
    code, out = _audit("--rows", "100")
    assert code == 1, out
    assert "rows differing  1 " in out
    line = next(row for row in out.splitlines() if row.startswith("terminal_count_30d"))
    assert line.split()[1:] == ["1", "1"]  # max |diff| 1, one row
    assert str(features.loc[first, "transaction_id"]) in out


def test_a_month_of_history_only_is_caught(project: Path, state: Path) -> None:
    """What batch mode did before it read the whole lookback: early-month rows miss January's terminal history."""
    write_parity_state(project, state, history_months=1)
    code, out = _audit("--rows", "300")
    assert code == 1, out
    assert "terminal_count_30d" in out


def test_a_missing_earlier_month_exits_2_naming_it(state: Path) -> None:
    asset_path(VALIDATED_ASSET, "2025-01").unlink()
    code, out = _audit()
    assert code == 2, out
    assert "validated_transactions not materialized for 2025-01" in out


def test_missing_features_of_the_month_exit_2(state: Path) -> None:
    shutil.rmtree(state / "assets" / FEATURES_ASSET)
    code, out = _audit()
    assert code == 2 and f"transaction_features not materialized for {MONTH}" in out


def test_replay_reads_exactly_the_past(project: Path, state: Path) -> None:
    """The replay gives batch mode's numbers from a scratch store, and same-second neighbours are not the past."""
    from fraud_assets.adapters.parity_replay import replay_online, scratch_store

    params = load_params(project / "params.yaml")
    month = pd.read_parquet(asset_path(VALIDATED_ASSET, MONTH)).head(50)
    twin = month.iloc[[10]].assign(transaction_id="twin", customer_id=month["customer_id"].iat[10])
    both = pd.concat([month, twin], ignore_index=True)
    with scratch_store("unused.sqlite") as (store, _):
        online = replay_online(store, month.iloc[0:0], both, both, params.features).set_index("transaction_id")
        last = both["tx_datetime"].max().floor("s")
        assert store.count() == int((both["tx_datetime"] < last).sum())  # never the last second's rows
    expected = build_features(both, params.features).set_index("transaction_id")
    assert list(online.columns[1:]) == FEATURE_COLUMNS
    assert np.abs(stored(online[FEATURE_COLUMNS].to_numpy())  # at the precision batch mode stores
                  - expected.loc[online.index, FEATURE_COLUMNS].to_numpy(np.float32)).max() <= 1e-9
    assert (online.loc["twin", FEATURE_COLUMNS] == online.loc[month["transaction_id"].iat[10], FEATURE_COLUMNS]).all()


@pytest.mark.parametrize("schema", ["Public", "x; DROP TABLE transactions", "a-b", "1abc", ""])
def test_a_postgres_schema_name_must_be_a_plain_identifier(schema: str) -> None:
    from fraud_assets.adapters.online_store import PostgresTransactionStore

    with pytest.raises(ValueError, match="lower-case identifier"):
        PostgresTransactionStore("postgresql://nobody@127.0.0.1:1/none", schema=schema)


def test_the_audit_covers_labels_by_arrival_time(state: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The replay posts each label once it has arrived; a replay that posted every label at once (what a store fed
    labels as soon as they exist would hold) reads labels before their time, and the audit says which columns."""
    from fraud_assets.adapters import parity_replay

    assert _audit("--rows", "300")[0] == 0
    original = parity_replay._Labels.post_before
    monkeypatch.setattr(parity_replay._Labels, "post_before",
                        lambda labels, store, second: original(labels, store, np.iinfo(np.int64).max))
    code, out = _audit("--rows", "300")
    assert code == 1, out
    differing = {row.split()[0] for row in out.splitlines()  # the column table: name, max |diff|, rows
                 if len(row.split()) == 3 and row.split()[0] in FEATURE_COLUMNS}
    assert differing and differing <= {"terminal_fraud_rate_1d", "terminal_fraud_rate_7d", "terminal_fraud_rate_30d",
                                       "card_known_frauds", "card_known_fraud_rate", "card_days_since_known_fraud"}


def test_parity_at_the_stored_precision_allows_one_float32_step_and_nothing_more() -> None:
    """Two computations 1e-12 apart on either side of a float32 rounding point store neighbouring float32 values:
    the same feature at the stored precision. Two steps apart, or a value against NaN, is a difference."""
    low = np.float32(100.0)
    midpoint = float(low) + float(np.spacing(low)) / 2  # where rounding to float32 flips
    batch = pd.DataFrame({"transaction_id": ["a", "b", "c"], "f": np.array([midpoint - 1e-12, 7.0, 7.0], np.float32)})
    online = pd.DataFrame({"transaction_id": ["a", "b", "c"], "f": [midpoint + 1e-12, 7.0 + 2 * float(np.spacing(
        np.float32(7.0))), np.nan]})
    report = compare_features(batch, online, ["f"])
    assert report.rows_compared == 3 and report.rows_differing == 2
    assert [w.transaction_id for w in report.worst] == ["c", "b"]
