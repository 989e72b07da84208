import sys

from pricepipe.cli import main

sys.exit(main(["publish", *sys.argv[1:]]))
