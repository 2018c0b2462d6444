"""The year story: twelve simulated months through the real loop, with card testing switched on mid-year.

The months arrive in parts, as a bank appending a week at a time would send them (``part_days``, 7 by default;
0: whole months). For each part, in the order a bank lives it:

1. the part's transactions are scored live by the served champion (Ray Serve, over HTTP, into the prediction
   log); the labels that arrived by the part's end (their simulated ``label_available_at``) are posted to
   ``POST /labels`` with their arrival time;
2. the part is appended to its month's snapshot (``core.importer.append_to_snapshot``, as ``fraud import
   --append`` does), pinned with DVC and pushed;
3. the real ``new_snapshot_sensor`` is evaluated and the run it requests (``ingest_month``: validation,
   features, drift, live performance) is executed;
4. the real ``drift_retrain_sensor`` and ``live_performance_retrain_sensor`` are evaluated and the
   ``retrain_month`` runs they request are executed, on the rolling window as of the part's end (the first champion
   is trained on whole months once enough are in); a promoted challenger (refit on its window) is picked up by the
   serving replicas, which is waited for.

The sensors' own evaluation functions decide; only the daemon's polling is replaced by a call, so the
story runs in minutes without ``dagster-daemon``. Everything lives in a project folder and a state folder
of its own (default under ``.state/year``), so the main project's champion is untouched. A Markdown
report with a PNG plot and a JSON file tells the story month by month, and how many days the served model
stayed degraded after card testing appeared (``core.adaptation``).
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
from itertools import pairwise
from pathlib import Path
from typing import Any

from fraud_assets.params import Params

Log = Callable[[str], None]
PATTERN = "card_testing"


@dataclass
class MonthRecord:
    """What happened in one month of the story (its parts together)."""

    month: str
    rows: int
    fraud_rate: float
    card_testing_rows: int
    champion_before: str | None
    parts: int = 0
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


def month_parts(month: str, part_days: int) -> list[tuple[Any, Any]]:
    """``[start, end)`` UTC of the parts a month arrives in: ``part_days`` each from the 1st (the last one shorter),
    or the whole month when ``part_days`` is 0."""
    import pandas as pd

    from fraud_assets.core.months import month_bounds

    start, end = month_bounds(month)
    if part_days <= 0:
        return [(start, end)]
    cuts = [*pd.date_range(start, end, freq=f"{part_days}D", inclusive="left"), end]
    return list(pairwise(cuts))


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

    def label(self, frame: Any) -> int:
        """Post the labels of ``frame`` with their arrival times; return how many."""
        import httpx

        labels = [{"transaction_id": t, "is_fraud": int(f), "label_available_at": a.isoformat()}
                  for t, f, a in zip(frame["transaction_id"], frame["is_fraud"], frame["label_available_at"],
                                     strict=True)]
        with httpx.Client(base_url=self.url, headers={"x-api-key": self.key}, timeout=60) as http:
            for i in range(0, len(labels), 5000):
                http.post("/labels", json={"labels": labels[i:i + 5000]}).raise_for_status()
        return len(labels)

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


@dataclass
class Story:
    """The story's outcome: one record per month, the served answers with their truth, the time it took."""

    records: list[MonthRecord]
    answers: Any  # a frame: transaction_id, tx_datetime, fraud_probability, model_version, is_fraud, scenario
    onset: str
    seconds: float


def run_year(base: Path, params: Params, months: int = 12, serve: bool = True, bootstrap_months: int = 3,
             part_days: int = 7, log: Log = print) -> Story:
    """Run the story in ``base`` with ``params`` (the story's length set to ``months``), the months arriving in
    parts of ``part_days`` (see the module docstring)."""
    import dagster as dg
    import pandas as pd

    from fraud_assets import settings
    from fraud_assets.adapters import dvc_repo, mlflow_registry
    from fraud_assets.core.importer import append_to_snapshot
    from fraud_assets.core.months import month_range, snapshot_path
    from fraud_assets.core.simulate import make_population, simulate_month
    from fraud_assets.orchestration.automation import INGEST_JOB, RETRAIN_JOB
    from fraud_assets.orchestration.definitions import build_definitions
    from fraud_assets.orchestration.partitions import AS_OF_TAG
    from fraud_assets.orchestration.runner import QUIET, blocked_checks, ensure_dagster_home, failure_message

    began = time.perf_counter()
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
    data_dir = project / params.data.dir
    data_dir.mkdir(parents=True, exist_ok=True)
    service: _Service | None = None
    records: list[MonthRecord] = []
    served: list[pd.DataFrame] = []  # the rows scored live, with their truth
    with dg.DagsterInstance.local_temp(str(ensure_dagster_home(state / "dagster"))) as instance:

        def evaluate(sensor_name: str) -> list[dg.RunRequest]:
            ctx = dg.build_sensor_context(instance=instance, definitions=defs, cursor=cursors[sensor_name])
            logging.disable(logging.INFO)  # the sensor's own notes (the daemon's log): the story prints its lines
            try:  # a sensor may be a generator: it runs (and logs) while it is listed
                out = sensors[sensor_name](ctx)
                items = out if isinstance(out, list) else list(out) if out is not None and not isinstance(
                    out, dg.SkipReason | dg.RunRequest) else [out]
            finally:
                logging.disable(logging.NOTSET)
            cursors[sensor_name] = ctx.cursor
            return [r for r in items if isinstance(r, dg.RunRequest)]

        def run(job: str, month: str, tags: dict[str, str]) -> dg.ExecuteInProcessResult:
            result = defs.resolve_job_def(job).execute_in_process(partition_key=month, instance=instance, tags=tags,
                                                                  raise_on_error=False, run_config=QUIET)
            if not result.success and not (job == RETRAIN_JOB and blocked_checks(result)):
                raise RuntimeError(f"{job} for {month} failed (run {result.run_id}): {failure_message(result)}")
            return result

        labels_until = None
        try:
            for month in month_range(params.data.start_month, months):
                frame = simulate_month(params.data, month, population)
                when = pd.to_datetime(frame["tx_datetime"], utc=True)
                champion = mlflow_registry.alias_version(client, name, champion_alias)
                rec = MonthRecord(month=month, rows=len(frame), fraud_rate=float(frame["is_fraud"].mean()),
                                  card_testing_rows=int((frame["fraud_scenario"] == PATTERN).sum()),
                                  champion_before=str(champion.version) if champion else None)
                parts = month_parts(month, part_days)
                for index, (start, end) in enumerate(parts):
                    part = frame.loc[(when >= start) & (when < end)]
                    rec.parts += 1
                    champion = mlflow_registry.alias_version(client, name, champion_alias)
                    if champion is not None and serve:
                        if service is None:
                            service = _Service(settings.mlflow_tracking_uri(), project, log)
                        rec.served_rows += service.score(part, params.serve.max_batch_rows)
                        served.append(part)
                    if service is not None:  # the labels of scored rows that arrived during this part
                        scored = pd.concat(served, ignore_index=True)
                        arrived = pd.to_datetime(scored["label_available_at"], utc=True)
                        due = (arrived < end) & ((arrived >= labels_until) if labels_until is not None else True)
                        service.label(scored.loc[due])
                        labels_until = end
                    path = snapshot_path(data_dir, month)
                    existing = pd.read_parquet(path) if path.exists() else part.iloc[0:0]
                    append_to_snapshot(existing, part).frame.to_parquet(path, index=False)
                    dvc_repo.pin_snapshots(project, params.data.dir, push=True)
                    for req in evaluate("new_snapshot_sensor"):
                        result = run(INGEST_JOB, req.partition_key, {**req.tags, "fraud/trigger": "new_snapshot"})
                        if req.partition_key == month:
                            _read_monitoring(rec, result)
                    requests = [*evaluate("drift_retrain_sensor"), *evaluate("live_performance_retrain_sensor")]
                    last_part = index == len(parts) - 1
                    if champion is None and last_part and len(records) + 1 >= bootstrap_months:
                        requests.append(dg.RunRequest(partition_key=month, tags={"fraud/trigger": "bootstrap"}))
                    for partition in sorted({r.partition_key for r in requests}):
                        mine = [r for r in requests if r.partition_key == partition]
                        trigger = ",".join(sorted({r.tags.get("fraud/trigger", "?") for r in mine}))
                        as_of = max((r.tags[AS_OF_TAG] for r in mine if r.tags.get(AS_OF_TAG)), default=None)
                        tags = {"fraud/trigger": trigger, **({AS_OF_TAG: as_of} if as_of else {})}
                        result = run(RETRAIN_JOB, partition, tags)
                        rec.retrains.append(_retrain_summary(result, trigger, as_of))
                    after = mlflow_registry.alias_version(client, name, champion_alias)
                    now = str(after.version) if after else None
                    if service is not None and now and now != (str(champion.version) if champion else None):
                        waited = service.wait_for_version(now)
                        log(f"  serving moved to v{now} in {waited:.1f} s")
                rec.champion_after = now
                rec.serving_version_after = now if service is not None else None
                _served_metrics(rec, served, month, service)
                records.append(rec)
                log(_line(rec))
        finally:
            if service is not None:
                service.stop()
    answers = _answers(served)
    return Story(records, answers, f"{params.data.fraud.card_testing_start_month}-01", time.perf_counter() - began)


def _answers(served: list[Any]) -> Any:
    """Every answer the served champion gave (the prediction log's champion rows), with the truth of its row."""
    import pandas as pd

    from fraud_assets import settings
    from fraud_assets.adapters import prediction_log

    columns = ["transaction_id", "tx_datetime", "fraud_probability", "alert", "model_version", "is_fraud", "scenario",
               "label_available_at"]
    if not served:
        return pd.DataFrame(columns=columns)
    truth = pd.concat(served, ignore_index=True)
    start = pd.to_datetime(truth["tx_datetime"], utc=True).min().floor("D")
    end = pd.to_datetime(truth["tx_datetime"], utc=True).max().ceil("D") + pd.Timedelta(days=1)
    logged = prediction_log.read_between(settings.prediction_log_location(), start.to_pydatetime(),
                                         end.to_pydatetime())
    logged = logged.drop_duplicates("transaction_id", keep="last")[["transaction_id", "fraud_probability", "alert",
                                                                    "model_version"]]
    rows = truth[["transaction_id", "tx_datetime", "is_fraud", "fraud_scenario", "label_available_at"]].rename(
        columns={"fraud_scenario": "scenario"})
    out = rows.merge(logged, on="transaction_id", how="inner")
    return out[columns].sort_values("tx_datetime", kind="stable").reset_index(drop=True)


def _read_monitoring(rec: MonthRecord, result: Any) -> None:
    """Fold one part's drift report into the month: drift if any part drifted (its first reasons kept)."""
    drift = result.output_for_node("drift_report")
    if drift.get("drift_detected") and not rec.drift_detected:
        rec.drift_reasons = list(drift.get("reasons", []))
    rec.drift_detected = rec.drift_detected or bool(drift.get("drift_detected"))
    if drift.get("features"):
        rec.max_psi = max([rec.max_psi or 0.0, *(f["psi"] for f in drift["features"])])


def _retrain_summary(result: Any, trigger: str, as_of: str | None) -> dict[str, Any]:
    evaluation = result.output_for_node("challenger_evaluation")
    summary = {"holdout_month": evaluation["holdout_month"], "trigger": trigger, "as_of": as_of,
               "challenger_version": evaluation["challenger_version"],
               "challenger_average_precision": evaluation["challenger"]["average_precision"],
               "champion_average_precision": (evaluation["champion"] or {}).get("average_precision"),
               "baseline_average_precision": evaluation["baseline"]["average_precision"], "refit_version": None}
    if not result.success:  # the blocking minimum-bars check stopped it before the decision
        from fraud_assets.orchestration.runner import blocked_checks

        why = "; ".join(blocked_checks(result))
        return {**summary, "promoted": False, "reason": f"blocked by {why or 'a blocking check'}"}
    decision = result.output_for_node("promotion_decision")
    return {**summary, "promoted": decision["promoted"], "reason": decision["reason"],
            "refit_version": (decision.get("refit") or {}).get("version")}


def _served_metrics(rec: MonthRecord, served: list[Any], month: str, service: Any) -> None:
    """The served answers' AUPRC, alerts and recall on the month against the truth (from the prediction log)."""
    if service is None or not rec.served_rows:
        return
    import pandas as pd
    from sklearn.metrics import average_precision_score

    answers = _answers(served)
    mine = answers.loc[pd.to_datetime(answers["tx_datetime"], utc=True).dt.strftime("%Y-%m") == month]
    y, alert = mine["is_fraud"].to_numpy(), mine["alert"].to_numpy(bool)
    rec.served_alerts = int(alert.sum())
    if 0 < y.sum() < len(y):
        rec.served_average_precision = float(average_precision_score(y, mine["fraud_probability"].to_numpy()))
        rec.served_recall = float((alert & (y == 1)).sum() / y.sum())


def _when(t: dict[str, Any]) -> str:
    return f" as of {t['as_of'][:10]}" if t.get("as_of") else ""


def _line(rec: MonthRecord) -> str:
    ap = f"{rec.served_average_precision:.3f}" if rec.served_average_precision is not None else "  -  "
    retrain = "; ".join(f"retrain ({r['trigger']}{_when(r)}) v{r['challenger_version']} "
                        + ("PROMOTED" + (f", refit v{r['refit_version']}" if r.get("refit_version") else "")
                           if r["promoted"] else "refused") for r in rec.retrains) or "no retrain"
    return (f"{rec.month}: {rec.rows:>6} tx, card testing {rec.card_testing_rows:>4}, served AUPRC {ap}, "
            f"drift {'YES' if rec.drift_detected else 'no '}, {retrain}, champion v{rec.champion_after or '-'}")


def _retrain_cell(t: dict[str, Any]) -> str:
    champ = t["champion_average_precision"]
    versus = f"{champ:.3f}" if champ is not None else "none"
    refit = f", refit v{t['refit_version']} serves" if t.get("refit_version") else ""
    return (f"{t['trigger']}{_when(t)}: v{t['challenger_version']} AUPRC {t['challenger_average_precision']:.3f} vs "
            f"champion {versus} -> {'promoted' + refit if t['promoted'] else 'refused (' + t['reason'] + ')'}")


def adaptation_of(story: Story) -> dict[str, Any] | None:
    """Days degraded after the card-testing onset (:func:`fraud_assets.core.adaptation.days_degraded`), or None
    when nothing was served before the onset."""
    from datetime import date

    from fraud_assets.core.adaptation import days_degraded

    onset = date.fromisoformat(story.onset)
    try:
        return asdict(days_degraded(story.answers, PATTERN, onset))
    except ValueError:
        return None


MATURITY_DAYS = (0, 7, 14, 30, 60)  # days after a month's end the report shows its AUPRC estimate at


def maturity_of(story: Story, months: list[str]) -> dict[str, list[dict[str, Any]]]:
    """How each of ``months``' served AUPRC estimate moves as its labels arrive (``core.maturity``): per day of
    :data:`MATURITY_DAYS` after the month's end, the share of its rows labelled and the AUPRC on them, beside the
    AUPRC on every label (the truth the estimate converges to)."""
    import pandas as pd

    from fraud_assets.core.maturity import label_maturity

    out: dict[str, list[dict[str, Any]]] = {}
    when = pd.to_datetime(story.answers["tx_datetime"], utc=True).dt.strftime("%Y-%m")
    for month in months:
        rows = story.answers.loc[when == month]
        if not len(rows):
            continue
        table = label_maturity(rows, month, max(MATURITY_DAYS))
        out[month] = [{"day": int(r.day), "labelled_share": round(float(r.labelled_share), 4),
                       "frauds_known": int(r.frauds),
                       "average_precision": None if pd.isna(r.average_precision) else float(r.average_precision)}
                      for r in table.itertuples() if int(r.day) in MATURITY_DAYS]
    return out


def write_report(story: Story, out: Path) -> Path:
    """``year_report.md`` with a table per month, ``year_story.png`` and ``year_report.json`` (the months, the
    adaptation, the trailing 7-day served AUPRC of every day); return the Markdown path."""
    from datetime import date

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from fraud_assets.core.adaptation import trailing_average_precision

    records = story.records
    out.mkdir(parents=True, exist_ok=True)
    adaptation = adaptation_of(story)
    daily = trailing_average_precision(story.answers) if len(story.answers) else []
    summary = {k: v for k, v in (adaptation or {}).items() if k != "trailing"} or None
    onset_month = story.onset[:7]
    before = [r.month for r in records if r.month < onset_month and r.served_rows][-1:]
    maturity = maturity_of(story, [*before, onset_month])
    (out / "year_report.json").write_text(json.dumps(
        {"months": [asdict(r) for r in records], "adaptation": summary, "run_seconds": round(story.seconds, 1),
         "label_maturity": maturity,
         "trailing_7d": daily, "adaptation_trailing": (adaptation or {}).get("trailing", [])}, indent=2) + "\n")
    fig = Figure(figsize=(9, 6.5))
    FigureCanvasAgg(fig)
    ax1, ax2 = fig.subplots(2, 1)
    days = [date.fromisoformat(d["day"]) for d in daily]
    ax1.plot(days, [d["average_precision"] if d["average_precision"] is not None else float("nan") for d in daily],
             lw=1.2, label="served AUPRC, trailing 7 days")
    for r in records:
        for t in r.retrains:
            when = date.fromisoformat(t["as_of"][:10]) if t.get("as_of") else date.fromisoformat(
                f"{t['holdout_month']}-28")
            ax1.scatter([when], [t["challenger_average_precision"]], marker="^" if t["promoted"] else "x",
                        color="tab:green" if t["promoted"] else "tab:red", zorder=3)
    if adaptation is not None:
        onset = date.fromisoformat(adaptation["onset"])
        ax1.axvline(onset, color="tab:red", ls="--", lw=1, label=f"{PATTERN} onset")
        ax1.axhline(adaptation["level"], color="grey", ls=":", lw=1, label="level of the 4 weeks before")
        end = date.fromisoformat(adaptation["recovered_on"]) if adaptation["recovered_on"] else days[-1]
        ax1.axvspan(onset, end, color="tab:red", alpha=0.12,
                    label=f"degraded: {adaptation['days_degraded']} days")
    ax1.set(ylabel="AUPRC", ylim=(0, 1), title="Served champion (triangles: promoted challengers, x: refused)")
    ax1.legend(fontsize=7, loc="lower right")
    x = [r.month for r in records]
    ax2.bar(x, [r.max_psi or 0 for r in records], color=["tab:red" if r.drift_detected else "tab:blue"
                                                          for r in records])
    ax2.set(ylabel="max feature PSI", title="Drift (red: detected in a part of the month)")
    ax2.tick_params(axis="x", rotation=45)
    fig.tight_layout()
    fig.savefig(out / "year_story.png", dpi=90)
    lines = ["# The year story", "",
             "Twelve simulated months arriving a week at a time; card testing switches on mid-year. Each week the",
             "served champion scores the week live, the labels that arrived are posted, the week is appended to its",
             "month's snapshot and pinned, the real sensors decide what runs.", "",
             "![year story](year_story.png)", ""]
    if adaptation is not None:
        state = (f"back to {adaptation['level']:.3f} on {adaptation['recovered_on']}" if adaptation["recovered"]
                 else "never back to its level")
        lines += [f"**Adaptation to {PATTERN}** (onset {adaptation['onset']}): **{adaptation['days_degraded']} days "
                  f"degraded**; the served AUPRC over the trailing 7 days was {state} (level: its AUPRC over the 4 "
                  "weeks before the onset).", ""]
    lines += ["| month | tx | card testing | champion | served AUPRC | alerts | drift | retrain | champion after |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in records:
        ap = f"{r.served_average_precision:.3f}" if r.served_average_precision is not None else "-"
        retrain = "<br>".join(_retrain_cell(t) for t in r.retrains) or "-"
        drift = ("yes: " + "; ".join(r.drift_reasons)) if r.drift_detected else "no"
        lines.append(f"| {r.month} | {r.rows} | {r.card_testing_rows} | {r.champion_before or '-'} | {ap} | "
                     f"{r.served_alerts} | {drift} | {retrain} | {r.champion_after or '-'} |")
    truth = {r.month: r.served_average_precision for r in records}
    for month, table in maturity.items():
        lines += ["", f"**{month}'s served AUPRC as its labels arrive** (every label known: "
                  f"{truth[month]:.3f}):" if truth.get(month) is not None else f"**{month}** as its labels arrive:", "",
                  "| days after the month | rows labelled | frauds known | AUPRC on the labelled rows |",
                  "| --- | --- | --- | --- |"]
        lines += [f"| {t['day']} | {t['labelled_share']:.0%} | {t['frauds_known']} | "
                  f"{t['average_precision']:.3f} |" if t["average_precision"] is not None else
                  f"| {t['day']} | {t['labelled_share']:.0%} | {t['frauds_known']} | - |" for t in table]
    lines += ["", f"Run time: {story.seconds:.0f} s."]
    path = out / "year_report.md"
    path.write_text("\n".join(lines) + "\n")
    return path
