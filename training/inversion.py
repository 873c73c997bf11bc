"""Inversion encoders for published generators, their gradient graphs, measurement, and publication.

For a published image generator (any kind, including foreign ONNX generators) this module:
1. builds generator_grad.onnx from its generator.onnx (ganserve/inversion/grad_graph.py: an ONNX-level VJP; no torch);
2. trains an encoder E(x[, y]) -> z (torch) on two sources, with the generator only ever run in ONNX Runtime:
     (G(z), z) pairs:  L_pair = ||E(G(z)) - z||^2 / d                         (latent regression)
     real images x:    L_real = w_real ||G(E(x)) - x||^2 / P                   (reconstruction through G)
   The gradient of L_real w.r.t. the encoder's weights is (dL/dz)^T dE/dtheta; dL/dz at z = E(x) comes from
   generator_grad.onnx, so G needs no torch re-implementation and no checkpoint - only its published graph;
3. exports encoder.onnx (dynamic batch, parity checked against torch);
4. measures ENCODER / OPTIMIZE / HYBRID with ganserve/inversion/runtime.py (the server's implementation) on
   1,000 real MNIST test digits and 1,000 of the generator's own samples;
5. publishes a NEW version of the model: its files copied unchanged plus encoder.onnx, the manifest extended
   with the encoder graph, generator_grad as {"derive": "vjp"} (rebuilt from generator.onnx by the loader, which
   saves storing the generator's weights twice) and the inversion metrics (a published version is never modified).

Run: python -m training.inversion <model> [--steps=N ...]   (see EncoderConfig; config TOML optional)
     python -m training.inversion <model> --derive-grad      (republish a version that stores generator_grad.onnx
                                                              with the graph derived instead; nothing else changes)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from ganserve.data import load_mnist
from ganserve.inversion import runtime as rt
from ganserve.inversion.grad_graph import grad_graph_bytes
from ganserve.store.manifest import DERIVE_VJP, ManifestError, publish
from ganserve.store.sessions import open_session, resolve
from training.common import image_grid
from training.config import build, config_path, parse_overrides, read_toml
from training.evaluate import find_evaluator
from training.export import export_onnx, graph_spec

STORE = Path(__file__).resolve().parent.parent / "model_store"


@dataclass(frozen=True)
class EncoderConfig:
    seed: int = 0
    data_path: str = ""
    channels: int = 32          # width of the first conv; doubled twice
    hidden: int = 512
    steps: int = 1000
    batch_size: int = 64        # pairs per step; as many real images
    lr: float = 2e-3
    w_real: float = 1.0         # weight of the real-image reconstruction loss (per-pixel mean, [-1, 1] units)
    w_pair_pix: float = 0.0     # weight of the pair reconstruction loss ||G(E(G(z))) - G(z)||^2 / P (0: skipped)
    pair_pool: int = 20000      # (G(z), z) pairs generated with ONNX Runtime, redrawn when the pool is used up
    threads: int = 1
    init: str = ""              # warm start: an encoder.safetensors from an earlier run (same latent/classes)

    def __post_init__(self):
        for f in ("channels", "hidden", "steps", "batch_size", "pair_pool", "threads"):
            if getattr(self, f) <= 0:
                raise ValueError(f"{f} must be > 0, got {getattr(self, f)}")
        if not self.lr > 0 or self.w_real < 0 or self.w_pair_pix < 0:
            raise ValueError("lr must be > 0 and the loss weights >= 0")


class InversionEncoder(nn.Module):
    """x (B, 1, 28, 28) in [-1, 1] [, y (B, K)] -> z (B, d). Small conv net; the label joins before the head."""

    def __init__(self, latent_dim: int, num_classes: int = 0, channels: int = 64, hidden: int = 512):
        super().__init__()
        c = channels
        self.num_classes = num_classes
        self.features = nn.Sequential(
            nn.Conv2d(1, c, 4, 2, 1), nn.LeakyReLU(0.2),                                  # (B, c, 14, 14)
            nn.Conv2d(c, 2 * c, 4, 2, 1), nn.BatchNorm2d(2 * c), nn.LeakyReLU(0.2),       # (B, 2c, 7, 7)
            nn.Conv2d(2 * c, 4 * c, 3, 2, 1), nn.BatchNorm2d(4 * c), nn.LeakyReLU(0.2),   # (B, 4c, 4, 4)
            nn.Flatten(),
        )
        self.head = nn.Sequential(nn.Linear(16 * 4 * c + num_classes, hidden), nn.LeakyReLU(0.2),
                                  nn.Linear(hidden, latent_dim))

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        h = self.features(x)  # (B, 64c)
        return self.head(torch.cat([h, y], 1) if self.num_classes else h)


# --- model store helpers -------------------------------------------------------------------------------

def read(version_dir: Path) -> dict:
    return json.loads((Path(version_dir) / "manifest.json").read_text())


# --- gradient graph -------------------------------------------------------------------------------------

def missing_graphs(m: dict, methods: tuple[str, ...]) -> list[str]:
    """The graphs `methods` need that manifest `m` lists none of: ENCODER needs an encoder, OPTIMIZE a gradient
    graph (stored or derived), HYBRID both; an unknown method is named as such."""
    needs = {"ENCODER": ("encoder",), "OPTIMIZE": ("generator_grad",), "HYBRID": ("encoder", "generator_grad")}
    missing = []
    for method in methods:
        for graph in needs.get(method, (f"method {method} (one of {', '.join(rt.METHODS)})",)):
            if graph not in m["graphs"] and graph not in missing:
                missing.append(graph)
    return missing


def write_grad_graph(generator_onnx: Path, out: Path) -> None:
    out.write_bytes(grad_graph_bytes(generator_onnx))


def check_grad_graph(grad_onnx: Path, generator_onnx: Path, latent_dim: int, num_classes: int,
                     n: int = 8, eps: float = 1e-2, seed: int = 0) -> float:
    """Central finite differences of the ONNX generator against grad_z along random directions.

    Returns the max over n samples of |fd - <grad, u>| / ||grad|| (float32 losses limit it to ~1e-3). (Against
    torch autograd in the tests; here the check needs only the published graphs, so it also covers foreign
    generators.)"""
    g = open_session(generator_onnx)
    gg = open_session(grad_onnx)
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, latent_dim)).astype(np.float32)
    u = rng.standard_normal((n, latent_dim)).astype(np.float32)
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    feed_y = {"y": np.eye(num_classes, dtype=np.float32)[rng.integers(0, num_classes, n)]} if num_classes else {}
    target = np.clip(g.run(["x"], {"z": rng.standard_normal((n, latent_dim)).astype(np.float32), **feed_y})[0], -1, 1)
    loss_at = lambda zz: gg.run(["loss"], {"z": zz.astype(np.float32), "target": target, **feed_y})[0].astype(np.float64)  # noqa: E731
    _, grad = gg.run(["loss", "grad_z"], {"z": z, "target": target, **feed_y})
    fd = (loss_at(z + eps * u) - loss_at(z - eps * u)) / (2 * eps)
    an = (grad * u).sum(1)
    return float(np.max(np.abs(fd - an) / np.linalg.norm(grad, axis=1)))


# --- encoder training ------------------------------------------------------------------------------------

def train_encoder(version_dir: Path, grad_onnx: Path, cfg: EncoderConfig, log=print) -> tuple[InversionEncoder, dict]:
    """Train E on (G(z), z) pairs and real MNIST training images; G runs only in ONNX Runtime."""

    m = read(version_dir)
    d, k = m["latent_dim"], m["num_classes"]
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    gen = open_session(version_dir / m["graphs"]["generator"]["file"], threads=cfg.threads)
    grad = open_session(grad_onnx, threads=cfg.threads)
    train = load_mnist("train", cfg.data_path or None)
    x_real = np.asarray(train.images) * 2.0 - 1.0  # (N, 1, 28, 28) in [-1, 1]
    y_real = np.eye(10, dtype=np.float32)[np.asarray(train.labels)]
    eye = np.eye(max(k, 1), dtype=np.float32)

    def make_pairs(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        z = rng.standard_normal((n, d)).astype(np.float32)
        y = eye[rng.integers(0, k, n)] if k else None
        xs = [gen.run(["x"], {"z": z[i:i + 500], **({"y": y[i:i + 500]} if k else {})})[0] for i in range(0, n, 500)]
        return np.concatenate(xs), z, y

    t0 = time.time()
    px, pz, py = make_pairs(cfg.pair_pool)
    log(f"generated {cfg.pair_pool} pairs in {time.time() - t0:.0f}s")
    enc = InversionEncoder(d, k, cfg.channels, cfg.hidden)
    if cfg.init:
        enc.load_state_dict(load_file(cfg.init))
        log(f"warm start from {cfg.init}")
    opt = torch.optim.Adam(enc.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.steps, eta_min=cfg.lr * 0.05)
    b, pixels = cfg.batch_size, float(np.prod(x_real.shape[1:]))
    hist = {"pair_latent": [], "real_pixel": []}
    t0 = time.time()
    for step in range(cfg.steps):
        enc.train()
        ip = rng.integers(0, len(pz), b)
        ir = rng.integers(0, len(x_real), b)
        xp, zp = torch.from_numpy(px[ip]), torch.from_numpy(pz[ip])
        yp = torch.from_numpy(py[ip]) if k else None
        xr = torch.from_numpy(np.ascontiguousarray(x_real[ir], np.float32))
        yr = torch.from_numpy(y_real[ir]) if k else None
        # One encoder pass over both halves (BatchNorm sees the mixture it will see at test time).
        z_all = enc(torch.cat([xp, xr]), torch.cat([yp, yr]) if k else None)  # (2b, d)
        z_hat_p, z_hat_r = z_all[:b], z_all[b:]
        loss_lat = F.mse_loss(z_hat_p, zp)
        # Pixel losses through G: d/dz of ||G(z) - target||^2 from generator_grad.onnx, chained into torch
        # (surrogate = <z, dL/dz> has the right gradient w.r.t. the encoder weights). Pairs only if weighted.
        lo = 0 if cfg.w_pair_pix > 0 else b
        feed = {"z": z_all[lo:].detach().numpy(),
                "target": np.concatenate([px[ip], x_real[ir]])[lo:].astype(np.float32)}
        if k:
            feed["y"] = np.concatenate([py[ip], y_real[ir]])[lo:]
        loss_pix, grad_z = grad.run(["loss", "grad_z"], feed)
        w = np.concatenate([np.full(b, cfg.w_pair_pix), np.full(b, cfg.w_real)]).astype(np.float32)[lo:, None]
        surrogate = (z_all[lo:] * torch.from_numpy(grad_z * w / (b * pixels))).sum()
        opt.zero_grad(set_to_none=True)
        (loss_lat + surrogate).backward()
        opt.step()
        sched.step()
        if step % 50 == 0 or step == cfg.steps - 1:
            hist["pair_latent"].append(loss_lat.item())
            hist["real_pixel"].append(float(loss_pix[-b:].mean() / pixels / 4))  # per-pixel MSE in [0, 1] units
        if step % 250 == 0 or step == cfg.steps - 1:
            log(f"encoder step {step + 1}/{cfg.steps}: pair latent mse {hist['pair_latent'][-1]:.3f}, real mse01 "
                f"{hist['real_pixel'][-1]:.4f} ({time.time() - t0:.0f}s)")
        if step and step % (cfg.pair_pool // b) == 0:  # fresh pairs once the pool has been seen
            px, pz, py = make_pairs(cfg.pair_pool)
    enc.eval()
    return enc, {"wall_time_s": time.time() - t0, "history": hist}


def export_encoder(enc: InversionEncoder, path: Path) -> float:
    """encoder.onnx: x (N, 1, 28, 28) [, y (N, K)] -> z (N, d); returns the parity max abs diff vs torch."""

    k = enc.num_classes

    def probe(n, g):
        p = {"x": torch.rand(n, 1, 28, 28, generator=g) * 2 - 1}
        if k:
            p["y"] = torch.softmax(3 * torch.randn(n, k, generator=g), 1)
        return p

    return export_onnx(enc.eval(), probe(2, torch.Generator().manual_seed(0)), ["z"], path, probe=probe)


# --- pictures ---------------------------------------------------------------------------------------------

def strip_png(version_dir: Path | list[Path], path: Path, n: int = 10,
              settings: rt.InversionSettings = rt.DEFAULTS) -> None:
    """Rows: n real test digits (one per class), then their HYBRID inversions by each model version given."""
    dirs = version_dir if isinstance(version_dir, list) else [version_dir]
    test = load_mnist("test")
    idx = [int(np.flatnonzero(np.asarray(test.labels) == c % 10)[c // 10]) for c in range(n)]
    x = np.asarray(test.images[idx], np.float32) * 2 - 1
    rows = [x]
    for d in dirs:
        k = read(d)["num_classes"]
        y = np.eye(k, dtype=np.float32)[np.asarray(test.labels[idx])] if k else None
        rows.append(rt.Inverter.from_version_dir(d).invert(x, "HYBRID", y, settings=settings).reconstruction)
    image_grid(np.concatenate(rows), n, path)


# --- publish -----------------------------------------------------------------------------------------------

def inversion_graphs(m: dict, encoder_onnx: Path, grad_onnx: Path) -> dict:
    """`m`'s graphs + encoder.onnx + generator_grad, the latter derived from the generator at load time (not stored:
    it would repeat the generator's weights; ganserve/store/manifest.py graph_model)."""
    graphs = {r: g for r, g in m["graphs"].items() if r not in ("encoder", "generator_grad")}
    return dict(graphs, encoder=graph_spec(encoder_onnx), generator_grad=_derived(graph_spec(grad_onnx)))


def _derived(spec: dict) -> dict:
    """A gradient graph's manifest entry without its file: derived at load from the generator."""
    return dict({k: v for k, v in spec.items() if k != "file"}, derive=DERIVE_VJP)


def publish_with_inversion(version_dir: Path, encoder_onnx: Path, grad_onnx: Path, extra: dict,
                           store: Path = STORE) -> Path:
    """A new version: every file of `version_dir` unchanged + encoder.onnx; generator_grad derived at load
    (`grad_onnx`, built from the same generator by the same code, gives its input/output specs)."""
    m = read(version_dir)
    files = {f: version_dir / f for f in m["files"] if f != "generator_grad.onnx"}
    files["encoder.onnx"] = encoder_onnx
    graphs = inversion_graphs(m, encoder_onnx, grad_onnx)
    new = dict(m, graphs=graphs, created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
               metrics=dict(m.get("metrics", {}), **extra["metrics"]),
               export=dict(m.get("export", {}), **extra["export"]),
               training=dict(m.get("training", {}), inversion_encoder=extra["training"],
                             derived_from=f"{m['name']}@{m['version']}"))
    new.pop("files", None)
    return publish(store, new, files)


def republish_derived_grad(version_dir: Path, store: Path = STORE) -> Path:
    """A new version identical to `version_dir` except that generator_grad.onnx is not stored but derived at
    load; refused unless the derivation reproduces the stored graph byte for byte."""
    m = read(version_dir)
    grad = m["graphs"].get("generator_grad")
    if grad is None or "file" not in grad:
        raise SystemExit(f"{version_dir}: no stored generator_grad graph to replace")
    if grad_graph_bytes(version_dir / m["graphs"]["generator"]["file"]) != (version_dir / grad["file"]).read_bytes():
        raise ManifestError(f"{version_dir}: the derived gradient graph differs from the stored {grad['file']}")
    files = {f: version_dir / f for f in m["files"] if f != grad["file"]}
    new = dict(m, graphs=dict(m["graphs"], generator_grad=_derived(grad)),
               created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
               training=dict(m.get("training", {}), derived_from=f"{m['name']}@{m['version']}"))
    new.pop("files", None)
    return publish(store, new, files)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Train an inversion encoder for a published generator and publish "
                                            "a new version with encoder.onnx and generator_grad.onnx")
    p.add_argument("model", help="model name in the store (its newest valid version is used)")
    p.add_argument("--config", default=None, help="TOML of EncoderConfig fields (training/configs/encoder-mnist.toml)")
    p.add_argument("--store", default=str(STORE))
    p.add_argument("--work", default=None, help="scratch folder (default runs/<model>-encoder)")
    p.add_argument("--no-publish", action="store_true")
    p.add_argument("--strip", default=None, help="also write originals/HYBRID inversions as a PNG strip here")
    p.add_argument("--inv-steps", type=int, default=rt.DEFAULTS.steps, help="OPTIMIZE/HYBRID steps to measure with")
    p.add_argument("--inv-lr", type=float, default=rt.DEFAULTS.lr)
    p.add_argument("--inv-prior", type=float, default=rt.DEFAULTS.prior_weight)
    p.add_argument("--methods", default=",".join(rt.METHODS), help="methods to measure, comma-separated")
    p.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads while measuring")
    p.add_argument("--measure-only", action="store_true",
                   help="only measure the newest version as published (no training, no publishing)")
    p.add_argument("--derive-grad", action="store_true",
                   help="publish the newest version again with generator_grad derived at load instead of stored")
    p.add_argument("--publish-only", action="store_true",
                   help="publish what an earlier --no-publish run left in --work (checked against the source version)")
    args, rest = p.parse_known_args(argv)
    values = read_toml(config_path(args.config)) if args.config else {}
    values.pop("family", None)
    cfg = build(EncoderConfig, values, parse_overrides(rest))
    print(json.dumps(dataclasses.asdict(cfg), indent=2))
    torch.set_num_threads(cfg.threads)
    store = Path(args.store)
    src = resolve(store, args.model)
    settings = rt.InversionSettings(steps=args.inv_steps, lr=args.inv_lr, prior_weight=args.inv_prior)
    if args.measure_only:
        methods = tuple(m.strip().upper() for m in args.methods.split(",") if m.strip())
        missing = missing_graphs(read(src), methods)
        if missing:
            p.error(f"{src} cannot be measured with {', '.join(methods)}: it has no {' and no '.join(missing)} "
                    f"(train an encoder with `python -m training.inversion {args.model}`, or choose --methods)")
        print(json.dumps(rt.measure(src, find_evaluator(store), settings=settings, methods=methods,
                                    threads=args.threads), indent=2))
        if args.strip:
            strip_png(src, Path(args.strip), settings=settings)
        return
    if args.derive_grad:
        print(f"published {republish_derived_grad(src, store)}")
        return
    work = Path(args.work or f"runs/{args.model}-encoder")
    work.mkdir(parents=True, exist_ok=True)
    m = read(src)
    if args.publish_only:
        extra = json.loads((work / "extra.json").read_text())
        source = f"{m['name']}@{m['version']}"
        if extra["training"]["source"] != source:
            raise SystemExit(f"{work} was trained for {extra['training']['source']}, the newest version is {source}")
        print(f"published {publish_with_inversion(src, work / 'encoder.onnx', work / 'generator_grad.onnx', extra, store)}")
        return
    grad_onnx, enc_onnx = work / "generator_grad.onnx", work / "encoder.onnx"
    write_grad_graph(src / m["graphs"]["generator"]["file"], grad_onnx)
    fd = check_grad_graph(grad_onnx, src / m["graphs"]["generator"]["file"], m["latent_dim"], m["num_classes"])
    print(f"{src}: generator_grad vs central finite differences, max rel err {fd:.2e}")
    enc, info = train_encoder(src, grad_onnx, cfg, print)

    save_file(enc.state_dict(), str(work / "encoder.safetensors"), metadata={"config": json.dumps(dataclasses.asdict(cfg))})
    parity = export_encoder(enc, enc_onnx)
    print(f"encoder parity max abs diff {parity:.2e}")
    # Measure on a scratch copy laid out like a version folder.
    scratch = work / "version"
    scratch.mkdir(exist_ok=True)
    for f in m["files"]:
        if f.endswith(".onnx"):
            (scratch / f).write_bytes((src / f).read_bytes())
    (scratch / "encoder.onnx").write_bytes(enc_onnx.read_bytes())
    (scratch / "manifest.json").write_text(json.dumps(dict(m, graphs=inversion_graphs(m, enc_onnx, grad_onnx))))
    metrics = rt.measure(scratch, find_evaluator(store), settings=settings)
    if args.strip:
        strip_png(scratch, Path(args.strip), settings=settings)
    (work / "inversion_metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    extra = {"metrics": metrics,
             "export": {"parity_max_abs_diff": dict(m.get("export", {}).get("parity_max_abs_diff", {}),
                                                    encoder=parity),
                        "generator_grad_fd_max_rel_err": fd},
             "training": {"config": dataclasses.asdict(cfg), "wall_time_s": round(info["wall_time_s"], 1),
                          "source": f"{m['name']}@{m['version']}"}}
    (work / "extra.json").write_text(json.dumps(extra, indent=2) + "\n")
    if args.no_publish:
        return
    print(f"published {publish_with_inversion(src, enc_onnx, grad_onnx, extra, store)}")


if __name__ == "__main__":
    main()
