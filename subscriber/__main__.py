"""``python -m pricepipe.subscriber ...`` is ``pricepipe ws ...``."""

import sys

from pricepipe.cli import main

sys.exit(main(["ws", *sys.argv[1:]]))
