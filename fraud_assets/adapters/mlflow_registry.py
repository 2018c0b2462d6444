"""The one MLflow boundary: experiments, model logging in XGBoost's format, versions and aliases.

Everything goes through an explicit ``MlflowClient`` bound to a tracking URI; nothing here sets
process-wide state at import time. Aliases, never the deprecated stages.
"""

from __future__ import annotations

import json
import logging
import re
import tempfile
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import xgboost as xgb
from mlflow.entities import Run
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from fraud_assets.core.calibrate import Calibrator
from fraud_assets.core.contract import (
    FeatureDefinition,
    feature_definition,
    parse_definition,
    unbuildable,
    warm_up_probability,
)
from fraud_assets.core.train import load_model, missing_features
from fraud_assets.params import FeatureParams

MODEL_ARTIFACT = "model"
THRESHOLD_TAG = "threshold"
FEATURE_DEFINITION_TAG = "feature_definition"  # the FeatureDefinition (knobs, windows, columns) as JSON
FEATURES_TAG = "features"  # the column list, comma-separated (for people reading the registry)
MONITORING_EXPERIMENT = "fraud-monitoring"  # the drift_report asset's runs, tagged month and drift_detected
FEATURE_DEFINITION_ARTIFACT = "feature_definition.json"
CALIBRATOR_TAG = "calibrator"  # the score -> probability table (core.calibrate) as JSON; absent: uncalibrated
CALIBRATOR_ARTIFACT = "calibrator.json"


class NotServable(Exception):
    """A version serving would refuse: it does not load, lacks its threshold or feature definition, or fails
    its warm-up score. The message is one line naming the version and the reason."""


@dataclass(frozen=True)
class LoadedModel:
    """A registry version ready to score."""

    version: str
    booster: xgb.Booster
    threshold: float
    tags: Mapping[str, str]
    features: FeatureDefinition  # how its features are built: the knobs it was trained with, not today's
    calibrator: Calibrator | None = None  # None: a version from before calibration, served flagged uncalibrated

    @property
    def calibrated(self) -> bool:
        """Whether its scores are calibrated probabilities (it carries a calibrator)."""
        return self.calibrator is not None


def calibrator_tags(calibrator: Calibrator) -> dict[str, str]:
    """The version tag that carries its calibrator table."""
    return {CALIBRATOR_TAG: json.dumps(calibrator.to_dict(), separators=(",", ":"))}


def _calibrator_of(model_name: str, mv: ModelVersion) -> Calibrator | None:
    if CALIBRATOR_TAG not in mv.tags:
        logging.getLogger(__name__).warning("%s v%s has no calibrator: its scores are served uncalibrated",
                                            model_name, mv.version)
        return None
    try:
        return Calibrator.from_dict(json.loads(mv.tags[CALIBRATOR_TAG]))
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{model_name} v{mv.version}: '{CALIBRATOR_TAG}' tag is malformed: {exc}") from None


def definition_tags(p: FeatureParams) -> dict[str, str]:
    """The version tags that carry the feature definition this code builds with ``p``."""
    definition = feature_definition(p)
    return {FEATURE_DEFINITION_TAG: definition.to_json(), FEATURES_TAG: ",".join(definition.columns)}


def log_feature_definition(client: MlflowClient, run_id: str, p: FeatureParams) -> None:
    """Log the feature definition built with ``p`` as a JSON artifact of the run, beside the model."""
    client.log_dict(run_id, feature_definition(p).to_dict(), FEATURE_DEFINITION_ARTIFACT)


# MLflow's notes that a person reading the pipeline's console cannot act on: schema creation of a new SQLite
# store, the uv project it detected, and the pip version it could not put into a conda.yaml nobody uses (models
# here are loaded with XGBoost from their UBJSON file, never through an MLflow environment).
_QUIET_LOGGERS = {"mlflow.store.db.utils": logging.WARNING, "mlflow.utils.uv_utils": logging.WARNING,
                  "mlflow.utils.environment": logging.ERROR, "alembic.runtime.migration": logging.WARNING}


def client_for(tracking_uri: str) -> MlflowClient:
    """A client bound to ``tracking_uri`` (the registry lives in the same store)."""
    for name, level in _QUIET_LOGGERS.items():
        logging.getLogger(name).setLevel(level)
    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def ensure_experiment(client: MlflowClient, name: str, artifact_root: str) -> str:
    """The id of experiment ``name``, created with artifacts under ``artifact_root`` if missing."""
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    try:
        return client.create_experiment(name, artifact_location=f"{artifact_root.rstrip('/')}/{name}")
    except MlflowException:  # created concurrently by another process
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def log_booster(booster: xgb.Booster, run_id: str, tracking_uri: str) -> str:
    """Log ``booster`` in XGBoost's UBJSON format to ``run_id``; return the logged model's URI."""
    mlflow.set_tracking_uri(tracking_uri)
    with mlflow.start_run(run_id=run_id, nested=mlflow.active_run() is not None):
        info = mlflow.xgboost.log_model(
            booster,
            name=MODEL_ARTIFACT,
            model_format="ubj",
            pip_requirements=[f"xgboost=={xgb.__version__}"],
        )
    return info.model_uri


def _logged_model_id(model_uri: str) -> str | None:
    """The logged model's id in a ``models:/<model_id>`` URI (what :func:`log_booster` returns), else None."""
    found = re.fullmatch(r"models:/(m-[0-9a-f]+)", model_uri)
    return found.group(1) if found else None


def register_version(client: MlflowClient, model_name: str, model_uri: str, run_id: str,
                     tags: Mapping[str, str]) -> ModelVersion:
    """Register ``model_uri`` as a new version of ``model_name`` with ``tags``.

    A logged model's URI goes with its id, as ``mlflow.register_model`` sends it: a tracking server checks
    the source against the logged model, and refuses a ``models:/<model_id>`` source checked against the run.
    """
    try:
        client.create_registered_model(model_name)
    except MlflowException as exc:
        if "already exists" not in str(exc).lower() and "RESOURCE_ALREADY_EXISTS" not in str(exc):
            raise
    return client.create_model_version(model_name, source=model_uri, run_id=run_id,
                                       tags={k: str(v) for k, v in tags.items()},
                                       model_id=_logged_model_id(model_uri))


def alias_version(client: MlflowClient, model_name: str, alias: str) -> ModelVersion | None:
    """The version ``alias`` points at, or None when the alias (or the model) does not exist."""
    try:
        return client.get_model_version_by_alias(model_name, alias)
    except MlflowException as exc:
        if "RESOURCE_DOES_NOT_EXIST" in str(exc) or "not found" in str(exc).lower():
            return None
        raise


def _definition_of(model_name: str, mv: ModelVersion) -> FeatureDefinition:
    """The version's feature definition, refused (``ValueError``) when missing, malformed or foreign to this code."""
    raw = mv.tags.get(FEATURE_DEFINITION_TAG)
    if raw is None:
        raise ValueError(f"{model_name} v{mv.version} has no '{FEATURE_DEFINITION_TAG}' tag: it was registered "
                         "before versions carried their feature knobs, windows and columns; retrain it")
    try:
        definition = parse_definition(raw)
    except ValueError as exc:
        raise ValueError(f"{model_name} v{mv.version}: {exc}") from exc
    problems = unbuildable(definition)
    if problems:
        raise ValueError(f"{model_name} v{mv.version} needs features this code does not build: {'; '.join(problems)}")
    return definition


def _threshold_of(model_name: str, mv: ModelVersion) -> float:
    if THRESHOLD_TAG not in mv.tags:
        raise ValueError(f"{model_name} v{mv.version} has no '{THRESHOLD_TAG}' tag")
    try:
        return float(mv.tags[THRESHOLD_TAG])
    except ValueError:
        raise ValueError(f"{model_name} v{mv.version}: '{THRESHOLD_TAG}' tag {mv.tags[THRESHOLD_TAG]!r} "
                         "is not a number") from None


def load_version(client: MlflowClient, model_name: str, version: str, n_threads: int = 1) -> LoadedModel:
    """Download a version's XGBoost file and load it (no pickle, no pyfunc), with its threshold and feature
    definition; ``ValueError`` when either is missing or the definition is one this code cannot build."""
    mv = client.get_model_version(model_name, version)
    threshold, definition = _threshold_of(model_name, mv), _definition_of(model_name, mv)
    calibrator = _calibrator_of(model_name, mv)
    with tempfile.TemporaryDirectory(prefix="fraud-model-") as tmp:
        # Resolve the storage location through *this* client, then fetch it directly: a ``models:/`` URI
        # would be resolved again through the process-wide registry URI, which a Ray replica does not share.
        location = client.get_model_version_download_uri(model_name, version)
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=location, dst_path=tmp))
        files = sorted(local.rglob("*.ubj")) or sorted(local.rglob("model.json"))
        if not files:
            raise FileNotFoundError(f"{model_name} v{version}: no XGBoost model file in {mv.source}")
        booster = load_model(files[0], n_threads=n_threads)
    unlisted = missing_features(booster, definition.columns)
    if unlisted:
        raise ValueError(f"{model_name} v{version}: the model needs columns its feature definition does not list: "
                         f"{', '.join(unlisted)}")
    return LoadedModel(version=str(mv.version), booster=booster, threshold=threshold, tags=dict(mv.tags),
                       features=definition, calibrator=calibrator)


def check_servable(client: MlflowClient, model_name: str, version: str, n_threads: int = 1) -> LoadedModel:
    """Load ``version`` as serving would and score a warm-up transaction with its own feature knobs.

    Raises :class:`NotServable` (one line: the version and why) when it does not load, lacks its threshold
    or feature definition, has a threshold outside [0, 1], or its warm-up score is not a probability.
    """
    try:
        loaded = load_version(client, model_name, version, n_threads=n_threads)
        if not 0.0 <= loaded.threshold <= 1.0:
            raise ValueError(f"threshold {loaded.threshold} is outside [0, 1]")
        warm_up_probability(loaded.version, loaded.booster, loaded.features.params)
    except Exception as exc:  # every way a version fails becomes one refusal naming it (the cause is chained)
        detail = (str(exc).splitlines() or [""])[0][:300]
        raise NotServable(f"{model_name} v{version} is not servable: {type(exc).__name__}: {detail}") from exc
    return loaded


def load_alias(client: MlflowClient, model_name: str, alias: str, n_threads: int = 1) -> LoadedModel:
    """Resolve ``alias`` to a version and load it."""
    mv = alias_version(client, model_name, alias)
    if mv is None:
        raise LookupError(f"registered model {model_name!r} has no alias {alias!r}")
    return load_version(client, model_name, str(mv.version), n_threads=n_threads)


def _events_name(model_name: str) -> str:
    return f"{model_name}-alias-events"


def _events_experiment(client: MlflowClient, model_name: str) -> str:
    exp = client.get_experiment_by_name(_events_name(model_name))
    if exp is not None:
        return exp.experiment_id
    try:
        return client.create_experiment(_events_name(model_name))
    except MlflowException:
        exp = client.get_experiment_by_name(_events_name(model_name))
        if exp is None:
            raise
        return exp.experiment_id


# A move's run status is its state: RUNNING an intent not yet confirmed, FINISHED a confirmed move (every run
# written before intents existed is one), KILLED an intent abandoned because the alias never reached its version.
# Each status change is one write; the ``outcome`` tag a reconciliation adds is a note for people.
_INTENT, _CONFIRMED, _ABANDONED = "RUNNING", "FINISHED", "KILLED"
_MOVE_FIELDS = ("version", "previous_version", "actor", "reason", "kind")


def _move_runs(client: MlflowClient, model_name: str, alias: str, status: str) -> list[Run]:
    """The recorded moves of ``alias`` in ``status``, oldest intent first (reads only, never creates)."""
    exp = client.get_experiment_by_name(_events_name(model_name))
    if exp is None:
        return []
    return client.search_runs([exp.experiment_id],
                              filter_string=f"tags.alias = '{alias}' and attributes.status = '{status}'",
                              order_by=["attributes.start_time ASC"], max_results=10_000)


def _move_entry(run: Run) -> dict[str, str]:
    return {"time": str(run.info.start_time), **{k: run.data.tags.get(k, "") for k in _MOVE_FIELDS}}


def _record_intent(client: MlflowClient, model_name: str, alias: str, version: str, previous: str | None,
                   reason: str, actor: str, kind: str) -> str:
    """Write the intent of a move (a RUNNING run naming from, to, why, who and a move id); return its run id."""
    tags = {"event": "alias_moved", "model": model_name, "alias": alias, "version": str(version),
            "previous_version": previous or "", "reason": reason[:4000], "actor": actor, "kind": kind,
            "move_id": uuid.uuid4().hex}
    run = client.create_run(_events_experiment(client, model_name), run_name=f"{alias}->v{version}", tags=tags)
    return run.info.run_id


def _confirm_move(client: MlflowClient, run_id: str) -> None:
    """Confirm the move whose intent is ``run_id``: one write, after the alias was set."""
    client.set_terminated(run_id, status=_CONFIRMED)


def _resolve_move(client: MlflowClient, run_id: str, status: str, outcome: str) -> None:
    """Settle an unconfirmed intent as confirmed or abandoned, noting why."""
    client.set_tag(run_id, "outcome", outcome)
    client.set_terminated(run_id, status=status)


def move_alias(client: MlflowClient, model_name: str, alias: str, version: str, reason: str,
               actor: str, kind: str = "move") -> str | None:
    """Point ``alias`` at ``version`` and record the move (who, why, from what) in MLflow itself.

    Every move is a run in the experiment ``<model>-alias-events``, so the history lives in the same
    store as the registry on any backend. It is written in three steps: the intent (a RUNNING run with a
    ``move_id``), the alias set in the registry, then the confirmation (the run FINISHED); a crash in
    between leaves an intent that :func:`alias_history` does not show and that the next move resolves
    first (:func:`reconcile_alias_moves`). Returns the version the alias pointed at before (or None).
    The version passes :func:`check_servable` first, so the alias never points at a version serving would
    refuse (:class:`NotServable` otherwise, and nothing moves).
    """
    check_servable(client, model_name, version)
    reconcile_alias_moves(client, model_name, alias)
    before = alias_version(client, model_name, alias)
    previous = str(before.version) if before is not None else None
    run_id = _record_intent(client, model_name, alias, version, previous, reason, actor, kind)
    client.set_registered_model_alias(model_name, alias, version)
    _confirm_move(client, run_id)
    return previous


def alias_history(client: MlflowClient, model_name: str, alias: str) -> list[dict[str, str]]:
    """Every confirmed move of ``alias``, oldest first: time, version, previous version, actor, reason, kind."""
    return [_move_entry(r) for r in _move_runs(client, model_name, alias, _CONFIRMED)]


def pending_alias_moves(client: MlflowClient, model_name: str, alias: str) -> list[dict[str, str]]:
    """The intents of ``alias`` not yet confirmed nor abandoned, oldest first: the fields of
    :func:`alias_history` and the ``move_id``. One that stays here was cut short by a crash or an error."""
    return [{**_move_entry(r), "move_id": r.data.tags.get("move_id", "")}
            for r in _move_runs(client, model_name, alias, _INTENT)]


def reconcile_alias_moves(client: MlflowClient, model_name: str, alias: str) -> list[dict[str, str]]:
    """Resolve the unconfirmed intents of ``alias`` by where the alias points now; return them with an ``outcome``.

    Newest first, an intent made after the last confirmed move whose version is where the alias points is
    confirmed (the crash came after the registry write), and the alias is then traced back to that intent's
    previous version for the intent before it; every other intent is abandoned. A move another process has in
    flight at that instant may be judged abandoned; its own confirmation, written after its registry write,
    overrides that.
    """
    pending = _move_runs(client, model_name, alias, _INTENT)
    if not pending:
        return []
    confirmed = _move_runs(client, model_name, alias, _CONFIRMED)
    since = confirmed[-1].info.start_time if confirmed else 0
    now = alias_version(client, model_name, alias)
    expected = str(now.version) if now is not None else None
    resolved: list[dict[str, str]] = []
    for run in reversed(pending):
        target = run.data.tags.get("version", "")
        if expected is not None and target == expected and run.info.start_time >= since:
            status, outcome = _CONFIRMED, f"confirmed on reconciliation: {alias} points at v{target}"
            expected = run.data.tags.get("previous_version") or None
        else:
            where = f"v{now.version}" if now is not None else "no version"
            status, outcome = _ABANDONED, f"abandoned on reconciliation: {alias} points at {where}, not v{target}"
        _resolve_move(client, run.info.run_id, status, outcome)
        logging.getLogger(__name__).info("%s@%s move %s", model_name, alias, outcome)
        resolved.append({**_move_entry(run), "move_id": run.data.tags.get("move_id", ""),
                         "outcome": "confirmed" if status == _CONFIRMED else "abandoned"})
    return resolved[::-1]


def drift_flags(client: MlflowClient, experiment: str = MONITORING_EXPERIMENT, max_runs: int = 120
                ) -> list[dict[str, Any]]:
    """The drift reports logged in ``experiment``, oldest month first (the newest report of a month wins): month,
    ``drift_detected``, the run's start time (epoch ms, text) and its ``score_psi`` metric (None when not logged)."""
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    runs = client.search_runs([exp.experiment_id], filter_string="tags.drift_detected != ''",
                              order_by=["attributes.start_time DESC"], max_results=max_runs)
    latest: dict[str, dict[str, Any]] = {}
    for r in runs:
        month = r.data.tags.get("month", "")
        latest.setdefault(month, {"month": month, "drift_detected": r.data.tags.get("drift_detected") == "True",
                                  "time": str(r.info.start_time), "score_psi": r.data.metrics.get("score_psi")})
    return sorted(latest.values(), key=lambda f: f["month"])


def log_pngs(client: MlflowClient, run_id: str, pngs: dict[str, bytes], artifact_path: str = "plots") -> None:
    """Log PNG images (file name -> bytes) as artifacts of a run."""
    with tempfile.TemporaryDirectory() as tmp:
        for name, data in pngs.items():
            (Path(tmp) / name).write_bytes(data)
        client.log_artifacts(run_id, tmp, artifact_path)


def log_snapshot_inputs(client: MlflowClient, run_id: str, snapshots: list[dict[str, Any]]) -> None:
    """Record each monthly snapshot a run used as an MLflow dataset input whose digest is its DVC hash.

    Each item: ``month``, ``digest`` (DVC MD5), ``source`` (path in the repo), ``context`` (training or
    evaluation), ``rows``, ``fraud_rate``. They show in the run's Datasets panel of the MLflow UI.
    """
    import json

    from mlflow.entities import Dataset, DatasetInput, InputTag

    inputs = [
        DatasetInput(
            Dataset(name=f"transactions-{s['month']}", digest=s["digest"], source_type="dvc", source=s["source"],
                    profile=json.dumps({"rows": s["rows"], "fraud_rate": s["fraud_rate"]})),
            tags=[InputTag("mlflow.data.context", s["context"])],
        )
        for s in snapshots
    ]
    client.log_inputs(run_id, datasets=inputs)
