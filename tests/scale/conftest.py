"""A real Ray cluster of three nodes on this machine for tests/scale/, started the way a team starts one.

One head (1 logical CPU) and two worker nodes (2 each), each its own ``ray start`` (its own raylet, object store of
``OBJECT_STORE_BYTES``, node id and ``--temp-dir`` under pytest's tmp path), with token authentication on every node
(``RAY_AUTH_MODE=token`` and a random ``RAY_AUTH_TOKEN``, handed to clients through :attr:`RayCluster.env` only). The
nodes start with the environment the README's cluster path gives them: ``eval "$(fraud serve-env)"`` (the ingress
switches, HAProxy ingress), ``FRAUD_API_KEY`` and ``MLFLOW_TRACKING_URI``; on top, what a second Ray on a shared
machine needs: HAProxy's files and stats/metrics ports of the cluster's own, free ports picked at run time for every
listener Ray would put on a fixed one, and the cluster's state (online store, prediction log, MLflow) in tmp.

Ray 2.60's ``ray start`` rewrites ``--node-ip-address 127.0.0.1`` (and a ``127.0.0.1`` ``--address``) to the
machine's routable address (``services.resolve_ip_for_localhost``), so the nodes register under that address and
their GCS, raylets and object managers listen on every interface, as on any Ray node (README "Services"); what this
cluster binds to 127.0.0.1 is the dashboard and HAProxy's listeners (replicas bind the deployed config's
``http_options.host``). :attr:`RayCluster.address` ``127.0.0.1:<port>`` reaches the GCS all the same (Ray
canonicalises it to the node address).

Nothing outside the cluster finds it: ``ray start --temp-dir`` writes its bootstrap file (``ray_current_cluster``,
what ``ray.init()`` without an address reads) into that temp dir, not the default one; ``ray.init(address="local")``
always starts a Ray of its own. ``ray stop`` would stop every Ray on the machine (it matches process names), so the
cluster is stopped by PID instead: its processes carry :data:`MARKER` in their environment (inherited from ``ray
start`` by the raylets, GCS, workers and the HAProxy Serve starts) or descend from one that does (the agents), and
only those are signalled.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import httpx
import psutil
import pytest

from fraud_assets.settings import TELEMETRY_OFF
from tests.conftest import write_small_project

BIN = Path(sys.executable).parent  # the venv's `ray`, `serve` and `fraud`: the nodes run this interpreter
MARKER = "FRAUD_SCALE_CLUSTER"  # in every cluster process's environment: its value names this cluster
HEAD_CPUS, WORKER_CPUS = 1, 2  # 5 logical CPUs on 2 real cores: Ray Train's 2 one-CPU workers + its controller fit
WORKERS = ("worker-1", "worker-2")
OBJECT_STORE_BYTES = 600 * 1024**2
START_TIMEOUT_S = 120.0  # per `ray start` and for all nodes to be alive
STOP_GRACE_S = 10.0
# HAProxy refuses a socket path longer than this; Ray 2.60 puts each node's HAProxy files in a folder named by its
# 56-character node id inside the configured one, so that folder is a short one in the system temp dir, not in tmp_path.
HAPROXY_SOCKET_MAX = 97
# What a client of some other Ray may carry in its environment and the nodes must not inherit.
CLIENT_ONLY = ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_API_SERVER_ADDRESS")


class RayCluster(NamedTuple):
    """A running cluster, as a client reaches it."""

    address: str  # the GCS address "127.0.0.1:<port>" for ray.init(address=...) / compute.address
    dashboard: str  # "http://127.0.0.1:<port>" for `serve deploy -a` / the jobs API
    env: dict[str, str]  # what a client process needs to talk to it: RAY_AUTH_MODE, RAY_AUTH_TOKEN
    nodes: int  # alive nodes (3)


class ClusterSettings(NamedTuple):
    """What the cluster's processes read from their environment when they start (decided before the nodes start)."""

    project: Path  # FRAUD_PROJECT_ROOT: a small project whose params.yaml `fraud serve-env` and the replicas read
    tracking_uri: str  # MLFLOW_TRACKING_URI (a SQLite store in tmp)
    artifact_root: str  # FRAUD_MLFLOW_ARTIFACT_ROOT
    api_key: str  # FRAUD_API_KEY, what the replicas compare `x-api-key` with
    state_dir: Path  # FRAUD_STATE_DIR: the replicas' online store and prediction log


def free_port() -> int:
    """A TCP port nothing listens on right now (on 127.0.0.1)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def client_env(cluster: RayCluster) -> Iterator[None]:
    """This process's environment with the cluster's client variables; the previous values restored at exit.

    Ray reads the authentication mode and token once per process (at import, and from the first token found, such
    as another test's local Ray or ``~/.ray/auth_token``): both are reloaded from the environment on the way in and
    on the way out, so a ``ray.init(address=cluster.address)`` inside sends this cluster's token, and a local Ray
    started after it is what it would have been.
    """
    saved = {name: os.environ.get(name) for name in cluster.env}
    os.environ.update(cluster.env)
    _reload_ray_auth()
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        _reload_ray_auth()


def _reload_ray_auth() -> None:
    from ray._raylet import AuthenticationTokenLoader, Config

    Config.initialize("")  # what Ray's own _enable_token_auth does after setting RAY_AUTH_MODE
    AuthenticationTokenLoader.instance().reset_cache()


@contextlib.contextmanager
def connected(cluster: RayCluster, **init_kwargs: Any) -> Iterator[None]:
    """This process as a quiet driver of ``cluster`` (``ray.init(address=cluster.address)`` inside
    :func:`client_env`, no worker logs on the console); ``ray.shutdown()`` at exit. ``init_kwargs`` go to
    ``ray.init``."""
    import ray

    with client_env(cluster):
        ray.init(address=cluster.address, log_to_driver=False, logging_level=logging.ERROR, **init_kwargs)
        try:
            yield
        finally:
            ray.shutdown()


@pytest.fixture(scope="package")
def cluster_settings(tmp_path_factory: pytest.TempPathFactory) -> ClusterSettings:
    """A small project (3 simulated months) and the state the cluster's processes use, all in tmp."""
    root = tmp_path_factory.mktemp("cluster-state")
    project = write_small_project(root / "project", months=3, overrides={"serve.replica_port": free_port()})
    return ClusterSettings(project=project, tracking_uri=f"sqlite:///{root / 'mlflow' / 'mlflow.db'}",
                           artifact_root=(root / "mlflow" / "artifacts").as_uri(), api_key=secrets.token_hex(24),
                           state_dir=root / "state")


@pytest.fixture(scope="package")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory, cluster_settings: ClusterSettings) -> Iterator[RayCluster]:
    """A head and two worker nodes started with ``ray start``, all alive; every process of theirs stopped after
    the package."""
    # Short: Ray's Unix sockets live under <temp-dir>/session_<date>_<pid>/sockets/ (at most 107 characters).
    temp = tmp_path_factory.mktemp("ray")
    token, marker = secrets.token_hex(32), f"{temp}:{secrets.token_hex(8)}"
    haproxy_dir = Path(tempfile.mkdtemp(prefix="fraud-ha-"))  # see HAPROXY_SOCKET_MAX
    env = node_env(cluster_settings, token, marker, haproxy_dir)
    gcs_port, dashboard_port = free_port(), free_port()
    address, dashboard = f"127.0.0.1:{gcs_port}", f"http://127.0.0.1:{dashboard_port}"
    try:
        _start_nodes(temp, env, token, gcs_port, dashboard_port)
        alive = _wait_for_nodes(dashboard, token, temp, ("head", *WORKERS))
        yield RayCluster(address=address, dashboard=dashboard, env={"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token},
                         nodes=alive)
    finally:
        try:
            stop_cluster(marker)
        finally:
            shutil.rmtree(haproxy_dir, ignore_errors=True)


def node_env(settings: ClusterSettings, token: str, marker: str, haproxy_dir: Path) -> dict[str, str]:
    """The environment every node starts with (its raylet, GCS, agents and workers inherit it)."""
    from fraud_assets.params import load_params
    from serving.local import ray_env

    served = serve_env(settings.project)
    if len(f"{haproxy_dir}/{'0' * 56}/metrics.sock") > HAPROXY_SOCKET_MAX:
        raise ValueError(f"HAProxy's sockets under {haproxy_dir} would be longer than {HAPROXY_SOCKET_MAX} characters")
    # HAProxy's configuration, sockets and stats/metrics ports of this cluster's own (`fraud serve-env` leaves Ray's
    # machine-wide defaults, right for a node of its own): the names the laptop path sets for one session.
    own = {name: value for name, value in ray_env(load_params(settings.project / "params.yaml").serve,
                                                  haproxy_dir).items() if name not in served}
    env = {name: value for name, value in os.environ.items() if name not in CLIENT_ONLY}
    return env | TELEMETRY_OFF | served | own | {
        "FRAUD_PROJECT_ROOT": str(settings.project), "FRAUD_STATE_DIR": str(settings.state_dir),
        "MLFLOW_TRACKING_URI": settings.tracking_uri, "FRAUD_MLFLOW_ARTIFACT_ROOT": settings.artifact_root,
        "FRAUD_API_KEY": settings.api_key, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token, MARKER: marker}


def serve_env(project: Path) -> dict[str, str]:
    """What ``eval "$(fraud serve-env)"`` exports for ``project``, read from the command's own output."""
    done = subprocess.run([str(BIN / "fraud"), "serve-env"], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "FRAUD_PROJECT_ROOT": str(project)})
    if done.returncode != 0:
        raise RuntimeError(f"`fraud serve-env` failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    exported: dict[str, str] = {}
    for line in done.stdout.splitlines():
        words = shlex.split(line)
        if len(words) != 2 or words[0] != "export" or "=" not in words[1]:
            raise RuntimeError(f"`fraud serve-env` printed a line that is not `export NAME=value`: {line!r}")
        name, value = words[1].split("=", 1)
        exported[name] = value
    return exported


def _start_nodes(temp: Path, env: Mapping[str, str], token: str, gcs_port: int, dashboard_port: int) -> None:
    """``ray start`` the head, then both workers at once; raise naming the node whose start failed or hung."""
    common = ["--object-store-memory", str(OBJECT_STORE_BYTES), "--include-log-monitor", "false",
              "--disable-usage-stats", "--log-style", "record", "--log-color", "false"]
    head = ["--head", "--port", str(gcs_port), "--dashboard-host", "127.0.0.1", "--dashboard-port",
            str(dashboard_port), "--ray-client-server-port", str(free_port()), "--num-cpus", str(HEAD_CPUS)]
    _wait_started({"head": _ray_start("head", temp, env, [*head, *common])}, temp, token)
    workers = ["--address", f"127.0.0.1:{gcs_port}", "--num-cpus", str(WORKER_CPUS)]
    _wait_started({name: _ray_start(name, temp, env, [*workers, *common]) for name in WORKERS}, temp, token)


def _ray_start(name: str, temp: Path, env: Mapping[str, str], args: list[str]) -> subprocess.Popen:
    # Every listener Ray would put on a fixed port gets a free one (node and object manager ports are the OS's).
    ports = {flag: str(free_port()) for flag in ("--dashboard-agent-listen-port", "--dashboard-agent-grpc-port",
                                                  "--runtime-env-agent-port", "--metrics-export-port")}
    node_dir = temp / name
    node_dir.mkdir()
    with (temp / f"{name}.start.log").open("wb") as log:
        return subprocess.Popen([str(BIN / "ray"), "start", "--node-name", name, "--temp-dir", str(node_dir), *args,
                                 *(item for pair in ports.items() for item in pair)],
                                env=dict(env), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def _wait_started(starting: dict[str, subprocess.Popen], temp: Path, token: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    for name, proc in starting.items():
        try:
            code = proc.wait(max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise TimeoutError(f"`ray start` of Ray node {name!r} did not return within {START_TIMEOUT_S:.0f} s:\n"
                               f"{_log_tail(temp, name, token)}") from None
        if code != 0:
            raise RuntimeError(f"`ray start` of Ray node {name!r} failed ({code}):\n{_log_tail(temp, name, token)}")


def _wait_for_nodes(dashboard: str, token: str, temp: Path, names: tuple[str, ...]) -> int:
    """Poll the dashboard's state API until every node in ``names`` is alive, each under its own node id."""
    deadline, alive, last = time.monotonic() + START_TIMEOUT_S, {}, "no answer"
    with httpx.Client(base_url=dashboard, timeout=10, headers={"Authorization": f"Bearer {token}"}) as http:
        while time.monotonic() < deadline:
            try:
                answer = http.get("/api/v0/nodes", params={"limit": 100})
                answer.raise_for_status()
            except httpx.HTTPError as exc:
                last = f"{type(exc).__name__}: {exc}"
            else:
                rows = answer.json()["data"]["result"]["result"]
                alive = {row["node_name"]: row["node_id"] for row in rows if row["state"] == "ALIVE"}
                if set(names) <= set(alive) and len({alive[name] for name in names}) == len(names):
                    return len(alive)
            time.sleep(0.5)
    missing = [name for name in names if name not in alive]
    tails = "\n".join(f"--- {name}:\n{_log_tail(temp, name, token)}" for name in missing)
    raise TimeoutError(f"Ray nodes {missing} not alive {START_TIMEOUT_S:.0f} s after start (alive: {sorted(alive)}; "
                       f"last dashboard answer: {last}):\n{tails}")


def _log_tail(temp: Path, name: str, token: str, chars: int = 1500) -> str:
    """The end of a node's `ray start` output and raylet log, the token masked."""
    logs = [temp / f"{name}.start.log", *sorted((temp / name).glob("session_*/logs/raylet.out"))]
    text = "\n".join(f"[{log.name}] {log.read_text(errors='replace')[-chars:]}" for log in logs if log.exists())
    return text.replace(token, "***")


def cluster_processes(marker: str) -> list[psutil.Process]:
    """The cluster's live processes: this user's whose environment names the cluster ``marker``, and their
    descendants (Ray's agents and dashboard modules retitle themselves with setproctitle, which blanks what
    ``/proc/<pid>/environ`` shows of them)."""
    found: dict[int, psutil.Process] = {}
    for proc in psutil.process_iter(["status"]):
        if proc.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        try:
            if proc.environ().get(MARKER) == marker:
                found[proc.pid] = proc
                found.update({child.pid: child for child in proc.children(recursive=True)})
        except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
    return [proc for proc in found.values() if _alive(proc)]


def stop_cluster(marker: str) -> None:
    """Stop every process of the cluster in ``ray stop``'s order (raylets, then everything but the GCS, then the GCS:
    each SIGTERM waits :data:`STOP_GRACE_S` at most), then SIGKILL whatever is left, processes started meanwhile
    included. Out of order, the autoscaler monitor outlives SIGTERM while it retries a GCS that is gone. Processes
    are remembered from the first look on, so an agent whose raylet exited first (and whose parent is then init) is
    still checked.

    Raises:
        RuntimeError: a process of the cluster survived SIGKILL (named with its PID and command).
    """
    known: dict[int, psutil.Process] = {}

    def running() -> list[psutil.Process]:
        known.update({proc.pid: proc for proc in cluster_processes(marker) if proc.pid not in known})
        return [proc for proc in known.values() if _alive(proc)]

    buckets = (lambda name: name == "raylet", lambda name: name not in ("raylet", "gcs_server"),
               lambda name: name == "gcs_server", lambda name: True)
    for bucket, action in zip(buckets, ("terminate", "terminate", "terminate", "kill"), strict=True):
        procs = [proc for proc in running() if bucket(_name(proc))]
        for proc in procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                getattr(proc, action)()
        deadline = time.monotonic() + STOP_GRACE_S
        while procs and time.monotonic() < deadline:
            time.sleep(0.1)
            procs = [proc for proc in procs if _alive(proc)]
    survivors = running()
    if survivors:
        raise RuntimeError("Ray cluster processes survived SIGKILL: "
                           + ", ".join(f"{p.pid} {' '.join(p.cmdline())[:80]}" for p in survivors))


def _name(proc: psutil.Process) -> str:
    try:
        return proc.name()
    except psutil.NoSuchProcess:
        return ""


def _alive(proc: psutil.Process) -> bool:
    """Still running: a zombie is gone (its parent, init here, may reap it late)."""
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE  # is_running: not a reused PID
    except psutil.NoSuchProcess:
        return False
