"""Serving at a bank's volume: our service beside a bare FastAPI process doing the same work, in the same run.

Run: ``make bench-serving`` (``.venv/bin/python benchmarks/bench_serving.py [--size bank|smoke]``). It needs
``wrk`` (``apt-get install wrk``): a C load generator costs the shared cores far less than a Python client.

The fixture, simulated once and reused from the state folder (``.state/bench/``): at the ``bank`` size, three
months of 5,000 cards at 10,000 terminals (about 900,000 transactions, a 90-day store) seed the online store and
train the model (the pipeline's own features, split, XGBoost and calibrator); the two months after them, in time
order, are the traffic: distinct transactions of thousands of distinct cards and card/terminal pairs, timestamps
increasing, never one repeated. Each server starts from its own copy of the seeded store.

- **bare**: one uvicorn process, FastAPI, the same :class:`~serving.predictor.Predictor` and settings (store read,
  features, XGBoost, calibrated probability, reasons; the transaction appended to the store before answering), no
  auth, no log, no batching: the reference;
- **service**: ``fraud serve`` as a user starts it (the default mode of ``params.yaml`` and ``serving.local``).

At the bank size both are measured three times, alternating (bare, service, bare, ...), each figure the
median of its rounds: one run on this shared machine moves by up to a quarter. Each is measured with the same
traffic: p50/p99 at 1 connection and requests/s and p99 at 16 keep-alive connections
(wrk, ``--duration`` seconds each), rows/s through ``/predict/batch`` (10,000-row requests at the bank size). Beside
them: online features alone on that store (in this process, read only), the in-process scoring time, the replica's
own overhead (its ``X-Process-Time-Ms`` minus that in-process time, at p50) and the total RSS of every serving
process in MiB (target: at most 1.5 GiB, 1,536 MiB, with one replica), their total PSS beside it. Writes
``benchmarks/results/serving.json`` (``--out``) and prints the table; no figure is asserted
(``tests/benchmarks`` smoke-runs it at the ``smoke`` size).
"""

import argparse
import contextlib
import hashlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
LUA = Path(__file__).resolve().parent / "wrk_traffic.lua"
RESULTS = Path(__file__).resolve().parent / "results" / "serving.json"
KEY_FIELDS = ("transaction_id", "tx_datetime", "customer_id", "terminal_id", "amount")


@dataclass(frozen=True)
class Size:
    """A fixture's population and the traffic's slices (transactions each phase may use at most)."""

    n_customers: int
    n_terminals: int
    mean_tx_per_day: float
    store_months: int
    warmup: int
    one_connection: int
    sixteen_connections: int
    batches: int
    duration_s: float
    batch_rows: int = 10_000  # rows per /predict/batch request
    traffic_months: int = 1  # simulated months after the store's: the traffic (each phase needs its own rows)
    rounds: int = 1  # bare then service, this many times; each figure is the median of its rounds

    @property
    def area_size(self) -> float:
        """The square's side keeping the default terminal density (about 8 usual terminals a card)."""
        return float(100.0 * np.sqrt(self.n_terminals / 1000))


SIZES = {
    # A phase that runs out of rows stops early, so each slice holds more than a phase can score in its time.
    "bank": Size(5_000, 10_000, 1.95, 3, warmup=300, one_connection=40_000, sixteen_connections=70_000,
                 batches=3, duration_s=20.0, traffic_months=2, rounds=3),
    "smoke": Size(300, 600, 1.0, 2, warmup=50, one_connection=400, sixteen_connections=800, batches=1,
                  duration_s=2.0, batch_rows=1_000),
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- the fixture ----------------------------------------------------------------------------------------------

def _fixture(size_name: str) -> Path:
    """The cached fixture folder for ``size_name``: ``store.sqlite``, ``model.ubj``, ``model.json`` (threshold,
    calibrator), ``traffic.jsonl`` and ``fixture.json`` (its sizes); built when missing or stale."""
    from fraud_assets.params import load_params
    from fraud_assets.settings import state_dir

    size = SIZES[size_name]
    params = load_params()
    data = params.data.model_dump(mode="json", exclude={"sensitive_columns"})  # what the simulation depends on
    shape = {k: v for k, v in asdict(size).items() if k != "rounds"}  # how often it is measured is not the fixture
    recipe = json.dumps([shape, data, params.features.model_dump(mode="json"),
                         params.split.model_dump(mode="json"), params.train.model_dump(mode="json"),
                         params.evaluate.model_dump(mode="json")], sort_keys=True)
    folder = state_dir() / "bench" / f"serving-{size_name}-{hashlib.sha256(recipe.encode()).hexdigest()[:12]}"
    if (folder / "fixture.json").exists():
        return folder
    staging = folder.with_name(folder.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    _build_fixture(size, staging)
    shutil.rmtree(folder, ignore_errors=True)
    staging.rename(folder)
    return folder


def _build_fixture(size: Size, out: Path) -> None:
    import pandas as pd

    from fraud_assets.adapters.mlflow_registry import calibrator_tags
    from fraud_assets.adapters.online_store import SqliteTransactionStore
    from fraud_assets.core.features import build_features_by_month
    from fraud_assets.core.months import shift_month
    from fraud_assets.core.simulate import make_population, simulate_month
    from fraud_assets.core.split import split_by_time
    from fraud_assets.core.train import fit_challenger, save_model
    from fraud_assets.params import load_params

    params = load_params()
    data = params.data.model_copy(update={"n_customers": size.n_customers, "n_terminals": size.n_terminals,
                                          "mean_tx_per_day": size.mean_tx_per_day, "area_size": size.area_size})
    started = time.perf_counter()
    population = make_population(data)
    names = [shift_month(data.start_month, k) for k in range(size.store_months + size.traffic_months)]
    months = {m: simulate_month(data, m, population) for m in names}
    store_months, traffic_months = names[:size.store_months], names[size.store_months:]
    stored = pd.concat([months[m] for m in store_months], ignore_index=True)
    SqliteTransactionStore(out / "store.sqlite").seed(stored)
    features = build_features_by_month({m: months[m] for m in store_months}, params.features)
    split = split_by_time(features, store_months[-1], params.split)
    challenger = fit_challenger(split.train, split.valid, params.train, params.evaluate)
    save_model(challenger.booster, out / "model.ubj")
    (out / "model.json").write_text(json.dumps({"threshold": challenger.threshold, **calibrator_tags(
        challenger.calibrator)}))
    traffic = pd.concat([months[m] for m in traffic_months], ignore_index=True).sort_values(
        ["tx_datetime", "transaction_id"], kind="stable")
    with (out / "traffic.jsonl").open("w") as f:
        for row in traffic[list(KEY_FIELDS)].itertuples(index=False):
            f.write(json.dumps({"transaction_id": f"live-{row.transaction_id}",
                                "tx_datetime": pd.Timestamp(row.tx_datetime).isoformat(),
                                "customer_id": str(row.customer_id), "terminal_id": str(row.terminal_id),
                                "amount": float(row.amount)}) + "\n")
    (out / "fixture.json").write_text(json.dumps({
        "store_rows": len(stored), "store_cards": int(stored["customer_id"].nunique()),
        "store_terminals": int(stored["terminal_id"].nunique()), "store_months": store_months,
        "traffic_months": traffic_months, "traffic_rows": len(traffic),
        "build_s": round(time.perf_counter() - started, 1)}))


def _traffic(folder: Path) -> list[dict[str, Any]]:
    with (folder / "traffic.jsonl").open() as f:
        return [json.loads(line) for line in f]


def _slices(size: Size) -> dict[str, tuple[int, int]]:
    """Each phase's (first, count) in the traffic, one after the other so timestamps keep increasing."""
    first, out = 0, {}
    for name, n in (("warmup", size.warmup), ("c1", size.one_connection), ("c16", size.sixteen_connections),
                    ("batch", size.batches * size.batch_rows)):
        out[name] = (first, n)
        first += n
    return out


def _loaded_model(folder: Path) -> Any:
    from fraud_assets.adapters.mlflow_registry import CALIBRATOR_TAG, LoadedModel
    from fraud_assets.core.calibrate import Calibrator
    from fraud_assets.core.contract import feature_definition
    from fraud_assets.core.train import load_model
    from fraud_assets.params import load_params

    meta = json.loads((folder / "model.json").read_text())
    return LoadedModel("1", load_model(folder / "model.ubj", n_threads=1), float(meta["threshold"]), {},
                       feature_definition(load_params().features),
                       Calibrator.from_dict(json.loads(meta[CALIBRATOR_TAG])))


# --- in this process --------------------------------------------------------------------------------------------

def bench_in_process(folder: Path, traffic: list[dict[str, Any]], n: int) -> dict[str, float]:
    """Online features alone (read only) and the whole scoring of one transaction (features, model, reasons,
    store append) on a copy of the store, one transaction at a time, like a lone request."""
    from fraud_assets.adapters.online_store import OnlineFeatures, SqliteTransactionStore
    from fraud_assets.params import load_params
    from serving.predictor import Predictor

    params = load_params()
    p = params.features
    with tempfile.TemporaryDirectory(prefix="bench-inproc-") as tmp:
        store = SqliteTransactionStore(shutil.copyfile(folder / "store.sqlite", Path(tmp) / "store.sqlite"))
        read_only = OnlineFeatures(store, p, remember=False)
        predictor = Predictor(_loaded_model(folder), OnlineFeatures(store, p, remember=True),
                              reasons=params.serve.reasons)
        features, scoring = [], []
        for tx in traffic[:50]:  # warm caches and code paths
            read_only.matrix([tx])
        for tx in traffic[50:50 + n]:
            t0 = time.perf_counter()
            read_only.matrix([tx])
            t1 = time.perf_counter()
            predictor.score([tx])
            t2 = time.perf_counter()
            features.append((t1 - t0) * 1000)
            scoring.append((t2 - t1) * 1000)
    return {"online_features_p50_ms": float(np.median(features)),
            "online_features_p99_ms": float(np.percentile(features, 99)),
            "scoring_p50_ms": float(np.median(scoring)), "scoring_p99_ms": float(np.percentile(scoring, 99))}


# --- over HTTP ------------------------------------------------------------------------------------------------

def _wrk(port: int, connections: int, first: int, count: int, duration_s: float, key: str | None,
         traffic_file: Path) -> dict[str, float]:
    threads = min(2, connections)
    out = subprocess.run(
        ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration_s:g}s", "--timeout", "10s", "-s", str(LUA),
         f"http://127.0.0.1:{port}/predict", "--", str(traffic_file), str(first), str(count), str(threads)],
        capture_output=True, text=True, timeout=duration_s + 120, env={**os.environ, "BENCH_API_KEY": key or ""},
        check=True).stdout
    line = next(x for x in out.splitlines() if x.startswith("BENCH "))
    r = json.loads(line[6:])
    return {"requests": r["requests"], "rps": r["requests"] / (r["duration_us"] / 1e6), "p50_ms": r["p50_us"] / 1000,
            "p99_ms": r["p99_us"] / 1000, "errors": r["status_errors"] + r["socket_errors"]}


def bench_http(port: int, key: str | None, traffic: list[dict[str, Any]], traffic_file: Path, size: Size,
               server_pid: int | None = None) -> dict[str, Any]:
    """Warm-up (sequential; ``X-Process-Time-Ms`` collected), wrk at 1 and at 16 connections, then the batch
    endpoint, each on its own slice of the traffic; with ``server_pid``, the RSS of its process tree after the
    1-connection phase (one replica: the autoscaler adds the second under 16 connections)."""
    import httpx

    s = _slices(size)
    headers = {"x-api-key": key} if key else {}
    process_ms, errors = [], 0
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=headers, timeout=60) as http:
        first, n = s["warmup"]
        for tx in traffic[first:first + n]:
            r = http.post("/predict", json=tx)
            errors += r.status_code != 200
            if "x-process-time-ms" in r.headers:
                process_ms.append(float(r.headers["x-process-time-ms"]))
        one = _wrk(port, 1, *s["c1"], size.duration_s, key, traffic_file)
        rss = _tree_rss_mb(server_pid) if server_pid else None
        sixteen = _wrk(port, 16, *s["c16"], size.duration_s, key, traffic_file)
        first, n = s["batch"]
        started, rows = time.perf_counter(), 0
        for i in range(first, first + n, size.batch_rows):
            r = http.post("/predict/batch", content=json.dumps({"transactions": traffic[i:i + size.batch_rows]}),
                          headers={"content-type": "application/json"})
            errors += r.status_code != 200
            rows += len(r.json().get("scores", [])) if r.status_code == 200 else 0
        batch_s = time.perf_counter() - started
        # Answers scored without their past (a store read over its timeout) would make any speed figure meaningless:
        # the service counts them in /metrics (the bare process has no timeouts).
        degraded = _metric_sum(http.get("/metrics").text, "fraud_degraded_answers_total") if key else 0.0
    out = {"p50_1": one["p50_ms"], "p99_1": one["p99_ms"], "rps_1": one["rps"], "requests_1": one["requests"],
           "rps_16": sixteen["rps"], "p50_16": sixteen["p50_ms"], "p99_16": sixteen["p99_ms"],
           "requests_16": sixteen["requests"], "batch_rows_s": rows / batch_s,
           "errors": errors + one["errors"] + sixteen["errors"], "degraded": degraded}
    if process_ms:
        out["process_time_p50_ms"] = float(np.median(process_ms))
    if rss is not None:
        out["serving_rss_mb"], out["serving_pss_mb"], out["rss_by_process"] = rss
    return out


def _metric_sum(text: str, name: str) -> float:
    """The sum of a Prometheus metric's samples in ``text``."""
    from prometheus_client.parser import text_string_to_metric_families

    return sum(sample.value for family in text_string_to_metric_families(text) for sample in family.samples
               if sample.name == name)


def _wait(port: int, path: str, proc: subprocess.Popen, timeout_s: float = 240) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server on {port} exited with {proc.returncode} before answering {path}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}{path}", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    raise TimeoutError(f"127.0.0.1:{port}{path} did not answer within {timeout_s} s")


def _tree_rss_mb(pid: int) -> tuple[float, float, dict[str, float]]:
    """Total RSS of a process and all its descendants in MiB, their total PSS (each shared page split among the
    processes mapping it: what they take from the machine together) and the RSS by process name.

    The RSS total counts the shared libraries (Ray's, numpy's, pandas' that ``ray.serve`` imports) once in every
    process that maps them, and a library page is counted only where it was faulted in, so the total moves by a few
    tens of MiB between runs with the page cache (fault-around); the PSS total does not."""
    import psutil

    root = psutil.Process(pid)
    total, pss, by_name = 0.0, 0.0, {}
    for proc in [root, *root.children(recursive=True)]:
        try:
            info = proc.memory_full_info()
            name = proc.name()
        except psutil.Error:
            continue
        total += info.rss / 2**20
        pss += info.pss / 2**20
        by_name[name] = by_name.get(name, 0.0) + info.rss / 2**20
    return total, pss, {k: round(v, 1) for k, v in sorted(by_name.items(), key=lambda kv: -kv[1])}


def _replicas(pid: int) -> int:
    """How many scoring replicas run under the process ``pid``."""
    import psutil

    n = 0
    for proc in psutil.Process(pid).children(recursive=True):
        with contextlib.suppress(psutil.Error):  # a process that ended meanwhile
            n += "FraudScorer" in " ".join(proc.cmdline())
    return n


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def bare_server(folder: str, store: str, port: int) -> None:
    """The reference: one uvicorn process, FastAPI, the same Predictor and online store, nothing else."""
    import orjson
    import uvicorn
    from fastapi import FastAPI, Request, Response

    from fraud_assets.adapters.online_store import OnlineFeatures, SqliteTransactionStore
    from fraud_assets.params import load_params
    from serving.api import request_types
    from serving.predictor import Predictor

    params = load_params()
    types = request_types(params.data.max_amount, params.data.min_tx_date, params.serve.max_batch_rows)
    # Reads, then remembers each scored transaction before answering, as the service does.
    predictor = Predictor(_loaded_model(Path(folder)), OnlineFeatures(SqliteTransactionStore(store), params.features),
                          reasons=params.serve.reasons)
    app = FastAPI()

    @app.post("/predict")
    async def predict(request: Request) -> Response:
        decision = predictor.score([types.transaction.validate_json(await request.body())])[0]
        return Response(orjson.dumps(decision), media_type="application/json")

    @app.post("/predict/batch")
    async def predict_batch(request: Request) -> Response:
        rows = types.transaction_batch.validate_json(await request.body())["transactions"]
        return Response(orjson.dumps({"scores": predictor.score(rows)}), media_type="application/json")

    @app.get("/health")
    async def health() -> Response:
        return Response(b'{"status":"ok"}', media_type="application/json")

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


def run_bare(folder: Path, tmp: Path, traffic: list[dict[str, Any]], traffic_file: Path, size: Size
             ) -> dict[str, float]:
    port = _free_port()
    store = shutil.copyfile(folder / "store.sqlite", tmp / "bare-store.sqlite")
    proc = subprocess.Popen([sys.executable, __file__, "--bare-server", str(folder), str(store), str(port)])
    try:
        _wait(port, "/health", proc)
        return bench_http(port, None, traffic, traffic_file, size)
    finally:
        _stop(proc)


def _register(folder: Path, tmp: Path) -> str:
    """A tracking store holding the fixture's model as the champion, as the pipeline registers one."""
    from fraud_assets.adapters import mlflow_registry
    from fraud_assets.core.train import load_model
    from fraud_assets.params import load_params

    params = load_params()
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    c = mlflow_registry.client_for(uri)
    run = c.create_run(mlflow_registry.ensure_experiment(c, "bench-serving", (tmp / "artifacts").as_uri()))
    model_uri = mlflow_registry.log_booster(load_model(folder / "model.ubj"), run.info.run_id, uri)
    meta = json.loads((folder / "model.json").read_text())
    tags = {"threshold": str(meta["threshold"]), mlflow_registry.CALIBRATOR_TAG: meta[mlflow_registry.CALIBRATOR_TAG],
            **mlflow_registry.definition_tags(params.features)}
    mv = mlflow_registry.register_version(c, params.registry.model_name, model_uri, run.info.run_id, tags)
    c.set_registered_model_alias(params.registry.model_name, params.registry.champion_alias, mv.version)
    return uri


def run_service(folder: Path, tmp: Path, traffic: list[dict[str, Any]], traffic_file: Path, size: Size
                ) -> tuple[dict[str, float], dict[str, Any]]:
    """``fraud serve`` as a user starts it, against a copy of the store and the registered fixture model."""
    from serving.local import serve_mode

    key = secrets.token_urlsafe(32)
    port = _free_port()
    env = {**os.environ, "FRAUD_API_KEY": key, "MLFLOW_TRACKING_URI": _register(folder, tmp),
           "FRAUD_STATE_DIR": str(tmp / "state"),
           "FRAUD_ONLINE_STORE": str(shutil.copyfile(folder / "store.sqlite", tmp / "service-store.sqlite")),
           "FRAUD_PREDICTION_LOG": str(tmp / "predictions.sqlite")}
    env.pop("FRAUD_INSECURE_LOCAL", None)
    fraud = Path(sys.executable).with_name("fraud")
    proc = subprocess.Popen([str(fraud), "serve", "--port", str(port)], env=env, stdout=subprocess.DEVNULL,
                            cwd=ROOT)
    try:
        _wait(port, "/ready", proc)
        result = bench_http(port, key, traffic, traffic_file, size, server_pid=proc.pid)
        result["replicas_after"] = _replicas(proc.pid)
        return result, {"rss_by_process": result.pop("rss_by_process"), **serve_mode()}
    finally:
        _stop(proc)


RSS_TARGET_MIB = 1536.0  # 1.5 GiB: every serving process's RSS summed, one replica
RATIOS = {"p50_1": ("<=", 1.5), "rps_16": (">=", 1.0), "p99_16": ("<=", 1.0), "batch_rows": (">=", 1.0)}


def _ratios(service: dict[str, float], bare: dict[str, float]) -> dict[str, float]:
    return {"p50_1": service["p50_1"] / bare["p50_1"], "rps_16": service["rps_16"] / bare["rps_16"],
            "p99_16": service["p99_16"] / bare["p99_16"], "batch_rows": service["batch_rows_s"] / bare["batch_rows_s"]}


def _print(result: dict[str, Any]) -> None:
    print(f"store: {result['store_rows']:,} transactions of {result['store_cards']:,} cards at "
          f"{result['store_terminals']:,} terminals; traffic: {result['traffic_rows']:,} distinct transactions of "
          f"{result['distinct_cards']:,} cards, {result['distinct_pairs']:,} card/terminal pairs")
    print(f"in process: online features p50 {result['online_features_p50_ms']:.2f} ms, p99 "
          f"{result['online_features_p99_ms']:.2f} ms; scoring (features, model, reasons, append) p50 "
          f"{result['scoring_p50_ms']:.2f} ms")
    print(f"\n{'':8} {'p50@1 ms':>9} {'p99@1 ms':>9} {'req/s@1':>8} {'req/s@16':>9} {'p99@16 ms':>10} "
          f"{'batch rows/s':>13} {'errors':>6}")
    for name in ("bare", "service"):
        r = result[name]
        print(f"{name:8} {r['p50_1']:>9.2f} {r['p99_1']:>9.2f} {r['rps_1']:>8.0f} {r['rps_16']:>9.0f} "
              f"{r['p99_16']:>10.1f} {r['batch_rows_s']:>13,.0f} {r['errors']:>6.0f}")
    ratios = result["ratios"]
    print("\nservice / bare: " + ", ".join(
        f"{k} x{v:.2f} ({'met' if _meets(k, v) else 'MISSED'} {RATIOS[k][0]} {RATIOS[k][1]})"
        for k, v in ratios.items()))
    s = result["service"]
    if "replica_overhead_p50_ms" in result:
        rss_met = "met" if result["serving_rss_mb"] <= RSS_TARGET_MIB else "MISSED"
        print(f"replica overhead p50 {result['replica_overhead_p50_ms']:.2f} ms (X-Process-Time-Ms "
              f"{s['process_time_p50_ms']:.2f} - in-process scoring {result['scoring_p50_ms']:.2f}); "
              f"serving RSS {result['serving_rss_mb']:,.0f} MiB ({rss_met} <= {RSS_TARGET_MIB:,.0f}), PSS "
              f"{result['serving_pss_mb']:,.0f} MiB")
    probe = result.get("machine_probe_ms")
    if probe:
        print(f"machine probe (1e6 Python additions): {probe['start']:.1f} ms at the start, {probe['end']:.1f} ms at "
              "the end (compare runs by it: this machine's speed changes by the hour)")
    if s.get("degraded"):
        print(f"INVALID RUN: {s['degraded']:.0f} answers were degraded (store reads over serve.store_timeout_s)")


def _median(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Each figure's median over rounds (errors and degraded answers summed, the RSS breakdown of the first)."""
    out: dict[str, Any] = {}
    for key, value in runs[0].items():
        if key in ("errors", "degraded"):
            out[key] = sum(r[key] for r in runs)
        elif isinstance(value, int | float) and not isinstance(value, bool):
            out[key] = float(np.median([r[key] for r in runs if key in r]))
        else:
            out[key] = value
    return out


def _machine_probe_ms() -> float:
    """How fast this machine runs Python right now: the best of five runs of a loop of a million additions, in ms.
    The ratios compare both sides within one run; this says how two runs (or two days) of it compare."""
    def once() -> float:
        started, total = time.perf_counter(), 0
        for i in range(1_000_000):
            total += i
        return (time.perf_counter() - started) * 1000

    return round(min(once() for _ in range(5)), 1)


def _meets(name: str, value: float) -> bool:
    op, bound = RATIOS[name]
    return value <= bound if op == "<=" else value >= bound


def main() -> None:
    """Build (or reuse) the fixture, measure, write the JSON, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="bank")
    parser.add_argument("--out", type=Path, help=f"where the JSON goes (default: {RESULTS.relative_to(ROOT)} at "
                        "the bank size; required at other sizes)")
    parser.add_argument("--duration", type=float, help="seconds of each wrk phase (default: the size's)")
    parser.add_argument("--skip-bare", action="store_true", help="measure only our service (no ratios)")
    parser.add_argument("--rounds", type=int, help="rounds of bare then service, each figure their median "
                        "(default: the size's; the machine's noise moves one run by up to 25 %%)")
    parser.add_argument("--bare-server", nargs=3, metavar=("FIXTURE", "STORE", "PORT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.bare_server:
        bare_server(args.bare_server[0], args.bare_server[1], int(args.bare_server[2]))
        return
    if shutil.which("wrk") is None:
        parser.error("wrk is not installed (apt-get install wrk)")
    out = args.out or (RESULTS if args.size == "bank" else None)
    if out is None:
        parser.error("--out is required at sizes other than bank (the committed results are the bank size's)")
    from fraud_assets.settings import disable_telemetry

    disable_telemetry()
    size = SIZES[args.size]
    if args.duration:
        size = Size(**{**asdict(size), "duration_s": args.duration})
    probe_start = _machine_probe_ms()
    print(f"{os.cpu_count()} cores; the load generator and the servers share them; machine probe (1e6 Python "
          f"additions) {probe_start:.1f} ms")
    folder = _fixture(args.size)
    meta = json.loads((folder / "fixture.json").read_text())
    traffic = _traffic(folder)
    used = traffic[:sum(n for _, n in _slices(size).values())]
    if len(used) < sum(n for _, n in _slices(size).values()):
        raise SystemExit(f"the fixture's traffic has {len(traffic)} transactions, fewer than the phases use")
    result: dict[str, Any] = {
        "size": args.size, **{k: meta[k] for k in ("store_rows", "store_cards", "store_terminals")},
        "traffic_rows": len(used), "distinct_cards": len({t["customer_id"] for t in used}),
        "distinct_pairs": len({(t["customer_id"], t["terminal_id"]) for t in used}), "cores": os.cpu_count(),
        **bench_in_process(folder, traffic, min(2000, len(traffic) - 50))}
    rounds: dict[str, list[dict[str, Any]]] = {"bare": [], "service": []}
    with tempfile.TemporaryDirectory(prefix="bench-serving-") as name:
        for k in range(args.rounds or size.rounds):  # alternating: a slow minute of the machine hits both sides
            tmp = Path(name) / f"round-{k}"  # each server starts from its own fresh copy of the store
            tmp.mkdir()
            if not args.skip_bare:
                rounds["bare"].append(run_bare(folder, tmp, traffic, folder / "traffic.jsonl", size))
            service_round, result["mode"] = run_service(folder, tmp, traffic, folder / "traffic.jsonl", size)
            rounds["service"].append(service_round)
    if rounds["bare"]:
        result["bare"] = _median(rounds["bare"])
    result["service"] = _median(rounds["service"])
    result["rounds"] = rounds
    result["machine_probe_ms"] = {"start": probe_start, "end": _machine_probe_ms()}
    service = result["service"]
    result["serving_rss_mb"] = service.pop("serving_rss_mb")
    result["serving_pss_mb"] = service.pop("serving_pss_mb")
    if "process_time_p50_ms" in service:
        result["replica_overhead_p50_ms"] = service["process_time_p50_ms"] - result["scoring_p50_ms"]
    if "bare" in result:
        result["ratios"] = _ratios(service, result["bare"])
        result["targets_met"] = all(_meets(k, v) for k, v in result["ratios"].items()) and \
            result["online_features_p99_ms"] <= 1.0 and result.get("replica_overhead_p50_ms", 0.0) < 1.0 and \
            result["serving_rss_mb"] <= RSS_TARGET_MIB and not service.get("degraded")
        _print(result)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
