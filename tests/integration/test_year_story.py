"""The year story end to end: card testing appears, drift is detected, a retrain is promoted, serving follows."""

from __future__ import annotations

from pathlib import Path

import pytest

from fraud_assets.cli.year_story import run_year, write_report
from fraud_assets.params import load_params

pytestmark = pytest.mark.slow


def test_drift_triggers_a_retrain_that_is_promoted_and_served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                              ) -> None:
    monkeypatch.setenv("FRAUD_API_KEY", "year-story-test-key")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    lines: list[str] = []
    records = run_year(tmp_path / "year", load_params(), months=9, serve=True, log=lines.append)
    assert [r.month for r in records][-1] == "2025-09"
    before = [r for r in records if r.card_testing_rows == 0]
    after = [r for r in records if r.card_testing_rows > 0]
    assert before and after and all(not r.drift_detected for r in before[3:])
    promoted = [(r, t) for r in after for t in r.retrains if t["promoted"] and "drift" in t["trigger"]]
    assert promoted, "no drift-triggered retrain was promoted"
    rec, retrain = promoted[0]
    assert retrain["challenger_average_precision"] > retrain["champion_average_precision"]
    assert rec.serving_version_after == rec.champion_after == retrain["challenger_version"]
    later = [r for r in records if r.month > rec.month]
    assert later and later[0].served_average_precision > rec.served_average_precision
    report = write_report(records, tmp_path / "report")
    text = report.read_text()
    assert "| 2025-07 |" in text and "promoted" in text
    assert (tmp_path / "report" / "year_story.png").stat().st_size > 5000
