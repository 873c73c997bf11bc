"""DCGAN-style networks for MNIST (Radford et al. 2016), unconditional and conditional.

Sized for a 2-core CPU: the generator is ~1 M parameters (~13 MFLOP per 28x28 sample with width 64).
Self-conditioning (Liu et al. 2020, "Diverse Image Generation via Self-Conditioned GANs"): an *unconditional*
model may still condition G and D on an unsupervised cluster of the image (k-means, no labels).
training.coded.CodedGenerator draws that cluster from the first latent coordinate around a conditional Generator,
so the served model keeps one Gaussian input z.
Conditioning (Mirza & Osindero 2014): G reads [z, y] where y (B, K) is a class-probability vector (one-hot for
hard labels), so soft labels and label interpolation are meaningful at serving time. D uses the projection
discriminator (Miyato & Koyama 2018, eq. 3): D(x, y) = psi(phi(x)) + <y E, phi(x)>, linear in y.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from training.coded import CodedGenerator


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

    @property
    def feature_dim(self) -> int:
        return self.psi.in_features

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return self.score(self.phi(x), y)

    def score(self, h: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """The score from features h = phi(x) (B, feat): what forward returns; a latent-regression head reads the
        same h (training.gan, `latent_regression`)."""
        out = self.psi(h)  # (B, 1)
        if self.embed is not None:
            out = out + (self.embed(y) * h).sum(1, keepdim=True)  # projection term <y E, phi(x)>
        return out


def coded_generator(latent_dim: int, probs, width: int = 64, image_size: int = 28):
    """A self-conditioned DCGAN generator: z (B, latent_dim) -> x, the cluster drawn from z_0 (training.coded)."""
    return CodedGenerator(latent_dim, probs, Generator(latent_dim - 1, len(probs), width, image_size))
