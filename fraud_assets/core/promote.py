"""Champion / challenger: promote only a challenger that passes the bars and beats the champion."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from fraud_assets.params import PromoteParams


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str


def _bars(p: PromoteParams) -> dict[str, float]:
    return {"average_precision": p.min_average_precision, "roc_auc": p.min_roc_auc}


def minimum_bar_failures(metrics: Mapping[str, float], p: PromoteParams) -> list[str]:
    """The absolute bars ``metrics`` fails (empty when it passes them all)."""
    return [f"{k} {metrics[k]:.4f} < {v:.4f}" for k, v in _bars(p).items() if metrics[k] < v]


def blocking_bar_failures(challenger: Mapping[str, float], champion: Mapping[str, float] | None,
                          p: PromoteParams) -> list[str]:
    """The bars that stop the challenger: those it fails that the champion, on the same holdout, meets (all it fails
    when there is no champion). A bar keeps a bad model from serving; it never holds back a challenger in favour of
    a champion that fails it too on the rows both are judged on (a new pattern both miss, say): beating the
    champion then decides."""
    return [f"{k} {challenger[k]:.4f} < {v:.4f}" for k, v in _bars(p).items()
            if challenger[k] < v and (champion is None or champion[k] >= v)]


def decide_promotion(challenger: Mapping[str, float], champion: Mapping[str, float] | None,
                     p: PromoteParams) -> Decision:
    """Promote when the challenger passes the bars (:func:`blocking_bar_failures`) and beats the champion (same
    holdout) by the margin."""
    failures = blocking_bar_failures(challenger, champion, p)
    if failures:
        return Decision(False, "below minimum bars: " + "; ".join(failures))
    m = p.primary_metric
    if champion is None:
        return Decision(True, f"no champion yet; challenger {m} {challenger[m]:.4f} passes the bars")
    gain = challenger[m] - champion[m]
    verdict = f"challenger {m} {challenger[m]:.4f} vs champion {champion[m]:.4f} (gain {gain:+.4f}, " \
              f"margin {p.min_improvement:.4f})"
    if gain >= p.min_improvement:
        return Decision(True, "beats champion: " + verdict)
    return Decision(False, "does not beat champion: " + verdict)


def rollback_target(history: Sequence[Mapping[str, str]]) -> str | None:
    """The version a rollback returns to: the champion before the current one, skipping rolled-back ones.

    ``history`` is the alias's moves, oldest first (``version``, ``previous_version``, ``kind``). Moves
    push the version they replaced; a rollback pops it, so repeated rollbacks walk further back
    instead of flipping between two versions.
    """
    earlier: list[str] = []
    for move in history:
        if move.get("kind") == "rollback":
            if earlier:
                earlier.pop()
        elif move.get("previous_version") and move["previous_version"] != move["version"]:
            earlier.append(move["previous_version"])
    return earlier[-1] if earlier else None


def confirm_champion(decision: Decision, evaluated: str | None, current: str | None) -> Decision:
    """``decision`` if the champion is still the one it was judged against; else a refusal naming both.

    ``evaluated`` is the champion version of the evaluation (None: there was none), ``current`` the one the
    alias points at now: a move in between (by hand, or another run) voids the comparison.
    """
    if not decision.promote or evaluated == current:
        return decision
    return Decision(False, f"champion changed since the evaluation (v{evaluated or '-'} then, v{current or '-'} "
                           "now): not moved; evaluate again against the current champion")
