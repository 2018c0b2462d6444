"""Replay transactions through the online feature path, each against a store holding exactly what came before it.

"What came before" is the transactions strictly before each replayed second and the labels that arrived strictly
before it: each label is posted to the store (``add_labels``, with its ``label_available_at``) once its arrival
time has passed, as ``POST /labels`` would, so the audit covers labels read by arrival time.

The store is always a scratch one of the same kind as the team's (:func:`scratch_store`): a temporary SQLite file,
or a temporary schema in the same PostgreSQL database, dropped afterwards. The real online store is never opened.
"""

from __future__ import annotations

import secrets
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from fraud_assets.adapters.online_store import (
    OnlineFeatures,
    PostgresTransactionStore,
    SqliteTransactionStore,
    TransactionStore,
)
from fraud_assets.core.features import FEATURE_COLUMNS, LABEL, label_arrival_seconds
from fraud_assets.core.parity import by_time
from fraud_assets.params import FeatureParams
from fraud_assets.schemas import LABEL_AVAILABLE_AT
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


class _Labels:
    """Labels waiting for their arrival, in the order they are posted: each once its arrival (and its transaction,
    should a label be dated before it) lies strictly before the replayed second."""

    def __init__(self, frames: list[pd.DataFrame], p: FeatureParams) -> None:
        parts = [f.loc[f[LABEL].notna()] for f in frames if len(f)]
        labelled = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=["transaction_id", LABEL])
        arrival = label_arrival_seconds(labelled, p) if len(labelled) else np.zeros(0, np.int64)
        posted = np.maximum(arrival, _seconds(labelled)) if len(labelled) else arrival  # never before the row
        order = np.argsort(posted, kind="stable")
        self.due_s = posted[order]
        self.labels = [{"transaction_id": str(tid), LABEL: int(label),
                        LABEL_AVAILABLE_AT: datetime.fromtimestamp(int(at), UTC)}
                       for tid, label, at in zip(labelled["transaction_id"].to_numpy()[order],
                                                 labelled[LABEL].to_numpy()[order], arrival[order], strict=True)]
        self.posted = 0

    def post_before(self, store: TransactionStore, second: int) -> None:
        """Post the labels that arrived strictly before ``second`` and were not posted yet."""
        due = int(np.searchsorted(self.due_s, second, side="left"))
        if due > self.posted:
            store.add_labels(self.labels[self.posted:due])
            self.posted = due


def replay_online(store: TransactionStore, history: pd.DataFrame, month: pd.DataFrame, sample: pd.DataFrame,
                  p: FeatureParams) -> pd.DataFrame:
    """Online features of ``sample`` (rows of ``month``), each from ``store`` holding exactly the past before it.

    ``store`` starts empty and is seeded by the rows of ``history`` (earlier months) within the lookback of the
    first sampled transaction, with the labels that arrived before it; then, as time advances, ``month``'s rows
    strictly before each sampled second are added without labels (as serving appends what it scores) and every
    label that arrived strictly before that second is posted with its arrival time (``label_available_at``; the
    default rule where a frame has none). Returns ``transaction_id``, ``tx_datetime`` and the features, in time
    order.
    """
    queries = by_time(sample)
    q_secs = _seconds(queries)
    past = history
    if len(queries) and len(history):
        first = int(q_secs.min())
        past = history.loc[_seconds(history) >= first - lookback_days(p) * DAY_S]
        arrived = label_arrival_seconds(past, p) < first
        store.seed(past.assign(**{LABEL: past[LABEL].where(arrived)}))  # with the labels known by the first query
        past = past.loc[~arrived]  # the others wait for their arrival
    ordered = by_time(month)
    m_secs, rows = _seconds(ordered), ordered[TX_COLUMNS].to_dict("records")
    labels = _Labels([past, ordered], p)
    online = OnlineFeatures(store, p, remember=False)
    values = np.zeros((len(queries), len(FEATURE_COLUMNS)))
    seeded = 0
    for i, tx in enumerate(queries[TX_COLUMNS].to_dict("records")):
        upto = int(np.searchsorted(m_secs, q_secs[i], side="left"))  # rows at the same second are not "before"
        if upto > seeded:
            store.append(rows[seeded:upto])
            seeded = upto
        labels.post_before(store, int(q_secs[i]))
        values[i] = online.matrix([tx])[0]
    return pd.concat([queries[["transaction_id", "tx_datetime"]].reset_index(drop=True),
                      pd.DataFrame(values, columns=FEATURE_COLUMNS)], axis=1)
