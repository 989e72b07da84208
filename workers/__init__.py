"""The persist workers and the rq jobs around them.

* :mod:`.batch` - pure: stream entries -> validated rows and rejects, COPY text.
* :mod:`.sink` - PostgreSQL: one idempotent transaction per batch (ticks + 1m bars).
* :mod:`.consumer` - Redis: the persist consumer group (read, claim, ack, dead-letter).
* :mod:`.persister` - the worker loop tying them together, with retries and graceful stop.
"""
