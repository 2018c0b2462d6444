"""Simulator speed: one month of ~300,000 transactions, beside two references measured in the same run.

* **simulate**: ``fraud_assets.core.simulate.simulate_month`` (population made once, outside the timing);
* **to_parquet**: writing the same frame with ``DataFrame.to_parquet`` (what every simulated month costs anyway);
* **numpy draws**: ``numpy`` drawing as many normal variates as the simulator draws random numbers (~6 a row).

Usage::

    .venv/bin/python benchmarks/bench_simulate.py [--rows 300000]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def _best_of(repeat: int, fn: Callable[[], object]) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    """Time one simulated month of ``--rows`` transactions and print the ratios to the references."""
    from fraud_assets.core.simulate import make_population, simulate_month
    from fraud_assets.params import load_params

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=300_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    base = load_params(ROOT / "params.yaml").data
    month = base.start_month
    probe = len(simulate_month(base, month))
    scale = args.rows / probe
    p = base.model_copy(update={"n_customers": max(1, round(base.n_customers * scale)),
                                "n_terminals": max(1, round(base.n_terminals * scale))})
    t0 = time.perf_counter()
    pop = make_population(p)
    t_pop = time.perf_counter() - t0
    frame = simulate_month(p, month, pop)
    t_sim = _best_of(args.repeat, lambda: simulate_month(p, month, pop))
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / f"{month}.parquet"
        t_pq = _best_of(args.repeat, lambda: frame.to_parquet(out, index=False))
    rng = np.random.default_rng(0)
    t_np = _best_of(args.repeat, lambda: rng.normal(size=6 * len(frame)))

    print(f"customers {p.n_customers}, terminals {p.n_terminals}; population {t_pop:.2f} s (once); "
          f"first month with population {t_pop + t_sim:.2f} s (target < 10 s)")
    print(f"simulate_month          {len(frame):>8} rows  {t_sim:7.3f} s  "
          f"fraud {100 * frame['is_fraud'].mean():.2f} %")
    print(f"to_parquet (reference)  {len(frame):>8} rows  {t_pq:7.3f} s  "
          f"ratio simulate / to_parquet {t_sim / t_pq:.1f}")
    print(f"numpy draws (reference) {6 * len(frame):>8} vals  {t_np:7.3f} s  "
          f"ratio simulate / numpy {t_sim / t_np:.1f}")


if __name__ == "__main__":
    main()
