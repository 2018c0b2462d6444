"""Faults under load: the service keeps answering and loses nothing it answered.

One `fraud serve` process (started as a user starts it, HAProxy ingress, one replica) for the module, on a real
MLflow server (`mlflow server`, SQLite backend, artifacts served by it) and a SQLite online store; the prediction
log lives on a small tmpfs of its own so its disk can fill up (root only: without it that test is skipped). Each
test drives 4 concurrent clients of distinct simulated transactions (real cards and terminals, increasing
timestamps) plus a `/health` probe every 100 ms, injects one fault, and counts: answers by status, transport
errors, transactions answered 200 that are missing from the store or the prediction log afterwards. The tests
assert outcomes, never latencies; the latencies are measured and written to `$FRAUD_FAULTS_REPORT` when set
(the README's "faults survived" table). Order matters and is fixed by the file: the last test stops the service.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import psutil
import pytest

from fraud_assets.adapters import mlflow_registry
from fraud_assets.adapters.online_store import open_store
from fraud_assets.core.simulate import simulate_months
from fraud_assets.params import load_params
from tests.serving.test_serving_http import _register, _trained_booster

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
KEY = "faults-key-" + "y" * 24
MODEL, ALIAS = "fraud-detector", "champion"
CLIENTS = 4
REPORT: dict[str, Any] = {}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_http(url: str, timeout_s: float, proc: subprocess.Popen | None = None, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = log.read_text()[-3000:] if log is not None and log.exists() else ""
            raise RuntimeError(f"process exited with {proc.returncode} before {url} answered:\n{tail}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    tail = log.read_text()[-3000:] if log is not None and log.exists() else ""
    raise TimeoutError(f"{url} did not answer 200 within {timeout_s} s:\n{tail}")


def _stop(proc: subprocess.Popen, timeout_s: float = 60) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@dataclass
class Service:
    url: str
    proc: subprocess.Popen
    log: Path
    mlflow: subprocess.Popen | None
    store: str  # the online store's location: a SQLite path or a PostgreSQL URL
    prediction_log: str  # the same for the prediction log
    tmpfs: Path | None
    traffic: list[dict[str, Any]]
    cursor: int = 0
    answered: set[str] = field(default_factory=set)  # every transaction answered 200 so far, by any test

    def next_transactions(self, n: int) -> list[dict[str, Any]]:
        if self.cursor + n > len(self.traffic):
            raise RuntimeError("the fault tests ran out of simulated traffic")
        out = self.traffic[self.cursor:self.cursor + n]
        self.cursor += n
        return out

    def ready(self) -> dict[str, Any]:
        return httpx.get(f"{self.url}/ready", timeout=5).json()


def _mount_tmpfs(folder: Path, size_mb: int) -> bool:
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(folder)],
                          capture_output=True, text=True)
    return done.returncode == 0


def _traffic_and_model(tmp: Path, store_location: str) -> tuple[Path, list[dict[str, Any]], Any]:
    """A project folder with the fault tests' params, the store seeded with two simulated months, the next two
    months as traffic (distinct ids, time order) and a booster trained on them."""
    project = tmp / "project"
    project.mkdir()
    params = load_params(overrides={"serve.min_replicas": 1, "serve.max_replicas": 1, "serve.reload_interval_s": 0.5,
                                    "serve.store_timeout_s": 0.1, "serve.store_retry_s": 0.5,
                                    "serve.prediction_log_max_rows": 20_000})
    params.write(project / "params.yaml")
    months = simulate_months(params.data, "2025-01", 4)
    open_store(store_location).seed(pd.concat([months["2025-01"], months["2025-02"]], ignore_index=True))
    frame = pd.concat([months["2025-03"], months["2025-04"]], ignore_index=True).sort_values("tx_datetime")
    traffic = [{"transaction_id": f"live-{r.transaction_id}", "tx_datetime": r.tx_datetime.isoformat(),
                "customer_id": str(r.customer_id), "terminal_id": str(r.terminal_id), "amount": float(r.amount)}
               for r in frame.itertuples()]
    return project, traffic, _trained_booster(months)


@contextmanager
def running_service(tmp: Path, store_location: str, mlflow_server: bool = True, log_disk_mb: int | None = None,
                    prediction_log: str | None = None) -> Iterator[Service]:
    """`fraud serve` on a fresh project, its champion in a real MLflow server (or a SQLite tracking store)."""
    project, traffic, booster = _traffic_and_model(tmp, store_location)
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    env.pop("FRAUD_INSECURE_LOCAL", None)
    mlflow = None
    tmpfs, mounted = tmp / "log-disk", False
    if log_disk_mb is not None:
        mounted = _mount_tmpfs(tmpfs, log_disk_mb)
    tmpfs.mkdir(exist_ok=True)
    proc = None
    try:
        if mlflow_server:
            mlflow_port, mlflow_log = _free_port(), tmp / "mlflow.log"
            mlflow = subprocess.Popen(
                [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(mlflow_port),
                 "--backend-store-uri", f"sqlite:///{tmp / 'mlflow.db'}", "--artifacts-destination",
                 str(tmp / "artifacts"), "--workers", "1"],
                stdout=mlflow_log.open("wb"), stderr=subprocess.STDOUT, env=env, start_new_session=True)
            tracking, artifact_root = f"http://127.0.0.1:{mlflow_port}", "mlflow-artifacts:"
            _wait_http(f"{tracking}/health", 90, mlflow, mlflow_log)
        else:
            tracking, artifact_root = f"sqlite:///{tmp / 'mlflow.db'}", (tmp / "artifacts").as_uri()
        version = _register(tracking, artifact_root, booster, {"threshold": "0.5"})
        mlflow_registry.client_for(tracking).set_registered_model_alias(MODEL, ALIAS, version)
        port, log = _free_port(), tmp / "serve.log"
        prediction_log = prediction_log or str(tmpfs / "predictions.sqlite")
        serve_env = {**env, "FRAUD_API_KEY": KEY, "MLFLOW_TRACKING_URI": tracking, "FRAUD_PROJECT_ROOT": str(project),
                     "FRAUD_STATE_DIR": str(tmp / "state"), "FRAUD_ONLINE_STORE": store_location,
                     "FRAUD_PREDICTION_LOG": prediction_log}
        proc = subprocess.Popen([str(Path(sys.executable).with_name("fraud")), "serve", "--port", str(port)],
                                cwd=ROOT, env=serve_env, stdout=log.open("wb"), stderr=subprocess.STDOUT,
                                start_new_session=True)
        url = f"http://127.0.0.1:{port}"
        _wait_http(f"{url}/ready", 240, proc, log)
        yield Service(url, proc, log, mlflow, store_location, prediction_log, tmpfs if mounted else None, traffic)
    finally:
        if proc is not None:
            _stop(proc)
        if mlflow is not None:
            _stop(mlflow)
        if mounted:
            subprocess.run(["umount", "-l", str(tmpfs)], capture_output=True)


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    tmp = tmp_path_factory.mktemp("faults")
    try:
        with running_service(tmp, str(tmp / "online_store.sqlite"), log_disk_mb=48) as served:
            yield served
    finally:
        report = os.environ.get("FRAUD_FAULTS_REPORT")
        if report:  # the README's table; the PostgreSQL module adds its row
            path = Path(report)
            known = json.loads(path.read_text()) if path.exists() else {}
            path.write_text(json.dumps({**known, **REPORT}, indent=2) + "\n")


@dataclass
class Outcome:
    statuses: Counter = field(default_factory=Counter)  # HTTP status or exception name -> count
    latencies_ms: list[float] = field(default_factory=list)  # of 200 answers
    answered: list[str] = field(default_factory=list)  # ids answered 200
    degraded: int = 0
    health: Counter = field(default_factory=Counter)
    health_ms: list[float] = field(default_factory=list)
    samples: dict[int, str] = field(default_factory=dict)  # the first body of each non-200 status

    def summary(self) -> dict[str, Any]:
        lat = np.array(self.latencies_ms or [0.0])
        health = np.array(self.health_ms or [0.0])
        return {"requests": sum(self.statuses.values()), "statuses": dict(self.statuses),
                "degraded_answers": self.degraded, "p50_ms": round(float(np.percentile(lat, 50)), 2),
                "p99_ms": round(float(np.percentile(lat, 99)), 2), "max_ms": round(float(lat.max()), 1),
                "health": dict(self.health), "health_max_ms": round(float(health.max()), 1),
                "error_samples": self.samples}


class Load:
    """Clients sending distinct transactions and a /health probe, in a thread, until stopped (or a bound)."""

    def __init__(self, service: Service, max_s: float = 60.0) -> None:
        self.service, self.max_s, self.outcome = service, max_s, Outcome()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> Outcome:
        self._stop.set()
        self._thread.join(self.max_s + 30)
        self.service.answered.update(self.outcome.answered)
        return self.outcome

    async def _main(self) -> None:
        limits = httpx.Limits(max_connections=CLIENTS + 1, max_keepalive_connections=CLIENTS + 1)
        async with httpx.AsyncClient(base_url=self.service.url, timeout=10.0, limits=limits,
                                     headers={"x-api-key": KEY}) as http:
            deadline = time.monotonic() + self.max_s
            await asyncio.gather(*(self._client(http, deadline) for _ in range(CLIENTS)), self._probe(http, deadline))

    async def _client(self, http: httpx.AsyncClient, deadline: float) -> None:
        o = self.outcome
        while not self._stop.is_set() and time.monotonic() < deadline:
            (tx,) = self.service.next_transactions(1)
            started = time.perf_counter()
            try:
                response = await http.post("/predict", json=tx)
            except httpx.TransportError as exc:
                o.statuses[type(exc).__name__] += 1
                await asyncio.sleep(0.05)
                continue
            o.statuses[response.status_code] += 1
            if response.status_code == 200:
                o.latencies_ms.append((time.perf_counter() - started) * 1000)
                o.answered.append(tx["transaction_id"])
                o.degraded += bool(response.json().get("degraded"))
            else:
                o.samples.setdefault(response.status_code, response.text[:200])
                await asyncio.sleep(0.05)

    async def _probe(self, http: httpx.AsyncClient, deadline: float) -> None:
        o = self.outcome
        while not self._stop.is_set() and time.monotonic() < deadline:
            started = time.perf_counter()
            try:
                o.health[(await http.get("/health", timeout=2.0)).status_code] += 1
            except httpx.TransportError as exc:
                o.health[type(exc).__name__] += 1
            o.health_ms.append((time.perf_counter() - started) * 1000)
            await asyncio.sleep(0.1)


def _ids_in(location: str, table: str, ids: set[str]) -> set[str]:
    """Which of ``ids`` are in ``table`` (``transactions`` of the store, ``predictions`` of the log) at ``location``."""
    wanted = list(ids)
    found: set[str] = set()
    if location.startswith("postgresql://"):
        import psycopg

        with psycopg.connect(location) as conn:
            for i in range(0, len(wanted), 5000):
                found |= {r[0] for r in conn.execute(f"SELECT transaction_id FROM {table} WHERE transaction_id = "
                                                     "ANY(%s)", (wanted[i:i + 5000],))}
        return found
    with sqlite3.connect(f"file:{location}?mode=ro", uri=True, timeout=30) as conn:
        for i in range(0, len(wanted), 500):
            part = wanted[i:i + 500]
            found |= {r[0] for r in conn.execute(
                f"SELECT transaction_id FROM {table} WHERE transaction_id IN ({','.join('?' * len(part))})", part)}
    return found


def _settled(service: Service, timeout_s: float = 60) -> dict[str, Any]:
    """/ready once nothing waits for the store or the log (the log flushes every 0.25 s)."""
    deadline = time.monotonic() + timeout_s
    while True:
        ready = service.ready()
        store, log = ready["store"], ready["prediction_log"]
        if not (store["pending_rows"] or store["pending_labels"] or log["queued"] or log["retrying"]):
            time.sleep(0.6)
            return service.ready()
        if time.monotonic() > deadline:
            raise AssertionError(f"still waiting after {timeout_s} s: {ready}")
        time.sleep(0.2)


def _lost(service: Service, ids: list[str]) -> tuple[int, int]:
    wanted = set(ids)
    return (len(wanted - _ids_in(service.store, "transactions", wanted)),
            len(wanted - _ids_in(service.prediction_log, "predictions", wanted)))


def _report(name: str, outcome: Outcome, **extra: Any) -> None:
    REPORT[name] = {**outcome.summary(), **extra}


def test_the_store_write_locked_by_another_process_for_6_s(service: Service) -> None:
    """What a Dagster seed or prune does: SQLite's write lock held by another process. No 500, /health keeps
    answering, no answer degraded (reads still work; appends wait in the backlog, where reads see them), and every
    answered transaction reaches the store afterwards."""
    locker = subprocess.Popen([sys.executable, "-c", (
        "import sqlite3, sys, time\n"
        f"c = sqlite3.connect({service.store!r}, isolation_level=None, timeout=30)\n"
        "c.execute('BEGIN IMMEDIATE'); print('locked', flush=True); time.sleep(6); c.execute('ROLLBACK')\n")],
        stdout=subprocess.PIPE, text=True)
    with Load(service, max_s=30) as load:
        time.sleep(1.0)
        assert locker.stdout is not None and locker.stdout.readline().strip() == "locked"
        during = service.ready()["store"]
        assert locker.wait(30) == 0
        time.sleep(2.0)
    outcome = load.outcome
    ready = _settled(service)
    lost_store, lost_log = _lost(service, outcome.answered)
    _report("sqlite_write_lock_6s", outcome, lost_store=lost_store, lost_log=lost_log,
            written_late=ready["store"]["written_late"])
    assert outcome.statuses[200] > 100 and set(outcome.statuses) == {200}, outcome.statuses
    assert set(outcome.health) == {200}, outcome.health
    assert during["failed_writes"] >= 1 and ready["store"]["written_late"] > 0
    assert (lost_store, lost_log) == (0, 0) and ready["store"]["dropped_rows"] == 0


def test_the_prediction_log_disk_full(service: Service) -> None:
    """The log's disk fills up: scoring goes on, the log's rows wait (bounded by serve.prediction_log_max_rows) and
    are written once there is room again; what could not wait is counted."""
    if service.tmpfs is None:
        pytest.skip("needs root to mount a small tmpfs for the prediction log")
    filler = service.tmpfs / "filler"
    subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=1M", "count=64"], capture_output=True)  # to the brim
    try:
        with Load(service, max_s=30) as load:
            deadline = time.monotonic() + 20
            while service.ready()["prediction_log"]["error"] is None and time.monotonic() < deadline:
                time.sleep(0.2)
            time.sleep(2.0)
            full = service.ready()["prediction_log"]
    finally:
        filler.unlink(missing_ok=True)
    outcome = load.outcome
    ready = _settled(service)
    lost_store, lost_log = _lost(service, outcome.answered)
    log = ready["prediction_log"]
    _report("prediction_log_disk_full", outcome, lost_store=lost_store, lost_log=lost_log, log_dropped=log["dropped"])
    assert outcome.statuses[200] > 100 and set(outcome.statuses) == {200}, outcome.statuses
    assert full["error"] is not None and "full" in full["error"], full
    assert lost_store == 0 and lost_log == log["dropped"]  # every row written late, or counted


def _replica(service: Service) -> psutil.Process:
    for child in psutil.Process(service.proc.pid).children(recursive=True):
        try:
            if "ServeReplica" in " ".join(child.cmdline()) or child.name().startswith("ray::ServeReplica"):
                return child
        except psutil.Error:
            continue
    raise AssertionError("no replica process under the service")


def test_the_replica_killed_with_sigkill(service: Service) -> None:
    """Serve starts a new replica; requests in flight and during the restart are counted: the connection drops, or
    HAProxy answers a quick 503 with a JSON reason and Retry-After (Ray's template would say 500), never a 500;
    every transaction answered 200 is in the store."""
    replica = _replica(service)
    with Load(service, max_s=150) as load:
        time.sleep(1.5)
        killed_at = len(load.outcome.answered)
        os.kill(replica.pid, signal.SIGKILL)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if len(load.outcome.answered) > killed_at + 200 and _replica(service).pid != replica.pid:
                break
            time.sleep(0.5)
        time.sleep(1.0)
    outcome = load.outcome
    _settled(service)
    lost_store, lost_log = _lost(service, outcome.answered)
    _report("replica_sigkill", outcome, lost_store=lost_store, lost_log=lost_log)
    assert len(outcome.answered) > killed_at + 200, outcome.statuses  # it came back
    assert set(outcome.statuses) <= {200, 503, "RemoteProtocolError", "ReadError", "ConnectError"}, outcome.statuses
    assert "retry" in outcome.samples.get(503, "retry")
    assert lost_store == 0
    assert lost_log <= 2 * CLIENTS * 100  # only what the killed process held for its next flush (0.25 s)


def test_the_mlflow_server_stopped(service: Service) -> None:
    """Serving goes on with the loaded version; /ready stays 200 and says why it cannot follow the alias."""
    version = service.ready()["model_version"]
    assert service.mlflow is not None
    _stop(service.mlflow)
    with Load(service, max_s=60) as load:
        deadline = time.monotonic() + 45
        while service.ready()["error"] is None and time.monotonic() < deadline:
            time.sleep(0.5)
        time.sleep(2.0)
    outcome = load.outcome
    ready = _settled(service)
    lost_store, lost_log = _lost(service, outcome.answered)
    _report("mlflow_stopped", outcome, lost_store=lost_store, lost_log=lost_log, ready_error=ready["error"])
    assert outcome.statuses[200] > 100 and set(outcome.statuses) == {200}, outcome.statuses
    assert ready["status"] == "ready" and ready["model_version"] == version and ready["error"], ready
    assert (lost_store, lost_log) == (0, 0)


def test_sigterm_drains_and_flushes(service: Service) -> None:
    """SIGTERM to `fraud serve` under load: it stops within a bound, and every transaction answered 200 is in the
    prediction log and the store afterwards (the replica flushes both on its way out)."""
    with Load(service, max_s=60) as load:
        time.sleep(2.0)
        started = time.monotonic()
        service.proc.send_signal(signal.SIGTERM)
        code = service.proc.wait(60)
        stopped_s = time.monotonic() - started
    outcome = load.outcome
    lost_store, lost_log = _lost(service, outcome.answered)
    _report("sigterm", outcome, lost_store=lost_store, lost_log=lost_log, stopped_s=round(stopped_s, 1))
    assert code == 0 and outcome.statuses[200] > 50
    assert 500 not in outcome.statuses, outcome.statuses
    assert (lost_store, lost_log) == (0, 0)
