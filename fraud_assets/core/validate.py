"""Validation with quarantine: every input row ends up either valid or quarantined with a reason."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pandera.errors as pa_errors

from fraud_assets.core.months import month_bounds
from fraud_assets.schemas import REQUIRED_COLUMNS, transaction_schema

REASON_COLUMN = "quarantine_reason"


class SnapshotError(ValueError):
    """A snapshot that cannot be validated row by row (unreadable file, missing column)."""


@dataclass(frozen=True)
class ValidationResult:
    valid: pd.DataFrame
    quarantined: pd.DataFrame  # the offending rows as they came in, plus ``quarantine_reason``

    @property
    def counts(self) -> dict[str, int]:
        n_valid, n_bad = len(self.valid), len(self.quarantined)
        return {"rows_in": n_valid + n_bad, "rows_valid": n_valid, "rows_quarantined": n_bad}


def read_snapshot(path: str | Path) -> pd.DataFrame:
    """Read one monthly Parquet snapshot, failing with the file's name if it cannot be read."""
    p = Path(path)
    if not p.exists():
        raise SnapshotError(f"snapshot not found: {p}")
    try:
        return pd.read_parquet(p)
    except Exception as exc:  # pyarrow raises many types; all mean "unreadable"
        raise SnapshotError(f"cannot read snapshot {p}: {exc}") from exc


def _describe(row: pd.Series) -> str:
    check = str(row["check"])
    column = row["column"] if isinstance(row["column"], str) else "row"
    if check.startswith("field_uniqueness"):
        return f"{column}: duplicate value"
    if check.startswith("coerce_dtype"):
        return f"{column}: cannot be read as {check.removeprefix('coerce_dtype(').rstrip(')')}"
    if check == "not_nullable":
        return f"{column}: missing value"
    return f"{column}: failed {check}"


def validate_transactions(df: pd.DataFrame, month: str | None = None, source: str = "input"
                          ) -> ValidationResult:
    """Split ``df`` into schema-valid rows and quarantined rows, each with the reasons it failed.

    Args:
        df: transactions in the canonical schema (extra columns are kept).
        month: when given, timestamps must fall inside this calendar month.
        source: a name for error messages (usually the file).

    Raises:
        SnapshotError: a required column is missing; no row can be judged without it.
    """
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise SnapshotError(f"{source}: missing required column(s) {', '.join(missing)}")
    bounds = month_bounds(month) if month else (None, None)
    schema = transaction_schema(*bounds)
    frame = df.reset_index(drop=True)
    try:
        valid = schema.validate(frame, lazy=True)
        return ValidationResult(valid=valid, quarantined=_empty_quarantine(frame))
    except pa_errors.SchemaErrors as exc:
        cases = exc.failure_cases
    row_cases = cases[cases["index"].notna()]
    frame_cases = cases[cases["index"].isna()]
    if len(frame_cases):
        msgs = "; ".join(_describe(r) for _, r in frame_cases.iterrows())
        raise SnapshotError(f"{source}: {msgs}")
    reasons = (
        row_cases.assign(reason=row_cases.apply(_describe, axis=1), index=row_cases["index"].astype(int))
        .groupby("index")["reason"]
        .agg(lambda r: "; ".join(sorted(set(r))))
    )
    bad = frame.index.isin(reasons.index)
    quarantined = frame.loc[bad].copy()
    quarantined[REASON_COLUMN] = reasons.reindex(quarantined.index).to_numpy()
    valid = schema.validate(frame.loc[~bad], lazy=False)
    return ValidationResult(valid=valid.reset_index(drop=True), quarantined=quarantined.reset_index(drop=True))


def _empty_quarantine(frame: pd.DataFrame) -> pd.DataFrame:
    empty = frame.iloc[0:0].copy()
    empty[REASON_COLUMN] = pd.Series(dtype=str)
    return empty
