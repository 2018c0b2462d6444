"""Keyed tokens for card numbers and other sensitive ids: the same id and key always give the same token.

A token is ``tok_<key id>_<HMAC-SHA256 of the id's UTF-8 bytes, hex>``: 77 characters whatever the id. Without
the key a token can neither be made nor traced back (with it, card numbers are few enough to be tried one by one:
the key is the secret). The key id (eight hex characters of an HMAC of a fixed message under the key) says
which key made a token without revealing the key, so two processes can check that they share one.

Tokenizing is idempotent: a value that already is a token of the current key is left as is, so re-importing
tokenized snapshots, or a replica receiving an id another one already tokenized, never hashes twice. That is safe
for secrecy: a card number (all digits) never has a token's shape, so none is ever kept in clear by being taken for
a token. What it allows is a caller sending a token (read in a log, say) instead of the card number, which scores
against that card's history exactly as the card number would, behind the same API key. A token of *another* key is
refused (:class:`TokenKeyError`) rather than kept or hashed again: either way it would silently never match the ids
of the current key, which is what re-importing old snapshots after a key rotation would do.

Missing values and empty strings are left as they are (they protect nothing and validation must still see them).
The key is an argument everywhere: this module never reads the environment (``settings.token_key`` does).
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import numpy as np
import pandas as pd

from fraud_assets.settings import MIN_TOKEN_KEY_BYTES

PREFIX = "tok_"
_TOKEN = re.compile(r"tok_([0-9a-f]{8})_[0-9a-f]{64}")
_KEY_ID_MESSAGE = b"fraud-assets token key id"


class TokenKeyError(ValueError):
    """A value is a token made with another key than the one given."""


@lru_cache(maxsize=8)
def key_id(key: bytes) -> str:
    """Eight hex characters naming ``key`` (safe to print: they reveal nothing of it).

    Raises:
        ValueError: ``key`` is shorter than ``MIN_TOKEN_KEY_BYTES``.
    """
    if len(key) < MIN_TOKEN_KEY_BYTES:
        raise ValueError(f"a token key must be at least {MIN_TOKEN_KEY_BYTES} bytes, got {len(key)}")
    return hmac.digest(key, _KEY_ID_MESSAGE, "sha256").hex()[:8]


def is_token(value: object) -> bool:
    """Whether ``value`` has the shape of a token (of any key)."""
    return isinstance(value, str) and _TOKEN.fullmatch(value) is not None


def tokenize(value: str, key: bytes) -> str:
    """The token of ``value`` under ``key``; a token of ``key`` and the empty string are returned unchanged.

    Raises:
        TokenKeyError: ``value`` is a token made with another key.
        TypeError: ``value`` is not a string.
    """
    return _token(value, key, key_id(key))


def tokenize_column(series: pd.Series, key: bytes) -> pd.Series:
    """``series`` with every id tokenized (a new Series; missing values stay missing), hashing each distinct id once."""
    kid = key_id(key)
    codes, uniques = pd.factorize(series, use_na_sentinel=True)
    tokens = np.array([_token(v, key, kid, series.name) for v in uniques], dtype=object)
    out = series.to_numpy(dtype=object, copy=True)
    present = codes >= 0
    out[present] = tokens[codes[present]]
    result = pd.Series(out, index=series.index, name=series.name, dtype=object)
    return result.astype(series.dtype) if isinstance(series.dtype, pd.StringDtype) else result


def tokenize_transactions(transactions: list[dict[str, Any]], columns: Sequence[str], key: bytes | None
                          ) -> list[dict[str, Any]]:
    """New dicts with the ``columns`` of each transaction tokenized, or ``transactions`` itself when ``key`` is None.

    For serving, before any store read, log or answer. A column a transaction does not carry stays absent; ids
    repeated in a batch are hashed once.

    Raises:
        TokenKeyError: an id is a token made with another key.
        TypeError: an id is not a string.
    """
    if key is None or not columns:
        return transactions
    kid = key_id(key)
    seen: dict[str, str] = {}
    out = []
    for tx in transactions:
        row = dict(tx)
        for column in columns:
            value = row.get(column)
            if value is not None:
                token = seen.get(value)
                if token is None:
                    token = seen[value] = _token(value, key, kid, column)
                row[column] = token
        out.append(row)
    return out


def _token(value: object, key: bytes, kid: str, column: object = None) -> str:
    """The token of one id, ``kid`` being ``key_id(key)``; ``column`` only names the id in errors."""
    where = f"{column}: " if column is not None else ""
    if not isinstance(value, str):
        raise TypeError(f"{where}only string ids are tokenized, got {type(value).__name__}")
    if not value:
        return value
    if value.startswith(PREFIX):
        match = _TOKEN.fullmatch(value)
        if match and match[1] == kid:
            return value
        if match:
            raise TokenKeyError(f"{where}{value} is a token of key id {match[1]}, not of the current key (id {kid}): "
                                "the key changed since it was made; re-import the bank's original export")
    return f"{PREFIX}{kid}_{hmac.digest(key, value.encode(), 'sha256').hex()}"
