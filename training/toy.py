"""MLP generator and discriminator for the 2-D Gaussian mixtures (ring8, grid25).

As in the mode-collapse literature (VEEGAN, PacGAN: fully connected nets with a few hundred ReLU units):
G maps z (B, latent_dim) -> points (B, 2); D maps points (B, 2) -> score (B, 1). The points pass through
a fixed `scale` so both nets work on O(1) numbers whatever the mixture's extent (ring radius 1, grid +-4).
"""

from __future__ import annotations

import torch
import torch.nn as nn


def _mlp(n_in: int, hidden: int, layers: int, n_out: int, act) -> nn.Sequential:
    mods, d = [], n_in
    for _ in range(layers):
        mods += [nn.Linear(d, hidden), act()]
        d = hidden
    return nn.Sequential(*mods, nn.Linear(d, n_out))


class PointGenerator(nn.Module):
    """z (B, latent_dim) -> x (B, 2) in data units."""

    def __init__(self, latent_dim: int, hidden: int = 256, layers: int = 3, scale: float = 1.0):
        super().__init__()
        self.scale = scale
        self.net = _mlp(latent_dim, hidden, layers, 2, nn.ReLU)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z) * self.scale


class PointDiscriminator(nn.Module):
    """x (B, 2) -> score (B, 1)."""

    def __init__(self, hidden: int = 256, layers: int = 3, scale: float = 1.0):
        super().__init__()
        self.scale = scale
        self.net = _mlp(2, hidden, layers, 1, lambda: nn.LeakyReLU(0.2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x / self.scale)
