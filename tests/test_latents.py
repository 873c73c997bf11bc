"""Shared math: seed -> latents is deterministic and sliceable; lerp/slerp endpoints and norms."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protos import latents as L


def test_same_seed_same_latents_and_golden_values():
    a = L.latents(123, 5, 8)
    np.testing.assert_array_equal(a, L.latents(123, 5, 8))
    assert a.dtype == np.float32 and a.shape == (5, 8)
    assert not np.array_equal(a, L.latents(124, 5, 8))
    # Golden: the documented definition, written out independently.
    expected = np.random.default_rng([123, 0]).standard_normal((1024, 8), dtype=np.float32)[:5]
    np.testing.assert_array_equal(a, expected)


@settings(max_examples=40, deadline=None)
@given(offset=st.integers(0, 5000), n=st.integers(0, 3000))
def test_any_slice_equals_the_same_rows_of_one_big_request(offset, n):
    big = L.latents(9, offset + n, 3)
    np.testing.assert_array_equal(L.latents(9, n, 3, offset=offset), big[offset:])


def test_truncation_bounded_and_deterministic():
    z = L.latents(1, 3000, 16, truncation=0.5)
    assert np.abs(z).max() <= 0.5
    np.testing.assert_array_equal(z, L.latents(1, 3000, 16, truncation=0.5))
    np.testing.assert_array_equal(z[1500:], L.latents(1, 1500, 16, offset=1500, truncation=0.5))


def test_truncation_redraws_out_of_range_entries_golden():
    """Truncation redraws |z| > t from the block's generator (it does not clip): golden values written out from
    the documented definition. Entries already within t keep their untruncated value; the others are new draws,
    none of them at the bound (clipping would put 9 of these 12 entries at exactly +-0.5)."""
    z = L.latents(7, 3, 4, truncation=0.5)
    golden = np.array([[0.20329022, -0.38270938, 0.36107814, 0.37418032],
                       [0.19529817, 0.37570348, -0.4020438, -0.41574532],
                       [-0.06291215, -0.35017, -0.28599533, -0.08078747]], np.float32)
    np.testing.assert_allclose(z, golden, rtol=0, atol=1e-7)
    plain = L.latents(7, 3, 4)
    inside = np.abs(plain) <= 0.5
    assert inside.sum() == 3  # 9 of the 12 entries were redrawn
    np.testing.assert_array_equal(z[inside], plain[inside])
    assert not np.isin(np.abs(z), [0.5]).any()
    # a second block (offset past 1024) redraws from its own generator
    np.testing.assert_allclose(L.latents(7, 2, 4, offset=1030, truncation=1.0),
                               [[-0.83094424, 0.8794884, 0.87261796, 0.076879546],
                                [0.78190047, 0.8577078, -0.8857835, 0.6834549]], rtol=0, atol=1e-7)


@pytest.mark.parametrize("kwargs,message", [
    ({"seed": -1, "n": 1, "dim": 2}, r"seed must be in 0..2\*\*64-1, got -1"),
    ({"seed": 2**64, "n": 1, "dim": 2}, r"seed must be in 0..2\*\*64-1, got 18446744073709551616"),
    ({"seed": 1, "n": -1, "dim": 2}, "need n >= 0, offset >= 0, dim > 0; got n=-1, offset=0, dim=2"),
    ({"seed": 1, "n": 1, "dim": 2, "offset": -1}, "got n=1, offset=-1, dim=2"),
    ({"seed": 1, "n": 1, "dim": 0}, "got n=1, offset=0, dim=0"),
    ({"seed": 1, "n": 1, "dim": 2, "truncation": -1.0}, r"truncation must be >= 0 \(0 = off\), got -1.0")])
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        L.latents(**kwargs)


def test_edges_of_the_valid_range():
    """The largest seed, n = 0 and the last row of a block are valid requests."""
    top = L.latents(L.MAX_SEED, 2, 3)
    np.testing.assert_array_equal(top, np.random.default_rng([2**64 - 1, 0]).standard_normal((2, 3), np.float32))
    assert L.latents(0, 0, 3).shape == (0, 3) and L.latents(0, 0, 3, offset=5000).shape == (0, 3)
    block = np.random.default_rng([4, 0]).standard_normal((1024, 3), np.float32)
    np.testing.assert_array_equal(L.latents(4, 1, 3, offset=1023)[0], block[1023])
    np.testing.assert_array_equal(L.latents(4, 1023, 3), block[:1023])  # ends one row short of the block's end
    assert L.latents(4, 2, 1).shape == (2, 1)  # one latent dimension is valid
    two_blocks = L.latents(4, 1500, 3, offset=100)
    assert two_blocks.dtype == np.float32 and two_blocks.shape == (1500, 3)
    np.testing.assert_array_equal(two_blocks[:924], block[100:])


def test_lerp_endpoints_and_midpoint():
    a, b = np.array([0.0, 2.0]), np.array([2.0, 0.0])
    p = L.lerp(a, b, [0.0, 0.5, 1.0])
    np.testing.assert_allclose(p, [[0, 2], [1, 1], [2, 0]])


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 2**32), dim=st.integers(2, 128))
def test_slerp_endpoints_and_norms(seed, dim):
    a, b = L.latents(seed, 2, dim)
    t = np.linspace(0, 1, 9)
    p = L.slerp(a, b, t)
    np.testing.assert_allclose(p[0], a, atol=1e-5)
    np.testing.assert_allclose(p[-1], b, atol=1e-5)
    norms = np.linalg.norm(p, axis=1)
    expected = (1 - t) * np.linalg.norm(a) + t * np.linalg.norm(b)
    np.testing.assert_allclose(norms, expected, rtol=1e-5)


def test_slerp_orthogonal_midpoint_and_lerp_shrinks():
    a, b = np.array([1.0, 0.0]), np.array([0.0, 1.0])
    mid = L.slerp(a, b, [0.5])[0]
    np.testing.assert_allclose(mid, [np.sqrt(0.5), np.sqrt(0.5)], atol=1e-6)
    assert np.linalg.norm(L.lerp(a, b, [0.5])[0]) == pytest.approx(np.sqrt(0.5))


def test_slerp_parallel_falls_back():
    a = np.array([1.0, 1.0])
    np.testing.assert_allclose(L.slerp(a, 2 * a, [0.5])[0], 1.5 * a, atol=1e-6)


def test_path_through_three_points():
    pts = np.eye(3, dtype=np.float32)
    p, t = L.path(pts, 5, "slerp")
    assert p.shape == (9, 3) and t[0] == 0 and t[-1] == 2
    np.testing.assert_allclose(p[[0, 4, 8]], pts, atol=1e-6)
    with pytest.raises(ValueError):
        L.path(pts[:1], 5)
    with pytest.raises(ValueError):
        L.path(pts, 1)


@pytest.mark.parametrize("offset,n", [(0, 1), (5, 3), (1020, 10), (2047, 2)])
def test_prefix_draw_equals_the_full_block(offset, n):
    # latents() draws only the rows it needs from a block; they must equal the same rows of the full block.
    dim = 7
    full = np.concatenate([np.random.default_rng([3, b]).standard_normal((L.BLOCK, dim), dtype=np.float32)
                           for b in range(3)])
    np.testing.assert_array_equal(L.latents(3, n, dim, offset=offset), full[offset:offset + n])


def test_lerp_and_slerp_compute_in_float64_and_return_float32():
    """The documented formulas written out in float64 (on float32 latents, float32 arithmetic differs in 71 of
    these 128 entries), compared bit for bit."""
    a, b = L.latents(5, 2, 64)
    t = np.array([1 / 3, 0.7])
    a64, b64, tt = a.astype(np.float64), b.astype(np.float64), t.reshape(-1, 1)
    lerp = L.lerp(a, b, t)
    assert lerp.dtype == np.float32
    np.testing.assert_array_equal(lerp, ((1.0 - tt) * a64 + tt * b64).astype(np.float32))
    na, nb = np.linalg.norm(a64), np.linalg.norm(b64)
    omega = np.arccos(np.clip((a64 / na) @ (b64 / nb), -1, 1))
    direction = (np.sin((1.0 - tt) * omega) * (a64 / na) + np.sin(tt * omega) * (b64 / nb)) / np.sin(omega)
    slerp = L.slerp(a, b, t)
    assert slerp.dtype == np.float32
    np.testing.assert_array_equal(slerp, (direction * ((1.0 - tt) * na + tt * nb)).astype(np.float32))


def test_slerp_falls_back_to_lerp_for_zero_parallel_and_antiparallel_ends():
    """Seed 3's latent and 2x / -2x of it: their cosines round to 1 + 2e-16 and -1 - 2e-16 (clipped, not NaN)."""
    v = L.latents(3, 1, 7)[0]
    t = np.linspace(0, 1, 5)
    for a, b in ((v, np.zeros(7, np.float32)), (np.zeros(7, np.float32), v), (v, 2 * v), (v, -2 * v)):
        got = L.slerp(a, b, t)
        assert np.isfinite(got).all()
        np.testing.assert_array_equal(got, L.lerp(a, b, t))


def test_path_through_three_points_linear_and_slerp():
    points = np.array([[0.0, 2.0], [2.0, 0.0], [4.0, 2.0]], np.float32)
    path, t = L.path(points, 3, "linear")
    assert path.dtype == np.float32 and t.dtype == np.float32
    np.testing.assert_array_equal(path, [[0, 2], [1, 1], [2, 0], [3, 1], [4, 2]])
    np.testing.assert_array_equal(t, [0, 0.5, 1, 1.5, 2])
    path, t = L.path(points[:2], 2)  # two steps: just the ends; slerp by default
    np.testing.assert_array_equal(path, points[:2])
    np.testing.assert_array_equal(t, [0, 1])
    mid = L.path(points[:2], 3, "slerp")[0][1]  # orthogonal ends of norm 2: the midpoint on the circle
    np.testing.assert_allclose(mid, [np.sqrt(2), np.sqrt(2)], rtol=1e-6)


@pytest.mark.parametrize("points,steps,message", [
    (np.zeros((1, 3)), 3, r"need at least 2 points as \(k, dim\), got shape \(1, 3\)"),
    (np.zeros(3), 3, r"got shape \(3,\)"),
    (np.zeros((2, 3)), 1, "steps must be >= 2, got 1")])
def test_path_refuses_bad_arguments(points, steps, message):
    with pytest.raises(ValueError, match=message):
        L.path(points, steps)
