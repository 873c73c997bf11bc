"""python -m server [--address HOST:PORT] [--store DIR] [...]; `--help` lists every flag and GANSERVE_* variable."""

import sys

from server.app import serve
from server.config import from_args


def main(argv=None) -> int:
    return serve(from_args(argv))


if __name__ == "__main__":
    sys.exit(main())
