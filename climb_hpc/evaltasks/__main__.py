"""``python -m climb_hpc.evaltasks corpus=PATH out=DIR [...]``: the same as ``climb-hpc build-tasks``."""

import sys

from climb_hpc.evaltasks import cli

sys.exit(cli(sys.argv[1:]))
