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


def test_each_ingress_sets_its_own_switches_and_stopping_forgets_them(monkeypatch: pytest.MonkeyPatch,
                                                                      tmp_path) -> None:
    """The ingress is chosen through the environment Ray inherits; a session's values are forgotten on stop, and
    HAProxy's files and ports are the session's own."""
    import os

    from fraud_assets.params import load_params
    from serving.local import _SESSION_ENV, LOOPBACK_HAPROXY, SERVE_TUNING, ray_env, stop_serving

    serve = load_params().serve
    haproxy = ray_env(serve.model_copy(update={"ingress": "haproxy", "replica_port": 31000}), tmp_path)
    assert haproxy["RAY_SERVE_ENABLE_HA_PROXY"] == "1" and haproxy["RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT"] == "31000"
    assert haproxy["RAY_SERVE_HAPROXY_BINARY_PATH"] == str(LOOPBACK_HAPROXY) and os.access(LOOPBACK_HAPROXY, os.X_OK)
    assert os.access(haproxy["FRAUD_HAPROXY_BINARY"], os.X_OK)
    assert haproxy["RAY_SERVE_HAPROXY_CONFIG_FILE_LOC"].startswith(str(tmp_path))
    assert haproxy["RAY_SERVE_HAPROXY_STATS_PORT"] != "8404" and haproxy["RAY_SERVE_HAPROXY_METRICS_PORT"] != "9101"
    assert ray_env(serve.model_copy(update={"ingress": "proxy"})) == SERVE_TUNING
    _SESSION_ENV.update(haproxy)
    for name, value in haproxy.items():
        monkeypatch.setenv(name, value)
    stop_serving()  # Ray is not running here: only the environment changes
    assert not set(haproxy) & set(os.environ) and not _SESSION_ENV


def test_loopback_haproxy_moves_wildcard_listeners_to_127_0_0_1(tmp_path) -> None:
    """Ray writes `bind *:<stats>` and `bind :<metrics>`; the wrapper runs HAProxy on a copy with loopback binds,
    keeping the frontend's host and passing every other argument through."""
    import subprocess

    from serving.local import LOOPBACK_HAPROXY

    config = tmp_path / "haproxy.cfg"
    config.write_text("frontend prometheus\n    bind :9101\nlisten stats\n  bind *:8404\n"
                      "frontend http_frontend\n    bind 127.0.0.1:8000\n")
    env = {"FRAUD_HAPROXY_BINARY": "/bin/echo", "PATH": "/usr/bin:/bin"}
    out = subprocess.run([str(LOOPBACK_HAPROXY), "-db", "-f", str(config), "-sf", "12", "a b"], check=True,
                         capture_output=True, text=True, env=env)
    assert out.stdout.split() == ["-db", "-f", f"{config}.loopback", "-sf", "12", "a", "b"]
    rewritten = (tmp_path / "haproxy.cfg.loopback").read_text().splitlines()
    binds = [line.split()[1] for line in rewritten if "bind" in line]
    assert binds == ["127.0.0.1:9101", "127.0.0.1:8404", "127.0.0.1:8000"]


def test_the_ray_internals_the_lean_hooks_patch_are_still_there() -> None:
    """serving/ray_hooks.py reaches into Ray: a Ray upgrade that moves what it patches fails here."""
    import inspect

    import ray
    from ray._private import node, parameter
    from ray.serve._private.proxy_state import ProxyStateManager

    from serving.ray_hooks import RAY_VERSION, lean_local_ray

    assert ray.__version__ == RAY_VERSION
    assert {"no_monitor", "include_log_monitor"} <= set(inspect.signature(parameter.RayParams.__init__).parameters)
    assert callable(node.Node.start_api_server) and callable(ProxyStateManager._start_fallback_proxy_if_needed)
    before = node.Node.start_api_server
    with lean_local_ray():
        params = parameter.RayParams()
        assert params.no_monitor and not params.include_log_monitor and node.Node.start_api_server is not before
    assert node.Node.start_api_server is before and not parameter.RayParams().no_monitor
