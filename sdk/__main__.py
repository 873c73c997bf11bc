"""python -m sdk {sample,interpolate,invert,evaluate,models} ... (see sdk/_cli.py)."""

import sys

from sdk._cli import main

if __name__ == "__main__":
    sys.exit(main())
