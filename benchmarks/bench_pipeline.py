"""Retrain speed: validated data -> features -> challenger -> evaluation -> promotion decision.

Runs the same core functions twice in one process, on the same simulated months:

* **plain**: one script calling ``fraud_assets.core`` directly (validation, features, XGBoost, the logistic
  baseline, evaluation, plots, the decision), no orchestration, no tracking;
* **dagster**: the real asset graph materialized in-process into a temporary persistent Dagster instance,
  with DVC-pinned snapshots, the Parquet IO manager and MLflow tracking + registry (SQLite).

It prints both wall times and their ratio (the cost of orchestration, persistence and tracking) and the
peak RSS. Usage::

    .venv/bin/python benchmarks/bench_pipeline.py [--rows-per-month 300000] [--months 6]
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _scaled_project(root: Path, rows_per_month: int, months: int) -> Path:
    """A project folder whose params simulate about ``rows_per_month`` transactions a month."""
    from fraud_assets.core.simulate import simulate_month
    from fraud_assets.params import load_params

    base = load_params(ROOT / "params.yaml")
    probe = len(simulate_month(base.data, base.data.start_month))
    root.mkdir(parents=True, exist_ok=True)
    base.updated({"data.n_customers": max(1, round(base.data.n_customers * rows_per_month / probe)),
                  "data.n_terminals": max(1, round(base.data.n_terminals * rows_per_month / probe)),
                  "data.months": months, "split.train_months": min(base.split.train_months, months - 1),
                  }).write(root / "params.yaml")
    return root


def _simulate_and_pin(root: Path) -> list[str]:
    from fraud_assets.adapters import dvc_repo
    from fraud_assets.core.simulate import simulate_months
    from fraud_assets.params import load_params

    p = load_params(root / "params.yaml")
    data = root / p.data.dir
    data.mkdir(parents=True, exist_ok=True)
    frames = simulate_months(p.data, p.data.start_month, p.data.months)
    for month, frame in frames.items():
        frame.to_parquet(data / f"{month}.parquet", index=False)
    dvc_repo.ensure_repo(root)
    dvc_repo.pin_snapshots(root, p.data.dir, push=False)
    rows = sum(len(f) for f in frames.values())
    print(f"data: {len(frames)} months, {rows:,} transactions ({rows / len(frames):,.0f} a month)")
    return list(frames)


def plain(root: Path, months: list[str]) -> dict:
    """The retrain as one script over the core functions."""
    from fraud_assets.core.evaluate import choose_threshold_on, compare_on_holdout
    from fraud_assets.core.features import build_features_by_month
    from fraud_assets.core.plots import evaluation_plots
    from fraud_assets.core.promote import decide_promotion
    from fraud_assets.core.split import split_by_time
    from fraud_assets.core.train import fit_challenger, predict, predict_baseline, train_baseline
    from fraud_assets.core.validate import read_snapshot, validate_transactions
    from fraud_assets.params import load_params

    p = load_params(root / "params.yaml")
    valid = {m: validate_transactions(read_snapshot(root / p.data.dir / f"{m}.parquet"), m,
                                   data=p.data).valid for m in months}
    features = build_features_by_month(valid, p.features)  # as the asset graph computes them
    split = split_by_time(features, months[-1], p.split)
    booster, calibrator, threshold, _, _ = fit_challenger(split.train, split.valid, p.train, p.evaluate)
    baseline = train_baseline(split.train, p.train)
    scored = {"challenger": (calibrator.apply(predict(booster, split.holdout)), threshold),
              "baseline": (predict_baseline(baseline, split.holdout),
                           choose_threshold_on(split.valid, predict_baseline(baseline, split.valid), p.evaluate))}
    metrics = compare_on_holdout(split.holdout, scored, p.evaluate)
    evaluation_plots(split.holdout["is_fraud"].to_numpy(), {k: v[0] for k, v in scored.items()}, "challenger",
                     threshold, booster.get_score(importance_type="gain"), p.evaluate.calibration_bins)
    decision = decide_promotion(metrics["challenger"], None, p.promote)
    return {"promote": decision.promote, "average_precision": metrics["challenger"]["average_precision"],
            "baseline_average_precision": metrics["baseline"]["average_precision"]}


def orchestrated(root: Path, months: list[str], state: Path) -> dict:
    """The retrain as Dagster runs of the real asset graph (one run per month, then the training run)."""
    import dagster as dg

    from fraud_assets.orchestration.runner import run_months
    from fraud_assets.params import load_params

    os.environ["FRAUD_STATE_DIR"] = str(state)
    (state / "dagster").mkdir(parents=True, exist_ok=True)
    with dg.DagsterInstance.local_temp(str(state / "dagster")) as instance:
        decision = run_months(months, months[-1], root, load_params(root / "params.yaml"), instance=instance)
    return {"promote": decision["promoted"], "average_precision": decision["challenger_metrics"]["average_precision"]}


def main() -> None:
    """Run both ways on the same data and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows-per-month", type=int, default=300_000)
    parser.add_argument("--months", type=int, default=6)
    args = parser.parse_args()
    for key, value in {"MLFLOW_DISABLE_TELEMETRY": "true", "DVC_NO_ANALYTICS": "1",
                       "DAGSTER_DISABLE_TELEMETRY": "1"}.items():
        os.environ.setdefault(key, value)
    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp:
        root = _scaled_project(Path(tmp) / "project", args.rows_per_month, args.months)
        t0 = time.perf_counter()
        months = _simulate_and_pin(root)
        print(f"setup (simulate + dvc add): {time.perf_counter() - t0:.1f} s")

        t0 = time.perf_counter()
        ref = plain(root, months)
        t_plain = time.perf_counter() - t0
        t0 = time.perf_counter()
        dag = orchestrated(root, months, Path(tmp) / "state")
        t_dag = time.perf_counter() - t0

    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"plain core script         : {t_plain:7.1f} s  (AUPRC {ref['average_precision']:.4f}, "
          f"baseline {ref['baseline_average_precision']:.4f})")
    print(f"dagster + dvc + mlflow    : {t_dag:7.1f} s  (AUPRC {dag['average_precision']:.4f}, "
          f"promoted {dag['promote']})")
    print(f"orchestration overhead    : {t_dag / t_plain:7.2f}x the plain script")
    print(f"peak RSS of this process  : {peak_mb:7.0f} MB")
    print(f"target: dagster retrain under 300 s -> {'met' if t_dag < 300 else 'NOT met'}")


if __name__ == "__main__":
    main()
