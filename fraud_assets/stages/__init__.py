"""Thin entry points that ``dvc.yaml`` runs (``python -m fraud_assets.stages.<name>``).

Each stage reads ``params.yaml`` through the typed loader and calls the same core functions as the
Dagster assets. DVC runs every stage from the folder holding ``dvc.yaml``, which is the project root.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from fraud_assets.core.months import available_months
from fraud_assets.params import Params, load_params

PREPARED = Path("data/prepared")
QUARANTINE = PREPARED / "quarantine"
FEATURES = Path("data/features")
MODELS = Path("models")
MODEL_FILE = MODELS / "model.ubj"
MODEL_META = MODELS / "model_meta.json"
METRICS = Path("metrics")


def stage_params() -> Params:
    """``params.yaml`` of the folder the stage runs in (DVC runs stages from the ``dvc.yaml`` folder)."""
    return load_params(Path.cwd() / "params.yaml")


def read_months(folder: Path, months: list[str] | None = None) -> dict[str, pd.DataFrame]:
    """``{month: frame}`` for the monthly Parquet files in ``folder`` (all of them, or ``months``)."""
    wanted = months if months is not None else available_months(folder)
    if not wanted:
        raise FileNotFoundError(f"no monthly Parquet files in {folder}")
    return {m: pd.read_parquet(folder / f"{m}.parquet") for m in wanted}


def write_json(path: Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` as stable, indented JSON (so identical results give identical bytes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
