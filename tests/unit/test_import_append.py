"""`fraud import --append`: a part of a month (a week, a day) merged into the monthly snapshots, pinned by DVC."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from fraud_assets.adapters import dvc_repo
from fraud_assets.cli.main import app
from fraud_assets.core.importer import IdConflictError, append_to_snapshot, to_canonical
from fraud_assets.core.lineage import file_md5
from fraud_assets.core.simulate import simulate_months
from fraud_assets.core.tokens import tokenize_column
from fraud_assets.core.validate import SnapshotError, read_snapshot, validate_transactions
from fraud_assets.params import load_params

P = load_params()
MAP = [a for m in ("ref=transaction_id", "when=tx_datetime", "card=customer_id", "pos=terminal_id", "value=amount",
                   "fraud=is_fraud") for a in ("--map", m)]
KEY = "a test key: 32 bytes, not secret"
DELAY = pd.Timedelta(days=P.features.label_delay_days)


@pytest.fixture(scope="module")
def truth() -> pd.DataFrame:
    """Two simulated months: what the bank's system holds, in canonical form."""
    data = P.data.model_copy(update={"n_customers": 40})
    return pd.concat(simulate_months(data, "2025-01", 2).values(), ignore_index=True)


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty project as a git repository with DVC and its local remote (built once, copied per test)."""
    root = tmp_path_factory.mktemp("append-template") / "repo"
    root.mkdir()
    P.write(root / "params.yaml")
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("FRAUD_STATE_DIR", raising=False)
        dvc_repo.ensure_repo(root)
    return root


@pytest.fixture
def repo(template: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("FRAUD_STATE_DIR", raising=False)
    monkeypatch.setenv("FRAUD_TOKEN_KEY", KEY)  # tokens on: the part's cards must get the tokens of the month's
    return _use_copy(template, tmp_path / "repo", monkeypatch)


def _use_copy(template: Path, root: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    shutil.copytree(template, root, symlinks=True)
    monkeypatch.setenv("FRAUD_PROJECT_ROOT", str(root))
    return root


def _rows(truth: pd.DataFrame, start: str, end: str) -> pd.DataFrame:
    """The transactions of ``[start, end)`` (UTC days)."""
    t = truth["tx_datetime"]
    return truth[(t >= pd.Timestamp(start, tz="UTC")) & (t < pd.Timestamp(end, tz="UTC"))]


def _export(rows: pd.DataFrame, path: Path) -> Path:
    """``rows`` as the bank exports them: its own column names, no label arrival times, not in our order."""
    pd.DataFrame({"ref": rows["transaction_id"], "when": rows["tx_datetime"], "card": rows["customer_id"],
                  "pos": rows["terminal_id"], "value": rows["amount"], "fraud": rows["is_fraud"]}
                 ).iloc[::-1].to_parquet(path, index=False)
    return path


def _import(*args: str) -> tuple[int, str]:
    res = CliRunner().invoke(app, ["import", *args])
    return res.exit_code, res.output


def _snapshot(root: Path, month: str) -> Path:
    return root / P.data.dir / f"{month}.parquet"


def _folder_hash(root: Path) -> str:
    """The hash ``data.dvc`` pins for the whole snapshot folder."""
    return yaml.safe_load((root / "data.dvc").read_text())["outs"][0]["md5"]


def _line(out: str, month: str) -> list[str]:
    """The summary line of ``month``, split into its fields."""
    (line,) = [ln for ln in out.splitlines() if ln.startswith(month)]
    return line.split()


def _quiet(out: str) -> bool:
    return not re.search(r"warning|traceback", out, re.IGNORECASE)


def test_a_week_appended_to_a_month_is_a_new_version_with_every_row_once_and_sorted(
        repo: Path, truth: pd.DataFrame, tmp_path: Path) -> None:
    first, week = _rows(truth, "2025-01-01", "2025-01-25"), _rows(truth, "2025-01-25", "2025-02-01")
    assert _import(str(_export(first, tmp_path / "first.parquet")), *MAP, "--no-push")[0] == 0
    path = _snapshot(repo, "2025-01")
    before, folder_before = file_md5(path), _folder_hash(repo)

    code, out = _import(str(_export(week, tmp_path / "week.parquet")), *MAP, "--append", "--no-push")
    assert code == 0, out
    after = file_md5(path)
    assert after != before and dvc_repo.month_hashes(repo) == {"2025-01": after}
    assert _folder_hash(repo) != folder_before
    got = pd.read_parquet(path)
    expected = pd.concat([first, week])
    assert len(got) == len(expected) and got["transaction_id"].is_unique
    assert set(got["transaction_id"]) == set(expected["transaction_id"])
    assert got["tx_datetime"].is_monotonic_increasing
    assert (got["label_available_at"] == got["tx_datetime"] + DELAY).all()
    cards = got.set_index("transaction_id")["customer_id"]  # tokenized under the key, as a whole import does
    assert (cards.loc[week["transaction_id"]].to_numpy()
            == tokenize_column(week["customer_id"], KEY.encode()).to_numpy()).all()
    assert _line(out, "2025-01") == ["2025-01", str(len(week)), str(len(got)), "0", "0", after, "appended"]
    assert _quiet(out)


def test_a_week_across_a_month_boundary_appends_to_one_month_and_starts_the_next(
        repo: Path, truth: pd.DataFrame, tmp_path: Path) -> None:
    first, week = _rows(truth, "2025-01-01", "2025-01-29"), _rows(truth, "2025-01-29", "2025-02-05")
    assert _import(str(_export(first, tmp_path / "first.parquet")), *MAP, "--no-push")[0] == 0
    # This bank sends when each label became known: kept as given (UTC), not derived from the delay.
    known = week["tx_datetime"] + pd.Timedelta(hours=30)
    export = tmp_path / "week.csv"
    pd.read_parquet(_export(week, tmp_path / "week.parquet")).assign(
        when=lambda f: f["when"].dt.strftime("%Y-%m-%dT%H:%M:%SZ"),
        known=known.iloc[::-1].dt.strftime("%Y-%m-%dT%H:%M:%SZ").to_numpy()).to_csv(export, index=False)

    code, out = _import(str(export), *MAP, "--map", "known=label_available_at", "--append", "--no-push")
    assert code == 0, out
    pinned = dvc_repo.month_hashes(repo)
    assert pinned == {m: file_md5(_snapshot(repo, m)) for m in ("2025-01", "2025-02")}
    jan, feb = pd.read_parquet(_snapshot(repo, "2025-01")), pd.read_parquet(_snapshot(repo, "2025-02"))
    in_jan = week["tx_datetime"] < pd.Timestamp("2025-02-01", tz="UTC")
    assert set(jan["transaction_id"]) == set(first["transaction_id"]) | set(week.loc[in_jan, "transaction_id"])
    assert set(feb["transaction_id"]) == set(week.loc[~in_jan, "transaction_id"])
    arrival = feb.set_index("transaction_id")["label_available_at"]
    assert (arrival.loc[week.loc[~in_jan, "transaction_id"]].to_numpy() == known[~in_jan].to_numpy()).all()
    assert _line(out, "2025-01") == ["2025-01", str(in_jan.sum()), str(len(jan)), "0", "0", pinned["2025-01"],
                                     "appended"]
    assert _line(out, "2025-02") == ["2025-02", str((~in_jan).sum()), str(len(feb)), "0", "0", pinned["2025-02"],
                                     "new"]


def test_resending_a_week_changes_no_byte_and_counts_its_rows_as_present(
        repo: Path, truth: pd.DataFrame, tmp_path: Path) -> None:
    first, week = _rows(truth, "2025-01-01", "2025-01-20"), _rows(truth, "2025-01-20", "2025-01-27")
    assert _import(str(_export(first, tmp_path / "first.parquet")), *MAP, "--no-push")[0] == 0
    export = _export(week, tmp_path / "week.parquet")
    assert _import(str(export), *MAP, "--append", "--no-push")[0] == 0
    path = _snapshot(repo, "2025-01")
    snapshot, pins = path.read_bytes(), (repo / "data.dvc").read_bytes()

    pd.read_parquet(export).sample(frac=1, random_state=3).to_parquet(export, index=False)  # same rows, new order
    code, out = _import(str(export), *MAP, "--append", "--no-push")
    assert code == 0, out
    assert path.read_bytes() == snapshot and (repo / "data.dvc").read_bytes() == pins
    rows = len(first) + len(week)
    assert _line(out, "2025-01") == ["2025-01", "0", str(rows), str(len(week)), "0", file_md5(path), "unchanged"]
    assert _quiet(out)


def test_the_same_parts_in_the_same_order_give_the_same_bytes(
        template: Path, truth: pd.DataFrame, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FRAUD_STATE_DIR", raising=False)
    monkeypatch.delenv("FRAUD_TOKEN_KEY", raising=False)
    one, two = _rows(truth, "2025-01-01", "2025-01-10"), _rows(truth, "2025-01-10", "2025-01-20")
    tie = one.iloc[[3]].assign(transaction_id="bank-tie")  # a later part's row at the same second as an earlier one
    parts = [_export(one, tmp_path / "one.parquet"), _export(pd.concat([two, tie]), tmp_path / "two.parquet")]
    snapshots = []
    for name in ("a", "b"):
        root = _use_copy(template, tmp_path / name, monkeypatch)
        for part in parts:
            code, out = _import(str(part), *MAP, "--append", "--no-push")
            assert code == 0, out
        snapshots.append(_snapshot(root, "2025-01").read_bytes())
    assert snapshots[0] == snapshots[1]
    got = pd.read_parquet(_snapshot(tmp_path / "b", "2025-01"))
    ids = got["transaction_id"].tolist()
    assert ids.index(one["transaction_id"].iloc[3]) + 1 == ids.index("bank-tie")  # a tie: the earlier row first


def test_a_conflicting_id_stops_the_import_naming_it_and_changes_no_file(
        repo: Path, truth: pd.DataFrame, tmp_path: Path) -> None:
    first, feb = _rows(truth, "2025-01-01", "2025-01-20"), _rows(truth, "2025-02-01", "2025-03-01")
    for name, rows in (("first", first), ("feb", feb)):
        assert _import(str(_export(rows, tmp_path / f"{name}.parquet")), *MAP, "--no-push")[0] == 0
    files = {p: p.read_bytes() for p in [*(repo / P.data.dir).glob("*.parquet"), repo / "data.dvc"]}
    listing = sorted(p.name for p in (repo / "data").iterdir())
    changed = first.iloc[:6].assign(amount=lambda f: f["amount"] + 1.0)  # same ids, other values
    reused = _rows(truth, "2025-01-20", "2025-01-21").iloc[[0]].assign(transaction_id=feb["transaction_id"].iloc[0])
    week = pd.concat([changed, reused, _rows(truth, "2025-01-21", "2025-01-28")])

    code, out = _import(str(_export(week, tmp_path / "week.parquet")), *MAP, "--append", "--no-push")
    assert code == 1
    (error,) = [ln for ln in out.splitlines() if ln.startswith("import failed")]
    assert "week.parquet: 7 row(s) reuse a transaction_id" in error and error.endswith(", ...; nothing was written")
    named = {i for i in [*changed["transaction_id"], reused["transaction_id"].iloc[0]] if i in error}
    assert len(named) == 5  # up to five ids named
    assert {p: p.read_bytes() for p in files} == files
    assert sorted(p.name for p in (repo / "data").iterdir()) == listing  # no staged file left behind
    assert _quiet(out)

    code, out = _import(str(_export(week, tmp_path / "week.parquet")), *MAP, "--append", "--replace")
    assert code == 1 and "--append merges rows into the snapshots and never overwrites one" in out


def test_invalid_rows_are_kept_for_validation_to_quarantine_as_in_a_whole_import(
        repo: Path, truth: pd.DataFrame, tmp_path: Path) -> None:
    first, week = _rows(truth, "2025-01-01", "2025-01-20"), _rows(truth, "2025-01-20", "2025-01-27").copy()
    assert _import(str(_export(first, tmp_path / "first.parquet")), *MAP, "--no-push")[0] == 0
    bad = week["transaction_id"].iloc[[1, 4]].tolist()
    week.loc[week.index[1], "amount"] = -5.0
    week.loc[week.index[4], "amount"] = P.data.max_amount * 2

    code, out = _import(str(_export(week, tmp_path / "week.parquet")), *MAP, "--append", "--no-push")
    assert code == 0, out
    snapshot = read_snapshot(_snapshot(repo, "2025-01"))
    assert len(snapshot) == len(first) + len(week)  # kept in the snapshot, like a whole-month import keeps them
    result = validate_transactions(snapshot, "2025-01", data=P.data)
    assert sorted(result.quarantined["transaction_id"]) == sorted(bad)
    assert _line(out, "2025-01")[1:5] == [str(len(week)), str(len(snapshot)), "0", "2"]


def test_the_pinned_hash_brings_the_appended_bytes_back_from_the_remote(
        repo: Path, truth: pd.DataFrame, tmp_path: Path) -> None:
    first, week = _rows(truth, "2025-01-01", "2025-01-20"), _rows(truth, "2025-01-20", "2025-01-27")
    assert _import(str(_export(first, tmp_path / "first.parquet")), *MAP)[0] == 0
    path = _snapshot(repo, "2025-01")
    old_bytes, old = path.read_bytes(), file_md5(path)
    code, out = _import(str(_export(week, tmp_path / "week.parquet")), *MAP, "--append")
    assert code == 0 and "pushed to the DVC remote" in out, out
    new = dvc_repo.snapshot_version(repo, P.data.dir, "2025-01")  # the data version Dagster and MLflow record
    assert new == file_md5(path) != old

    shutil.rmtree(repo / ".dvc" / "cache")  # only the remote has the bytes now
    assert dvc_repo.restore_version(repo, new, tmp_path / "new.parquet").read_bytes() == path.read_bytes()
    assert dvc_repo.restore_version(repo, old, tmp_path / "old.parquet").read_bytes() == old_bytes  # still there
    assert not list(repo.glob(".restore-*"))
    with pytest.raises(dvc_repo.DvcError, match="pull"):
        dvc_repo.restore_version(repo, "0" * 32, tmp_path / "none.parquet")
    with pytest.raises(ValueError, match="32-digit MD5"):
        dvc_repo.restore_version(repo, "2025-01", tmp_path / "none.parquet")


def _canonical(rows: pd.DataFrame) -> pd.DataFrame:
    raw = rows[["transaction_id", "tx_datetime", "customer_id", "terminal_id", "amount", "is_fraud"]]
    return to_canonical(raw, {}, features=P.features)


def test_core_append_skips_identical_rows_refuses_reused_ids_and_keeps_the_inputs(truth: pd.DataFrame) -> None:
    jan = _canonical(_rows(truth, "2025-01-01", "2025-01-08"))
    old = jan.iloc[:40].drop(columns=["label_available_at"])  # a snapshot from before arrival times were kept
    new = pd.concat([jan.iloc[30:60], jan.iloc[[45]].assign(transaction_id=None)])  # 10 present, 20 new, 1 no id
    copies = old.copy(), new.copy()
    result = append_to_snapshot(old, new, other_ids=["tx-elsewhere"], features=P.features)
    assert (result.appended, result.already_present) == (21, 10)
    assert len(result.frame) == 61 and result.frame["tx_datetime"].is_monotonic_increasing
    assert (result.frame["label_available_at"] == result.frame["tx_datetime"] + DELAY).all()  # the old rows too
    pd.testing.assert_frame_equal(old, copies[0])
    pd.testing.assert_frame_equal(new, copies[1])
    again = append_to_snapshot(result.frame, new, features=P.features)  # the row without an id is present too
    assert (again.appended, again.already_present) == (0, 31)
    pd.testing.assert_frame_equal(again.frame, result.frame)

    clashing = pd.concat([new.iloc[[1]].assign(amount=1e6), new.iloc[[2]].assign(transaction_id="tx-elsewhere")])
    with pytest.raises(IdConflictError, match=r"x: 2 row\(s\) reuse.*: tx-\d+-\d+, tx-elsewhere; nothing") as info:
        append_to_snapshot(old, clashing, other_ids=["tx-elsewhere"], features=P.features, source="x")
    assert info.value.ids == (new["transaction_id"].iloc[1], "tx-elsewhere")
    with pytest.raises(SnapshotError, match=r"2025-01\.parquet: the snapshot's columns .*fraud_scenario"):
        append_to_snapshot(old.assign(fraud_scenario="none"), new, features=P.features, source="2025-01.parquet")
