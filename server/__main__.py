"""python -m server [--address HOST:PORT] [--store DIR]"""

import argparse
import logging
import sys

from server.app import serve


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m server", description="ganserve gRPC server")
    p.add_argument("--address", default="localhost:50051")
    p.add_argument("--store", default="model_store")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return serve(args.address)


if __name__ == "__main__":
    sys.exit(main())
