"""DCGAN-style networks for MNIST (Radford et al. 2016), unconditional and conditional.

Sized for a 2-core CPU: the generator is ~1 M parameters (~13 MFLOP per 28x28 sample with width 64).
Self-conditioning (Liu et al. 2020, "Diverse Image Generation via Self-Conditioned GANs"): an *unconditional*
model may still condition G and D on an unsupervised cluster of the image (k-means, no labels). CodedGenerator
draws that cluster from the first latent coordinate, so the served model keeps one Gaussian input z.
Conditioning (Mirza & Osindero 2014): G reads [z, y] where y (B, K) is a class-probability vector (one-hot for
hard labels), so soft labels and label interpolation are meaningful at serving time. D uses the projection
discriminator (Miyato & Koyama 2018, eq. 3): D(x, y) = psi(phi(x)) + <y E, phi(x)>, linear in y.
"""

from __future__ import annotations

import torch
import torch.nn as nn


class Generator(nn.Module):
    """z (B, latent_dim) [, y (B, num_classes)] -> x (B, 1, S, S) in [-1, 1], S = image_size (28 or 8)."""

    def __init__(self, latent_dim: int, num_classes: int = 0, width: int = 64, image_size: int = 28):
        super().__init__()
        if image_size % 4:
            raise ValueError(f"image_size must be a multiple of 4, got {image_size}")
        self.num_classes = num_classes
        self.base = image_size // 4
        self.c = c = 2 * width
        self.fc = nn.Sequential(nn.Linear(latent_dim + num_classes, c * self.base**2, bias=False),
                                nn.BatchNorm1d(c * self.base**2), nn.ReLU())
        self.up = nn.Sequential(
            nn.ConvTranspose2d(c, width, 4, 2, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),  # (B, w, S/2, S/2)
            nn.Conv2d(width, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
            nn.ConvTranspose2d(width, 1, 4, 2, 1), nn.Tanh())                                     # (B, 1, S, S)

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        h = torch.cat([z, y], 1) if self.num_classes else z  # (B, latent_dim + K)
        h = self.fc(h).view(-1, self.c, self.base, self.base)  # (B, 2w, S/4, S/4)
        return self.up(h)


class Discriminator(nn.Module):
    """x (B, 1, S, S) [, y (B, num_classes)] -> score (B, 1): a logit (GAN) or a critic value (WGAN).

    No batch normalisation: the gradient penalty is per sample (Gulrajani et al. 2017, Sec. 4), and the same
    network then serves every objective.
    """

    def __init__(self, num_classes: int = 0, width: int = 64, image_size: int = 28):
        super().__init__()
        self.num_classes = num_classes
        feat = 2 * width * (image_size // 4) ** 2
        self.phi = nn.Sequential(
            nn.Conv2d(1, width, 4, 2, 1), nn.LeakyReLU(0.2),           # (B, w, S/2, S/2)
            nn.Conv2d(width, 2 * width, 4, 2, 1), nn.LeakyReLU(0.2),   # (B, 2w, S/4, S/4)
            nn.Flatten())                                              # (B, feat)
        self.psi = nn.Linear(feat, 1)
        self.embed = nn.Linear(num_classes, feat, bias=False) if num_classes else None

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        h = self.phi(x)
        out = self.psi(h)  # (B, 1)
        if self.embed is not None:
            out = out + (self.embed(y) * h).sum(1, keepdim=True)  # projection term <y E, phi(x)>
        return out


def _normal_quantile(p: torch.Tensor) -> torch.Tensor:
    """Standard-normal quantiles of probabilities p (clamped away from 0 and 1)."""
    return torch.distributions.Normal(0.0, 1.0).icdf(p.double().clamp(1e-12, 1 - 1e-12))


class CodedGenerator(nn.Module):
    """Unconditional generator with a discrete code read off the latent: z (B, latent_dim) -> x (B, 1, S, S).

    The code (one of K clusters, with prior probabilities `probs`) is a deterministic function of z_0 ~ N(0, 1):
    cluster k <=> edges[k] < z_0 <= edges[k + 1], where edges are the standard-normal quantiles of the cumulative
    prior, so P(code = k) = probs[k] exactly. The rest z_1.. feeds an inner conditional Generator with the
    one-hot code as its class vector. The indicator is built from two comparisons (1[z_0 > lo] - 1[z_0 > hi]),
    which export to plain ONNX Greater/Cast/Sub and carry no gradient (dG/dz_0 = 0 almost everywhere).
    """

    def __init__(self, latent_dim: int, probs, width: int = 64, image_size: int = 28):
        super().__init__()
        probs = torch.as_tensor(probs, dtype=torch.float64)
        if probs.dim() != 1 or len(probs) < 2 or (probs <= 0).any():
            raise ValueError("probs must be a vector of >= 2 positive cluster probabilities")
        if latent_dim < 2:
            raise ValueError(f"latent_dim must be >= 2 (z_0 is the code), got {latent_dim}")
        probs = probs / probs.sum()
        inner = _normal_quantile(torch.cumsum(probs, 0)[:-1])
        big = torch.tensor([1e30], dtype=torch.float64)  # stands for infinity, finite in ONNX initialisers
        self.register_buffer("probs", probs.float())
        self.register_buffer("lo", torch.cat([-big, inner]).float())  # (K,)
        self.register_buffer("hi", torch.cat([inner, big]).float())   # (K,)
        self.num_codes = len(probs)
        self.inner = Generator(latent_dim - 1, self.num_codes, width, image_size)

    def latent_code(self) -> dict:
        """The manifest's `latent_code` (server/manifest.py): z_0's cells and a representative value of each
        (its median under N(0, 1)), so inversion can choose the cell by search and keep it fixed."""
        probs = self.probs.double()
        values = _normal_quantile(torch.cumsum(probs, 0) - probs / 2)  # each cell's median
        return {"dim": 0, "edges": [round(float(e), 7) for e in self.hi[:-1]],
                "values": [round(float(v), 7) for v in values]}

    def code(self, z: torch.Tensor) -> torch.Tensor:
        """(B, K) one-hot cluster code of each latent."""
        z0 = z[:, :1]  # (B, 1)
        return (z0 > self.lo).float() - (z0 > self.hi).float()

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.inner(z[:, 1:], self.code(z))
