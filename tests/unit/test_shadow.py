"""The paired bootstrap of the AUPRC difference (shadow - champion) and the verdict it gives, on synthetic pairs whose
answer is known."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import average_precision_score

from fraud_assets.core import shadow
from fraud_assets.core.shadow import ShadowComparison, compare_shadow, labelled_by, paired_bootstrap, recommend
from fraud_assets.params import load_params

AS_OF = datetime(2025, 4, 1, tzinfo=UTC)


def _labelled(n: int, fraud_rate: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels, a champion that ranks frauds somewhat higher (with ties: scores rounded to 2 decimals) and a shadow
    that ranks them clearly higher."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < fraud_rate).astype(int)
    champion = np.round(rng.random(n) * 0.6 + y * 0.25, 2)
    better = rng.random(n) * 0.6 + y * 0.45
    return y, champion, better


def _comparison(n_frauds: int, low: float, high: float) -> ShadowComparison:
    return ShadowComparison(5000, n_frauds, 0.5, 0.5 + (low + high) / 2, (low + high) / 2, low, high)


def test_identical_scores_differ_by_exactly_zero_and_the_interval_holds_zero() -> None:
    y, champion, _ = _labelled(3000, 0.03)
    result = paired_bootstrap(y, champion, champion.copy(), n_boot=300, seed=1)
    assert result.diff == 0.0 and result.ci_low == 0.0 and result.ci_high == 0.0
    assert result.champion_ap == result.shadow_ap and result.n == 3000 and result.n_frauds == int(y.sum())
    assert recommend(result, min_frauds=30) == "no difference"


def test_a_clearly_better_shadow_has_an_interval_above_zero_and_a_worse_one_below() -> None:
    y, champion, better = _labelled(5000, 0.02)
    up = paired_bootstrap(y, champion, better, n_boot=500, seed=3)
    assert up.diff > 0.1 and 0 < up.ci_low < up.diff < up.ci_high
    assert recommend(up, min_frauds=30) == "better"
    down = paired_bootstrap(y, better, champion, n_boot=500, seed=3)
    assert down.ci_high < 0 and recommend(down, min_frauds=30) == "worse"
    assert down.diff == pytest.approx(-up.diff)


def test_noise_alone_is_no_difference() -> None:
    """Two equally good models that rank differently (independent noise): the interval straddles zero."""
    rng = np.random.default_rng(11)
    y = (rng.random(6000) < 0.03).astype(int)
    a, b = (rng.random(6000) * 0.6 + y * 0.35 for _ in range(2))
    result = paired_bootstrap(y, a, b, n_boot=500, seed=5)
    assert result.ci_low < 0 < result.ci_high and recommend(result, 30) == "no difference"


def test_point_estimates_are_sklearns_average_precision_ties_included() -> None:
    y, champion, better = _labelled(4000, 0.05, seed=2)
    result = paired_bootstrap(y, champion, better, n_boot=100, seed=0)
    assert result.champion_ap == pytest.approx(average_precision_score(y, champion), abs=1e-12)
    assert result.shadow_ap == pytest.approx(average_precision_score(y, better), abs=1e-12)
    assert result.diff == pytest.approx(result.shadow_ap - result.champion_ap, abs=1e-15)


def test_each_resample_is_sklearns_average_precision_with_the_draw_counts_as_weights() -> None:
    """The vectorized AUPRC of a block of resamples, checked against sklearn one resample at a time."""
    y, champion, _ = _labelled(2000, 0.05, seed=4)
    counts = shadow._draw_counts(np.random.default_rng(9), 6, len(y))
    assert (counts.sum(axis=1) == len(y)).all() and (counts == 0).any()  # resamples of size n, with replacement
    ours = shadow._average_precision(counts, shadow._sorted_model(y.astype(np.int32), champion))
    theirs = [average_precision_score(y, champion, sample_weight=w) for w in counts]
    np.testing.assert_allclose(ours, theirs, atol=1e-12)


def test_the_bootstrap_is_seeded() -> None:
    y, champion, better = _labelled(3000, 0.03)
    first, again = (paired_bootstrap(y, champion, better, n_boot=200, seed=7) for _ in range(2))
    other = paired_bootstrap(y, champion, better, n_boot=200, seed=8)
    assert first == again and (other.ci_low, other.ci_high) != (first.ci_low, first.ci_high)


def test_too_few_frauds_is_not_enough_evidence_whatever_the_interval() -> None:
    assert recommend(_comparison(29, 0.05, 0.2), min_frauds=30) == "not enough evidence"
    assert recommend(_comparison(30, 0.05, 0.2), min_frauds=30) == "better"
    assert recommend(_comparison(30, -0.2, -0.05), min_frauds=30) == "worse"
    assert recommend(_comparison(30, -0.01, 0.2), min_frauds=30) == "no difference"


def test_no_fraud_at_all_gives_no_numbers_and_not_enough_evidence() -> None:
    result = paired_bootstrap(np.zeros(50), np.linspace(0, 1, 50), np.linspace(1, 0, 50), n_boot=100, seed=0)
    assert result.n == 50 and result.n_frauds == 0 and np.isnan([result.diff, result.ci_low, result.ci_high]).all()
    assert recommend(result, min_frauds=1) == "not enough evidence"
    empty = paired_bootstrap([], [], [], n_boot=100, seed=0)
    assert empty.n == 0 and recommend(empty, 1) == "not enough evidence"


@pytest.mark.parametrize(("y", "a", "b", "message"), [
    ([0, 1], [0.1, 0.2], [0.3], "one length"),
    ([0, 2], [0.1, 0.2], [0.3, 0.4], "0 or 1"),
    ([0, np.nan], [0.1, 0.2], [0.3, 0.4], "0 or 1"),
    ([0, 1], [0.1, np.nan], [0.3, 0.4], "finite"),
])
def test_bad_input_is_refused_naming_the_problem(y: list, a: list, b: list, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        paired_bootstrap(y, a, b, n_boot=10, seed=0)


def _pairs(y: np.ndarray, champion: np.ndarray, better: np.ndarray, received: list[datetime | None]) -> pd.DataFrame:
    n = len(y)
    return pd.DataFrame({
        "transaction_id": [f"t{i}" for i in range(n)],
        "tx_datetime": pd.date_range("2025-03-01", periods=n, freq="min", tz="UTC"),
        "champion_score": champion, "shadow_score": better, "champion_version": "1",
        "is_fraud": [float(v) if r is not None else np.nan for v, r in zip(y, received, strict=True)],
        "label_available_at": pd.to_datetime(received, utc=True)})


def test_only_labels_received_by_as_of_count() -> None:
    y, champion, better = _labelled(400, 0.2, seed=6)
    received: list[datetime | None] = [AS_OF - timedelta(days=1) if i % 3 == 0 else
                                       AS_OF + timedelta(seconds=1) if i % 3 == 1 else None for i in range(400)]
    pairs = _pairs(y, champion, better, received)
    known = labelled_by(pairs, AS_OF)
    assert len(known) == len(range(0, 400, 3)) and (known["label_available_at"] <= AS_OF).all()
    result = compare_shadow(pairs, AS_OF, n_boot=200, seed=0)
    direct = paired_bootstrap(y[::3], champion[::3], better[::3], n_boot=200, seed=0)
    assert result == direct and result.n_frauds == int(y[::3].sum())
    later = compare_shadow(pairs, AS_OF + timedelta(days=1), n_boot=200, seed=0)  # the next third has arrived
    assert later.n == len(range(0, 400, 3)) + len(range(1, 400, 3))
    with pytest.raises(ValueError, match="timezone-aware"):
        labelled_by(pairs, datetime(2025, 4, 1))


def test_shadow_evidence_reads_the_promote_params() -> None:
    p = load_params().promote
    y, champion, better = _labelled(4000, 0.02, seed=8)
    pairs = _pairs(y, champion, better, [AS_OF - timedelta(hours=1)] * len(y))
    comparison, verdict = shadow.shadow_evidence(pairs, AS_OF, p)
    assert comparison == paired_bootstrap(y, champion, better, p.shadow_bootstrap, p.shadow_seed)
    assert verdict == recommend(comparison, p.shadow_min_frauds) == ("better" if y.sum() >= p.shadow_min_frauds
                                                                     else "not enough evidence")
    assert set(comparison.as_dict()) == {"n", "n_frauds", "champion_ap", "shadow_ap", "diff", "ci_low", "ci_high"}


def test_20000_pairs_and_1000_resamples_take_seconds() -> None:
    y, champion, better = _labelled(20_000, 0.01, seed=10)
    started = time.perf_counter()
    result = paired_bootstrap(y, champion, better, n_boot=1000, seed=0)
    seconds = time.perf_counter() - started
    print(f"\npaired bootstrap, 20,000 pairs x 1,000 resamples: {seconds:.2f} s")
    assert result.ci_low > 0 and seconds < 20  # about 2 s on one core of a busy two-core machine
