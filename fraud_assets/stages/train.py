"""Stage ``train``: an XGBoost model on the months before the latest one, its calibrator and threshold from
validation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fraud_assets.adapters import dvc_repo
from fraud_assets.compute import LOCAL, Engine, open_engine
from fraud_assets.core.contract import feature_definition
from fraud_assets.core.features import FEATURE_COLUMNS
from fraud_assets.core.months import available_months
from fraud_assets.core.split import split_by_time, training_months
from fraud_assets.core.train import fit_challenger, save_model
from fraud_assets.params import Params
from fraud_assets.stages import FEATURES, MODEL_FILE, MODEL_META, read_months, stage_params, write_json


def train(features_dir: Path, p: Params, root: Path, engine: Engine = LOCAL) -> dict[str, Any]:
    """Train on ``split.train_months`` months before the latest month, on ``engine``; save the model; return its
    metadata."""
    months = available_months(features_dir)
    if not months:
        raise FileNotFoundError(f"no features in {features_dir}")
    holdout = months[-1]
    wanted = [m for m in training_months(holdout, p.split) if m in months] + [holdout]
    split = split_by_time(read_months(features_dir, wanted), holdout, p.split)
    fitted = fit_challenger(split.train, split.valid, p.train, p.evaluate, tune=p.tune, fit=engine.fit)
    booster = fitted.booster
    save_model(booster, root / MODEL_FILE)
    return {
        "threshold": fitted.threshold,
        "calibrator": fitted.calibrator.to_dict(),  # scores -> probabilities, fitted on the validation window
        "train_params": fitted.params.model_dump(mode="json"),  # the tuned ones when tune.enabled
        "tuning_trials": fitted.trials,
        "holdout_month": holdout,
        "train_months": split.train_months,
        "data_versions": {m: dvc_repo.snapshot_version(root, p.data.dir, m) for m in [*split.train_months, holdout]},
        "features": FEATURE_COLUMNS,
        "feature_definition": feature_definition(p.features).to_dict(),  # knobs, windows, columns: what serving builds
        "best_iteration": int(booster.attr("best_iteration") or 0),
        "rows_train": len(split.train),
        "rows_valid": len(split.valid),
        "compute_engine": engine.name,
    }


def main() -> None:
    """Train the model and write ``models/model.ubj`` and ``models/model_meta.json``."""
    root, p = Path.cwd(), stage_params()
    with open_engine(p.compute) as engine:
        meta = train(FEATURES, p, root, engine)
    write_json(MODEL_META, meta)
    print(f"trained on {', '.join(meta['train_months'])}; holdout {meta['holdout_month']}; "
          f"threshold {meta['threshold']:.4f}; best iteration {meta['best_iteration']}")


if __name__ == "__main__":
    main()
