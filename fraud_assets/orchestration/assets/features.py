"""Features group: the model's inputs for a month (the code serving uses), and the online store serving reads."""


import dagster as dg
import pandas as pd

from fraud_assets.core.features import FEATURE_COLUMNS, batch_reference, history_months
from fraud_assets.core.months import shift_month
from fraud_assets.orchestration.partitions import months_before, partition_start, require_months
from fraud_assets.orchestration.resources import (
    BY_PARTITION,
    LAZY,
    ComputeResource,
    OnlineStoreResource,
    PartitionFrames,
)
from fraud_assets.params import Params
from fraud_assets.settings import redact_url
from fraud_assets.windows import DAY_S

GROUP = "features"


def build_feature_assets(params: Params, partitions: dg.PartitionsDefinition) -> list[dg.AssetsDefinition]:
    """The feature assets for ``partitions``."""
    k, first = history_months(params.features), partition_start(partitions)
    with_history = dg.AssetIn(  # the month and the months its windows reach back into (the lookback), each read
        "validated_transactions", partition_mapping=months_before(k),  # when looked up
        metadata={BY_PARTITION: True, LAZY: True})

    @dg.asset(group_name=GROUP, partitions_def=partitions, kinds={"pandas"}, ins={"months": with_history})
    def transaction_features(context: dg.AssetExecutionContext, months: PartitionFrames,
                             compute: ComputeResource) -> dg.Output[pd.DataFrame]:
        """Per-transaction, per-customer and per-terminal features of a month, with the months its windows reach
        back into as history (fails naming any of them that is not materialized), on the ``compute`` engine."""
        month = context.partition_key
        require_months(months, [shift_month(month, -i) for i in range(k, -1, -1)], first, f"features of {month}")
        # Each earlier month read once and cut to the columns the windows read (a month's ids and the simulator's
        # columns are most of its memory), so the step never holds two whole months beside the one it computes.
        history = [h for h in (batch_reference(months[m], None) for m in sorted(months) if m < month) if len(h)]
        past = pd.concat(history, ignore_index=True) if history else None
        del history
        engine = compute.get()
        frame = engine.features(months[month], params.features, history=past)
        return dg.Output(frame, metadata={"rows": len(frame), "features": len(FEATURE_COLUMNS),
                                          "history_months": ", ".join(m for m in sorted(months) if m < month),
                                          "history_rows": 0 if past is None else len(past),
                                          "engine": engine.name,
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
                                              "store_rows": target.count(),
                                              "store": redact_url(store.path)})

    return [transaction_features, online_store]
