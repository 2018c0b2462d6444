"""Stage ``featurize``: features of each validated month, the months its windows reach back into as history (the
code serving uses)."""

from __future__ import annotations

from pathlib import Path

from fraud_assets.compute import LOCAL, Engine, open_engine
from fraud_assets.core.features import build_features_by_month
from fraud_assets.params import FeatureParams
from fraud_assets.stages import FEATURES, PREPARED, read_months, stage_params


def featurize(prepared_dir: Path, out_dir: Path, p: FeatureParams, engine: Engine = LOCAL) -> dict[str, int]:
    """Build features for every month in ``prepared_dir`` into ``out_dir`` on ``engine``; return rows per month."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = {}
    for month, features in build_features_by_month(read_months(prepared_dir), p, engine.features).items():
        features.to_parquet(out_dir / f"{month}.parquet", index=False)
        rows[month] = len(features)
    return rows


def main() -> None:
    """Featurize all prepared months on ``compute.engine``."""
    p = stage_params()
    with open_engine(p.compute) as engine:
        counts = featurize(PREPARED, FEATURES, p.features, engine)
    for month, n in counts.items():
        print(f"{month}: {n} rows of features")


if __name__ == "__main__":
    main()
