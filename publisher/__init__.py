"""Publishers: put ticks on the Redis streams.

* :mod:`.generator` simulates prices (geometric Brownian motion).
* :mod:`.poller` polls upstream price APIs (:mod:`.providers`).
* :mod:`.sink` appends ticks to the streams and applies the
  Redis-memory backpressure policy.

Run as ``pricepipe publish ...`` or ``python -m pricepipe.publisher ...``.
"""
