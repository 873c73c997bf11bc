"""The VAE (training/vae.py): shapes, the ELBO's terms against closed forms, one training step."""

import math

import pytest

torch = pytest.importorskip("torch", reason="needs torch (the train extra)")

from training.vae import VAE, VAEConfig, gaussian_log_likelihood, kl_standard_normal, vae_loss


def test_shapes():
    vae = VAE(VAEConfig(latent_dim=8, hidden=32))
    recon, mu, logvar = vae(torch.rand(5, 1, 28, 28))
    assert recon.shape == (5, 1, 28, 28) and mu.shape == (5, 8) and logvar.shape == (5, 8)
    assert 0 <= float(recon.min()) and float(recon.max()) <= 1


def test_kl_closed_form():
    assert float(kl_standard_normal(torch.zeros(1, 3), torch.zeros(1, 3))) == pytest.approx(0.0, abs=1e-7)
    # KL(N(1, e^1) || N(0, 1)) per dim = 0.5 (1 + e - 1 - 1) = 0.5 (e - 1)
    assert float(kl_standard_normal(torch.ones(1, 2), torch.ones(1, 2))) == pytest.approx(math.e - 1, rel=1e-6)


def test_gaussian_log_likelihood_closed_form():
    x = torch.zeros(1, 1, 2, 2)
    mean = torch.full((1, 1, 2, 2), 0.1)
    # 4 pixels, each off by 0.1 with sigma 0.1: -0.5 * 4 - 2 log(2 pi 0.01)
    want = -2.0 - 2.0 * math.log(2 * math.pi * 0.01)
    assert float(gaussian_log_likelihood(x, mean, 0.1)) == pytest.approx(want, rel=1e-6)


def test_one_training_step_lowers_the_loss_on_its_batch():
    torch.manual_seed(0)
    cfg = VAEConfig(latent_dim=4, hidden=16, beta=0.5)
    vae = VAE(cfg)
    x = torch.rand(16, 1, 28, 28)
    opt = torch.optim.Adam(vae.parameters(), lr=1e-2)
    losses = []
    for _ in range(5):
        torch.manual_seed(1)  # same reparameterisation noise each step
        recon, mu, logvar = vae(x)
        loss, elbo = vae_loss(x, recon, mu, logvar, cfg.sigma_x, cfg.beta)
        assert elbo.shape == (16,) and torch.isfinite(loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    assert losses[-1] < losses[0]


def test_config_errors():
    with pytest.raises(ValueError, match="sigma_x"):
        VAEConfig(sigma_x=0)
    with pytest.raises(ValueError, match="beta"):
        VAEConfig(beta=-1)
