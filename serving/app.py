"""The Ray Serve application: one deployment with a FastAPI ingress that serves ``models:/<name>@<alias>``.

Endpoints: ``POST /predict`` (one transaction, micro-batched with ``@serve.batch``), ``POST /predict/batch``,
``GET /health`` (liveness) and ``GET /ready`` (200 with the model version once a model is loaded, else 503).
Each replica follows the alias: every few seconds it resolves it and, when it moved, loads the new version,
scores a warm-up row and only then swaps it in with one reference assignment; when the new version fails,
the old one keeps serving and ``/ready`` reports the error. Every answer names the version that scored it.

Network exposure: the HTTP proxy binds 127.0.0.1 unless told otherwise, but Ray's own internal services
(GCS, raylet, object manager, workers) listen on all interfaces of the machine; run it on a trusted network
or behind a host firewall. ``ray.init`` also replaces the process's SIGTERM handler, so a long-running
caller that wants a clean stop should install its own handler after :func:`start_serving` and call
:func:`stop_serving` from it.

Nothing runs at import time: Ray starts in :func:`start_serving` (or ``serve run serve_config.yaml``) and
models load inside replicas.
"""

import asyncio
import logging
import os
import time
from typing import Any

import httpx
from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from ray import serve
from ray.serve import Application

from fraud_assets import registry
from fraud_assets.params import FeatureParams, load_params
from fraud_assets.settings import disable_telemetry, mlflow_tracking_uri
from serving.api import Health, Readiness, Score, ScoreBatch, Transaction, TransactionBatch
from serving.predictor import Predictor

logger = logging.getLogger("ray.serve")

# A lone request waits this long for company before it is scored; the batch size follows
# serve.max_ongoing_requests (a replica never holds more requests than that).
BATCH_WAIT_TIMEOUT_S = 0.002
APP_NAME = "fraud-detector"

app = FastAPI(title="fraud-detector", description="Scores card transactions with the champion model.")


@app.exception_handler(RequestValidationError)
async def _invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
    """422 naming each bad field; the offending input is not echoed (NaN or inf would not encode as JSON)."""
    detail = [{"loc": list(e["loc"]), "type": e["type"], "msg": e["msg"]} for e in exc.errors()]
    return JSONResponse(status_code=422, content={"detail": detail})


class AppArgs(BaseModel):
    """Arguments of :func:`build_app`; unset values come from ``params.yaml`` and ``settings``."""

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())

    tracking_uri: str | None = None
    model_name: str | None = None
    alias: str | None = None
    params_path: str | None = None
    reload_interval_s: float = Field(default=5.0, gt=0)


@serve.deployment
@serve.ingress(app)
class FraudScorer:
    """A replica holding one :class:`Predictor` and following the registry alias."""

    def __init__(self, tracking_uri: str, model_name: str, alias: str, num_threads: int,
                 features: dict[str, Any], reload_interval_s: float, max_batch_size: int) -> None:
        disable_telemetry()
        self._score_batch.set_max_batch_size(max_batch_size)
        self._client = registry.client_for(tracking_uri)
        self._model_name, self._alias = model_name, alias
        self._num_threads = num_threads
        self._features = FeatureParams.model_validate(features)
        self._reload_interval_s = reload_interval_s
        self._predictor: Predictor | None = None
        self._error: str | None = None
        self._follower = asyncio.get_running_loop().create_task(self._follow_alias())

    @app.get("/health", response_model=Health)
    async def health(self) -> Health:
        """Liveness: the replica answers."""
        return Health(status="ok")

    @app.get("/ready", response_model=Readiness, responses={503: {"model": Readiness}})
    async def ready(self) -> Readiness | JSONResponse:
        """Readiness: 200 with the serving version once a model is loaded, else 503 with the reason."""
        predictor = self._predictor
        if predictor is None:
            body = self._readiness("error" if self._error else "loading", None)
            return JSONResponse(status_code=503, content=body.model_dump())
        return self._readiness("ready", predictor.version)

    @app.post("/predict", response_model=Score)
    async def predict(self, transaction: Transaction) -> dict[str, Any]:
        """Score one transaction (micro-batched with concurrent requests)."""
        self._require_predictor()
        return await self._score_batch(transaction.model_dump())

    @app.post("/predict/batch", response_model=ScoreBatch)
    async def predict_batch(self, batch: TransactionBatch) -> dict[str, Any]:
        """Score several transactions with one model version."""
        predictor = self._require_predictor()
        return {"scores": predictor.score([tx.model_dump() for tx in batch.transactions])}

    @serve.batch(batch_wait_timeout_s=BATCH_WAIT_TIMEOUT_S)
    async def _score_batch(self, transactions: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return self._require_predictor().score(transactions)

    def check_health(self) -> None:
        """Serve's replica health check: the alias follower must still be running."""
        if self._follower.done():
            cause = "cancelled" if self._follower.cancelled() else repr(self._follower.exception())
            raise RuntimeError(f"alias follower of {self._model_name}@{self._alias} stopped: {cause}")

    def _require_predictor(self) -> Predictor:
        predictor = self._predictor
        if predictor is None:
            raise HTTPException(status_code=503, detail=self._error or "model is loading")
        return predictor

    def _readiness(self, status: str, version: str | None) -> Readiness:
        return Readiness(status=status, model_version=version, model_name=self._model_name, alias=self._alias,
                         error=self._error)

    async def _follow_alias(self) -> None:
        while True:
            try:
                await self._sync_with_alias()
            except Exception as exc:  # the serving version (if any) keeps serving; /ready reports the error
                self._error = f"{type(exc).__name__}: {exc}"
                logger.exception("could not load %s@%s", self._model_name, self._alias)
            await asyncio.sleep(self._reload_interval_s)

    async def _sync_with_alias(self) -> None:
        mv = await asyncio.to_thread(registry.alias_version, self._client, self._model_name, self._alias)
        if mv is None:
            raise LookupError(f"registered model {self._model_name!r} has no alias {self._alias!r}")
        current = self._predictor
        if current is not None and current.version == str(mv.version):
            self._error = None  # the alias came back to the serving version after a failed move
            return
        candidate = await asyncio.to_thread(self._load_and_warm_up, str(mv.version))
        self._predictor, self._error = candidate, None
        logger.info("now serving %s v%s (was %s)", self._model_name, candidate.version,
                    current.version if current else "nothing")

    def _load_and_warm_up(self, version: str) -> Predictor:
        loaded = registry.load_version(self._client, self._model_name, version, n_threads=self._num_threads)
        candidate = Predictor(loaded, self._features)
        candidate.warm_up()
        return candidate


def build_app(args: AppArgs) -> Application:
    """Ray Serve application builder (``serving.app:build_app``): the scorer sized from ``params.yaml``."""
    args = AppArgs.model_validate(args)
    params = load_params(args.params_path)
    s = params.serve
    deployment = FraudScorer.options(
        max_ongoing_requests=s.max_ongoing_requests,
        autoscaling_config={
            "min_replicas": s.min_replicas,
            "max_replicas": s.max_replicas,
            "target_ongoing_requests": s.target_ongoing_requests,
        },
    )
    return deployment.bind(
        tracking_uri=args.tracking_uri or mlflow_tracking_uri(),
        model_name=args.model_name or s.model_name,
        alias=args.alias or s.alias,
        num_threads=s.num_threads,
        features=params.features.model_dump(mode="json"),
        reload_interval_s=args.reload_interval_s,
        max_batch_size=s.max_ongoing_requests,
    )


def start_serving(tracking_uri: str | None = None, host: str | None = None, port: int | None = None,
                  timeout_s: float = 180.0) -> str:
    """Start local Ray and Serve, deploy the scorer, wait until ``/ready`` answers 200; return the base URL."""
    import ray

    disable_telemetry()
    s = load_params().serve
    host, port = host or s.host, port or s.port
    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": host, "port": port})
        serve.run(build_app(AppArgs(tracking_uri=tracking_uri)), name=APP_NAME, route_prefix="/", blocking=False)
        base_url = f"http://{host}:{port}"
        wait_until_ready(base_url, timeout_s)
    except BaseException:
        stop_serving()
        raise
    return base_url


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
    """Shut down Serve, then Ray (safe to call when either is not running)."""
    import ray

    if ray.is_initialized():
        serve.shutdown()
    ray.shutdown()
