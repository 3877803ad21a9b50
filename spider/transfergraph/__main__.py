"""``python -m spider.transfergraph`` = ``spider transfergraph`` (:mod:`spider.transfergraph.cli`)."""

import sys

from spider.transfergraph.cli import main

if __name__ == "__main__":
    sys.exit(main())
