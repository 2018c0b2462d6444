"""Ingestion group: the DVC-pinned snapshot of a month, validated, with its quarantine."""


import dagster as dg
import pandas as pd

from fraud_assets.core.months import snapshot_path
from fraud_assets.core.validate import earlier_month_ids, read_snapshot, validate_transactions
from fraud_assets.orchestration.partitions import known_beta
from fraud_assets.orchestration.resources import ProjectResource
from fraud_assets.params import Params

GROUP = "ingestion"


def build_ingestion_assets(params: Params, partitions: dg.PartitionsDefinition) -> list[dg.AssetsDefinition]:
    """The ingestion assets for ``partitions``."""
    max_share = params.data.max_quarantine_share

    @dg.asset(group_name=GROUP, partitions_def=partitions, kinds={"parquet", "dvc"})
    def raw_transactions(context: dg.AssetExecutionContext, project: ProjectResource
                         ) -> dg.Output[pd.DataFrame]:
        """One month of transactions as pinned by DVC; its data version is the snapshot's DVC hash."""
        month = context.partition_key
        path = snapshot_path(project.data_dir(), month)
        version = project.snapshot_version(month)
        frame = read_snapshot(path)
        with known_beta():
            return dg.Output(frame, data_version=dg.DataVersion(version),
                             metadata={"rows": len(frame), "dvc_md5": version, "path": str(path.name)})

    @dg.multi_asset(
        group_name=GROUP,
        partitions_def=partitions,
        outs={
            "validated_transactions": dg.AssetOut(description="Rows that pass the transaction schema."),
            "quarantined_transactions": dg.AssetOut(description="Rows that fail it, each with its reasons."),
        },
        check_specs=[
            dg.AssetCheckSpec("rows_accounted_for", asset="validated_transactions", blocking=True,
                              description="rows in = valid + quarantined"),
            dg.AssetCheckSpec("quarantine_share", asset="quarantined_transactions", blocking=True,
                              description="quarantined share of rows <= data.max_quarantine_share"),
        ],
    )
    def validate_month(context: dg.AssetExecutionContext, project: ProjectResource, raw_transactions: pd.DataFrame):
        """Validate a month with pandera; invalid rows (and ids used by earlier months) are quarantined with reasons."""
        month = context.partition_key
        seen = earlier_month_ids(project.data_dir(), month)
        result = validate_transactions(raw_transactions, month, source=f"{month}.parquet", seen_ids=seen,
                                       data=params.data)
        counts = result.counts
        share = counts["rows_quarantined"] / max(counts["rows_in"], 1)
        reasons = result.quarantined["quarantine_reason"].value_counts().head(10).to_dict()
        yield dg.Output(result.valid, "validated_transactions", metadata=counts)
        yield dg.Output(result.quarantined, "quarantined_transactions",
                        metadata={**counts, "top_reasons": dg.MetadataValue.json(reasons)})
        yield dg.AssetCheckResult(
            check_name="rows_accounted_for", asset_key="validated_transactions",
            passed=counts["rows_in"] == len(raw_transactions), metadata={**counts, "raw_rows": len(raw_transactions)})
        yield dg.AssetCheckResult(
            check_name="quarantine_share", asset_key="quarantined_transactions",
            passed=share <= max_share, metadata={"share": share, "max_share": max_share})

    return [raw_transactions, validate_month]
