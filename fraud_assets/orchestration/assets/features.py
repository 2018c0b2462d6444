"""Features group: the model's inputs for a month (the code serving uses), and the online store serving reads."""


import dagster as dg
import pandas as pd

from fraud_assets.core.features import FEATURE_COLUMNS, build_features
from fraud_assets.orchestration.partitions import months_before
from fraud_assets.orchestration.resources import BY_PARTITION, OnlineStoreResource
from fraud_assets.params import Params
from fraud_assets.windows import DAY_S

GROUP = "features"


def build_feature_assets(params: Params, partitions: dg.PartitionsDefinition) -> list[dg.AssetsDefinition]:
    """The feature assets for ``partitions``."""
    with_previous = dg.AssetIn(  # the month and the one before it: windows reach back across the boundary
        "validated_transactions",
        partition_mapping=months_before(1),
        metadata={BY_PARTITION: True},
    )

    @dg.asset(group_name=GROUP, partitions_def=partitions, kinds={"pandas"}, ins={"months": with_previous})
    def transaction_features(context: dg.AssetExecutionContext, months: dict[str, pd.DataFrame]
                             ) -> dg.Output[pd.DataFrame]:
        """Per-transaction, per-customer and per-terminal features of a month, the month before as history."""
        month = context.partition_key
        history = [frame for m, frame in sorted(months.items()) if m < month]
        frame = build_features(months[month], params.features, history=history[-1] if history else None)
        return dg.Output(frame, metadata={"rows": len(frame), "features": len(FEATURE_COLUMNS),
                                          "history_rows": len(history[-1]) if history else 0,
                                          "fraud_rate": float(frame["is_fraud"].mean()) if len(frame) else 0.0})

    @dg.asset(group_name=GROUP, partitions_def=partitions, kinds={"sqlite"})
    def online_store(context: dg.AssetExecutionContext, validated_transactions: pd.DataFrame,
                     store: OnlineStoreResource) -> dg.MaterializeResult:
        """The month's validated transactions, with labels, loaded into the online store serving reads; rows
        more than ``online_store.retention_days`` older than the month's last transaction are pruned (relative to
        the month, so a backfill of an old month prunes less, never what later months read)."""
        target = store.get()
        loaded = target.seed(validated_transactions)
        pruned = 0
        if len(validated_transactions):
            last = pd.Timestamp(validated_transactions["tx_datetime"].max())
            pruned = target.prune(int(last.timestamp()) - params.online_store.retention_days * DAY_S)
        return dg.MaterializeResult(metadata={"rows_loaded": loaded, "rows_pruned": pruned,
                                              "store_rows": target.count(), "path": store.path})

    return [transaction_features, online_store]
