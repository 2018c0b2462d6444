"""Schemathesis against the running service's own ``/openapi.json``: a real client that reads only the document.

One Ray start for the module (about 20 s); then schemathesis runs every phase but the stateful one over every
operation, with a fixed seed and a bounded number of examples, once with the API key and once without. Each run
must find no server error, no status code the document does not list, no body or content type that contradicts
it, and (with the key) no input the document calls invalid that the service accepts.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pandas as pd
import pytest

from fraud_assets.adapters import mlflow_registry
from fraud_assets.adapters.online_store import SqliteTransactionStore
from fraud_assets.core.simulate import simulate_months
from fraud_assets.params import load_params
from serving.app import AppArgs
from serving.local import start_serving, stop_serving
from tests.serving.test_serving_http import (
    ALIAS,
    MODEL,
    SERVE_OVERRIDES,
    TX,
    _free_port,
    _register,
    _trained_booster,
)

pytestmark = pytest.mark.slow

KEY = "fuzz-key-" + "z" * 24
SEED, MAX_EXAMPLES = 20250314, 100
CHECKS = "not_a_server_error,status_code_conformance,response_schema_conformance,content_type_conformance"
SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")


@pytest.fixture(scope="module")
def base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("fuzz")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    months = simulate_months(load_params().data, "2025-01", 3)
    version = _register(uri, (tmp / "artifacts").as_uri(), _trained_booster(months), {"threshold": "0.5"})
    mlflow_registry.client_for(uri).set_registered_model_alias(MODEL, ALIAS, version)
    store = tmp / "store.sqlite"
    SqliteTransactionStore(store).seed(pd.concat([months["2025-01"], months["2025-02"]], ignore_index=True))
    with pytest.MonkeyPatch.context() as env:
        env.setenv("FRAUD_API_KEY", KEY)  # Ray's local workers inherit it
        try:
            yield start_serving(tracking_uri=uri, port=_free_port(), args=AppArgs(
                overrides=SERVE_OVERRIDES, prediction_log=str(tmp / "log.sqlite"), online_store=str(store)))
        finally:
            stop_serving()


def _schemathesis(base_url: str, *extra: str) -> subprocess.CompletedProcess:
    """Run the CLI with the fixed seed and bounds, no example database (each run starts from the seed alone)."""
    command = [str(SCHEMATHESIS), "--no-color", "run", f"{base_url}/openapi.json", "--seed", str(SEED),
               "--max-examples", str(MAX_EXAMPLES), "--phases", "examples,coverage,fuzzing", "--workers", "2",
               "--generation-database", "none", "--request-timeout", "30", "--continue-on-failure", *extra]
    return subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)


@pytest.mark.parametrize("with_key", [True, False], ids=["with-key", "without-key"])
def test_schemathesis_finds_nothing(base_url: str, with_key: bool) -> None:
    checks = CHECKS + (",negative_data_rejection" if with_key else "")
    headers = ["--header", f"x-api-key:{KEY}"] if with_key else []
    started = time.perf_counter()
    done = _schemathesis(base_url, "--checks", checks, *headers)
    print(f"schemathesis ({'with' if with_key else 'without'} key): {time.perf_counter() - started:.1f} s")
    print(done.stdout[-3000:])
    assert done.returncode == 0, f"schemathesis failed:\n{done.stdout[-15000:]}\n{done.stderr[-2000:]}"
    assert "Tested: 8" in done.stdout  # every operation of the document, the open ones included
    refused = "Authentication failed: 6 operations returned only 401/403 responses"
    assert (refused in done.stdout) is not with_key  # without the key, all six keyed operations (/metrics too) refuse


def test_the_served_document_states_this_replicas_bounds(base_url: str) -> None:
    doc = httpx.get(f"{base_url}/openapi.json", timeout=10).json()
    batch = doc["paths"]["/predict/batch"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert batch["properties"]["transactions"]["maxItems"] == SERVE_OVERRIDES["serve.max_batch_rows"]
    assert batch["properties"]["transactions"]["items"]["properties"]["amount"]["maximum"] == load_params(
    ).data.max_amount


@pytest.mark.parametrize(("field", "value"), [("amount", 1.4e308), ("amount", 10_000_000.5),
                                              ("tx_datetime", "1792-03-14T02:15:00Z"),
                                              ("tx_datetime", "2999-03-14T02:15:00Z")])
@pytest.mark.parametrize("path", ["/predict", "/predict/batch"])
def test_out_of_bounds_is_a_422_naming_the_field(base_url: str, path: str, field: str, value: object) -> None:
    tx = {**TX, field: value}
    body, loc = (tx, ["body", field]) if path == "/predict" else ({"transactions": [tx]}, ["body", "transactions",
                                                                                          0, field])
    response = httpx.post(f"{base_url}{path}", json=body, headers={"x-api-key": KEY}, timeout=30)
    assert response.status_code == 422, response.text
    assert [d["loc"] for d in response.json()["detail"]] == [loc]


def test_labels_accept_one_point_zero_and_refuse_a_half(base_url: str) -> None:
    def post(value: object) -> httpx.Response:
        return httpx.post(f"{base_url}/labels", json={"labels": [{"transaction_id": "tx-fuzz", "is_fraud": value}]},
                          headers={"x-api-key": KEY}, timeout=30)

    assert post(1.0).json() == {"stored": 1} and post(0.0).status_code == 200
    refused = post(0.5)
    assert refused.status_code == 422 and refused.json()["detail"][0]["loc"] == ["body", "labels", 0, "is_fraud"]
