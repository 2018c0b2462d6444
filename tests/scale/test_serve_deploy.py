"""The scoring application on a multi-node Ray cluster, deployed the way the README's cluster path deploys it.

The cluster (``ray_cluster``: a head and two workers from ``ray start``) was started with the environment of
``eval "$(fraud serve-env)"`` (HAProxy ingress), ``FRAUD_API_KEY`` and ``MLFLOW_TRACKING_URI``. Here a champion
is registered in that tracking store, the repository's ``serve_config.yaml`` with the README's one change for a
cluster (its ``sed`` to ``http_options.host: 0.0.0.0``, so HAProxy on the head reaches replicas on other nodes) and
its HTTP port moved to a free one is written to ``cluster.yaml`` in a working directory of its own and sent with
``RAY_AUTH_MODE=token serve deploy cluster.yaml -a <dashboard>``; the service answers through HAProxy on the head
with the champion's scores
from a replica on a worker node (the head's CPU is held by the test, so the replica cannot run beside HAProxy).
The same command without ``RAY_AUTH_MODE=token`` is refused, which is why the README says to set it.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

import httpx
import pandas as pd
import pytest

from fraud_assets.adapters import mlflow_registry
from fraud_assets.adapters.online_store import SqliteTransactionStore
from fraud_assets.core.features import build_features
from fraud_assets.core.months import available_months
from fraud_assets.core.train import predict
from fraud_assets.params import load_params
from fraud_assets.settings import TELEMETRY_OFF
from serving.app import APP_NAME
from serving.local import wait_until_ready
from tests.scale.conftest import (
    BIN,
    CLIENT_ONLY,
    HEAD_CPUS,
    WORKERS,
    ClusterSettings,
    RayCluster,
    connected,
    free_port,
)
from tests.serving.test_ingress import _listening_addresses
from tests.serving.test_serving_http import _register, _trained_booster

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parents[2]
CLI_TIMEOUT_S = 120


def test_serve_deploy_to_the_cluster_answers_through_haproxy_with_the_champion(
        ray_cluster: RayCluster, cluster_settings: ClusterSettings, tmp_path: Path) -> None:
    import ray
    from ray._private.utils import read_ray_address
    from ray.util.state import list_actors

    gcs_port = ray_cluster.address.rsplit(":", 1)[1]
    found = read_ray_address()  # what ray.init() without an address would connect to: never this cluster
    assert found is None or not found.endswith(f":{gcs_port}")
    months = _months(cluster_settings.project)
    booster = _trained_booster(months)
    version = _register(cluster_settings.tracking_uri, cluster_settings.artifact_root, booster, {"threshold": "0.5"})
    mlflow_registry.client_for(cluster_settings.tracking_uri).set_registered_model_alias(
        "fraud-detector", "champion", version)
    history = pd.concat([months["2025-01"], months["2025-02"]], ignore_index=True)
    # The replicas' default online store: online_store.sqlite in $FRAUD_STATE_DIR of the cluster's environment.
    SqliteTransactionStore(cluster_settings.state_dir / "online_store.sqlite").seed(history)
    port = free_port()
    _write_config(tmp_path / "cluster.yaml", port)
    deploy = ["deploy", "cluster.yaml", "-a", ray_cluster.dashboard]
    base_url = f"http://127.0.0.1:{port}"
    try:
        with connected(ray_cluster):
            nodes = {node["NodeName"]: node["NodeID"] for node in ray.nodes() if node["Alive"]}
            assert sorted(nodes) == ["head", *WORKERS] and len(set(nodes.values())) == ray_cluster.nodes == 3
            _hold_cpus_of(nodes["head"], HEAD_CPUS)  # the replica must then run on a worker node

            refused = _serve(deploy, tmp_path, _client_env(ray_cluster, token_mode=False))
            assert refused.returncode != 0, refused.stdout
            assert "AuthenticationError" in refused.stdout, refused.stdout[-2000:]
            deployed = _serve(deploy, tmp_path, _client_env(ray_cluster))
            assert deployed.returncode == 0, deployed.stdout[-3000:]
            ready = wait_until_ready(base_url, timeout_s=180)

            alive = list_actors(address=ray_cluster.dashboard, filters=[("state", "=", "ALIVE")], limit=1000)
            replicas = {a.node_id for a in alive if a.class_name == f"ServeReplica:{APP_NAME}:FraudScorer"}
            ingress = {a.node_id for a in alive if a.class_name == "HAProxyManager"}
        assert ingress == {nodes["head"]}  # proxy_location: HeadOnly
        assert replicas and replicas <= {nodes[name] for name in WORKERS}  # HAProxy reached a replica on another node
        assert ready["status"] == "ready" and ready["model_version"] == version
        # http_options.host is 0.0.0.0, yet HAProxy's frontend stays on loopback (the wrapper rewrites `bind *:`).
        assert _listening_addresses(port) == {"0100007F"}
        tx = months["2025-03"].sort_values("tx_datetime", kind="stable").head(1)
        body = {"transaction_id": tx["transaction_id"].iloc[0], "tx_datetime": tx["tx_datetime"].iloc[0].isoformat(),
                "customer_id": tx["customer_id"].iloc[0], "terminal_id": tx["terminal_id"].iloc[0],
                "amount": float(tx["amount"].iloc[0])}
        with httpx.Client(base_url=base_url, timeout=30) as http:
            assert http.post("/predict", json=body).status_code == 401
            answer = http.post("/predict", json=body, headers={"x-api-key": cluster_settings.api_key})
        assert answer.status_code == 200, answer.text
        scored = answer.json()
        expected = predict(booster, build_features(tx, load_params().features, history=history))
        assert scored["model_version"] == version and scored["transaction_id"] == body["transaction_id"]
        assert abs(scored["fraud_probability"] - float(expected[0])) <= 1e-6
    finally:
        stopped = _serve(["shutdown", "-y", "-a", ray_cluster.dashboard], tmp_path, _client_env(ray_cluster))
    assert stopped.returncode == 0, stopped.stdout[-2000:]


def _hold_cpus_of(node_id: str, cpus: int, timeout_s: float = 60) -> None:
    """Take ``cpus`` CPUs of one node with a task of this driver (it ends when the driver disconnects)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    def hold(seconds: float) -> None:  # nested: shipped by value (workers cannot import this test module)
        time.sleep(seconds)

    total = ray.cluster_resources()["CPU"]
    ray.remote(hold).options(num_cpus=cpus, scheduling_strategy=NodeAffinitySchedulingStrategy(
        node_id, soft=False)).remote(3600)
    deadline = time.monotonic() + timeout_s
    while ray.available_resources().get("CPU", 0) > total - cpus:
        if time.monotonic() > deadline:
            raise TimeoutError(f"a task holding {cpus} CPU(s) of node {node_id} did not start in {timeout_s:.0f} s")
        time.sleep(0.2)


def _months(project: Path) -> dict[str, pd.DataFrame]:
    data_dir = project / load_params(project / "params.yaml").data.dir
    return {month: pd.read_parquet(data_dir / f"{month}.parquet") for month in available_months(data_dir)}


def _write_config(path: Path, port: int) -> None:
    """serve_config.yaml as the README deploys it to a cluster (its ``sed`` to ``http_options.host: 0.0.0.0``), the
    HTTP port moved to ``port``; each line must be there exactly once, as the README's command expects."""
    text = (ROOT / "serve_config.yaml").read_text()
    for pattern, line in ((r"^  host: 127\.0\.0\.1$", "  host: 0.0.0.0"), (r"^  port: 8000$", f"  port: {port}")):
        text, found = re.subn(pattern, line, text, flags=re.MULTILINE)
        assert found == 1, f"serve_config.yaml has {found} lines matching {pattern!r}"
    path.write_text(text)


def _client_env(cluster: RayCluster, token_mode: bool = True) -> dict[str, str]:
    """A shell's environment with the cluster's client variables (without ``RAY_AUTH_MODE`` unless ``token_mode``)."""
    env = {name: value for name, value in os.environ.items() if name not in CLIENT_ONLY} | TELEMETRY_OFF
    return env | {name: value for name, value in cluster.env.items() if token_mode or name != "RAY_AUTH_MODE"}


def _serve(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    """The ``serve`` CLI, its output (stderr included) captured."""
    return subprocess.run([str(BIN / "serve"), *args], cwd=cwd, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=CLI_TIMEOUT_S)
