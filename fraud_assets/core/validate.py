"""Validation with quarantine: every input row ends up either valid or quarantined with a reason.

A snapshot may carry ``label_available_at`` (when each label arrived); a row whose label is dated before its
transaction, or missing when the column is there, is quarantined like any other invalid row.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pandera.errors as pa_errors

from fraud_assets.core.months import available_months, month_bounds, snapshot_path
from fraud_assets.params import DataParams
from fraud_assets.schemas import LABEL_AFTER_TX_CHECK, LABEL_AVAILABLE_AT, REQUIRED_COLUMNS, transaction_schema

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
    if check == LABEL_AFTER_TX_CHECK:  # a check of the whole row, reported once per column
        return f"{LABEL_AVAILABLE_AT}: before tx_datetime"
    column = row["column"] if isinstance(row["column"], str) else "row"
    if check.startswith("field_uniqueness"):
        return f"{column}: duplicate value"
    if check.startswith("coerce_dtype"):
        return f"{column}: cannot be read as {check.removeprefix('coerce_dtype(').rstrip(')')}"
    if check == "not_nullable":
        return f"{column}: missing value"
    return f"{column}: failed {check}"


def validate_transactions(df: pd.DataFrame, month: str | None = None, source: str = "input",
                          seen_ids: Collection[str] | pd.Index | None = None, *, data: DataParams
                          ) -> ValidationResult:
    """Split ``df`` into schema-valid rows and quarantined rows, each with the reasons it failed.

    Args:
        df: transactions in the canonical schema (extra columns are kept).
        data: the ``data`` params; a row above ``max_amount`` or dated before ``min_tx_date`` is quarantined.
        month: when given, timestamps must fall inside this calendar month.
        source: a name for error messages (usually the file).
        seen_ids: transaction ids already used by other (earlier) months; rows reusing one are quarantined.

    Raises:
        SnapshotError: a required column is missing; no row can be judged without it.
    """
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise SnapshotError(f"{source}: missing required column(s) {', '.join(missing)}")
    bounds = month_bounds(month) if month else (None, None)
    schema = transaction_schema(data.max_amount, data.min_tx_date, *bounds)
    frame = df.reset_index(drop=True)
    unreadable = _unreadable(frame)  # judged before pandera, whose failed coercion would fail the whole column
    clashes = pd.concat([unreadable, _id_clashes(frame, seen_ids)], ignore_index=True)
    cases = None
    try:
        valid = schema.validate(frame.loc[~frame.index.isin(unreadable["index"])], lazy=True)
    except pa_errors.SchemaErrors as exc:
        cases = exc.failure_cases
    if cases is None and not len(clashes):
        return ValidationResult(valid=valid.reset_index(drop=True), quarantined=_empty_quarantine(frame))
    reasons = clashes
    if cases is not None:
        row_cases = cases[cases["index"].notna()]
        frame_cases = cases[cases["index"].isna()]
        if len(frame_cases):
            msgs = "; ".join(_describe(r) for _, r in frame_cases.iterrows())
            raise SnapshotError(f"{source}: {msgs}")
        schema_reasons = row_cases.assign(reason=row_cases.apply(_describe, axis=1),
                                          index=row_cases["index"].astype(int))[["index", "reason"]]
        reasons = pd.concat([schema_reasons, clashes], ignore_index=True)
    reasons = reasons.groupby("index")["reason"].agg(lambda r: "; ".join(sorted(set(r))))
    bad = frame.index.isin(reasons.index)
    quarantined = frame.loc[bad].copy()
    quarantined[REASON_COLUMN] = reasons.reindex(quarantined.index).to_numpy()
    valid = schema.validate(frame.loc[~bad], lazy=False)
    return ValidationResult(valid=valid.reset_index(drop=True), quarantined=quarantined.reset_index(drop=True))


def _as_timestamp(column: pd.Series) -> pd.Series:
    return pd.to_datetime(column, utc=True, errors="coerce", format="ISO8601")


def _unreadable(frame: pd.DataFrame) -> pd.DataFrame:
    """``(index, reason)`` of rows whose amount, label or timestamps cannot be read as such at all."""
    parts = []
    for col, parse, what in (
        ("amount", lambda c: pd.to_numeric(c, errors="coerce"), "a number"),
        ("is_fraud", lambda c: pd.to_numeric(c, errors="coerce"), "a number"),
        ("tx_datetime", _as_timestamp, "a timestamp"),
        (LABEL_AVAILABLE_AT, _as_timestamp, "a timestamp"),
    ):
        if col not in frame.columns:  # only the optional label arrival time may be absent (checked before)
            continue
        raw = frame[col]
        if pd.api.types.is_numeric_dtype(raw) or pd.api.types.is_datetime64_any_dtype(raw):
            continue
        bad = raw.notna() & parse(raw).isna()
        parts.append(pd.DataFrame({"index": frame.index[bad],
                                   "reason": [f"{col}: cannot be read as {what} ({v!r})" for v in raw[bad]]}))
    label = pd.to_numeric(frame["is_fraud"], errors="coerce")
    off = label.notna() & ~label.isin([0, 1])  # caught here, before an int cast could turn 0.5 into 0
    parts.append(pd.DataFrame({"index": frame.index[off],
                               "reason": [f"is_fraud: {v!r} is not 0 or 1" for v in frame["is_fraud"][off]]}))
    return pd.concat(parts, ignore_index=True).astype({"index": int})


def _id_clashes(frame: pd.DataFrame, seen_ids: Collection[str] | pd.Index | None) -> pd.DataFrame:
    """``(index, reason)`` of rows whose ``transaction_id`` another month already uses."""
    if seen_ids is None or not len(seen_ids):
        return pd.DataFrame({"index": pd.Series(dtype=int), "reason": pd.Series(dtype=str)})
    ids = frame["transaction_id"]
    hit = ids.notna() & ids.astype(str).isin(pd.Index(seen_ids).astype(str))
    return pd.DataFrame({"index": frame.index[hit],
                         "reason": [f"transaction_id: {i} already used in another month" for i in ids[hit]]})


def earlier_month_ids(data_dir: str | Path, month: str) -> pd.Index:
    """The transaction ids of every snapshot in ``data_dir`` dated before ``month`` (first month wins)."""
    parts = []
    for other in available_months(data_dir):
        if other < month:
            path = snapshot_path(data_dir, other)
            parts.append(_read_ids(path))
    return pd.Index(pd.concat(parts, ignore_index=True).unique() if parts else [], dtype=object)


def _read_ids(path: Path) -> pd.Series:
    try:
        return pd.read_parquet(path, columns=["transaction_id"])["transaction_id"].dropna().astype(str)
    except (KeyError, ValueError) as exc:
        raise SnapshotError(f"{path.name}: missing required column(s) transaction_id ({exc})") from exc
    except Exception as exc:  # pyarrow raises many types; all mean "unreadable"
        raise SnapshotError(f"cannot read snapshot {path}: {exc}") from exc


def _empty_quarantine(frame: pd.DataFrame) -> pd.DataFrame:
    empty = frame.iloc[0:0].copy()
    empty[REASON_COLUMN] = pd.Series(dtype=str)
    return empty
