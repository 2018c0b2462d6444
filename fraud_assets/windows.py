"""The time windows of the feature definitions, and how far back in time they read.

They name the columns a model is trained on (``customer_count_7d``), so they are part of the feature contract,
not knobs: the knobs that change values but not names (label delay, burst window, new-terminal window, night
hours) are ``params.yaml`` ``features``. Both the feature code (``core.features``) and the parameter checks
(``params``) read this module, which imports nothing of the project.
"""

from __future__ import annotations

from typing import Protocol

DAY_S = 86_400
CUSTOMER_WINDOWS_DAYS = (1, 7, 30)
TERMINAL_WINDOWS_DAYS = (1, 7, 30)


class _WindowKnobs(Protocol):
    label_delay_days: int
    new_terminal_days: int


def lookback_days(p: _WindowKnobs) -> int:
    """How many days of past transactions the features of a transaction can read (the longest window, the
    terminal windows and the card's label history shifted by the label delay, the new-terminal window)."""
    return max(max(CUSTOMER_WINDOWS_DAYS), p.new_terminal_days, p.label_delay_days + max(TERMINAL_WINDOWS_DAYS), 1)
