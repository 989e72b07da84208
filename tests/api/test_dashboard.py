"""The dashboard in headless Chromium: trade and quote history over HTTP,
then live trades and quotes over the real websocket server (``pricepipe
ws``, protocol v2)."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pricepipe import streams
from pricepipe.api.settings import ApiSettings
from pricepipe.clock import now_us
from pricepipe.embedded import free_port
from pricepipe.events import Quote, Side, Trade
from pricepipe.keys import Keys
from tests.api.helpers import insert_quotes, insert_trades
from tests.helpers import wait_http

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
SYMBOLS = ("ACME", "GLOBX", "INITECH")
LOGO = ("data:image/svg+xml;utf8,<svg xmlns='http://www.w3.org/2000/svg' viewBox='0 0 24 24'>"
        "<circle cx='12' cy='12' r='11' fill='%232563eb'/></svg>")

if not (CHROMIUM and CHROMEDRIVER):
    if os.environ.get("CI"):
        raise RuntimeError("CI needs chromium and chromium-driver for the dashboard test")
    pytest.skip("chromium or chromedriver not installed", allow_module_level=True)


def _book(symbol: str, ts_us: int, price: float) -> Quote:
    """A two-sided quote around ``price``, 0.6 % wide: wider than a real
    book's, so that the band shows on the screenshot."""
    half = price * 0.003
    return Quote(symbol, ts_us, price - half, 300.0, price + half, 200.0, "gbm")


class Feeder(threading.Thread):
    """Appends a random-walk trade and a quote per symbol every 100 ms, like
    a publisher."""

    def __init__(self, r: Any, keys: Keys, prices: dict[str, float]) -> None:
        super().__init__(name="feeder", daemon=True)
        self.r, self.keys, self.prices = r, keys, dict(prices)
        self.stop = threading.Event()
        self.rng = random.Random(7)

    def run(self) -> None:
        while not self.stop.wait(0.1):
            events: list[Trade | Quote] = []
            for symbol, price in self.prices.items():
                price *= 1 + self.rng.gauss(0, 0.002)
                self.prices[symbol] = price
                ts_us = now_us()
                events.append(_book(symbol, ts_us, price))
                events.append(Trade(symbol, ts_us + 1, price, 1.0, "gbm",
                                    side=Side.BUY if self.rng.random() < 0.5 else Side.SELL))
            streams.append_events(self.r, self.keys, events)


def _browser() -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM or ""
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                 "--window-size=1400,900"):
        options.add_argument(flag)
    return options, Service(CHROMEDRIVER or "")


def test_dashboard_shows_history_then_live_trades_and_quotes(
        make_live_api: Callable[..., str], spawn: Callable[..., subprocess.Popen[bytes]],
        pipeline_env: dict[str, str], r: Any, keys: Keys, db: Any, tmp_path: Path) -> None:
    from selenium import webdriver
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    start_prices = {"ACME": 101.0, "GLOBX": 48.5, "INITECH": 12.25}
    with db.cursor() as cur:
        for symbol, price in start_prices.items():
            cur.execute("INSERT INTO instruments (symbol, name, logo_url, week52_high,"
                        " week52_low) VALUES (%s, %s, %s, %s, %s)",
                        (symbol, f"{symbol.title()} Corp", LOGO, price * 1.3, price * 0.8))
    history_start = now_us() - 300_000_000
    rng = random.Random(3)
    history: list[Trade] = []
    books: list[Quote] = []
    for symbol, price in start_prices.items():
        for i in range(300):
            price *= 1 + rng.gauss(0, 0.002)
            ts_us = history_start + i * 1_000_000
            history.append(Trade(symbol, ts_us + 500_000, price, 1.0, "gbm"))
            books.append(_book(symbol, ts_us, price))
    insert_trades(db, history)
    insert_quotes(db, books)
    streams.register_symbols(r, keys, SYMBOLS)

    ws_port = free_port()
    ws = spawn(["ws", "--port", str(ws_port)], env=pipeline_env)
    wait_http(f"http://127.0.0.1:{ws_port}/healthz", ws)
    base_url = make_live_api(ApiSettings(rate_limit=None, key_rate_limit=None,
                                         ws_url=f"ws://127.0.0.1:{ws_port}/ws"))
    feeder = Feeder(r, keys, {s: history[300 * i + 299].price for i, s in enumerate(SYMBOLS)})
    feeder.start()
    options, service = _browser()
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    driver = webdriver.Chrome(options=options, service=service)
    try:
        driver.set_page_load_timeout(60)
        driver.get(f"{base_url}/?symbols={','.join(SYMBOLS)}")
        wait = WebDriverWait(driver, 60, poll_frequency=0.2)
        # History drew a chart per symbol before any live event...
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".panel canvas")) == 3)
        # ...then live trades and quotes arrive over the websocket, on every panel.
        def received(counter: str) -> Callable[[Any], bool]:
            return lambda d: int(d.find_element(By.ID, counter).get_attribute("data-count")
                                 or 0) >= 3 * len(SYMBOLS)

        for counter in ("trades-count", "quotes-count"):
            wait.until(received(counter))
        status = driver.find_element(By.ID, "status")
        assert status.get_attribute("data-state") == "live"
        for symbol in SYMBOLS:
            panel = driver.find_element(By.CSS_SELECTOR, f'.panel[data-symbol="{symbol}"]')
            shown = float(panel.find_element(By.CLASS_NAME, "last-price")
                          .get_attribute("data-price") or "nan")
            assert shown > 0
            # The last quote, bid x ask, beside the last price.
            quote = panel.find_element(By.CLASS_NAME, "last-quote")
            bid = float(quote.get_attribute("data-bid") or "nan")
            ask = float(quote.get_attribute("data-ask") or "nan")
            assert 0 < bid < ask
            shown_bid = float(quote.find_element(By.CLASS_NAME, "bid").text)
            shown_ask = float(quote.find_element(By.CLASS_NAME, "ask").text)
            assert 0 < shown_bid < shown_ask
            assert shown_bid <= shown * 1.01 and shown_ask >= shown * 0.99
            assert "52-week range" in panel.find_element(By.CLASS_NAME, "band-note").text
            assert panel.find_element(By.CLASS_NAME, "logo").is_displayed()
            assert f"{symbol.title()} Corp" in panel.text
            # Every history trade and quote is on the chart, and live ones after them.
            assert int(panel.get_attribute("data-points") or 0) > 600
        # The picker removes a symbol.
        driver.find_element(By.CSS_SELECTOR, '#symbol-list input[value="INITECH"]').click()
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".panel")) == 2)
        assert "symbols=ACME%2CGLOBX" in driver.current_url or \
            "symbols=ACME,GLOBX" in driver.current_url
        shot = tmp_path / "dashboard.png"
        driver.find_element(By.CSS_SELECTOR, '#symbol-list input[value="INITECH"]').click()
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".panel canvas")) == 3)
        time.sleep(1.0)  # let a few live events land on the re-added panel for the picture
        assert driver.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
        copy_to = os.environ.get("PRICEPIPE_DASHBOARD_SCREENSHOT")
        if copy_to:
            shutil.copyfile(shot, copy_to)
        logs = driver.get_log("browser") if hasattr(driver, "get_log") else []
        severe = [entry for entry in logs if entry.get("level") == "SEVERE"]
        assert not severe, severe
    finally:
        driver.quit()
        feeder.stop.set()
        feeder.join(10)
