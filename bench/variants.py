"""Experiment: the stock server with proposed changes patched in, so `python -m bench --variant ...` can
measure them against the stock server in the same interleaved rounds (`--variant none --variant-args ...`
measures other flags instead, e.g. the previous defaults). Nothing here is used by the server
itself; a change that measures well is for the server's owner to adopt (see docs/bench.md).

    python -m bench.variants PATCHES [server flags...]      PATCHES: comma list, or "none"

Patches:
  latents-prefix  seed -> latents draws only the rows a request needs from its 1024-row block (when
                  truncation is off). numpy's Generator fills an array element by element, so the first k rows
                  of a (1024, d) draw are exactly a (k, d) draw from the same generator: identical latents,
                  ~1 ms less per single-sample request (a 1024 x d block of normals is drawn today).
"""

from __future__ import annotations

import sys

import numpy as np


def patch_latents_prefix() -> None:
    from protos import latents as L

    stock = L.latents

    def latents(seed, n, dim, *, offset=0, truncation=0.0):
        if truncation > 0 or not 0 <= seed <= L.MAX_SEED or n < 0 or offset < 0 or dim <= 0:
            return stock(seed, n, dim, offset=offset, truncation=truncation)  # same checks and errors
        out = np.empty((n, dim), dtype=np.float32)
        first, last = offset // L.BLOCK, (offset + n - 1) // L.BLOCK
        for block in range(first, last + 1 if n else first):
            lo, hi = max(offset, block * L.BLOCK), min(offset + n, (block + 1) * L.BLOCK)
            rng = np.random.default_rng([int(seed), int(block)])
            z = rng.standard_normal((hi - block * L.BLOCK, dim), dtype=np.float32)  # the block's first rows
            out[lo - offset:hi - offset] = z[lo - block * L.BLOCK:]
        return out

    L.latents = latents


def main() -> int:
    patches = [p for p in sys.argv.pop(1).split(",") if p and p != "none"]
    for p in patches:
        if p == "latents-prefix":
            patch_latents_prefix()
        else:
            raise SystemExit(f"unknown patch {p!r}; known: latents-prefix")
    from server.__main__ import main as serve

    return serve(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
