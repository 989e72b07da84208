"""Publishers: put trades and quotes on the Redis streams.

* :mod:`.generator` simulates a market (GBM mid, quotes around it, trades
  against them).
* :mod:`.poller` polls upstream price APIs (:mod:`.providers`).
* :mod:`.feeds` streams a venue's websocket (Binance spot, Coinbase
  Exchange): every trade once, in trade-id order, gaps repaired over REST,
  the feed's status published as data.
* :mod:`.sink` appends events to the streams and applies the
  Redis-memory backpressure policy.

Run as ``pricepipe publish ...`` or ``python -m pricepipe.publisher ...``.
"""
