"""The dashboard against a websocket server that requires a token (issue 16),
in headless Chromium: the page asks for the token, sends it in the protocol's
auth message and never in a URL; a ``?token=`` in the page address is dropped
unused; a reload in the same tab reuses the token without asking."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pricepipe import streams
from pricepipe.api.settings import ApiSettings
from pricepipe.embedded import free_port
from pricepipe.keys import Keys
from tests.api.test_dashboard import Feeder, _browser  # skips this module without Chromium
from tests.helpers import wait_http

TOKEN = "dashboard-ws-token-7c1f"
OLD_LINK_TOKEN = "old-link-token-93ab"


def test_dashboard_sends_its_token_in_the_auth_message_only(
        make_live_api: Callable[..., str], spawn: Callable[..., subprocess.Popen[bytes]],
        pipeline_env: dict[str, str], r: Any, keys: Keys, tmp_path: Path) -> None:
    from selenium import webdriver
    from selenium.common.exceptions import NoAlertPresentException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    streams.register_symbols(r, keys, ["ACME"])
    ws_port = free_port()
    # DEBUG: the websockets library logs every handshake's request line.
    ws = spawn(["ws", "--port", str(ws_port)],
               env={**pipeline_env, "PRICEPIPE_WS_TOKENS": TOKEN, "PRICEPIPE_LOG_LEVEL": "DEBUG"})
    wait_http(f"http://127.0.0.1:{ws_port}/healthz", ws)
    base_url = make_live_api(ApiSettings(rate_limit=None, key_rate_limit=None,
                                         ws_url=f"ws://127.0.0.1:{ws_port}/ws"))
    feeder = Feeder(r, keys, {"ACME": 100.0})
    feeder.start()
    options, service = _browser()
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    options.unhandled_prompt_behavior = "ignore"  # the test answers the prompt itself
    driver = webdriver.Chrome(options=options, service=service)
    try:
        driver.set_page_load_timeout(60)
        driver.get(f"{base_url}/?symbols=ACME&token={OLD_LINK_TOKEN}")
        wait = WebDriverWait(driver, 60, poll_frequency=0.2)
        prompt = wait.until(expected_conditions.alert_is_present())
        assert "token" in prompt.text
        prompt.send_keys(TOKEN)
        prompt.accept()

        def live(d: Any) -> bool:
            return int(d.find_element(By.ID, "trades-count").get_attribute("data-count")
                       or 0) >= 3

        wait.until(live)
        assert driver.find_element(By.ID, "status").get_attribute("data-state") == "live"
        assert "token" not in driver.current_url
        assert driver.execute_script(
            "return sessionStorage.getItem('pricepipe.wsToken')") == TOKEN
        # Same tab, new page: the stored token, no question.
        driver.refresh()
        wait.until(live)
        try:
            driver.switch_to.alert.dismiss()
            raise AssertionError("the page asked for the token again")
        except NoAlertPresentException:
            pass
    finally:
        driver.quit()
        feeder.stop.set()
        feeder.join(10)
    ws.send_signal(signal.SIGTERM)
    out = ws.communicate(timeout=60)[0].decode(errors="replace")
    assert ws.returncode == 0, out
    handshakes = [line for line in out.splitlines() if "GET /ws" in line]
    assert len(handshakes) >= 2, out  # the page's two connections (at least)
    assert all("GET /ws HTTP/1.1" in line for line in handshakes), handshakes
    assert TOKEN not in out and OLD_LINK_TOKEN not in out
