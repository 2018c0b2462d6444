"""A bank's own history at the seams: an export dated 2019 with its own column names, on the default params.

Imported, pinned, run through the Dagster graph (partitions follow the data, whatever the year), then audited:
the training features of its second and third month (a month boundary each) equal what the online path computes
against a store holding exactly what came before each transaction.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from fraud_assets.cli.main import app
from fraud_assets.core.simulate import simulate_months
from fraud_assets.params import load_params

pytestmark = pytest.mark.slow


def _bank_export(path: Path) -> Path:
    """Three months of 2019 as a bank exports them: its own column names, numeric cards, local naive times."""
    sim = load_params().data.model_copy(update={"start_month": "2019-01", "n_customers": 500, "n_terminals": 300})
    truth = pd.concat(simulate_months(sim, "2019-01", 3).values(), ignore_index=True)
    pd.DataFrame({
        "txn_ref": truth["transaction_id"].str.replace("tx-", "bank-"),
        "booked_at": truth["tx_datetime"].dt.tz_convert("Europe/Berlin").dt.tz_localize(None),
        "pan_token": truth["customer_id"].str[1:].astype(int),
        "merchant_terminal": truth["terminal_id"],
        "amount_eur": truth["amount"],
        "confirmed_fraud": truth["is_fraud"],
    }).sample(frac=1.0, random_state=3).to_csv(path, index=False)
    return path


def test_a_2019_export_imports_trains_and_passes_the_parity_audit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                                  ) -> None:
    root = tmp_path / "bank"
    root.mkdir()
    load_params().write(root / "params.yaml")  # the default params, untouched
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    monkeypatch.setenv("FRAUD_PROJECT_ROOT", str(root))
    monkeypatch.setenv("FRAUD_STATE_DIR", str(root / ".state"))
    monkeypatch.setenv("DAGSTER_HOME", str(root / ".state" / "dagster"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("FRAUD_ONLINE_STORE", raising=False)
    cli = CliRunner()
    mapping = ["txn_ref=transaction_id", "booked_at=tx_datetime", "pan_token=customer_id",
               "merchant_terminal=terminal_id", "amount_eur=amount", "confirmed_fraud=is_fraud"]
    res = cli.invoke(app, ["import", str(_bank_export(tmp_path / "export.csv")), "--timezone", "Europe/Berlin",
                           *[a for m in mapping for a in ("--map", m)]])
    assert res.exit_code == 0, res.output
    assert {p.stem for p in (root / "data" / "transactions").glob("*.parquet")} == {"2019-01", "2019-02", "2019-03"}
    res = cli.invoke(app, ["pipeline", "--no-train"])
    assert res.exit_code == 0, res.output
    assert res.output.count("steps succeeded") == 3
    for month in ("2019-02", "2019-03"):
        res = cli.invoke(app, ["check-parity", "--month", month, "--rows", "800"])
        assert res.exit_code == 0, res.output
        assert re.search(r"^rows compared\s+1600$", res.output, re.MULTILINE), res.output
        assert re.search(r"^rows differing\s+0 ", res.output, re.MULTILINE), res.output
