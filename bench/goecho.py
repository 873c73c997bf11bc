"""The bare native gRPC floor: bench/goecho/ (grpc-go) answering n = 1 with the prebuilt replies of bench/echo.py.

    python -m bench.goecho --address 127.0.0.1:50098 --store model_store      (bench/__main__.py starts it)

The native counterpart of bench/echo.py: no model, no validation, no latents, replies of ganserve's size for
n = 1. Its n = 1 latency is what the network path alone costs a server written in Go (grpc-go, as the native
front end), so the benchmark can show how much of any server's n = 1 latency is left for the model. Needs
`make gateway` (it builds build/ganserve-goecho next to the gateway); exits 3 with a message when that binary
is missing, and the benchmark then leaves this contender out.

Flags the benchmark passes to every server (--reload-interval-s, --log-level, ...) are accepted and ignored.
"""

from __future__ import annotations

import argparse
import os
import struct
import sys
import tempfile
from pathlib import Path

from bench.echo import output_shapes, prebuilt_reply

BINARY = Path(__file__).resolve().parent.parent / "build" / "ganserve-goecho"


def write_replies(store: Path, path: Path) -> int:
    """The replies file the Go server reads: (name, serialized n = 1 reply) records, 4-byte big-endian lengths."""
    records = []
    for model, shape in output_shapes(store).items():
        name, reply = model.encode(), prebuilt_reply(model, 1, shape).SerializeToString()
        records.append(struct.pack(">I", len(name)) + name + struct.pack(">I", len(reply)) + reply)
    path.write_bytes(b"".join(records))
    return len(records)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--address", default="127.0.0.1:50098")
    p.add_argument("--store", type=Path, default=Path("model_store"))
    args, _ = p.parse_known_args(argv)
    if not os.access(BINARY, os.X_OK):
        print(f"{BINARY} is missing: run `make gateway`", file=sys.stderr)
        raise SystemExit(3)
    fd, name = tempfile.mkstemp(prefix="goecho-", suffix=".bin")
    os.close(fd)
    write_replies(args.store, Path(name))
    # The Go server replaces this process (the benchmark's signals reach it directly) and removes the file
    # once it has read it.
    os.execv(BINARY, [str(BINARY), "-listen", args.address, "-replies", name, "-remove-replies"])


if __name__ == "__main__":
    main()
