"""Start-up helpers that need no Ray: readiness polling fails loudly with the last answer."""

from __future__ import annotations

import socket

import pytest

from serving.local import wait_until_ready


def test_wait_until_ready_times_out_naming_the_url() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(TimeoutError, match=rf"127\.0\.0\.1:{port}/ready not 200.*ConnectError"):
        wait_until_ready(f"http://127.0.0.1:{port}", timeout_s=0.6)


def test_importing_the_app_starts_nothing() -> None:
    import ray

    import serving.app  # noqa: F401

    assert not ray.is_initialized()


def test_openapi_lists_every_endpoint_and_every_ref_resolves() -> None:
    import json
    import re

    from serving.app import app

    doc = app.openapi()
    assert set(doc["paths"]) == {"/predict", "/predict/batch", "/labels", "/health", "/ready", "/metrics"}
    refs = set(re.findall(r'"\$ref": "([^"]+)"', json.dumps(doc)))
    assert refs and all(r.startswith("#/components/schemas/") for r in refs)
    assert {r.rsplit("/", 1)[-1] for r in refs} <= set(doc["components"]["schemas"])
    batch = doc["paths"]["/predict/batch"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert batch["properties"]["transactions"]["items"]["required"] == [
        "transaction_id", "tx_datetime", "customer_id", "terminal_id", "amount"]


def test_stopping_forgets_direct_ingress_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    """Direct ingress is switched on through the environment Ray inherits; stopping switches it off again."""
    import os

    from serving.local import _direct_ingress_env, stop_serving

    env = _direct_ingress_env(31000)
    assert env["RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT"] == "31000" and env["RAY_SERVE_ENABLE_DIRECT_INGRESS"] == "1"
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    stop_serving()  # Ray is not running here: only the environment changes
    assert not set(env) & set(os.environ)
