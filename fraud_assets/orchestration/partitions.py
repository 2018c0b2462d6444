"""The monthly partitioning shared by every asset, and the windows of earlier months an asset reads.

Partitions follow the data: they start at the first month with a snapshot in ``data.dir`` (simulated or imported,
any year; ``data.start_month``, the first month the simulator writes, only while there is no data yet) and run to
the current month. A team importing an earlier history reloads the code location (``dagster dev`` does on restart)
to see the new first month.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import dagster as dg

from fraud_assets.core.months import available_months
from fraud_assets.params import Params

# A retrain run with this tag (an ISO 8601 UTC time) trains on the rolling window as of that time
# (core.split.split_rolling) instead of the months before its partition; its partition is the month of that time.
AS_OF_TAG = "fraud/as_of"


def first_month(data_dir: Path, params: Params) -> str:
    """The first month with a snapshot in ``data_dir``, else the first month the simulator would write."""
    months = available_months(data_dir)
    return months[0] if months else params.data.start_month


def monthly_partitions(first: str) -> dg.MonthlyPartitionsDefinition:
    """Calendar months from ``first`` up to and including the current one; a key is ``YYYY-MM``."""
    return dg.MonthlyPartitionsDefinition(start_date=first, fmt="%Y-%m", end_offset=1)


def partition_start(partitions: dg.PartitionsDefinition) -> str:
    """The first month of a monthly partitioning (the cold start: no earlier data)."""
    if not isinstance(partitions, dg.TimeWindowPartitionsDefinition):
        raise TypeError(f"expected monthly partitions, got {type(partitions).__name__}")
    return partitions.start.strftime("%Y-%m")


def require_months(loaded: Mapping[str, object], wanted: list[str], first: str, what: str) -> None:
    """Fail naming the months of ``wanted`` (from ``first`` on) that are not among the ``loaded`` partitions.

    Dagster skips upstream partitions that were never materialized; features or a model computed without them
    would be silently wrong, so the run stops here and says what to materialize first.
    """
    missing = [m for m in wanted if m >= first and m not in loaded]
    if missing:
        raise dg.Failure(f"{what} needs {', '.join(missing)}, not materialized yet: run those months first "
                         "(runs of consecutive months are queued one at a time for this reason)")


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
