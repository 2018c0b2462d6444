"""Stage ``prepare``: validate every snapshot into valid rows, quarantined rows (with reasons) and counts."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from fraud_assets.core.months import available_months, snapshot_path
from fraud_assets.core.validate import read_snapshot, validate_transactions
from fraud_assets.params import DataParams
from fraud_assets.stages import PREPARED, QUARANTINE, stage_params, write_json


def prepare(data_dir: Path, out_dir: Path, quarantine_dir: Path, data: DataParams) -> dict[str, dict[str, float]]:
    """Validate each month in ``data_dir`` under the ``data`` params' bounds, write valid and quarantined rows;
    return counts per month."""
    months = available_months(data_dir)
    if not months:
        raise FileNotFoundError(f"no snapshots in {data_dir}: run `fraud simulate` or `dvc pull data.dvc`")
    out_dir.mkdir(parents=True, exist_ok=True)
    quarantine_dir.mkdir(parents=True, exist_ok=True)
    counts: dict[str, dict[str, float]] = {}
    seen = pd.Index([], dtype=object)  # ids of earlier months: a later month reusing one is quarantined
    for month in months:
        path = snapshot_path(data_dir, month)
        raw = read_snapshot(path)
        result = validate_transactions(raw, month, source=path.name, seen_ids=seen, data=data)
        seen = seen.append(pd.Index(raw["transaction_id"].dropna().astype(str).unique()))
        result.valid.to_parquet(out_dir / f"{month}.parquet", index=False)
        result.quarantined.to_parquet(quarantine_dir / f"{month}.parquet", index=False)
        c = result.counts
        counts[month] = {**c, "quarantine_share": c["rows_quarantined"] / max(c["rows_in"], 1)}
    return counts


def main() -> None:
    """Validate all snapshots; fail (as Dagster's blocking check does) when a month quarantines too much."""
    p = stage_params()
    counts = prepare(Path(p.data.dir), PREPARED, QUARANTINE, p.data)
    write_json(PREPARED / "counts.json", counts)
    over = {m: c["quarantine_share"] for m, c in counts.items() if c["quarantine_share"] > p.data.max_quarantine_share}
    if over:
        raise SystemExit(f"quarantined share above data.max_quarantine_share={p.data.max_quarantine_share}: {over}")
    for month, c in counts.items():
        print(f"{month}: {c['rows_valid']} valid, {c['rows_quarantined']} quarantined")


if __name__ == "__main__":
    main()
