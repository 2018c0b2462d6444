"""Validation: every rule with its reason, quarantine accounting, cross-month ids, and file-level errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fraud_assets.core.simulate import simulate_month
from fraud_assets.core.validate import (
    REASON_COLUMN,
    SnapshotError,
    earlier_month_ids,
    read_snapshot,
    validate_transactions,
)
from fraud_assets.params import load_params
from fraud_assets.stages.prepare import prepare

P = load_params()
SMALL = P.data.model_copy(update={"n_customers": 80})


@pytest.fixture(scope="module")
def month() -> pd.DataFrame:
    return simulate_month(SMALL, "2025-02").head(40)


def _reason(frame: pd.DataFrame, row: int, **changes: object) -> str:
    """Quarantine reason of ``row`` after applying ``changes`` to it (the row must be quarantined)."""
    bad = frame.copy()
    for col, value in changes.items():
        bad[col] = bad[col].astype(object)  # room for a value of another type
        bad.loc[row, col] = value
    result = validate_transactions(bad, "2025-02", source="2025-02.parquet", data=P.data)
    assert result.counts == {"rows_in": len(frame), "rows_valid": len(frame) - 1, "rows_quarantined": 1}
    assert result.quarantined.loc[0, "transaction_id"] == bad.loc[row, "transaction_id"]
    return result.quarantined.loc[0, REASON_COLUMN]


def test_a_clean_month_is_all_valid(month: pd.DataFrame) -> None:
    result = validate_transactions(month, "2025-02", data=P.data)
    assert result.counts == {"rows_in": 40, "rows_valid": 40, "rows_quarantined": 0}
    assert list(result.quarantined.columns) == [*month.columns, REASON_COLUMN]
    assert str(result.valid["tx_datetime"].dtype) == "datetime64[ns, UTC]"


@pytest.mark.parametrize(("changes", "expected"), [
    ({"amount": -0.01}, "amount: failed greater_than_or_equal_to(0)"),
    ({"amount": np.inf}, "amount: failed amount_is_finite"),
    ({"amount": np.nan}, "amount: missing value"),
    ({"amount": "twelve"}, "amount: cannot be read as a number ('twelve')"),
    ({"is_fraud": 2}, "is_fraud"),
    ({"is_fraud": 0.5}, "is_fraud: 0.5 is not 0 or 1"),
    ({"tx_datetime": pd.Timestamp("2025-03-01", tz="UTC")}, "tx_datetime: failed tx_datetime_in_month[2025-02]"),
    ({"tx_datetime": pd.Timestamp("2025-01-31 23:59:59", tz="UTC")}, "tx_datetime_in_month[2025-02]"),
    ({"tx_datetime": "not a time"}, "tx_datetime: cannot be read as a timestamp ('not a time')"),
    ({"customer_id": ""}, "customer_id: failed str_length"),
    ({"terminal_id": None}, "terminal_id: missing value"),
    ({"transaction_id": None}, "transaction_id: missing value"),
    ({"label_available_at": pd.Timestamp("2025-01-15", tz="UTC")}, "label_available_at: before tx_datetime"),
    ({"label_available_at": pd.NaT}, "label_available_at: missing value"),
    ({"label_available_at": "soon"}, "label_available_at: cannot be read as a timestamp ('soon')"),
])
def test_each_rule_quarantines_one_row_with_its_reason(month: pd.DataFrame, changes: dict, expected: str) -> None:
    assert expected in _reason(month, 7, **changes)


def test_label_arrival_is_optional_may_equal_the_transaction_time_and_stays_utc(month: pd.DataFrame) -> None:
    without = validate_transactions(month.drop(columns="label_available_at"), "2025-02", data=P.data)
    assert without.counts["rows_valid"] == 40 and "label_available_at" not in without.valid.columns
    at_once = month.assign(label_available_at=month["tx_datetime"])  # the label known with the transaction
    as_text = month.assign(label_available_at=month["label_available_at"].dt.tz_convert("Europe/Paris").astype(str))
    for frame in (at_once, as_text):
        valid = validate_transactions(frame, "2025-02", data=P.data).valid
        assert len(valid) == 40 and str(valid["label_available_at"].dtype) == "datetime64[ns, UTC]"
    pd.testing.assert_series_equal(validate_transactions(as_text, "2025-02", data=P.data).valid["label_available_at"],
                                   month["label_available_at"].reset_index(drop=True))


def test_label_outside_0_1_names_the_rule(month: pd.DataFrame) -> None:
    reason = _reason(month, 3, is_fraud=2)
    assert "is_fraud" in reason and ("isin" in reason or "not 0 or 1" in reason)


def test_amount_above_data_max_amount_is_quarantined_and_the_limit_itself_passes(month: pd.DataFrame) -> None:
    assert P.data.max_amount == 10_000_000  # the reason below names params.yaml's bound
    bad = month.copy()
    bad.loc[4, "amount"], bad.loc[5, "amount"] = P.data.max_amount + 0.01, P.data.max_amount
    result = validate_transactions(bad, "2025-02", data=P.data)
    assert result.quarantined["transaction_id"].tolist() == [bad.loc[4, "transaction_id"]]
    assert result.quarantined.loc[0, REASON_COLUMN] == "amount: failed amount_at_most[10000000]"
    assert P.data.max_amount in result.valid["amount"].tolist()
    lower = P.data.model_copy(update={"max_amount": 100.0})  # the bound comes from the argument, not a constant
    assert validate_transactions(bad, "2025-02", data=lower).counts["rows_quarantined"] == (bad["amount"] > 100).sum()


def test_timestamp_before_data_min_tx_date_is_quarantined_and_utc_midnight_passes(month: pd.DataFrame) -> None:
    assert P.data.min_tx_date.isoformat() == "2000-01-01"
    rows = month.head(3).copy()
    rows["tx_datetime"] = pd.to_datetime(["1999-12-31 23:59:59", "2000-01-01 00:00:00", "1999-12-31 00:00:00"],
                                         utc=True)
    result = validate_transactions(rows, None, data=P.data)  # no month: only the lower bound can fail
    assert result.counts == {"rows_in": 3, "rows_valid": 1, "rows_quarantined": 2}
    assert set(result.quarantined[REASON_COLUMN]) == {"tx_datetime: failed tx_datetime_not_before[2000-01-01]"}
    assert result.valid["tx_datetime"].tolist() == [pd.Timestamp("2000-01-01", tz="UTC")]
    in_month = validate_transactions(rows.tail(2).head(1), "2000-01", data=P.data)  # exactly the bound, in its month
    assert in_month.counts["rows_quarantined"] == 0


def test_duplicate_id_within_the_month_keeps_the_first(month: pd.DataFrame) -> None:
    bad = month.copy()
    bad.loc[9, "transaction_id"] = bad.loc[2, "transaction_id"]
    result = validate_transactions(bad, "2025-02", data=P.data)
    assert result.counts["rows_quarantined"] == 1
    assert result.quarantined.loc[0, "amount"] == bad.loc[9, "amount"]  # the later copy goes
    assert result.quarantined.loc[0, REASON_COLUMN] == "transaction_id: duplicate value"
    assert result.valid["transaction_id"].is_unique


def test_ids_used_by_another_month_are_quarantined_naming_the_id(month: pd.DataFrame) -> None:
    seen = pd.Index(["tx-202501-0000001", month.loc[5, "transaction_id"]])
    result = validate_transactions(month, "2025-02", seen_ids=seen, data=P.data)
    assert result.counts == {"rows_in": 40, "rows_valid": 39, "rows_quarantined": 1}
    reason = result.quarantined.loc[0, REASON_COLUMN]
    assert reason == f"transaction_id: {month.loc[5, 'transaction_id']} already used in another month"
    assert validate_transactions(month, "2025-02", seen_ids=set(), data=P.data).counts["rows_quarantined"] == 0


def test_rows_in_equals_valid_plus_quarantined_with_many_kinds_of_bad_rows(month: pd.DataFrame) -> None:
    bad = month.copy()
    bad["amount"] = bad["amount"].astype(object)
    bad.loc[0, "amount"] = -1.0
    bad.loc[1, "amount"] = "n/a"
    bad.loc[2, "amount"] = np.inf
    bad.loc[3, "is_fraud"] = 3
    bad.loc[4, "transaction_id"] = bad.loc[5, "transaction_id"]
    bad.loc[6, "tx_datetime"] = pd.Timestamp("2024-12-31", tz="UTC")
    bad.loc[7, "customer_id"] = None
    bad.loc[8, "amount"] = -5.0  # two reasons on one row ...
    bad.loc[8, "tx_datetime"] = pd.Timestamp("2025-04-02", tz="UTC")
    bad.loc[10, "transaction_id"] = "tx-202501-0000000"
    result = validate_transactions(bad, "2025-02", seen_ids=["tx-202501-0000000"], data=P.data)
    c = result.counts
    assert c["rows_in"] == len(bad) == c["rows_valid"] + c["rows_quarantined"]
    assert c["rows_quarantined"] == 9  # rows 0-3, 5 (the later copy), 6-8, 10
    both = pd.concat([result.valid["transaction_id"], result.quarantined["transaction_id"]])
    assert sorted(both) == sorted(bad["transaction_id"])  # no row vanished, none was invented
    assert result.quarantined[REASON_COLUMN].str.len().gt(0).all()
    two = result.quarantined.loc[result.quarantined["transaction_id"] == bad.loc[8, "transaction_id"], REASON_COLUMN]
    assert "amount" in two.iloc[0] and "tx_datetime" in two.iloc[0]  # ... both named, one row
    assert validate_transactions(bad, "2025-02", seen_ids=["x"], data=P.data).counts["rows_in"] == len(bad)
    pd.testing.assert_frame_equal(bad, bad.copy())  # input left as it was


@pytest.mark.parametrize("column", ["transaction_id", "tx_datetime", "customer_id", "terminal_id", "amount",
                                    "is_fraud"])
def test_missing_column_fails_naming_file_and_column(month: pd.DataFrame, column: str) -> None:
    with pytest.raises(SnapshotError, match=rf"2025-02\.parquet: missing required column\(s\) {column}"):
        validate_transactions(month.drop(columns=[column]), "2025-02", source="2025-02.parquet", data=P.data)


def test_unreadable_or_missing_file_names_it(tmp_path: Path) -> None:
    broken = tmp_path / "2025-02.parquet"
    broken.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(SnapshotError, match=r"cannot read snapshot .*2025-02\.parquet"):
        read_snapshot(broken)
    with pytest.raises(SnapshotError, match=r"snapshot not found: .*2025-03\.parquet"):
        read_snapshot(tmp_path / "2025-03.parquet")


def test_earlier_month_ids_reads_only_earlier_months(tmp_path: Path) -> None:
    for m in ("2025-01", "2025-02", "2025-03"):
        simulate_month(SMALL, m).head(5).to_parquet(tmp_path / f"{m}.parquet", index=False)
    ids = earlier_month_ids(tmp_path, "2025-03")
    assert len(ids) == 10 and {i[:9] for i in ids} == {"tx-202501", "tx-202502"}
    assert len(earlier_month_ids(tmp_path, "2025-01")) == 0
    pd.DataFrame({"id": ["a"]}).to_parquet(tmp_path / "2024-12.parquet")
    with pytest.raises(SnapshotError, match=r"2024-12\.parquet: missing required column\(s\) transaction_id"):
        earlier_month_ids(tmp_path, "2025-01")


def test_prepare_stage_quarantines_an_id_reused_by_a_later_month(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    jan, feb = simulate_month(SMALL, "2025-01"), simulate_month(SMALL, "2025-02")
    feb.loc[3, "transaction_id"] = jan.loc[0, "transaction_id"]
    jan.to_parquet(data / "2025-01.parquet", index=False)
    feb.to_parquet(data / "2025-02.parquet", index=False)
    counts = prepare(data, tmp_path / "prepared", tmp_path / "quarantine", P.data)
    assert counts["2025-01"]["rows_quarantined"] == 0  # the first month to use an id keeps it
    assert counts["2025-02"]["rows_quarantined"] == 1
    q = pd.read_parquet(tmp_path / "quarantine" / "2025-02.parquet")
    assert q.loc[0, REASON_COLUMN] == f"transaction_id: {jan.loc[0, 'transaction_id']} already used in another month"
