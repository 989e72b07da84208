"""``python -m pricepipe.workers ...`` is ``pricepipe persist ...``."""

import sys

from pricepipe.cli import main

sys.exit(main(["persist", *sys.argv[1:]]))
