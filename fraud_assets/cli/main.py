"""The ``fraud`` command: simulate, pin, run the pipeline, serve, score, and the end-to-end demo."""

from __future__ import annotations

import contextlib
import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from fraud_assets import settings
from fraud_assets.cli.parity import check_parity
from fraud_assets.params import Params, load_params

if TYPE_CHECKING:
    import pandas as pd
    from mlflow import MlflowClient

    from fraud_assets.core.importer import Appended

app = typer.Typer(help="Fraud detection MLOps: DVC snapshots -> Dagster -> MLflow -> Ray Serve.",
                  no_args_is_help=True, add_completion=False)
app.command("check-parity")(check_parity)


def _project() -> tuple[Path, Params]:
    """The project folder and its parameters, loaded once per command."""
    settings.disable_telemetry()
    root = settings.project_root()
    return root, load_params(root / "params.yaml")


@app.command()
def simulate(
    start: Annotated[str | None, typer.Option(help="First month, YYYY-MM (default: data.start_month)")] = None,
    months: Annotated[int | None, typer.Option(help="How many months (default: data.months)")] = None,
    pin: Annotated[bool, typer.Option("--pin/--no-pin", help="Pin with DVC and push when done")] = False,
) -> None:
    """Simulate monthly snapshots into the data folder and print a summary per month as each is written."""
    root, p = _project()
    _simulate(root, p, start, months)
    if pin:
        _pin_and_report(root, p, push=True)


def _simulate(root: Path, p: Params, start: str | None = None, months: int | None = None) -> None:
    import pandas as pd

    from fraud_assets.core.lineage import file_md5
    from fraud_assets.core.months import snapshot_path
    from fraud_assets.core.simulate import iter_months
    from fraud_assets.core.validate import earlier_month_ids, validate_transactions

    data_dir = root / p.data.dir
    data_dir.mkdir(parents=True, exist_ok=True)
    first = start or p.data.start_month
    seen = earlier_month_ids(data_dir, first)
    typer.echo(_SUMMARY_HEADER + "  fraud by scenario")
    for month, frame in iter_months(p.data, first, months or p.data.months):
        path = snapshot_path(data_dir, month)
        frame.to_parquet(path, index=False)
        result = validate_transactions(frame, month, source=path.name, seen_ids=seen, data=p.data)
        seen = seen.append(pd.Index(frame["transaction_id"]))
        by = frame.loc[frame["is_fraud"] == 1, "fraud_scenario"].value_counts()
        scenarios = " ".join(f"{_SHORT.get(k, k)}={v}" for k, v in sorted(by.items()))
        typer.echo(_summary_line(month, frame, result.counts["rows_quarantined"], file_md5(path)) + f"  {scenarios}")


_SUMMARY_HEADER = f"{'month':8} {'rows':>8} {'fraud %':>8} {'quarant.':>8}  {'md5 (= DVC hash)':32}"
_SHORT = {"large_amount": "large", "compromised_terminal": "terminal", "compromised_card": "card",
          "card_testing": "testing"}


def _summary_line(month: str, frame: pd.DataFrame, quarantined: int, md5: str) -> str:
    rate = 100 * frame["is_fraud"].astype("float64").mean() if len(frame) else 0.0
    return f"{month:8} {len(frame):>8} {rate:>7.2f}% {quarantined:>8}  {md5:32}"


def _pin_and_report(root: Path, p: Params, push: bool) -> dict[str, str]:
    from fraud_assets.adapters import dvc_repo

    dvc_repo.ensure_repo(root)
    hashes = dvc_repo.pin_snapshots(root, p.data.dir, push=push)
    pushed = " and pushed to the DVC remote" if push else ""
    typer.echo(f"pinned {len(hashes)} month(s) in {dvc_repo.DVC_FILE}{pushed}")
    return hashes


@app.command("import")
def import_(
    file: Annotated[Path, typer.Argument(help="CSV or Parquet export of the bank's own system")],
    map_: Annotated[list[str] | None, typer.Option(
        "--map", help="SRC=DST: read canonical column DST from the file's column SRC (repeatable)")] = None,
    timezone: Annotated[str, typer.Option(help="Time zone of timestamps without an offset")] = "UTC",
    replace: Annotated[bool, typer.Option(help="Overwrite months whose snapshot exists with other data")] = False,
    append: Annotated[bool, typer.Option(help="Merge the file's rows into the snapshots of their months (a part of "
                                              "a month, e.g. a week); rows already there are skipped")] = False,
    push: Annotated[bool, typer.Option(help="Push to the DVC remote after pinning")] = True,
) -> None:
    """Import an export as monthly snapshots (UTC months), or with --append merge a part of a month into them; pin
    them with DVC and push; print a summary per month."""
    from fraud_assets.core.importer import import_file, parse_column_map
    from fraud_assets.core.validate import SnapshotError, earlier_month_ids, read_snapshot, validate_transactions

    root, p = _project()
    data_dir = root / p.data.dir
    try:
        if append and replace:
            raise ValueError("--append merges rows into the snapshots and never overwrites one: drop --replace")
        key = settings.token_key()
        typer.echo(_tokens_line(p.data.sensitive_columns, key))
        column_map = parse_column_map(map_ or [])
        if append:
            appended = _append_export(file, data_dir, column_map, timezone, p, key)
        else:
            written = import_file(file, data_dir, column_map, timezone, replace=replace,
                                  sensitive_columns=p.data.sensitive_columns, token_key=key,
                                  features=p.features)
    except (SnapshotError, ValueError, FileExistsError) as exc:
        typer.secho(f"import failed: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from exc
    hashes = _pin_and_report(root, p, push=push)
    if append:
        typer.echo(_APPEND_HEADER)
        for month, (result, quarantined, status) in appended.items():
            typer.echo(f"{month:8} {result.appended:>9} {len(result.frame):>9} {result.already_present:>9} "
                       f"{quarantined:>9}  {hashes[month]:32}  {status}")
        return
    typer.echo(_SUMMARY_HEADER + "  snapshot")
    for w in written:
        frame = read_snapshot(w.path)
        seen = earlier_month_ids(data_dir, w.month)
        result = validate_transactions(frame, w.month, source=w.path.name, seen_ids=seen, data=p.data)
        typer.echo(_summary_line(w.month, frame, result.counts["rows_quarantined"], hashes[w.month]) + f"  {w.status}")


_APPEND_HEADER = (f"{'month':8} {'appended':>9} {'rows now':>9} {'skipped':>9} {'quarant.':>9}  "
                  f"{'md5 (= DVC hash)':32}  snapshot")


def _append_export(file: Path, data_dir: Path, column_map: dict[str, str], timezone: str, p: Params,
                   key: bytes | None) -> dict[str, tuple[Appended, int, str]]:
    """Merge an export's rows into the snapshots of the months they fall in, writing the changed months only once
    every month passed its checks; ``{month: (what was appended, appended rows quarantined, snapshot status)}``.

    Raises:
        IdConflictError: rows reuse ids that a snapshot holds with other values (named, nothing written).
        SnapshotError: the file cannot be read or has no rows, or a snapshot does not fit it.
    """
    import pandas as pd

    from fraud_assets.core.importer import (
        IdConflictError,
        append_to_snapshot,
        read_export,
        split_months,
        to_canonical,
        write_months,
    )
    from fraud_assets.core.months import available_months, snapshot_path
    from fraud_assets.core.validate import SnapshotError, earlier_month_ids, read_snapshot, validate_transactions

    parts = split_months(to_canonical(read_export(file), column_map, timezone, source=file.name,
                                      sensitive_columns=p.data.sensitive_columns, token_key=key,
                                      features=p.features))
    if not parts:
        raise SnapshotError(f"{file.name}: no rows to append")
    months = available_months(data_dir)
    existing = {m: read_snapshot(snapshot_path(data_dir, m)) for m in months if m in parts}
    ids = {m: existing[m]["transaction_id"] if m in existing else _snapshot_ids(snapshot_path(data_dir, m))
           for m in months}
    results, conflicts = {}, []
    for month, part in parts.items():
        others = [s for m, s in ids.items() if m != month]
        try:
            results[month] = append_to_snapshot(existing.get(month), part, pd.concat(others) if others else (),
                                                p.features, source=f"{month}.parquet")
        except IdConflictError as exc:
            conflicts.extend(exc.ids)
    if conflicts:
        raise IdConflictError(conflicts, file.name)
    writes = write_months({m: r.frame for m, r in results.items() if r.appended}, data_dir, replace=True)
    status = {w.month: "new" if w.status == "new" else "appended" for w in writes}
    out = {}
    for month, result in results.items():
        quarantined = 0 if not result.appended else validate_transactions(
            result.added, month, source=file.name, seen_ids=earlier_month_ids(data_dir, month), data=p.data
        ).counts["rows_quarantined"]
        out[month] = (result, quarantined, status.get(month, "unchanged"))
    return out


def _snapshot_ids(path: Path) -> pd.Series:
    """The transaction ids of one snapshot (only that column is read)."""
    import pandas as pd

    from fraud_assets.core.validate import SnapshotError

    try:
        return pd.read_parquet(path, columns=["transaction_id"])["transaction_id"]
    except Exception as exc:  # pyarrow raises many types; all mean "unreadable" (or no such column)
        raise SnapshotError(f"cannot read the transaction ids of snapshot {path}: {exc}") from exc


def _tokens_line(columns: tuple[str, ...], key: bytes | None) -> str:
    """What import does with the sensitive ids, in one line (naming the key by its id, never the key)."""
    from fraud_assets.core.tokens import key_id

    names = ", ".join(columns)
    if not columns:
        return "no column is marked sensitive (params.yaml data.sensitive_columns): ids stored as given"
    if key is None:
        return (f"${settings.TOKEN_KEY_ENV} is not set: {names} stored as given, in clear "
                "(set it to store keyed tokens instead, see docs/tokens.md)")
    return f"{names} stored as keyed tokens (HMAC-SHA256, key id {key_id(key)})"


@app.command()
def pin(push: Annotated[bool, typer.Option(help="Push to the DVC remote too")] = True) -> None:
    """Pin the snapshot folder with DVC (data.dvc) and push it to the remote."""
    root, p = _project()
    for month, md5 in sorted(_pin_and_report(root, p, push=push).items()):
        typer.echo(f"{month}  {md5}")


@app.command()
def pipeline(
    month: Annotated[list[str] | None, typer.Option(help="Months to ingest (default: every snapshot)")] = None,
    train: Annotated[bool, typer.Option(help="Train and decide for the latest month")] = True,
    until: Annotated[str | None, typer.Option(help="Ingest every snapshot up to this month, train for it")] = None,
    tune: Annotated[bool, typer.Option(help="Grid-search the booster's params on the validation window first "
                                            "(params.yaml tune: grid and time budget)")] = False,
) -> None:
    """Materialize the asset graph as Dagster runs: ingest each month, then train for the latest."""
    root, p = _project()
    _pipeline(root, p.updated({"tune.enabled": True}) if tune else p, month, train, until)


def _pipeline(root: Path, p: Params, month: list[str] | None = None, train: bool = True,
              until: str | None = None) -> None:
    from fraud_assets.core.months import available_months
    from fraud_assets.orchestration.runner import run_months

    months = sorted(month or available_months(root / p.data.dir))
    if until is not None:
        if until not in months:
            raise typer.BadParameter(f"no snapshot for {until}; have {', '.join(months) or 'none'}")
        months = [m for m in months if m <= until]
    if not months:
        raise typer.BadParameter("no snapshots found: run `fraud simulate` first")
    decision = run_months(months, months[-1] if train else None, root, p)
    if decision:
        _print_decision(decision)


def _print_decision(d: dict) -> None:
    verdict = "PROMOTED" if d["promoted"] else "kept champion"
    typer.echo(f"challenger v{d['challenger_version']} on {d['holdout_month']}: {verdict} "
               f"-> champion v{d['champion_version_after']}\n  reason: {d['reason']}")
    m = d["challenger_metrics"]
    typer.echo(f"  holdout AUPRC {m['average_precision']:.4f}  ROC-AUC {m['roc_auc']:.4f}  "
               f"precision {m['precision']:.3f}  recall {m['recall']:.3f}  threshold {m['threshold']:.4f}")


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Bind address (default: serve.host)")] = None,
    port: Annotated[int | None, typer.Option(help="HTTP port (default: serve.port)")] = None,
    insecure_local: Annotated[bool, typer.Option(help="Serve without an API key (local experiments only)")] = False,
) -> None:
    """Serve the champion with Ray Serve until Ctrl-C (or SIGTERM); needs $FRAUD_API_KEY unless --insecure-local."""
    from serving.app import AppArgs
    from serving.local import start_serving, stop_serving

    _, p = _project()
    _ensure_api_key(generate=False)
    try:
        url = start_serving(host=host, port=port, args=AppArgs(insecure_local=insecure_local))
    except RuntimeError as exc:
        typer.secho(str(exc), fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from exc
    typer.echo(f"serving models:/{p.registry.model_name}@{p.registry.champion_alias} at {url} (Ctrl-C to stop)")
    signal.signal(signal.SIGTERM, _raise_interrupt)  # Ray replaced the handler in ray.init
    try:
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        typer.echo("stopping Ray Serve")
    finally:
        stop_serving()


@app.command("serve-env")
def serve_env() -> None:
    """Print the environment a Ray cluster node needs for serve.ingress and Serve's latency switches, as shell
    ``export`` lines: ``eval "$(fraud serve-env)"`` before ``ray start`` (Ray's processes read it when they start),
    then ``serve deploy serve_config.yaml``."""
    import shlex

    from serving.local import ray_env

    _, p = _project()
    for name, value in ray_env(p.serve).items():
        typer.echo(f"export {name}={shlex.quote(value)}")


def _raise_interrupt(*_: object) -> None:
    raise KeyboardInterrupt


@app.command()
def score(
    url: Annotated[str | None, typer.Option(help="Service URL (default: from serve.host/port)")] = None,
    n: Annotated[int, typer.Option(help="How many transactions to send")] = 8,
) -> None:
    """Send transactions from the latest snapshot to the service and print its answers."""
    root, p = _project()
    _score_over_http(root, p, url, n)


def _score_over_http(root: Path, p: Params, url: str | None, n: int) -> list[dict]:
    import httpx

    from fraud_assets.core.months import available_months, snapshot_path
    from fraud_assets.core.validate import read_snapshot

    base = url or f"http://{p.serve.host}:{p.serve.port}"
    months = available_months(root / p.data.dir)
    if not months:
        raise typer.BadParameter("no snapshots found: run `fraud simulate` first")
    frame = read_snapshot(snapshot_path(root / p.data.dir, months[-1]))
    # Half frauds, half legit, so the printout shows both sides of the threshold.
    sample = (frame[frame["is_fraud"] == 1].head(n // 2), frame[frame["is_fraud"] == 0].head(n - n // 2))
    answers = []
    typer.echo(f"{'transaction_id':20} {'amount':>9} {'label':>5} {'p(fraud)':>9} {'alert':>6} version")
    key = _api_key()
    with httpx.Client(base_url=base, timeout=10, headers={"x-api-key": key} if key else {}) as client:
        for part in sample:
            for row in part.to_dict("records"):
                body = {"transaction_id": row["transaction_id"], "tx_datetime": row["tx_datetime"].isoformat(),
                        "customer_id": row["customer_id"], "terminal_id": row["terminal_id"],
                        "amount": float(row["amount"])}
                resp = client.post("/predict", json=body)
                resp.raise_for_status()
                a = resp.json()
                answers.append(a)
                typer.echo(f"{a['transaction_id']:20} {row['amount']:>9.2f} {row['is_fraud']:>5} "
                           f"{a['fraud_probability']:>9.4f} {a['alert']!s:>6} v{a['model_version']}")
    return answers


def _api_key() -> str | None:
    """``$FRAUD_API_KEY``, else the key ``scripts/up.sh`` keeps in the state folder (``api_key``), else None."""
    import os

    key = os.environ.get("FRAUD_API_KEY")
    path = settings.state_dir() / "api_key"
    if not key and path.exists():
        key = path.read_text().strip()
    return key or None


def _client() -> MlflowClient:
    from fraud_assets.adapters import mlflow_registry

    return mlflow_registry.client_for(settings.mlflow_tracking_uri())


@app.command()
def status() -> None:
    """Print the registry's champion and challenger with their tags."""
    from fraud_assets.adapters import mlflow_registry

    _, p = _project()
    client, name = _client(), p.registry.model_name
    for alias in (p.registry.champion_alias, p.registry.challenger_alias):
        mv = mlflow_registry.alias_version(client, name, alias)
        if mv is None:
            typer.echo(f"{alias}: none")
            continue
        typer.echo(f"{alias}: {name} v{mv.version} (run {mv.run_id})")
        typer.echo(json.dumps(dict(sorted(mv.tags.items())), indent=2))


def _actor() -> str:
    import getpass

    return f"cli:{getpass.getuser()}"


@app.command()
def promote(
    version: Annotated[str, typer.Option(help="Model version to make champion")],
    reason: Annotated[str, typer.Option(help="Why (recorded in the history)")],
) -> None:
    """Move the champion alias to a version by hand (refused unless serving could load and score it); the
    serving app follows the alias."""
    from fraud_assets.adapters import mlflow_registry

    _, p = _project()
    reg = p.registry
    with _refusal_exits():
        previous = mlflow_registry.move_alias(_client(), reg.model_name, reg.champion_alias, version, reason,
                                              actor=_actor())
    typer.echo(f"{reg.champion_alias}: v{previous or '-'} -> v{version}")


@contextlib.contextmanager
def _refusal_exits() -> Iterator[None]:
    """A version serving would refuse: one line naming it and why, exit code 1, no traceback."""
    from fraud_assets.adapters.mlflow_registry import NotServable

    try:
        yield
    except NotServable as exc:
        typer.secho(f"refused: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from None


@app.command()
def rollback(reason: Annotated[str, typer.Option(help="Why (recorded in the history)")]) -> None:
    """Give the champion alias back to the version that held it before the current one."""
    from fraud_assets.adapters import mlflow_registry
    from fraud_assets.core.promote import rollback_target

    _, p = _project()
    client, name, alias = _client(), p.registry.model_name, p.registry.champion_alias
    mlflow_registry.reconcile_alias_moves(client, name, alias)  # a move cut short by a crash counts if it happened
    current = mlflow_registry.alias_version(client, name, alias)
    if current is None:
        raise typer.BadParameter(f"no {alias} to roll back")
    previous = rollback_target(mlflow_registry.alias_history(client, name, alias))
    if not previous:
        raise typer.BadParameter(f"{alias} v{current.version} has no recorded predecessor to roll back to")
    with _refusal_exits():
        mlflow_registry.move_alias(client, name, alias, previous, f"rollback: {reason}", actor=_actor(),
                                   kind="rollback")
    typer.echo(f"{alias}: v{current.version} -> v{previous} (rollback)")


@app.command()
def history() -> None:
    """Who held the champion alias when, and why."""
    import datetime as dt

    from fraud_assets.adapters import mlflow_registry

    _, p = _project()
    moves = mlflow_registry.alias_history(_client(), p.registry.model_name, p.registry.champion_alias)
    if not moves:
        typer.echo(f"no {p.registry.champion_alias} has been set yet")
    for m in moves:
        when = dt.datetime.fromtimestamp(int(m["time"]) / 1000, tz=dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
        before = f"v{m['previous_version']}" if m["previous_version"] else "-"
        typer.echo(f"{when}Z  {before:>4} -> {'v' + m['version']:<4} {m['actor']}: {m['reason']}")


@app.command()
def bootstrap() -> None:
    """Make the system servable: simulate and pin data if there is none, run the graph if no champion."""
    from fraud_assets.adapters import mlflow_registry
    from fraud_assets.core.months import available_months

    root, p = _project()
    if not available_months(root / p.data.dir):
        _simulate(root, p)
        _pin_and_report(root, p, push=True)
    if mlflow_registry.alias_version(_client(), p.registry.model_name, p.registry.champion_alias) is None:
        _pipeline(root, p)
    else:
        typer.echo(f"{p.registry.model_name}@{p.registry.champion_alias} is registered; nothing to bootstrap")


@app.command()
def demo(
    skip_serving: Annotated[bool, typer.Option(help="Stop after the pipeline")] = False,
) -> None:
    """End to end: simulate, pin with DVC, run the Dagster graph, serve with Ray, score over HTTP, stop."""
    root, p = _project()
    start = time.perf_counter()
    _step("simulate monthly snapshots")
    _simulate(root, p)
    _step("pin with DVC and push to the local remote")
    _pin_and_report(root, p, push=True)
    _step("materialize the asset graph (Dagster) and register/promote (MLflow)")
    _pipeline(root, p)
    if not skip_serving:
        from serving.local import start_serving, stop_serving

        _step("serve the champion (Ray Serve) and score over HTTP")
        _ensure_api_key()
        url = start_serving()
        try:
            answers = _score_over_http(root, p, url, 8)
        finally:
            stop_serving()
        versions = sorted({a["model_version"] for a in answers})
        typer.echo(f"scored {len(answers)} transactions over HTTP at {url}, model version(s) {versions}")
    typer.secho(f"\ndemo finished in {time.perf_counter() - start:.1f} s; state in {settings.state_dir().name}/",
                bold=True)


def _step(name: str) -> None:
    typer.secho(f"\n== {name}", bold=True)


def _ensure_api_key(generate: bool = True) -> None:
    """Put the configured API key (or, with ``generate``, a random one) into the environment Ray's workers inherit."""
    import os
    import secrets

    key = _api_key()
    if key:
        os.environ["FRAUD_API_KEY"] = key
    elif generate:
        os.environ["FRAUD_API_KEY"] = secrets.token_urlsafe(32)
        typer.echo("generated a random API key for this run (FRAUD_API_KEY)")


@app.command()
def report(out: Annotated[Path, typer.Option(help="Folder to write the report into")] = Path("report")) -> None:
    """Export the latest challenger's evaluation (JSON + plots) and the champion history, e.g. for CI artifacts."""
    from fraud_assets.adapters import mlflow_registry

    _, p = _project()
    client, reg = _client(), p.registry
    out.mkdir(parents=True, exist_ok=True)
    moves = mlflow_registry.alias_history(client, reg.model_name, reg.champion_alias)
    (out / "champion_history.json").write_text(json.dumps(moves, indent=2) + "\n")
    challenger = mlflow_registry.alias_version(client, reg.model_name, reg.challenger_alias)
    if challenger is None:
        raise typer.BadParameter("no challenger has been trained yet: run `fraud pipeline` first")
    run_artifacts = {f.path for f in client.list_artifacts(challenger.run_id)}
    for artifact in ("evaluation.json", "promotion_decision.json", "dataset.json", "plots"):
        if artifact in run_artifacts:
            client.download_artifacts(challenger.run_id, artifact, str(out))
        else:
            typer.echo(f"  {artifact}: not in run {challenger.run_id}")
    typer.echo(f"report for challenger v{challenger.version} and {len(moves)} champion moves in {out}/")


@app.command("simulate-year")
def simulate_year(
    months: Annotated[int, typer.Option(help="How many months the story runs")] = 12,
    serve: Annotated[bool, typer.Option(help="Score each month live through Ray Serve")] = True,
    out: Annotated[Path | None, typer.Option(help="Folder of the story (default: <state>/year)")] = None,
    part_days: Annotated[int, typer.Option(help="Days each appended part of a month covers (0: whole months)")] = 7,
) -> None:
    """The year story: months of simulated data through the real sensors, drift, retrains and serving."""
    from fraud_assets.cli.year_story import adaptation_of, run_year, write_report

    _, p = _project()
    base = out or settings.state_dir() / "year"
    story = run_year(base, p, months=months, serve=serve, part_days=part_days, log=typer.echo)
    path = write_report(story, base / "report")
    adaptation = adaptation_of(story)
    if adaptation is not None:
        back = f"back on {adaptation['recovered_on']}" if adaptation["recovered"] else "never back to its level"
        typer.echo(f"adaptation to card testing (onset {adaptation['onset']}): {adaptation['days_degraded']} days "
                   f"degraded, {back}")
    typer.secho(f"\nyear story: {len(story.records)} months in {story.seconds:.0f} s; report {path}", bold=True)
