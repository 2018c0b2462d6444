"""Replay transactions through the online feature path, each against a store holding exactly what came before it.

The store is always a scratch one of the same kind as the team's (:func:`scratch_store`): a temporary SQLite file,
or a temporary schema in the same PostgreSQL database, dropped afterwards. The real online store is never opened.
"""

from __future__ import annotations

import secrets
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fraud_assets.adapters.online_store import (
    OnlineFeatures,
    PostgresTransactionStore,
    SqliteTransactionStore,
    TransactionStore,
)
from fraud_assets.core.features import FEATURE_COLUMNS, LABEL
from fraud_assets.core.parity import by_time
from fraud_assets.params import FeatureParams
from fraud_assets.windows import DAY_S, lookback_days

TX_COLUMNS = ["transaction_id", "tx_datetime", "customer_id", "terminal_id", "amount"]
_SCHEMA_PREFIX = "fraud_parity_"


def is_postgres(location: str) -> bool:
    """Whether an online store location is a PostgreSQL URL (else it is a SQLite path)."""
    return str(location).startswith(("postgresql://", "postgres://"))


@contextmanager
def scratch_store(location: str) -> Iterator[tuple[TransactionStore, str]]:
    """An empty store of the same kind as ``location`` and a phrase naming it; it is removed on exit."""
    if not is_postgres(location):
        with tempfile.TemporaryDirectory(prefix="fraud-parity-") as folder:
            store = SqliteTransactionStore(Path(folder) / "online_store.sqlite")
            try:
                yield store, "a temporary SQLite file"
            finally:
                store.close()
        return
    import psycopg
    from psycopg import sql

    schema = _SCHEMA_PREFIX + secrets.token_hex(6)  # generated, never user input; quoted as an identifier anyway
    with psycopg.connect(location, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
        try:
            store = PostgresTransactionStore(location, schema=schema)
            try:
                yield store, f"PostgreSQL schema {schema} (dropped afterwards)"
            finally:
                store.close()
        finally:
            admin.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))


def _seconds(frame: pd.DataFrame) -> np.ndarray:
    """Epoch seconds of ``tx_datetime`` (floored, as the feature code and the stores floor them)."""
    return (pd.to_datetime(frame["tx_datetime"], utc=True).astype("int64") // 1_000_000_000).to_numpy(np.int64)


def _add_labelled(store: TransactionStore, rows: list[dict[str, Any]]) -> None:
    """Store new rows with their labels as serving does (append, then the labels): a seed's end state, without a
    pandas round trip for every few rows."""
    store.append(rows)
    store.add_labels([r for r in rows if not pd.isna(r[LABEL])])


def replay_online(store: TransactionStore, history: pd.DataFrame, month: pd.DataFrame, sample: pd.DataFrame,
                  p: FeatureParams) -> pd.DataFrame:
    """Online features of ``sample`` (rows of ``month``), each from ``store`` holding exactly the rows before it.

    ``store`` starts empty and is seeded, with labels, by the rows of ``history`` (earlier months) within the
    lookback of the first sampled transaction; then ``month``'s rows strictly before each sampled second are
    added with their labels, in chunks as time advances. Returns ``transaction_id``, ``tx_datetime`` and the
    features, in time order.
    """
    queries = by_time(sample)
    q_secs = _seconds(queries)
    if len(queries):
        since = int(q_secs.min()) - lookback_days(p) * DAY_S
        store.seed(history.loc[_seconds(history) >= since] if len(history) else history)
    ordered = by_time(month)
    m_secs, rows = _seconds(ordered), ordered[[*TX_COLUMNS, LABEL]].to_dict("records")
    online = OnlineFeatures(store, p, remember=False)
    values = np.zeros((len(queries), len(FEATURE_COLUMNS)))
    seeded = 0
    for i, tx in enumerate(queries[TX_COLUMNS].to_dict("records")):
        upto = int(np.searchsorted(m_secs, q_secs[i], side="left"))  # rows at the same second are not "before"
        if upto > seeded:
            _add_labelled(store, rows[seeded:upto])
            seeded = upto
        values[i] = online.matrix([tx])[0]
    return pd.concat([queries[["transaction_id", "tx_datetime"]].reset_index(drop=True),
                      pd.DataFrame(values, columns=FEATURE_COLUMNS)], axis=1)
