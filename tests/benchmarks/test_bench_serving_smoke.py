"""The serving benchmark runs end to end at its ``smoke`` size, so it never rots (no figure is asserted).

The same script as ``make bench-serving`` (``benchmarks/bench_serving.py``), on a few hundred cards and one
second of wrk a phase: the fixture built, the bare FastAPI baseline and ``fraud serve`` started, every phase
answered without an error, and the JSON written with every field the committed results carry. `.ci/run`
installs wrk and sets FRAUD_REQUIRE_WRK=1, so there a missing wrk fails instead of skipping.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


def test_the_serving_benchmark_runs_at_the_smoke_size(tmp_path: Path) -> None:
    if shutil.which("wrk") is None:
        if os.environ.get("FRAUD_REQUIRE_WRK") == "1":
            pytest.fail("wrk is required here (FRAUD_REQUIRE_WRK=1) but not installed")
        pytest.skip("wrk is not installed (apt-get install wrk)")
    out = tmp_path / "serving.json"
    env = {**os.environ, "FRAUD_STATE_DIR": str(tmp_path / "state")}
    env.pop("FRAUD_API_KEY", None)
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_serving.py"), "--size", "smoke",
                           "--duration", "1", "--out", str(out)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    result = json.loads(out.read_text())
    assert result["store_rows"] > 10_000 and result["distinct_cards"] >= 200 and result["distinct_pairs"] >= 500
    for side in ("bare", "service"):
        r = result[side]
        assert r["errors"] == 0 and r["requests_1"] > 0 and r["requests_16"] > 0 and r["batch_rows_s"] > 0, side
    assert set(result["ratios"]) == {"p50_1", "rps_16", "p99_16", "batch_rows"}
    assert result["serving_pss_mb"] > 0 and result["serving_rss_mb"] > 0 and result["mode"]["ingress"] == "haproxy"
    assert {"online_features_p99_ms", "replica_overhead_p50_ms", "targets_met"} <= set(result)
    assert "service / bare" in done.stdout and "Traceback" not in done.stderr
