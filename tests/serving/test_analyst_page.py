"""The analyst page (``/ui/``) and its endpoints, served by Ray Serve and driven in a real headless Chromium.

One Ray start for the module: a model trained on simulated January-February, the online store seeded with them,
then two days of simulated March scored through ``/predict/batch`` (one transaction's id is an XSS probe), a
champion move and a drift report recorded in MLflow. The browser signs in with the analyst key, sees the queue,
labels a card and watches it leave the open queue; the label reaches the online store and the prediction log.
Chromium comes from Debian's packages (``.ci/run`` installs it), or from ``$FRAUD_CHROMIUM`` /
``$FRAUD_CHROMEDRIVER`` (GitHub's runners ship Chrome and chromedriver).
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pandas as pd
import pytest
from selenium import webdriver
from selenium.common.exceptions import NoAlertPresentException, StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from fraud_assets.adapters import mlflow_registry
from fraud_assets.adapters.online_store import SqliteTransactionStore
from fraud_assets.core.simulate import simulate_months
from fraud_assets.params import load_params
from serving.app import AppArgs
from serving.local import start_serving, stop_serving
from tests.serving.test_serving_http import ALIAS, MODEL, SERVE_OVERRIDES, _free_port, _register, _trained_booster

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
KEY = "page-api-key-" + "p" * 24
ANALYST_KEY = "page-analyst-key-" + "a" * 24
XSS = "<img src=x onerror=alert(1)>"
DAYS = ("2025-03-01", "2025-03-02")
OVERRIDES = {**SERVE_OVERRIDES, "serve.max_batch_rows": 1000, "serve.max_body_bytes": 1_000_000}
WAIT_S = 30.0
CHROME_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--no-first-run", "--window-size=1400,2200")


@dataclass(frozen=True)
class Page:
    base_url: str
    log_path: Path
    store_path: Path
    scored: int


def _score_march_days(base_url: str, march: pd.DataFrame) -> int:
    """Score the simulated transactions of :data:`DAYS` in time order, plus the XSS probe (a large amount)."""
    day = march["tx_datetime"].dt.strftime("%Y-%m-%d")
    rows = march.loc[day.isin(DAYS)].sort_values("tx_datetime")
    txs = [{"transaction_id": r.transaction_id, "tx_datetime": r.tx_datetime.isoformat(), "customer_id": r.customer_id,
            "terminal_id": r.terminal_id, "amount": float(r.amount)} for r in rows.itertuples()]
    probe = {**txs[-1], "transaction_id": XSS, "amount": 4000.0}
    with httpx.Client(base_url=base_url, timeout=60.0, headers={"x-api-key": KEY}) as http:
        for i in range(0, len(txs), 500):
            assert http.post("/predict/batch", json={"transactions": txs[i:i + 500]}).status_code == 200
        (answer,) = http.post("/predict/batch", json={"transactions": [probe]}).json()["scores"]
        assert answer["alert"], f"the probe must reach the queue: {answer}"
        deadline = time.monotonic() + WAIT_S  # the prediction log is written off the hot path
        while time.monotonic() < deadline:
            queue = http.get("/alerts").json()
            if any(t["transaction_id"] == XSS for c in queue["cards"] for t in c["alerts"]):
                return len(txs) + 1
            time.sleep(0.25)
    raise TimeoutError(f"the probe did not reach the prediction log within {WAIT_S} s")


def _record_registry_events(uri: str, version: str, artifact_root: str) -> None:
    client = mlflow_registry.client_for(uri)
    mlflow_registry.move_alias(client, MODEL, ALIAS, version, reason="first champion: passed every bar",
                               actor="test", kind="promotion")
    exp = mlflow_registry.ensure_experiment(client, mlflow_registry.MONITORING_EXPERIMENT, artifact_root)
    run = client.create_run(exp, tags={"month": "2025-02", "drift_detected": "True"})
    client.set_terminated(run.info.run_id)


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Page]:
    tmp = tmp_path_factory.mktemp("analyst")
    uri, artifact_root = f"sqlite:///{tmp / 'mlflow.db'}", (tmp / "artifacts").as_uri()
    months = simulate_months(load_params().data, "2025-01", 3)
    version = _register(uri, artifact_root, _trained_booster(months), {"threshold": "0.5"})
    _record_registry_events(uri, version, artifact_root)
    log_path, store_path = tmp / "predictions.sqlite", tmp / "store.sqlite"
    SqliteTransactionStore(store_path).seed(pd.concat([months["2025-01"], months["2025-02"]], ignore_index=True))
    with pytest.MonkeyPatch.context() as env:
        env.setenv("FRAUD_API_KEY", KEY)  # Ray's local workers inherit both
        env.setenv("FRAUD_ANALYST_KEY", ANALYST_KEY)
        try:
            base_url = start_serving(tracking_uri=uri, port=_free_port(), args=AppArgs(
                overrides=OVERRIDES, prediction_log=str(log_path), online_store=str(store_path)))
            scored = _score_march_days(base_url, months["2025-03"])
            yield Page(base_url, log_path, store_path, scored)
        finally:
            stop_serving()


def _chrome_paths() -> tuple[str, str]:
    browser = os.environ.get("FRAUD_CHROMIUM") or shutil.which("chromium") or shutil.which("google-chrome")
    driver = os.environ.get("FRAUD_CHROMEDRIVER") or shutil.which("chromedriver")
    if not browser or not driver:
        raise RuntimeError("no Chromium/chromedriver: apt-get install -y chromium chromium-driver "
                           "(or set FRAUD_CHROMIUM and FRAUD_CHROMEDRIVER)")
    return browser, driver


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[webdriver.Chrome]:
    binary, driver_path = _chrome_paths()
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in CHROME_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=driver_path))
    driver.set_page_load_timeout(WAIT_S)
    driver.set_script_timeout(WAIT_S)
    try:
        yield driver
    finally:
        driver.quit()


def test_alerts_and_performance_need_a_key_and_answer_json(page: Page) -> None:
    with httpx.Client(base_url=page.base_url, timeout=30.0) as http:
        assert http.get("/alerts").status_code == 401
        assert http.get("/performance", headers={"x-api-key": "wrong"}).status_code == 401
        assert http.post("/predict/batch", headers={"x-api-key": ANALYST_KEY}, json={}).status_code == 401
        assert http.get("/alerts", params={"day": "2025-02-30"}, headers={"x-api-key": KEY}).status_code == 422
        answer = http.get("/alerts", headers={"x-api-key": ANALYST_KEY})
        assert answer.status_code == 200 and answer.headers["content-type"] == "application/json"
        queue = answer.json()
        assert queue["day"] == DAYS[1] and queue["days"] == [DAYS[1], DAYS[0]]
        scores = [c["max_probability"] for c in queue["cards"]]
        assert scores == sorted(scores, reverse=True) and all(s >= 0.5 for s in scores)
        first = queue["cards"][0]["alerts"][0]
        assert first["status"] == "open" and len(first["reasons"]) == 3 and all(r["text"] for r in first["reasons"])
        assert queue["cards"][0]["recent"], "the card's recent transactions come from the online store"
        performance = http.get("/performance", headers={"x-api-key": ANALYST_KEY}).json()
        assert [d["day"] for d in performance["alerts_per_day"]] == list(DAYS)
        assert sum(d["scored"] for d in performance["alerts_per_day"]) == page.scored
        assert performance["champion_history"][-1]["reason"] == "first champion: passed every bar"
        assert performance["drift"] == [{"month": "2025-02", "drift_detected": True,
                                         "time": performance["drift"][0]["time"], "score_psi": None}]


def test_the_page_is_open_and_locked_down(page: Page) -> None:
    with httpx.Client(base_url=page.base_url, timeout=30.0) as http:
        index = http.get("/ui/")
        assert index.status_code == 200 and index.headers["content-type"].startswith("text/html")
        csp = index.headers["content-security-policy"]
        assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe" not in csp
        assert index.headers["x-frame-options"] == "DENY" and index.headers["referrer-policy"] == "no-referrer"
        script = http.get("/ui/app.js")
        assert script.status_code == 200 and "javascript" in script.headers["content-type"]
        assert script.headers["x-content-type-options"] == "nosniff"
        assert KEY not in index.text + script.text and ANALYST_KEY not in index.text + script.text


def _wait(driver: webdriver.Chrome, condition, what: str):
    wait = WebDriverWait(driver, WAIT_S, poll_frequency=0.2, ignored_exceptions=[StaleElementReferenceException])
    return wait.until(condition, message=f"waited {WAIT_S} s for {what}")


def _open_cards(driver: webdriver.Chrome) -> list[str]:
    """The cards shown, read in one script (the page re-renders the queue after every label)."""
    return driver.execute_script(
        "return [...document.querySelectorAll('#queue .card')].map((c) => c.getAttribute('data-card'))")


def test_an_analyst_signs_in_sees_the_queue_and_labels_a_card(page: Page, browser: webdriver.Chrome,
                                                             tmp_path: Path) -> None:
    started = time.perf_counter()
    browser.get(f"{page.base_url}/ui/")
    assert browser.find_element(By.ID, "app").is_displayed() is False  # nothing shown before signing in
    browser.find_element(By.ID, "key").send_keys(ANALYST_KEY)
    browser.find_element(By.ID, "signin-button").click()
    _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#queue .alert-row"), "the seeded alerts")
    _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#chart-days svg rect.bar"), "the alerts chart")
    assert ANALYST_KEY not in browser.current_url
    assert browser.execute_script("return sessionStorage.getItem('fraud.key')") == ANALYST_KEY

    # The XSS probe is shown as text: no element was made of it and no dialog opened.
    probe = [r for r in browser.find_elements(By.CSS_SELECTOR, "#queue .alert-row")
             if r.get_attribute("data-transaction") == XSS]
    assert len(probe) == 1 and probe[0].find_element(By.CSS_SELECTOR, ".tx-id").text == XSS
    assert browser.find_elements(By.CSS_SELECTOR, "#queue img") == []
    with pytest.raises(NoAlertPresentException):
        browser.switch_to.alert.text  # noqa: B018 (reading it is the check)
    reasons = browser.find_element(By.CSS_SELECTOR, "#queue .alert-row .reasons li").text
    assert reasons and "_" not in reasons.split(" ")[0]  # words, not a feature name

    screenshot = tmp_path / "analyst_page.png"
    assert browser.save_screenshot(str(screenshot)) and screenshot.stat().st_size > 10_000
    if os.environ.get("FRAUD_UPDATE_SCREENSHOT") == "1":  # the README's picture, refreshed on purpose only
        shutil.copyfile(screenshot, ROOT / "docs" / "analyst_page.png")

    # Label the top card as fraud: it leaves the open queue, the summary counts it, the store and the log have it.
    before = _open_cards(browser)
    top = browser.find_element(By.CSS_SELECTOR, "#queue .card")
    ids = [r.get_attribute("data-transaction") for r in top.find_elements(By.CSS_SELECTOR, ".alert-row")]
    top.find_element(By.CSS_SELECTOR, ".card-head .label-fraud").click()
    _wait(browser, lambda d: before[0] not in _open_cards(d), "the labelled card to leave the open queue")
    assert _open_cards(browser) == before[1:]
    tile = browser.find_element(By.CSS_SELECTOR, "[data-tile='confirmed-fraud'] .value")
    assert int(tile.text) == len(ids)
    assert browser.find_element(By.CSS_SELECTOR, "[data-tile='precision'] .value").text == "100.0 %"
    with sqlite3.connect(page.store_path) as conn:
        stored = dict(conn.execute(f"SELECT transaction_id, is_fraud FROM transactions WHERE transaction_id IN "
                                   f"({','.join('?' * len(ids))})", ids).fetchall())
    assert stored == dict.fromkeys(ids, 1)
    with sqlite3.connect(page.log_path) as conn:
        logged = {r[0] for r in conn.execute("SELECT transaction_id FROM labels WHERE is_fraud = 1")}
    assert set(ids) <= logged

    # The labelled card is under "fraud"; the page ran under its CSP without a violation.
    browser.find_element(By.CSS_SELECTOR, "#status option[value='fraud']").click()
    _wait(browser, lambda d: _open_cards(d) == [before[0]], "the fraud filter")
    violations = [e["message"] for e in browser.get_log("browser") if "Content Security Policy" in e["message"]]
    assert violations == []
    print(f"browser test: {time.perf_counter() - started:.1f} s")
