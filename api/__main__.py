"""``python -m pricepipe.api`` is ``pricepipe api``."""

import sys

from pricepipe.cli import main

sys.exit(main(["api", *sys.argv[1:]]))
