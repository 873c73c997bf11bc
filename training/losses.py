"""GAN objectives as pure functions of discriminator/critic outputs, paired `<name>_loss_dis` / `<name>_loss_gen`.

`real`, `fake` are D's raw outputs (logits for the JS family, scores for Wasserstein critics), shape (B, 1).
Each `_dis` loss is minimised by D, each `_gen` loss by G. A loss never asks which model it is in.

JS family (Goodfellow et al. 2014, "Generative Adversarial Nets"):
    V(D, G) = E_x[log D(x)] + E_z[log(1 - D(G(z)))],  D = sigmoid(logit)                      (eq. 1)
    With the optimal D, V = 2 JS(P_data || P_G) - log 4 (Theorem 1), so (V + log 4) / 2 estimates JS
    (a lower bound for any non-optimal D), in [0, log 2].
    minimax: G minimises log(1 - D(G(z))); non-saturating: G maximises log D(G(z)) instead (Sec. 3).
    log D = -softplus(-logit), log(1 - D) = -softplus(logit): numerically stable forms.
Wasserstein (Arjovsky et al. 2017, "Wasserstein GAN"): the critic maximises E[f(x)] - E[f(G(z))], an estimate of
    W1 when f is 1-Lipschitz; Lipschitz by weight clipping (WGAN) or by the gradient penalty (WGAN-GP,
    Gulrajani et al. 2017).
Hinge (Lim & Ye 2017; Miyato et al. 2018).
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

LOG4 = math.log(4.0)


# --- minimax GAN (Goodfellow et al. 2014, eq. 1) ----------------------------------------------------

def minimax_loss_dis(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """-V(D, G) = -E[log D(x)] - E[log(1 - D(G(z)))]."""
    return F.softplus(-real).mean() + F.softplus(fake).mean()


def minimax_loss_gen(fake: torch.Tensor) -> torch.Tensor:
    """E[log(1 - D(G(z)))]: saturates (vanishing gradients) when D confidently rejects the fakes."""
    return -F.softplus(fake).mean()


# --- non-saturating GAN (Goodfellow et al. 2014, Sec. 3) ---------------------------------------------

def ns_loss_dis(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """The discriminator's objective is the same as minimax."""
    return minimax_loss_dis(real, fake)


def ns_loss_gen(fake: torch.Tensor) -> torch.Tensor:
    """-E[log D(G(z))]: same fixed point as minimax, strong gradients early in training."""
    return F.softplus(-fake).mean()


# --- Wasserstein (Arjovsky et al. 2017), used with clipping or the gradient penalty --------------------

def wgan_loss_dis(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """-(E[f(x)] - E[f(G(z))]): the critic maximises the Wasserstein estimate."""
    return fake.mean() - real.mean()


def wgan_loss_gen(fake: torch.Tensor) -> torch.Tensor:
    return -fake.mean()


# --- hinge (Lim & Ye 2017) ---------------------------------------------------------------------------

def hinge_loss_dis(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    return F.relu(1 - real).mean() + F.relu(1 + fake).mean()


def hinge_loss_gen(fake: torch.Tensor) -> torch.Tensor:
    return -fake.mean()


LOSSES = {
    "minimax": (minimax_loss_dis, minimax_loss_gen),
    "ns": (ns_loss_dis, ns_loss_gen),
    "wgan-clip": (wgan_loss_dis, wgan_loss_gen),
    "wgan-gp": (wgan_loss_dis, wgan_loss_gen),
    "hinge": (hinge_loss_dis, hinge_loss_gen),
}


# --- Lipschitz constraints -----------------------------------------------------------------------------

def gradient_penalty(critic: Callable[..., torch.Tensor], real: torch.Tensor, fake: torch.Tensor,
                     *cond: torch.Tensor, weight: float = 10.0) -> torch.Tensor:
    """WGAN-GP penalty (Gulrajani et al. 2017, "Improved Training of Wasserstein GANs", eq. 3 and Alg. 1):

        lambda * E_{x_hat}[(||grad_{x_hat} D(x_hat)||_2 - 1)^2],  x_hat = eps x + (1 - eps) x_tilde,
        eps ~ U[0, 1] per sample, x ~ P_r, x_tilde ~ P_g,  lambda = 10.

    `critic(x_hat, *cond)` is any callable (the condition, e.g. a class vector, passes through unchanged).
    The graph is kept (create_graph=True) so the penalty's own gradient reaches the critic's weights.
    """
    b = real.shape[0]
    eps = torch.rand(b, *([1] * (real.dim() - 1)), dtype=real.dtype)  # (B, 1, ...)
    x_hat = (eps * real.detach() + (1 - eps) * fake.detach()).requires_grad_(True)
    score = critic(x_hat, *cond)  # (B, 1)
    (grad,) = torch.autograd.grad(score.sum(), x_hat, create_graph=True)
    norm = grad.flatten(1).norm(2, dim=1)  # (B,)
    return weight * ((norm - 1) ** 2).mean()


def r1_penalty(critic: Callable[..., torch.Tensor], real: torch.Tensor, *cond: torch.Tensor,
               gamma: float = 10.0) -> torch.Tensor:
    """R1 regulariser (Mescheder, Geiger & Nowozin 2018, "Which Training Methods for GANs do actually
    Converge?", eq. 9): gamma / 2 * E_{x ~ P_r}[||grad_x D(x)||^2], on real data only.

    It penalises the discriminator's gradient where the data is, so at the equilibrium (P_G = P_r, D constant
    on the data) the dynamics converge locally instead of oscillating; for the JS family it is the
    counterpart of WGAN-GP's penalty (which acts between the distributions and keeps the norm near 1).
    """
    x = real.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(critic(x, *cond).sum(), x, create_graph=True)
    return 0.5 * gamma * grad.flatten(1).pow(2).sum(1).mean()


@torch.no_grad()
def clip_weights(module: torch.nn.Module, c: float) -> None:
    """WGAN's weight clipping to [-c, c] (Arjovsky et al. 2017, Alg. 1, c = 0.01)."""
    for p in module.parameters():
        p.clamp_(-c, c)


# --- what the theory says to watch ---------------------------------------------------------------------

@torch.no_grad()
def js_estimate(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """(V + log 4) / 2 from D's logits: equals JS(P_data || P_G) at the optimal D, a lower bound otherwise."""
    v = -F.softplus(-real).mean() - F.softplus(fake).mean()
    return (v + LOG4) / 2


@torch.no_grad()
def wasserstein_estimate(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """E[f(x)] - E[f(G(z))]: a lower bound on W1 (times the critic's Lipschitz constant) for any critic."""
    return real.mean() - fake.mean()
