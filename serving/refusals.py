"""What a replica remembers of the versions it refused, so a refused version is not downloaded again every
reload interval: it is retried after a backoff that doubles from ``2 x serve.reload_interval_s`` up to
``max_backoff_s`` (a transient failure, such as the registry being down, still heals on its own; a corrupt
version costs one download per backoff instead of one per interval). Pure: the replica passes the clock.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Refusal:
    """A refused version, why (one line, as ``/ready`` shows it), how often it failed and when to try again."""

    version: str
    error: str
    attempts: int
    retry_at: float


class RefusalMemory:
    """The latest refused version of this replica (the alias names one version at a time)."""

    def __init__(self, interval_s: float, max_backoff_s: float = 300.0) -> None:
        if interval_s <= 0 or max_backoff_s < interval_s:
            raise ValueError(f"backoff needs 0 < interval_s <= max_backoff_s, got {interval_s}, {max_backoff_s}")
        self._interval_s, self._max_s = interval_s, max_backoff_s
        self.latest: Refusal | None = None

    def waiting(self, version: str, now: float) -> Refusal | None:
        """The refusal of ``version`` while its retry is not due yet (skip it), else None (try it)."""
        r = self.latest
        return r if r is not None and r.version == version and now < r.retry_at else None

    def refused(self, version: str, error: str, now: float) -> Refusal:
        """Record one more failed attempt of ``version``; the next is due after the doubled backoff."""
        attempts = self.latest.attempts + 1 if self.latest is not None and self.latest.version == version else 1
        backoff = min(self._max_s, self._interval_s * 2 ** attempts)
        self.latest = Refusal(version, error, attempts, now + backoff)
        return self.latest

    def forget(self) -> None:
        """A version loaded (or the alias came back to the serving one): nothing is refused any more."""
        self.latest = None
