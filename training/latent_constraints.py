"""Latent constraints: conditional generation from an unconditional VAE by learning in its latent space.

Engel, Hoffman & Roberts 2017, "Latent Constraints: Learning to Generate Conditionally from Unconditional
Generative Models" (ICLR 2018), Section 4 ("Actor-critic pairs"). With the VAE of training/vae.py fixed:

  Critic D(z, y) -> logit that z is a realistic latent satisfying attribute y. Real: z ~ q(z|x) of training
  images x with their true labels y. Fake: prior samples z ~ p(z) (the "holes"), actor outputs G(z, y), and
  real encodings with mismatched labels. Cross-entropy objective (the paper's L_D):

      L_D = E_{x,y}[CE(1, D(z_q, y))] + E_{z~p}[CE(0, D(z, y))] + E_{z~p}[CE(0, D(G(z, y), y))]
            + E_{x,y' != y}[CE(0, D(z_q, y'))]
            + lambda_gp E_{z^ ~ interp}[(||grad D(z^)|| - 1)^2]

  The last term is the gradient penalty of Gulrajani et al. 2017 ("Improved Training of Wasserstein GANs",
  eq. 3) on interpolates between real and actor latents; Kurach et al. 2019 found it helps the
  cross-entropy loss too. Here it keeps D smooth between the holes and the data, so the actor has gradients
  to follow from anywhere in the prior.

  Actor G(z, y) -> z' as a gated residual (the paper's actor): z' = (1 - g) * z + g * dz, with
  (dz, g) = (f(z, y), sigmoid(h(z, y))). Its loss (the paper's L_G) adds a distance penalty that keeps z'
  near z so the transformed sample keeps z's identity (style):

      L_G = E_{z, y}[CE(1, D(G(z, y), y)) + lambda_dist * L_dist(G(z, y), z)]
      L_dist(z', z) = sum_j (1 / sigma_z,j^2) log(1 + (z'_j - z_j)^2)

  where sigma_z,j is the encoder's standard deviation in dimension j averaged over the training data (the
  paper's sigma_z bar): moving along a dimension the encoder is sure about costs more.

Latent recovery (ours, not the paper's; config latent_recovery, 0 = off): the served generator is decoder o actor,
and inversion must recover the actor's INPUT z from an image. A free actor overwrites z, so no inversion can
find it (measured: docs/latent_constraints/README.md). A head R reads what the image shows of z' (the VAE encoder's mean of the decoded z') and
the label, and predicts z; R and the actor minimise, together, the InfoGAN-style term (Chen et al. 2016, the
continuous-code regression)

      L_rec = lambda_rec E_{z, y}[ ||R(mu_q(decoder(G(z, y))), y) - z||^2 / d ]

added to L_G: the actor may move z wherever the critic wants, as long as the move stays invertible in the image.

The unconditional "realism" constraint is the same with y dropped: fake = prior samples and G(z); it moves
prior samples out of the holes towards the aggregate posterior.

Networks only map tensors; the training loop and evaluation are functions below; export turns
decoder o actor into one generator graph with the cGAN's inputs (z, y class probabilities) -> x in [-1, 1].
Run: python -m training.run latent-constraint-mnist [--key=value ...]   (training/configs/latent-constraint-mnist.toml)
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from ganserve.data import load_mnist
from training.common import Curves, load_checkpoint, save_checkpoint, seed_all

# the family API that training.run calls: Config, train(), export(), manifest_fields()
from training.latent_export import (
    export,
    latent_report,
    latents_for_preview,
    manifest_fields,
)
from training.latent_nets import (
    NUM_CLASSES,
    Actor,
    ConstrainedGenerator,
    Critic,
    EncoderMean,
    Recovery,
    bce_fake,
    bce_real,
    distance_penalty,
    gated_update,
    gradient_penalty,
    one_hot,
)
from training.vae import VAE, VAEConfig, vae_loss

__all__ = ["Actor", "Config", "ConstrainedGenerator", "Critic", "EncoderMean", "LatentConstraintConfig", "Recovery",
           "distance_penalty", "encode_all", "export", "gated_update", "latent_report", "latents_for_preview",
           "manifest_fields", "one_hot", "train", "train_vae"]


@dataclass(frozen=True)
class LatentConstraintConfig:
    name: str = "latent-constraint-mnist"
    seed: int = 0
    data_path: str = ""
    # VAE (training/vae.py)
    latent_dim: int = 64
    vae_hidden: int = 512
    sigma_x: float = 0.1
    beta: float = 1.0
    vae_epochs: int = 20
    vae_batch_size: int = 128
    vae_lr: float = 1e-3
    # actor / critic
    ac_hidden: int = 256
    ac_steps: int = 1500
    realism_steps: int = 750
    ac_batch_size: int = 256
    ac_lr: float = 1e-3
    n_critic: int = 2
    lambda_dist: float = 1e-4     # the critic's gradient has norm ~1 (GP): 0.01 pinned the active dims (10.5% acc)
    lambda_gp: float = 10.0
    gate_bias_init: float = -1.0
    latent_recovery: float = 0.0  # lambda_rec of L_rec above, on the conditional (served) actor; 0: the paper's actor
    threads: int = 1            # 1 intra-op thread: pools of 2 collapse when the cores are shared
    evaluator_store: str = "model_store"

    def __post_init__(self):
        for f in ("latent_dim", "vae_hidden", "vae_epochs", "vae_batch_size", "ac_hidden", "ac_batch_size", "n_critic",
                  "threads"):
            if getattr(self, f) <= 0:
                raise ValueError(f"{f} must be > 0, got {getattr(self, f)}")
        for f in ("ac_steps", "realism_steps", "lambda_dist", "lambda_gp", "latent_recovery"):
            if getattr(self, f) < 0:
                raise ValueError(f"{f} must be >= 0, got {getattr(self, f)}")

    def vae_config(self) -> VAEConfig:
        return VAEConfig(latent_dim=self.latent_dim, hidden=self.vae_hidden, sigma_x=self.sigma_x, beta=self.beta)


def train_vae(vae: VAE, x01: torch.Tensor, cfg: LatentConstraintConfig, log=print) -> list[float]:
    """Adam on -(E log p(x|z) - beta KL); returns the mean training ELBO per epoch (nats per image)."""
    opt = torch.optim.Adam(vae.parameters(), lr=cfg.vae_lr)
    g = torch.Generator().manual_seed(cfg.seed)
    curve = []
    for epoch in range(cfg.vae_epochs):
        vae.train()
        perm = torch.randperm(len(x01), generator=g)
        total, t0 = 0.0, time.time()
        for i in range(0, len(x01), cfg.vae_batch_size):
            x = x01[perm[i:i + cfg.vae_batch_size]]
            recon, mu, logvar = vae(x)
            loss, elbo = vae_loss(x, recon, mu, logvar, cfg.sigma_x, cfg.beta)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(elbo.sum())
        curve.append(total / len(x01))
        log(f"vae epoch {epoch + 1}/{cfg.vae_epochs}: train ELBO {curve[-1]:.1f} nats ({time.time() - t0:.0f}s)")
    vae.eval()
    return curve


@torch.no_grad()
def encode_all(vae: VAE, x01: torch.Tensor, batch: int = 1000) -> tuple[torch.Tensor, torch.Tensor]:
    """(mu, sigma) of q(z|x) for every image: (N, d) each."""
    mus, sigmas = [], []
    for i in range(0, len(x01), batch):
        mu, logvar = vae.encoder(x01[i:i + batch])
        mus.append(mu)
        sigmas.append(torch.exp(0.5 * logvar))
    return torch.cat(mus), torch.cat(sigmas)


@torch.no_grad()
def test_elbo(vae: VAE, x01: torch.Tensor, sigma_x: float, batch: int = 1000, seed: int = 0) -> float:
    """Single-sample ELBO estimate (beta = 1) averaged over images, nats per image."""
    torch.manual_seed(seed)
    total = 0.0
    for i in range(0, len(x01), batch):
        recon, mu, logvar = vae(x01[i:i + batch])
        total += float(vae_loss(x01[i:i + batch], recon, mu, logvar, sigma_x, 1.0)[1].sum())
    return total / len(x01)


def train_actor_critic(actor: Actor, critic: Critic, mu: torch.Tensor, sigma: torch.Tensor,
                       labels: torch.Tensor | None, cfg: LatentConstraintConfig, steps: int, log=print,
                       tag: str = "cond", recovery: Recovery | None = None, vae: VAE | None = None
                       ) -> dict[str, list[float]]:
    """Alternate n_critic critic steps and one actor step (Engel et al. 2017, Sec. 4). labels None: realism.

    With `recovery` and the (frozen) `vae`, the actor's loss adds cfg.latent_recovery * L_rec and R trains with it.
    """
    conditional = labels is not None
    sigma_bar = sigma.mean(0)  # (d,) the paper's sigma_z bar, per dimension
    recover = recovery is not None and cfg.latent_recovery > 0
    if recover and vae is None:
        raise ValueError("latent recovery needs the VAE (it reads the decoded image)")
    a_params = [*actor.parameters(), *(recovery.parameters() if recover else ())]
    opt_a = torch.optim.Adam(a_params, lr=cfg.ac_lr, betas=(0.5, 0.9))
    opt_c = torch.optim.Adam(critic.parameters(), lr=cfg.ac_lr, betas=(0.5, 0.9))
    n, d, b = len(mu), mu.shape[1], cfg.ac_batch_size
    hist = {"critic": [], "actor": [], "gp": [], "dist": [], "shift": [], **({"recovery_r2": []} if recover else {})}

    def real_batch():
        idx = torch.randint(0, n, (b,))
        z = mu[idx] + sigma[idx] * torch.randn(b, d)  # z ~ q(z|x), (b, d)
        return z, (labels[idx] if conditional else None)

    def actor_input():
        # Half prior samples (the holes), half posterior samples (so the actor also edits real encodings).
        zq, _ = real_batch()
        z = torch.cat([torch.randn(b // 2, d), zq[: b - b // 2]])
        y = one_hot(torch.randint(0, NUM_CLASSES, (b,))) if conditional else None
        return z, y

    def D(z, y):
        return critic(z, y) if conditional else critic(z)

    def G(z, y):
        return actor(z, y) if conditional else actor(z)

    t0 = time.time()
    for step in range(steps):
        for _ in range(cfg.n_critic):
            z_real, y_idx = real_batch()
            y_real = one_hot(y_idx) if conditional else None
            z_in, y_in = actor_input()
            with torch.no_grad():
                z_fake = G(z_in, y_in)
            z_prior = torch.randn(b, d)
            loss = bce_real(D(z_real, y_real)) + bce_fake(D(z_fake, y_in))
            if conditional:
                y_rand = one_hot(torch.randint(0, NUM_CLASSES, (b,)))
                y_wrong = one_hot((y_idx + torch.randint(1, NUM_CLASSES, (b,))) % NUM_CLASSES)
                loss = loss + bce_fake(D(z_prior, y_rand)) + bce_fake(D(z_real, y_wrong))
                gp = gradient_penalty(critic, (z_real, y_real), (z_fake, y_in))
            else:
                loss = loss + bce_fake(D(z_prior, None))
                gp = gradient_penalty(critic, (z_real,), (z_fake,))
            opt_c.zero_grad(set_to_none=True)
            (loss + cfg.lambda_gp * gp).backward()
            opt_c.step()
        z_in, y_in = actor_input()
        z_new = G(z_in, y_in)
        dist = distance_penalty(z_new, z_in, sigma_bar)
        a_loss = bce_real(D(z_new, y_in)) + cfg.lambda_dist * dist
        if recover:
            seen = vae.encoder(vae.decoder(z_new))[0]            # what the image shows of z' (B, d)
            rec = recovery(seen, y_in) if conditional else recovery(seen)
            rec_mse = (rec - z_in).pow(2).mean()
            a_loss = a_loss + cfg.latent_recovery * rec_mse
        opt_a.zero_grad(set_to_none=True)
        a_loss.backward()
        opt_a.step()
        if step % 50 == 0 or step == steps - 1:
            hist["critic"].append(loss.item())
            hist["gp"].append(gp.item())
            hist["actor"].append(a_loss.item())
            hist["dist"].append(dist.item())
            hist["shift"].append((z_new - z_in).norm(dim=1).mean().item())
            if recover:
                hist["recovery_r2"].append(1.0 - rec_mse.item() / z_in.var().item())
        if step % 500 == 0 or step == steps - 1:
            rec_msg = f" recovery R2 {hist['recovery_r2'][-1]:.3f}" if recover else ""
            log(f"{tag} step {step + 1}/{steps}: critic {loss.item():.3f} gp {gp.item():.3f} actor "
                f"{a_loss.item():.3f} dist {dist.item():.2f} shift {hist['shift'][-1]:.2f}{rec_msg} "
                f"({time.time() - t0:.0f}s)")
    actor.eval()
    critic.eval()
    return hist


# --- the family interface of training.run: train / export / manifest_fields --------------------------------

Config = LatentConstraintConfig
STAGES = ("vae", "conditional", "realism")


def _modules(cfg: LatentConstraintConfig) -> dict[str, nn.Module]:
    return {"vae": VAE(cfg.vae_config()),
            "actor": Actor(cfg.latent_dim, NUM_CLASSES, cfg.ac_hidden, cfg.gate_bias_init),
            "critic": Critic(cfg.latent_dim, NUM_CLASSES, cfg.ac_hidden),
            "realism_actor": Actor(cfg.latent_dim, 0, cfg.ac_hidden, cfg.gate_bias_init),
            "realism_critic": Critic(cfg.latent_dim, 0, cfg.ac_hidden),
            **({"recovery": Recovery(cfg.latent_dim, NUM_CLASSES, cfg.ac_hidden)} if cfg.latent_recovery else {})}


def train(cfg: LatentConstraintConfig, out: Path, resume: bool = False, log=print) -> dict:
    """1. VAE; 2. conditional actor-critic; 3. realism actor-critic. A checkpoint after each stage; --resume
    skips the finished stages (a killed stage restarts from its beginning)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(cfg.threads)
    seed_all(cfg.seed)
    train_split = load_mnist("train", cfg.data_path or None)
    test_split = load_mnist("test", cfg.data_path or None)
    x_train = torch.from_numpy(np.array(train_split.images))
    x_test = torch.from_numpy(np.array(test_split.images))
    y_train = torch.from_numpy(np.array(train_split.labels))
    mods = _modules(cfg)
    ckpt = out / "checkpoint.safetensors"
    meta = {"done": [], "times_s": {}, "history": {}}
    if resume and ckpt.exists():
        meta = load_checkpoint(ckpt, mods, {})
        log(f"resumed {ckpt}: finished stages {meta['done']}")
    curves = Curves(out)

    def finish(stage: str, seconds: float, history) -> None:
        meta["done"].append(stage)
        meta["times_s"][stage] = round(seconds, 1)
        meta["history"][stage] = history
        save_checkpoint(ckpt, mods, {}, meta)

    vae = mods["vae"]
    if "vae" not in meta["done"]:
        t0 = time.time()
        elbo = train_vae(vae, x_train, cfg, log)
        finish("vae", time.time() - t0, elbo)
    vae.eval()
    vae.requires_grad_(False)  # frozen from here: L_rec's gradient flows through it to the actor, not into it
    elbo_test = test_elbo(vae, x_test, cfg.sigma_x, seed=cfg.seed)
    mu, sigma = encode_all(vae, x_train)
    log(f"test ELBO {elbo_test:.1f} nats/image; encoder sigma mean {float(sigma.mean()):.4f}, per-dim mean in "
        f"[{float(sigma.mean(0).min()):.4f}, {float(sigma.mean(0).max()):.4f}]")
    for stage, labels, steps in (("conditional", y_train, cfg.ac_steps), ("realism", None, cfg.realism_steps)):
        actor, critic = (mods["actor"], mods["critic"]) if labels is not None else \
            (mods["realism_actor"], mods["realism_critic"])
        if stage not in meta["done"]:
            t0 = time.time()
            torch.manual_seed(cfg.seed + 1 + len(meta["done"]))
            hist = train_actor_critic(actor, critic, mu, sigma, labels, cfg, steps, log, stage,
                                      recovery=mods.get("recovery") if labels is not None else None, vae=vae)
            finish(stage, time.time() - t0, hist)
        actor.eval()
        critic.eval()
    for e, v in enumerate(meta["history"]["vae"]):
        curves.add(e + 1, **{"vae/train_elbo": v})
    for stage in ("conditional", "realism"):
        for key, vals in meta["history"][stage].items():
            for j, v in enumerate(vals):
                curves.add(50 * j, **{f"{stage}/{key}": v})
    curves.plot(out / "curves.png", [("VAE train ELBO (nats) per epoch", ["vae/train_elbo"]),
                                     ("conditional actor-critic", [f"conditional/{k}" for k in ("critic", "actor", "gp")]),
                                     ("realism actor-critic", [f"realism/{k}" for k in ("critic", "actor", "gp")]),
                                     ("mean latent shift ||z'-z||", ["conditional/shift", "realism/shift"]),
                                     ("latent recovery R^2 (conditional actor)", ["conditional/recovery_r2"])])
    curves.close()
    wall = sum(meta["times_s"].values())
    log(f"trained in {wall:.0f}s: {meta['times_s']}")
    return {"config": cfg, "modules": mods, "mu": mu, "sigma": sigma, "x_test": x_test,
            "steps": cfg.vae_epochs * -(-len(x_train) // cfg.vae_batch_size) + cfg.ac_steps + cfg.realism_steps,
            "wall_time_s": wall, "data": {"source": train_split.source, "sha256": train_split.sha256},
            "metrics": {"elbo_test_nats": elbo_test, "elbo_train_nats": meta["history"]["vae"][-1],
                        "sigma_z_mean": float(sigma.mean())},
            "training_extra": {"stage_times_s": meta["times_s"]}}
