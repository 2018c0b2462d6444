"""pandera schemas of the canonical transaction, shared by Dagster, DVC stages and the import command.

Labels arrive late (chargebacks, investigations): the optional ``label_available_at`` says when a row's label
became known (UTC, never before the transaction). A frame without it follows the rule of
:func:`default_label_available_at`, ``features.label_delay_days`` after the transaction, everywhere it is read.
"""

from __future__ import annotations

from datetime import date

import numpy as np
import pandas as pd
import pandera.pandas as pa
from pandera.typing import Series

from fraud_assets.params import FeatureParams

REQUIRED_COLUMNS = ["transaction_id", "tx_datetime", "customer_id", "terminal_id", "amount", "is_fraud"]
LABEL_AVAILABLE_AT = "label_available_at"
LABEL_AFTER_TX_CHECK = "label_available_at_not_before_tx_datetime"


def default_label_available_at(tx_datetime: pd.Series, p: FeatureParams) -> pd.Series:
    """When the labels of transactions at ``tx_datetime`` are known if nothing says otherwise: ``label_delay_days``
    after each transaction (UTC), the rule the features followed before arrival times were recorded."""
    when = pd.to_datetime(tx_datetime, utc=True) + pd.Timedelta(days=p.label_delay_days)
    return when.rename(LABEL_AVAILABLE_AT)


class TransactionModel(pa.DataFrameModel):
    """One row per card transaction, with its label."""

    transaction_id: Series[str] = pa.Field(nullable=False, str_length={"min_value": 1})
    tx_datetime: Series[pd.DatetimeTZDtype] = pa.Field(
        nullable=False, dtype_kwargs={"unit": "ns", "tz": "UTC"}
    )
    customer_id: Series[str] = pa.Field(nullable=False, str_length={"min_value": 1})
    terminal_id: Series[str] = pa.Field(nullable=False, str_length={"min_value": 1})
    amount: Series[float] = pa.Field(nullable=False, ge=0)
    is_fraud: Series[int] = pa.Field(nullable=False, isin=[0, 1])
    label_available_at: Series[pd.DatetimeTZDtype] | None = pa.Field(
        nullable=False, dtype_kwargs={"unit": "ns", "tz": "UTC"}
    )

    @pa.check("amount", name="amount_is_finite")
    def _finite(cls, amount: Series[float]) -> Series[bool]:
        return pd.Series(np.isfinite(amount.to_numpy(dtype=float)), index=amount.index)

    @pa.dataframe_check(name=LABEL_AFTER_TX_CHECK)
    def _label_after_tx(cls, df: pd.DataFrame) -> Series[bool]:
        if LABEL_AVAILABLE_AT not in df.columns:
            return pd.Series(True, index=df.index)
        arrival, tx = df[LABEL_AVAILABLE_AT], df["tx_datetime"]
        return arrival.isna() | tx.isna() | (arrival >= tx)  # missing values fail their own column's check

    class Config:
        coerce = True
        strict = False  # extra columns (e.g. the simulator's oracle) are kept, never used as features


def transaction_schema(max_amount: float, min_tx_date: date, month_start: pd.Timestamp | None = None,
                       month_end: pd.Timestamp | None = None) -> pa.DataFrameSchema:
    """The transaction schema with ``amount <= max_amount`` and timestamps from ``min_tx_date`` (UTC midnight);
    with month bounds, timestamps must also fall in ``[month_start, month_end)``."""
    schema = TransactionModel.to_schema()
    schema = schema.update_column("transaction_id", unique=True, report_duplicates="exclude_first")
    earliest = pd.Timestamp(min_tx_date, tz="UTC")
    at_most = pa.Check(lambda s: s <= max_amount, name=f"amount_at_most[{max_amount:.15g}]")
    not_before = pa.Check(lambda s: s >= earliest, name=f"tx_datetime_not_before[{min_tx_date:%Y-%m-%d}]")
    for column, check in (("amount", at_most), ("tx_datetime", not_before)):
        schema = schema.update_column(column, checks=[*schema.columns[column].checks, check])
    if month_start is not None and month_end is not None:
        in_month = pa.Check(
            lambda s: (s >= month_start) & (s < month_end),
            name=f"tx_datetime_in_month[{month_start:%Y-%m}]",
            element_wise=False,
        )
        col = schema.columns["tx_datetime"]
        schema = schema.update_column("tx_datetime", checks=[*col.checks, in_month])
    return schema
