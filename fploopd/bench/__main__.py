"""``python3 -m fploopd.bench ...``: the ``fploopd bench`` command on its own.

It imports only the bench's own modules (no PyAV, no other command), so it runs from the repository
root on a GPU machine where fploopd is not installed:

    python3 -m fploopd.bench --model full-random --device cuda --out bench.json
"""

import sys

from fploopd.cli import main

raise SystemExit(main(["bench", *sys.argv[1:]], commands=("bench",)))
