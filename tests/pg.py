"""A throwaway PostgreSQL cluster from Debian's packages on 127.0.0.1, for the tests that need a real one.

`.ci/run` installs PostgreSQL and sets FRAUD_REQUIRE_POSTGRES=1, so there a missing server fails the test; on a
developer machine without PostgreSQL the test is skipped with the reason.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest


def _pg_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(cmd: list[str]) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:5])} failed ({done.returncode}): {done.stderr.strip()[-800:]}")


def _as_db_user(cmd: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: drop to the `postgres` system user when we are root."""
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


@dataclass(frozen=True)
class PgCluster:
    """A running cluster: its DSN (database ``mlflow``, user ``mlflow``, trust on loopback) and how to stop it."""

    bin_dir: Path
    data: Path
    port: int

    @property
    def dsn(self) -> str:
        return f"postgresql://mlflow@127.0.0.1:{self.port}/mlflow"

    def start(self) -> None:
        opts = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.data} -c fsync=off"
        _run(_as_db_user([str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "-o", opts, "-l",
                          str(self.data / "log"), "-w", "start"]))

    def stop(self) -> None:
        """Fast shutdown: open connections are cut, as when the database server goes away."""
        subprocess.run(_as_db_user([str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop"]),
                       check=False, capture_output=True)


@contextmanager
def pg_cluster() -> Iterator[PgCluster]:
    """Init, start, yield, stop and remove a cluster (skip or fail as the module says when there is no server)."""
    bin_dir = _pg_bin()
    if bin_dir is None:
        if os.environ.get("FRAUD_REQUIRE_POSTGRES") == "1":
            pytest.fail("PostgreSQL server binaries not found under /usr/lib/postgresql (apt-get install postgresql)")
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql); .ci/run installs it")
    # Not under pytest's root-only temp folder: the `postgres` user must be able to reach it.
    data = Path(tempfile.mkdtemp(prefix="fraud-pg-"))
    if os.geteuid() == 0:
        pw = pwd.getpwnam("postgres")
        os.chown(data, pw.pw_uid, pw.pw_gid)
    cluster = PgCluster(bin_dir, data, _free_port())
    _run(_as_db_user([str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", "mlflow", "--no-sync"]))
    cluster.start()
    try:
        _run(_as_db_user([str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(cluster.port), "-U", "mlflow",
                          "mlflow"]))
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(data, ignore_errors=True)
