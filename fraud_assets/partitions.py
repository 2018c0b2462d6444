"""The monthly partitioning shared by every asset, anchored at ``data.start_month``."""

from __future__ import annotations

import dagster as dg

from fraud_assets.params import Params


def monthly_partitions(params: Params) -> dg.MonthlyPartitionsDefinition:
    """Calendar months from the first simulated/imported month; a key is ``YYYY-MM``."""
    return dg.MonthlyPartitionsDefinition(start_date=params.data.start_month, fmt="%Y-%m")
