"""MLflow on PostgreSQL: a real server from Debian's packages on 127.0.0.1 backs tracking and the registry.

The asset graph trains, registers and promotes into it, and the registry answers for the champion the way
serving reads it. `.ci/run` installs PostgreSQL and sets FRAUD_REQUIRE_POSTGRES=1, so there a missing
server fails the test; on a developer machine without PostgreSQL it is skipped with the reason.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest

from fraud_assets.adapters.mlflow_registry import alias_history, alias_version, client_for, load_alias
from fraud_assets.core.months import month_range
from fraud_assets.orchestration.definitions import build_assets
from fraud_assets.params import load_params
from tests.conftest import assert_features_match, write_small_project
from tests.dagster.test_pipeline import FileHashProject
from tests.pg import pg_cluster

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def postgres() -> Iterator[str]:
    with pg_cluster() as cluster:
        yield cluster.dsn


def _with_password(dsn: str, password: str, database: str | None = None) -> str:
    """``dsn`` with a password (trust authentication on loopback ignores it: what matters is where it travels)."""
    out = dsn.replace("mlflow@", f"mlflow:{password}@", 1)
    return out.rsplit("/", 1)[0] + f"/{database}" if database else out


def test_train_register_promote_load_and_serve_on_postgres(postgres: str, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """The whole path on PostgreSQL with password-bearing DSNs in the environment (MLflow's store and the online
    store), as a bank runs it: afterwards neither the Dagster storage, the asset outputs, MLflow's database and
    artifacts, nor Ray's logs hold the password."""
    monkeypatch.setenv("FRAUD_STATE_DIR", str(tmp_path / "state"))  # the prediction log of the served call
    from fraud_assets.orchestration.resources import (
        ComputeResource,
        FrameIOManager,
        MlflowResource,
        OnlineStoreResource,
        PredictionLogResource,
    )

    password = "pw-" + secrets.token_hex(12)
    subprocess.run(["psql", postgres, "-qc", "CREATE DATABASE store"], check=True, capture_output=True)
    tracking, store = _with_password(postgres, password), _with_password(postgres, password, "store")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking)
    monkeypatch.setenv("FRAUD_ONLINE_STORE", store)
    root = write_small_project(tmp_path / "project", months=4)
    params = load_params(root / "params.yaml")
    resources = {
        "project": FileHashProject(root=str(root), data_subdir=load_params(root / "params.yaml").data.dir),
        "mlflow": MlflowResource(tracking_uri=dg.EnvVar("MLFLOW_TRACKING_URI"),
                                 artifact_root=(tmp_path / "artifacts").as_uri(),
                                 experiment_name=load_params().registry.experiment),
        "io_manager": FrameIOManager(base_dir=str(tmp_path / "assets")),
        "prediction_log": PredictionLogResource(path=str(tmp_path / "predictions.sqlite")),
        "store": OnlineStoreResource(path=dg.EnvVar("FRAUD_ONLINE_STORE")),
        "compute": ComputeResource.of(load_params().compute),
    }
    (tmp_path / "dagster").mkdir()
    instance = dg.DagsterInstance.local_temp(tempdir=str(tmp_path / "dagster"))  # on disk: searched below
    months = month_range(params.data.start_month, params.data.months)
    for month in months:
        assert dg.materialize(build_assets(params), partition_key=month, resources=resources, instance=instance,
                              selection=dg.AssetSelection.groups("ingestion", "features")).success
    res = dg.materialize(build_assets(params), partition_key=months[-1], resources=resources, instance=instance,
                         selection=dg.AssetSelection.groups("training"))
    assert res.success
    decision = res.output_for_node("promotion_decision")
    assert decision["promoted"]

    client = client_for(postgres)
    name = params.registry.model_name
    assert str(alias_version(client, name, "champion").version) == decision["challenger_version"]
    assert [m["version"] for m in alias_history(client, name, "champion")] == [decision["challenger_version"]]
    served = load_alias(client, name, "champion")  # what a serving replica does at start
    assert served.version == decision["challenger_version"]
    assert served.threshold == pytest.approx(res.output_for_node("challenger_model")["threshold"], abs=1e-6)
    # Serve once: Ray Serve resolves the champion from PostgreSQL and scores over HTTP, reading the store there.
    import httpx
    import ray

    from serving.local import start_serving, stop_serving

    monkeypatch.setenv("FRAUD_API_KEY", "postgres-test-key")
    url = start_serving(port=_free_port())  # the replicas read both DSNs from their environment
    ray_logs = Path(ray._private.worker._global_node.get_session_dir_path()) / "logs"
    try:
        tx = {"transaction_id": "pg-1", "tx_datetime": "2025-04-10T12:00:00+00:00", "customer_id": "C000001",
              "terminal_id": "T00001", "amount": 42.0}
        answer = httpx.post(f"{url}/predict", json=tx, headers={"x-api-key": os.environ["FRAUD_API_KEY"]},
                            timeout=30).raise_for_status().json()
        ready = httpx.get(f"{url}/ready", timeout=10).text
    finally:
        stop_serving()
    assert answer["model_version"] == decision["challenger_version"] and 0.0 <= answer["fraud_probability"] <= 1.0
    assert not answer["degraded"] and password not in ready
    # The stores really are PostgreSQL: MLflow's tables and the online store's rows live there.
    out = subprocess.run(["psql", postgres, "-tAc", "select count(*) from registered_models"],
                         check=True, capture_output=True, text=True)
    assert out.stdout.strip() == "1"
    out = subprocess.run(["psql", store, "-tAc", "select count(*) from transactions where transaction_id = 'pg-1'"],
                         check=True, capture_output=True, text=True)
    assert out.stdout.strip() == "1"
    # Where the password must not be: every file written (Dagster's storage, asset outputs, artifacts, the state
    # folder, Ray's logs) and both databases, dumped whole.
    leaks = [str(p.relative_to(tmp_path) if p.is_relative_to(tmp_path) else p.name)
             for folder in (tmp_path, ray_logs) for p in folder.rglob("*")
             if p.is_file() and password.encode() in p.read_bytes()]
    assert not leaks, f"the password was written to {leaks}"
    for database in (postgres, store):
        dump = subprocess.run(["pg_dump", database], check=True, capture_output=True, text=True).stdout
        assert "registered_models" in dump or "transactions" in dump
        assert password not in dump, f"the password is in {database.rsplit('/', 1)[1]}"


def test_the_online_store_on_postgres_gives_batch_mode_features(postgres: str) -> None:
    """The networked store: seeded, replayed one transaction at a time (each remembered, labels arriving), it gives
    what batch mode gives; labels, pruning and counts behave as SQLite's; open_store picks it from a URL."""
    import numpy as np
    import pandas as pd

    from fraud_assets.adapters.online_store import OnlineFeatures, PostgresTransactionStore, open_store
    from fraud_assets.core.features import FEATURE_COLUMNS, build_features
    from fraud_assets.core.simulate import simulate_months

    params = load_params()
    months = simulate_months(params.data, "2025-01", 2)
    history, month = months["2025-01"], months["2025-02"]
    store = open_store(postgres)
    assert isinstance(store, PostgresTransactionStore)
    assert store.seed(history) == len(history) and store.count() == len(history)
    assert store.seed(history.head(10)) == 10 and store.count() == len(history)  # re-seeding replaces, no dupes
    online = OnlineFeatures(store, params.features)
    batch = build_features(month, params.features, history=history).set_index("transaction_id")
    head = month.head(120)
    for row in head.to_dict("records"):
        tx = {k: row[k] for k in ("transaction_id", "tx_datetime", "customer_id", "terminal_id", "amount")}
        got = online.matrix([tx])[0]
        assert store.add_labels([{"transaction_id": row["transaction_id"], "is_fraud": row["is_fraud"],
                                  "label_available_at": row["label_available_at"]}]) == 1
        assert_features_match(got, batch.loc[row["transaction_id"], FEATURE_COLUMNS].to_numpy(np.float64),
                              f"{row['transaction_id']}: PostgreSQL store against batch mode")
    assert store.count() == len(history) + len(head)
    assert store.append([tx]) == 0  # an id already stored is kept as it is
    many = OnlineFeatures(store, params.features, remember=False).matrix(
        month.iloc[120:1120][["transaction_id", "tx_datetime", "customer_id", "terminal_id", "amount"]]
        .to_dict("records"))  # a thousand keys in one read: arrays, no parameter cap
    expected = batch.loc[month.iloc[120:1120]["transaction_id"], FEATURE_COLUMNS].to_numpy(np.float64)
    assert_features_match(many, expected, "a thousand keys in one read")
    card = head.iloc[-1]  # the analyst page's recent transactions of a card: newest first, the same as SQLite's
    recent = store.card_transactions(card["customer_id"], int(card["tx_datetime"].timestamp()) + 1, 3)
    assert recent[0]["transaction_id"] == card["transaction_id"] and recent[0]["is_fraud"] == card["is_fraud"]
    assert [r["tx_datetime"] for r in recent] == sorted((r["tx_datetime"] for r in recent), reverse=True)
    cutoff = int(pd.Timestamp("2025-01-15", tz="UTC").timestamp())
    older = int((history["tx_datetime"] < pd.Timestamp("2025-01-15", tz="UTC")).sum())
    assert store.prune(cutoff) == older and store.count() == len(history) + len(head) - older


def test_an_old_postgres_store_gets_label_at_and_reads_its_labels_by_the_rule(postgres: str) -> None:
    """A store of the previous release (no label_at, covering indexes without it) is migrated when opened: the
    column is added, the indexes replaced, and its labels read as known label_delay_days after their transactions,
    as batch mode reads a snapshot without arrival times."""
    import numpy as np
    import pandas as pd
    import psycopg

    from fraud_assets.adapters.online_store import OnlineFeatures, PostgresTransactionStore
    from fraud_assets.core.features import FEATURE_COLUMNS, build_features
    from fraud_assets.core.simulate import simulate_months

    params = load_params()
    months = simulate_months(params.data.model_copy(update={"n_customers": 300}), "2025-01", 2)
    history, month = (months[m].drop(columns="label_available_at") for m in ("2025-01", "2025-02"))
    with psycopg.connect(postgres, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA old_store")
        conn.execute("SET search_path TO old_store")
        conn.execute("CREATE TABLE transactions (transaction_id TEXT PRIMARY KEY, ts BIGINT NOT NULL, customer_id TEXT "
                     "NOT NULL, terminal_id TEXT NOT NULL, amount DOUBLE PRECISION NOT NULL, is_fraud INTEGER)")
        conn.execute("CREATE INDEX transactions_customer_covering ON transactions (customer_id, ts) "
                     "INCLUDE (terminal_id, amount, is_fraud)")
        conn.execute("CREATE INDEX transactions_terminal_covering ON transactions (terminal_id, ts) "
                     "INCLUDE (customer_id, amount, is_fraud)")
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO transactions VALUES (%s, %s, %s, %s, %s, %s)", list(zip(
                history["transaction_id"], (history["tx_datetime"].astype("int64") // 10**9).tolist(),
                history["customer_id"], history["terminal_id"], history["amount"].tolist(),
                history["is_fraud"].astype(int).tolist(), strict=True)))
    store = PostgresTransactionStore(postgres, schema="old_store")
    PostgresTransactionStore(postgres, schema="old_store")  # opening it again: nothing left to do
    with psycopg.connect(postgres) as conn:
        indexes = {r[0] for r in conn.execute("SELECT indexname FROM pg_indexes WHERE schemaname = 'old_store'")}
        column = conn.execute("SELECT data_type FROM information_schema.columns WHERE table_schema = 'old_store' "
                              "AND table_name = 'transactions' AND column_name = 'label_at'").fetchone()
    assert indexes == {"transactions_pkey", "transactions_by_customer", "transactions_by_terminal"}
    assert column == ("bigint",) and store.count() == len(history)
    first_week = month[month["tx_datetime"] < pd.Timestamp("2025-02-08", tz="UTC")]
    txs = first_week[["transaction_id", "tx_datetime", "customer_id", "terminal_id", "amount"]].to_dict("records")
    got = OnlineFeatures(store, params.features, remember=False).matrix(txs)
    expected = build_features(first_week, params.features, history=history)[FEATURE_COLUMNS].to_numpy(np.float64)
    assert_features_match(got, expected, "a migrated store against batch mode")


def test_parity_audit_on_a_postgres_store_uses_a_scratch_schema(postgres: str, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """`fraud check-parity` with a PostgreSQL online store: parity holds, the replay ran in a schema of its own
    that is gone afterwards, and the team's table is untouched."""
    import psycopg
    from typer.testing import CliRunner

    from fraud_assets.adapters.online_store import open_store
    from fraud_assets.cli.main import app
    from tests.unit.test_parity import MONTH, write_parity_state

    root = write_small_project(tmp_path / "project", months=3, n_customers=300)
    write_parity_state(root, tmp_path / "state")
    monkeypatch.setenv("FRAUD_PROJECT_ROOT", str(root))
    monkeypatch.setenv("FRAUD_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("FRAUD_ONLINE_STORE", postgres)
    real = open_store(postgres)
    before = real.count()
    res = CliRunner().invoke(app, ["check-parity", "--month", MONTH, "--rows", "200"])
    assert res.exit_code == 0, res.output
    assert "rows compared   400" in res.output and "rows differing  0 " in res.output
    assert "PostgreSQL schema fraud_parity_" in res.output
    assert real.count() == before
    with psycopg.connect(postgres) as conn:
        left = conn.execute("SELECT nspname FROM pg_namespace WHERE nspname LIKE 'fraud_parity_%'").fetchall()
    assert left == []
