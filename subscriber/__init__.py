"""Subscribers: everything that reads the streams live.

* :mod:`.ws` - the websocket server (``pricepipe ws``, ``python -m
  pricepipe.subscriber``) for dashboards and front-ends.
* :mod:`.client` - the strategy client library: read the streams straight
  from Redis, sync or asyncio, or replay history from PostgreSQL.
* :mod:`.tail` - ``pricepipe tail SYMBOL...``, live ticks in a terminal.

The two share nothing but the core (:mod:`pricepipe.codec`, the key layout).
"""
