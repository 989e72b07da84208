"""Secrets never in logs (issue 16): the one redaction of pricepipe.logs, on
plain and JSON lines, messages and tracebacks, for the records of any logger.
The processes of every role are checked in tests/e2e/test_no_secrets_in_logs.py."""

from __future__ import annotations

import io
import logging
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import ClassVar

import orjson
import pytest

from pricepipe.config import Settings, setting
from pricepipe.logs import REDACTED, JsonFormatter, Redactor, configured_secrets, url_passwords

SECRET = "s3cr3t-Value-9f8e7d"


@pytest.mark.parametrize(("line", "gone", "kept"), [
    ("GET /q/AAPL?apikey=abc123XYZ&sym=AAPL", "abc123XYZ", "?apikey=****&sym=AAPL"),
    ("Max retries exceeded with url: /v1/x?symbol=A&api_key=abc123XYZ (Caused by ...)",
     "abc123XYZ", "api_key=**** (Caused"),
    ("https://h/p?key=abc123XYZ", "abc123XYZ", "?key=****"),
    ("ws://h/ws?token=abc123XYZ", "abc123XYZ", "?token=****"),
    ("redis://:abc123XYZ@127.0.0.1:6379/0 refused", "abc123XYZ", "redis://:****@127.0.0.1"),
    ("postgresql://writer:abc123XYZ@db:5432/pp down", "abc123XYZ", "writer:****@db:5432"),
    ("dsn host=db user=w password=abc123XYZ dbname=pp", "abc123XYZ", "password=**** dbname"),
    ("dsn password='a b c123XYZ' host=db", "c123XYZ", "password=**** host=db"),
    ("Authorization: Bearer abc123XYZ", "abc123XYZ", "Authorization: Bearer ****"),
    ("X-API-Key: abc123XYZ", "abc123XYZ", "X-API-Key: ****"),
    ("headers {'Authorization': 'Bearer abc123XYZ', 'Accept': 'json'}", "abc123XYZ",
     "'Authorization': '****', 'Accept': 'json'"),
    ('{"op": "auth", "token": "abc123XYZ"}', "abc123XYZ", '"token": "****"'),
])
def test_patterns_mask_secrets_in_their_usual_places(line: str, gone: str, kept: str) -> None:
    out = Redactor().redact(line)
    assert gone not in out and kept in out, out


def test_ordinary_lines_are_left_alone() -> None:
    for line in ("stream key=pp:{s0}:trades:AAPL lag 3", "persisted 10 trades in 0.1 s",
                 "websocket server on ws://127.0.0.1:8765/ws", "tokens=3 in the bucket",
                 "http://127.0.0.1:8000/healthz answered 200"):
        assert Redactor().redact(line) == line


def test_exact_secret_values_are_masked_anywhere_with_their_url_forms() -> None:
    redactor = Redactor(["p@ss/word+with space", "abc"])  # "abc": too short to mask everywhere
    out = redactor.redact("raw p@ss/word+with space, encoded p%40ss%2Fword%2Bwith%20space, "
                          "plus p%40ss%2Fword%2Bwith+space; abc stays")
    assert "p@ss" not in out and "p%40ss" not in out and out.count(REDACTED) == 3
    assert "abc stays" in out


@pytest.fixture
def capture() -> Iterator[Callable[[logging.Formatter, Redactor], tuple[io.StringIO,
                                                                         logging.Logger]]]:
    """A handler like setup_logging's on a private parent logger (not the root,
    which pytest's own capture uses); returns the stream and a child logger."""
    parent = logging.getLogger("h13test")

    def make(formatter: logging.Formatter, redactor: Redactor) -> tuple[io.StringIO,
                                                                        logging.Logger]:
        stream = io.StringIO()
        handler = logging.StreamHandler(stream)
        handler.setFormatter(formatter)
        handler.addFilter(redactor)
        parent.propagate = False
        parent.handlers[:] = [handler]
        parent.setLevel(logging.DEBUG)
        # A child's records reach the parent's handler, and its filter.
        return stream, logging.getLogger("h13test.urllib3.connectionpool")

    yield make
    parent.handlers.clear()


@pytest.mark.parametrize("json", [False, True])
def test_messages_arguments_and_tracebacks_of_any_logger_are_redacted(
        json: bool, capture: Callable[..., tuple[io.StringIO, logging.Logger]]) -> None:
    formatter = JsonFormatter() if json else logging.Formatter("%(levelname)s %(message)s")
    stream, log = capture(formatter, Redactor([SECRET]))
    log.warning("retrying %s", f"http://up/q?apikey={SECRET}")
    try:
        raise ConnectionError(f"could not reach redis://:{SECRET}@127.0.0.1:1 ({SECRET})")
    except ConnectionError:
        log.exception("connect failed for %r", {"X-API-Key": SECRET})
    log.info("stack of %s", f"password={SECRET}", stack_info=True)
    text = stream.getvalue()
    assert SECRET not in text
    assert text.count(REDACTED) >= 4
    assert "ConnectionError: could not reach redis://:****@127.0.0.1:1 (****)" in (
        text if not json else "\n".join(orjson.loads(line).get("exc", "")
                                        for line in text.splitlines()))


def test_bad_format_arguments_do_not_escape_unredacted(
        capture: Callable[..., tuple[io.StringIO, logging.Logger]]) -> None:
    stream, log = capture(logging.Formatter("%(message)s"), Redactor([SECRET]))
    log.error("two %s %s", f"token={SECRET}")  # one argument short
    assert SECRET not in stream.getvalue() and "do not format" in stream.getvalue()


@dataclass(frozen=True, kw_only=True)
class _Fake(Settings):
    env_prefix: ClassVar[str] = "PRICEPIPE_FAKE_"

    api_keys: tuple[str, ...] = setting((), "keys", secret=True)
    token: str | None = setting(None, "a token", secret=True)
    name: str = setting("x", "not secret")


def test_configured_secrets_are_the_secret_settings_and_url_passwords() -> None:
    environ = {"PRICEPIPE_FAKE_API_KEYS": "key-one-1,key-two-2", "PRICEPIPE_FAKE_TOKEN": "tok-3",
               "PRICEPIPE_FAKE_NAME": "visible", "PRICEPIPE_REDIS_URL": "redis://:p%40ss@h:1",
               "HTTPS_PROXY": "http://u:proxy-pw@proxy:3128"}
    found = set(configured_secrets(environ, [_Fake], values=["postgresql://w:argv-pw@h/db"]))
    assert {"key-one-1", "key-two-2", "tok-3", "p%40ss", "p@ss", "proxy-pw", "argv-pw"} <= found
    assert "visible" not in found
    assert url_passwords("a redis://:x1@h b http://h:80/p") == ["x1"]


def test_the_command_masks_its_configured_secrets_and_uncaught_exceptions() -> None:
    """In a process set up as every ``pricepipe`` command is (``cli.main``)."""
    code = (
        "import logging, sys\n"
        "from pricepipe import cli\n"
        "sys.argv = ['pricepipe', 'config']\n"
        "cli.main(['config'])\n"
        "log = logging.getLogger('pricepipe.test')\n"
        "log.warning('ws tokens %s and key %s', 'ws-token-abcdef', 'api-key-123456')\n"
        "log.warning('finnhub %s', 'finnhub-key-999')\n"
        "raise RuntimeError('down: postgresql://w:db-pw-4321@127.0.0.1:1/x')\n"
    )
    env = {"PRICEPIPE_WS_TOKENS": "ws-token-abcdef,other-token", "PATH": "/usr/bin:/bin",
           "PRICEPIPE_API_API_KEYS": "api-key-123456", "PRICEPIPE_FINNHUB_API_KEY":
           "finnhub-key-999", "PRICEPIPE_DATA_DIR": "/nonexistent-h13", "PRICEPIPE_LOG_JSON": "1"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 1
    for secret in ("ws-token-abcdef", "api-key-123456", "finnhub-key-999", "db-pw-4321"):
        assert secret not in proc.stderr, proc.stderr
    lines = [orjson.loads(line) for line in proc.stderr.splitlines()]
    assert lines[0]["msg"] == "ws tokens **** and key ****"
    assert lines[1]["msg"] == "finnhub ****"
    assert lines[2]["msg"] == "uncaught exception"
    assert "RuntimeError: down: postgresql://w:****@127.0.0.1:1/x" in lines[2]["exc"]
