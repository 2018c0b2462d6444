"""Crash-consistent alias moves: intent, registry write, confirmation; history and rollback read confirmed moves."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from fraud_assets.adapters import mlflow_registry
from fraud_assets.cli.main import app
from fraud_assets.core.promote import rollback_target
from fraud_assets.params import load_params
from tests.unit.test_registry import _tiny_booster

MODEL, ALIAS = "fraud-detector", "champion"


class Crash(RuntimeError):
    """Stands for the process dying at that point."""


@pytest.fixture
def registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[MlflowClient, list[str]]:
    """A SQLite registry in ``tmp_path`` (also the CLI's, through the environment) with three servable versions."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    client = mlflow_registry.client_for(uri)
    exp = mlflow_registry.ensure_experiment(client, "fraud-detection", (tmp_path / "artifacts").as_uri())
    tags = {"threshold": "0.5", **mlflow_registry.definition_tags(load_params().features)}
    versions = []
    for seed in (1, 2, 3):
        run = client.create_run(exp)
        model_uri = mlflow_registry.log_booster(_tiny_booster(seed), run.info.run_id, uri)
        versions.append(str(mlflow_registry.register_version(client, MODEL, model_uri, run.info.run_id,
                                                             tags).version))
        client.set_terminated(run.info.run_id)
    return client, versions


def _move(client: MlflowClient, version: str, reason: str = "test") -> str | None:
    return mlflow_registry.move_alias(client, MODEL, ALIAS, version, reason, actor="test")


def _champion(client: MlflowClient) -> str | None:
    mv = mlflow_registry.alias_version(client, MODEL, ALIAS)
    return None if mv is None else str(mv.version)


def _versions(client: MlflowClient) -> list[tuple[str, str]]:
    return [(h["previous_version"], h["version"]) for h in mlflow_registry.alias_history(client, MODEL, ALIAS)]


def _event_runs(client: MlflowClient) -> list[Any]:
    exp = client.get_experiment_by_name(f"{MODEL}-alias-events")
    return client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"])


def _crash_before_the_alias_is_set(client: MlflowClient, monkeypatch: pytest.MonkeyPatch) -> None:
    def crash(*args: object, **kwargs: object) -> None:
        raise Crash("died before the registry write")

    monkeypatch.setattr(client, "set_registered_model_alias", crash)


def _crash_before_the_confirmation(monkeypatch: pytest.MonkeyPatch) -> None:
    def crash(*args: object, **kwargs: object) -> None:
        raise Crash("died before the confirmation")

    monkeypatch.setattr(mlflow_registry, "_confirm_move", crash)


def test_a_move_is_one_confirmed_entry_with_its_intent_fields(registry: tuple[MlflowClient, list[str]]) -> None:
    client, (v1, _, _) = registry
    assert _move(client, v1, "first") is None
    (entry,) = mlflow_registry.alias_history(client, MODEL, ALIAS)
    assert entry["version"] == v1 and entry["previous_version"] == "" and entry["reason"] == "first"
    assert set(entry) == {"time", "version", "previous_version", "actor", "reason", "kind"}
    assert mlflow_registry.pending_alias_moves(client, MODEL, ALIAS) == []
    (run,) = _event_runs(client)
    assert run.info.status == "FINISHED" and len(run.data.tags["move_id"]) == 32


def test_a_crash_after_the_intent_leaves_no_move_and_the_next_move_abandons_it(
        registry: tuple[MlflowClient, list[str]], monkeypatch: pytest.MonkeyPatch) -> None:
    client, (v1, v2, v3) = registry
    _move(client, v1)
    _move(client, v2)
    with monkeypatch.context() as m:
        _crash_before_the_alias_is_set(client, m)
        with pytest.raises(Crash):
            _move(client, v3, "never happened")
    assert _champion(client) == v2
    assert _versions(client) == [("", v1), (v1, v2)]
    assert rollback_target(mlflow_registry.alias_history(client, MODEL, ALIAS)) == v1
    (pending,) = mlflow_registry.pending_alias_moves(client, MODEL, ALIAS)
    assert (pending["previous_version"], pending["version"], pending["reason"]) == (v2, v3, "never happened")

    _move(client, v1, "after the crash")
    assert mlflow_registry.pending_alias_moves(client, MODEL, ALIAS) == []
    assert _versions(client) == [("", v1), (v1, v2), (v2, v1)]
    abandoned = [r for r in _event_runs(client) if r.data.tags["move_id"] == pending["move_id"]]
    assert [r.info.status for r in abandoned] == ["KILLED"]
    assert abandoned[0].data.tags["outcome"] == f"abandoned on reconciliation: {ALIAS} points at v{v2}, not v{v3}"


def test_a_crash_after_the_alias_is_set_is_confirmed_by_the_next_move(
        registry: tuple[MlflowClient, list[str]], monkeypatch: pytest.MonkeyPatch) -> None:
    client, (v1, v2, v3) = registry
    _move(client, v1)
    with monkeypatch.context() as m:
        _crash_before_the_confirmation(m)
        with pytest.raises(Crash):
            _move(client, v2, "moved, then died")
    assert _champion(client) == v2
    assert _versions(client) == [("", v1)]
    assert [p["version"] for p in mlflow_registry.pending_alias_moves(client, MODEL, ALIAS)] == [v2]

    assert _move(client, v3) == v2
    assert mlflow_registry.pending_alias_moves(client, MODEL, ALIAS) == []
    assert _versions(client) == [("", v1), (v1, v2), (v2, v3)]
    assert mlflow_registry.alias_history(client, MODEL, ALIAS)[1]["reason"] == "moved, then died"
    assert rollback_target(mlflow_registry.alias_history(client, MODEL, ALIAS)) == v2


def test_two_moves_cut_short_after_the_registry_write_are_both_traced_back(
        registry: tuple[MlflowClient, list[str]], monkeypatch: pytest.MonkeyPatch) -> None:
    client, (v1, v2, v3) = registry
    _move(client, v1)
    with monkeypatch.context() as m:  # two processes, the second reconciling before the first wrote its intent
        _crash_before_the_confirmation(m)
        m.setattr(mlflow_registry, "reconcile_alias_moves", lambda *args: [])
        for version in (v2, v3):
            with pytest.raises(Crash):
                _move(client, version)
    resolved = mlflow_registry.reconcile_alias_moves(client, MODEL, ALIAS)
    assert [(r["version"], r["outcome"]) for r in resolved] == [(v2, "confirmed"), (v3, "confirmed")]
    assert _versions(client) == [("", v1), (v1, v2), (v2, v3)]
    assert mlflow_registry.reconcile_alias_moves(client, MODEL, ALIAS) == []


def test_rollback_counts_a_move_cut_short_after_the_registry_write(
        registry: tuple[MlflowClient, list[str]], monkeypatch: pytest.MonkeyPatch) -> None:
    client, (v1, v2, v3) = registry
    _move(client, v1)
    _move(client, v2)
    with monkeypatch.context() as m:
        _crash_before_the_confirmation(m)
        with pytest.raises(Crash):
            _move(client, v3)
    res = CliRunner().invoke(app, ["rollback", "--reason", "v3 misbehaves"])
    assert res.exit_code == 0, res.output
    assert _champion(client) == v2  # v3 replaced v2; without reconciling, v2's predecessor v1 would be chosen
    assert _versions(client)[-2:] == [(v2, v3), (v3, v2)]


def test_an_intent_older_than_the_last_confirmed_move_is_abandoned_even_on_its_version(
        registry: tuple[MlflowClient, list[str]], monkeypatch: pytest.MonkeyPatch) -> None:
    client, (v1, v2, _) = registry
    _move(client, v1)
    with monkeypatch.context() as m:
        _crash_before_the_alias_is_set(client, m)
        with pytest.raises(Crash):
            _move(client, v2, "stale")
    with monkeypatch.context() as m:  # another process, which read the registry before that intent was written
        m.setattr(mlflow_registry, "reconcile_alias_moves", lambda *args: [])
        _move(client, v2, "done")
    resolved = mlflow_registry.reconcile_alias_moves(client, MODEL, ALIAS)
    assert [(r["reason"], r["outcome"]) for r in resolved] == [("stale", "abandoned")]
    assert [h["reason"] for h in mlflow_registry.alias_history(client, MODEL, ALIAS)] == ["test", "done"]
