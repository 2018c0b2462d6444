"""Features group: the model's inputs for a month, computed by the same code serving uses."""


import dagster as dg
import pandas as pd

from fraud_assets.core.features import FEATURE_COLUMNS, build_features
from fraud_assets.params import Params

GROUP = "features"


def build_feature_assets(params: Params, partitions: dg.PartitionsDefinition) -> list[dg.AssetsDefinition]:
    """The feature assets for ``partitions``."""

    @dg.asset(group_name=GROUP, partitions_def=partitions, kinds={"pandas"})
    def transaction_features(validated_transactions: pd.DataFrame) -> dg.Output[pd.DataFrame]:
        """Per-transaction features for a month (the same code as online scoring)."""
        frame = build_features(validated_transactions, params.features)
        return dg.Output(frame, metadata={"rows": len(frame), "features": ", ".join(FEATURE_COLUMNS),
                                          "fraud_rate": float(frame["is_fraud"].mean()) if len(frame) else 0.0})

    return [transaction_features]
