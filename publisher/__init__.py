"""Publishers: put ticks on the Redis streams.

* :mod:`publisher.generator` simulates prices (geometric Brownian motion).
* :mod:`publisher.poller` polls upstream price APIs (:mod:`publisher.providers`).
* :mod:`publisher.sink` appends ticks to the streams and applies the
  Redis-memory backpressure policy.

Run as ``pricepipe publish ...`` or ``python -m publisher ...``.
"""
