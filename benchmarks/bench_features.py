"""Feature speed: batch mode over 6 months x ~300,000 transactions, and online mode for one transaction.

Batch (training): ``build_features`` month by month with the month before as history, as the asset graph
and ``dvc repro`` run it, beside a reference measured in the same run on the same rows: pandas'
``groupby(customer).rolling("30D")`` computing two of our features (30-day count and mean amount per
customer), the textbook way. Peak RSS of this process is reported (the simulated months included).

Online (serving): :class:`fraud_assets.adapters.online_store.OnlineFeatures` on single transactions of the
following month against a SQLite store holding the 6 months, read only, through ``matrix`` (the serving path),
beside the floor it cannot beat: the indexed SQLite reads of the same customers' and terminals' history alone.

Usage::

    .venv/bin/python benchmarks/bench_features.py [--rows-per-month 300000] [--months 6] [--online 2000]
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _pandas_rolling_reference(frame: pd.DataFrame) -> pd.DataFrame:
    """30-day count and mean amount per customer with pandas rolling windows (strictly before each row)."""
    ordered = frame.sort_values(["customer_id", "tx_datetime"], kind="stable").set_index("tx_datetime")
    rolled = ordered.groupby("customer_id")["amount"].rolling("30D", closed="left")
    return pd.DataFrame({"count": rolled.count(), "mean": rolled.mean()})


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values) * 1000.0, q))


def main() -> None:
    """Simulate, time batch features against pandas rolling, seed a store, time online features."""
    from fraud_assets.adapters.online_store import OnlineFeatures, SqliteTransactionStore
    from fraud_assets.core.features import FEATURE_COLUMNS, build_features
    from fraud_assets.core.months import month_range
    from fraud_assets.core.simulate import simulate_month, simulate_months
    from fraud_assets.params import load_params
    from fraud_assets.windows import DAY_S, lookback_days

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows-per-month", type=int, default=300_000)
    parser.add_argument("--months", type=int, default=6)
    parser.add_argument("--online", type=int, default=2000, help="single transactions timed in online mode")
    args = parser.parse_args()

    base = load_params(ROOT / "params.yaml")
    probe = len(simulate_month(base.data, base.data.start_month))
    scale = args.rows_per_month / probe
    data = base.data.model_copy(update={"n_customers": max(1, round(base.data.n_customers * scale)),
                                        "n_terminals": max(1, round(base.data.n_terminals * scale))})
    months = month_range(data.start_month, args.months + 1)
    t0 = time.perf_counter()
    frames = simulate_months(data, data.start_month, args.months + 1)
    following = frames.pop(months[-1])
    rows = sum(len(f) for f in frames.values())
    print(f"data: {args.months} months, {rows:,} transactions, simulated in {time.perf_counter() - t0:.1f} s; "
          f"peak RSS so far {_peak_mb():.0f} MB")

    # Batch mode, as the pipeline runs it.
    t0 = time.perf_counter()
    previous, n_out = None, 0
    for frame in frames.values():
        out = build_features(frame, base.features, history=previous)
        n_out += len(out)
        previous = frame
    t_batch = time.perf_counter() - t0
    peak_batch = _peak_mb()
    t0 = time.perf_counter()
    for frame in frames.values():
        _pandas_rolling_reference(frame)
    t_ref = time.perf_counter() - t0
    print(f"batch features ({len(FEATURE_COLUMNS)} columns)  : {t_batch:7.1f} s for {n_out:,} rows "
          f"({n_out / t_batch:,.0f} rows/s); peak RSS {peak_batch:.0f} MB")
    print(f"pandas rolling reference (2 columns): {t_ref:7.1f} s  -> ours is {t_batch / t_ref:.2f}x its time "
          f"for {len(FEATURE_COLUMNS) / 2:.1f}x the columns")
    print(f"target: batch under 60 s on 2 cores -> {'met' if t_batch < 60 else 'NOT met'}")

    # Online mode against a store holding the months.
    with tempfile.TemporaryDirectory(prefix="bench-features-") as tmp:
        store = SqliteTransactionStore(Path(tmp) / "online_store.sqlite")
        t0 = time.perf_counter()
        for frame in frames.values():
            store.seed(frame)
        print(f"store seeded with {store.count():,} transactions in {time.perf_counter() - t0:.1f} s")
        online = OnlineFeatures(store, base.features, remember=False)
        sample = following.sort_values("tx_datetime").head(args.online)
        requests = [{"transaction_id": r.transaction_id, "tx_datetime": r.tx_datetime.isoformat(),
                     "customer_id": r.customer_id, "terminal_id": r.terminal_id, "amount": float(r.amount)}
                    for r in sample.itertuples()]
        for tx in requests[:50]:  # warm the page cache and pandas' code paths
            online.matrix([tx])
        t_online, t_read = [], []
        lookback = lookback_days(base.features) * DAY_S
        for tx in requests:
            t0 = time.perf_counter()
            online.matrix([tx])
            t_online.append(time.perf_counter() - t0)
            ts = int(pd.Timestamp(tx["tx_datetime"]).timestamp())
            t0 = time.perf_counter()
            store.history([tx["customer_id"]], [tx["terminal_id"]], ts - lookback, ts + 1)
            t_read.append(time.perf_counter() - t0)
    print(f"online features, one transaction : p50 {_pct(t_online, 50):.2f} ms, p99 {_pct(t_online, 99):.2f} ms "
          f"({len(requests)} transactions)")
    print(f"  of which the store read (floor): p50 {_pct(t_read, 50):.2f} ms, p99 {_pct(t_read, 99):.2f} ms")
    print(f"target: online p99 under 1 ms -> {'met' if _pct(t_online, 99) < 1.0 else 'NOT met'}")
    print(f"peak RSS of this process: {_peak_mb():.0f} MB")


if __name__ == "__main__":
    main()
