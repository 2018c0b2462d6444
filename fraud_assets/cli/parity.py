"""``fraud check-parity``: replay a month through the online feature path and compare with the training features.

The replay posts every label to its scratch store once the label has arrived (``label_available_at``), so the
audit covers what the features read by arrival time as well as the transactions.

Exit codes: 0 when every sampled row agrees to 1e-9 at the stored precision, 1 when a row differs, 2 when the
audit cannot run (a month's assets are not materialized, or the stored features lack a sampled transaction).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from fraud_assets import settings
from fraud_assets.params import load_params

if TYPE_CHECKING:
    import pandas as pd

FEATURES_ASSET = "transaction_features"
VALIDATED_ASSET = "validated_transactions"
_DEFAULT_ROWS = 2000


def asset_path(asset: str, month: str) -> Path:
    """Where the IO manager keeps ``asset``'s partition ``month`` (``<state>/assets/<asset>/<month>.parquet``)."""
    return settings.state_dir() / "assets" / asset / f"{month}.parquet"


def _unavailable(message: str) -> typer.Exit:
    typer.secho(message, fg=typer.colors.RED, err=True)
    return typer.Exit(2)


def _read_months(asset: str, months: list[str]) -> list[pd.DataFrame]:
    """The stored partitions of ``asset``; exits 2 naming the months not materialized."""
    import pandas as pd

    missing = [m for m in months if not asset_path(asset, m).exists()]
    if missing:
        raise _unavailable(f"{asset} not materialized for {', '.join(missing)}: run `fraud pipeline --month "
                           f"{missing[0]}` (one --month per missing month) first")
    return [pd.read_parquet(asset_path(asset, m)) for m in months]


def check_parity(
    month: Annotated[str, typer.Option(help="Month to audit, YYYY-MM (its features must be materialized)")],
    rows: Annotated[int, typer.Option(help="Transactions from the month's start, and as many at random")]
    = _DEFAULT_ROWS,
    seed: Annotated[int, typer.Option(help="Seed of the random sample")] = 0,
) -> None:
    """Replay a month through the online feature path (a scratch store) and compare with its training features."""
    import pandas as pd

    from fraud_assets.adapters.parity_replay import replay_online, scratch_store
    from fraud_assets.core.features import FEATURE_COLUMNS
    from fraud_assets.core.months import check_month
    from fraud_assets.core.parity import TOLERANCE, compare_features, months_needed, sample_rows
    from fraud_assets.orchestration.partitions import first_month
    from fraud_assets.windows import lookback_days

    settings.disable_telemetry()
    p = load_params(settings.project_root() / "params.yaml")
    try:
        check_month(month)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    days = lookback_days(p.features)
    earlier = months_needed(month, days, first_month(settings.project_root() / p.data.dir, p))  # cold start
    batch, validated = _read_months(FEATURES_ASSET, [month])[0], _read_months(VALIDATED_ASSET, [month])[0]
    history_parts = [f for f in _read_months(VALIDATED_ASSET, earlier) if len(f)]
    history = pd.concat(history_parts, ignore_index=True) if history_parts else validated.iloc[0:0]
    sample = sample_rows(validated, rows, rows, seed)
    started = time.perf_counter()
    with scratch_store(settings.online_store_location()) as (store, where):
        online = replay_online(store, history, validated, sample, p.features)
    took = time.perf_counter() - started
    try:
        report = compare_features(batch, online, FEATURE_COLUMNS, TOLERANCE)
    except KeyError as exc:
        raise _unavailable(f"{FEATURES_ASSET} {month} does not match {VALIDATED_ASSET}: {exc.args[0]}") from exc
    typer.echo(f"parity of {month}: {FEATURES_ASSET} vs online features from {where}")
    typer.echo(f"  history {', '.join(earlier) or 'none'} ({len(history)} rows read, lookback {days} days); sample: "
               f"first {min(rows, len(validated))} by time + {len(sample) - min(rows, len(validated))} at random "
               f"(seed {seed}) of {len(validated)}")
    typer.echo(f"  labels posted as they arrive (label_available_at; {p.features.label_delay_days} days after the "
               "transaction where a snapshot has none)")
    typer.echo(f"  replayed {len(online)} rows in {took:.1f} s ({len(online) / max(took, 1e-9):.0f} rows/s)")
    typer.echo(f"rows compared   {report.rows_compared}")
    typer.echo(f"rows differing  {report.rows_differing} (by more than {report.tolerance:g})")
    for line in _column_table(report.max_abs_diff, report.rows_by_column):
        typer.echo(line)
    if report.worst:
        typer.echo(f"{'worst rows':22} {'tx_datetime':25} {'column':26} {'training':>16} {'online':>16}")
        for w in report.worst:
            typer.echo(f"  {w.transaction_id:20} {w.tx_datetime.isoformat():25} {w.column:26} {w.batch:>16.10g} "
                       f"{w.online:>16.10g}")
    if not report.ok:
        raise typer.Exit(1)


def _column_table(max_abs_diff: dict[str, float], rows_by_column: dict[str, int]) -> list[str]:
    """The columns differing beyond the tolerance (largest gap, how many rows), then one line for rounding noise."""
    over = sorted((c for c, n in rows_by_column.items() if n), key=lambda c: -max_abs_diff[c])
    noise = [gap for c, gap in max_abs_diff.items() if gap > 0 and not rows_by_column[c]]
    lines = [f"{'column':26} {'max |diff|':>12} {'rows':>6}"] if over else []
    lines += [f"{c:26} {max_abs_diff[c]:>12.3g} {rows_by_column[c]:>6}" for c in over]
    if noise:
        lines.append(f"{len(noise)} {'more ' if over else ''}column(s) differ by at most {max(noise):.3g} "
                     "(rounding, within the tolerance)")
    if not over and not noise:
        lines.append(f"all {len(max_abs_diff)} feature columns identical")
    return lines
