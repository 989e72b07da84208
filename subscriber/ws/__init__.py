"""The websocket server: live trades, quotes and one-minute bars pushed to
subscribers.

* :mod:`.protocol` parses and encodes the messages (pure).
* :mod:`.resume` decides whether a resume cursor can be served (pure).
* :mod:`.address` who a connection is from, and how many each address holds.
* :mod:`.registry` which symbols are registered (a cached copy).
* :mod:`.hub` reads the streams once per process and fans entries out.
* :mod:`.session` is one connection: catch-up, resume, epochs, slow consumers.
* :mod:`.server` is the process: handshake routing, limits, health.
* :mod:`.settings` every ``PRICEPIPE_WS_*`` setting.

The protocol is documented in the README ("Websocket protocol").
"""
