"""A refused version is retried after a doubling backoff, not downloaded again every reload interval."""

import pytest

from serving.refusals import RefusalMemory


def test_a_refused_version_waits_a_doubling_backoff_up_to_the_cap() -> None:
    memory = RefusalMemory(interval_s=5.0, max_backoff_s=60.0)
    assert memory.waiting("7", now=0.0) is None  # never refused: try it
    first = memory.refused("7", "v7 refused: corrupt", now=0.0)
    assert (first.attempts, first.retry_at) == (1, 10.0)
    assert memory.waiting("7", now=9.9) is first and memory.waiting("7", now=10.0) is None
    retries = [memory.refused("7", "v7 refused: corrupt", now=t).retry_at - t for t in (10.0, 30.0, 70.0, 130.0)]
    assert retries == [20.0, 40.0, 60.0, 60.0]  # 2x, 4x, 8x the interval, then the cap


def test_another_version_is_tried_at_once_and_a_load_forgets() -> None:
    memory = RefusalMemory(interval_s=1.0)
    memory.refused("7", "v7 refused", now=0.0)
    assert memory.waiting("8", now=0.5) is None  # the alias moved on: the new version is tried now
    assert memory.refused("8", "v8 refused", now=0.5).attempts == 1
    memory.forget()
    assert memory.latest is None and memory.waiting("8", now=0.6) is None


def test_the_backoff_needs_a_positive_interval_below_the_cap() -> None:
    with pytest.raises(ValueError, match="interval_s"):
        RefusalMemory(interval_s=0.0)
    with pytest.raises(ValueError, match="max_backoff_s"):
        RefusalMemory(interval_s=10.0, max_backoff_s=5.0)
