"""Run inside the VM with the installed virtualenv's Python, as root
(``/opt/pricepipe/venv/bin/python probe.py COMMAND ...``): a client of the
deployed pipeline that prints one JSON object on stdout.

* ``http SYMBOL...``: through nginx on port 80, ``/healthz``, ``/v1/symbols``
  lists every symbol with a last price, ``/v1/trades/<SYMBOL>`` has trades.
* ``ws SYMBOL...``: through nginx's ``/ws``, the README's protocol: hello,
  subscribe to trades and quotes, subscribed, then live frames of both.
* ``counts``: per persisted stream, what Redis received (``entries-added``),
  what the persist group was given and has not acknowledged, beside the rows
  PostgreSQL holds (as the operator: ``/etc/pricepipe/admin.env``).
* ``access``: Redis refuses a client without a password (``NOAUTH``), and the
  websocket server's user (``/etc/pricepipe/role-ws.env``) reads the streams
  but may not ``XADD`` nor ``FLUSHALL``.

Every check retries until ``--timeout-s``: the pipeline may be starting.
Only the installed package and its dependencies are used (no test code).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

ENV_FILE = Path("/etc/pricepipe/pricepipe.env")
ADMIN_ENV = Path("/etc/pricepipe/admin.env")
WS_ENV = Path("/etc/pricepipe/role-ws.env")
BASE = "http://127.0.0.1"


class ProbeError(AssertionError):
    """A check did not hold before the timeout."""


def settings(path: Path = ENV_FILE) -> dict[str, str]:
    """An environment file (as systemd's EnvironmentFile= reads it)."""
    out = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and line[0] not in "#;" and "=" in line:
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip().strip('"')
    return out


def get_json(path: str) -> Any:
    with urllib.request.urlopen(BASE + path, timeout=10) as response:  # noqa: S310
        return json.loads(response.read())


def retry(check: Any, timeout_s: float, also: tuple[type[Exception], ...] = ()) -> Any:
    """``check()`` until it returns without raising; its last error after the timeout."""
    deadline = time.monotonic() + timeout_s
    retryable: tuple[type[Exception], ...] = (OSError, ValueError, KeyError, ProbeError, *also)
    while True:
        try:
            return check()
        except retryable as exc:
            if time.monotonic() > deadline:
                raise ProbeError(f"{type(exc).__name__}: {exc}") from exc
            time.sleep(0.5)


def probe_http(symbols: list[str], timeout_s: float) -> dict[str, Any]:
    def check() -> dict[str, Any]:
        health = get_json("/healthz")
        listed = {s["symbol"]: s for s in get_json("/v1/symbols")["symbols"]}
        missing = [s for s in symbols if listed.get(s, {}).get("last_price") is None]
        if missing:
            raise ProbeError(f"/v1/symbols: no last price for {missing}")
        trades = {}
        for symbol in symbols:
            page = get_json(f"/v1/trades/{symbol}?limit=1000")
            got = page["trades"]
            if not got or any(t["symbol"] != symbol or not t["price"] > 0 for t in got):
                raise ProbeError(f"/v1/trades/{symbol}: {str(page)[:300]}")
            trades[symbol] = len(got)
        return {"health": health, "symbols": sorted(listed), "trades": trades}

    return dict(retry(check, timeout_s))


def probe_ws(symbols: list[str], timeout_s: float) -> dict[str, Any]:
    from websockets.exceptions import WebSocketException
    from websockets.sync.client import connect

    def check() -> dict[str, Any]:
        seen: dict[str, int] = {"snapshot": 0, "trades": 0, "quotes": 0}
        with connect("ws://127.0.0.1/ws", open_timeout=10) as ws:
            hello = json.loads(ws.recv(timeout=10))
            if hello.get("type") != "hello":
                raise ProbeError(f"first message {hello}")
            ws.send(json.dumps({"op": "subscribe", "channels": ["trades", "quotes"],
                                "symbols": symbols, "req": 1}))
            deadline = time.monotonic() + min(timeout_s, 60)
            subscribed = None
            while not (subscribed and seen["trades"] and seen["quotes"]):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ProbeError(f"within a minute: subscribed={subscribed}, {seen}")
                message = json.loads(ws.recv(timeout=left))
                kind = message.get("type")
                if kind == "error":
                    raise ProbeError(f"error frame {message}")
                if kind == "subscribed":
                    subscribed = message
                elif kind in seen:
                    seen[kind] += 1
                    for channel in ("trades", "quotes"):
                        for entry in message.get(channel, ()):
                            if entry["symbol"] not in symbols or not entry["id"]:
                                raise ProbeError(f"unexpected entry {entry}")
        return {"hello": hello, "subscribed": subscribed, "frames": seen}

    return dict(retry(check, timeout_s, (WebSocketException,)))


def text(value: Any) -> Any:
    return value.decode() if isinstance(value, bytes) else value


def counts() -> dict[str, Any]:
    import psycopg2
    import redis
    from psycopg2 import sql

    from pricepipe.keys import PERSIST_GROUP, PERSISTED, Keys
    from pricepipe.streams import known_symbols

    env = {**settings(), **settings(ADMIN_ENV)}
    keys = Keys(env.get("PRICEPIPE_REDIS_PREFIX", "pp"), int(env.get("PRICEPIPE_REDIS_SHARDS",
                                                                     "8")))
    r = redis.Redis.from_url(env["PRICEPIPE_REDIS_URL"])  # bytes, as pricepipe reads it
    streams: dict[str, dict[str, Any]] = {}
    try:
        for symbol in known_symbols(r, keys):
            for channel in PERSISTED:
                key = keys.stream(symbol, channel)
                if not r.exists(key):
                    continue
                stream: dict[Any, Any] = r.xinfo_stream(key)  # type: ignore[assignment]
                info = {text(k): v for k, v in stream.items()}
                listed: list[dict[str, Any]] = r.xinfo_groups(key)  # type: ignore[assignment]
                groups = {text(g["name"]): g for g in listed}
                group = groups.get(PERSIST_GROUP, {})
                streams[f"{channel}:{symbol}"] = {
                    "entries_added": int(info["entries-added"]), "length": int(info["length"]),
                    "last_generated": text(info["last-generated-id"]),
                    "last_delivered": text(group.get("last-delivered-id")),
                    "pending": int(group.get("pending", -1)),
                }
    finally:
        r.close()
    rows: dict[str, dict[str, int]] = {}
    conn = psycopg2.connect(env["PRICEPIPE_DATABASE_URL"])
    try:
        with conn.cursor() as cur:
            for channel in PERSISTED:  # the tables are named as the channels
                cur.execute(sql.SQL("SELECT symbol, count(*), count(DISTINCT entry_id) FROM {} "
                                    "GROUP BY symbol").format(sql.Identifier(channel)))
                for symbol, total, distinct in cur.fetchall():
                    rows[f"{channel}:{symbol}"] = {"rows": int(total), "distinct": int(distinct)}
    finally:
        conn.close()
    return {"streams": streams, "rows": rows}


def access() -> dict[str, Any]:
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    from pricepipe.keys import Channel, Keys
    from pricepipe.streams import known_symbols

    env = settings()
    keys = Keys(env.get("PRICEPIPE_REDIS_PREFIX", "pp"), int(env.get("PRICEPIPE_REDIS_SHARDS",
                                                                     "8")))
    ws_url = settings(WS_ENV)["PRICEPIPE_REDIS_URL"]
    out: dict[str, Any] = {}
    # No retries: redis-py retries a refused command for seconds otherwise.
    no_retry = Retry(NoBackoff(), 0)
    server = urlsplit(ws_url)  # the same server, without the credentials
    anonymous = redis.Redis(host=server.hostname or "127.0.0.1", port=server.port or 6379,
                            retry=no_retry)
    try:
        anonymous.ping()
        out["anonymous"] = "PONG"
    except redis.AuthenticationError as exc:
        out["anonymous"] = f"NOAUTH {exc}"
    finally:
        anonymous.close()
    ws = redis.Redis.from_url(ws_url, retry=no_retry)
    try:
        symbols = sorted(s.decode() if isinstance(s, bytes) else s
                         for s in known_symbols(ws, keys))
        if not symbols:
            raise ProbeError("the ws user sees no symbols")
        stream = keys.stream(symbols[0], Channel.TRADES)
        length: int = ws.xlen(stream)  # type: ignore[assignment]
        out["ws_xlen"] = int(length)
        for name, call in (("ws_xadd", lambda: ws.xadd(stream, {"x": "1"})),
                           ("ws_flushall", ws.flushall)):
            try:
                call()
                out[name] = "allowed"
            except redis.exceptions.NoPermissionError as exc:
                out[name] = f"NOPERM {exc}"
    finally:
        ws.close()
    return out


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("command", choices=("http", "ws", "counts", "access"))
    parser.add_argument("symbols", nargs="*")
    parser.add_argument("--timeout-s", type=float, default=60.0)
    args = parser.parse_args(argv)
    try:
        if args.command == "http":
            out = probe_http(args.symbols, args.timeout_s)
        elif args.command == "ws":
            out = probe_ws(args.symbols, args.timeout_s)
        elif args.command == "access":
            out = access()
        else:
            out = counts()
    except (ProbeError, urllib.error.URLError) as exc:
        print(json.dumps({"error": str(exc)}))
        return 1
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
