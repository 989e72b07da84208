"""pricepipe: a market-data pub/sub pipeline.

Publishers append ticks to Redis Streams; workers persist them to PostgreSQL;
a websocket server and an HTTP API serve them live and as history.

This package is the shared core. It never imports a role package
(``publisher``, ``workers``, ``subscriber``, ``api``) except lazily from the CLI.
"""

__version__ = "0.1.0"
