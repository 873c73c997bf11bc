"""Seed -> latents, and interpolation paths: the contract's reproducibility functions.

Latents for a seed (documented in the .proto and README; changing this changes every served image):

    sample i of seed s  =  row (i mod 1024) of
        numpy.random.default_rng([s, i // 1024]).standard_normal((1024, latent_dim), dtype=float32)

Blocks of 1024 make any slice [offset, offset+n) cheap to produce on its own (a resumed batch job, a shard,
a stream chunk) while staying identical to the same rows of a single large request. numpy's PCG64 with a
SeedSequence of [seed, block] is specified bit-for-bit, so the same seed gives the same latents on any
machine. Truncation (the "truncation trick") redraws entries with |z| > t from the same block generator,
so it is just as deterministic.
"""

from __future__ import annotations

import numpy as np

BLOCK = 1024
MAX_SEED = 2**64 - 1


def _block(seed: int, block: int, dim: int, truncation: float, rows: int = BLOCK) -> np.ndarray:
    """The block's first `rows` rows. numpy's Generator fills an array element by element, so without
    truncation a (rows, dim) draw is exactly the first rows of a (BLOCK, dim) draw: a one-sample request
    draws 1 row, not 1024 (tests/test_latents.py checks the equality). Truncation redraws from the same
    generator after the whole block, so it always draws the whole block."""
    rng = np.random.default_rng([int(seed), int(block)])
    z = rng.standard_normal((BLOCK if truncation > 0 else rows, dim), dtype=np.float32)
    if truncation > 0:
        # Redraw out-of-range entries until none remain; each round is drawn from the same generator.
        bad = np.abs(z) > truncation
        while bad.any():
            z[bad] = rng.standard_normal(int(bad.sum()), dtype=np.float32)
            bad = np.abs(z) > truncation
    return z


def latents(seed: int, n: int, dim: int, *, offset: int = 0, truncation: float = 0.0) -> np.ndarray:
    """Latents of samples offset .. offset+n-1 for `seed`: float32 array (n, dim)."""
    if not 0 <= seed <= MAX_SEED:
        raise ValueError(f"seed must be in 0..2**64-1, got {seed}")
    if n < 0 or offset < 0 or dim <= 0:
        raise ValueError(f"need n >= 0, offset >= 0, dim > 0; got n={n}, offset={offset}, dim={dim}")
    if truncation < 0:
        raise ValueError(f"truncation must be >= 0 (0 = off), got {truncation}")
    first, last = offset // BLOCK, (offset + n - 1) // BLOCK
    if n and first == last:  # one block (every request of up to 1024 samples from offset 0): no copy
        lo = offset - first * BLOCK
        return _block(seed, first, dim, truncation, rows=lo + n)[lo:lo + n]
    out = np.empty((n, dim), dtype=np.float32)
    for block in range(first, last + 1 if n else first):
        lo = max(offset, block * BLOCK)
        hi = min(offset + n, (block + 1) * BLOCK)
        z = _block(seed, block, dim, truncation, rows=hi - block * BLOCK)
        out[lo - offset:hi - offset] = z[lo - block * BLOCK:hi - block * BLOCK]
    return out


def lerp(a: np.ndarray, b: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Linear path (1 - t) a + t b for each t: (len(t), *a.shape)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    t = np.asarray(t, np.float64).reshape((-1,) + (1,) * a.ndim)
    return ((1.0 - t) * a + t * b).astype(np.float32)


def slerp(a: np.ndarray, b: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Spherical path between a and b (Shoemake 1985; White 2016 for GAN latents).

    Interpolates the direction along the great circle and the norm linearly, so the endpoints are exact
    and intermediate points keep a norm between |a| and |b| (a straight line through a Gaussian latent
    space passes near the origin, where the prior has almost no mass). Falls back to lerp when a and b are
    (anti)parallel or one is zero.
    """
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    t = np.asarray(t, np.float64).reshape(-1, 1)
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 or nb == 0:
        return lerp(a, b, t.ravel())
    ua, ub = a / na, b / nb
    omega = np.arccos(np.clip(ua @ ub, -1.0, 1.0))
    if omega < 1e-6 or np.pi - omega < 1e-6:
        return lerp(a, b, t.ravel())
    so = np.sin(omega)
    direction = (np.sin((1.0 - t) * omega) * ua + np.sin(t * omega) * ub) / so
    norm = (1.0 - t) * na + t * nb
    return (direction * norm).astype(np.float32)


def path(points: np.ndarray, steps: int, method: str = "slerp") -> tuple[np.ndarray, np.ndarray]:
    """A path through k >= 2 points, `steps` points per segment including both ends.

    Returns (path, t): path is ((k-1)(steps-1)+1, dim) and t runs from 0 to k-1 (segment index + fraction).
    """
    points = np.asarray(points, np.float32)
    if points.ndim != 2 or len(points) < 2:
        raise ValueError(f"need at least 2 points as (k, dim), got shape {points.shape}")
    if steps < 2:
        raise ValueError(f"steps must be >= 2, got {steps}")
    fn = {"slerp": slerp, "linear": lerp}[method]
    frac = np.linspace(0.0, 1.0, steps)
    pieces, ts = [], []
    for i in range(len(points) - 1):
        seg = fn(points[i], points[i + 1], frac)
        keep = slice(None) if i == 0 else slice(1, None)  # do not repeat shared endpoints
        pieces.append(seg[keep])
        ts.append(i + frac[keep])
    return np.concatenate(pieces).astype(np.float32), np.concatenate(ts).astype(np.float32)
