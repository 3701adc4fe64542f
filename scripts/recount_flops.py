"""Count the FLOPs of finished runs again from their records: ``harness recount-flops``, kept under this name for a
clone's older commands (an installed package has the subcommand alone).

python scripts/recount_flops.py results/runs --data-dir commonsense=../shared/data/commonsense \
    --data-dir diffusion=../shared/data/diffusion/twemoji-64

Its flags and exit status are the subcommand's (``harness recount-flops --help``).
"""

from __future__ import annotations

import sys

from harness.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["recount-flops", *sys.argv[1:]]))
