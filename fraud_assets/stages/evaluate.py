"""Stage ``evaluate``: the trained model's metrics on its holdout month, on calibrated scores at its own threshold.

Beside the model's metrics, on simulated data: the AUPRC of the simulator's own ``fraud_probability`` (the
ceiling) and the recall at the threshold per fraud scenario, read from the prepared month (which keeps them).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from fraud_assets.core.calibrate import Calibrator
from fraud_assets.core.evaluate import SCENARIO, evaluate_scores, oracle_average_precision, recall_by_scenario
from fraud_assets.core.train import load_model, predict_calibrated
from fraud_assets.params import Params
from fraud_assets.stages import FEATURES, METRICS, MODEL_FILE, MODEL_META, PREPARED, stage_params, write_json


def evaluate(model_file: Path, meta_file: Path, features_dir: Path, prepared_dir: Path, p: Params
             ) -> dict[str, Any]:
    """Score the holdout month named in ``meta_file`` and return the evaluation metrics."""
    meta = json.loads(meta_file.read_text())
    holdout = pd.read_parquet(features_dir / f"{meta['holdout_month']}.parquet")
    booster = load_model(model_file, p.train.n_threads)
    calibrator = Calibrator.from_dict(meta["calibrator"]) if "calibrator" in meta else None
    scores = predict_calibrated(booster, calibrator, holdout)
    threshold = float(meta["threshold"])
    metrics: dict[str, Any] = {**evaluate_scores(holdout, scores, threshold, p.evaluate),
                               "calibrated": calibrator is not None}
    rows = holdout[["transaction_id"]].merge(pd.read_parquet(prepared_dir / f"{meta['holdout_month']}.parquet"),
                                             on="transaction_id", how="left")
    oracle = oracle_average_precision(rows)
    if oracle is not None:
        metrics |= {"oracle_average_precision": oracle,
                    "average_precision_to_oracle": metrics["average_precision"] / oracle}
    if SCENARIO in rows.columns:
        metrics |= recall_by_scenario(rows[SCENARIO].to_numpy(), scores >= threshold)
    return metrics


def main() -> None:
    """Write ``metrics/evaluation.json`` (shown by ``dvc metrics show``)."""
    metrics = evaluate(MODEL_FILE, MODEL_META, FEATURES, PREPARED, stage_params())
    write_json(METRICS / "evaluation.json", metrics)
    print(", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items()))


if __name__ == "__main__":
    main()
