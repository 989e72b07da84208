"""``python -m pricepipe.publisher ...`` is ``pricepipe publish ...``."""

import sys

from pricepipe.cli import main

sys.exit(main(["publish", *sys.argv[1:]]))
