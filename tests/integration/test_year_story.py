"""The year story end to end: card testing appears, drift is detected, a retrain is promoted, serving follows."""

from __future__ import annotations

import json
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
    # Six months from March (bootstrap on March-May, June served, card testing from July), weekly parts.
    params = load_params(overrides={"data.start_month": "2025-03"})
    story = run_year(tmp_path / "year", params, months=6, serve=True, log=lines.append)
    records = story.records
    assert [r.month for r in records][-1] == "2025-08" and all(r.parts >= 4 for r in records)
    before = [r for r in records if r.card_testing_rows == 0]
    after = [r for r in records if r.card_testing_rows > 0]
    assert before and after and all(not r.drift_detected for r in before[3:])
    promoted = [(r, t) for r in after for t in r.retrains if t["promoted"] and "drift" in t["trigger"]]
    assert promoted, "no drift-triggered retrain was promoted"
    rec, retrain = promoted[0]
    assert retrain["as_of"] and retrain["as_of"] >= "2025-07-01"  # inside the month: the rolling window
    assert retrain["challenger_average_precision"] > (retrain["champion_average_precision"] or 0.0)
    assert retrain["refit_version"]  # the promoted challenger was refit on its whole window
    served = [v for r in records for v in (r.serving_version_after,) if v]
    assert int(served[-1]) >= int(retrain["refit_version"])
    later = [r for r in records if r.month > rec.month]
    assert later and later[-1].served_average_precision > after[0].served_average_precision
    report = write_report(story, tmp_path / "report")
    text = report.read_text()
    assert "| 2025-07 |" in text and "promoted" in text and "days degraded" in text
    assert (tmp_path / "report" / "year_story.png").stat().st_size > 5000
    summary = json.loads((tmp_path / "report" / "year_report.json").read_text())
    adaptation = summary["adaptation"]
    assert adaptation["pattern"] == "card_testing" and adaptation["onset"] == "2025-07-01"
    assert adaptation["recovered"] and 0 <= adaptation["days_degraded"] <= 31
    maturing = summary["label_maturity"]["2025-07"]  # the estimate as labels arrive: shares grow to every label
    shares = [t["labelled_share"] for t in maturing]
    assert [t["day"] for t in maturing] == [0, 7, 14, 30, 60] and shares == sorted(shares) and shares[-1] == 1.0
    assert maturing[-1]["average_precision"] == pytest.approx(after[0].served_average_precision)
