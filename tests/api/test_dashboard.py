"""The dashboard in headless Chromium: history over HTTP, then live ticks
over the real websocket server (``pricepipe ws``)."""

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
from pricepipe.api.settings import ApiSettings

from pricepipe import streams
from pricepipe.clock import now_us
from pricepipe.embedded import free_port
from pricepipe.keys import Keys
from pricepipe.tick import Tick
from tests.api.helpers import insert_ticks
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


class Feeder(threading.Thread):
    """Appends a random-walk tick per symbol every 100 ms, like a publisher."""

    def __init__(self, r: Any, keys: Keys, prices: dict[str, float]) -> None:
        super().__init__(name="feeder", daemon=True)
        self.r, self.keys, self.prices = r, keys, dict(prices)
        self.stop = threading.Event()
        self.rng = random.Random(7)

    def run(self) -> None:
        while not self.stop.wait(0.1):
            ticks = []
            for symbol, price in self.prices.items():
                price *= 1 + self.rng.gauss(0, 0.002)
                self.prices[symbol] = price
                ticks.append(Tick(symbol, now_us(), price, 1.0, "gbm"))
            streams.append_ticks(self.r, self.keys, ticks)


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


def test_dashboard_shows_history_then_live_ticks(
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
    history = []
    for symbol, price in start_prices.items():
        for i in range(300):
            price *= 1 + rng.gauss(0, 0.002)
            history.append(Tick(symbol, history_start + i * 1_000_000, price, 1.0, "gbm"))
    insert_ticks(db, history)
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
        # History drew a line per symbol before any live tick...
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".panel canvas")) == 3)
        # ...then live ticks arrive over the websocket and move every panel.
        wait.until(lambda d: int(d.find_element(By.ID, "tick-count")
                                 .get_attribute("data-count") or 0) >= 3 * len(SYMBOLS))
        status = driver.find_element(By.ID, "status")
        assert status.get_attribute("data-state") == "live"
        for symbol in SYMBOLS:
            panel = driver.find_element(By.CSS_SELECTOR, f'.panel[data-symbol="{symbol}"]')
            shown = float(panel.find_element(By.CLASS_NAME, "last-price")
                          .get_attribute("data-price") or "nan")
            assert shown > 0
            assert "52-week range" in panel.find_element(By.CLASS_NAME, "band-note").text
            assert panel.find_element(By.CLASS_NAME, "logo").is_displayed()
            assert f"{symbol.title()} Corp" in panel.text
            # Every history tick is on the chart, and live ones after them.
            assert int(panel.get_attribute("data-points") or 0) > 300
        # The picker removes a symbol.
        driver.find_element(By.CSS_SELECTOR, '#symbol-list input[value="INITECH"]').click()
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".panel")) == 2)
        assert "symbols=ACME%2CGLOBX" in driver.current_url or \
            "symbols=ACME,GLOBX" in driver.current_url
        shot = tmp_path / "dashboard.png"
        driver.find_element(By.CSS_SELECTOR, '#symbol-list input[value="INITECH"]').click()
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".panel canvas")) == 3)
        time.sleep(1.0)  # let a few live ticks land on the re-added panel for the picture
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
