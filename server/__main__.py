"""python -m server [--address HOST:PORT] [--store DIR] [...]; `--help` lists every flag and GANSERVE_* variable.

One of three process shapes: one server process (the default), `--workers N` processes under a supervisor
(server/app.py), or this server behind the native front end (`--frontend native`, server/frontend.py).
"""

import logging
import sys

from server import preflight
from server.app import serve_one
from server.supervisor import Supervisor
from server.config import Config, from_args
from server.frontend import NativeFrontend
from server.telemetry import setup_logging

log = logging.getLogger("ganserve.server")


def serve(config: Config) -> int:
    setup_logging(config.log_level, config.log_format)
    try:
        preflight.check(config)
    except preflight.ConfigError as e:  # one line naming the setting and the fix, not a traceback
        print(f"error: {e}", file=sys.stderr)
        return 2
    if config.frontend == "python" and config.workers == 1:
        return serve_one(config)
    try:
        process = NativeFrontend(config) if config.frontend == "native" else Supervisor(config)
    except (OSError, ValueError) as e:  # a missing gateway, a busy address: one clear line, exit 1
        log.error("%s", e)
        return 1
    return process.run()


def main(argv=None) -> int:
    return serve(from_args(argv))


if __name__ == "__main__":
    sys.exit(main())
