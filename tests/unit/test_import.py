"""`fraud import`: a bank's CSV/Parquet export -> canonical monthly snapshots, pinned and pushed with DVC."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from fraud_assets.adapters import dvc_repo
from fraud_assets.cli.main import app
from fraud_assets.core.importer import parse_column_map, read_export, to_canonical
from fraud_assets.core.lineage import file_md5
from fraud_assets.core.simulate import simulate_months
from fraud_assets.core.validate import SnapshotError
from fraud_assets.params import load_params

P = load_params()
MAP = ["ref=transaction_id", "when=tx_datetime", "card=customer_id", "pos=terminal_id", "value=amount",
       "fraud=is_fraud"]


@pytest.fixture(scope="module")
def truth() -> pd.DataFrame:
    """Two simulated months: what the bank's system holds, in canonical form."""
    data = P.data.model_copy(update={"n_customers": 40})
    return pd.concat(simulate_months(data, "2025-01", 2).values(), ignore_index=True)


def _export(truth: pd.DataFrame, tz: str) -> pd.DataFrame:
    """The same rows as a bank exports them: its own column names, numeric cards, naive local times."""
    return pd.DataFrame({
        "ref": truth["transaction_id"].str.replace("tx-", "bank-"),
        "when": truth["tx_datetime"].dt.tz_convert(tz).dt.tz_localize(None),
        "card": truth["customer_id"].str[1:].astype(int),
        "pos": truth["terminal_id"],
        "value": truth["amount"],
        "fraud": truth["is_fraud"],
        "branch": "north",  # a column the canonical schema does not have: dropped
    }).iloc[::-1]  # the export's order is not ours


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("import-template") / "repo"
    root.mkdir()
    load_params().write(root / "params.yaml")
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("FRAUD_STATE_DIR", raising=False)
        dvc_repo.ensure_repo(root)
    return root


@pytest.fixture
def repo(template: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("FRAUD_STATE_DIR", raising=False)
    root = tmp_path / "repo"
    shutil.copytree(template, root, symlinks=True)
    monkeypatch.setenv("FRAUD_PROJECT_ROOT", str(root))
    return root


def _import(*args: str) -> tuple[int, str]:
    res = CliRunner().invoke(app, ["import", *args])
    return res.exit_code, res.output


def _snapshots(root: Path) -> dict[str, Path]:
    return {p.stem: p for p in sorted((root / "data" / "transactions").glob("*.parquet"))}


def test_csv_with_a_column_map_and_a_local_timezone(repo: Path, truth: pd.DataFrame, tmp_path: Path) -> None:
    export = tmp_path / "bank export.csv"
    _export(truth, "America/New_York").to_csv(export, index=False)
    code, out = _import(str(export), *[a for m in MAP for a in ("--map", m)], "--timezone", "America/New_York")
    assert code == 0, out
    snaps = _snapshots(repo)
    assert set(snaps) == {"2025-01", "2025-02"}  # split by UTC month, though New York is still in January
    got = pd.concat([pd.read_parquet(p) for p in snaps.values()], ignore_index=True)
    assert list(got.columns) == ["transaction_id", "tx_datetime", "customer_id", "terminal_id", "amount", "is_fraud",
                                 "label_available_at"]  # the export has no arrival times: the label delay's
    delay = pd.Timedelta(days=P.features.label_delay_days)
    assert (got["label_available_at"] == got["tx_datetime"] + delay).all()
    assert len(got) == len(truth)
    expected = truth.assign(transaction_id=truth["transaction_id"].str.replace("tx-", "bank-"),
                            customer_id=truth["customer_id"].str[1:].astype(int).astype(str))
    merged = got.merge(expected, on="transaction_id", suffixes=("", "_truth"))
    assert len(merged) == len(truth)
    assert (merged["tx_datetime"] == merged["tx_datetime_truth"]).all()  # normalized to UTC
    assert (merged["customer_id"] == merged["customer_id_truth"]).all()  # ids as strings
    assert (merged["is_fraud"] == merged["is_fraud_truth"]).all()
    assert got["tx_datetime"].is_monotonic_increasing
    pinned = dvc_repo.month_hashes(repo)
    assert pinned == {m: file_md5(p) for m, p in snaps.items()}
    assert all(h in out for h in pinned.values()) and "pushed" in out
    pushed = {p.name for p in (repo / ".state" / "dvc-remote").rglob("*") if p.is_file()}
    assert {h[2:] for h in pinned.values()} <= pushed
    jan = truth[truth["tx_datetime"].dt.strftime("%Y-%m") == "2025-01"]
    line = rf"^2025-01\s+{len(jan)}\s+{100 * jan['is_fraud'].mean():.2f}%\s+0\s+{pinned['2025-01']}\s+new$"
    assert re.search(line, out, re.MULTILINE), out  # rows, fraud rate, quarantined, DVC hash, what happened


def test_reimport_gives_the_same_hashes_and_other_data_needs_replace(repo: Path, truth: pd.DataFrame,
                                                                     tmp_path: Path) -> None:
    export = tmp_path / "export.parquet"
    frame = _export(truth, "Europe/Paris")
    frame.to_parquet(export, index=False)
    args = [str(export), *[a for m in MAP for a in ("--map", m)], "--timezone", "Europe/Paris", "--no-push"]
    assert _import(*args)[0] == 0
    first = dvc_repo.month_hashes(repo)
    dvc_file = (repo / "data.dvc").read_bytes()
    frame.sample(frac=1, random_state=1).to_parquet(export, index=False)  # same rows, another order
    code, out = _import(*args)
    assert code == 0, out
    assert dvc_repo.month_hashes(repo) == first and (repo / "data.dvc").read_bytes() == dvc_file
    assert out.count("unchanged") == 2

    frame.loc[frame.index[0], "value"] += 1.0  # other data for a month that exists
    frame.to_parquet(export, index=False)
    code, out = _import(*args)
    assert code == 1 and "already exist" in out and "--replace" in out
    assert dvc_repo.month_hashes(repo) == first
    code, out = _import(*args, "--replace")
    assert code == 0, out
    after = dvc_repo.month_hashes(repo)
    changed = {m for m in first if after[m] != first[m]}
    assert len(changed) == 1 and "replaced" in out and "unchanged" in out


def test_missing_column_names_the_file_and_the_column(repo: Path, truth: pd.DataFrame, tmp_path: Path) -> None:
    export = tmp_path / "no-terminal.csv"
    _export(truth, "UTC").drop(columns=["pos"]).to_csv(export, index=False)
    maps = [a for m in MAP if not m.startswith("pos=") for a in ("--map", m)]
    code, out = _import(str(export), *maps)
    assert code == 1 and "no-terminal.csv: missing required column(s) terminal_id" in out
    code, out = _import(str(export), *maps, "--map", "pos=terminal_id")
    assert code == 1 and "no-terminal.csv: column 'pos' (mapped to terminal_id) is not in the file" in out
    assert _snapshots(repo) == {}


def test_core_rejects_bad_maps_files_and_timestamps(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="SRC=DST"):
        parse_column_map(["amount"])
    with pytest.raises(ValueError, match="'price' is not a canonical column"):
        parse_column_map(["cost=price"])
    with pytest.raises(ValueError, match="'amount' is mapped twice"):
        parse_column_map(["a=amount", "b=amount"])
    assert parse_column_map(["known=label_available_at"]) == {"known": "label_available_at"}  # optional, canonical
    broken = tmp_path / "broken.parquet"
    broken.write_text("nope")
    with pytest.raises(SnapshotError, match=r"cannot read .*broken\.parquet"):
        read_export(broken)
    with pytest.raises(SnapshotError, match=r"x\.xlsx: unsupported file type"):
        (tmp_path / "x.xlsx").write_text("")
        read_export(tmp_path / "x.xlsx")
    raw = pd.DataFrame({"transaction_id": [1, 2], "tx_datetime": ["2025-01-05 10:00", "soon"],
                        "customer_id": [1, 2], "terminal_id": [3, 4], "amount": ["1.5", "x"], "is_fraud": [0, 1]})
    with pytest.raises(SnapshotError, match=r"bank\.csv: column tx_datetime: 1 value\(s\) cannot be read.*'soon'"):
        to_canonical(raw, {}, "UTC", source="bank.csv")
    with pytest.raises(ValueError, match="unknown timezone 'Mars/Base'"):
        to_canonical(raw, {}, "Mars/Base")


def test_core_normalizes_offsets_labels_and_keeps_unreadable_amounts_for_quarantine() -> None:
    raw = pd.DataFrame({"transaction_id": [10.0, 11.0, 12.0],
                        "tx_datetime": ["2025-03-30 02:30:00", "2025-01-31T23:30:00-05:00", "2025-02-01 00:30"],
                        "customer_id": ["a", "b", "c"], "terminal_id": ["t", "t", "t"],
                        "amount": ["1.50", "abc", "3"], "is_fraud": ["yes", "0", "0.5"]})
    out = to_canonical(raw, {}, "Europe/Paris")
    by_id = out.set_index("transaction_id")
    assert list(by_id.index) == ["12", "11", "10"]  # sorted by time; whole-number float ids lose their .0
    assert by_id.loc["11", "tx_datetime"] == pd.Timestamp("2025-02-01 04:30", tz="UTC")  # its own offset wins
    assert by_id.loc["12", "tx_datetime"] == pd.Timestamp("2025-01-31 23:30", tz="UTC")  # Paris is UTC+1
    assert by_id.loc["10", "tx_datetime"] == pd.Timestamp("2025-03-30 01:00", tz="UTC")  # DST gap: shifted forward
    assert by_id.loc["10", "is_fraud"] == 1 and pd.isna(by_id.loc["12", "is_fraud"])
    assert pd.isna(by_id.loc["11", "amount"]) and len(out) == 3  # kept: validation quarantines it


def test_core_keeps_a_sources_label_arrival_times_in_utc_and_derives_missing_ones() -> None:
    raw = pd.DataFrame({"transaction_id": ["a", "b", "c"],
                        "tx_datetime": ["2025-01-05 10:00", "2025-01-06 10:00", "2025-01-07 10:00"],
                        "customer_id": ["c1", "c2", "c3"], "terminal_id": ["t", "t", "t"],
                        "amount": [1.0, 2.0, 3.0], "is_fraud": [0, 1, 0],
                        "known": ["2025-01-20 09:00", "2025-02-01T00:00:00Z", "later"]})
    kept = to_canonical(raw, {"known": "label_available_at"}, "Europe/Paris", features=P.features)
    by_id = kept.set_index("transaction_id")["label_available_at"]
    assert str(kept["label_available_at"].dtype) == "datetime64[ns, UTC]"
    assert by_id["a"] == pd.Timestamp("2025-01-20 08:00", tz="UTC")  # naive: read in --timezone, like tx_datetime
    assert by_id["b"] == pd.Timestamp("2025-02-01 00:00", tz="UTC")  # its own offset wins
    assert pd.isna(by_id["c"])  # unreadable: kept missing, for validation to quarantine
    derived = to_canonical(raw.drop(columns=["known"]), {}, "UTC", features=P.features)
    delay = pd.Timedelta(days=P.features.label_delay_days)
    assert (derived["label_available_at"] == derived["tx_datetime"] + delay).all()
    assert "label_available_at" not in to_canonical(raw.drop(columns=["known"]), {}, "UTC").columns
