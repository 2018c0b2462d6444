"""Card numbers through serving with ``$FRAUD_TOKEN_KEY``: the replica turns the incoming PAN into the import's token
before any store read, log or answer, so the card's history is found and nothing the service writes holds a PAN.

A bank's CSV export of two simulated months (600 cards as Luhn-valid 16-digit numbers) is imported with the key;
the online store is seeded from the tokenized snapshots and a model trained on them is the champion. Transactions
of the third month are then sent with their PANs.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest

from fraud_assets.adapters import mlflow_registry
from fraud_assets.adapters.mlflow_registry import LoadedModel
from fraud_assets.adapters.online_store import OnlineFeatures, SqliteTransactionStore
from fraud_assets.core.contract import feature_definition
from fraud_assets.core.importer import import_file
from fraud_assets.core.simulate import simulate_months
from fraud_assets.core.tokens import key_id, tokenize
from fraud_assets.params import load_params
from serving.app import AppArgs
from serving.local import start_serving, stop_serving
from serving.predictor import Predictor
from tests.serving.test_serving_http import _free_port, _register, _trained_booster
from tests.unit.test_tokens import _found, _luhn

pytestmark = pytest.mark.slow

API_KEY = "tokens-api-key-" + "z" * 24
TOKEN_KEY = b"served-token-key-" + b"k" * 24
COLUMNS = {"ref": "transaction_id", "when": "tx_datetime", "card": "customer_id", "pos": "terminal_id",
           "value": "amount", "fraud": "is_fraud"}  # the export's names -> the canonical ones


@dataclass(frozen=True)
class Served:
    url: str
    tmp: Path
    pans: dict[str, str]  # simulated card id -> PAN
    live: pd.DataFrame  # the third month, with PANs as the bank sends them
    store: Path
    log: Path
    version: str
    booster: object
    session_logs: Path


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp("tokens")
    params = load_params()
    months = simulate_months(params.data.model_copy(update={"n_customers": 600}), "2025-01", 3)
    cards = sorted(set().union(*(set(m["customer_id"]) for m in months.values())))
    rng = np.random.default_rng(11)
    numbers = iter(dict.fromkeys(_luhn(f"4{rng.integers(10**13, 10**14)}") for _ in range(3 * len(cards))))
    pans = {card: next(numbers) for card in cards}
    data = tmp / "data"
    for month in ("2025-01", "2025-02"):
        frame = months[month]
        export = tmp / f"export-{month}.csv"
        pd.DataFrame({"ref": frame["transaction_id"], "when": frame["tx_datetime"].dt.strftime("%Y-%m-%dT%H:%M:%SZ"),
                      "card": frame["customer_id"].map(pans), "pos": frame["terminal_id"], "value": frame["amount"],
                      "fraud": frame["is_fraud"]}).to_csv(export, index=False)
        import_file(export, data, COLUMNS, sensitive_columns=params.data.sensitive_columns,
                    token_key=TOKEN_KEY)
    snapshots = {m: pd.read_parquet(data / f"{m}.parquet") for m in ("2025-01", "2025-02")}
    store = tmp / "online_store.sqlite"
    SqliteTransactionStore(store).seed(pd.concat(snapshots.values(), ignore_index=True))
    uri, artifact_root = f"sqlite:///{tmp / 'mlflow.db'}", (tmp / "artifacts").as_uri()
    booster = _trained_booster({**snapshots, "2025-03": months["2025-03"].assign(
        customer_id=lambda f: [tokenize(pans[c], TOKEN_KEY) for c in f["customer_id"]])})
    version = _register(uri, artifact_root, booster, {"threshold": "0.5"})
    mlflow_registry.client_for(uri).set_registered_model_alias("fraud-detector", "champion", version)
    live = months["2025-03"].head(400).assign(customer_id=lambda f: f["customer_id"].map(pans))
    log = tmp / "predictions.sqlite"
    saved = {k: os.environ.get(k) for k in ("FRAUD_API_KEY", "FRAUD_TOKEN_KEY")}
    os.environ.update({"FRAUD_API_KEY": API_KEY, "FRAUD_TOKEN_KEY": TOKEN_KEY.decode()})  # the replicas inherit both
    try:
        url = start_serving(tracking_uri=uri, port=_free_port(), args=AppArgs(
            overrides={"serve.min_replicas": 1, "serve.max_replicas": 1}, prediction_log=str(log),
            online_store=str(store)))
        import ray

        session_logs = Path(ray._private.worker._global_node.get_session_dir_path()) / "logs"
        yield Served(url, tmp, pans, live, store, log, version, booster, session_logs)
    finally:
        stop_serving()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _tx(row: pd.Series) -> dict:
    return {"transaction_id": str(row.transaction_id), "tx_datetime": row.tx_datetime.isoformat(),
            "customer_id": str(row.customer_id), "terminal_id": str(row.terminal_id), "amount": float(row.amount)}


def test_a_pan_is_scored_against_its_tokenized_history_and_stored_only_as_its_token(served: Served) -> None:
    http = httpx.Client(base_url=served.url, timeout=30, headers={"x-api-key": API_KEY})
    ready = http.get("/ready").json()
    assert ready["token_key_id"] == key_id(TOKEN_KEY)
    txs = [_tx(r) for r in served.live.itertuples()]
    first = txs[0]
    copy = served.tmp / "store-before.sqlite"  # the store as the first transaction finds it
    with sqlite3.connect(served.store) as src, sqlite3.connect(copy) as dst:
        src.backup(dst)
    answer = http.post("/predict", json=first).raise_for_status().json()
    params = load_params()
    offline = Predictor(LoadedModel(served.version, served.booster, 0.5, {}, feature_definition(params.features)),
                        OnlineFeatures(SqliteTransactionStore(copy), params.features, remember=False))
    tokenized = {**first, "customer_id": tokenize(first["customer_id"], TOKEN_KEY)}
    assert answer["fraud_probability"] == pytest.approx(offline.probabilities([tokenized])[0], abs=1e-6)
    history = SqliteTransactionStore(copy).history_frame([tokenized["customer_id"]], ["-"], 0, 2**40)
    assert len(history) > 0  # the card's past was found under its token
    batch = http.post("/predict/batch", json={"transactions": txs[1:]}).raise_for_status().json()["scores"]
    assert [s["transaction_id"] for s in batch] == [t["transaction_id"] for t in txs[1:]]
    assert http.post("/labels", json={"labels": [{"transaction_id": first["transaction_id"], "is_fraud": 1}]}
                     ).raise_for_status().json()["stored"] == 1
    time.sleep(1.0)  # one flush of the prediction log
    with sqlite3.connect(served.log) as conn:
        logged = {r[0] for r in conn.execute("SELECT DISTINCT customer_id FROM predictions")}
    assert logged and all(c.startswith("tok_") for c in logged)
    sent = sorted({t["customer_id"] for t in txs})
    for path in (served.store, served.log, served.tmp / "mlflow.db", *served.session_logs.rglob("*")):
        if path.is_file():
            assert not _found(path, sent), f"a card number in {path.name}"
    for suffix in ("-wal", "-shm"):
        for base in (served.store, served.log):
            side = base.with_name(base.name + suffix)
            if side.exists():
                assert not _found(side, sent)
