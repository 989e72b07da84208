"""pricepipe: a market-data pub/sub pipeline.

Publishers append trades and quotes to Redis Streams; workers persist them
(and the one-minute bars built from the trades) to PostgreSQL;
a websocket server and an HTTP API serve them live and as history.

This package is the shared core; the roles are installed inside it
(``pricepipe.publisher``, ``.workers``, ``.subscriber``, ``.api``, from the
repository's top-level folders) and import the core, never each other. The
core never imports a role except lazily from the command line
(:mod:`pricepipe.cli`); benchmarks live in :mod:`pricepipe.bench`.
"""

__version__ = "0.1.0"
