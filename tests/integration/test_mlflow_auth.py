"""MLflow behind `mlflow server --app-name basic-auth`: the pipeline's user writes, serving's user only reads.

A real server on 127.0.0.1 (SQLite backend store and auth database in a temporary folder, a random admin
password) holds the registry. The admin only creates users and grants; a `pipeline` user logs, registers and
promotes a version with this project's own registry code (it owns what it creates); a `serving` user with
READ on the registered model and on the alias history then reads the champion and loads it, and is refused
when it tries to move the alias or register a version. A client without credentials gets 401. Credentials
reach the client only through MLFLOW_TRACKING_USERNAME/PASSWORD. Artifacts live in a file root the clients
reach directly, as they reach an object store (docs/mlflow-auth.md).
"""

from __future__ import annotations

import importlib.util
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pytest
from mlflow.exceptions import MlflowException

from fraud_assets.adapters import mlflow_registry
from fraud_assets.params import load_params
from fraud_assets.settings import TELEMETRY_OFF
from tests.unit.test_registry import _tiny_booster

# Importing MLflow's auth client imports its server app, whose Starlette shim warns about itself.
pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore:starlette.middleware.wsgi is deprecated")]

MODEL, ALIAS, ADMIN, PIPELINE, SERVING = "fraud-detector", "champion", "admin", "pipeline", "serving"
_CREDENTIAL_ENV = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")


@dataclass(frozen=True)
class AuthRegistry:
    """The running server and what the admin put into it."""

    url: str
    log: Path
    pipeline_password: str
    serving_password: str
    versions: tuple[str, str]  # v1 is the champion, v2 a servable version nobody promoted
    model_uri: str  # v2's logged model, for a second registration attempt
    run_id: str


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(log: Path, lines: int = 40) -> str:
    text = log.read_text(errors="replace") if log.exists() else ""
    return "\n".join(text.splitlines()[-lines:])


def _wait_ready(proc: subprocess.Popen[bytes], url: str, log: Path, timeout: float = 60.0) -> None:
    """Poll the unauthenticated health endpoint until it answers 200 (``pytest.fail`` with the log tail otherwise)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"mlflow server exited with {proc.returncode} before answering:\n{_tail(log)}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    pytest.fail(f"mlflow server did not answer {url}/health within {timeout:.0f} s:\n{_tail(log)}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the server's process group (the CLI and its uvicorn worker); SIGKILL what outlives 20 s."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        proc.poll()
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)


def _use(m: pytest.MonkeyPatch, user: str | None, password: str | None) -> None:
    """Point the process's MLflow credentials at ``user`` (None: no credentials at all)."""
    for key, value in zip(_CREDENTIAL_ENV, (user, password), strict=True):
        if value is None:
            m.delenv(key, raising=False)
        else:
            m.setenv(key, value)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path, str]]:
    """A basic-auth MLflow server on a free port of 127.0.0.1: its URL, its log file and the admin password."""
    if importlib.util.find_spec("flask_wtf") is None:
        pytest.fail("`mlflow server --app-name basic-auth` needs Flask-WTF (MLflow's `auth` extra), "
                    "which this environment does not have")
    tmp = tmp_path_factory.mktemp("mlflow-auth")
    config = tmp / "basic_auth.ini"
    config.write_text("[mlflow]\ndefault_permission = NO_PERMISSIONS\n"
                      f"database_uri = sqlite:///{tmp / 'auth.db'}\nadmin_username = {ADMIN}\n")
    admin_password = secrets.token_urlsafe(24)
    env = {k: v for k, v in os.environ.items() if k not in {*_CREDENTIAL_ENV, "MLFLOW_TRACKING_URI"}}
    env.update(TELEMETRY_OFF, MLFLOW_AUTH_CONFIG_PATH=str(config), MLFLOW_AUTH_ADMIN_PASSWORD=admin_password,
               MLFLOW_FLASK_SERVER_SECRET_KEY=secrets.token_urlsafe(32))
    port, log = _free_port(), tmp / "server.log"
    cmd = [sys.executable, "-m", "mlflow", "server", "--app-name", "basic-auth", "--host", "127.0.0.1",
           "--port", str(port), "--workers", "1", "--backend-store-uri", f"sqlite:///{tmp / 'mlflow.db'}",
           "--no-serve-artifacts", "--default-artifact-root", (tmp / "artifacts").as_uri()]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=tmp, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_ready(proc, url, log)
        yield url, log, admin_password
    finally:
        _stop(proc)


@pytest.fixture(scope="module")
def registry(server: tuple[str, Path, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuthRegistry]:
    """Two versions registered by `pipeline`, v1 made champion, and a `serving` user that may only read them."""
    from mlflow.server.auth.client import AuthServiceClient

    url, log, admin_password = server
    artifacts = tmp_path_factory.mktemp("mlflow-auth-artifacts").as_uri()
    with pytest.MonkeyPatch.context() as m:
        m.setenv("MLFLOW_TRACKING_URI", url)  # log_booster sets it process-wide: undone on leaving
        pipeline_password, serving_password = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
        _use(m, ADMIN, admin_password)
        auth = AuthServiceClient(url)
        auth.create_user(PIPELINE, pipeline_password)
        auth.create_user(SERVING, serving_password)
        _use(m, PIPELINE, pipeline_password)
        try:
            client = mlflow_registry.client_for(url)
            exp = mlflow_registry.ensure_experiment(client, "fraud-detection", artifacts)
            tags = {"threshold": "0.5", **mlflow_registry.definition_tags(load_params().features)}
            versions: list[str] = []
            model_uri = run_id = ""
            for seed in (1, 2):
                run_id = client.create_run(exp).info.run_id
                model_uri = mlflow_registry.log_booster(_tiny_booster(seed), run_id, url)
                versions.append(str(mlflow_registry.register_version(client, MODEL, model_uri, run_id,
                                                                     tags).version))
                client.set_terminated(run_id)
            mlflow_registry.move_alias(client, MODEL, ALIAS, versions[0], "first champion", actor="pipeline")
            events = client.get_experiment_by_name(f"{MODEL}-alias-events").experiment_id
            _use(m, ADMIN, admin_password)
            auth.grant_user_permission(SERVING, "registered_model", MODEL, "READ")
            auth.grant_user_permission(SERVING, "experiment", events, "READ")  # the history the analyst page shows
        finally:
            mlflow.set_tracking_uri(None)  # the process-wide URI log_booster set names a server about to stop
    yield AuthRegistry(url, log, pipeline_password, serving_password, (versions[0], versions[1]),
                       model_uri, run_id)


def _champion_as_pipeline(registry: AuthRegistry, monkeypatch: pytest.MonkeyPatch) -> str:
    _use(monkeypatch, PIPELINE, registry.pipeline_password)
    mv = mlflow_registry.alias_version(mlflow_registry.client_for(registry.url), MODEL, ALIAS)
    assert mv is not None, _tail(registry.log)
    return str(mv.version)


def test_without_credentials_or_with_a_wrong_password_the_registry_answers_401(
        registry: AuthRegistry, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.mlflow/credentials to fall back on
    client = mlflow_registry.client_for(registry.url)
    for user, password in ((None, None), (SERVING, "not-" + registry.serving_password)):
        _use(monkeypatch, user, password)
        with pytest.raises(MlflowException) as refused:
            mlflow_registry.alias_version(client, MODEL, ALIAS)
        assert refused.value.get_http_status_code() == 401, f"{refused.value}\n{_tail(registry.log)}"


def test_the_serving_user_reads_the_champion_and_loads_it(registry: AuthRegistry,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    _use(monkeypatch, SERVING, registry.serving_password)
    client = mlflow_registry.client_for(registry.url)
    mv = mlflow_registry.alias_version(client, MODEL, ALIAS)
    assert mv is not None and str(mv.version) == registry.versions[0], _tail(registry.log)
    loaded = mlflow_registry.load_version(client, MODEL, str(mv.version))
    assert loaded.version == registry.versions[0] and loaded.threshold == 0.5
    assert [h["version"] for h in mlflow_registry.alias_history(client, MODEL, ALIAS)] == [registry.versions[0]]


def test_the_serving_user_can_neither_move_the_alias_nor_register_a_version(
        registry: AuthRegistry, monkeypatch: pytest.MonkeyPatch) -> None:
    _use(monkeypatch, SERVING, registry.serving_password)
    client = mlflow_registry.client_for(registry.url)
    v1, v2 = registry.versions
    attempts = {
        "set the alias": lambda: client.set_registered_model_alias(MODEL, ALIAS, v2),
        "move_alias": lambda: mlflow_registry.move_alias(client, MODEL, ALIAS, v2, "not mine to move",
                                                         actor="serving"),
        "register_version": lambda: mlflow_registry.register_version(client, MODEL, registry.model_uri,
                                                                     registry.run_id, {"threshold": "0.5"}),
    }
    for name, attempt in attempts.items():
        with pytest.raises(MlflowException) as refused:
            attempt()
        assert refused.value.error_code == "PERMISSION_DENIED", f"{name}: {refused.value}\n{_tail(registry.log)}"
    assert mlflow_registry.pending_alias_moves(client, MODEL, ALIAS) == []  # not even an intent was written
    assert _champion_as_pipeline(registry, monkeypatch) == v1
    pipeline = mlflow_registry.client_for(registry.url)
    assert sorted(str(mv.version) for mv in pipeline.search_model_versions(f"name = '{MODEL}'")) == sorted([v1, v2])
