"""Image -> latent inversion over ONNX Runtime sessions, without torch: the one implementation of Invert.

The server's Invert RPC and `python -m training.evaluate` both use this module. It needs a model version's
graphs (ganserve/store/manifest.py describes them):

    encoder         x (N, 1, 28, 28) in the generator's value range [-1, 1] [, y (N, K)]  ->  z (N, d)
    generator_grad  z (N, d), target (N, 1, 28, 28) [, y (N, K)]  ->  loss (N,) = ||G(z[, y]) - target||^2,
                                                                       grad_z (N, d) = dloss/dz
    generator       z (N, d) [, y (N, K)] -> x                       (for the reconstructions)

Methods:
    ENCODER   z = E(x[, y]): one pass.
    OPTIMIZE  from a start point z0 (default: zeros, the prior's mode), K steps of Adam on
              f(z) = ||G(z) - x||^2 + prior_weight * ||z||^2   (the prior term is a Gaussian log-prior up to a
              constant: -log N(z; 0, I/(2 prior_weight))). The gradient of the first term comes from
              generator_grad (ganserve/inversion/grad_graph.py); the prior's is added here.
    HYBRID    OPTIMIZE started from the encoder's z.
Discrete latent codes (manifest `latent_code`, a self-conditioned generator's cluster read off z_i): the
generator is piecewise constant along z_i, so no gradient can move it between cells, and Adam would drift it
on the prior's gradient alone. OPTIMIZE and HYBRID therefore first choose the cell by search (every cell's
representative value, keeping the start point's other coordinates; the objective below decides), then
optimise the other coordinates with z_i held fixed. ENCODER is one encoder pass plus that search (no
optimisation): the encoder's own z_i, a regression, mostly lands in a wrong cell.
Each sample is optimised independently (Adam's moments are per coordinate, so a batch is N independent
problems); the returned z is the best evaluated iterate per sample, so HYBRID is never worse than ENCODER
on the objective.

Defaults (DEFAULTS below) were measured on this machine on 1,000 real MNIST test digits and 1,000 model samples
for the shipped generators: docs/inversion/results.json (the defaults) and the manifests'
`metrics.inversion_*` (measured at 30 steps when those versions were built); see training/inversion.py.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from ganserve.data import load_mnist
from ganserve.store.manifest import graph_model
from ganserve.store.sessions import open_session
from protos.latents import latents

METHODS = ("ENCODER", "OPTIMIZE", "HYBRID")


@dataclass(frozen=True)
class InversionSettings:
    steps: int = 30             # Adam steps for OPTIMIZE/HYBRID (self-conditioned gan-mnist, 300 images, 3 code starts:
                                # 15 steps gave own MSE 0.0052, 20 gave 0.0038, 30 gave 0.0024)
    lr: float = 0.05            # Adam step size in latent units (z ~ N(0, I))
    prior_weight: float = 1e-3  # weight of ||z||^2 next to the per-sample sum of squared pixel error
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    batch_size: int = 256       # images per ONNX Runtime call
    code_starts: int = 2        # discrete latent code: optimise from the best this-many cells, keep the best
                                # (20 steps: label kept on real digits 95.3% with 1 start, 97.0% with 3 or 5;
                                # wgan-gp-mnist, 300 digits: 3 starts x 20 steps 97.3% / own MSE 0.0060 / 48 ms,
                                # 2 x 30 steps 97.7% / 0.0038 / 42 ms)

    def __post_init__(self):
        if self.steps < 0:
            raise ValueError(f"steps must be >= 0, got {self.steps}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.prior_weight < 0:
            raise ValueError(f"prior_weight must be >= 0, got {self.prior_weight}")
        if self.batch_size <= 0:
            raise ValueError(f"batch_size must be > 0, got {self.batch_size}")
        if self.code_starts < 1:
            raise ValueError(f"code_starts must be >= 1, got {self.code_starts}")


DEFAULTS = InversionSettings()


class Stopped(Exception):
    """Raised when the caller's `should_stop()` said so (checked before every ONNX Runtime call: every
    optimisation step, encoder batch and code-search pass), so a caller whose deadline passed stops paying."""


def _never() -> bool:
    return False


@dataclass
class InversionResult:
    z: np.ndarray               # (N, d) float32
    objective: np.ndarray       # (N,) ||G(z) - x||^2 + prior_weight ||z||^2 at z (a discrete code's coordinate excluded) (NaN for ENCODER without a grad graph)
    reconstruction: np.ndarray | None  # (N, *image) in the generator's value range, when a generator is given
    method: str
    steps: int
    seconds: float
    history: list[float] = field(default_factory=list)  # mean objective per step (OPTIMIZE/HYBRID)


def _stop(should_stop, where: str) -> bool:
    """False, or Stopped when should_stop() says so (for use inside comprehensions)."""
    if should_stop():
        raise Stopped(f"stopped while {where}")
    return False


class Inverter:
    """Inversion for one model version. Sessions are onnxruntime.InferenceSession (thread-safe Run)."""

    def __init__(self, *, generator_grad=None, encoder=None, generator=None, latent_code: dict | None = None):
        if generator_grad is None and encoder is None:
            raise ValueError("need at least an encoder or a generator_grad session")
        self.grad, self.encoder, self.generator = generator_grad, encoder, generator
        self.code_dim = None if latent_code is None else int(latent_code["dim"])
        self.code_values = None if latent_code is None else np.asarray(latent_code["values"], np.float32)
        # Conditional if any graph takes the label. An encoder may ignore it (the latent-constraint model's VAE
        # encoder reads the image only): each graph is fed only the inputs it declares.
        self._takes_y = {id(s): any(i.name == "y" for i in s.get_inputs())
                         for s in (generator_grad, encoder, generator) if s is not None}
        self.conditional = any(self._takes_y.values())
        if generator_grad is not None:
            self.latent_dim = int(generator_grad.get_inputs()[[i.name for i in generator_grad.get_inputs()].index("z")].shape[1])
        else:
            self.latent_dim = int(encoder.get_outputs()[0].shape[1])

    @classmethod
    def from_version_dir(cls, version_dir: str | Path, threads: int = 1) -> "Inverter":
        """The graphs its manifest lists (a derived generator_grad is built from the generator)."""
        d = Path(version_dir)
        m = json.loads((d / "manifest.json").read_text())
        get = lambda role: open_session(graph_model(d, m, role), threads=threads) if role in m["graphs"] else None  # noqa: E731
        return cls(generator_grad=get("generator_grad"), encoder=get("encoder"), generator=get("generator"),
                   latent_code=m.get("latent_code"))

    # -- helpers ------------------------------------------------------------------------------------
    def _check(self, x: np.ndarray, y: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.ndim != 4:
            raise ValueError(f"images must be (N, C, H, W), got shape {x.shape}")
        if self.conditional:
            if y is None:
                raise ValueError("labels y (N, num_classes) are required for a conditional model")
            y = np.ascontiguousarray(y, dtype=np.float32)
            if y.ndim != 2 or len(y) != len(x):
                raise ValueError(f"labels must be (N, num_classes) with N = {len(x)}, got shape {y.shape}")
        elif y is not None:
            raise ValueError("labels given for an unconditional model")
        return x, y

    def _feed(self, session, feed: dict, y: np.ndarray | None, lo: int, hi: int) -> dict:
        if y is not None and self._takes_y[id(session)]:
            feed["y"] = y[lo:hi]
        return feed

    def encode(self, x: np.ndarray, y: np.ndarray | None = None, batch_size: int = 256,
               should_stop=_never) -> np.ndarray:
        if self.encoder is None:
            raise ValueError("this model has no encoder graph: use method OPTIMIZE")
        x, y = self._check(x, y)
        out = [self.encoder.run(["z"], self._feed(self.encoder, {"x": x[i:i + batch_size]}, y, i, i + batch_size))[0]
               for i in range(0, len(x), batch_size) if not _stop(should_stop, "encoding")]
        return np.concatenate(out).astype(np.float32) if out else np.zeros((0, self.latent_dim), np.float32)

    def generate(self, z: np.ndarray, y: np.ndarray | None = None, batch_size: int = 256) -> np.ndarray:
        if self.generator is None:
            raise ValueError("no generator session given")
        out = [self.generator.run(["x"], self._feed(self.generator, {"z": z[i:i + batch_size]}, y, i, i + batch_size))[0]
               for i in range(0, len(z), batch_size)]
        return np.concatenate(out)

    def objective_and_grad(self, z: np.ndarray, x: np.ndarray, y: np.ndarray | None,
                           prior_weight: float) -> tuple[np.ndarray, np.ndarray]:
        """f(z) = ||G(z) - x||^2 + prior_weight ||z||^2 per sample, and df/dz."""
        loss, grad = self.grad.run(["loss", "grad_z"], self._feed(self.grad, {"z": z, "target": x}, y, 0, len(z)))
        grad = grad + 2.0 * prior_weight * z
        if self.code_dim is not None:
            grad[:, self.code_dim] = 0.0  # the code's cell is chosen by search_code, never by a gradient
        return loss + prior_weight * self._sq_norm(z), grad

    def _sq_norm(self, z: np.ndarray) -> np.ndarray:
        """||z||^2 over the continuous coordinates (a discrete code's value is a cell label, not a Gaussian draw)."""
        sq = (z * z).sum(1)
        return sq if self.code_dim is None else sq - z[:, self.code_dim] ** 2

    def search_code(self, x: np.ndarray, z: np.ndarray, y: np.ndarray | None = None, prior_weight: float = 0.0,
                    batch_size: int = 256, should_stop=_never) -> tuple[np.ndarray, np.ndarray]:
        """For a discrete latent code: each sample's best cell (its representative value at code_dim, the other
        coordinates from z) under ||G(z) - x||^2 + prior_weight ||z_continuous||^2; returns (z with the cells
        set, objective). Costs one generator pass per cell and image."""
        zs, fs = self._best_cells(x, z, y, prior_weight, batch_size, top=1, should_stop=should_stop)
        return zs[0], fs[0]

    def _best_cells(self, x: np.ndarray, z: np.ndarray, y: np.ndarray | None, prior_weight: float,
                    batch_size: int, top: int, should_stop=_never) -> tuple[np.ndarray, np.ndarray]:
        """The `top` best cells of each sample (see search_code): (top, N, d) latents and (top, N) objectives."""
        z = np.array(z, dtype=np.float32)
        if self.code_dim is None:
            raise ValueError("this model has no discrete latent code")
        scores = np.empty((len(self.code_values), len(z)), np.float32)
        for c, v in enumerate(self.code_values):
            _stop(should_stop, "searching the latent code")
            trial = z.copy()
            trial[:, self.code_dim] = v
            if self.generator is not None:
                err = self.generate(trial, y, batch_size) - x
                f = (err * err).reshape(len(z), -1).sum(1)
            else:
                f = np.concatenate([self.grad.run(["loss"], self._feed(self.grad, {"z": trial[i:i + batch_size],
                                                                                   "target": x[i:i + batch_size]},
                                                                      y, i, i + batch_size))[0]
                                    for i in range(0, len(z), batch_size)])
            scores[c] = f + prior_weight * self._sq_norm(trial)
        order = np.argsort(scores, axis=0, kind="stable")[:max(1, min(top, len(scores)))]  # (top, N)
        zs = np.repeat(z[None], len(order), 0)
        zs[:, :, self.code_dim] = self.code_values[order]
        return zs, np.take_along_axis(scores, order, 0)

    def optimize(self, x: np.ndarray, z0: np.ndarray, y: np.ndarray | None = None,
                 settings: InversionSettings = DEFAULTS, should_stop=_never) -> tuple[np.ndarray, np.ndarray, list[float]]:
        """Adam on each sample's objective from z0; returns (best z, its objective, mean objective per step).
        `should_stop()` is asked before every step (Stopped when it says True)."""
        if self.grad is None:
            raise ValueError("this model has no generator_grad graph: use method ENCODER")
        s = settings
        zs, fs, hist = [], [], np.zeros(s.steps + 1)
        for lo in range(0, len(x), s.batch_size):
            hi = min(lo + s.batch_size, len(x))
            xb, yb = x[lo:hi], (None if y is None else y[lo:hi])
            z = np.array(z0[lo:hi], dtype=np.float32)
            m, v = np.zeros_like(z), np.zeros_like(z)
            best_z, best_f = z.copy(), np.full(len(z), np.inf, np.float32)
            for t in range(s.steps + 1):
                if should_stop():
                    raise Stopped(f"stopped at step {t} of {s.steps}")
                f, g = self.objective_and_grad(z, xb, yb, s.prior_weight)
                better = f < best_f
                best_z[better], best_f[better] = z[better], f[better]
                hist[t] += float(f.sum())
                if t == s.steps:
                    break  # the last evaluation only scores the final iterate
                # Adam (Kingma & Ba 2015, Algorithm 1), bias-corrected.
                m = s.beta1 * m + (1 - s.beta1) * g
                v = s.beta2 * v + (1 - s.beta2) * g * g
                mhat = m / (1 - s.beta1 ** (t + 1))
                vhat = v / (1 - s.beta2 ** (t + 1))
                z = (z - s.lr * mhat / (np.sqrt(vhat) + s.eps)).astype(np.float32)
            zs.append(best_z)
            fs.append(best_f)
        n = max(len(x), 1)
        return np.concatenate(zs), np.concatenate(fs), [h / n for h in hist]

    def invert(self, x: np.ndarray, method: str = "HYBRID", y: np.ndarray | None = None,
               z0: np.ndarray | None = None, settings: InversionSettings = DEFAULTS,
               reconstruct: bool = True, should_stop=_never) -> InversionResult:
        """Invert images x (N, C, H, W) in the generator's value range. See the module docstring.
        `should_stop()` is asked before every ONNX Runtime call (Stopped when it says True): a server passes
        its call's deadline and cancellation."""
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        x, y = self._check(x, y)
        t0 = time.perf_counter()
        hist: list[float] = []
        if method == "ENCODER":
            z = self.encode(x, y, settings.batch_size, should_stop)
            if self.code_dim is not None and self.generator is not None:  # the cell by search, no optimisation
                z, _ = self.search_code(x, z, y, settings.prior_weight, settings.batch_size, should_stop)
            objective = (self.optimize(x, z, y, replace(settings, steps=0), should_stop)[1] if self.grad is not None
                         else np.full(len(z), np.nan, np.float32))
            steps = 0
        else:
            if method == "HYBRID":
                start = self.encode(x, y, settings.batch_size, should_stop)
            elif z0 is not None:
                start = np.asarray(z0, np.float32)
                if start.shape != (len(x), self.latent_dim):
                    raise ValueError(f"z0 must be ({len(x)}, {self.latent_dim}), got {start.shape}")
            else:
                start = np.zeros((len(x), self.latent_dim), np.float32)
            # m start points per sample: the start itself, or a discrete code's best m cells; all m * N problems
            # are optimised as one batch and each sample keeps its best
            starts = (start[None] if self.code_dim is None else
                      self._best_cells(x, start, y, settings.prior_weight, settings.batch_size, settings.code_starts,
                                       should_stop)[0])
            m, n = len(starts), len(x)
            zz, ff, hist = self.optimize(x if m == 1 else np.tile(x, (m, 1, 1, 1)), starts.reshape(m * n, -1),
                                         y if y is None or m == 1 else np.tile(y, (m, 1)), settings, should_stop)
            pick = ff.reshape(m, n).argmin(0)
            z, objective = zz.reshape(m, n, -1)[pick, np.arange(n)], ff.reshape(m, n)[pick, np.arange(n)]
            steps = settings.steps
        seconds = time.perf_counter() - t0
        rec = self.generate(z, y, settings.batch_size) if (reconstruct and self.generator is not None) else None
        return InversionResult(z=z, objective=objective, reconstruction=rec, method=method, steps=steps,
                               seconds=seconds, history=hist)


def pixel_mse01(a: np.ndarray, b: np.ndarray, value_range: tuple[float, float] = (-1.0, 1.0)) -> np.ndarray:
    """Per-image mean squared error with pixels mapped to [0, 1]: (N,)."""
    lo, hi = value_range
    d = (np.asarray(a, np.float64) - np.asarray(b, np.float64)) / (hi - lo)
    return (d * d).reshape(len(d), -1).mean(1)


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity (N,)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)


def measure(version_dir: str | Path, evaluator, *, n: int = 1000, settings: InversionSettings = DEFAULTS,
            threads: int = 2, seed: int = 0, methods: tuple[str, ...] = METHODS, log=print) -> dict[str, float]:
    """ENCODER / OPTIMIZE / HYBRID on n real MNIST test digits and n of the model's own samples.

    `evaluator` is training.evaluate.Evaluator (x in [0, 1] -> (logits, features)).
    Real digits (the first n of the test split, in [-1, 1]; conditional models get the true label, as the
    Invert RPC's optional label): per-pixel MSE with pixels in [0, 1], and label agreement = the evaluator's
    label of the reconstruction equals its label of the original.
    Own samples (latents of `seed` from protos.latents, labels i mod K): MSE and cosine(z_recovered, z_true).
    Time: wall seconds of the whole batch (ONNX Runtime, `threads` intra-op threads) per image.
    """
    d = Path(version_dir)
    m = json.loads((d / "manifest.json").read_text())
    dim, k = m["latent_dim"], m["num_classes"]
    inv = Inverter.from_version_dir(d, threads)
    test = load_mnist("test")
    x01 = np.asarray(test.images[:n], np.float32)
    x = x01 * 2 - 1
    y = np.eye(k, dtype=np.float32)[np.asarray(test.labels[:n])] if k else None
    label_orig = evaluator(x01)[0].argmax(1)
    z_true = latents(seed, n, dim)
    y_own = np.eye(k, dtype=np.float32)[np.arange(n) % k] if k else None
    x_own = inv.generate(z_true, y_own)
    out: dict[str, float] = {"inversion_n": n}
    for method in methods:
        r = inv.invert(x, method, y, settings=settings)
        mse = pixel_mse01(r.reconstruction, x)
        agree = float((evaluator((r.reconstruction + 1) / 2)[0].argmax(1) == label_orig).mean())
        r2 = inv.invert(x_own, method, y_own, settings=settings)
        mse_own = pixel_mse01(r2.reconstruction, x_own)
        cos = cosine(r2.z, z_true)
        key = method.lower()
        out.update({f"inversion_{key}_real_mse": float(mse.mean()),
                    f"inversion_{key}_real_label_agreement": agree,
                    f"inversion_{key}_own_mse": float(mse_own.mean()),
                    f"inversion_{key}_own_cosine": float(cos.mean()),
                    f"inversion_{key}_ms_per_image": 1000 * (r.seconds + r2.seconds) / (2 * n)})
        log(f"{m['name']}@{m['version']} {method:8s} real mse01 {mse.mean():.4f} label agreement {agree:.3f} | "
            f"own mse01 {mse_own.mean():.4f} cos {cos.mean():.3f} | {out[f'inversion_{key}_ms_per_image']:.2f} ms/image")
    out.update({"inversion_steps": settings.steps, "inversion_lr": settings.lr,
                "inversion_prior_weight": settings.prior_weight, "inversion_threads": threads})
    return out
