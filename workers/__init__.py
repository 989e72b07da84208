"""The persist workers and the rq jobs around them.

* :mod:`.batch` - pure: trade and quote entries -> validated rows and rejects, COPY text.
* :mod:`.bars` - pure: one-minute bars of trades (the Python and SQL rule).
* :mod:`.sink` - PostgreSQL: one idempotent transaction per batch (trades, quotes, 1m bars).
* :mod:`.consumer` - Redis: the persist consumer group (read, claim, ack, dead-letter).
* :mod:`.barfeed` - Redis: the bars stream (changed bars after each commit, final bars).
* :mod:`.persister` - the worker loop tying them together, with retries and graceful stop.
"""
