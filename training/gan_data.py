"""Real batches for adversarial training: MNIST/digits images or fresh mixture samples, and the k-means
clusters a self-conditioned GAN is told instead of labels."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy.cluster.vq import kmeans2

from ganserve.data import MIXTURES, load_digits, load_mnist


class RealData:
    """Real batches: MNIST/digits images scaled to [-1, 1] with labels, or fresh mixture samples.

    Self-conditioned (cfg.clusters): the label is replaced by a k-means cluster. Images are clustered once; for
    mixtures, k-means runs on a fixed sample of `cluster_sample` points and every fresh batch is assigned to its
    nearest centroid (the k-means cells), the mode a point came from never being looked at.
    """

    cluster_sample = 20000

    def __init__(self, cfg, gen: torch.Generator, data=None):
        self.cfg, self.gen = cfg, gen
        self.cluster_probs, self.cluster_info, self.centroids = None, {}, None
        if cfg.points:
            self.mixture = MIXTURES[cfg.data]()
            self.source, self.sha256 = f"ganserve.data.{cfg.data}()", "analytic"
            if cfg.clusters:
                x, modes = self.mixture.sample(self.cluster_sample, cfg.seed, return_modes=True)
                assign, self.cluster_probs, self.cluster_info = cluster_data(x, cfg.clusters, cfg.seed, labels=modes)
                self.centroids = torch.from_numpy(
                    np.stack([x[assign == j].mean(0) for j in range(cfg.clusters)])).float()  # (K, 2)
            return
        if data is None:
            data = load_mnist("train", cfg.data_path or None) if cfg.data == "mnist" else load_digits("train")
        images, labels = np.array(data.images), np.array(data.labels)
        self.x = torch.from_numpy(images) * 2 - 1  # (N, 1, S, S) in [-1, 1)
        self.y = torch.from_numpy(labels)
        self.source, self.sha256 = data.source, data.sha256
        if cfg.clusters:  # self-conditioning: D and G see the cluster, never the label
            assign, self.cluster_probs, self.cluster_info = cluster_data(images, cfg.clusters, cfg.seed,
                                                                         labels=labels)
            self.y = torch.from_numpy(assign)

    def batch(self, n: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.cfg.points:
            means = torch.from_numpy(self.mixture.means).float()
            modes = torch.randint(0, len(means), (n,), generator=self.gen)
            x = means[modes] + self.mixture.std * torch.randn(n, 2, generator=self.gen)
            if self.centroids is None:
                return x, None
            return x, F.one_hot(torch.cdist(x, self.centroids).argmin(1), self.cfg.clusters).float()
        idx = torch.randint(0, len(self.y), (n,), generator=self.gen)
        k = self.cfg.d_classes
        y = F.one_hot(self.y[idx], k).float() if k else None  # (n, K): the class, or the cluster
        return self.x[idx], y


def cluster_data(data: np.ndarray, k: int, seed: int, labels: np.ndarray | None = None,
                 dims: int = 50) -> tuple[np.ndarray, np.ndarray, dict]:
    """k-means (k-means++ start) on the top `dims` principal components of the data (images: the pixels; points:
    all of their coordinates, a rotation): (assign (N,), probs (k,), info).

    Unsupervised: `labels` (the digit, the mixture's mode) are only used to report the clusters' purity (the
    fraction of items whose label is their cluster's majority label), never to form them. Deterministic for a
    given seed.
    """
    x = data.reshape(len(data), -1).astype(np.float64)
    x = x - x.mean(0)
    _, _, vt = np.linalg.svd(x[:: max(1, len(x) // 10000)], full_matrices=False)  # PCA on <= ~10k rows
    p = x @ vt[: min(dims, vt.shape[0])].T
    _, assign = kmeans2(p, k, iter=30, minit="++", seed=np.random.default_rng(seed))
    counts = np.bincount(assign, minlength=k)
    if (counts == 0).any():
        raise ValueError(f"k-means left {int((counts == 0).sum())} of {k} clusters empty; use fewer clusters")
    info = {"clusters": k, "pca_dims": int(p.shape[1]), "min_size": int(counts.min()), "max_size": int(counts.max())}
    if labels is not None:
        info["purity"] = round(float(sum(np.bincount(labels[assign == j]).max() for j in range(k)) / len(labels)), 4)
        info["labels_per_cluster_max"] = int(max(len(np.unique(labels[assign == j])) for j in range(k)))
    return assign.astype(np.int64), counts / counts.sum(), info


def random_labels(n: int, k: int, gen: torch.Generator) -> torch.Tensor:
    """(n, k) one-hot vectors of uniform random classes."""
    return F.one_hot(torch.randint(0, k, (n,), generator=gen), k).float()

