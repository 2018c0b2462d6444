"""The memory benchmark runs end to end at a small size, so it never rots (no figure is asserted).

The same script as ``make bench-memory`` (``benchmarks/bench_memory.py``), on three months of about 20,000
transactions: the fixture built, the real ``fraud pipeline`` run and sampled, every Dagster step dated, and the
JSON written with the fields the committed results carry.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


def test_the_memory_benchmark_runs_at_a_small_size(tmp_path: Path) -> None:
    out = tmp_path / "memory.json"
    env = {**os.environ, "FRAUD_STATE_DIR": str(tmp_path / "state")}
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_memory.py"), "--rows-per-month",
                           "20000", "--months", "3", "--out", str(out)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    result = json.loads(out.read_text())
    assert result["months"] == 3 and 40_000 < result["transactions"] < 80_000
    assert result["peak_tree_rss_mb"] > 100 and result["kb_per_transaction"] > 0
    steps = {s["stage"].split(" / ")[-1] for s in result["steps"]}
    assert {"validate_month", "transaction_features", "challenger_model", "challenger_evaluation",
            "promotion_decision"} <= steps
    assert result["peak_stage"].split(" / ")[-1] in steps
    assert any(line["line"].startswith("challenger v") for line in result["console"])
