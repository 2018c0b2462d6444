"""Card numbers never stored in clear: keyed tokens at import (and, through the same function, in serving)."""

from __future__ import annotations

import hashlib
import hmac
import shutil
import subprocess
import typing
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from fraud_assets import settings
from fraud_assets.adapters import dvc_repo
from fraud_assets.cli.main import app
from fraud_assets.core import tokens
from fraud_assets.core.importer import ID_COLUMNS, import_file
from fraud_assets.core.simulate import simulate_months
from fraud_assets.core.tokens import (
    TokenKeyError,
    is_token,
    key_id,
    tokenize,
    tokenize_column,
    tokenize_transactions,
)
from fraud_assets.params import TOKENIZABLE_COLUMNS, load_params
from fraud_assets.schemas import TransactionModel

P = load_params()
KEY = b"a test key: 32 bytes, not secret"
OTHER_KEY = b"another test key, not secret too"
PAN = "4539148803436467"  # a Luhn-valid 16-digit Visa test number, no 4 digits repeated (so compression keeps it whole)
MAP = ["ref=transaction_id", "when=tx_datetime", "card=customer_id", "pos=terminal_id", "value=amount",
       "fraud=is_fraud"]


def _hmac_hex(key: bytes, message: bytes) -> str:
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def test_a_token_is_the_hmac_sha256_of_the_id_under_the_key() -> None:
    kid = _hmac_hex(KEY, b"fraud-assets token key id")[:8]
    assert key_id(KEY) == kid
    for value in (PAN, "c0042", "4539 1488 0343 6467", "kártya-ü"):
        token = tokenize(value, KEY)
        assert token == f"tok_{kid}_{_hmac_hex(KEY, value.encode('utf-8'))}"
        assert len(token) == 77 and is_token(token)
    assert tokenize(PAN, KEY) != tokenize(PAN + " ", KEY)  # the exact string is hashed, nothing is normalized


def test_tokens_are_idempotent_per_key_and_differ_between_keys() -> None:
    token = tokenize(PAN, KEY)
    assert tokenize(token, KEY) == token  # re-importing tokenized data never hashes twice
    assert tokenize(PAN, OTHER_KEY) != token
    assert tokenize(PAN, OTHER_KEY).removeprefix("tok_")[:8] == key_id(OTHER_KEY) != key_id(KEY)
    with pytest.raises(TokenKeyError, match=rf"token of key id {key_id(KEY)}, not of the current key"):
        tokenize(token, OTHER_KEY)  # a rotated key with old tokens would silently never match: refused
    assert tokenize("tok_not-a-token", KEY).startswith(f"tok_{key_id(KEY)}_")  # only the exact shape is kept
    assert not is_token(PAN) and not is_token("tok_" + "0" * 73)
    assert tokenize("", KEY) == ""  # nothing to hide; validation still sees an empty id
    with pytest.raises(TypeError, match="only string ids"):
        tokenize(typing.cast(str, 4539148803436467), KEY)


def test_the_column_equals_the_scalar_on_many_random_ids() -> None:
    rng = np.random.default_rng(7)
    cards = [str(n) for n in rng.integers(10**15, 10**16, 3_000)]
    values: list[object] = list(rng.choice(cards, 20_000))
    values[::997] = [None] * len(values[::997])
    values[5] = np.nan
    values[6] = ""
    values[7] = tokenize("already", KEY)
    values[8] = "ünïcode"
    series = pd.Series(values, index=pd.RangeIndex(100, 100 + len(values)), name="customer_id", dtype=object)
    before = series.copy()
    out = tokenize_column(series, KEY)
    pd.testing.assert_series_equal(series, before)  # the input is not mutated
    assert out.index.equals(series.index) and out.name == "customer_id" and out.dtype == object
    missing = series.isna()
    assert out[missing].isna().all() and out[missing].index.equals(series[missing].index)
    assert out[~missing].tolist() == [tokenize(v, KEY) for v in series[~missing]]
    as_string = tokenize_column(series.astype("string"), KEY)
    assert as_string.dtype == "string" and as_string[~missing].tolist() == out[~missing].tolist()


def test_the_column_hashes_each_distinct_id_once(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = hmac.digest

    def counting(key: bytes, msg: bytes, digest: str) -> bytes:
        calls.append(msg)
        return real(key, msg, digest)

    key_id(KEY)  # the key id is made once per key, before counting
    monkeypatch.setattr(tokens.hmac, "digest", counting)
    out = tokenize_column(pd.Series(["a", "b", "a", "c", "b"] * 1000), KEY)
    assert sorted(calls) == [b"a", b"b", b"c"] and out.nunique() == 3


def test_transactions_are_tokenized_like_the_column_and_untouched_without_a_key() -> None:
    batch = [{"transaction_id": f"t{i}", "customer_id": PAN if i % 2 else "5500005555555559",
              "terminal_id": "pos-1", "amount": 1.0} for i in range(6)]
    batch.append({"transaction_id": "t-no-card", "amount": 2.0})
    assert tokenize_transactions(batch, ["customer_id"], None) is batch
    out = tokenize_transactions(batch, ["customer_id"], KEY)
    assert [tx["customer_id"] for tx in batch[:2]] == ["5500005555555559", PAN]  # the input is not mutated
    assert [tx.get("customer_id") for tx in out] == [
        *tokenize_column(pd.Series([tx["customer_id"] for tx in batch[:-1]]), KEY), None]
    assert "customer_id" not in out[-1] and out[-1] == batch[-1]
    assert all(o["terminal_id"] == "pos-1" and o["transaction_id"] == b["transaction_id"]
               for o, b in zip(out[:-1], batch[:-1], strict=True))
    assert tokenize_transactions(out, ["customer_id"], KEY) == out  # a replica given tokens keeps them


def test_the_key_comes_from_the_environment_and_a_short_one_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FRAUD_TOKEN_KEY", raising=False)
    assert settings.token_key() is None
    for empty in ("", "  \n"):
        monkeypatch.setenv("FRAUD_TOKEN_KEY", empty)
        assert settings.token_key() is None
    monkeypatch.setenv("FRAUD_TOKEN_KEY", f" {KEY.decode()}\n")
    assert settings.token_key() == KEY
    monkeypatch.setenv("FRAUD_TOKEN_KEY", "tooshort")
    with pytest.raises(ValueError, match=r"\$FRAUD_TOKEN_KEY is 8 bytes; it must be at least 16") as err:
        settings.token_key()
    assert "tooshort" not in str(err.value)  # the message names the variable, never the value
    with pytest.raises(ValueError, match="at least 16 bytes"):
        tokenize(PAN, b"tooshort")


def test_only_string_id_columns_of_the_schema_can_be_marked_sensitive() -> None:
    assert P.data.sensitive_columns == ("customer_id",)
    strings = {name for name, column in TransactionModel.to_schema().columns.items() if str(column.dtype) == "str"}
    assert set(TOKENIZABLE_COLUMNS) == strings - {"transaction_id"} and set(TOKENIZABLE_COLUMNS) <= set(ID_COLUMNS)
    assert P.updated({"data.sensitive_columns": ["customer_id", "terminal_id"]}).data.sensitive_columns == (
        "customer_id", "terminal_id")
    for wrong in (["transaction_id"], ["amount"], ["card_number"], ["customer_id", "customer_id"]):
        with pytest.raises(ValueError, match=r"sensitive_columns: each of \['customer_id', 'terminal_id'\]"):
            P.updated({"data.sensitive_columns": wrong})


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """A bank's CSV export of one simulated month whose cards are 16-digit PANs (``PAN`` among them)."""
    frame = simulate_months(P.data.model_copy(update={"n_customers": 30}), "2025-01", 1)["2025-01"]
    cards = sorted(frame["customer_id"].unique())
    rng = np.random.default_rng(3)
    pans = [PAN, *(_luhn(f"{rng.choice([4, 5])}{rng.integers(10**13, 10**14)}") for _ in cards[1:])]
    assert _luhn(PAN[:15]) == PAN and len(set(pans)) == len(cards)
    path = tmp_path_factory.mktemp("bank") / "export.csv"
    pd.DataFrame({
        "ref": frame["transaction_id"], "when": frame["tx_datetime"].dt.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "card": frame["customer_id"].map(dict(zip(cards, pans, strict=True))), "pos": frame["terminal_id"],
        "value": frame["amount"], "fraud": frame["is_fraud"],
    }).to_csv(path, index=False)
    return path, pans


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("FRAUD_STATE_DIR", raising=False)
    root = tmp_path / "repo"
    root.mkdir()
    P.write(root / "params.yaml")
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    dvc_repo.ensure_repo(root)
    monkeypatch.setenv("FRAUD_PROJECT_ROOT", str(root))
    return root


def test_imported_card_numbers_are_stored_only_as_tokens(repo: Path, export: tuple[Path, list[str]],
                                                         tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path, pans = export
    monkeypatch.setenv("FRAUD_TOKEN_KEY", KEY.decode())
    res = CliRunner().invoke(app, ["import", str(path), *[a for m in MAP for a in ("--map", m)]])
    assert res.exit_code == 0, res.output
    assert f"customer_id stored as keyed tokens (HMAC-SHA256, key id {key_id(KEY)})" in res.output
    assert KEY.decode() not in res.output and "pushed" in res.output

    written = [p for p in repo.rglob("*") if p.is_file()]
    snapshot = repo / P.data.dir / "2025-01.parquet"
    md5 = dvc_repo.month_hashes(repo)["2025-01"]
    copies = [p for p in written if p.name == md5[2:]]  # the DVC cache and the remote
    assert {repo / ".dvc", repo / ".state"} == {next(p for p in c.parents if p.parent == repo) for c in copies}
    assert sorted(p for p in written if _is_parquet(p)) == sorted([snapshot, *copies])
    leaks = {p.relative_to(repo): _found(p, [*pans, KEY.decode()]) for p in written}
    assert not any(leaks.values()), f"card numbers or the key found: {leaks}"
    assert not any(pan in res.output for pan in pans)
    assert all(_found(p, [tokenize(PAN, KEY)]) for p in [snapshot, *copies])

    stored = pd.read_parquet(snapshot)
    assert stored["customer_id"].map(is_token).all() and tokenize(PAN, KEY) in set(stored["customer_id"])
    raw = pd.read_csv(path, dtype=str).rename(columns={"ref": "transaction_id", "card": "customer_id"})
    served = tokenize_transactions(raw[["transaction_id", "customer_id"]].to_dict("records"),
                                   P.data.sensitive_columns, settings.token_key())
    by_id = dict(zip(stored["transaction_id"], stored["customer_id"], strict=True))
    assert all(by_id[tx["transaction_id"]] == tx["customer_id"] for tx in served)  # serving reads the same cards

    again = tmp_path / "snapshot-again.parquet"  # the tokenized snapshot imported again: nothing hashed twice
    shutil.copy(snapshot, again)
    res = CliRunner().invoke(app, ["import", str(again), "--no-push"])
    assert res.exit_code == 0 and "unchanged" in res.output, res.output
    monkeypatch.setenv("FRAUD_TOKEN_KEY", OTHER_KEY.decode())
    res = CliRunner().invoke(app, ["import", str(again), "--no-push"])
    assert res.exit_code == 1 and f"not of the current key (id {key_id(OTHER_KEY)})" in res.output


def test_without_a_key_the_ids_are_stored_as_given_and_import_says_so(repo: Path, export: tuple[Path, list[str]],
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    path, _ = export
    monkeypatch.delenv("FRAUD_TOKEN_KEY", raising=False)
    res = CliRunner().invoke(app, ["import", str(path), *[a for m in MAP for a in ("--map", m)], "--no-push"])
    assert res.exit_code == 0, res.output
    assert "$FRAUD_TOKEN_KEY is not set: customer_id stored as given, in clear" in res.output
    assert _found(repo / P.data.dir / "2025-01.parquet", [PAN]) == [PAN]  # the search above can see a PAN
    monkeypatch.setenv("FRAUD_TOKEN_KEY", "short")
    res = CliRunner().invoke(app, ["import", str(path), *[a for m in MAP for a in ("--map", m)], "--no-push"])
    assert res.exit_code == 1 and "import failed: $FRAUD_TOKEN_KEY is 5 bytes" in res.output


def test_core_import_tokenizes_every_marked_column_and_only_with_a_key(export: tuple[Path, list[str]],
                                                                       tmp_path: Path) -> None:
    path, pans = export
    both = ("customer_id", "terminal_id")
    import_file(path, tmp_path / "clear", dict(m.split("=") for m in MAP), sensitive_columns=both)
    import_file(path, tmp_path / "tokens", dict(m.split("=") for m in MAP), sensitive_columns=both, token_key=KEY)
    clear = pd.read_parquet(tmp_path / "clear" / "2025-01.parquet")
    tokenized = pd.read_parquet(tmp_path / "tokens" / "2025-01.parquet")
    assert set(clear["customer_id"]) == set(pans)
    assert tokenized[list(both)].map(is_token).all().all()
    assert sorted(tokenized["terminal_id"]) == sorted(tokenize_column(clear["terminal_id"], KEY))
    with pytest.raises(ValueError, match=r"sensitive column\(s\) amount are not id columns"):
        import_file(path, tmp_path / "x", dict(m.split("=") for m in MAP), sensitive_columns=["amount"], token_key=KEY)


def _is_parquet(path: Path) -> bool:
    with path.open("rb") as f:
        return f.read(4) == b"PAR1"


def _found(path: Path, needles: list[str]) -> list[str]:
    """The needles in ``path``: in its bytes (as text, or a PAN as a 64-bit integer) or, for a Parquet file, whose
    compression can hide a string from a byte search, in its decoded cells."""
    data = path.read_bytes()
    cells = pd.read_parquet(path).to_csv() if _is_parquet(path) else ""
    as_int = {n: int(n).to_bytes(8, "little") for n in needles if n.isdigit() and len(n) < 19}
    return [n for n in needles if n.encode() in data or as_int.get(n, n.encode()) in data or n in cells]


def _luhn(first15: str) -> str:
    """``first15`` with its Luhn check digit: a realistic 16-digit card number."""
    total = 0
    for i, ch in enumerate(reversed(first15)):
        d = int(ch) * (2 if i % 2 == 0 else 1)
        total += d - 9 if d > 9 else d
    return first15 + str((10 - total % 10) % 10)
