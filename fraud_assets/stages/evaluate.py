"""Stage ``evaluate``: the trained model's metrics on its holdout month, at its own threshold."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from fraud_assets.core.evaluate import evaluate_scores
from fraud_assets.core.train import load_model, predict
from fraud_assets.params import Params
from fraud_assets.stages import FEATURES, METRICS, MODEL_FILE, MODEL_META, stage_params, write_json


def evaluate(model_file: Path, meta_file: Path, features_dir: Path, p: Params) -> dict[str, float]:
    """Score the holdout month named in ``meta_file`` and return the evaluation metrics."""
    meta = json.loads(meta_file.read_text())
    holdout = pd.read_parquet(features_dir / f"{meta['holdout_month']}.parquet")
    booster = load_model(model_file, p.train.n_threads)
    return evaluate_scores(holdout, predict(booster, holdout), float(meta["threshold"]), p.evaluate)


def main() -> None:
    """Write ``metrics/evaluation.json`` (shown by ``dvc metrics show``)."""
    metrics = evaluate(MODEL_FILE, MODEL_META, FEATURES, stage_params())
    write_json(METRICS / "evaluation.json", metrics)
    print(", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items()))


if __name__ == "__main__":
    main()
