"""Scoring speed, side by side: raw XGBoost, a bare FastAPI + uvicorn endpoint, and our Ray Serve service.

Run: ``.venv/bin/python benchmarks/bench_serving.py [--requests N]``. It trains a model on simulated data,
registers it in a temporary MLflow store, and measures, all on 127.0.0.1:

- raw ``inplace_predict``: one row, and a 10,000-row batch (the floor: no features, no HTTP);
- a bare FastAPI + uvicorn app (one process, started as a subprocess) scoring with the same
  :class:`~serving.predictor.Predictor` and online store (features from the customer's and terminal's
  history, probability, reasons), without auth, logging or batching;
- our service (Ray Serve, API key, prediction log, metrics): p50/p99 at 1 connection, throughput and
  p99 at 16 keep-alive connections, rows/s through ``/predict/batch``; once through Serve's HTTP proxy (the
  default) and once with ``serve.direct_ingress`` (the replica answers HTTP itself).

The load generator is a minimal asyncio HTTP/1.1 keep-alive client (it costs far less CPU than httpx), but
it still shares the machine's cores with the servers: quote the figures as measured on that machine.
Targets on 2 cores: p50 <= 5 ms at 1 connection; >= 500 req/s at 16 connections with p99 <= 100 ms;
>= 50,000 rows/s through the batch endpoint.
"""

import argparse
import asyncio
import json
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

# A transaction of a customer and terminal with history in the seeded store (set from the data in _train).
TX = {"transaction_id": "bench-1", "tx_datetime": "2025-04-01T09:15:00+00:00", "customer_id": "",
      "terminal_id": "", "amount": 231.4}
BATCH_ROWS = 10_000


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _train(tmp: Path) -> tuple[object, Path]:
    """A model on three simulated months, and an online store holding them (``tmp/store.sqlite``)."""
    import pandas as pd

    from fraud_assets.adapters.online_store import SqliteTransactionStore
    from fraud_assets.core.features import build_features_by_month
    from fraud_assets.core.simulate import simulate_months
    from fraud_assets.core.split import split_by_time
    from fraud_assets.core.train import save_model, train_model
    from fraud_assets.params import load_params

    params = load_params()
    months = simulate_months(params.data, "2025-01", 3)
    features = build_features_by_month(months, params.features)
    SqliteTransactionStore(tmp / "store.sqlite").seed(pd.concat(list(months.values()), ignore_index=True))
    someone = months["2025-03"]["customer_id"].value_counts().index[len(months["2025-03"]) % 97]
    last = months["2025-03"][months["2025-03"]["customer_id"] == someone].iloc[-1]
    TX.update(customer_id=str(last["customer_id"]), terminal_id=str(last["terminal_id"]))
    split = split_by_time(features, "2025-03", params.split)
    booster = train_model(split.train, split.valid, params.train)
    booster.set_param({"nthread": 1})
    return booster, save_model(booster, tmp / "model.ubj")


def _time_ms(fn: object, n: int) -> tuple[float, float]:
    fn()  # type: ignore[operator]
    samples = []
    for _ in range(n):
        started = time.perf_counter()
        fn()  # type: ignore[operator]
        samples.append((time.perf_counter() - started) * 1000)
    return float(np.median(samples)), float(np.percentile(samples, 99))


def bench_raw(booster: object) -> dict[str, float]:
    """inplace_predict on one row and on a 10,000-row batch."""
    from fraud_assets.core.features import FEATURE_COLUMNS

    x = np.random.default_rng(0).uniform(0, 300, size=(BATCH_ROWS, len(FEATURE_COLUMNS))).astype(np.float32)
    one, _ = _time_ms(lambda: booster.inplace_predict(x[:1]), 2000)  # type: ignore[attr-defined]
    batch, _ = _time_ms(lambda: booster.inplace_predict(x), 20)  # type: ignore[attr-defined]
    return {"row_ms": one, "batch_ms": batch, "batch_rows_s": BATCH_ROWS / batch * 1000}


def _request(path: str, body: bytes, key: str | None) -> bytes:
    auth = f"x-api-key: {key}\r\n" if key else ""
    return (f"POST {path} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n{auth}"
            f"content-length: {len(body)}\r\n\r\n").encode() + body


async def _one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, raw: bytes) -> int:
    writer.write(raw)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    await reader.readexactly(length)
    return status


async def _load(port: int, raw: bytes, connections: int, total: int) -> tuple[list[float], float, int]:
    per = total // connections
    latencies: list[float] = []
    errors = 0

    async def worker() -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for _ in range(per):
                started = time.perf_counter()
                if await _one(reader, writer, raw) != 200:
                    errors += 1
                latencies.append((time.perf_counter() - started) * 1000)
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(connections)))
    return latencies, time.perf_counter() - started, errors


def bench_http(port: int, key: str | None, n: int) -> dict[str, float]:
    """p50/p99 at 1 connection, req/s and p99 at 16, rows/s through the batch endpoint."""
    single = _request("/predict", json.dumps(TX).encode(), key)
    asyncio.run(_load(port, single, 1, 100))  # warm up
    lat1, _, err1 = asyncio.run(_load(port, single, 1, n))
    lat16, wall16, err16 = asyncio.run(_load(port, single, 16, n * 4))
    rows = [{**TX, "transaction_id": f"b-{i}", "amount": float(i % 500)} for i in range(BATCH_ROWS)]
    batch = _request("/predict/batch", json.dumps({"transactions": rows}).encode(), key)
    asyncio.run(_load(port, batch, 1, 1))
    _, wallb, errb = asyncio.run(_load(port, batch, 1, 5))
    return {"p50_1": float(np.median(lat1)), "p99_1": float(np.percentile(lat1, 99)),
            "rps_16": len(lat16) / wall16, "p99_16": float(np.percentile(lat16, 99)),
            "batch_rows_s": 5 * BATCH_ROWS / wallb, "errors": err1 + err16 + errb}


def bare_server(model: str, port: int, store: str) -> None:
    """The baseline: one uvicorn process, FastAPI, the same Predictor, nothing else."""
    import uvicorn
    from fastapi import FastAPI, Request, Response

    from fraud_assets.adapters.mlflow_registry import LoadedModel
    from fraud_assets.adapters.online_store import OnlineFeatures, SqliteTransactionStore
    from fraud_assets.core.contract import feature_definition
    from fraud_assets.core.train import load_model
    from fraud_assets.params import load_params
    from serving.api import request_types
    from serving.predictor import Predictor

    params = load_params()
    features = params.features
    types = request_types(params.data.max_amount, params.data.min_tx_date, params.serve.max_batch_rows)
    provider = OnlineFeatures(SqliteTransactionStore(store), features)  # reads and remembers, like ours
    loaded = LoadedModel("1", load_model(model, n_threads=1), 0.5, {}, feature_definition(features))
    predictor = Predictor(loaded, provider)
    app = FastAPI()

    @app.post("/predict")
    async def predict(request: Request) -> Response:
        return Response(json.dumps(predictor.score([types.transaction.validate_json(await request.body())])[0]),
                        media_type="application/json")

    @app.post("/predict/batch")
    async def predict_batch(request: Request) -> Response:
        rows = types.transaction_batch.validate_json(await request.body())["transactions"]
        return Response(json.dumps({"scores": predictor.score(rows)}), media_type="application/json")

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


def _wait(port: int, path: str, timeout_s: float = 60) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}{path}", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"127.0.0.1:{port}{path} did not answer within {timeout_s} s")


def _store_copy(tmp: Path, name: str) -> Path:
    """A copy of the seeded store, so each server starts from the same state."""
    import shutil

    shutil.copyfile(tmp / "store.sqlite", tmp / name)
    return tmp / name


def _bare(tmp: Path, model: Path, n: int) -> dict[str, float]:
    port = _free_port()
    bare = subprocess.Popen([sys.executable, __file__, "--bare-server", str(model), str(port),
                             str(_store_copy(tmp, "bare-store.sqlite"))])
    try:
        _wait(port, "/health")
        return bench_http(port, None, n)
    finally:
        bare.terminate()
        bare.wait(10)


def _direct_params(tmp: Path, params: str | None) -> str:
    """The params with Ray Serve's direct ingress switched on (replica port from a free one), as a file."""
    from fraud_assets.params import load_params

    direct = load_params(params, {"serve.direct_ingress": True, "serve.direct_ingress_port": _free_port()})
    return str(direct.write(tmp / "params-direct.yaml"))


def _ours(tmp: Path, booster: object, n: int, params: str | None, name: str = "our-store.sqlite"
          ) -> dict[str, float]:
    from fraud_assets.adapters import mlflow_registry
    from fraud_assets.params import load_params
    from serving.app import AppArgs
    from serving.local import start_serving, stop_serving

    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    c = mlflow_registry.client_for(uri)
    run = c.create_run(mlflow_registry.ensure_experiment(c, "bench", (tmp / "artifacts").as_uri()))
    model_uri = mlflow_registry.log_booster(booster, run.info.run_id, uri)
    tags = {"threshold": "0.5", **mlflow_registry.definition_tags(load_params(params).features)}
    mv = mlflow_registry.register_version(c, "fraud-detector", model_uri, run.info.run_id, tags)
    c.set_registered_model_alias("fraud-detector", "champion", mv.version)
    key = secrets.token_urlsafe(32)
    os.environ["FRAUD_API_KEY"] = key
    url = start_serving(tracking_uri=uri, port=_free_port(),
                        args=AppArgs(prediction_log=str(tmp / f"predictions-{name}"), params_path=params,
                                     online_store=str(_store_copy(tmp, name))))
    try:
        return bench_http(int(url.rsplit(":", 1)[1]), key, n)
    finally:
        stop_serving()


def _print(rows: Sequence[tuple[str, dict[str, float]]], base: dict[str, float]) -> None:
    print(f"\n{'':10} {'p50@1 ms':>9} {'p99@1 ms':>9} {'req/s@16':>9} {'p99@16 ms':>10} {'batch rows/s':>13} errors")
    for name, r in rows:
        print(f"{name:10} {r['p50_1']:>9.2f} {r['p99_1']:>9.2f} {r['rps_16']:>9.0f} {r['p99_16']:>10.1f} "
              f"{r['batch_rows_s']:>13.0f} {r['errors']:.0f}")
    for name, ours in rows:
        if name == "bare":
            continue
        ratios = {k: ours[k] / base[k] for k in ("p50_1", "rps_16", "p99_16", "batch_rows_s")}
        print(f"{name}: ratio to bare: p50@1 x{ratios['p50_1']:.2f}, req/s@16 x{ratios['rps_16']:.2f}, "
              f"p99@16 x{ratios['p99_16']:.2f}, batch rows/s x{ratios['batch_rows_s']:.2f}")
        ok = {"p50@1 <= 5 ms": ours["p50_1"] <= 5, ">= 500 req/s@16": ours["rps_16"] >= 500,
              "p99@16 <= 100 ms": ours["p99_16"] <= 100, ">= 50,000 rows/s": ours["batch_rows_s"] >= 50_000}
        print(f"{name}: targets: " + ", ".join(f"{k} {'met' if v else 'MISSED'}" for k, v in ok.items()))


def main() -> None:
    """Run every measurement and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=500, help="requests at 1 connection (x4 at 16)")
    parser.add_argument("--params", help="a params.yaml to serve with (default: the project's)")
    parser.add_argument("--skip-bare", action="store_true", help="measure only our service")
    parser.add_argument("--bare-server", nargs=3, metavar=("MODEL", "PORT", "STORE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.bare_server:
        bare_server(args.bare_server[0], int(args.bare_server[1]), args.bare_server[2])
        return
    from fraud_assets.settings import disable_telemetry

    disable_telemetry()
    print(f"{os.cpu_count()} cores; other processes on this machine share them")
    with tempfile.TemporaryDirectory(prefix="bench-serving-") as name:
        tmp = Path(name)
        booster, model = _train(tmp)
        raw = bench_raw(booster)
        print(f"raw inplace_predict: one row {raw['row_ms'] * 1000:.0f} µs; {BATCH_ROWS} rows {raw['batch_ms']:.1f} ms "
              f"({raw['batch_rows_s']:,.0f} rows/s)")
        base = None if args.skip_bare else _bare(tmp, model, args.requests)
        ours = _ours(tmp, booster, args.requests, args.params)
        direct = _ours(tmp, booster, args.requests, _direct_params(tmp, args.params), "direct-store.sqlite")
    if base is None:
        print({"ray serve": ours, "direct ingress": direct})
        return
    _print([("bare", base), ("ray serve", ours), ("direct", direct)], base)


if __name__ == "__main__":
    main()
