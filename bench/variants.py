"""Experiment: the stock server with proposed changes patched in, so `python -m bench --variant ...` can
measure them against the stock server in the same interleaved rounds (`--variant none --variant-args ...`
measures other flags instead, e.g. the previous defaults). Nothing here is used by the server
itself; a change that measures well is for the server's owner to adopt (see docs/bench.md).

    python -m bench.variants PATCHES [server flags...]      PATCHES: comma list, or "none"

Patches: none at present. The last one, latents-prefix (draw only the rows a request needs from a seed's
1024-row block), measured well and was adopted by protos/latents.py itself; add a new proposal to PATCHES.
"""

from __future__ import annotations

import sys

PATCHES: dict = {}  # name -> function that patches the server's modules before it starts


def main() -> int:
    patches = [p for p in sys.argv.pop(1).split(",") if p and p != "none"]
    for p in patches:
        if p not in PATCHES:
            raise SystemExit(f"unknown patch {p!r}; known: {sorted(PATCHES) or 'none'}")
        PATCHES[p]()
    from server.__main__ import main as serve

    return serve(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
