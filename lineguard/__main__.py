import sys

from lineguard.cli import main

sys.exit(main(sys.argv[1:]))
