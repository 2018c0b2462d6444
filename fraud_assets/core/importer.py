"""Import a bank's own export (CSV or Parquet) into canonical monthly snapshots.

The export's columns are mapped onto the canonical schema (``src=dst``; a canonical column that is
already named right needs no mapping), naive timestamps are read in ``timezone`` and every timestamp is
normalized to UTC, ids become strings, and the rows are split by UTC calendar month. Rows are sorted and
written the same way every time, so importing the same file twice gives the same bytes (the same DVC
hashes). Values that cannot be read (an amount that is not a number) become missing and are quarantined
by validation downstream; only a timestamp that cannot be read fails the import, since its row has no month.
Given a token key, the sensitive id columns are replaced by their keyed tokens (``core.tokens``) before anything
is sorted or written, so no snapshot, DVC copy or later stage ever holds them in clear.
``label_available_at`` (when the label became known) is read like ``tx_datetime`` when the export has it (a value
that cannot be read is kept missing, for validation to quarantine); without it, given the feature params, every row
gets ``tx_datetime + features.label_delay_days`` (``schemas.default_label_available_at``).

An export can also arrive in parts (a week or a day of a month): ``append_to_snapshot`` merges a part into a
month's snapshot, skipping rows already there and refusing an id that is already used by another row.
"""

from __future__ import annotations

import tempfile
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import pandas as pd

from fraud_assets.core.lineage import file_md5
from fraud_assets.core.months import snapshot_path
from fraud_assets.core.tokens import tokenize_column
from fraud_assets.core.validate import SnapshotError
from fraud_assets.params import FeatureParams
from fraud_assets.schemas import LABEL_AVAILABLE_AT, REQUIRED_COLUMNS, default_label_available_at

ID_COLUMNS = ("transaction_id", "customer_id", "terminal_id")
SORT_COLUMNS = ["tx_datetime", "transaction_id", "customer_id", "terminal_id", "amount", "is_fraud"]
OPTIONAL_COLUMNS = (LABEL_AVAILABLE_AT,)
_CONFLICTS_NAMED = 5


@dataclass(frozen=True)
class MonthWrite:
    """What importing did to one month's snapshot."""

    month: str
    path: Path
    rows: int
    fraud_rate: float
    status: str  # "new", "unchanged" or "replaced"


@dataclass(frozen=True)
class Appended:
    """A month's snapshot after appending a part: the merged rows and what happened to the part's rows."""

    frame: pd.DataFrame
    added: pd.DataFrame  # the part's rows that were appended
    already_present: int  # identical rows the snapshot already had: skipped

    @property
    def appended(self) -> int:
        return len(self.added)


class IdConflictError(SnapshotError):
    """Rows reuse transaction ids that a snapshot already holds with other values."""

    def __init__(self, ids: Sequence[str], source: str = "input") -> None:
        self.ids = tuple(ids)
        shown = ", ".join(self.ids[:_CONFLICTS_NAMED]) + (", ..." if len(self.ids) > _CONFLICTS_NAMED else "")
        super().__init__(f"{source}: {len(self.ids)} row(s) reuse a transaction_id that a snapshot already holds "
                         f"with other values: {shown}; nothing was written")


def parse_column_map(items: Iterable[str]) -> dict[str, str]:
    """``["src=dst", ...]`` -> ``{src: dst}``; every ``dst`` must be a canonical column, named once."""
    mapping: dict[str, str] = {}
    for item in items:
        src, sep, dst = item.partition("=")
        src, dst = src.strip(), dst.strip()
        if not sep or not src or not dst:
            raise ValueError(f"--map expects SRC=DST, got {item!r}")
        if dst not in (*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS):
            raise ValueError(f"--map {item}: {dst!r} is not a canonical column "
                             f"({', '.join([*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS])})")
        if dst in mapping.values():
            raise ValueError(f"--map {item}: {dst!r} is mapped twice")
        mapping[src] = dst
    return mapping


def read_export(path: str | Path) -> pd.DataFrame:
    """Read a CSV or Parquet export, failing with the file's name if it cannot be read."""
    p = Path(path)
    if not p.exists():
        raise SnapshotError(f"file not found: {p}")
    suffix = p.suffix.lower()
    if suffix not in {".csv", ".parquet", ".pq"}:
        raise SnapshotError(f"{p.name}: unsupported file type {suffix or '(none)'}; expected .csv or .parquet")
    try:
        return pd.read_csv(p, dtype=str, keep_default_na=False, na_values=[""]) if suffix == ".csv" \
            else pd.read_parquet(p)
    except Exception as exc:  # pandas/pyarrow raise many types; all mean "unreadable"
        raise SnapshotError(f"cannot read {p}: {exc}") from exc


def to_canonical(raw: pd.DataFrame, column_map: Mapping[str, str], timezone: str = "UTC",
                 source: str = "input", sensitive_columns: Sequence[str] = (), token_key: bytes | None = None,
                 features: FeatureParams | None = None) -> pd.DataFrame:
    """Rename, type and sort ``raw`` into the canonical columns (others are dropped), timestamps in UTC; with
    ``token_key``, the ``sensitive_columns`` (id columns) hold keyed tokens instead of the ids.

    ``label_available_at`` is kept when ``raw`` has it (read like ``tx_datetime``; a value that cannot be read
    becomes missing); otherwise, given ``features``, it is ``tx_datetime`` plus ``features.label_delay_days``.
    """
    unknown = [c for c in sensitive_columns if c not in ID_COLUMNS]
    if unknown:
        raise ValueError(f"sensitive column(s) {', '.join(unknown)} are not id columns ({', '.join(ID_COLUMNS)})")
    try:
        tz = ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown timezone {timezone!r}") from exc
    for src, dst in column_map.items():
        if src not in raw.columns:
            raise SnapshotError(f"{source}: column {src!r} (mapped to {dst}) is not in the file; "
                                f"it has {', '.join(map(str, raw.columns))}")
    frame = raw.rename(columns=dict(column_map))
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise SnapshotError(f"{source}: missing required column(s) {', '.join(missing)} "
                            f"(map one with --map SRC={missing[0]})")
    out = pd.DataFrame({c: frame[c] for c in REQUIRED_COLUMNS})
    for col in ID_COLUMNS:
        out[col] = _as_str(out[col])
        if token_key is not None and col in sensitive_columns:
            out[col] = tokenize_column(out[col], token_key)
    out["tx_datetime"] = _to_utc(out["tx_datetime"], tz)
    _fail_unreadable(out["tx_datetime"], frame["tx_datetime"], source)
    out["amount"] = pd.to_numeric(out["amount"], errors="coerce").astype("float64")
    out["is_fraud"] = _label(out["is_fraud"])
    if LABEL_AVAILABLE_AT in frame.columns:
        out[LABEL_AVAILABLE_AT] = _to_utc(frame[LABEL_AVAILABLE_AT], tz)
    elif features is not None:
        out = _with_default_arrival(out, features)
    return out.sort_values(SORT_COLUMNS, kind="mergesort", na_position="last").reset_index(drop=True)


def append_to_snapshot(existing: pd.DataFrame | None, new: pd.DataFrame, other_ids: Collection[str] = (),
                       features: FeatureParams | None = None, source: str = "input") -> Appended:
    """Merge the canonical rows ``new`` (one month of a part) into the month's snapshot ``existing``.

    A row identical to one the snapshot has is skipped (counted as already present); the others are appended
    and the whole is sorted by ``tx_datetime`` (stable: a tie keeps the snapshot's row first), so appending the
    same parts in the same order gives the same rows. A snapshot without ``label_available_at`` gets the default
    arrival times (``features``) when ``new`` has the column. Invalid rows are kept for validation to quarantine, as in
    a whole-month import.

    Args:
        existing: the month's snapshot, or None when the month has none yet.
        new: the part's rows of this month, as ``to_canonical`` returns them.
        other_ids: transaction ids used by the other months' snapshots.
        features: the ``features`` params (the label delay).
        source: a name for error messages (the snapshot's file).

    Raises:
        IdConflictError: a row of ``new`` reuses an id of ``existing`` or ``other_ids`` with other values.
        SnapshotError: the snapshot's columns differ from those of ``new``, or its values do not fit their types.
    """
    columns = list(new.columns)
    old = new.iloc[0:0] if existing is None else _like(existing, new, features, source)
    present = new.merge(old.drop_duplicates(), how="left", on=columns, indicator=True)["_merge"].eq("both")
    fresh = new.loc[~present.to_numpy()]
    ids = fresh["transaction_id"]
    used = pd.Index(old["transaction_id"].dropna()).append(pd.Index(other_ids, dtype=object))
    taken = ids.notna() & ids.isin(used)
    if taken.any():
        raise IdConflictError(list(dict.fromkeys(ids[taken])), source)
    merged = fresh if old.empty else pd.concat([old, fresh], ignore_index=True) if len(fresh) else old
    merged = merged.sort_values("tx_datetime", kind="mergesort").reset_index(drop=True)
    return Appended(frame=merged, added=fresh.reset_index(drop=True), already_present=int(present.sum()))


def _like(existing: pd.DataFrame, new: pd.DataFrame, features: FeatureParams | None, source: str) -> pd.DataFrame:
    """``existing`` with the columns and dtypes of ``new``, failing when their columns differ."""
    if LABEL_AVAILABLE_AT in new.columns and LABEL_AVAILABLE_AT not in existing.columns and features is not None:
        existing = _with_default_arrival(existing, features)
    extra = [c for c in existing.columns if c not in new.columns]
    missing = [c for c in new.columns if c not in existing.columns]
    if extra or missing:
        raise SnapshotError(f"{source}: the snapshot's columns ({', '.join(map(str, existing.columns))}) differ "
                            f"from the appended rows' ({', '.join(map(str, new.columns))}); "
                            "a part can only be appended to a snapshot of the same columns")
    try:
        return existing[list(new.columns)].astype(new.dtypes.to_dict())
    except (TypeError, ValueError) as exc:
        raise SnapshotError(f"{source}: the snapshot's values do not fit the canonical types ({exc})") from exc


def _with_default_arrival(frame: pd.DataFrame, features: FeatureParams) -> pd.DataFrame:
    """A copy of ``frame`` whose ``label_available_at`` is the default arrival time of each row's label."""
    return frame.assign(**{LABEL_AVAILABLE_AT: default_label_available_at(frame["tx_datetime"], features)})


def split_months(frame: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """``{YYYY-MM: rows}`` by the UTC calendar month of ``tx_datetime``."""
    month = frame["tx_datetime"].dt.strftime("%Y-%m")
    return {m: part.reset_index(drop=True) for m, part in frame.groupby(month, sort=True)}


def write_months(months: Mapping[str, pd.DataFrame], data_dir: str | Path, replace: bool = False
                 ) -> list[MonthWrite]:
    """Write each month's snapshot; an existing month is left alone when its bytes would not change.

    Raises:
        FileExistsError: a month already has a snapshot with other bytes and ``replace`` is False
            (nothing is written then).
    """
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    plans = []
    with tempfile.TemporaryDirectory(dir=data_dir.parent) as tmp:
        for month, frame in months.items():
            staged = Path(tmp) / f"{month}.parquet"
            frame.to_parquet(staged, index=False)
            target = snapshot_path(data_dir, month)
            status = "new" if not target.exists() else (
                "unchanged" if file_md5(target) == file_md5(staged) else "replaced")
            plans.append((month, frame, staged, target, status))
        clashes = [m for m, _, _, _, status in plans if status == "replaced"]
        if clashes and not replace:
            raise FileExistsError(f"snapshot(s) {', '.join(clashes)} already exist in {data_dir} with other data; "
                                  "pass --replace to overwrite them")
        for _, _, staged, target, status in plans:
            if status != "unchanged":
                staged.replace(target)
    return [MonthWrite(month, target, len(frame), float(frame["is_fraud"].astype("float64").mean()), status)
            for month, frame, _, target, status in plans]


def import_file(path: str | Path, data_dir: str | Path, column_map: Mapping[str, str], timezone: str = "UTC",
                replace: bool = False, sensitive_columns: Sequence[str] = (), token_key: bytes | None = None,
                features: FeatureParams | None = None) -> list[MonthWrite]:
    """Read an export, map it to the canonical schema (``sensitive_columns`` tokenized under ``token_key`` when one
    is given, the default ``label_available_at`` from ``features`` when the export has none) and write it as monthly
    snapshots in ``data_dir``."""
    p = Path(path)
    frame = to_canonical(read_export(p), column_map, timezone, source=p.name, sensitive_columns=sensitive_columns,
                         token_key=token_key, features=features)
    return write_months(split_months(frame), data_dir, replace=replace)


def _as_str(s: pd.Series) -> pd.Series:
    """Ids as strings; a whole-number float column (integers with gaps) loses its ``.0``."""
    if pd.api.types.is_float_dtype(s) and (s.dropna() % 1 == 0).all():
        s = s.astype("Int64")
    return s.astype(object).map(lambda v: None if pd.isna(v) else str(v)).astype(object)


def _label(s: pd.Series) -> pd.Series:
    """0/1 labels as nullable integers; true/false and yes/no words too; anything else becomes missing."""
    words = {"true": 1, "false": 0, "yes": 1, "no": 0}
    if s.dtype == bool:
        s = s.astype(int)
    s = s.map(lambda v: words.get(v.strip().lower(), v) if isinstance(v, str) else v)
    num = pd.to_numeric(s, errors="coerce").astype("float64")
    return num.where(num % 1 == 0).astype("Int64")


def _to_utc(s: pd.Series, tz: ZoneInfo) -> pd.Series:
    """Timestamps in UTC: aware values are converted, naive ones are read as ``tz`` wall-clock time; a value that
    cannot be read becomes missing."""
    if isinstance(s.dtype, pd.DatetimeTZDtype):
        return s.dt.tz_convert("UTC").astype("datetime64[ns, UTC]")
    if pd.api.types.is_datetime64_dtype(s):
        return _localize(s, tz)
    text = s.astype("string").str.strip()
    aware = text.str.contains(r"(?:Z|[+-]\d{2}:?\d{2})$", regex=True, na=False)
    parsed = pd.Series(pd.NaT, index=s.index, dtype="datetime64[ns, UTC]")
    if aware.any():
        parsed[aware] = pd.to_datetime(text[aware], utc=True, errors="coerce", format="ISO8601")
    naive = pd.to_datetime(text[~aware], errors="coerce", format="ISO8601")
    if len(naive):
        parsed[~aware] = _localize(naive, tz)
    return parsed


def _localize(naive: pd.Series, tz: ZoneInfo) -> pd.Series:
    """Naive wall-clock times in ``tz`` -> UTC (DST gaps shift forward; repeated hours read as standard time)."""
    return (naive.dt.tz_localize(tz, ambiguous=False, nonexistent="shift_forward")
            .dt.tz_convert("UTC").astype("datetime64[ns, UTC]"))


def _fail_unreadable(parsed: pd.Series, raw: pd.Series, source: str) -> None:
    bad = parsed.isna()
    if bad.any():
        examples = ", ".join(repr(v) for v in raw[bad].head(3).tolist())
        raise SnapshotError(f"{source}: column tx_datetime: {int(bad.sum())} value(s) cannot be read as a "
                            f"timestamp (e.g. {examples}); a row without a time has no month to go to")
