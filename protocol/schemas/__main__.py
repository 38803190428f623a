"""`python -m protocol.schemas [OUTDIR] [--readme PATH] [--check]`."""

import sys

from protocol.schemas.cli import main

sys.exit(main(sys.argv[1:]))
