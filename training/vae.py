"""A VAE on MNIST: the unconditional model that latent constraints (training/latent_constraints.py) steer.

Kingma & Welling 2014, "Auto-Encoding Variational Bayes". The encoder q(z|x) = N(mu(x), diag sigma(x)^2), the
prior p(z) = N(0, I), and a Gaussian likelihood with a fixed scale, as in Engel et al. 2017's sharp models:

    p(x|z) = N(x; m(z), sigma_x^2 I),  pixels in [0, 1],  sigma_x = 0.1 by default

    ELBO(x) = E_q[log p(x|z)] - KL(q(z|x) || p(z))                          (Kingma & Welling 2014, eq. 3)
            = E_q[-||x - m(z)||^2 / (2 sigma_x^2)] - (D/2) log(2 pi sigma_x^2)
              - 1/2 sum_j (mu_j^2 + sigma_j^2 - 1 - log sigma_j^2)            (ibid., appendix B)

Training maximises E_q[log p(x|z)] - beta KL (beta = 1 is the true ELBO; the reported ELBO always uses beta=1).
A small sigma_x makes the reconstruction term dominate: reconstructions are sharp but the posteriors are
narrow and do not cover the prior, so z ~ p(z) often lands in "holes" that decode to non-digits - the
problem latent constraints fix.

Networks only map tensors: Encoder x -> (mu, logvar), Decoder z -> pixel means in [0, 1].
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn


@dataclass(frozen=True)
class VAEConfig:
    latent_dim: int = 64
    hidden: int = 512
    sigma_x: float = 0.1
    beta: float = 1.0
    image_shape: tuple[int, int, int] = (1, 28, 28)

    def __post_init__(self):
        if self.latent_dim <= 0 or self.hidden <= 0:
            raise ValueError(f"latent_dim and hidden must be > 0, got {self.latent_dim}, {self.hidden}")
        if not self.sigma_x > 0:
            raise ValueError(f"sigma_x must be > 0, got {self.sigma_x}")
        if self.beta < 0:
            raise ValueError(f"beta must be >= 0, got {self.beta}")


class Encoder(nn.Module):
    """x (B, 1, 28, 28) in [0, 1] -> mu (B, d), logvar (B, d)."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        n = math.prod(cfg.image_shape)
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(n, cfg.hidden), nn.ReLU(),
                                  nn.Linear(cfg.hidden, cfg.hidden), nn.ReLU())
        self.mu = nn.Linear(cfg.hidden, cfg.latent_dim)
        self.logvar = nn.Linear(cfg.hidden, cfg.latent_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.body(x)  # (B, hidden)
        return self.mu(h), self.logvar(h).clamp(-12.0, 6.0)


class Decoder(nn.Module):
    """z (B, d) -> pixel means (B, 1, 28, 28) in [0, 1]."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        self.shape = cfg.image_shape
        self.net = nn.Sequential(nn.Linear(cfg.latent_dim, cfg.hidden), nn.ReLU(),
                                 nn.Linear(cfg.hidden, cfg.hidden), nn.ReLU(),
                                 nn.Linear(cfg.hidden, math.prod(cfg.image_shape)), nn.Sigmoid())

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z).view(-1, *self.shape)


class VAE(nn.Module):
    def __init__(self, cfg: VAEConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mu, logvar = self.encoder(x)
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)  # reparameterisation, (B, d)
        return self.decoder(z), mu, logvar


def gaussian_log_likelihood(x: torch.Tensor, mean: torch.Tensor, sigma_x: float) -> torch.Tensor:
    """log N(x; mean, sigma_x^2 I) per image (B,), pixels in [0, 1]."""
    d = x[0].numel()
    sq = (x - mean).pow(2).flatten(1).sum(1)
    return -0.5 * sq / sigma_x**2 - 0.5 * d * math.log(2 * math.pi * sigma_x**2)


def kl_standard_normal(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) per row (B,)."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(1)


def vae_loss(x: torch.Tensor, recon: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor,
             sigma_x: float, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss to minimise = -(E log p - beta KL) averaged over the batch, ELBO per image (B,) with beta = 1)."""
    ll = gaussian_log_likelihood(x, recon, sigma_x)
    kl = kl_standard_normal(mu, logvar)
    return -(ll - beta * kl).mean(), (ll - kl).detach()
