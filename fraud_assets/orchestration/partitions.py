"""The monthly partitioning shared by every asset, and the windows of earlier months an asset reads."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import dagster as dg

from fraud_assets.params import Params


def monthly_partitions(params: Params) -> dg.MonthlyPartitionsDefinition:
    """Calendar months from the first simulated/imported month; a key is ``YYYY-MM``."""
    return dg.MonthlyPartitionsDefinition(start_date=params.data.start_month, fmt="%Y-%m")


@contextmanager
def known_beta() -> Iterator[None]:
    """Dagster beta features used on purpose (partition windows reaching before the first month, asset data
    versions): their warning says nothing a reader of the console can act on."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.BetaWarning)
        yield


def months_before(months: int) -> dg.TimeWindowPartitionMapping:
    """The partition itself and up to ``months`` months before it (fewer at the start of the data)."""
    with known_beta():
        return dg.TimeWindowPartitionMapping(start_offset=-months, end_offset=0,
                                             allow_nonexistent_upstream_partitions=True)
