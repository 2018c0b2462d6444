"""Model quality: an ablation of the feature groups on the default simulated months and a second seed.

For each simulator seed the default six months are simulated in memory, featurized in batch mode (the code
``dvc repro`` runs) and split as the pipeline splits them (train on the five months before the holdout, early
stopping and calibration on the latest ``split.validation_days``). A booster is then trained on all features and
once without each feature group, with the params of ``params.yaml``, and scored on the holdout month beside the
simulator's own ``fraud_probability`` (the oracle). The table shows the AUPRC per seed, the mean and the spread
(max - min over seeds) of the AUPRC, and of the paired change against all features (the same seed, the same
split), so a difference smaller than its spread is noise.

With ``--tune``, the bounded grid search of ``params.yaml`` ``tune`` instead: per seed, the validation and holdout
AUPRC of the params as given and of the ones the search picks on the validation window.

Usage::

    .venv/bin/python benchmarks/bench_quality.py [--seeds 42 7] [--out benchmarks/results/quality_ablation.json]
    .venv/bin/python benchmarks/bench_quality.py --tune [--out benchmarks/results/quality_tuning.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score

from fraud_assets.core.evaluate import oracle_average_precision
from fraud_assets.core.features import FEATURE_COLUMNS, FEATURE_GROUPS, build_features_by_month
from fraud_assets.core.simulate import simulate_months
from fraud_assets.core.split import split_by_time
from fraud_assets.core.train import predict, train_model, tune_train_params
from fraud_assets.params import Params, load_params

ROOT = Path(__file__).resolve().parent.parent


def _data(p: Params, seed: int) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Train, validation and holdout features of one seed's default months, and the holdout's raw rows."""
    data = p.data.model_copy(update={"seed": seed})
    months = simulate_months(data, data.start_month, data.months)
    features = build_features_by_month(months, p.features)
    holdout = sorted(months)[-1]
    split = split_by_time(features, holdout, p.split)
    return split.train, split.valid, split.holdout, months[holdout]


def _auprc(p: Params, train: pd.DataFrame, valid: pd.DataFrame, holdout: pd.DataFrame, columns: list[str]) -> float:
    booster = train_model(train, valid, p.train, columns)
    return float(average_precision_score(holdout["is_fraud"], predict(booster, holdout)))


def _tuning(p: Params, seeds: list[int]) -> dict[str, dict]:
    """Per seed: validation and holdout AUPRC of the params as given and of the tuned ones, and every trial."""
    out = {}
    for seed in seeds:
        train, valid, holdout, _ = _data(p, seed)
        t0 = time.perf_counter()
        best, trials = tune_train_params(train, valid, p.train, p.tune)
        seconds = time.perf_counter() - t0
        chosen = {k: getattr(best, k) for k in p.tune.grid}
        out[str(seed)] = {"trials": trials, "seconds": seconds, "chosen": chosen,
                          "valid_average_precision": {"default": trials[0]["valid_average_precision"],
                                                      "tuned": max(t["valid_average_precision"] for t in trials)},
                          "holdout_average_precision": {"default": _auprc(p, train, valid, holdout, FEATURE_COLUMNS),
                                                        "tuned": _auprc(p.model_copy(update={"train": best}), train,
                                                                        valid, holdout, FEATURE_COLUMNS)}}
        print(f"seed {seed}: {len(trials)} trials in {seconds:.0f} s, chose {chosen}: "
              f"{out[str(seed)]['valid_average_precision']} {out[str(seed)]['holdout_average_precision']}", flush=True)
    return out


def main() -> None:
    """Run the ablation (or the tuning measurement) and write the results JSON."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 7])
    parser.add_argument("--tune", action="store_true")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    p = load_params(ROOT / "params.yaml")
    if args.tune:
        out = args.out or ROOT / "benchmarks/results/quality_tuning.json"
        out.write_text(json.dumps({"seeds": args.seeds, "tune": p.tune.model_dump(),
                                   "per_seed": _tuning(p, args.seeds)}, indent=2) + "\n")
        return
    args.out = args.out or ROOT / "benchmarks/results/quality_ablation.json"
    variants = {"all features": list(FEATURE_COLUMNS)}
    variants |= {f"without {g}": [c for c in FEATURE_COLUMNS if c not in cols] for g, cols in FEATURE_GROUPS.items()}
    added = {c for cols in FEATURE_GROUPS.values() for c in cols}
    variants["base columns only"] = [c for c in FEATURE_COLUMNS if c not in added]
    results: dict[str, dict[str, float]] = {name: {} for name in variants}
    sizes: dict[str, dict[str, float]] = {}
    for seed in args.seeds:
        t0 = time.perf_counter()
        train, valid, holdout, raw = _data(p, seed)
        oracle = oracle_average_precision(raw)
        sizes[str(seed)] = {"rows_train": len(train), "rows_valid": len(valid), "rows_holdout": len(holdout),
                            "frauds_holdout": int(holdout["is_fraud"].sum()), "oracle_average_precision": oracle}
        for name, cols in variants.items():
            results[name][str(seed)] = _auprc(p, train, valid, holdout, cols)
            print(f"seed {seed} {name:32} AUPRC {results[name][str(seed)]:.4f}  oracle {oracle:.4f}", flush=True)
        print(f"seed {seed}: {time.perf_counter() - t0:.0f} s", flush=True)
    full = results["all features"]
    table = {name: {"per_seed": r, "mean": float(np.mean(list(r.values()))),
                    "spread": float(np.ptp(list(r.values()))),
                    "mean_change": float(np.mean([v - full[s] for s, v in r.items()])),
                    "change_spread": float(np.ptp([v - full[s] for s, v in r.items()])),
                    "mean_ratio_to_oracle": float(np.mean([v / sizes[s]["oracle_average_precision"]
                                                           for s, v in r.items()]))}
             for name, r in results.items()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"seeds": args.seeds, "sizes": sizes, "groups": FEATURE_GROUPS,
                                    "train_params": p.train.model_dump(), "auprc": table}, indent=2) + "\n")
    for name, row in table.items():
        print(f"{name:32} mean {row['mean']:.4f} spread {row['spread']:.4f} change {row['mean_change']:+.4f} "
              f"(spread {row['change_spread']:.4f}) ratio {row['mean_ratio_to_oracle']:.3f}")


if __name__ == "__main__":
    main()
