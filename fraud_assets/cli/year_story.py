"""The year story: twelve simulated months through the real loop, with card testing switched on mid-year.

Each month, in the order a bank lives it:

1. the month's transactions are scored live by the served champion (Ray Serve, over HTTP, into the
   prediction log; a share of them get late labels through ``POST /labels``);
2. the month's snapshot arrives: it is simulated, pinned with DVC and pushed;
3. the real ``new_snapshot_sensor`` is evaluated and the run it requests (``ingest_month``: validation,
   features, drift, live performance) is executed;
4. the real ``drift_retrain_sensor`` and ``live_performance_retrain_sensor`` are evaluated and the
   ``retrain_month`` runs they request are executed (the first champion is trained once enough months
   are in); a promoted challenger is picked up by the serving replicas, which is waited for.

The sensors' own evaluation functions decide; only the daemon's polling is replaced by a call, so the
story runs in minutes without ``dagster-daemon``. Everything lives in a project folder and a state folder
of its own (default under ``.state/year``), so the main project's champion is untouched. A Markdown
report with a PNG plot tells the story month by month.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fraud_assets.params import Params

Log = Callable[[str], None]


@dataclass
class MonthRecord:
    """What happened in one month of the story."""

    month: str
    rows: int
    fraud_rate: float
    card_testing_rows: int
    champion_before: str | None
    served_rows: int = 0
    served_alerts: int = 0
    served_average_precision: float | None = None
    served_recall: float | None = None
    drift_detected: bool = False
    drift_reasons: list[str] = field(default_factory=list)
    max_psi: float | None = None
    retrains: list[dict[str, Any]] = field(default_factory=list)
    champion_after: str | None = None
    serving_version_after: str | None = None


def prepare_project(base: Path, params: Params) -> tuple[Path, Path]:
    """A fresh project folder (with ``params`` as its params.yaml) and state folder under ``base``."""
    if base.exists():
        shutil.rmtree(base)
    project, state = base / "project", base / "state"
    project.mkdir(parents=True)
    state.mkdir(parents=True)
    params.write(project / "params.yaml")
    return project, state


class _Service:
    """The served champion over HTTP (Ray Serve), with the story's API key."""

    def __init__(self, tracking_uri: str, project: Path, log: Log) -> None:
        from serving.app import AppArgs
        from serving.local import start_serving

        self.key = os.environ.setdefault("FRAUD_API_KEY", secrets.token_urlsafe(24))
        self.url = start_serving(tracking_uri=tracking_uri, args=AppArgs(params_path=str(project / "params.yaml")))
        self.log = log

    def score(self, frame: Any, batch_rows: int) -> int:
        import httpx

        rows = [{"transaction_id": r.transaction_id, "tx_datetime": r.tx_datetime.isoformat(),
                 "customer_id": r.customer_id, "terminal_id": r.terminal_id, "amount": float(r.amount)}
                for r in frame.itertuples(index=False)]
        with httpx.Client(base_url=self.url, headers={"x-api-key": self.key}, timeout=120) as http:
            for i in range(0, len(rows), batch_rows):
                http.post("/predict/batch", json={"transactions": rows[i:i + batch_rows]}).raise_for_status()
        return len(rows)

    def label(self, frame: Any) -> None:
        import httpx

        labels = [{"transaction_id": t, "is_fraud": int(f)} for t, f in zip(frame["transaction_id"],
                                                                               frame["is_fraud"], strict=True)]
        with httpx.Client(base_url=self.url, headers={"x-api-key": self.key}, timeout=60) as http:
            for i in range(0, len(labels), 5000):
                http.post("/labels", json={"labels": labels[i:i + 5000]}).raise_for_status()

    def wait_for_version(self, version: str, timeout_s: float = 120.0) -> float:
        """Seconds until ``/ready`` reports ``version`` (the replicas follow the alias)."""
        import httpx

        start = time.monotonic()
        while time.monotonic() - start < timeout_s:
            ready = httpx.get(f"{self.url}/ready", timeout=5)
            if ready.status_code == 200 and ready.json().get("model_version") == version:
                return time.monotonic() - start
            time.sleep(0.5)
        raise TimeoutError(f"serving did not move to v{version} within {timeout_s:.0f} s")

    def stop(self) -> None:
        from serving.local import stop_serving

        stop_serving()


def run_year(base: Path, params: Params, months: int = 12, serve: bool = True, bootstrap_months: int = 3,
             label_share: float = 0.2, log: Log = print) -> list[MonthRecord]:
    """Run the story in ``base`` with ``params`` (the story's length set to ``months``) and return one record per
    month (see the module docstring)."""
    import dagster as dg

    from fraud_assets import settings
    from fraud_assets.adapters import dvc_repo, mlflow_registry
    from fraud_assets.core.months import month_range, snapshot_path
    from fraud_assets.core.simulate import make_population, simulate_month
    from fraud_assets.orchestration.automation import INGEST_JOB, RETRAIN_JOB
    from fraud_assets.orchestration.definitions import build_definitions
    from fraud_assets.orchestration.runner import QUIET, blocked_checks, ensure_dagster_home, failure_message

    params = params.updated({"data.months": months})
    logging.getLogger("dagster").setLevel(logging.WARNING)  # the sensors' notes: this story prints its own lines
    project, state = prepare_project(base, params)
    os.environ["FRAUD_STATE_DIR"] = str(state)
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    name, champion_alias = params.registry.model_name, params.registry.champion_alias
    client = mlflow_registry.client_for(settings.mlflow_tracking_uri())
    dvc_repo.ensure_repo(project)
    defs = build_definitions(project, params=params)
    sensors = {n: defs.resolve_sensor_def(n) for n in
               ("new_snapshot_sensor", "drift_retrain_sensor", "live_performance_retrain_sensor")}
    cursors: dict[str, str | None] = dict.fromkeys(sensors)
    population = make_population(params.data)
    (project / params.data.dir).mkdir(parents=True, exist_ok=True)
    service: _Service | None = None
    records: list[MonthRecord] = []
    with dg.DagsterInstance.local_temp(str(ensure_dagster_home(state / "dagster"))) as instance:

        def evaluate(sensor_name: str) -> list[dg.RunRequest]:
            ctx = dg.build_sensor_context(instance=instance, definitions=defs, cursor=cursors[sensor_name])
            out = sensors[sensor_name](ctx)
            cursors[sensor_name] = ctx.cursor
            items = out if isinstance(out, list) else list(out) if out is not None and not isinstance(
                out, dg.SkipReason | dg.RunRequest) else [out]
            return [r for r in items if isinstance(r, dg.RunRequest)]

        def run(job: str, month: str, tags: dict[str, str]) -> dg.ExecuteInProcessResult:
            result = defs.resolve_job_def(job).execute_in_process(partition_key=month, instance=instance, tags=tags,
                                                                  raise_on_error=False, run_config=QUIET)
            if not result.success and not (job == RETRAIN_JOB and blocked_checks(result)):
                raise RuntimeError(f"{job} for {month} failed (run {result.run_id}): {failure_message(result)}")
            return result

        try:
            for month in month_range(params.data.start_month, months):
                frame = simulate_month(params.data, month, population)
                champion = mlflow_registry.alias_version(client, name, champion_alias)
                rec = MonthRecord(month=month, rows=len(frame), fraud_rate=float(frame["is_fraud"].mean()),
                                  card_testing_rows=int((frame["fraud_scenario"] == "card_testing").sum()),
                                  champion_before=str(champion.version) if champion else None)
                if champion is not None and serve:
                    if service is None:
                        service = _Service(settings.mlflow_tracking_uri(), project, log)
                    rec.served_rows = service.score(frame, params.serve.max_batch_rows)
                    service.label(frame.sample(frac=label_share, random_state=0))
                frame.to_parquet(snapshot_path(project / params.data.dir, month), index=False)
                dvc_repo.pin_snapshots(project, params.data.dir, push=True)
                for req in evaluate("new_snapshot_sensor"):
                    result = run(INGEST_JOB, req.partition_key, {**req.tags, "fraud/trigger": "new_snapshot"})
                    if req.partition_key == month:
                        _read_monitoring(rec, result)
                requests = [*evaluate("drift_retrain_sensor"), *evaluate("live_performance_retrain_sensor")]
                if champion is None and len(records) + 1 >= bootstrap_months:
                    requests.append(dg.RunRequest(partition_key=month, tags={"fraud/trigger": "bootstrap"}))
                for partition in sorted({r.partition_key for r in requests}):
                    trigger = ",".join(sorted({r.tags.get("fraud/trigger", "?") for r in requests
                                               if r.partition_key == partition}))
                    result = run(RETRAIN_JOB, partition, {"fraud/trigger": trigger})
                    rec.retrains.append(_retrain_summary(result, trigger, frame))
                after = mlflow_registry.alias_version(client, name, champion_alias)
                rec.champion_after = str(after.version) if after else None
                if service is not None and rec.champion_after and rec.champion_after != rec.champion_before:
                    waited = service.wait_for_version(rec.champion_after)
                    log(f"  serving moved to v{rec.champion_after} in {waited:.1f} s")
                rec.serving_version_after = rec.champion_after if service is not None else None
                records.append(rec)
                log(_line(rec))
        finally:
            if service is not None:
                service.stop()
    return records


def _read_monitoring(rec: MonthRecord, result: Any) -> None:
    drift = result.output_for_node("drift_report")
    rec.drift_detected = bool(drift.get("drift_detected"))
    rec.drift_reasons = list(drift.get("reasons", []))
    if drift.get("features"):
        rec.max_psi = max(f["psi"] for f in drift["features"])
    live = result.output_for_node("live_performance")["overall"]
    rec.served_alerts = live["alerts"]
    rec.served_average_precision = live["average_precision"]
    rec.served_recall = live["recall"]


def _retrain_summary(result: Any, trigger: str, frame: Any) -> dict[str, Any]:
    if not result.success:  # the blocking minimum-bars check stopped it before the decision
        from fraud_assets.orchestration.runner import blocked_checks

        evaluation = result.output_for_node("challenger_evaluation")
        why = "; ".join(blocked_checks(result))
        return {"holdout_month": evaluation["holdout_month"], "trigger": trigger,
                "challenger_version": evaluation["challenger_version"], "promoted": False,
                "reason": f"blocked by {why or 'a blocking check'}",
                "challenger_average_precision": evaluation["challenger"]["average_precision"],
                "champion_average_precision": (evaluation["champion"] or {}).get("average_precision"),
                "baseline_average_precision": evaluation["baseline"]["average_precision"]}
    decision = result.output_for_node("promotion_decision")
    evaluation = result.output_for_node("challenger_evaluation")
    return {"holdout_month": decision["holdout_month"], "trigger": trigger,
            "challenger_version": decision["challenger_version"], "promoted": decision["promoted"],
            "reason": decision["reason"],
            "challenger_average_precision": evaluation["challenger"]["average_precision"],
            "champion_average_precision": (evaluation["champion"] or {}).get("average_precision"),
            "baseline_average_precision": evaluation["baseline"]["average_precision"]}


def _line(rec: MonthRecord) -> str:
    ap = f"{rec.served_average_precision:.3f}" if rec.served_average_precision is not None else "  -  "
    retrain = "; ".join(f"retrain ({r['trigger']}) v{r['challenger_version']} "
                        f"{'PROMOTED' if r['promoted'] else 'refused: ' + r['reason']}" for r in rec.retrains
                        ) or "no retrain"
    return (f"{rec.month}: {rec.rows:>6} tx, card testing {rec.card_testing_rows:>4}, served AUPRC {ap}, "
            f"drift {'YES' if rec.drift_detected else 'no '}, {retrain}, champion v{rec.champion_after or '-'}")


def _retrain_cell(t: dict[str, Any]) -> str:
    champ = t["champion_average_precision"]
    versus = f"{champ:.3f}" if champ is not None else "none"
    return (f"{t['trigger']}: v{t['challenger_version']} AUPRC {t['challenger_average_precision']:.3f} vs "
            f"champion {versus} -> {'promoted' if t['promoted'] else 'refused (' + t['reason'] + ')'}")


def write_report(records: list[MonthRecord], out: Path) -> Path:
    """``year_report.md`` with a table per month and ``year_story.png``; return the Markdown path."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    out.mkdir(parents=True, exist_ok=True)
    (out / "year_records.json").write_text(json.dumps([asdict(r) for r in records], indent=2) + "\n")
    fig = Figure(figsize=(8, 6))
    FigureCanvasAgg(fig)
    ax1, ax2 = fig.subplots(2, 1, sharex=True)
    x = [r.month for r in records]
    ax1.plot(x, [r.served_average_precision if r.served_average_precision is not None else float("nan")
                 for r in records], marker="o", label="served champion AUPRC on the month")
    for r in records:
        for t in r.retrains:
            ax1.scatter([t["holdout_month"]], [t["challenger_average_precision"]],
                        marker="^" if t["promoted"] else "x", color="tab:green" if t["promoted"] else "tab:red")
    ax1.set(ylabel="AUPRC", ylim=(0, 1), title="Champion on each month (triangles: promoted challengers)")
    ax1.legend(fontsize=7)
    ax2.bar(x, [r.max_psi or 0 for r in records], color=["tab:red" if r.drift_detected else "tab:blue"
                                                          for r in records])
    ax2.set(ylabel="max feature PSI", title="Drift (red: detected)")
    ax2.tick_params(axis="x", rotation=45)
    fig.tight_layout()
    fig.savefig(out / "year_story.png", dpi=90)
    lines = ["# The year story", "",
             "Twelve simulated months; card testing switches on mid-year. Each month the served champion scores",
             "the month live, the snapshot is pinned, the real sensors decide what runs.", "",
             "![year story](year_story.png)", "",
             "| month | tx | card testing | champion | served AUPRC | alerts | drift | retrain | champion after |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in records:
        ap = f"{r.served_average_precision:.3f}" if r.served_average_precision is not None else "-"
        retrain = "<br>".join(_retrain_cell(t) for t in r.retrains) or "-"
        drift = ("yes: " + "; ".join(r.drift_reasons)) if r.drift_detected else "no"
        lines.append(f"| {r.month} | {r.rows} | {r.card_testing_rows} | {r.champion_before or '-'} | {ap} | "
                     f"{r.served_alerts} | {drift} | {retrain} | {r.champion_after or '-'} |")
    path = out / "year_report.md"
    path.write_text("\n".join(lines) + "\n")
    return path
