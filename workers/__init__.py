"""The persist workers and the rq jobs around them.

* :mod:`workers.batch` - pure: stream entries -> validated rows and rejects, COPY text.
* :mod:`workers.sink` - PostgreSQL: one idempotent transaction per batch (ticks + 1m bars).
* :mod:`workers.consumer` - Redis: the persist consumer group (read, claim, ack, dead-letter).
* :mod:`workers.persister` - the worker loop tying them together, with retries and graceful stop.
"""
