"""Calendar-month helpers shared by every stage (months are ``YYYY-MM`` strings)."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

_MONTH = re.compile(r"^(\d{4})-(0[1-9]|1[0-2])$")


def check_month(month: str) -> str:
    """Return ``month`` if it is a ``YYYY-MM`` string, else raise ValueError naming it."""
    if not _MONTH.match(month):
        raise ValueError(f"month must look like YYYY-MM, got {month!r}")
    return month


def month_range(start: str, count: int) -> list[str]:
    """``count`` consecutive months starting at ``start``."""
    check_month(start)
    periods = pd.period_range(start=start, periods=count, freq="M")
    return [str(p) for p in periods]


def shift_month(month: str, offset: int) -> str:
    """The month ``offset`` months after (negative: before) ``month``."""
    return str(pd.Period(check_month(month), freq="M") + offset)


def month_bounds(month: str) -> tuple[pd.Timestamp, pd.Timestamp]:
    """UTC ``[start, end)`` of a calendar month."""
    start = pd.Timestamp(f"{check_month(month)}-01", tz="UTC")
    return start, start + pd.offsets.MonthBegin(1)


def snapshot_path(data_dir: str | Path, month: str) -> Path:
    """Where the snapshot of ``month`` lives."""
    return Path(data_dir) / f"{check_month(month)}.parquet"


def available_months(data_dir: str | Path) -> list[str]:
    """Months that have a snapshot file, sorted."""
    d = Path(data_dir)
    if not d.is_dir():
        return []
    return sorted(p.stem for p in d.glob("*.parquet") if _MONTH.match(p.stem))
