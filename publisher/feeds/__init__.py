"""Websocket feeds: a venue's live trades and quotes, with gaps detected and
repaired and the feed's status published as data.

* :mod:`.feed` - the asyncio loop: connections, silence, reconnects, output.
* :mod:`.adapters` - what each venue needs (URLs, subscriptions, limits).
* :mod:`.sequencer` - per-symbol trade-id continuity: exactly once, in order.
* :mod:`.plans` - which REST pages repair a gap.
* :mod:`.backoff` - reconnect delays.
* :mod:`.status` - writing status events and state to Redis.

Run as ``pricepipe publish --source binance-ws|coinbase-ws --symbols ...``.
"""
