"""The guarded store serving uses: a locked or failing store slows no answer and loses no transaction."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from fraud_assets.adapters.online_store import (
    OnlineFeatures,
    Rows,
    SqliteTransactionStore,
    StoreUnavailable,
    WritesHeldBack,
)
from fraud_assets.adapters.resilient_store import ResilientStore
from fraud_assets.core.features import FEATURE_COLUMNS
from fraud_assets.params import load_params


def _tx(i: int, customer: str = "c1", terminal: str = "k1", day: int = 10) -> dict[str, Any]:
    return {"transaction_id": f"t{i}", "tx_datetime": f"2025-03-{day:02d}T{i % 24:02d}:00:00+00:00",
            "customer_id": customer, "terminal_id": terminal, "amount": 10.0 + i}


def _seeded(tmp_path: Path, timeout_s: float = 0.05) -> SqliteTransactionStore:
    store = SqliteTransactionStore(tmp_path / "store.sqlite", timeout_s=timeout_s)
    past = pd.DataFrame([_tx(i, day=1 + i % 5) for i in range(20)])
    past["tx_datetime"] = pd.to_datetime(past["tx_datetime"], utc=True)
    past["is_fraud"] = [i % 7 == 0 for i in range(20)]
    store.seed(past)
    return store


class _Flaky:
    """A store whose reads or writes fail on demand (to isolate the breaker from a real fault)."""

    def __init__(self, inner: SqliteTransactionStore) -> None:
        self.inner, self.fail_reads, self.fail_writes, self.reads = inner, False, False, 0

    def history(self, customers: Sequence[str], terminals: Sequence[str], since_s: int, until_s: int) -> Rows:
        self.reads += 1
        if self.fail_reads:
            raise sqlite3.OperationalError("disk I/O error")
        return self.inner.history(customers, terminals, since_s, until_s)

    def append(self, transactions: Sequence[Mapping[str, Any]], wait: bool = True) -> int:
        if self.fail_writes:
            raise sqlite3.OperationalError("database is locked")
        return self.inner.append(transactions, wait)

    def add_labels(self, labels: Sequence[Mapping[str, Any]]) -> int:
        if self.fail_writes:
            raise sqlite3.OperationalError("database is locked")
        return self.inner.add_labels(labels)

    def close(self) -> None:
        self.inner.close()


def test_a_write_lock_held_by_another_process_costs_no_answer_its_past_or_a_row(tmp_path: Path) -> None:
    """What a seed or prune does to the store (SQLite's write lock, held for seconds): appends wait in the backlog,
    reads still see them, and the backlog reaches the store once the lock goes."""
    p = load_params().features
    store = _seeded(tmp_path)
    guarded = ResilientStore(store, retry_s=0.05)
    reference = OnlineFeatures(_seeded(tmp_path / "ref"), p)  # the same past, written without any lock
    locker = sqlite3.connect(tmp_path / "store.sqlite", isolation_level=None)
    locker.execute("BEGIN IMMEDIATE")
    try:
        online = OnlineFeatures(guarded, p)
        for i in range(100, 130):  # each transaction must see the ones before it, held in the backlog
            tx = _tx(i, customer=f"c{i % 3}", terminal=f"k{i % 4}", day=11)
            started = time.monotonic()
            got, degraded = online.matrix_with_status([tx])
            assert time.monotonic() - started < 2.0  # bounded by the store's timeout, never its 30 s default
            assert not degraded
            np.testing.assert_allclose(got, reference.matrix([tx]), rtol=0, atol=1e-9)
        assert guarded.status().pending_rows == 30 and store.count() == 20
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    deadline = time.monotonic() + 10
    while guarded.status().pending_rows and time.monotonic() < deadline:
        time.sleep(0.02)
    status = guarded.status()
    assert store.count() == 50 and status.pending_rows == 0 and status.written_late == 30
    assert status.dropped_rows == 0 and status.error is None
    assert guarded.close() == 0


def test_an_unreadable_store_degrades_answers_fast_and_retries_after_a_pause(tmp_path: Path) -> None:
    p = load_params().features
    now = [0.0]
    flaky = _Flaky(_seeded(tmp_path))
    guarded = ResilientStore(flaky, retry_s=1.0, clock=lambda: now[0])
    online = OnlineFeatures(guarded, p)
    tx = _tx(200, day=12)
    healthy, degraded = online.matrix_with_status([tx])
    assert not degraded
    flaky.fail_reads = True
    got, degraded = online.matrix_with_status([tx])
    assert degraded and flaky.reads == 2
    np.testing.assert_array_equal(got, OnlineFeatures(SqliteTransactionStore(tmp_path / "empty.sqlite"), p,
                                                      remember=False).matrix([tx]))  # as a first-ever transaction
    assert not np.array_equal(got, healthy)
    with pytest.raises(StoreUnavailable):  # within retry_s: no read at all
        guarded.history(["c1"], ["k1"], 0, 2**40)
    assert flaky.reads == 2 and "disk I/O error" in guarded.status().error
    flaky.fail_reads, now[0] = False, 1.5
    assert not online.matrix_with_status([tx])[1] and flaky.reads == 3
    assert guarded.status().failed_reads == 1 and guarded.status().error is None
    guarded.close()


def test_the_backlog_is_bounded_and_drops_the_oldest_counted(tmp_path: Path) -> None:
    flaky = _Flaky(_seeded(tmp_path))
    flaky.fail_writes = True
    dropped: list[int] = []
    guarded = ResilientStore(flaky, retry_s=0.05, max_pending_rows=10, on_dropped=dropped.append)
    for i in range(15):
        assert guarded.append([_tx(300 + i, day=13)]) == 0
    status = guarded.status()
    assert status.pending_rows == 10 and status.dropped_rows == 5 and sum(dropped) == 5
    flaky.fail_writes = False
    guarded.close()
    ids = set(flaky.inner.history_frame(["c1"], ["k1"], 0, 2**40)["transaction_id"])
    assert {f"t{300 + i}" for i in range(5, 15)} <= ids and not {f"t{300 + i}" for i in range(5)} & ids


def test_labels_wait_for_the_rows_they_label(tmp_path: Path) -> None:
    flaky = _Flaky(_seeded(tmp_path))
    guarded = ResilientStore(flaky, retry_s=0.05)
    flaky.fail_writes = True
    guarded.append([_tx(400, day=14)])
    assert guarded.add_labels([{"transaction_id": "t400", "is_fraud": 1}]) == 0
    assert guarded.status().pending_labels == 1
    flaky.fail_writes = False
    deadline = time.monotonic() + 10
    while (guarded.status().pending_rows or guarded.status().pending_labels) and time.monotonic() < deadline:
        time.sleep(0.02)
    frame = flaky.inner.history_frame(["c1"], ["k1"], 0, 2**40).set_index("transaction_id")
    assert frame.loc["t400", "is_fraud"] == 1
    guarded.close()


def test_labels_written_late_keep_the_time_they_arrived(tmp_path: Path) -> None:
    """A label posted while the store refuses writes counts from when it was posted (the call's wall clock, or its
    own label_available_at), not from when the backlog reached the store."""
    flaky = _Flaky(_seeded(tmp_path))
    wall = [1_741_600_000.9]  # 2025-03-10 09:46:40.9 UTC
    guarded = ResilientStore(flaky, retry_s=0.05, wall_clock=lambda: wall[0])
    guarded.append([_tx(500, day=14), _tx(501, day=14)])
    assert guarded.add_labels([{"transaction_id": "t500", "is_fraud": 1}]) == 1  # healthy: straight in, stamped now
    flaky.fail_writes = True
    assert guarded.add_labels([{"transaction_id": "t501", "is_fraud": 1},
                               {"transaction_id": "t0", "is_fraud": 0, "label_available_at": "2025-03-02T00:00:00Z"}]
                              ) == 0
    wall[0] += 3600.0  # an hour later the store takes writes again
    flaky.fail_writes = False
    deadline = time.monotonic() + 10
    while guarded.status().pending_labels and time.monotonic() < deadline:
        time.sleep(0.02)
    frame = flaky.inner.history_frame(["c1"], ["k1"], 0, 2**40).set_index("transaction_id")
    arrived = frame["label_available_at"]
    assert arrived["t500"] == arrived["t501"] == pd.Timestamp("2025-03-10 09:46:40", tz="UTC")  # floored to seconds
    assert arrived["t0"] == pd.Timestamp("2025-03-02", tz="UTC") and frame.loc["t0", "is_fraud"] == 0
    assert guarded.close() == 0


def test_a_bug_is_not_mistaken_for_an_outage(tmp_path: Path) -> None:
    guarded = ResilientStore(_seeded(tmp_path), retry_s=0.05)
    with pytest.raises(TypeError):
        guarded.history(None, ["k1"], 0, 2**40)  # type: ignore[arg-type]
    with pytest.raises(KeyError):
        guarded.append([{"transaction_id": "x"}])
    assert guarded.status().failed_reads == 0
    guarded.close()


def test_a_slow_statement_is_interrupted_at_the_timeout(tmp_path: Path) -> None:
    """SQLite's busy timeout covers lock waits; the progress handler covers a statement that runs too long."""
    store = SqliteTransactionStore(tmp_path / "s.sqlite", timeout_s=0.1)
    conn = store._connect()
    started = time.monotonic()
    with pytest.raises(sqlite3.OperationalError, match="interrupted"):
        conn.execute("WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n) SELECT COUNT(*) FROM n"
                     ).fetchone()
    assert time.monotonic() - started < 5
    assert len(FEATURE_COLUMNS) and store.count() == 0  # the connection still works afterwards


def test_a_batch_read_gets_the_timeout_per_64_keys_up_to_30_s() -> None:
    """A /predict micro-batch (up to 32 transactions: 64 keys) is bound by serve.store_timeout_s; a 10,000-row
    /predict/batch read gets a budget in proportion, else every large batch would be scored degraded."""
    from fraud_assets.adapters.online_store import read_budget_s

    assert read_budget_s(0.1, 1) == read_budget_s(0.1, 64) == 0.1
    assert read_budget_s(0.1, 6400) == pytest.approx(10.0)
    assert read_budget_s(0.1, 1_000_000) == 30.0 and read_budget_s(60.0, 1) == 60.0


def test_a_batch_write_gets_the_timeout_per_1000_rows_and_reaches_the_store_not_the_backlog(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A /predict/batch of 10,000 rows under a 0.1 s statement timeout: the append gets a budget in proportion (1 s),
    so it is written at once instead of failing into the backlog every time (0.1-0.2 s of inserts on a bank-sized
    store). The store's clock here moves 20 ms each time SQLite's progress handler looks at it (23 times for
    these rows): the write takes about 0.46 s of that clock, over one timeout and within its budget."""
    from fraud_assets.adapters import online_store as store_module
    from fraud_assets.adapters.online_store import write_budget_s

    assert write_budget_s(0.1, 1) == write_budget_s(0.1, 1_000) == 0.1
    assert write_budget_s(0.1, 10_000) == pytest.approx(1.0)
    assert write_budget_s(0.1, 10_000_000) == 30.0 and write_budget_s(60.0, 1) == 60.0
    guarded = ResilientStore(_seeded(tmp_path, timeout_s=0.1))
    rows = [_tx(1_000 + i, customer=f"c{i % 3_000}", terminal=f"k{i % 5_000}", day=1 + i % 28) for i in range(10_000)]

    class _SlowClock:
        now = time.monotonic()

        @classmethod
        def monotonic(cls) -> float:
            cls.now += 0.02
            return cls.now

    monkeypatch.setattr(store_module, "time", _SlowClock)
    assert guarded.append(rows) == 10_000
    status = guarded.status()
    assert status.pending_rows == 0 and status.failed_writes == 0 and guarded.store.count() == 10_020
    guarded.close()


def test_serving_commits_never_checkpoint_the_log_a_thread_of_the_store_does(tmp_path: Path) -> None:
    """SQLite's automatic checkpoint runs inside the commit that crosses 1,000 log pages (tens of ms on a bank-sized
    store, on the answer's path); a store opened for serving leaves that to its own thread."""
    def frames_after_appends(store: SqliteTransactionStore) -> int:
        for i in range(400):
            store.append([_tx(10_000 + 4 * i + j, customer=f"c{i % 50}", terminal=f"k{j}") for j in range(4)])
        pages, copied = store.checkpoint()
        assert copied == pages  # nothing reads meanwhile: all of it is in the database now
        return pages

    plain = SqliteTransactionStore(tmp_path / "plain.sqlite")
    assert plain._connect().execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 1000 and plain.checkpoints_alive()
    assert frames_after_appends(plain) < 1_000  # its commits checkpointed on the way
    serving = SqliteTransactionStore(tmp_path / "serving.sqlite", checkpoint_every_s=3600)
    assert serving._connect().execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
    assert frames_after_appends(serving) > 1_000  # none of the 400 commits did: the log waited for the thread
    assert serving.checkpoints_alive()
    serving.stop_checkpoints()  # one last checkpoint, then the thread ends
    assert not serving.checkpoints_alive() and serving.count() == 1_600

    quick = ResilientStore(SqliteTransactionStore(tmp_path / "quick.sqlite", timeout_s=0.1, checkpoint_every_s=0.05))
    quick.append([_tx(1)])
    deadline = time.monotonic() + 10
    while quick.store.checkpoints_done < 2 and time.monotonic() < deadline:  # the thread checkpoints on its own
        time.sleep(0.05)
    assert quick.store.checkpoints_done >= 2 and quick.alive()
    quick.close()
    assert not quick.store.checkpoints_alive() and not quick.alive()


def test_the_write_ahead_log_starts_over_under_steady_writes(tmp_path: Path) -> None:
    """A PASSIVE checkpoint leaves the frames appended while it copies, so under steady writes the log was never
    whole and never started over: it grew with every append (317 MB after 15,000 scored transactions). The
    checkpoint thread finishes a log of RESTART_PAGES with this process's writes held back, so it stays bounded.

    Every append waits for the lock here, so each one writes its own frames (25,000 in all, well over the bound)
    whatever the machine's speed; the answer path's appends that meet the lock go to the backlog instead (next
    test), which writes them together in fewer frames."""
    from fraud_assets.adapters import online_store

    store = SqliteTransactionStore(tmp_path / "serving.sqlite", timeout_s=0.5, checkpoint_every_s=0.02)
    wal = tmp_path / "serving.sqlite-wal"
    n, largest = 5_000, 0
    for i in range(n):  # about 5 pages a transaction (the table and its indexes): 25,000 frames in all
        assert store.append([_tx(i, customer=f"c{i % 300}", terminal=f"k{i % 700}", day=1 + i % 28)]) == 1
        if i % 100 == 0:
            largest = max(largest, wal.stat().st_size // 4096)
    largest = max(largest, wal.stat().st_size // 4096)
    done = store.checkpoints_done
    store.stop_checkpoints()
    assert store.count() == n and done >= 2 and store.checkpoints_alive() is False
    assert largest < 10 * online_store.RESTART_PAGES, largest  # the log's file: a few checkpoints' worth, not all


def test_an_append_meeting_the_checkpoint_finishing_the_log_goes_to_the_backlog_at_once(tmp_path: Path,
                                                                                       caplog) -> None:
    """While the checkpoint thread holds this process's writes back, a scored transaction is not kept waiting: it
    goes to the backlog (read from there, written right after), and nothing counts as a failure."""
    inner = _seeded(tmp_path, timeout_s=0.5)
    guarded = ResilientStore(inner, retry_s=0.05)
    with inner._writes:  # what checkpoint() holds while it copies the last frames
        with pytest.raises(WritesHeldBack):
            inner.append([_tx(100)], wait=False)
        started = time.perf_counter()
        assert guarded.append([_tx(101, customer="c9")]) == 0
        assert time.perf_counter() - started < 0.05  # not the hold's length: no wait at all
        rows = guarded.history(["c9"], [], 0, 2**40)
        assert len(rows.ts) == 1 and guarded.status().pending_rows == 1
    deadline = time.monotonic() + 5
    while guarded.status().pending_rows and time.monotonic() < deadline:
        time.sleep(0.01)
    status = guarded.status()
    assert status.pending_rows == 0 and status.written_late == 1 and inner.count() == 21
    assert status.failed_writes == 0 and status.error is None and "is back" not in caplog.text
    guarded.close()
