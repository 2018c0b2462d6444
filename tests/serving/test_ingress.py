"""The default ingress (``serve.ingress: haproxy``) with two replicas: one port in front of both, loopback only.

Ray 2.60's HAProxy on ``serve.port`` forwards to the replicas' own HTTP ports (``serve.replica_port`` and up).
Tested for real: every socket HAProxy and the replicas listen on for HTTP is on 127.0.0.1 (Ray's template binds
HAProxy's stats and metrics listeners to every interface; ``serving/bin/haproxy-loopback`` moves them), the one
port needs the API key, scores like the library, and spreads requests over both replicas.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest

from fraud_assets.adapters import mlflow_registry
from fraud_assets.adapters.online_store import SqliteTransactionStore
from fraud_assets.core.features import build_features
from fraud_assets.core.simulate import simulate_months
from fraud_assets.core.train import predict
from fraud_assets.params import load_params
from serving.app import AppArgs
from serving.local import start_serving, stop_serving
from tests.serving.test_serving_http import _free_port, _metric, _register, _trained_booster

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
KEY = "haproxy-ingress-key-" + "y" * 20


def _listening_addresses(port: int) -> set[str]:
    """Local addresses (hex, as /proc/net/tcp writes them) of the sockets listening on ``port``."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not Path(table).exists():
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.rsplit(":", 1)
            if state == "0A" and int(hex_port, 16) == port:  # 0A = LISTEN
                found.add(address)
    return found


@contextlib.contextmanager
def scoring_service(tmp: Path, overrides: dict[str, Any], key: str) -> Iterator[dict]:
    """``fraud serve``'s start in this process, keyed with ``key``: a champion trained on three simulated months,
    a store holding the first two, replicas answering from a free port up (``overrides`` size the rest)."""
    months = simulate_months(load_params().data, "2025-01", 3)
    booster = _trained_booster(months)
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    version = _register(uri, (tmp / "artifacts").as_uri(), booster, {"threshold": "0.5"})
    mlflow_registry.client_for(uri).set_registered_model_alias("fraud-detector", "champion", version)
    store = tmp / "store.sqlite"
    SqliteTransactionStore(store).seed(pd.concat([months["2025-01"], months["2025-02"]], ignore_index=True))
    first_port = _free_port()
    os.environ["FRAUD_API_KEY"] = key
    port = _free_port()
    try:
        url = start_serving(tracking_uri=uri, port=port, args=AppArgs(
            overrides={**overrides, "serve.replica_port": first_port}, prediction_log=str(tmp / "log.sqlite"),
            online_store=str(store)))
        haproxy_ports = [int(os.environ[f"RAY_SERVE_HAPROXY_{name}_PORT"]) for name in ("STATS", "METRICS")]
        yield {"url": url, "port": port, "first_port": first_port, "haproxy_ports": haproxy_ports,
               "booster": booster, "months": months, "version": version}
    finally:
        stop_serving()
        os.environ.pop("FRAUD_API_KEY", None)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    overrides = {"serve.min_replicas": 2, "serve.max_replicas": 2}
    with scoring_service(tmp_path_factory.mktemp("haproxy"), overrides, KEY) as service:
        replica_ports = _replica_ports(service["first_port"])
        _servers_up(service["haproxy_ports"][0], 2)  # a replica answering is not yet a server HAProxy sends to
        yield {**service, "replica_ports": replica_ports}


def _replica_ports(first: int, timeout_s: float = 60) -> list[int]:
    """The replicas' own HTTP ports (from ``first`` up), once both are ready."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        ready = []
        for port in range(first, first + 10):
            try:
                if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=2).status_code == 200:
                    ready.append(port)
            except httpx.TransportError:
                pass
        if len(ready) == 2:
            return ready
        time.sleep(0.5)
    raise TimeoutError(f"two replicas did not answer from port {first} up")


def _servers_up(stats_port: int, n: int, timeout_s: float = 60) -> None:
    """Wait until HAProxy's stats page (CSV) shows ``n`` servers UP in the app's backend."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        rows = [line.split(",") for line in httpx.get(f"http://127.0.0.1:{stats_port}/stats;csv", timeout=2).text
                .splitlines() if line and not line.startswith("#")]
        up = [r for r in rows if r[0].startswith("http-") and r[1] not in ("FRONTEND", "BACKEND") and r[17] == "UP"]
        if len(up) >= n:
            return
        time.sleep(0.25)
    raise TimeoutError(f"HAProxy did not show {n} servers UP within {timeout_s} s")


def test_one_port_in_front_and_every_listener_on_loopback(served: dict) -> None:
    assert served["url"] == f"http://127.0.0.1:{served['port']}"
    for port in (served["port"], *served["replica_ports"], *served["haproxy_ports"]):
        assert _listening_addresses(port) == {"0100007F"}, port  # 127.0.0.1, no other interface
    ready = httpx.get(f"{served['url']}/ready", timeout=10).json()
    assert ready["status"] == "ready" and ready["model_version"] == served["version"]


def test_it_needs_the_key_scores_like_batch_mode_on_both_replicas(served: dict) -> None:
    march = served["months"]["2025-03"].sort_values("tx_datetime", kind="stable").head(40)
    txs = [{"transaction_id": r.transaction_id, "tx_datetime": r.tx_datetime.isoformat(),
            "customer_id": r.customer_id, "terminal_id": r.terminal_id, "amount": float(r.amount)}
           for r in march.itertuples()]
    with httpx.Client(base_url=served["url"], timeout=30) as http:
        assert http.post("/predict", json=txs[0]).status_code == 401
        served_scores = [http.post("/predict", json=tx, headers={"x-api-key": KEY}).json()["fraud_probability"]
                         for tx in txs]
    history = pd.concat([served["months"]["2025-01"], served["months"]["2025-02"]], ignore_index=True)
    expected = predict(served["booster"], build_features(march, load_params().features, history=history))
    assert np.abs(np.asarray(served_scores) - expected).max() <= 1e-6
    scored = [_predictions(port) for port in served["replica_ports"]]
    assert sum(scored) == len(txs) and min(scored) > 0  # HAProxy spread them over both replicas


def _predictions(port: int, key: str = KEY) -> float:
    """How many transactions the replica on ``port`` scored (its own Prometheus counter)."""
    return _metric(httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10, headers={"x-api-key": key}).text,
                   "fraud_predictions_total")
