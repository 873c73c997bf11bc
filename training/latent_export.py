"""A trained latent-constraint model's report (the holes, the actors' effect), its export (generator.onnx =
decoder o actor, encoder.onnx = the VAE encoder's mean) and its manifest fields."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ganserve import metrics as M
from protos.latents import latents
from training import evaluate
from training.common import image_grid
from training.export import export_onnx, graph_spec, ort_samples_per_s, param_count
from training.latent_nets import NUM_CLASSES, ConstrainedGenerator, EncoderMean, one_hot


@torch.no_grad()
def latent_report(result: dict, evaluator, n: int = 10000, seed: int = 0) -> dict:
    """The latent-constraint measures (docs/latent_constraints/README.md), with the project's evaluator (10k samples, latents of `seed`):

    - the holes: decoded prior samples vs reconstructions of test images (evaluator confidence, Frechet);
    - the realism actor: prior samples before/after (Frechet distance, mean evaluator confidence);
    - the mean latent shift ||z' - z|| of both actors on prior samples.
    """
    mods = result["modules"]
    dec = mods["vae"].decoder
    z = torch.from_numpy(latents(seed, n, result["config"].latent_dim))
    y = one_hot(torch.arange(n) % NUM_CLASSES)
    ref = evaluate.real_reference(evaluator, n)
    x_test = result["x_test"][:n]
    mu, _ = mods["vae"].encoder(x_test)

    def stats(x01: torch.Tensor) -> dict:
        logits, feats = evaluator(x01.numpy())
        p = np.exp(logits - logits.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        return {"confidence": float(p.max(1).mean()), "frechet": M.frechet_distance(ref["features"], feats)}

    out = {}
    for tag, x01 in (("prior", dec(z)), ("reconstruction", dec(mu)), ("realism", dec(mods["realism_actor"](z))),
                     ("conditional", dec(mods["actor"](z, y)))):
        st = stats(x01)
        out[f"{tag}_confidence"], out[f"{tag}_frechet"] = st["confidence"], st["frechet"]
    out["latent_shift_conditional"] = float((mods["actor"](z, y) - z).norm(dim=1).mean())
    out["latent_shift_realism"] = float((mods["realism_actor"](z) - z).norm(dim=1).mean())
    out["prior_latent_norm"] = float(z.norm(dim=1).mean())
    return out


def export(result: dict, out: Path) -> dict:
    """generator.onnx = decoder o actor (z, y) -> x in [-1, 1]; samples.png (a row per class), holes.png,
    curves.png; parity, speed, the evaluator metrics of 10k conditional samples, the latent report."""
    cfg = result["config"]  # a training.latent_constraints.LatentConstraintConfig
    mods = result["modules"]
    out = Path(out)
    gen = ConstrainedGenerator(mods["vae"].decoder, mods["actor"]).eval()

    def probe(n, g):
        return {"z": torch.randn(n, cfg.latent_dim, generator=g),
                "y": torch.softmax(3 * torch.randn(n, NUM_CLASSES, generator=g), 1)}

    parity = {"generator": export_onnx(gen, probe(2, torch.Generator().manual_seed(0)), ["x"],
                                       out / "generator.onnx", probe=probe)}
    # encoder.onnx: the VAE encoder's mean, x in [-1, 1] -> z (an inversion start; it takes no label, and the
    # inversion runtime feeds a graph only the inputs it declares).
    enc_probe = lambda n, g: {"x": torch.rand(n, 1, 28, 28, generator=g) * 2 - 1}  # noqa: E731
    parity["encoder"] = export_onnx(EncoderMean(mods["vae"].encoder).eval(), enc_probe(2, torch.Generator().manual_seed(0)),
                                    ["z"], out / "encoder.onnx", probe=enc_probe)

    def feeds(n):
        return {k: v.numpy() for k, v in probe(n, torch.Generator().manual_seed(1)).items()}

    speed = {f"batch_{b}": round(ort_samples_per_s(out / "generator.onnx", feeds, b), 1) for b in (1, 256)}
    with torch.no_grad():
        z = torch.from_numpy(latents_for_preview(cfg.latent_dim))
        y = one_hot(torch.arange(100) // 10)
        image_grid(gen(z, y).numpy(), 10, out / "samples.png")
        prior = ConstrainedGenerator(mods["vae"].decoder, None)(z[:20])
        fixed = ConstrainedGenerator(mods["vae"].decoder, mods["realism_actor"])(z[:20])
        image_grid(torch.cat([prior, fixed]).numpy(), 20, out / "holes.png")  # top: prior, bottom: realism actor
    metrics = dict(result["metrics"])
    ev = evaluate.find_evaluator(cfg.evaluator_store, required=False)
    if ev is not None:
        metrics.update(evaluate.evaluate_generator_onnx(out / "generator.onnx", cfg.latent_dim, NUM_CLASSES, ev,
                                                        n=10000, seed=0))
        metrics.update(latent_report(result, ev), evaluator=ev.id)
    (out / "latent_report.json").write_text(json.dumps(metrics, indent=2) + "\n")
    files = {"generator.onnx": out / "generator.onnx", "encoder.onnx": out / "encoder.onnx",
             "samples.png": out / "samples.png", "curves.png": out / "curves.png", "holes.png": out / "holes.png"}
    graphs = {"generator": graph_spec(out / "generator.onnx"), "encoder": graph_spec(out / "encoder.onnx")}
    return {"graphs": graphs, "files": files, "metrics": metrics,
            "export": {"parity_max_abs_diff": parity, "inprocess_samples_per_s": speed["batch_256"],
                       "samples_per_s": speed, "ort_threads": 2, "opset": 17,
                       "generator_params": param_count(gen)}}


def latents_for_preview(dim: int, n: int = 100) -> np.ndarray:
    return latents(12345, n, dim)


def manifest_fields(cfg) -> dict:
    return {"kind": "latent-constraint", "data_kind": "image", "latent_dim": cfg.latent_dim,
            "num_classes": NUM_CLASSES, "class_names": [str(i) for i in range(NUM_CLASSES)],
            "output": {"shape": [1, 28, 28], "value_range": [-1.0, 1.0]}, "max_batch_size": 4096,
            "description": f"VAE (latent {cfg.latent_dim}, sigma_x {cfg.sigma_x}, beta {cfg.beta}) on MNIST made "
                           "conditional by a latent actor-critic (Engel et al. 2017)"
                           + (f", latent recovery {cfg.latent_recovery}" if cfg.latent_recovery else "")
                           + "; generator = decoder o actor"}
