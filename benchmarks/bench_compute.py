"""Features and training on both compute engines, at three sizes: time and peak memory of the whole process tree.

For each size (about 0.3 M, 1 M and 3 M transactions: six simulated months of a bank-style export, 1.95
transactions a card a day, two terminals a card) and each engine, a fresh process builds the features of every
month (each with the months its windows reach back into, as the asset graph does) and fits the challenger on the
months before the last (the pipeline's split, calibration and threshold), then scores the last month. A sampler
sums the memory (PSS) of that process and everything it starts (the ``ray`` engine's local Ray: GCS, raylet,
workers) every 0.2 s. The reference is the ``local`` engine in the same run: the figures that matter are ratios.

    make bench-compute            # .venv/bin/python benchmarks/bench_compute.py [--sizes 0.3,1,3] [--engines local,ray]

Writes ``benchmarks/results/compute.json``; the simulated months are cached under ``.state/bench/``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "compute.json"
MONTHS = 6
TX_PER_CARD_DAY = 1.95
TERMINALS_PER_CARD = 2


BANK = "bank"  # the bank profile: 50,000 cards at 20,000 terminals, about 10 M transactions in six months
BANK_CARDS, BANK_TERMINALS, BANK_MILLIONS = 50_000, 20_000, 10.0


def _overrides(size: str) -> dict[str, Any]:
    """The simulator's params for a size: ``bank``, or millions of transactions (``"0.3"``)."""
    if size == BANK:
        cards, terminals, per_day = BANK_CARDS, BANK_TERMINALS, BANK_MILLIONS * 1e6 / (BANK_CARDS * 181)
    else:
        per_day = TX_PER_CARD_DAY
        cards = round(float(size) * 1e6 / (per_day * 181))  # six months: January to June
        terminals = cards * TERMINALS_PER_CARD
    # The square grows with the terminals (their density, so about 8 usual terminals a card, stays the default's).
    return {"data.n_customers": cards, "data.n_terminals": terminals, "data.mean_tx_per_day": per_day,
            "data.area_size": float(100.0 * (terminals / 1000) ** 0.5), "data.months": MONTHS}


def _data(size: str) -> Path:
    """The cached months of a size (simulated once)."""
    from fraud_assets.core.simulate import iter_months
    from fraud_assets.params import load_params
    from fraud_assets.settings import state_dir

    p = load_params(overrides=_overrides(size))
    folder = state_dir() / "bench" / f"compute-{size}-{p.data.seed}"
    if (folder / "done").exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    for month, frame in iter_months(p.data, p.data.start_month, MONTHS):
        frame.to_parquet(folder / f"{month}.parquet", index=False)
    (folder / "done").write_text("")
    return folder


def run_one(engine_name: str, folder: Path, size: str) -> dict[str, Any]:
    """In this process: features, then the challenger, on ``engine_name``; the figures as a dict."""
    import pandas as pd
    from sklearn.metrics import average_precision_score

    from fraud_assets.compute import open_engine
    from fraud_assets.core.features import build_features_by_month
    from fraud_assets.core.split import split_by_time
    from fraud_assets.core.train import fit_challenger, predict_calibrated
    from fraud_assets.params import load_params

    p = load_params(overrides=_overrides(size) | {"compute.engine": engine_name})
    months = {f.stem: pd.read_parquet(f) for f in sorted(folder.glob("*.parquet"))}
    rows = sum(len(f) for f in months.values())
    cards = len(set().union(*(set(f["customer_id"].unique()) for f in months.values())))
    terminals = len(set().union(*(set(f["terminal_id"].unique()) for f in months.values())))
    t0 = time.perf_counter()
    with open_engine(p.compute) as engine:
        t1 = time.perf_counter()
        features = build_features_by_month(months, p.features, engine.features)
        t2 = time.perf_counter()
        # As it goes, for a run that may not finish (at a bank's size): what it measured so far.
        print(f"{engine_name}: features of {rows:,} transactions in {t2 - t1:.1f} s", file=sys.stderr, flush=True)
        del months
        holdout = sorted(features)[-1]
        split = split_by_time(features, holdout, p.split)
        fitted = fit_challenger(split.train, split.valid, p.train, p.evaluate, fit=engine.fit)
        t3 = time.perf_counter()
    scores = predict_calibrated(fitted.booster, fitted.calibrator, split.holdout)
    return {"rows": rows, "cards": cards, "terminals": terminals, "rows_train": len(split.train),
            "connect_s": t1 - t0, "features_s": t2 - t1, "train_s": t3 - t2, "total_s": t3 - t0,
            "holdout_average_precision": float(average_precision_score(split.holdout["is_fraud"], scores)),
            "best_iteration": int(fitted.booster.attr("best_iteration") or 0),
            "train_workers": int(fitted.booster.attr("train_workers") or 1)}


def _tree_rss(pid: int) -> dict[str, float]:
    """Memory (MB) of ``pid`` and all its descendants, by process name (summed): each one's PSS, its private pages
    plus its share of pages it shares (Ray's object store is shared memory: summed RSS would count it once per
    process that maps it)."""
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return {}
    out: dict[str, float] = defaultdict(float)
    for proc in procs:
        try:
            out[proc.name()] += proc.memory_full_info().pss / 2**20
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return dict(out)


def measure(engine_name: str, folder: Path, size: str) -> dict[str, Any]:
    """``run_one`` in a fresh process, its tree's RSS sampled every 0.2 s."""
    env = os.environ | {"RAY_USAGE_STATS_ENABLED": "0", "FRAUD_RAY_STORAGE": str(folder / "ray_train")}
    proc = subprocess.Popen([sys.executable, __file__, "--run", engine_name, "--data", str(folder),
                             "--size", size], stdout=subprocess.PIPE, text=True, env=env)
    peak, peak_split, stop = 0.0, {}, threading.Event()

    def sample() -> None:
        nonlocal peak, peak_split
        while not stop.is_set():
            split = _tree_rss(proc.pid)
            if sum(split.values()) > peak:
                peak, peak_split = sum(split.values()), split
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, _ = proc.communicate()
    stop.set()
    sampler.join()
    if proc.returncode != 0:
        raise RuntimeError(f"{engine_name} at size {size} failed ({proc.returncode})")
    result = json.loads(out.strip().splitlines()[-1])
    return result | {"peak_tree_rss_mb": round(peak), "kb_per_tx": round(peak * 1024 / result["rows"], 3),
                     "peak_by_process_mb": {k: round(v) for k, v in sorted(peak_split.items(), key=lambda kv: -kv[1])}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="0.3,1,3",
                        help=f"millions of transactions, comma-separated, or {BANK!r} (50,000 cards, 10 M)")
    parser.add_argument("--engines", default="local,ray")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--run", help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--size", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:
        print(json.dumps(run_one(args.run, args.data, args.size)))
        return
    report: dict[str, Any] = {"cores": os.cpu_count(), "months": MONTHS, "sizes": {}}
    for size in args.sizes.split(","):
        folder = _data(size)
        by_engine = {}
        for engine_name in args.engines.split(","):
            r = measure(engine_name, folder, size)
            by_engine[engine_name] = r
            print(f"{size} ({r['rows']:,} tx, {r['cards']:,} cards, {r['terminals']:,} terminals) "
                  f"{engine_name:>5}: features {r['features_s']:6.1f} s, training {r['train_s']:6.1f} s, "
                  f"peak {r['peak_tree_rss_mb']:6,} MB ({r['kb_per_tx']:.2f} KB/tx), "
                  f"holdout AUPRC {r['holdout_average_precision']:.4f}", flush=True)
        previous = json.loads(args.out.read_text()) if args.out.exists() else {}
        by_engine = previous.get("sizes", {}).get(size, {}).get("engines", {}) | by_engine  # one engine at a time
        entry: dict[str, Any] = {"engines": by_engine}
        if {"local", "ray"} <= set(by_engine):
            a, b = by_engine["local"], by_engine["ray"]
            entry["ray_vs_local"] = {"features_s": b["features_s"] / a["features_s"],
                                     "train_s": b["train_s"] / a["train_s"],
                                     "peak_tree_rss": b["peak_tree_rss_mb"] / a["peak_tree_rss_mb"],
                                     "auprc_difference": b["holdout_average_precision"]
                                     - a["holdout_average_precision"]}
        report["sizes"][size] = entry
        args.out.parent.mkdir(parents=True, exist_ok=True)  # after each size: a long run keeps what it measured
        merged = previous | report | {"sizes": previous.get("sizes", {}) | report["sizes"]}
        args.out.write_text(json.dumps(merged, indent=2) + "\n")


if __name__ == "__main__":
    main()
