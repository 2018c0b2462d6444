"""Thin glue over the ``dvc`` command: pin the snapshot folder in ``data.dvc``, push, pull, read data versions
and fetch the bytes of one back by its hash.

The snapshot folder (``params.yaml`` ``data.dir``) is tracked by ``data.dvc`` at the repository root; the
DVC hash of a month's file (the MD5 of its bytes) is that month's data version. The default remote
``local`` has the relative url ``../.state/dvc-remote`` (DVC resolves it against ``.dvc/``), so it works
in any clone; when ``$FRAUD_STATE_DIR`` moves the state folder, the git-ignored ``.dvc/config.local``
points the remote there instead.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

from fraud_assets.core.lineage import dvc_pinned_hashes, file_md5
from fraud_assets.core.months import check_month, snapshot_path
from fraud_assets.settings import TELEMETRY_OFF

DVC_FILE = "data.dvc"
REMOTE = "local"
REMOTE_URL = ".state/dvc-remote"  # relative to the repository root; stored as ../.state/dvc-remote


class DvcError(RuntimeError):
    """A ``dvc`` command failed, or DVC's pins and the files on disk disagree."""


class SnapshotChangedError(DvcError):
    """A snapshot's bytes differ from what ``data.dvc`` pins."""


def run_dvc(root: Path, *args: str) -> str:
    """Run ``dvc <args>`` in ``root`` with the current interpreter's DVC; return stdout, raise with stderr."""
    env = {**os.environ, **TELEMETRY_OFF}
    bin_dir = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join([bin_dir, env.get("PATH", "")])  # stage commands call this venv's python
    proc = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=root, env=env,
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        detail = (proc.stderr.strip() or proc.stdout.strip())[-4000:]
        raise DvcError(f"`dvc {' '.join(args)}` failed in {root} (exit {proc.returncode}): {detail}")
    return proc.stdout


def ensure_repo(root: Path) -> None:
    """Initialise DVC in ``root`` if needed, with the default remote ``local`` and its folder."""
    root = Path(root)
    if not (root / ".dvc").is_dir():
        run_dvc(root, "init", *(() if (root / ".git").exists() else ("--no-scm",)))
        run_dvc(root, "config", "core.analytics", "false")
        run_dvc(root, "config", "core.check_update", "false")
    if REMOTE not in _config(root)["remote"]:
        run_dvc(root, "remote", "add", "--default", REMOTE, REMOTE_URL)
    state = os.environ.get("FRAUD_STATE_DIR")
    if state:
        override = str(Path(state).resolve() / "dvc-remote")
        if _remote_dir(root) != Path(override):
            run_dvc(root, "remote", "modify", "--local", REMOTE, "url", override)
    _remote_dir(root).mkdir(parents=True, exist_ok=True)


def pin_snapshots(root: Path, data_dir: str, push: bool = True) -> dict[str, str]:
    """``dvc add`` the snapshot folder ``data_dir`` (relative to ``root``) into ``data.dvc`` (and push it);
    return ``{month: md5}``."""
    root = Path(root)
    data_dir = root / data_dir
    if not any(data_dir.glob("*.parquet")):
        raise DvcError(f"no snapshots to pin in {data_dir}: run `fraud simulate` or `fraud import` first")
    rel = data_dir.relative_to(root).as_posix()
    dvc_file = root / DVC_FILE
    if not dvc_file.exists():  # `dvc add` has no --file: a stub makes it update data.dvc at the root
        dvc_file.write_text(f"outs:\n- path: {rel}\n")
    run_dvc(root, "add", rel)
    if push:
        run_dvc(root, "push", DVC_FILE)
    hashes = month_hashes(root)
    if not hashes:
        raise DvcError(f"`dvc add {rel}` left no manifest in the cache for {dvc_file}")
    return hashes


def push(root: Path) -> None:
    """Push what ``data.dvc`` pins to the default remote."""
    run_dvc(Path(root), "push", DVC_FILE)


def pull(root: Path) -> None:
    """Fetch what ``data.dvc`` pins from the remote and check it out into the snapshot folder."""
    run_dvc(Path(root), "pull", DVC_FILE)


def restore_version(root: Path, md5: str, dest: Path) -> Path:
    """Fetch the file whose DVC hash is ``md5`` (a month's data version) from the remote into ``dest``.

    A temporary ``.dvc`` file in ``root`` pins that hash and ``dvc pull`` brings its bytes back (from the local
    cache when they are still there), so a data version recorded in Dagster or MLflow yields the exact snapshot
    it names even after the snapshot folder moved on.

    Raises:
        ValueError: ``md5`` is not an MD5 hex digest.
        DvcError: neither the cache nor the remote has those bytes.
    """
    if not re.fullmatch(r"[0-9a-f]{32}", md5):
        raise ValueError(f"a data version is a 32-digit MD5 hex digest, got {md5!r}")
    root, dest = Path(root), Path(dest)
    with tempfile.TemporaryDirectory(dir=root, prefix=".restore-") as tmp:
        pin = Path(tmp) / f"{md5}.dvc"
        pin.write_text(f"outs:\n- md5: {md5}\n  path: {md5}\n  hash: md5\n")
        run_dvc(root, "pull", pin.relative_to(root).as_posix())
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(Path(tmp) / md5, dest)  # a copy even when the cache links files (symlink, hardlink)
    return dest


def repro(root: Path, *targets: str) -> str:
    """``dvc repro`` the pipeline in ``dvc.yaml`` (stage commands run with this interpreter first on PATH)."""
    return run_dvc(Path(root), "repro", *targets)


def month_hashes(root: Path) -> dict[str, str]:
    """``{month: md5}`` that ``data.dvc`` pins now (empty when nothing is pinned).

    Raises:
        DvcError: ``data.dvc`` pins a folder whose manifest is not in the local cache (run ``dvc pull``).
    """
    root = Path(root)
    dvc_file = root / DVC_FILE
    pinned = dvc_pinned_hashes(dvc_file, _cache_dir(root))
    if not pinned and _pins_a_folder(dvc_file):
        raise DvcError(f"{DVC_FILE} pins a snapshot folder whose manifest is not in the DVC cache "
                       f"{_cache_dir(root)}: run `dvc pull {DVC_FILE}` (or re-create the data and `fraud pin`)")
    return {Path(rel).stem: md5 for rel, md5 in pinned.items() if rel.endswith(".parquet")}


def snapshot_version(root: Path, data_dir: str, month: str) -> str:
    """The DVC hash of ``month``'s snapshot: its data version, checked against what ``data.dvc`` pins.

    Raises:
        SnapshotChangedError: the file's bytes changed since it was pinned.
        FileNotFoundError: there is no snapshot for ``month``.
    """
    root = Path(root)
    path = snapshot_path(root / data_dir, check_month(month))
    if not path.exists():
        raise FileNotFoundError(f"no snapshot for {month}: {path}")
    actual = file_md5(path)
    pinned = month_hashes(root).get(month)
    if pinned is None:
        warnings.warn(f"{path.name} is not pinned by {DVC_FILE} yet; using its MD5 {actual} as data version "
                      f"(run `fraud pin` or `dvc add {path.parent.relative_to(root).as_posix()}`)",
                      stacklevel=2)
        return actual
    if actual != pinned:
        raise SnapshotChangedError(
            f"snapshot {path} changed since it was pinned: {DVC_FILE} has md5 {pinned}, the file has {actual}; "
            f"run `fraud pin` (or `dvc add {path.parent.relative_to(root).as_posix()}`) to pin the new bytes, "
            f"or `dvc checkout {DVC_FILE}` to restore the pinned ones")
    return pinned


def _config(root: Path) -> dict:
    from dvc.config import Config

    return Config(dvc_dir=str(root / ".dvc"))


def _cache_dir(root: Path) -> Path:
    configured = _config(root)["cache"].get("dir") if (root / ".dvc").is_dir() else None
    return Path(configured) if configured else root / ".dvc" / "cache"


def _remote_dir(root: Path) -> Path:
    url = _config(root)["remote"][REMOTE]["url"]
    if "://" in url:
        raise DvcError(f"remote {REMOTE!r} is not a local folder: {url}")
    return Path(url)


def _pins_a_folder(dvc_file: Path) -> bool:
    import yaml

    if not dvc_file.exists():
        return False
    outs = (yaml.safe_load(dvc_file.read_text()) or {}).get("outs") or []
    return bool(outs) and str(outs[0].get("md5", "")).endswith(".dir")
