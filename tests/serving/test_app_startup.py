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


def test_openapi_lists_every_endpoint_and_every_ref_resolves(monkeypatch: pytest.MonkeyPatch) -> None:
    import json
    import re

    from fraud_assets.params import load_params
    from serving.api import request_types
    from serving.app import ScoringApi, app

    data = load_params().data
    monkeypatch.setattr(ScoringApi, "requests", request_types(data.max_amount, data.min_tx_date, 77))  # as a replica
    monkeypatch.setattr(app, "openapi_schema", None)
    doc = app.openapi()
    assert set(doc["paths"]) == {"/predict", "/predict/batch", "/labels", "/health", "/ready", "/metrics", "/alerts",
                                 "/performance"}  # the analyst page's static files (/ui/) are not operations
    refs = set(re.findall(r'"\$ref": "([^"]+)"', json.dumps(doc)))
    assert refs and all(r.startswith("#/components/schemas/") for r in refs)
    assert {r.rsplit("/", 1)[-1] for r in refs} <= set(doc["components"]["schemas"])
    batch = doc["paths"]["/predict/batch"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert batch["properties"]["transactions"]["items"]["required"] == [
        "transaction_id", "tx_datetime", "customer_id", "terminal_id", "amount"]
    assert batch["properties"]["transactions"]["maxItems"] == 77
    amount = doc["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]["schema"]["properties"][
        "amount"]
    assert (amount["minimum"], amount["maximum"]) == (0, data.max_amount)
    assert doc["components"]["securitySchemes"]["ApiKey"] == {"type": "apiKey", "in": "header", "name": "x-api-key"}
    for path in ("/predict", "/predict/batch", "/labels"):
        operation = doc["paths"][path]["post"]
        assert operation["security"] == [{"ApiKey": []}] and "requestBody" in operation
        assert {"200", "401", "413", "422", "503"} <= set(operation["responses"])
    errors = doc["components"]["schemas"]["ValidationErrors"]["properties"]["detail"]
    assert errors["items"] == {"$ref": "#/components/schemas/FieldError"}
    assert "security" not in doc["paths"]["/health"]["get"]
    for path in ("/alerts", "/performance"):
        operation = doc["paths"][path]["get"]
        assert operation["security"] == [{"ApiKey": []}] and {"200", "401", "422"} <= set(operation["responses"])


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
