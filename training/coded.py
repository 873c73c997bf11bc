"""Self-conditioning's generator wrapper (Liu et al. 2020, "Diverse Image Generation via Self-Conditioned GANs").

An unconditional model may condition G and D on an unsupervised cluster of the data (k-means, no labels:
training.gan.cluster_data). CodedGenerator draws that cluster from the first latent coordinate, so the served
model keeps one Gaussian input z, and wraps any conditional generator inner(z_rest (B, d-1), code (B, K)):
the DCGAN of training.dcgan for images, the MLP of training.toy for 2-D points.
"""

from __future__ import annotations

import torch
import torch.nn as nn


def normal_quantile(p: torch.Tensor) -> torch.Tensor:
    """Standard-normal quantiles of probabilities p (clamped away from 0 and 1)."""
    return torch.distributions.Normal(0.0, 1.0).icdf(p.double().clamp(1e-12, 1 - 1e-12))


class CodedGenerator(nn.Module):
    """Unconditional generator with a discrete code read off the latent: z (B, latent_dim) -> inner's output.

    The code (one of K clusters, with prior probabilities `probs`) is a deterministic function of z_0 ~ N(0, 1):
    cluster k <=> edges[k] < z_0 <= edges[k + 1], where edges are the standard-normal quantiles of the cumulative
    prior, so P(code = k) = probs[k] exactly. The rest z_1.. feeds `inner`, a conditional generator with the
    one-hot code as its class vector. The indicator is built from two comparisons (1[z_0 > lo] - 1[z_0 > hi]),
    which export to plain ONNX Greater/Cast/Sub and carry no gradient (dG/dz_0 = 0 almost everywhere).
    """

    def __init__(self, latent_dim: int, probs, inner: nn.Module):
        super().__init__()
        probs = torch.as_tensor(probs, dtype=torch.float64)
        if probs.dim() != 1 or len(probs) < 2 or (probs <= 0).any():
            raise ValueError("probs must be a vector of >= 2 positive cluster probabilities")
        if latent_dim < 2:
            raise ValueError(f"latent_dim must be >= 2 (z_0 is the code), got {latent_dim}")
        probs = probs / probs.sum()
        inner_edges = normal_quantile(torch.cumsum(probs, 0)[:-1])
        big = torch.tensor([1e30], dtype=torch.float64)  # stands for infinity, finite in ONNX initialisers
        self.register_buffer("probs", probs.float())
        self.register_buffer("lo", torch.cat([-big, inner_edges]).float())  # (K,)
        self.register_buffer("hi", torch.cat([inner_edges, big]).float())   # (K,)
        self.num_codes = len(probs)
        self.inner = inner

    def latent_code(self) -> dict:
        """The manifest's `latent_code` (ganserve/store/manifest.py): z_0's cells and a representative value of each
        (its median under N(0, 1)), so inversion can choose the cell by search and keep it fixed."""
        probs = self.probs.double()
        values = normal_quantile(torch.cumsum(probs, 0) - probs / 2)  # each cell's median
        return {"dim": 0, "edges": [round(float(e), 7) for e in self.hi[:-1]],
                "values": [round(float(v), 7) for v in values]}

    def code(self, z: torch.Tensor) -> torch.Tensor:
        """(B, K) one-hot cluster code of each latent."""
        z0 = z[:, :1]  # (B, 1)
        return (z0 > self.lo).float() - (z0 > self.hi).float()

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.inner(z[:, 1:], self.code(z))
