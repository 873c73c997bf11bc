"""Latent constraints (training/latent_constraints.py): networks, the gate, the losses, one training step."""

import dataclasses
import math

import pytest

torch = pytest.importorskip("torch", reason="needs torch (the train extra)")

from training.config import ConfigError, build
from training.latent_constraints import (
    Actor, ConstrainedGenerator, Critic, LatentConstraintConfig, distance_penalty, gated_update,
    gradient_penalty, train_actor_critic)
from training.vae import VAE, VAEConfig


def test_shapes():
    a, c = Actor(8, 10, 32), Critic(8, 10, 32)
    z, y = torch.randn(5, 8), torch.eye(10)[:5]
    assert a(z, y).shape == (5, 8) and c(z, y).shape == (5,)
    a0, c0 = Actor(8, 0, 32), Critic(8, 0, 32)
    assert a0(z).shape == (5, 8) and c0(z).shape == (5,)
    g = ConstrainedGenerator(VAE(VAEConfig(latent_dim=8, hidden=16)).decoder, a)
    x = g(z, y)
    assert x.shape == (5, 1, 28, 28) and float(x.min()) >= -1 and float(x.max()) <= 1


def test_gate_zero_keeps_z():
    z, dz = torch.randn(4, 8), torch.randn(4, 8)
    assert torch.equal(gated_update(z, dz, torch.zeros(4, 8)), z)
    assert torch.equal(gated_update(z, dz, torch.ones(4, 8)), dz)
    # The network: a gate bias of -1e4 makes sigmoid exactly 0 in float32, so z' = z whatever dz is.
    a = Actor(8, 10, 16, gate_bias_init=-1e4)
    with torch.no_grad():
        a.gate.weight.zero_()
    assert torch.equal(a(z, torch.eye(10)[:4]), z)


def test_distance_penalty_known_value():
    z = torch.zeros(2, 3)
    z_new = torch.tensor([[1.0, 0, 0], [0, 0, 0]])
    sigma = torch.tensor([0.5, 1.0, 1.0])
    # first row: log(2) / 0.25, second row 0 -> mean over the batch
    assert float(distance_penalty(z_new, z, sigma)) == pytest.approx(2 * math.log(2), rel=1e-6)


def test_gradient_penalty_linear_critic():
    """For D(z) = w.z the gradient is w everywhere: the penalty is (||w|| - 1)^2."""
    w = torch.tensor([3.0, 4.0])
    gp = gradient_penalty(lambda z: z @ w, (torch.randn(6, 2),), (torch.randn(6, 2),))
    assert float(gp) == pytest.approx(16.0, rel=1e-5)
    # With a label input only grad_z counts (the label is a condition): still (5 - 1)^2, whatever v is.
    v = torch.tensor([12.0])
    gp2 = gradient_penalty(lambda z, y: z @ w + y @ v, (torch.randn(6, 2), torch.rand(6, 1)),
                           (torch.randn(6, 2), torch.rand(6, 1)))
    assert float(gp2) == pytest.approx(16.0, rel=1e-5)
    # A critic that depends on z only through y gets the (0 - 1)^2 penalty.
    gp3 = gradient_penalty(lambda z, y: y @ v + 0 * z.sum(1), (torch.randn(6, 2), torch.rand(6, 1)),
                           (torch.randn(6, 2), torch.rand(6, 1)))
    assert float(gp3) == pytest.approx(1.0, rel=1e-5)


@pytest.mark.parametrize("conditional", [True, False])
def test_actor_critic_steps_run_and_move_parameters(conditional):
    torch.manual_seed(0)
    cfg = LatentConstraintConfig(latent_dim=4, ac_hidden=16, ac_batch_size=8, n_critic=1)
    mu, sigma = torch.randn(50, 4), torch.rand(50, 4) * 0.5 + 0.1
    labels = torch.randint(0, 10, (50,)) if conditional else None
    k = 10 if conditional else 0
    actor, critic = Actor(4, k, 16), Critic(4, k, 16)
    before = [p.clone() for p in (*actor.parameters(), *critic.parameters())]
    hist = train_actor_critic(actor, critic, mu, sigma, labels, cfg, steps=3, log=lambda *_: None)
    after = list((*actor.parameters(), *critic.parameters()))
    assert all(not torch.equal(a, b) for a, b in zip(before, after))
    assert all(math.isfinite(v) for vals in hist.values() for v in vals)


def test_config_is_strict():
    with pytest.raises(ConfigError, match="lambda_dsit"):
        build(LatentConstraintConfig, {"lambda_dsit": 1.0})
    with pytest.raises(ConfigError, match="ac_steps"):
        build(LatentConstraintConfig, {}, {"ac_steps": "many"})
    assert build(LatentConstraintConfig, {"latent_dim": 32}, {"beta": "2"}).beta == 2.0


def test_latent_recovery_makes_the_actor_invertible_through_the_image():
    """L_rec: R reads the encoder's view of decoder(G(z, y)) and learns z; its R^2 climbs from about 0."""
    from training.latent_constraints import Recovery, encode_all, train_vae

    torch.manual_seed(0)
    cfg = LatentConstraintConfig(latent_dim=4, vae_hidden=32, ac_hidden=32, ac_batch_size=64, n_critic=1,
                                 latent_recovery=1.0, vae_epochs=20, vae_batch_size=64)
    # A VAE that has seen images with 4 factors (an untrained one maps every latent to about the same image).
    codes = torch.randn(512, 4)
    images = torch.sigmoid(3 * codes @ torch.randn(4, 784)).reshape(-1, 1, 28, 28)
    vae = VAE(cfg.vae_config())
    train_vae(vae, images, cfg, log=lambda *_: None)
    vae.requires_grad_(False)
    mu, sigma = encode_all(vae, images)
    labels = torch.randint(0, 10, (512,))
    actor, critic, rec = Actor(4, 10, 32), Critic(4, 10, 32), Recovery(4, 10, 32)
    vae_before = [p.clone() for p in vae.parameters()]
    hist = train_actor_critic(actor, critic, mu, sigma, labels, cfg, steps=300, log=lambda *_: None,
                              recovery=rec, vae=vae)
    r2 = hist["recovery_r2"]
    assert r2[0] < 0.2 and max(r2[-2:]) > 0.5, r2
    assert all(torch.equal(a, b) for a, b in zip(vae_before, vae.parameters()))   # the VAE stays frozen
    with pytest.raises(ValueError, match="needs the VAE"):
        train_actor_critic(actor, critic, mu, sigma, labels, cfg, steps=1, log=lambda *_: None, recovery=rec)
    off = train_actor_critic(actor, critic, mu, sigma, labels, dataclasses.replace(cfg, latent_recovery=0.0),
                             steps=1, log=lambda *_: None, recovery=rec, vae=vae)
    assert "recovery_r2" not in off
    with pytest.raises(ValueError, match="latent_recovery"):
        LatentConstraintConfig(latent_recovery=-1.0)
