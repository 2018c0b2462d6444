"""The Ray Serve application: one deployment with a FastAPI ingress that serves ``models:/<name>@<alias>``
(``params.yaml`` ``registry``), and its builder. :mod:`serving.local` starts it on a local Ray.

Endpoints: ``POST /predict`` (one transaction, micro-batched on a scoring thread: :mod:`serving.batcher`),
``POST /predict/batch`` (up to ``serve.max_batch_rows``), ``POST /labels`` (late fraud labels), ``GET /health``
(liveness), ``GET /ready`` (200 with the model version once a model is loaded and warmed up, else 503) and
``GET /metrics`` (Prometheus text of *this replica*: with several replicas each answers for itself, so
scrape Ray's own metrics endpoint or every replica in production). OpenAPI at ``/docs``. For fraud analysts:
``GET /alerts`` (a day's alert queue by card, reasons in words), ``GET /performance`` (live performance per
week and version, alerts per day, champion history, drift flags) and the page that shows them, ``/ui/``
(static files in ``serving/ui``, served without a key; everything it shows comes from the keyed endpoints).

Security: every endpoint but ``/health``, ``/ready`` and the docs needs the ``x-api-key``
header equal to ``$FRAUD_API_KEY`` in the replica's environment (or, for ``/alerts``, ``/performance`` and
``/labels`` only, ``$FRAUD_ANALYST_KEY`` when set); it is checked before the body is read (see
:mod:`serving.guard`). Without a key a replica refuses to start unless insecure local mode is asked for explicitly
(``$FRAUD_INSECURE_LOCAL=1`` or ``insecure_local: true``), which it logs as a warning and reports in ``/ready``.
On a local cluster Ray's workers inherit the environment of the process that started Ray;
on a remote cluster put the key into the cluster's environment (not into serve_config.yaml).

Each replica follows the alias: every ``serve.reload_interval_s`` it resolves it and, when it moved, loads the new
version in a thread, scores a warm-up row and only then swaps it in with one reference assignment; when the new
version fails to load or to warm up, the old one keeps serving, the reason is logged and ``/ready`` reports it; a
refused version is tried again after a backoff doubling from twice the interval up to 5 minutes
(:mod:`serving.refusals`), not downloaded every interval. Every answer names the version that scored it. With
several replicas each swaps on its own schedule, so for up to one reload interval two replicas may answer with
different versions. A version's features are built with the knobs it was trained with (its ``feature_definition``
tag), never with the replica's ``params.yaml``; a version without one, or with one this code cannot build, is
refused like a corrupt one.

Features come from the online store (:mod:`fraud_assets.adapters.online_store`; a SQLite file in the state folder by
default, seeded from the snapshots by the ``online_store`` asset): each transaction is described from the
stored past of its customer and terminal by the same code as training, then recorded in the store before
the answer goes out, so the next transaction of that card sees it. ``POST /labels`` writes the labels to the
store too, each with when it arrived (its ``label_available_at``, default the request's time): the label features
read it from then on, for transactions older than ``features.label_delay_days``.

When the store fails (:mod:`fraud_assets.adapters.resilient_store`): every statement gives up after
``serve.store_timeout_s``; an unreadable store gives *degraded* answers for ``serve.store_retry_s`` (scored without
the card's past, ``"degraded": true``, counted in ``/metrics``), never a 500; transactions that cannot be written
wait in a bounded backlog that reads merge and that is written when the store is back. ``/predict``'s micro-batches
are scored in a thread of their own; a lone request (nothing else in flight) is scored on the event loop, which a
stalling store then holds for at most one read and one write timeout before its breaker answers at once, so
``/health`` keeps answering.

Every scored transaction goes to the prediction log (:mod:`fraud_assets.adapters.prediction_log`) off the hot path;
its writer's state (rows waiting, dropped, the last error) is in ``/ready``, and Serve's health check restarts a
replica whose log writer or store backlog writer stopped.

Shadow scoring (``serve.shadow``): the follower also resolves ``registry.challenger_alias`` every interval and, when
it names another version than the serving one, loads it the champion's way (XGBoost's format, its own feature
definition, a warm-up row); after each answer, a thread of its own rescores the answer's feature matrix with it
(when both versions share a feature definition; otherwise the rows are skipped and counted) and queues the scores
in the prediction log as role ``shadow``. The answers, their latency path and ``/metrics``' answer counts never
depend on it: a challenger that cannot be loaded is logged once and not shadowed (retried after the same backoff
as a refused champion), rows beyond ``serve.prediction_log_max_rows`` waiting for it are dropped and counted, a
failure is counted (``fraud_shadow_errors_total``) and never raised. ``/ready`` names the shadow version (or
null) and its counts.

Network exposure: the HTTP proxy binds 127.0.0.1 unless told otherwise, but Ray's own internal services
(GCS, raylet, object manager, workers) listen on all interfaces of the machine; run it on a trusted network
or behind a host firewall.

Nothing runs at import time: Ray starts in :func:`serving.local.start_serving` (or ``serve run
serve_config.yaml``) and models load inside replicas.
"""

import asyncio
import gc
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import orjson
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError
from ray import serve
from ray.serve import Application

from fraud_assets.adapters.online_store import OnlineFeatures, TransactionStore, open_store
from fraud_assets.adapters.prediction_log import LabelSink, PredictionLog
from fraud_assets.adapters.resilient_store import ResilientStore
from fraud_assets.core.tokens import TokenKeyError, key_id, tokenize_transactions
from fraud_assets.params import FeatureParams, load_params
from fraud_assets.settings import (
    disable_telemetry,
    mlflow_tracking_uri,
    online_store_location,
    prediction_log_location,
    token_key,
)
from serving.api import (
    LABEL_BATCH,
    AlertQueue,
    ErrorDetail,
    Health,
    LabelsStored,
    Performance,
    Readiness,
    RequestTypes,
    Score,
    ScoreBatch,
    ValidationErrors,
    request_types,
)
from serving.batcher import MicroBatcher
from serving.guard import Guard, GuardConfig, Metrics
from serving.refusals import RefusalMemory

if TYPE_CHECKING:  # the driver that builds the app never loads the model stack (mlflow, xgboost, sklearn: ~120 MB);
    # the replica imports it where it is used (Serve ships FraudScorer to the replica by value)
    from serving.predictor import FeatureProvider, Predictor, Scored

logger = logging.getLogger("ray.serve")

APP_NAME = "fraud-detector"
API_KEY_ENV = "FRAUD_API_KEY"
ANALYST_KEY_ENV = "FRAUD_ANALYST_KEY"
UI_DIR = Path(__file__).resolve().parent / "ui"  # the analyst page, shipped inside the package
DAY_PATTERN = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$"
INSECURE_ENV = "FRAUD_INSECURE_LOCAL"
MLFLOW_CLIENT_LIMITS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                        "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
JSON = "application/json"
# A SQLite online store's write-ahead log is copied into the file by a thread of its own this often, never inside the
# commit of a scored batch (fraud_assets.adapters.online_store.SqliteTransactionStore).
STORE_CHECKPOINT_EVERY_S = 1.0
API_KEY_SCHEME = {"ApiKey": {"type": "apiKey", "in": "header", "name": "x-api-key"}}
KEYED = {"security": [{"ApiKey": []}]}
REFUSALS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorDetail, "description": "missing or invalid API key (`x-api-key`)"},
    413: {"model": ErrorDetail, "description": "body larger than serve.max_body_bytes"},
    422: {"model": ValidationErrors, "description": "a field is missing, unknown or out of bounds (named in loc)"},
    503: {"model": ErrorDetail, "description": "no model version is serving yet, or the service is overloaded"},
}
READ_REFUSALS: dict[int | str, dict[str, Any]] = {
    401: REFUSALS[401],
    422: {"model": ValidationErrors, "description": "a query parameter is malformed (named in loc)"},
    503: {"model": ErrorDetail, "description": "the service is overloaded"}}


class ScoringApi(FastAPI):
    """FastAPI whose OpenAPI document states the bounds of the replica serving it.

    The scoring endpoints read the raw body (validated by :class:`~serving.api.RequestTypes`), so their request
    schemas are written into the document here; the replica's constructor calls :meth:`configure` (one replica per
    process, like :class:`~serving.guard.Guard`: Serve serves a copy of this app, the class is shared).
    """

    requests: RequestTypes | None = None

    @classmethod
    def configure(cls, requests: RequestTypes) -> None:
        """Document the transaction bodies with these validators' bounds."""
        cls.requests = requests

    def openapi(self) -> dict[str, Any]:
        """The document, with the API key scheme and (once configured) the transaction bodies."""
        if self.openapi_schema is None:
            doc = super().openapi()
            doc.setdefault("components", {})["securitySchemes"] = API_KEY_SCHEME
            if self.requests is not None:
                doc["paths"]["/predict"]["post"].update(_body_schema(self.requests.transaction))
                doc["paths"]["/predict/batch"]["post"].update(_body_schema(self.requests.transaction_batch))
        return self.openapi_schema


app = ScoringApi(title="fraud-detector", description="Scores card transactions with the champion model. "
                 "Send the API key in the `x-api-key` header; /health and /ready are open.")
app.add_middleware(Guard)
app.mount("/ui", StaticFiles(directory=UI_DIR, html=True), name="ui")


class ServiceUnavailable(Exception):
    """No model version is serving yet (or none could be loaded)."""


@app.exception_handler(RequestValidationError)
async def _invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
    """422 naming each bad field; the offending input is not echoed (NaN or inf would not encode as JSON)."""
    return JSONResponse(status_code=422, content={"detail": _validation_detail(exc)})


def _validation_detail(exc: RequestValidationError) -> list[dict[str, Any]]:
    return [{"loc": list(e["loc"]), "type": e["type"], "msg": e["msg"]} for e in exc.errors()]


@app.exception_handler(ServiceUnavailable)
async def _unavailable(_: Request, exc: ServiceUnavailable) -> JSONResponse:
    """503 while no model version serves."""
    return JSONResponse(status_code=503, content={"detail": str(exc)})


@app.exception_handler(Exception)
async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    """500 without a stack trace in the body (the log has it, with the request id)."""
    logger.error("unhandled error in %s (request %s)", request.url.path,
                 getattr(request.state, "request_id", "?"), exc_info=exc)
    return JSONResponse(status_code=500, content={"detail": "internal error"})


def _body_schema(adapter: TypeAdapter) -> dict[str, Any]:
    schema = adapter.json_schema()
    defs = schema.pop("$defs", {})

    def inline(node: Any) -> Any:  # "#/$defs/X" would point into the OpenAPI document, not this schema
        if isinstance(node, dict):
            ref = node.get("$ref", "")
            return inline(defs[ref.rsplit("/", 1)[-1]]) if ref.startswith("#/$defs/") else {
                k: inline(v) for k, v in node.items()}
        return [inline(v) for v in node] if isinstance(node, list) else node

    return {"requestBody": {"required": True, "content": {JSON: {"schema": inline(schema)}}}}


def _parse(adapter: Any, body: bytes) -> Any:
    try:
        return adapter.validate_json(body)
    except ValidationError as exc:
        raise RequestValidationError(
            [{"loc": ["body", *e["loc"]], "type": e["type"], "msg": e["msg"]} for e in exc.errors(include_url=False)]
        ) from None


def _day(text: str | None) -> date | None:
    try:
        return None if text is None else date.fromisoformat(text)
    except ValueError:
        raise RequestValidationError([{"loc": ["query", "day"], "type": "date_from_datetime_parsing",
                                       "msg": "day must be a calendar date YYYY-MM-DD"}]) from None


def _one_line(exc: BaseException) -> str:
    """An error as ``/ready`` shows it: its first line, at most 300 characters (no native stack trace)."""
    return f"{type(exc).__name__}: {exc}".splitlines()[0][:300]


def _json(content: Any, status_code: int = 200) -> Response:
    return Response(orjson.dumps(content), status_code=status_code, media_type=JSON)


class AppArgs(BaseModel):
    """Arguments of :func:`build_app`; unset values come from ``params.yaml`` and ``settings``."""

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())

    tracking_uri: str | None = None
    params_path: str | None = None
    overrides: dict[str, Any] = Field(default_factory=dict)  # dotted params keys, as load_params takes them
    reload_interval_s: float | None = Field(default=None, gt=0)
    prediction_log: str | None = None
    online_store: str | None = None
    insecure_local: bool = False


class _StoreLabels:
    """Late labels into the online store (where terminal fraud rates read them)."""

    def __init__(self, store: TransactionStore) -> None:
        self._store = store

    def record_labels(self, labels: list[dict[str, Any]], request_id: str) -> int:
        return self._store.add_labels(labels)


class ShadowReadiness(Readiness):
    """Readiness with the shadow version beside the serving one."""

    shadow_version: str | None = Field(default=None, description=(
        "the challenger version this replica scores beside the champion, off the answer path (null: none)"))
    shadow: dict[str, Any] | None = Field(default=None, description=(
        "shadow scoring (serve.shadow): the alias followed, rows scored, skipped (another feature definition), "
        "dropped (too many waiting), failed batches, why no version is shadowed (null: nothing wrong); null when off"))


class _Shadow:
    """The challenger scoring beside the champion: its :class:`Predictor` (set by the alias follower) and a thread of
    its own that rescores each answered batch's feature matrix and queues the scores in the prediction log.

    Off the answer path: a batch is handed over once its answer is built; at most ``max_rows`` rows wait (beyond:
    dropped and counted); a batch whose champion built its features with another definition is skipped and
    counted; a failed batch is counted and logged once per episode, never raised.
    """

    def __init__(self, alias: str, log: PredictionLog, max_rows: int, registry: CollectorRegistry,
                 reload_interval_s: float) -> None:
        self.alias = alias
        self.predictor: Predictor | None = None
        self.error: str | None = None  # why the alias's version is not shadowed (refused, unreadable alias)
        self.refusals = RefusalMemory(reload_interval_s, max(300.0, reload_interval_s))
        self._log, self._max_rows = log, max_rows
        self._lock = threading.Lock()
        self._waiting = 0  # rows handed over, not scored yet
        self._failing = False
        self.counts = {"scored": 0, "skipped": 0, "dropped": 0, "errors": 0}
        self._rows = Counter("fraud_shadow_rows", "Answered transactions by what shadow scoring did with them",
                             ["outcome"], registry=registry)
        self._errors = Counter("fraud_shadow_errors", "Shadow scoring batches that failed (no answer is affected)",
                               registry=registry)
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="shadow")

    def submit(self, champion: "Predictor", request_ids: list[str], transactions: list[dict[str, Any]],
               scored: "Scored") -> None:
        """Hand an answered batch over for shadow scoring (returns at once; nothing when no version is shadowed)."""
        shadow, n = self.predictor, len(transactions)
        if shadow is None or not n or shadow.version == champion.version:
            return
        with self._lock:
            full = self._waiting + n > self._max_rows
            if not full:
                self._waiting += n
        if full:
            self._count("dropped", n)
            return
        try:
            self._worker.submit(self._score, shadow, champion, request_ids, transactions, scored)
        except RuntimeError:  # shutting down: the replica is stopping
            with self._lock:
                self._waiting -= n
            self._count("dropped", n)

    def status(self) -> dict[str, Any]:
        """What ``/ready`` shows of shadow scoring."""
        return {"alias": self.alias, "version": self.predictor.version if self.predictor else None,
                "waiting": self._waiting, **self.counts, "error": self.error}

    def refused(self, message: str) -> None:
        """The alias's version is not shadowed because of ``message``: logged the first time it comes, kept for
        ``/ready``."""
        if message != self.error:
            logger.warning("not shadowing %s (answers are not affected): %s", self.alias, message)
        self.predictor, self.error = None, message

    def unreadable(self, message: str) -> None:
        """The alias cannot be read (``message``, logged the first time it comes): the shadow version, if any, goes
        on until it can."""
        if message != self.error:
            logger.warning("cannot follow %s for shadow scoring (answers are not affected): %s", self.alias, message)
        self.error = message

    def close(self) -> None:
        """Score what was handed over (before the prediction log's last flush)."""
        self._worker.shutdown(wait=True)

    def _score(self, shadow: "Predictor", champion: "Predictor", request_ids: list[str],
               transactions: list[dict[str, Any]], scored: "Scored") -> None:
        n = len(transactions)
        try:
            positions = shadow.shadow_positions(champion)
            if positions is None:
                self._count("skipped", n)
                return
            probabilities = shadow.probabilities_of_matrix(scored.features[:, positions])
            kept = self._log.record_shadow(request_ids, transactions, shadow.version, shadow.threshold,
                                           probabilities.tolist(), scored.degraded)
            self._count("scored" if kept else "dropped", n)
            self._failing = False
        except Exception as exc:  # the shadow's own failure: counted, logged once per episode, never an answer's
            with self._lock:
                self.counts["errors"] += 1
            self._errors.inc()
            if not self._failing:
                logger.warning("shadow v%s could not score %d rows: %s", shadow.version, n, _one_line(exc))
            self._failing = True
        finally:
            with self._lock:
                self._waiting -= n

    def _count(self, outcome: str, n: int) -> None:
        with self._lock:
            self.counts[outcome] += n
        self._rows.labels(outcome).inc(n)


@serve.deployment
@serve.ingress(app)
class FraudScorer:
    """A replica holding one :class:`Predictor`, following the registry alias and logging every score."""

    def __init__(self, tracking_uri: str | None, model_name: str, alias: str, num_threads: int,
                 reload_interval_s: float, max_batch_size: int,
                 batch_wait_timeout_s: float, max_batch_rows: int, max_body_bytes: int, max_amount: float,
                 min_tx_date: date, prediction_log: str | None, online_store: str | None, insecure_local: bool = False,
                 reasons: Literal["alerts", "all"] = "alerts", store_timeout_s: float = 0.1,
                 store_read_threads: int = 1, store_retry_s: float = 1.0, max_pending_rows: int = 100_000,
                 prediction_log_max_rows: int = 200_000, prediction_log_retention_days: int | None = None,
                 metrics_open: bool = False, sensitive_columns: tuple[str, ...] = (),
                 shadow_alias: str | None = None) -> None:
        disable_telemetry()
        for name, value in MLFLOW_CLIENT_LIMITS.items():  # the follower asks again next interval anyway: an MLflow
            os.environ.setdefault(name, value)  # that is down shows in /ready in seconds, not after minutes of retries
        key = os.environ.get(API_KEY_ENV, "")
        self._insecure = not key
        if not key and not (insecure_local or os.environ.get(INSECURE_ENV) == "1"):
            raise RuntimeError(f"{API_KEY_ENV} is not set in the replica's environment: refusing to serve without "
                               f"an API key (set {INSECURE_ENV}=1 for an explicitly insecure local run)")
        if self._insecure:
            logger.warning("INSECURE LOCAL MODE: no API key, every endpoint is open to anyone who can reach it")
        self._metrics = Metrics()
        analyst_key = os.environ.get(ANALYST_KEY_ENV, "")
        # POST /predict is answered by the guard itself (same code as the route below, which documents it): the
        # hot path skips Starlette's routing and FastAPI's endpoint machinery (README "Serving at a bank's volume").
        Guard.configure(GuardConfig(key.encode() if key else None, max_body_bytes, self._metrics,
                                    analyst_key.encode() if analyst_key else None, metrics_open,
                                    direct={"/predict": self._predict_body}))
        self._max_batch_rows = max_batch_rows
        # Card numbers become the import's tokens before any store read, log line or answer ($FRAUD_TOKEN_KEY, the
        # same key as `fraud import`'s; docs/tokens.md): the store and the log hold tokens only.
        self._token_key, self._sensitive_columns = token_key(), sensitive_columns
        self._requests = request_types(max_amount, min_tx_date, max_batch_rows)
        ScoringApi.configure(self._requests)
        from fraud_assets.adapters import mlflow_registry

        # Unset locations are read here, from the replica's environment: a URL with a password never travels in
        # the deployment's arguments, which Serve keeps in its controller and shows (`serve status`, dashboard).
        self._client = mlflow_registry.client_for(tracking_uri or mlflow_tracking_uri())
        self._model_name, self._alias = model_name, alias
        self._num_threads = num_threads
        self._reasons: Literal["alerts", "all"] = reasons
        self._reload_interval_s = reload_interval_s
        self._refusals = RefusalMemory(reload_interval_s, max(300.0, reload_interval_s))
        self._log = PredictionLog(prediction_log or prediction_log_location(), max_queued_rows=prediction_log_max_rows,
                                  on_drop=self._metrics.log_dropped.inc, retention_days=prediction_log_retention_days)
        self._store = ResilientStore(open_store(online_store or online_store_location(), timeout_s=store_timeout_s,
                                                checkpoint_every_s=STORE_CHECKPOINT_EVERY_S,
                                                read_threads=store_read_threads),
                                     retry_s=store_retry_s,
                                     max_pending_rows=max_pending_rows, on_dropped=self._metrics.store_dropped.inc)
        # /predict's micro-batches are scored on a thread of their own, off the event loop: requests arriving
        # meanwhile are parsed and queue up as the next batch. A lone request is scored on the loop (no hand-off).
        self._batcher: MicroBatcher[tuple[dict[str, Any], str], dict[str, Any]] = MicroBatcher(
            self._score_items, max_batch_size, batch_wait_timeout_s, after=self._after_items, inline_when_alone=True)
        self._label_sinks: list[LabelSink] = [self._log, _StoreLabels(self._store)]
        self._predictor: Predictor | None = None
        # serve.shadow: the version of ``shadow_alias`` scores beside the champion (None: no shadow scoring)
        self._shadow = None if shadow_alias is None else _Shadow(
            shadow_alias, self._log, prediction_log_max_rows, self._metrics.registry, reload_interval_s)
        self._error: str | None = None
        self._follower = asyncio.get_running_loop().create_task(self._follow_alias())

    @app.get("/health", response_model=Health)
    async def health(self) -> Response:
        """Liveness: the replica answers."""
        return _json({"status": "ok"})

    @app.get("/ready", response_model=ShadowReadiness, responses={503: {"model": ShadowReadiness}})
    async def ready(self) -> Response:
        """Readiness: 200 with the serving version once a model is loaded and warmed up, else 503 with why."""
        predictor = self._predictor
        status = "ready" if predictor else ("error" if self._error else "loading")
        shadow = self._shadow.status() if self._shadow else None
        body = ShadowReadiness(status=status, model_version=predictor.version if predictor else None,
                               model_name=self._model_name, alias=self._alias, error=self._error,
                               insecure_local=self._insecure, calibrated=predictor.calibrated if predictor else None,
                               store=self._store.status().as_dict(), prediction_log=self._log.status(),
                               token_key_id=key_id(self._token_key) if self._token_key else None,
                               shadow_version=shadow["version"] if shadow else None, shadow=shadow)
        return _json(body.model_dump(), status_code=200 if predictor else 503)

    @app.get("/metrics", response_class=Response, openapi_extra=KEYED, responses={401: REFUSALS[401]})
    async def metrics(self) -> Response:
        """Prometheus metrics of this replica."""
        self._metrics.store_pending.set(self._store.status().pending_rows)
        return Response(generate_latest(self._metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.post("/predict", response_model=Score, responses=REFUSALS, openapi_extra=KEYED)
    async def predict(self, request: Request) -> Response:
        """Score one transaction (micro-batched with concurrent requests)."""
        status, body = await self._predict_body(await request.body(), request.state.request_id)
        return Response(body, status_code=status, media_type=JSON)

    async def _predict_body(self, body: bytes, request_id: str) -> tuple[int, bytes]:
        """``POST /predict``: the status and JSON body of the answer to ``body`` (the guard calls it directly)."""
        try:
            transaction = self._tokenized([_parse(self._requests.transaction, body)])[0]
            self._require_predictor()
            return 200, orjson.dumps(await self._batcher.submit((transaction, request_id)))
        except RequestValidationError as exc:
            return 422, orjson.dumps({"detail": _validation_detail(exc)})
        except ServiceUnavailable as exc:
            return 503, orjson.dumps({"detail": str(exc)})
        except Exception as exc:  # as _unexpected: no stack trace in the body, the log has it with the request id
            logger.error("unhandled error in /predict (request %s)", request_id, exc_info=exc)
            return 500, orjson.dumps({"detail": "internal error"})

    @app.post("/predict/batch", response_model=ScoreBatch, openapi_extra=KEYED, responses={**REFUSALS, 413: {
        "model": ErrorDetail, "description": "more rows than serve.max_batch_rows, or a body over the limit"}})
    async def predict_batch(self, request: Request) -> Response:
        """Score up to ``serve.max_batch_rows`` transactions with one model version, one answer per row in order."""
        transactions = _parse(self._requests.transaction_batch, await request.body())["transactions"]
        if len(transactions) > self._max_batch_rows:
            return _json({"detail": f"transactions: at most {self._max_batch_rows} rows per request"}, 413)
        transactions = self._tokenized(transactions)
        predictor = self._require_predictor()
        scored = await asyncio.to_thread(self._score_and_remember, predictor, transactions)
        self._after_scoring(predictor, transactions, scored, [request.state.request_id] * len(transactions))
        return _json({"scores": scored.decisions})

    @app.post("/labels", response_model=LabelsStored, responses=REFUSALS,
              openapi_extra={**KEYED, **_body_schema(LABEL_BATCH)})
    async def labels(self, request: Request) -> Response:
        """Store late fraud labels durably (answered once they are on disk)."""
        batch = _parse(LABEL_BATCH, await request.body())
        now = datetime.now(UTC)  # when the labels without their own arrival time arrived: every sink sees the same
        labels = [{**label.model_dump(), "label_available_at": label.label_available_at or now}
                  for label in batch.labels]
        stored = 0
        for sink in self._label_sinks:  # the prediction log first: its count is the answer
            n = await asyncio.to_thread(sink.record_labels, labels, request.state.request_id)
            stored = stored or n
        self._metrics.labels.inc(stored)
        return _json({"stored": stored})

    @app.get("/alerts", response_model=AlertQueue, responses=READ_REFUSALS, openapi_extra=KEYED)
    async def alerts(
        self,
        day: Annotated[str | None, Query(pattern=DAY_PATTERN, description="UTC day of the transactions, "
                                         "YYYY-MM-DD; default: the latest day with scores")] = None,
        model_version: Annotated[str | None, Query(min_length=1, max_length=128,
                                                   description="only alerts scored by this version")] = None,
        status: Annotated[Literal["open", "fraud", "legitimate"] | None, Query(
            description="only cards with this status")] = None,
    ) -> Response:
        """A day's alerts by card, highest score first, with reasons in words and the cards' recent transactions."""
        from serving.analyst import alerts_answer

        queue = await asyncio.to_thread(alerts_answer, self._log.path, self._store, _day(day), model_version,
                                        status, datetime.now(UTC).date())
        return _json(queue)

    @app.get("/performance", response_model=Performance, responses=READ_REFUSALS, openapi_extra=KEYED)
    async def performance(self, weeks: Annotated[int, Query(ge=1, le=104, description="weeks back from the "
                                                            "latest day with scores")] = 12) -> Response:
        """Live performance per week and model version, alerts per day, the champion's history and drift flags."""
        from serving.analyst import performance_answer

        return _json(await asyncio.to_thread(performance_answer, self._log.path, self._client, self._model_name,
                                             self._alias, weeks))

    def _score_items(self, items: list[tuple[dict[str, Any], str]]) -> tuple[list[dict[str, Any]], Any]:
        """A micro-batch of ``/predict`` requests scored on the batcher's thread (a lone one on the event loop): the
        answers, and what :meth:`_after_items` needs once they are out."""
        transactions = [tx for tx, _ in items]
        predictor = self._require_predictor()
        scored = self._score_and_remember(predictor, transactions)
        return scored.decisions, (predictor, transactions, scored, [rid for _, rid in items])

    def _after_items(self, items: list[tuple[dict[str, Any], str]], context: Any) -> None:
        self._after_scoring(*context)

    def _tokenized(self, transactions: list[dict[str, Any]]) -> list[dict[str, Any]]:
        try:
            return tokenize_transactions(transactions, self._sensitive_columns, self._token_key)
        except TokenKeyError as exc:  # a token of another key: the client's error, named, never a 500
            raise RequestValidationError([{"loc": ["body", *self._sensitive_columns[:1]], "type": "token_key",
                                           "msg": str(exc)}]) from None

    def _score_and_remember(self, predictor: "Predictor", transactions: list[dict[str, Any]]) -> "Scored":
        scored = predictor.score_with_features(transactions)
        self._store.append(transactions)  # before answering: the card's next transaction must see this one (it waits
        return scored  # in the store's backlog when the store fails, where reads find it)

    def _after_scoring(self, predictor: "Predictor", transactions: list[dict[str, Any]], scored: "Scored",
                       request_ids: list[str]) -> None:
        m, n = self._metrics, len(transactions)
        if n:
            version = scored.decisions[0]["model_version"]
            m.batch_size.observe(n)
            m.predictions.labels(version).inc(n)
            m.alerts.labels(version).inc(sum(d["alert"] for d in scored.decisions))
            if scored.degraded:
                m.degraded.inc(n)
        self._log.record(request_ids, transactions, scored.decisions, scored.features, scored.feature_names)
        if self._shadow is not None:  # after the answer's own row: it returns at once, whatever the shadow does
            self._shadow.submit(predictor, request_ids, transactions, scored)

    def check_health(self) -> None:
        """Serve's replica health check: the alias follower, the prediction log's writer and the store's backlog
        writer must still be running (a replica without one is restarted; their errors are in ``/ready``)."""
        if self._follower.done():
            cause = "cancelled" if self._follower.cancelled() else repr(self._follower.exception())
            raise RuntimeError(f"alias follower of {self._model_name}@{self._alias} stopped: {cause}")
        if not self._log.alive():
            raise RuntimeError(f"prediction log writer stopped: {self._log.status()['last_error']}")
        if not self._store.alive():
            raise RuntimeError("online store backlog writer stopped")
        if not self._batcher.alive():
            raise RuntimeError("the /predict scoring thread stopped")

    def __del__(self) -> None:
        """Serve's graceful shutdown: the store's backlog, the shadow's waiting rows and the prediction log flushed."""
        batcher = getattr(self, "_batcher", None)
        if batcher is not None:  # what is queued is scored and appended first
            batcher.close()
        store = getattr(self, "_store", None)
        if store is not None:
            store.close()
        shadow = getattr(self, "_shadow", None)
        if shadow is not None:
            shadow.close()
        log = getattr(self, "_log", None)
        if log is not None:
            log.close()

    def _feature_provider(self, p: FeatureParams) -> "FeatureProvider":
        """Online features from the store with a version's own knobs ``p`` (read only: :meth:`_after_scoring`
        records what was scored); the store read window follows them too."""
        return OnlineFeatures(self._store, p, remember=False)

    def _require_predictor(self) -> "Predictor":
        predictor = self._predictor
        if predictor is None:
            raise ServiceUnavailable(self._error or "model is loading")
        return predictor

    async def _follow_alias(self) -> None:
        while True:
            try:
                await self._sync_with_alias()
            except Exception as exc:  # the serving version (if any) keeps serving; /ready reports the error
                self._error = _one_line(exc)
                self._metrics.model_load_failures.inc()
                logger.exception("refused %s@%s; still serving %s", self._model_name, self._alias,
                                 self._predictor.version if self._predictor else "nothing")
            if self._shadow is not None:
                try:
                    await self._sync_shadow(self._shadow)
                except Exception as exc:  # the alias unreadable (the registry down): the shadow, if any, goes on
                    self._shadow.unreadable(_one_line(exc))
            await asyncio.sleep(self._reload_interval_s)

    async def _sync_with_alias(self) -> None:
        from fraud_assets.adapters import mlflow_registry

        mv = await asyncio.to_thread(mlflow_registry.alias_version, self._client, self._model_name, self._alias)
        if mv is None:
            raise LookupError(f"registered model {self._model_name!r} has no alias {self._alias!r}")
        current = self._predictor
        if current is not None and current.version == str(mv.version):
            self._error = None  # the alias came back to the serving version after a failed move
            self._refusals.forget()
            return
        waiting = self._refusals.waiting(str(mv.version), time.monotonic())
        if waiting is not None:  # refused before: not downloaded again until its backoff is over
            self._error = waiting.error
            return
        try:
            candidate = await asyncio.to_thread(self._load_and_warm_up, str(mv.version))
        except Exception as exc:  # retried after a backoff: a transient failure heals on its own
            refusal = RuntimeError(f"v{mv.version} refused: {type(exc).__name__}: {exc}")
            self._refusals.refused(str(mv.version), _one_line(refusal), time.monotonic())
            raise refusal from exc
        self._predictor, self._error = candidate, None
        self._refusals.forget()
        # What is alive now (model, store connection, imported modules) lives as long as the replica: keep it out
        # of the cyclic collector, whose full passes over it cost a 10,000-row batch up to 100 ms on this machine.
        gc.collect()  # what the old version left behind goes first, so it is not frozen with the new one
        gc.freeze()
        self._metrics.model_info.clear()
        self._metrics.model_info.labels(self._model_name, self._alias, candidate.version).set(1)
        if candidate.version.isdigit():
            self._metrics.model_version.set(int(candidate.version))
        logger.info("now serving %s v%s (was %s)", self._model_name, candidate.version,
                    current.version if current else "nothing")

    async def _sync_shadow(self, shadow: _Shadow) -> None:
        """Follow the challenger alias beside the champion's: its version is loaded the champion's way when it is not
        the serving one; no version is shadowed when it is the serving one, when the alias is gone, or when its version
        is refused (retried after a backoff, logged once). Nothing here touches the serving version or its errors."""
        from fraud_assets.adapters import mlflow_registry

        mv = await asyncio.to_thread(mlflow_registry.alias_version, self._client, self._model_name, shadow.alias)
        champion, current = self._predictor, shadow.predictor
        version = str(mv.version) if mv is not None else None
        if version is None or champion is None or version == champion.version:
            if current is not None:
                logger.info("stopped shadowing %s v%s (%s@%s now names %s)", self._model_name, current.version,
                            self._model_name, shadow.alias, f"v{version}" if version else "nothing")
            shadow.predictor, shadow.error = None, None
            shadow.refusals.forget()
            return
        if current is not None and current.version == version:
            shadow.error = None  # the alias is readable again
            return
        waiting = shadow.refusals.waiting(version, time.monotonic())
        if waiting is not None:
            return
        try:
            candidate = await asyncio.to_thread(self._load_and_warm_up, version)
        except Exception as exc:  # not shadowed; the answers never notice
            refusal = shadow.refusals.refused(version, _one_line(RuntimeError(
                f"v{version} refused: {type(exc).__name__}: {exc}")), time.monotonic())
            shadow.refused(refusal.error)
            return
        shadow.predictor, shadow.error = candidate, None
        shadow.refusals.forget()
        gc.collect()  # as after a champion swap: what lives as long as the replica stays out of the collector
        gc.freeze()
        logger.info("shadowing %s v%s beside v%s (%s@%s)", self._model_name, version, champion.version,
                    self._model_name, shadow.alias)

    def _load_and_warm_up(self, version: str) -> "Predictor":
        from fraud_assets.adapters import mlflow_registry
        from serving.predictor import Predictor

        loaded = mlflow_registry.load_version(self._client, self._model_name, version, n_threads=self._num_threads)
        candidate = Predictor(loaded, self._feature_provider(loaded.features.params), reasons=self._reasons)
        candidate.warm_up()
        return candidate


def build_app(args: AppArgs) -> Application:
    """Ray Serve application builder (``serving.app:build_app``): the scorer sized from ``params.yaml``."""
    args = AppArgs.model_validate(args)
    params = load_params(args.params_path, args.overrides)
    s = params.serve
    deployment = FraudScorer.options(
        max_ongoing_requests=s.max_ongoing_requests,
        max_queued_requests=s.max_queued_requests,
        autoscaling_config={
            "min_replicas": s.min_replicas,
            "max_replicas": s.max_replicas,
            "target_ongoing_requests": s.target_ongoing_requests,
            "upscale_delay_s": s.upscale_delay_s,
            "downscale_delay_s": s.downscale_delay_s,
        },
        logging_config={"encoding": "JSON", "enable_access_log": s.access_log},
    )
    return deployment.bind(
        tracking_uri=args.tracking_uri,  # None: the replica reads $MLFLOW_TRACKING_URI (never sent with the app)
        model_name=params.registry.model_name,
        alias=params.registry.champion_alias,
        num_threads=s.num_threads,
        reload_interval_s=args.reload_interval_s or s.reload_interval_s,
        max_batch_size=s.max_batch_size,
        batch_wait_timeout_s=s.batch_wait_timeout_s,
        max_batch_rows=s.max_batch_rows,
        max_body_bytes=s.max_body_bytes,
        max_amount=params.data.max_amount,
        min_tx_date=params.data.min_tx_date,
        prediction_log=args.prediction_log,  # None: $FRAUD_PREDICTION_LOG (a path or a postgresql:// URL)
        online_store=args.online_store,  # None: the replica reads $FRAUD_ONLINE_STORE
        insecure_local=args.insecure_local,
        reasons=s.reasons,
        store_timeout_s=s.store_timeout_s,
        store_read_threads=s.store_read_threads,
        store_retry_s=s.store_retry_s,
        max_pending_rows=s.max_pending_rows,
        prediction_log_max_rows=s.prediction_log_max_rows,
        prediction_log_retention_days=s.prediction_log_retention_days,
        metrics_open=s.metrics_open,
        sensitive_columns=tuple(params.data.sensitive_columns),
        shadow_alias=params.registry.challenger_alias if s.shadow else None,
    )
