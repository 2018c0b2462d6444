"""The online fast paths: the one-query kernel equals the vectorized features, and the store's covering indexes."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from fraud_assets.core import features as F
from fraud_assets.params import load_params

P = load_params().features
T0 = 1_740_000_000  # 2025-02-19: the queries' second; the history reaches up to 45 days before it
MAX_AMOUNT = load_params().data.max_amount


def _arrivals(rng: np.random.Generator, ts: np.ndarray, now: int) -> np.ndarray | None:
    """Random label arrival times of rows at ``ts``: none at all (the default rule), or per row the rule (NaN), a
    delay of up to 60 days, the query's second or one either side of it, or never (+inf)."""
    if rng.random() < 0.2:
        return None
    n = len(ts)
    options = np.stack([np.full(n, np.nan), ts + rng.integers(0, 60 * F.DAY_S + 1, n), np.full(n, now),
                        np.full(n, now - 1), np.full(n, now + 1), np.full(n, np.inf)]).astype(np.float64)
    return options[rng.integers(0, len(options), n), np.arange(n)]


def _history(rng: np.random.Generator, n: int, cards: int, terminals: int, now: int = T0) -> F.Rows:
    """Random past rows: ties at one second (``now`` too), unknown (NaN) labels, labels arriving before, at and
    after ``now``, amounts from 0 to the maximum or nearly equal."""
    ts = now - rng.integers(0, int(rng.choice([3_600, 10 * F.DAY_S, 45 * F.DAY_S])) + 1, n)
    if n and rng.random() < 0.5:
        ts[rng.integers(0, n, n // 3 + 1)] = rng.choice([ts[0], now])  # many rows in one second, maybe the query's
    amounts = [rng.uniform(0, MAX_AMOUNT, n), np.round(rng.uniform(0, 300, n), 2),
               94.0 + 0.01 * rng.integers(0, 3, n),  # a card whose amounts barely vary: the variance floor
               rng.choice([0.0, 0.01, MAX_AMOUNT, MAX_AMOUNT - 0.01], n)][rng.integers(0, 4)]
    labels = rng.integers(0, 2, n).astype(np.float64)
    labels[rng.random(n) < 0.3] = np.nan
    return F.Rows(ts.astype(np.int64), [f"C{c}" for c in rng.integers(0, cards, n)],
                  [f"T{t}" for t in rng.integers(0, terminals, n)], amounts.astype(np.float64), labels,
                  _arrivals(rng, ts, now))


def _query(rng: np.random.Generator, cards: int, terminals: int) -> F.Rows:
    """One incoming transaction at T0, maybe of a card or at a terminal the history has never seen."""
    return F.Rows(np.array([T0], np.int64), [f"C{rng.integers(0, cards + 1)}"], [f"T{rng.integers(0, terminals + 1)}"],
                  np.array([rng.choice([0.0, 0.01, 42.0, MAX_AMOUNT])]), np.full(1, np.nan))


def test_the_one_query_kernel_equals_the_vectorized_features_on_random_cases() -> None:
    rng = np.random.default_rng(20250219)
    seen = {"empty history": 0, "new terminal": 0, "known terminal": 0, "known fraud": 0, "std": 0, "tie": 0,
            "fraud not arrived": 0, "late fraud arrived": 0}
    delay = P.label_delay_days * F.DAY_S
    for case in range(600):
        cards, terminals = int(rng.integers(1, 6)), int(rng.integers(1, 6))
        history = _history(rng, int(rng.choice([0, 1, 2, 8, 40, 200])), cards, terminals)
        query = _query(rng, cards, terminals)
        # Online mode puts the incoming row in the reference; a caller may not.
        reference = F.Rows.concat([history, query]) if rng.random() < 0.8 else history
        kernel = F._one_query(reference, query, P)
        vectorized = F._window_features(reference, query, P)
        assert set(kernel) == set(vectorized) == set(F.FEATURE_COLUMNS) - set(F.TX_FEATURES)
        for column, value in kernel.items():
            gap = abs(value - float(vectorized[column][0]))
            assert gap <= 1e-9, f"case {case}, {column}: kernel {value} vs vectorized {vectorized[column][0]}"
        seen["empty history"] += len(history.ts) == 0
        seen["new terminal" if kernel["terminal_new_to_customer"] else "known terminal"] += 1
        seen["known fraud"] += kernel["card_days_since_known_fraud"] != F.NO_HISTORY
        seen["std"] += kernel["customer_std_amount_30d"] > 0
        seen["tie"] += bool(np.any(history.ts == query.ts[0]))
        if history.label_at is not None:  # frauds of the label windows whose label comes after the delay
            late = (history.label == 1) & (history.ts < T0 - delay) & (history.label_at > history.ts + delay)
            seen["fraud not arrived"] += bool(np.any(late & (history.label_at >= T0)))
            seen["late fraud arrived"] += bool(np.any(late & (history.label_at < T0)))
    assert min(seen.values()) >= 10, seen  # every situation the kernel must get right came up


def test_one_query_takes_the_kernel_and_equals_its_row_among_several_queries(monkeypatch: pytest.MonkeyPatch
                                                                             ) -> None:
    rng = np.random.default_rng(7)
    history = _history(rng, 300, 4, 4)
    queries = F.Rows.concat([_query(rng, 4, 4) for _ in range(3)])
    hour, weekday = np.array([2, 13, 23]), np.array([0, 5, 6])
    together = F.feature_values(history, queries, hour, weekday, P)  # several queries: vectorized
    calls = []
    monkeypatch.setattr(F, "_window_features", lambda *a: calls.append(a) or pytest.fail("vectorized path taken"))
    for i in range(3):
        one = F.Rows(queries.ts[i:i + 1], queries.customer[i:i + 1], queries.terminal[i:i + 1],
                     queries.amount[i:i + 1], queries.label[i:i + 1], queries.label_at)
        alone = F.feature_values(history, one, hour[i:i + 1], weekday[i:i + 1], P)
        assert alone.shape == (1, len(F.FEATURE_COLUMNS)) and alone.dtype == np.float64
        assert np.abs(alone[0] - together[i]).max() <= 1e-9
    assert not calls


_OLD_SCHEMAS = {
    "before the covering indexes": """
        CREATE INDEX transactions_customer ON transactions (customer_id, ts);
        CREATE INDEX transactions_terminal ON transactions (terminal_id, ts);""",
    "before label arrival times": """
        CREATE INDEX transactions_customer_covering ON transactions (customer_id, ts, terminal_id, amount, is_fraud);
        CREATE INDEX transactions_terminal_covering ON transactions (terminal_id, ts, customer_id, amount, is_fraud);
        """,
}


def _old_store(path: Path, rows: list[tuple], schema: str = "before the covering indexes") -> None:
    """A store as made by an earlier version (the table without ``label_at``, the indexes of then), with ``rows``."""
    with sqlite3.connect(path) as conn:
        conn.executescript("""
            CREATE TABLE transactions (transaction_id TEXT PRIMARY KEY, ts INTEGER NOT NULL, customer_id TEXT NOT NULL,
                terminal_id TEXT NOT NULL, amount REAL NOT NULL, is_fraud INTEGER);""" + _OLD_SCHEMAS[schema])
        conn.executemany("INSERT INTO transactions VALUES (?, ?, ?, ?, ?, ?)", rows)


def _schema_version(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        return int(conn.execute("PRAGMA schema_version").fetchone()[0])


@pytest.mark.parametrize("schema", list(_OLD_SCHEMAS))
def test_an_old_store_gets_label_at_and_the_covering_indexes_and_reads_the_same_rows(tmp_path: Path, schema: str
                                                                                     ) -> None:
    from fraud_assets.adapters.online_store import SqliteTransactionStore

    path = tmp_path / "store.sqlite"
    _old_store(path, [("t0", 100, "A", "T1", 1.0, 0), ("t1", 200, "A", "T2", 2.0, 1), ("t2", 200, "B", "T1", 3.0, None),
                      ("t3", 300, "B", "T1", 4.0, 0), ("t4", 400, "A", "T1", 5.0, 1), ("t5", 500, "C", "T3", 6.0, 0)],
               schema)
    before = _schema_version(path)
    store = SqliteTransactionStore(path)
    migrated = _schema_version(path)
    with sqlite3.connect(path) as conn:
        indexes = {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
        columns = [row[1] for row in conn.execute("PRAGMA table_info(transactions)")]
        plan = " ".join(r[-1] for r in conn.execute(
            "EXPLAIN QUERY PLAN SELECT ts, customer_id, terminal_id, amount, is_fraud, label_at FROM transactions "
            "WHERE customer_id IN (?) AND ts >= ? AND ts < ? UNION ALL "
            "SELECT ts, customer_id, terminal_id, amount, is_fraud, label_at FROM transactions "
            "WHERE terminal_id IN (?) AND ts >= ? AND ts < ? AND customer_id NOT IN (?)", ["A", 0, 1, "T1", 0, 1, "A"]))
    assert indexes == {"sqlite_autoindex_transactions_1", "transactions_by_customer", "transactions_by_terminal"}
    assert columns[-1] == "label_at"
    assert plan.count("COVERING INDEX") == 2, plan  # both halves of the read come from an index alone
    rows = store.history(["A"], ["T1"], 100, 500)  # A's rows, then T1's of other customers
    assert rows.ts.tolist() == [100, 200, 400, 200, 300] and list(rows.customer) == ["A", "A", "A", "B", "B"]
    assert list(rows.terminal) == ["T1", "T2", "T1", "T1", "T1"] and rows.amount.tolist() == [1.0, 2.0, 5.0, 3.0, 4.0]
    np.testing.assert_array_equal(rows.label, [0.0, 1.0, 1.0, np.nan, 0.0])  # a NULL label is NaN
    # Labels stored before arrival times were kept have none: the features read them by the default rule.
    assert np.isnan(rows.label_at).all()
    assert SqliteTransactionStore(path).count() == 6
    assert before < migrated == _schema_version(path)  # migrated once; opening it again changes nothing
    assert store.add_labels([{"transaction_id": "t2", "is_fraud": 1, "label_available_at": "1970-01-01T00:10:00Z"}])
    b = store.history(["B"], [], 0, 1000)  # a label recorded now carries its arrival, the old one still has none
    assert b.ts.tolist() == [200, 300] and b.label.tolist() == [1.0, 0.0]
    np.testing.assert_array_equal(b.label_at, [600.0, np.nan])


def test_a_chunked_history_read_returns_each_row_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from fraud_assets.adapters import online_store as store_module

    _old_store(tmp_path / "store.sqlite", [(f"t{i}", 1000 + i, f"C{i % 7}", f"T{i % 5}", float(i), i % 3 == 0)
                                           for i in range(40)])
    store = store_module.SqliteTransactionStore(tmp_path / "store.sqlite")
    customers, terminals = [f"C{i}" for i in range(4)], ["T0", "T1", "T2"]
    one_read = store.history(customers, terminals, 1000, 1040)
    monkeypatch.setattr(store_module, "_FEW_KEYS", 2)
    chunked = store.history(customers, terminals, 1000, 1040)
    expected = sorted(i for i in range(40) if f"C{i % 7}" in customers or f"T{i % 5}" in terminals)
    assert sorted(chunked.ts.tolist()) == [1000 + i for i in expected]  # every row once (one ts per row here)
    assert sorted(zip(chunked.ts.tolist(), chunked.customer, chunked.terminal, chunked.label.tolist(), strict=True)) \
        == sorted(zip(one_read.ts.tolist(), one_read.customer, one_read.terminal, one_read.label.tolist(), strict=True))



def _plain_read(conn: sqlite3.Connection, customers: list[str], terminals: list[str], since_s: int, until_s: int
                ) -> F.Rows:
    """The history read one row at a time, as the store read before its one-step read."""
    from fraud_assets.adapters import online_store as store_module

    in_c, in_t = ",".join("?" * len(customers)), ",".join("?" * len(terminals))
    statement = (f"SELECT {store_module._READ} FROM transactions WHERE customer_id IN ({in_c}) AND ts >= ? AND ts < ? "
                 f"UNION ALL SELECT {store_module._READ} FROM transactions WHERE terminal_id IN ({in_t}) "
                 f"AND ts >= ? AND ts < ? AND customer_id NOT IN ({in_c})")
    return store_module._rows(conn.execute(statement, [*customers, since_s, until_s, *terminals, since_s, until_s,
                                                       *customers]).fetchall())


def _row_set(r: F.Rows) -> list[tuple]:
    """The rows as a sorted list, amounts by their bits, missing labels and arrivals as -1."""
    return sorted(zip(r.ts.tolist(), r.customer, r.terminal, r.amount.view(np.int64).tolist(),
                      np.nan_to_num(r.label, nan=-1).tolist(), np.nan_to_num(r.label_at, nan=-1).tolist(), strict=True))


@pytest.mark.parametrize("amounts", [
    # whole thousandths: one statement, the store's own order
    [0.0, 0.01, 123.45, 2.675, 999_999.99, MAX_AMOUNT, 0.001, 1e11 + 0.125, 94.01, 0.3],
    # with amounts that are not (0.1 + 0.2, a third, the smallest double, a fourth decimal, above 1e12): read row by
    # row beside the others
    [0.1 + 0.2, 1 / 3, 5e-324, 1e-7, 1e12 + 0.5, 12.3456, 0.0, 0.01, 123.45, MAX_AMOUNT]], ids=["exact", "mixed"])
def test_the_one_step_history_read_returns_every_row_to_the_bit(tmp_path: Path, amounts: list[float]) -> None:
    from fraud_assets.adapters import online_store as store_module

    store = store_module.SqliteTransactionStore(tmp_path / "store.sqlite")
    customers, terminals = ['C"1', "Ç\\2"], ["T0\n", "T1"]  # characters JSON escapes
    store.append([{"transaction_id": f"t{i}", "tx_datetime": datetime.fromtimestamp(T0 - 100 * (i % 4), UTC),
                   "customer_id": customers[i % 2] if i % 5 else "other", "terminal_id": ["T0\n", "T1", "T2"][i % 3],
                   "amount": a} for i, a in enumerate(amounts)])
    arrived = datetime.fromtimestamp(T0 - 50, UTC)
    store.add_labels([{"transaction_id": f"t{i}", "is_fraud": i % 2, "label_available_at": arrived}
                      for i in range(0, len(amounts), 3)])
    got = store.history(customers, terminals, 0, T0 + 1)
    want = _plain_read(store._connect(), customers, terminals, 0, T0 + 1)
    assert len(want.ts) >= 6 and np.isnan(want.label).any() and np.isnan(want.label_at).any()
    assert _row_set(got) == _row_set(want)
    if all(round(a * 1000) / 1000 == a for a in amounts):
        assert got.ts.tolist() == want.ts.tolist() and list(got.customer) == list(want.customer)
        assert got.amount.tobytes() == want.amount.tobytes()
    statement = (f"SELECT {store_module._AGGREGATED} FROM (SELECT {store_module._READ}, {store_module._EXACT} AS e "
                 "FROM transactions WHERE customer_id IN (?) AND ts >= ? AND ts < ? UNION ALL "
                 f"SELECT {store_module._READ}, {store_module._EXACT} AS e FROM transactions "
                 "WHERE terminal_id IN (?) AND ts >= ? AND ts < ? AND customer_id NOT IN (?))")
    plan = " ".join(r[-1] for r in store._connect().execute(f"EXPLAIN QUERY PLAN {statement}",
                                                             ["A", 0, 1, "T1", 0, 1, "A"]))
    assert plan.count("COVERING INDEX") == 2, plan


def test_a_chunked_read_on_several_connections_returns_the_same_rows_in_the_same_order(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from fraud_assets.adapters import online_store as store_module

    _old_store(tmp_path / "store.sqlite", [(f"t{i}", 1000 + i % 37, f"C{i % 23}", f"T{i % 11}", i * 0.5, i % 3 == 0)
                                           for i in range(600)])
    monkeypatch.setattr(store_module, "_FEW_KEYS", 3)  # 8 customer chunks and 4 terminal chunks
    customers, terminals = [f"C{i}" for i in range(23)], [f"T{i}" for i in range(11)]
    one = store_module.SqliteTransactionStore(tmp_path / "store.sqlite").history(customers, terminals, 1000, 1040)
    for threads in (2, 3):
        store = store_module.SqliteTransactionStore(tmp_path / "store.sqlite", read_threads=threads)
        several = store.history(customers, terminals, 1000, 1040)
        assert len(several.ts) == len(one.ts) == 600
        assert several.ts.tolist() == one.ts.tolist() and list(several.customer) == list(one.customer)
        assert list(several.terminal) == list(one.terminal) and several.amount.tobytes() == one.amount.tobytes()
        np.testing.assert_array_equal(several.label, one.label)
    real = store_module._read_aggregated

    def failing(conn: sqlite3.Connection, parts: list) -> F.Rows:  # a chunk a reader thread reads fails
        if "terminal_id IN" in parts[0][0]:
            raise sqlite3.OperationalError("interrupted")
        return real(conn, parts)

    monkeypatch.setattr(store_module, "_read_aggregated", failing)
    with pytest.raises(sqlite3.OperationalError, match="interrupted"):  # raised where the read was asked for
        store.history(customers, terminals, 1000, 1040)
    with pytest.raises(ValueError, match="read_threads"):
        store_module.SqliteTransactionStore(tmp_path / "store.sqlite", read_threads=0)
