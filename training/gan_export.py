"""A trained GAN's samples, per-epoch quality and previews, and its export: generator.onnx + critic.onnx, parity
and speed checks, and the manifest fields of its family (the `export` and `manifest_fields` of training.gan)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ganserve.data import MIXTURES
from protos.latents import latents
from training import evaluate
from training.common import image_grid, scatter_png
from training.export import export_onnx, graph_spec, ort_samples_per_s, param_count
from training.gan_data import random_labels


@torch.no_grad()
def recalibrate_batchnorm(g: nn.Module, cfg, n_batches: int = 40, batch: int = 256, seed: int = 0) -> None:
    """Re-estimate BatchNorm running statistics for the current weights (cumulative average over batches)."""
    bns = [m for m in g.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    gen = torch.Generator().manual_seed(seed)
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    g.train()
    for _ in range(n_batches):
        z = torch.randn(batch, cfg.latent_dim, generator=gen)
        g(z, random_labels(batch, cfg.num_classes, gen)) if cfg.num_classes else g(z)
    for m, mom in zip(bns, saved):
        m.momentum = mom
    g.eval()


@torch.no_grad()
def sample(g: nn.Module, cfg, n: int, seed: int, labels: np.ndarray | None = None,
           batch: int = 1000) -> np.ndarray:
    """n samples of generator `g` in eval mode: images (n, 1, S, S) in [-1, 1] or points (n, 2)."""
    g.eval()
    z = torch.from_numpy(latents(seed, n, cfg.latent_dim))
    out = []
    for i in range(0, n, batch):
        if cfg.num_classes:
            y = F.one_hot(torch.from_numpy(np.asarray(labels[i:i + batch], np.int64)), cfg.num_classes).float()
            out.append(g(z[i:i + batch], y).numpy())
        else:
            out.append(g(z[i:i + batch]).numpy())
    return np.concatenate(out)


# --- per-epoch evaluation -----------------------------------------------------------------------------

def quality(g: nn.Module, cfg, evaluator, n: int, seed: int = 0) -> dict[str, float]:
    """The quality metrics of generator `g` (see training.evaluate); {} when no evaluator is available."""
    if cfg.points:
        return evaluate.point_metrics(sample(g, cfg, n, seed), MIXTURES[cfg.data]())
    if evaluator is None or cfg.data != "mnist":
        return {}
    labels = np.arange(n) % 10 if cfg.num_classes else None
    x01 = (sample(g, cfg, n, seed, labels) + 1) / 2
    return evaluate.image_metrics(evaluator, x01, labels, evaluate.real_reference(evaluator, n))


def save_preview(g: nn.Module, cfg, path: Path, title: str = "") -> None:
    if cfg.points:
        mix = MIXTURES[cfg.data]()
        scatter_png(sample(g, cfg, 2500, seed=12345), mix.means, path, title)
    else:
        labels = np.repeat(np.arange(10), 10) if cfg.num_classes else None  # a row per class
        image_grid(sample(g, cfg, 100, seed=12345, labels=labels), 10, path)



# --- export and manifest --------------------------------------------------------------------------------

class _Critic(nn.Module):
    """D with ONNX-friendly names: x (B, ...) [, y (B, K)] -> score (B, 1).

    A self-conditioned D (cluster-projection) is exported unconditional, at the clusters' prior vector pi:
    D(x, pi) = sum_k pi_k D(x, e_k) since D is linear in y. A convex combination of the per-cluster critics is
    as Lipschitz as the worst of them, so critic-based Wasserstein bounds stay valid (and a discriminator's JS
    estimate stays a lower bound).
    """

    def __init__(self, d: nn.Module, conditional: bool, prior: torch.Tensor | None = None):
        super().__init__()
        self.d, self.conditional = d, conditional
        self.register_buffer("prior", prior.reshape(1, -1).clone() if prior is not None else None)

    def forward(self, x, y=None):
        if self.prior is not None:
            return self.d(x, self.prior.expand(x.shape[0], -1))
        return self.d(x, y) if self.conditional else self.d(x)


def export(result: dict, out: Path) -> dict:
    """generator.onnx + critic.onnx (+ samples.png, curves.png) in `out`; parity, speed and final metrics."""
    cfg = result["config"]  # a training.gan.GANConfig
    out = Path(out)
    g, d = result["g_ema"].eval(), result["d"].eval()
    k = cfg.num_classes
    x_shape = (2,) if cfg.points else (1, cfg.image_size, cfg.image_size)

    def probe_g(n, gen):
        p = {"z": torch.randn(n, cfg.latent_dim, generator=gen)}
        if k:
            p["y"] = torch.softmax(3 * torch.randn(n, k, generator=gen), 1)  # soft labels too
        return p

    def probe_d(n, gen):
        x = torch.randn(n, *x_shape, generator=gen)
        p = {"x": x if cfg.points else x.clamp(-1, 1)}
        if k:
            p["y"] = torch.softmax(3 * torch.randn(n, k, generator=gen), 1)
        return p

    parity = {"generator": export_onnx(g, probe_g(2, torch.Generator().manual_seed(0)), ["x"],
                                       out / "generator.onnx", probe=probe_g),
              "critic": export_onnx(_Critic(d, bool(k), g.probs if cfg.clusters else None), probe_d(2, torch.Generator().manual_seed(0)), ["score"],
                                    out / "critic.onnx", probe=probe_d)}

    def feeds(n):
        return {name: t.numpy() for name, t in probe_g(n, torch.Generator().manual_seed(1)).items()}

    speed = {f"batch_{b}": round(ort_samples_per_s(out / "generator.onnx", feeds, b), 1) for b in (1, 256)}
    speed_1t = {f"batch_{b}": round(ort_samples_per_s(out / "generator.onnx", feeds, b, threads=1), 1)
                for b in (1, 256)}
    save_preview(g, cfg, out / "samples.png", cfg.name)
    metrics = dict(result.get("metrics", {}))
    if not cfg.points and cfg.data == "mnist":
        ev = evaluate.find_evaluator(cfg.evaluator_store, required=False)
        if ev is not None:
            metrics.update(evaluate.evaluate_generator_onnx(out / "generator.onnx", cfg.latent_dim, k, ev,
                                                            n=10000, seed=0))
    graphs = {"generator": graph_spec(out / "generator.onnx"), "critic": graph_spec(out / "critic.onnx")}
    graphs["critic"]["estimates"] = "wasserstein" if cfg.loss.startswith("wgan") else "js"
    files = {"generator.onnx": out / "generator.onnx", "critic.onnx": out / "critic.onnx",
             "samples.png": out / "samples.png", "curves.png": out / "curves.png"}
    fields = {"latent_code": g.latent_code()} if cfg.clusters else {}
    return {"graphs": graphs, "files": files, "metrics": metrics, "fields": fields,
            "export": {"parity_max_abs_diff": parity, "inprocess_samples_per_s": speed["batch_256"],
                       "samples_per_s": speed, "samples_per_s_1_thread": speed_1t, "ort_threads": 2,
                       "generator_params": param_count(g), "critic_params": param_count(d), "opset": 17}}


def manifest_fields(cfg) -> dict:
    kind = "cgan" if cfg.conditional else ("wgan-gp" if cfg.loss == "wgan-gp" else "gan")
    what = {"ns": "non-saturating GAN", "minimax": "minimax GAN", "hinge": "hinge-loss GAN",
            "wgan-gp": "WGAN-GP", "wgan-clip": "WGAN (weight clipping)"}[cfg.loss]
    if cfg.r1:
        what += f" + R1 penalty (gamma {cfg.r1:g})"
    if cfg.clusters:
        what += (f", self-conditioned on {cfg.clusters} k-means clusters (unsupervised; the cluster is drawn from "
                 f"z_0)")
    if cfg.points:
        return {"kind": kind, "data_kind": "points", "latent_dim": cfg.latent_dim, "num_classes": 0,
                "class_names": [], "output": {"shape": [2], "value_range": None}, "max_batch_size": 65536,
                "description": f"{what} on the {cfg.data} 2-D Gaussian mixture (MLP, EMA generator)"}
    return {"kind": kind, "data_kind": "image", "latent_dim": cfg.latent_dim, "num_classes": cfg.num_classes,
            "class_names": [str(i) for i in range(cfg.num_classes)],
            "output": {"shape": [1, cfg.image_size, cfg.image_size], "value_range": [-1.0, 1.0]},
            "max_batch_size": 4096,
            "description": f"{'conditional ' if cfg.conditional else ''}{what} on {cfg.data} "
                           f"(DCGAN-style{', projection discriminator' if cfg.conditional else ''}, EMA generator)"}
