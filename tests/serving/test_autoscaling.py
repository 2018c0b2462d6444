"""Serve's autoscaler on the default ingress (HAProxy in front of replicas answering HTTP themselves).

With direct ingress no deployment handle sees the requests, so the replicas must report their own ongoing requests
for the autoscaler to act (Ray 2.60 does, for an ingress deployment with an autoscaling config). Tested for real:
under sustained concurrent load one replica becomes two, HAProxy sends to the new one on the same port, and no
request fails while it comes up. ``serve.upscale_delay_s`` is 2 s here instead of Ray's 30 (``params.yaml``), so the
test waits for the replicas' metrics push (every 10 s) more than for the delay.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator

import httpx
import pytest

from serving.app import APP_NAME
from tests.serving.test_ingress import _predictions, _replica_ports, _servers_up, scoring_service

pytestmark = pytest.mark.slow

KEY = "autoscaling-key-" + "z" * 24
CLIENTS = 6  # concurrent clients: each replica's ongoing requests stay above the target of 1


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    overrides = {"serve.min_replicas": 1, "serve.max_replicas": 2, "serve.target_ongoing_requests": 1,
                 "serve.upscale_delay_s": 2.0}
    with scoring_service(tmp_path_factory.mktemp("autoscaling"), overrides, KEY) as service:
        march = service["months"]["2025-03"].sort_values("tx_datetime", kind="stable")
        txs = [{"transaction_id": r.transaction_id, "tx_datetime": r.tx_datetime.isoformat(),
                "customer_id": r.customer_id, "terminal_id": r.terminal_id, "amount": float(r.amount)}
               for r in march.itertuples()]
        yield {**service, "txs": txs}


def _running_replicas() -> int:
    from ray import serve

    return serve.status().applications[APP_NAME].deployments["FraudScorer"].replica_states.get("RUNNING", 0)


def test_sustained_load_adds_a_replica_on_the_same_port_without_a_failed_request(served: dict) -> None:
    assert _running_replicas() == 1
    statuses: Counter[int | str] = Counter()
    stop = threading.Event()
    txs = served["txs"]

    def client(k: int) -> None:  # distinct transactions, each client its own share, in time order
        with httpx.Client(base_url=served["url"], headers={"x-api-key": KEY}, timeout=30) as http:
            for tx in txs[k::CLIENTS]:
                if stop.is_set():
                    return
                try:
                    statuses[http.post("/predict", json=tx).status_code] += 1
                except httpx.HTTPError as exc:
                    statuses[type(exc).__name__] += 1

    threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(CLIENTS)]
    started = time.monotonic()
    for t in threads:
        t.start()
    try:
        while _running_replicas() < 2 and time.monotonic() - started < 90 and any(t.is_alive() for t in threads):
            time.sleep(0.5)
        scaled_after_s = time.monotonic() - started
        assert _running_replicas() == 2, f"still one replica after {scaled_after_s:.0f} s of load: {dict(statuses)}"
        _servers_up(served["haproxy_ports"][0], 2)  # HAProxy sends to the new one ...
        time.sleep(2.0)  # ... while the load goes on
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert set(statuses) == {200} and statuses[200] > 100, dict(statuses)  # nothing failed while it came up
    ports = _replica_ports(served["first_port"])
    with httpx.Client(base_url=served["url"], headers={"x-api-key": KEY}, timeout=30) as http:
        for tx in txs[-40:]:  # not scored yet: the clients stopped long before the month's end
            assert http.post("/predict", json=tx).status_code == 200
    scored = {port: _predictions(port, KEY) for port in ports}
    assert all(n > 0 for n in scored.values()), scored  # both replicas answer on the one port
