"""Subscribers: the websocket server and the strategy client library.

* :mod:`subscriber.protocol` parses and encodes websocket messages (pure).
* :mod:`subscriber.hub` reads the streams once per process and fans ticks out.
* :mod:`subscriber.session` is one connection: catch-up, resume, slow consumers.
* :mod:`subscriber.server` is the process: handshake routing, limits, health.
* :mod:`subscriber.client` lets strategies read ticks straight from Redis
  (latest-only or consumer group) or replay history from PostgreSQL;
  :mod:`subscriber.delivery` is its pure bookkeeping (cursors, pacing).
* :mod:`subscriber.tail` is ``pricepipe tail``; :mod:`subscriber.bench` the
  websocket benchmark; :mod:`subscriber.settings` every ``PRICEPIPE_WS_*`` and
  ``PRICEPIPE_CLIENT_*`` setting.

Run the server as ``pricepipe ws ...`` or ``python -m subscriber ...``;
``pricepipe tail SYMBOL...`` prints live ticks.
"""
