"""DVC glue in a throwaway git+DVC repository: pin, push, lose everything, pull, and the same bytes come back."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from fraud_assets.adapters import dvc_repo
from fraud_assets.core.lineage import dvc_pinned_hashes, file_md5
from fraud_assets.params import load_params
from tests.conftest import write_small_project

MONTH = "2025-01"
DATA_DIR = load_params().data.dir


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The small project as its own git repository with DVC and a remote inside it (built once)."""
    root = write_small_project(tmp_path_factory.mktemp("dvc-template") / "repo", months=2, n_customers=120)
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("FRAUD_STATE_DIR", raising=False)
        dvc_repo.ensure_repo(root)
    return root


@pytest.fixture
def repo(template: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh copy of the template repository (the remote url is relative, so it follows the copy)."""
    monkeypatch.delenv("FRAUD_STATE_DIR", raising=False)
    root = tmp_path / "repo"
    shutil.copytree(template, root, symlinks=True)
    return root


def _snapshot(root: Path, month: str = MONTH) -> Path:
    return root / "data" / "transactions" / f"{month}.parquet"


def test_ensure_repo_makes_a_relative_remote_inside_the_repo(repo: Path) -> None:
    config = (repo / ".dvc" / "config").read_text()
    assert "url = ../.state/dvc-remote" in config
    assert str(repo) not in config
    assert (repo / ".state" / "dvc-remote").is_dir()
    dvc_repo.ensure_repo(repo)  # idempotent: a second call neither fails nor adds a second remote
    assert (repo / ".dvc" / "config").read_text() == config


def test_pin_push_delete_pull_gives_back_the_same_bytes(repo: Path) -> None:
    data_dir = repo / "data" / "transactions"
    before = {p.name: p.read_bytes() for p in sorted(data_dir.glob("*.parquet"))}
    pinned = dvc_repo.pin_snapshots(repo, DATA_DIR, push=True)
    assert pinned == {Path(name).stem: file_md5(data_dir / name) for name in before}
    assert (repo / "data.dvc").exists() and not (repo / "data" / "transactions.dvc").exists()

    shutil.rmtree(data_dir)
    shutil.rmtree(repo / ".dvc" / "cache")
    with pytest.raises(dvc_repo.DvcError, match="dvc pull"):  # data.dvc holds only the folder's hash
        dvc_repo.month_hashes(repo)

    dvc_repo.pull(repo)
    after = {p.name: p.read_bytes() for p in sorted(data_dir.glob("*.parquet"))}
    assert after == before
    assert dvc_repo.month_hashes(repo) == pinned
    assert dvc_repo.snapshot_version(repo, DATA_DIR, MONTH) == pinned[MONTH]


def test_dvc_pinned_hashes_reads_each_month_from_the_manifest(repo: Path) -> None:
    dvc_repo.pin_snapshots(repo, DATA_DIR, push=False)
    hashes = dvc_pinned_hashes(repo / "data.dvc", repo / ".dvc" / "cache")
    assert hashes[f"{MONTH}.parquet"] == file_md5(_snapshot(repo))
    assert set(hashes) == {"2025-01.parquet", "2025-02.parquet"}


def test_snapshot_version_raises_when_the_file_changed_after_pinning(repo: Path) -> None:
    pinned = dvc_repo.pin_snapshots(repo, DATA_DIR, push=False)
    path = _snapshot(repo)
    frame = pd.read_parquet(path)
    frame.iloc[:-1].to_parquet(path, index=False)  # one row fewer: new bytes, same month
    with pytest.raises(dvc_repo.SnapshotChangedError, match="changed since it was pinned") as info:
        dvc_repo.snapshot_version(repo, DATA_DIR, MONTH)
    assert pinned[MONTH] in str(info.value) and "fraud pin" in str(info.value)
    assert dvc_repo.snapshot_version(repo, DATA_DIR, "2025-02") == pinned["2025-02"]  # untouched month still fine


def test_snapshot_version_falls_back_to_the_file_md5_with_a_warning_before_pinning(repo: Path) -> None:
    with pytest.warns(UserWarning, match="not pinned"):
        version = dvc_repo.snapshot_version(repo, DATA_DIR, MONTH)
    assert version == file_md5(_snapshot(repo))


def test_a_failing_dvc_command_raises_with_dvcs_own_message(repo: Path) -> None:
    with pytest.raises(dvc_repo.DvcError, match="does-not-exist"):
        dvc_repo.run_dvc(repo, "add", "data/does-not-exist")
