"""Kept for old command lines: ``python scripts/bench.py ARGS`` is ``harness bench ARGS`` (see harness/bench.py).

harness bench --data-dir ../shared/data/commonsense --rounds 5
"""

from __future__ import annotations

import sys

from harness.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
