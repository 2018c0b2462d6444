"""The HTTP guard in front of every endpoint (plain ASGI middleware, no body parsing).

In this order, before any route runs: the request id (Ray Serve's HTTP proxy echoes the caller's
``X-Request-ID`` or generates one, puts it in the request headers and on the answer; Serve's JSON logs carry
it), the API key (``x-api-key`` compared with :func:`hmac.compare_digest`; 401 with a fixed
message, before a byte of the body is read), the body size (413 from ``Content-Length`` and again while the
body streams in). Paths in :attr:`GuardConfig.direct` (``POST /predict``) are then answered by their
handler without the app's routing. Every answer carries ``X-Process-Time-Ms`` (time inside the replica) and is
counted in the replica's Prometheus metrics. ``/health``, ``/ready``, the OpenAPI pages and the analyst page's
static files (``/ui/``) need no key; ``/metrics`` needs the API key (``x-api-key``, or ``Authorization: Bearer <key>``
as Prometheus sends it from ``authorization: {credentials_file: ...}``) unless ``serve.metrics_open`` says it is
open (a scraper on a trusted network that cannot send either). The analyst key (``$FRAUD_ANALYST_KEY``,
optional) opens only what the page uses (:data:`ANALYST_PATHS`); the API key opens everything. Answers under
``/ui`` carry a strict Content-Security-Policy (scripts, styles and data from this origin only, no inline code,
no framing) and ``nosniff``, ``X-Frame-Options: DENY``, ``Referrer-Policy: no-referrer``.
"""

from __future__ import annotations

import hmac
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

OPEN_PATHS = frozenset({"/health", "/ready", "/docs", "/docs/oauth2-redirect", "/openapi.json"})
METRICS_PATH = "/metrics"
UI_PREFIX = "/ui"
ANALYST_PATHS = frozenset({"/alerts", "/performance", "/labels"})
UI_HEADERS = [
    (b"content-security-policy", b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                                 b"connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
                                 b"frame-ancestors 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
]
UNAUTHORIZED = orjson.dumps({"detail": "missing or invalid API key"})
NOT_CONFIGURED = orjson.dumps({"detail": "service is starting"})
LATENCY_BUCKETS = (0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 512, 2048, 10000)


class Metrics:
    """One replica's Prometheus metrics in their own registry (each replica exposes its own)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("fraud_http_requests", "HTTP requests answered", ["route", "status"], registry=r)
        self.errors = Counter("fraud_http_errors", "HTTP answers with status >= 500", ["route"], registry=r)
        self.latency = Histogram("fraud_http_request_duration_seconds", "Time in the replica per request",
                                 ["route"], buckets=LATENCY_BUCKETS, registry=r)
        self.predictions = Counter("fraud_predictions", "Transactions scored", ["model_version"], registry=r)
        self.alerts = Counter("fraud_alerts", "Transactions scored at or above the threshold", ["model_version"],
                              registry=r)
        self.batch_size = Histogram("fraud_scoring_batch_rows", "Rows per model call", buckets=BATCH_BUCKETS,
                                    registry=r)
        self.model_version = Gauge("fraud_model_version", "Registry version this replica serves", registry=r)
        self.model_info = Gauge("fraud_model_info", "1 for the version this replica serves",
                                ["model_name", "alias", "version"], registry=r)
        self.model_load_failures = Counter("fraud_model_load_failures", "Versions refused (load or warm-up failed)",
                                           registry=r)
        self.log_dropped = Counter("fraud_prediction_log_dropped_rows", "Rows the prediction log could not keep",
                                   registry=r)
        self.labels = Counter("fraud_labels_stored", "Late labels stored", registry=r)
        self.degraded = Counter("fraud_degraded_answers", "Transactions scored without their stored past (the "
                                "online store could not be read in time)", registry=r)
        self.store_dropped = Counter("fraud_store_dropped_rows", "Scored transactions or labels that never reached "
                                     "the online store (its backlog was full)", registry=r)
        self.store_pending = Gauge("fraud_store_pending_rows", "Scored transactions waiting for the online store",
                                   registry=r)


@dataclass(frozen=True)
class GuardConfig:
    """What the guard enforces: the API key (None only in insecure local mode), the analyst key (None: none) and
    the body limit."""

    api_key: bytes | None
    max_body_bytes: int
    metrics: Metrics
    analyst_key: bytes | None = None
    metrics_open: bool = False  # serve.metrics_open: /metrics without a key
    # POST paths the guard answers itself, once key and size are checked: handler(body, request_id) -> (status,
    # JSON body). The hot path skips Starlette's router and FastAPI's endpoint machinery; the app's own route
    # for the path documents it and calls the same handler.
    direct: Mapping[str, Callable[[bytes, str], Awaitable[tuple[int, bytes]]]] = field(default_factory=dict)


class Guard:
    """ASGI middleware: request id, API key, body limit, timing header and request metrics."""

    config: GuardConfig | None = None  # set by the replica's constructor (one replica per process)

    def __init__(self, app: Any) -> None:
        self.app = app

    @classmethod
    def configure(cls, config: GuardConfig) -> None:
        """Install the replica's configuration."""
        cls.config = config

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        """Guard one HTTP request, then hand it (with its body already bounded) to the app."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        headers = dict(scope["headers"])
        given = headers.get(b"x-request-id", b"")[:128]
        request_id = given.decode("latin-1") if given else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        path = scope["path"]
        ui = path == UI_PREFIX or path.startswith(UI_PREFIX + "/")
        route = path if path in _ROUTES else ("/ui" if ui else "other")
        status = {"code": 500}

        async def send_with_headers(message: dict) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                elapsed = f"{(time.perf_counter() - started) * 1000:.2f}".encode()
                message["headers"] = [*message.get("headers", []), (b"x-process-time-ms", elapsed),
                                      *(UI_HEADERS if ui else [])]
            await send(message)

        config = self.config
        try:
            if config is None:
                await _reply(send_with_headers, 503, NOT_CONFIGURED)
            elif not (ui or path in OPEN_PATHS or (path == METRICS_PATH and config.metrics_open)
                      or _authorized(config, path, _given_key(path, headers))):
                await _reply(send_with_headers, 401, UNAUTHORIZED)
            elif scope["method"] in ("POST", "PUT", "PATCH"):
                body = await _read_bounded(headers, receive, config.max_body_bytes)
                if body is None:
                    await _reply(send_with_headers, 413, orjson.dumps(
                        {"detail": f"request body is larger than {config.max_body_bytes} bytes"}))
                elif (handler := config.direct.get(path)) is not None and scope["method"] == "POST":
                    code, answer = await handler(body, request_id)
                    await _reply(send_with_headers, code, answer)
                else:
                    await self.app(scope, _replay(body, receive), send_with_headers)
            else:
                await self.app(scope, receive, send_with_headers)
        finally:
            if config is not None:
                m = config.metrics
                m.requests.labels(route, str(status["code"])).inc()
                if status["code"] >= 500:
                    m.errors.labels(route).inc()
                m.latency.labels(route).observe(time.perf_counter() - started)


_ROUTES = frozenset({"/predict", "/predict/batch", METRICS_PATH, *ANALYST_PATHS, *OPEN_PATHS})


def _given_key(path: str, headers: dict) -> bytes | None:
    """The key a request carries: ``x-api-key``; for ``/metrics`` also a bearer token (what Prometheus sends)."""
    key = headers.get(b"x-api-key")
    if key is None and path == METRICS_PATH:
        scheme, _, token = headers.get(b"authorization", b"").partition(b" ")
        if scheme.lower() == b"bearer" and token:
            key = token.strip()
    return key


def _authorized(config: GuardConfig, path: str, given: bytes | None) -> bool:
    if config.api_key is None:  # insecure local mode, announced at start and in /ready
        return True
    if given is None:
        return False
    as_api = hmac.compare_digest(given, config.api_key)
    analyst = config.analyst_key if path in ANALYST_PATHS else None
    return as_api or (analyst is not None and hmac.compare_digest(given, analyst))


async def _read_bounded(headers: dict, receive: Any, limit: int) -> bytes | None:
    declared = headers.get(b"content-length")
    if declared is not None:
        try:
            if int(declared) > limit:
                return None
        except ValueError:
            return None
    chunks, size, more = [], 0, True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        more = message.get("more_body", False)
    return b"".join(chunks)


def _replay(body: bytes, receive: Any) -> Any:
    sent = False

    async def replay() -> dict:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # after the body, only a disconnect can come

    return replay


async def _reply(send: Any, status: int, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
