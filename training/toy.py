"""MLP generator and discriminator for the 2-D Gaussian mixtures (ring8, grid25).

As in the mode-collapse literature (VEEGAN, PacGAN: fully connected nets with a few hundred ReLU units):
G maps z (B, latent_dim) -> points (B, 2); D maps points (B, 2) -> score (B, 1). The points pass through
a fixed `scale` so both nets work on O(1) numbers whatever the mixture's extent (ring radius 1, grid +-4).
With num_codes = K (self-conditioning, training.coded) G also reads a one-hot code (B, K) next to z, and D is a
projection discriminator on it (Miyato & Koyama 2018): D(x, y) = psi(phi(x)) + <y E, phi(x)>.
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
    """z (B, latent_dim) [, y (B, num_codes)] -> x (B, 2) in data units."""

    def __init__(self, latent_dim: int, hidden: int = 256, layers: int = 3, scale: float = 1.0, num_codes: int = 0):
        super().__init__()
        self.scale, self.num_codes = scale, num_codes
        self.net = _mlp(latent_dim + num_codes, hidden, layers, 2, nn.ReLU)

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return self.net(torch.cat([z, y], 1) if self.num_codes else z) * self.scale


class PointDiscriminator(nn.Module):
    """x (B, 2) [, y (B, num_codes)] -> score (B, 1)."""

    def __init__(self, hidden: int = 256, layers: int = 3, scale: float = 1.0, num_codes: int = 0):
        super().__init__()
        self.scale, self.num_codes = scale, num_codes
        self.net = _mlp(2, hidden, layers, 1, lambda: nn.LeakyReLU(0.2))
        self.embed = nn.Linear(num_codes, hidden, bias=False) if num_codes else None

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        if self.embed is None:
            return self.net(x / self.scale)
        h = self.net[:-1](x / self.scale)  # phi(x) (B, hidden)
        return self.net[-1](h) + (self.embed(y) * h).sum(1, keepdim=True)
