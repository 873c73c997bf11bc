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


@pytest.mark.parametrize("kwargs", [dict(seed=-1, n=1, dim=2), dict(seed=2**64, n=1, dim=2),
                                    dict(seed=1, n=-1, dim=2), dict(seed=1, n=1, dim=0),
                                    dict(seed=1, n=1, dim=2, truncation=-1.0)])
def test_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        L.latents(**kwargs)


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
