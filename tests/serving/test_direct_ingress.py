"""Ray Serve's direct ingress (``serve.direct_ingress``): the replica answers HTTP itself, on 127.0.0.1 only.

A second Ray start (about 20 s), so the mode that skips the proxy is exercised for real: the replica's own port
is the base URL, it listens on the loopback interface only, needs the API key, and scores like the library.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

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
from tests.serving.test_serving_http import _free_port, _register, _trained_booster

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
KEY = "direct-ingress-key-" + "y" * 20


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


@pytest.fixture(scope="module")
def direct(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    tmp = tmp_path_factory.mktemp("direct")
    months = simulate_months(load_params().data, "2025-01", 3)
    booster = _trained_booster(months)
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    version = _register(uri, (tmp / "artifacts").as_uri(), booster, {"threshold": "0.5"})
    mlflow_registry.client_for(uri).set_registered_model_alias("fraud-detector", "champion", version)
    store = tmp / "store.sqlite"
    SqliteTransactionStore(store).seed(pd.concat([months["2025-01"], months["2025-02"]], ignore_index=True))
    first_port = _free_port()
    overrides = {"serve.min_replicas": 1, "serve.max_replicas": 1, "serve.direct_ingress": True,
                 "serve.direct_ingress_port": first_port}
    os.environ["FRAUD_API_KEY"] = KEY
    try:
        url = start_serving(tracking_uri=uri, port=_free_port(), args=AppArgs(
            overrides=overrides, prediction_log=str(tmp / "log.sqlite"), online_store=str(store)))
        yield {"url": url, "port": first_port, "booster": booster, "months": months, "version": version}
    finally:
        stop_serving()
        os.environ.pop("FRAUD_API_KEY", None)


def test_the_replica_answers_on_its_own_port_on_loopback_only(direct: dict) -> None:
    assert direct["url"] == f"http://127.0.0.1:{direct['port']}"
    assert _listening_addresses(direct["port"]) == {"0100007F"}  # 127.0.0.1, no other interface
    ready = httpx.get(f"{direct['url']}/ready", timeout=10).json()
    assert ready["status"] == "ready" and ready["model_version"] == direct["version"]


def test_it_needs_the_key_and_scores_like_batch_mode(direct: dict) -> None:
    march = direct["months"]["2025-03"].sort_values("tx_datetime", kind="stable").head(40)
    txs = [{"transaction_id": r.transaction_id, "tx_datetime": r.tx_datetime.isoformat(),
            "customer_id": r.customer_id, "terminal_id": r.terminal_id, "amount": float(r.amount)}
           for r in march.itertuples()]
    with httpx.Client(base_url=direct["url"], timeout=30) as http:
        assert http.post("/predict", json=txs[0]).status_code == 401
        served = [http.post("/predict", json=tx, headers={"x-api-key": KEY}).json()["fraud_probability"]
                  for tx in txs]
    history = pd.concat([direct["months"]["2025-01"], direct["months"]["2025-02"]], ignore_index=True)
    expected = predict(direct["booster"], build_features(march, load_params().features, history=history))
    assert np.abs(np.asarray(served) - expected).max() <= 1e-6

