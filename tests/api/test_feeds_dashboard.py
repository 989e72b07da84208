"""The dashboard's feed indicator in headless Chromium: a real feed
(``pricepipe publish --source binance-ws``) against a fake venue, the real
websocket server (``pricepipe ws``) and the API. The feed shows connected;
its gap detected and repaired arrive live over the websocket's ``status``
channel; when the venue goes away the indicator turns disconnected (told by
the status channel); when the feed process is killed, so that its state is
no longer rewritten, it turns stale (the age rule of ``/v1/feeds``). Each
state is drawn in colour and said in words, and changes are announced."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pricepipe.api.settings import ApiSettings
from pricepipe.embedded import free_port
from tests.helpers import wait_http, wait_until
from tests.publisher.fake_upstream import FakeUpstream
from tests.publisher.fake_venue import FakeVenue

from .test_dashboard import CHROMEDRIVER, CHROMIUM, _browser

if not (CHROMIUM and CHROMEDRIVER):  # test_dashboard already failed on CI without them
    pytest.skip("chromium or chromedriver not installed", allow_module_level=True)

pytestmark = pytest.mark.timeout(240)

Spawn = Callable[..., subprocess.Popen[bytes]]
FEED = "binance-ws"


@pytest.fixture
def fake() -> Iterator[FakeUpstream]:
    server = FakeUpstream(slow_s=0.4, timeout_s=0.8).start()
    yield server
    server.close()


def feed_env(env: dict[str, str], venue: FakeVenue, fake: FakeUpstream) -> dict[str, str]:
    return {**env, "PRICEPIPE_BINANCE_WS_URL": venue.url, "PRICEPIPE_BINANCE_BASE_URL": fake.url,
            "PRICEPIPE_FEED_RECONNECT_BASE_S": "0.05", "PRICEPIPE_FEED_RECONNECT_CAP_S": "0.3",
            "PRICEPIPE_FEED_STATE_INTERVAL_S": "0.2", "PRICEPIPE_POLL_RETRIES": "1",
            "PRICEPIPE_POLL_BACKOFF_FACTOR_S": "0.01"}


def test_feed_indicator_turns_disconnected_then_stale(
        make_live_api: Callable[..., str], spawn: Spawn, pipeline_env: dict[str, str],
        fake: FakeUpstream, tmp_path: Path) -> None:
    from selenium import webdriver
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    venue = FakeVenue("binance", fake).start()
    venue_open = True
    ws_port = free_port()
    ws = spawn(["ws", "--port", str(ws_port)], env=pipeline_env)
    wait_http(f"http://127.0.0.1:{ws_port}/healthz", ws)
    # Its output to a file: a pipe nobody reads would fill up and block it.
    log_path = tmp_path / "publish.log"
    with log_path.open("wb") as log_file:
        publisher = spawn(["publish", "--source", "binance-ws", "--symbols", "BTCUSDT",
                           "--metrics-port", "0"], env=feed_env(pipeline_env, venue, fake),
                          stdout=log_file)
    driver: Any = None
    try:
        wait_until(venue.subscribed, timeout_s=60, proc=publisher)
        base_url = make_live_api(ApiSettings(rate_limit=None, key_rate_limit=None,
                                             ws_url=f"ws://127.0.0.1:{ws_port}/ws",
                                             feed_stale_after_s=2.0))
        options, service = _browser()
        options.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
        driver = webdriver.Chrome(options=options, service=service)
        driver.set_page_load_timeout(60)
        driver.get(f"{base_url}/?feedpoll=1")
        wait = WebDriverWait(driver, 60, poll_frequency=0.2)
        chip = '.feed[data-feed="binance-ws"]'

        def read_chip() -> dict[str, Any] | None:
            """The feed's chip as drawn now, read in one go (the page redraws it)."""
            return driver.execute_script(
                """const el = document.querySelector(arguments[0]);
                   return el && {state: el.dataset.state, reason: el.dataset.reason,
                                 text: el.innerText,
                                 background: getComputedStyle(el).backgroundColor};""", chip)

        def shown(state: str) -> Callable[[Any], bool]:
            def check(_: Any) -> bool:
                found = read_chip()
                return found is not None and found["state"] == state
            return check

        def logged(kind: str) -> Callable[[Any], bool]:
            return lambda d: bool(d.find_elements(
                By.CSS_SELECTOR, f'#feed-log li[data-kind="{kind}"][data-feed="{FEED}"]'))

        wait.until(shown("connected"))
        assert driver.find_element(By.ID, "feeds").is_displayed()
        connected = read_chip()
        assert connected is not None
        assert "binance-ws" in connected["text"] and "connected" in connected["text"]
        # A gap the venue skipped: detected and repaired, told live by the status channel.
        venue.trade("BTCUSDT", 100.0)
        venue.trade("BTCUSDT", 101.0, deliver=False)
        venue.trade("BTCUSDT", 102.0)
        wait.until(logged("gap_repaired"))
        assert driver.find_elements(By.CSS_SELECTOR, '#feed-log li[data-kind="gap_detected"]')
        repaired = driver.find_element(By.CSS_SELECTOR, '#feed-log li[data-kind="gap_repaired"]')
        assert "gap repaired in BINANCE:BTCUSDT" in (repaired.get_attribute("textContent") or "")

        # The venue goes away: the feed says so on the status channel.
        venue.close()
        venue_open = False
        wait.until(logged("disconnected"))
        wait.until(shown("disconnected"))
        down = read_chip()
        assert down is not None
        assert "DISCONNECTED" in down["text"]  # in words, not by colour alone
        assert down["background"] == "rgb(185, 28, 28)"
        wait.until(lambda d: "binance-ws is disconnected" in (
            d.find_element(By.ID, "feed-alert").get_attribute("textContent") or ""))
        # Live: gap detected, gap repaired, disconnected (connected came before
        # the page subscribed: the snapshot's states hold it).
        assert int(driver.find_element(By.ID, "status-count").get_attribute("data-count")
                   or 0) >= 3

        # The feed process dies: nobody rewrites its state, which goes stale by age.
        publisher.send_signal(signal.SIGKILL)
        publisher.wait(30)
        wait.until(shown("stale"))
        stale = read_chip()
        assert stale is not None and stale["reason"] == "no_update"
        assert "STALE" in stale["text"] and "no update for" in stale["text"]
        assert "last said disconnected" in stale["text"]
        assert stale["background"] == "rgb(255, 237, 213)"
        wait.until(lambda d: "binance-ws is stale" in (
            d.find_element(By.ID, "feed-alert").get_attribute("textContent") or ""))
        shot = tmp_path / "feeds.png"
        assert driver.save_screenshot(str(shot)) and shot.stat().st_size > 5_000
        copy_to = os.environ.get("PRICEPIPE_FEEDS_SCREENSHOT")
        if copy_to:
            shutil.copyfile(shot, copy_to)
        logs = driver.get_log("browser") if hasattr(driver, "get_log") else []
        severe = [entry for entry in logs if entry.get("level") == "SEVERE"]
        assert not severe, severe
    except BaseException:
        print(log_path.read_text(errors="replace")[-5000:])
        raise
    finally:
        if driver is not None:
            driver.quit()
        if venue_open:
            venue.close()
