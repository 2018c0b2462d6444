"""Memory of ``fraud pipeline`` at a bank's size: the peak RSS of its whole process tree, per transaction.

Run: ``make bench-memory`` (``.venv/bin/python benchmarks/bench_memory.py [--rows-per-month 290000] [--months 6]``).

The fixture, simulated once and reused from the state folder (``.state/bench/``): a project folder (its own
``params.yaml``, the monthly snapshots pinned by DVC in ``data.dvc``) of ``--months`` simulated months of 5,000 cards
at 10,000 terminals, ``data.mean_tx_per_day`` scaled so the months hold about ``--rows-per-month`` transactions each
on average (the default six months: about 1.75 M, the bank-style export of issue #18). The square grows with the
terminals, as in ``bench_serving.py``, so a card keeps about 8 usual terminals.

Each measurement runs the real command, ``fraud pipeline`` (every month ingested and featurized, then the training
run: challenger, evaluation, promotion), as a subprocess in that folder with a fresh state folder of its own
(``FRAUD_STATE_DIR``: a first run, no champion yet), and samples the summed RSS of the process and all its
descendants every 0.2 s, and its console lines as they come (each with its time). Afterwards the Dagster event log
of that state folder dates every run and step, so each sample is attributed to the step it fell in. Writes
``benchmarks/results/memory.json`` (``--out``): wall time, peak tree RSS, bytes per transaction against the target
(issue #18: at most 0.7 KB a transaction at 1.75 M), the step the peak fell in, and for every run and step its
duration and tree RSS (first sample, peak, last sample). Units are decimal: 1 KB = 1,000 bytes, 1 MB = 10^6 bytes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results" / "memory.json"
CARDS, TERMINALS = 5_000, 10_000
DEFAULT_ROWS, DEFAULT_MONTHS = 290_000, 6
TARGET_KB_PER_TX = 0.7  # issue #18, at 1.75 M transactions
INTERVAL_S = 0.2
# The pipeline's own console lines (runs, the decision), kept in the JSON; anything else (a library's warning) may
# name paths of this machine.
PIPELINE_LINES = ("dagster run ", "challenger v", "  reason: ", "  holdout ")
# Variables that would point the pipeline at another project, state or service than the fixture's own.
_FOREIGN_ENV = ("FRAUD_PROJECT_ROOT", "FRAUD_STATE_DIR", "DAGSTER_HOME", "MLFLOW_TRACKING_URI",
                "FRAUD_MLFLOW_ARTIFACT_ROOT", "FRAUD_PREDICTION_LOG", "FRAUD_ONLINE_STORE", "FRAUD_RAY_ADDRESS",
                "FRAUD_RAY_STORAGE")


# --- the fixture ----------------------------------------------------------------------------------------------

def _fixture(rows_per_month: int, months: int) -> Path:
    """The cached project folder for this size (``fixture.json`` in it says what it holds); built when missing or
    when the simulator's params changed. Its ``params.yaml`` is written again before each run (:func:`_write_params`),
    so the pipeline always runs with the repository's current params."""
    from fraud_assets.params import load_params
    from fraud_assets.settings import state_dir

    base = load_params(ROOT / "params.yaml")
    recipe = json.dumps([rows_per_month, months, CARDS, TERMINALS,
                         base.data.model_dump(mode="json", exclude={"sensitive_columns"})], sort_keys=True)
    folder = state_dir() / "bench" / f"memory-{hashlib.sha256(recipe.encode()).hexdigest()[:12]}"
    if (folder / "fixture.json").exists():
        return folder
    staging = folder.with_name(folder.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    _build_fixture(staging, _overrides(rows_per_month, months))
    shutil.rmtree(folder, ignore_errors=True)
    staging.rename(folder)
    return folder


def _overrides(rows_per_month: int, months: int) -> dict[str, Any]:
    """The params changed for the fixture: 5,000 cards at 10,000 terminals on a square that keeps the default
    density, and the daily rate giving ``rows_per_month`` transactions a month on average over ``months`` months
    (measured on the default population, which the volume follows linearly: cards x their rate)."""
    import numpy as np

    from fraud_assets.core.simulate import simulate_months
    from fraud_assets.params import load_params

    base = load_params(ROOT / "params.yaml")
    d = base.data
    probe = sum(len(f) for f in simulate_months(d, d.start_month, months).values())
    per_card_day = probe / (d.n_customers * d.mean_tx_per_day)  # rows per card per unit of daily rate
    return {"data.n_customers": CARDS, "data.n_terminals": TERMINALS,
            "data.mean_tx_per_day": rows_per_month * months / (CARDS * per_card_day),
            "data.area_size": float(d.area_size * np.sqrt(TERMINALS / d.n_terminals)), "data.months": months,
            "split.train_months": min(base.split.train_months, months - 1)}


def _write_params(project: Path, overrides: dict[str, Any]) -> None:
    """The repository's params with the fixture's ``overrides``, as the project's ``params.yaml``."""
    from fraud_assets.params import load_params

    load_params(ROOT / "params.yaml").updated(overrides).write(project / "params.yaml")


def _build_fixture(project: Path, overrides: dict[str, Any]) -> None:
    from fraud_assets.adapters import dvc_repo
    from fraud_assets.core.months import snapshot_path
    from fraud_assets.core.simulate import iter_months
    from fraud_assets.params import load_params

    started = time.perf_counter()
    _write_params(project, overrides)
    params = load_params(project / "params.yaml")
    data = project / params.data.dir
    data.mkdir(parents=True)
    rows: dict[str, int] = {}
    for month, frame in iter_months(params.data, params.data.start_month, params.data.months):
        frame.to_parquet(snapshot_path(data, month), index=False)
        rows[month] = len(frame)
        print(f"simulated {month}: {len(frame):,} transactions", flush=True)
    dvc_repo.ensure_repo(project)
    dvc_repo.pin_snapshots(project, params.data.dir, push=False)
    (project / "fixture.json").write_text(json.dumps({
        "rows_by_month": rows, "transactions": sum(rows.values()), "cards": CARDS, "terminals": TERMINALS,
        "overrides": overrides, "build_s": round(time.perf_counter() - started, 1)}))


# --- the measurement ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Trace:
    """One ``fraud pipeline`` run: RSS samples ``(unix time, bytes)``, its console lines ``(unix time, text)``."""

    started: float
    ended: float
    returncode: int
    samples: list[tuple[float, int]]
    lines: list[tuple[float, str]]


def _tree_rss(root: Any) -> int:
    """The summed RSS, in bytes, of ``root`` (a ``psutil.Process``) and every descendant alive now."""
    import psutil

    total = 0
    for proc in [root, *root.children(recursive=True)]:
        try:
            total += proc.memory_info().rss
        except psutil.Error:  # a child that ended between the listing and the read
            continue
    return total


def _child_env(project: Path, state: Path) -> dict[str, str]:
    from fraud_assets.settings import TELEMETRY_OFF

    env = {k: v for k, v in os.environ.items() if k not in _FOREIGN_ENV}
    return env | TELEMETRY_OFF | {"FRAUD_PROJECT_ROOT": str(project), "FRAUD_STATE_DIR": str(state),
                                  "PYTHONUNBUFFERED": "1"}


def run_pipeline(project: Path, state: Path) -> Trace:
    """``fraud pipeline`` in ``project`` with the state folder ``state``, sampled every :data:`INTERVAL_S`.

    Raises:
        RuntimeError: the command failed (its last lines of output in the message).
    """
    import psutil

    fraud = Path(sys.executable).with_name("fraud")
    lines: list[tuple[float, str]] = []
    started = time.time()
    proc = subprocess.Popen([str(fraud), "pipeline"], cwd=project, env=_child_env(project, state),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append((time.time(), line.rstrip("\n")))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    root, samples = psutil.Process(proc.pid), []
    while proc.poll() is None:
        try:
            samples.append((time.time(), _tree_rss(root)))
        except psutil.NoSuchProcess:
            break
        time.sleep(INTERVAL_S)
    proc.wait()
    ended = time.time()
    reader.join(10)
    if proc.returncode != 0:
        tail = "\n".join(text for _, text in lines[-20:])
        raise RuntimeError(f"fraud pipeline exited with {proc.returncode}:\n{tail}")
    return Trace(started, ended, proc.returncode, samples, lines)


# --- where the time and the memory went -----------------------------------------------------------------------

@dataclass(frozen=True)
class Span:
    """A Dagster run or one of its steps, from the event log: its name and unix start/end times."""

    name: str
    start: float
    end: float


def _spans(state: Path) -> tuple[list[Span], list[Span]]:
    """The runs (``ingestion+features 2025-01``, ``training 2025-06``) and their steps
    (``training 2025-06 / challenger_model``) of the state folder's Dagster instance, oldest first."""
    import dagster as dg

    runs, steps = [], []
    with dg.DagsterInstance.from_config(str(state / "dagster")) as instance:
        for record in sorted(instance.get_run_records(), key=lambda r: r.start_time or 0.0):
            run = record.dagster_run
            starts: dict[str, float] = {}
            done: list[tuple[str, float, float]] = []
            for entry in instance.all_logs(run.run_id, of_type={dg.DagsterEventType.STEP_START,
                                                                 dg.DagsterEventType.STEP_SUCCESS,
                                                                 dg.DagsterEventType.STEP_FAILURE}):
                key = entry.step_key or "?"
                if entry.dagster_event_type == dg.DagsterEventType.STEP_START:
                    starts[key] = entry.timestamp
                elif key in starts:
                    done.append((key, starts.pop(key), entry.timestamp))
            kind = "training" if any(key == "challenger_model" for key, _, _ in done) else "ingestion+features"
            label = f"{kind} {run.tags.get('dagster/partition', '')}".strip()
            runs.append(Span(label, record.start_time or 0.0, record.end_time or 0.0))
            steps += [Span(f"{label} / {key}", start, end) for key, start, end in done]
    return runs, sorted(steps, key=lambda s: s.start)


def _where(t: float, runs: list[Span], steps: list[Span]) -> str:
    """The step (else the run, else the part of the command outside any run) a sample at ``t`` fell in."""
    for span in steps:
        if span.start <= t <= span.end:
            return span.name
    for span in runs:
        if span.start <= t <= span.end:
            return f"{span.name} (between steps)"
    if not runs or t < runs[0].start:
        return "start-up (imports, definitions, before the first run)"
    if t > runs[-1].end:
        return "after the last run (decision printed, exit)"
    return "between runs"


def _profile(trace: Trace, spans: list[Span]) -> list[dict[str, Any]]:
    """Duration of each span, in order, and the tree RSS (MB) at its first sample, its peak and its last sample."""
    out = []
    for span in spans:
        inside = [rss for t, rss in trace.samples if span.start <= t <= span.end] or [None]
        out.append({"stage": span.name, "start_s": round(span.start - trace.started, 1),
                    "duration_s": round(span.end - span.start, 1), "first_mb": _mb(inside[0]),
                    "peak_mb": _mb(max(inside) if inside[0] is not None else None), "last_mb": _mb(inside[-1])})
    return out


def _mb(rss: int | None) -> int | None:
    return None if rss is None else round(rss / 1e6)


def summarize(trace: Trace, runs: list[Span], steps: list[Span], transactions: int) -> dict[str, Any]:
    """The figures of one run of the pipeline over ``transactions`` rows."""
    t_peak, peak = max(trace.samples, key=lambda s: s[1])
    kb_per_tx = peak / transactions / 1000
    return {"wall_s": round(trace.ended - trace.started, 1), "peak_tree_rss_mb": round(peak / 1e6),
            "kb_per_transaction": round(kb_per_tx, 3), "target_kb_per_transaction": TARGET_KB_PER_TX,
            "target_met": kb_per_tx <= TARGET_KB_PER_TX, "peak_at_s": round(t_peak - trace.started, 1),
            "peak_stage": _where(t_peak, runs, steps), "samples": len(trace.samples),
            "runs": _profile(trace, runs), "steps": _profile(trace, steps)}


def _print(result: dict[str, Any]) -> None:
    print(f"\n{result['transactions']:,} transactions ({result['months']} months, {result['cards']:,} cards, "
          f"{result['terminals']:,} terminals), {result['cores']} cores")
    print(f"{'stage':64} {'start s':>8} {'dur s':>7} {'first MB':>9} {'peak MB':>8} {'last MB':>8}")
    for row in result["steps"]:
        first, peak, last = ("-" if row[k] is None else f"{row[k]:,}" for k in ("first_mb", "peak_mb", "last_mb"))
        print(f"{row['stage']:64} {row['start_s']:>8.1f} {row['duration_s']:>7.1f} {first:>9} {peak:>8} {last:>8}")
    verdict = "met" if result["target_met"] else "MISSED"
    print(f"\nwall {result['wall_s']:.1f} s; peak tree RSS {result['peak_tree_rss_mb']:,} MB at "
          f"{result['peak_at_s']:.1f} s in {result['peak_stage']}")
    print(f"{result['kb_per_transaction']:.3f} KB a transaction ({verdict}: target <= "
          f"{result['target_kb_per_transaction']} KB)")


def main() -> None:
    """Build (or reuse) the fixture, run and sample the pipeline, write the JSON, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows-per-month", type=int, default=DEFAULT_ROWS,
                        help="transactions a month, on average (default: %(default)s)")
    parser.add_argument("--months", type=int, default=DEFAULT_MONTHS, help="months simulated (default: %(default)s)")
    parser.add_argument("--out", type=Path, help=f"where the JSON goes (default: {RESULTS.relative_to(ROOT)} at the "
                        "default size; required at other sizes)")
    args = parser.parse_args()
    if args.months < 2:
        parser.error("--months must be at least 2 (training needs a month before the holdout)")
    default_size = (args.rows_per_month, args.months) == (DEFAULT_ROWS, DEFAULT_MONTHS)
    out = args.out or (RESULTS if default_size else None)
    if out is None:
        parser.error("--out is required at sizes other than the default (the committed results are its figures)")
    from fraud_assets.settings import disable_telemetry

    disable_telemetry()
    project = _fixture(args.rows_per_month, args.months)
    meta = json.loads((project / "fixture.json").read_text())
    _write_params(project, meta["overrides"])
    print(f"fixture: {meta['transactions']:,} transactions in {len(meta['rows_by_month'])} months; running "
          "`fraud pipeline`", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        state = Path(tmp) / "state"
        trace = run_pipeline(project, state)
        runs, steps = _spans(state)
    result = {"transactions": meta["transactions"], "months": len(meta["rows_by_month"]),
              "rows_by_month": meta["rows_by_month"], "cards": meta["cards"], "terminals": meta["terminals"],
              "cores": os.cpu_count(), "interval_s": INTERVAL_S, "units": "decimal: 1 KB = 1000 bytes, 1 MB = 1e6",
              **summarize(trace, runs, steps, meta["transactions"]),
              "console": [{"at_s": round(t - trace.started, 1), "line": text} for t, text in trace.lines
                          if text.startswith(PIPELINE_LINES)]}
    _print(result)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out.name}")


if __name__ == "__main__":
    main()
