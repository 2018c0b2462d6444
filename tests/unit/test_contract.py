"""The contract a model version carries: its feature definition, the rebuild with its own knobs, and the
promotion decision that refuses when the champion moved since the evaluation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fraud_assets.core.contract import (
    feature_definition,
    holdout_as_trained,
    parse_definition,
    rebuild_features,
    unbuildable,
)
from fraud_assets.core.features import FEATURE_COLUMNS, build_features_by_month
from fraud_assets.core.promote import Decision, confirm_champion
from fraud_assets.core.simulate import simulate_months
from fraud_assets.params import load_params

P = load_params()
OTHER = P.features.model_copy(update={"label_delay_days": 1, "burst_window_seconds": 900})


@pytest.fixture(scope="module")
def months() -> dict[str, pd.DataFrame]:
    data = P.data.model_copy(update={"n_customers": 300, "n_terminals": 60})
    return simulate_months(data, "2025-01", 3)


def test_definition_round_trips_through_json() -> None:
    d = feature_definition(OTHER)
    assert parse_definition(d.to_json()) == d and d.params == OTHER
    assert list(d.columns) == FEATURE_COLUMNS and unbuildable(d) == []


def test_definition_from_other_code_names_what_is_missing() -> None:
    raw = feature_definition(P.features).to_dict()
    raw["windows"]["terminal_days"] = [1, 7, 90]
    raw["columns"] = [*raw["columns"], "terminal_count_90d"]
    problems = unbuildable(parse_definition(raw))
    assert problems == ["terminal windows [90] (this code builds [1, 7, 30])", "columns ['terminal_count_90d']"]
    with pytest.raises(ValueError, match="malformed feature definition"):
        parse_definition({"params": raw["params"], "columns": raw["columns"]})  # no windows


def test_holdout_rebuilt_with_the_champions_knobs_equals_batch_mode_with_them(months: dict) -> None:
    """The evaluation scores a champion trained with other knobs on the same rows, built as it was trained."""
    today = build_features_by_month(months, P.features)
    *history, holdout = (today[m] for m in sorted(today))
    rebuilt, note = holdout_as_trained(OTHER, P.features, holdout, history)
    expected = build_features_by_month(months, OTHER)["2025-03"]
    assert rebuilt["transaction_id"].tolist() == holdout["transaction_id"].tolist()
    np.testing.assert_allclose(rebuilt[FEATURE_COLUMNS].to_numpy(), expected[FEATURE_COLUMNS].to_numpy(), atol=1e-9)
    assert not np.allclose(rebuilt[FEATURE_COLUMNS].to_numpy(), holdout[FEATURE_COLUMNS].to_numpy())
    assert "label_delay_days 1 (now 7)" in note and "burst_window_seconds 900" in note
    same, note = holdout_as_trained(P.features, P.features, holdout, history)
    assert same is holdout and note == "scored on the same holdout"


def test_rebuild_keeps_each_parts_rows_and_index(months: dict) -> None:
    a, b = months["2025-01"], months["2025-02"].set_axis(range(10_000, 10_000 + len(months["2025-02"])))
    first, second = rebuild_features(OTHER, [a, b])
    assert first.index.equals(a.index) and second.index.equals(b.index)
    assert second["transaction_id"].tolist() == b["transaction_id"].tolist()


def test_promotion_is_refused_when_the_champion_moved_since_the_evaluation() -> None:
    go = Decision(True, "beats champion: ...")
    assert confirm_champion(go, "3", "3") is go
    assert confirm_champion(go, None, None) is go
    moved = confirm_champion(go, "3", "5")
    assert not moved.promote and "champion changed since the evaluation (v3 then, v5 now)" in moved.reason
    appeared = confirm_champion(go, None, "2")
    assert not appeared.promote and "v- then, v2 now" in appeared.reason
    stay = Decision(False, "does not beat champion")
    assert confirm_champion(stay, "3", "5") is stay
