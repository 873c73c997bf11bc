"""Pieces every trainer uses: seeding, atomic safetensors checkpoints, EMA weights, curves, image grids."""

from __future__ import annotations

import copy
import json
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from matplotlib.figure import (
    Figure,  # the object API: files only, no pyplot state, no backend switched
)
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file


def seed_all(seed: int) -> torch.Generator:
    """Seed Python, numpy and torch; return a torch Generator for the data order (saved in checkpoints)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


# --- checkpoints -----------------------------------------------------------------------------------

def _flatten_optimizer(prefix: str, opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Optimizer state -> (tensors, JSON-able rest): safetensors holds tensors only."""
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"{prefix}.{pid}.{k}"] = v.detach().clone().contiguous()
            else:
                scalars[f"{pid}.{k}"] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _unflatten_optimizer(prefix: str, opt: torch.optim.Optimizer, tensors: dict, rest: dict) -> None:
    state: dict[int, dict[str, Any]] = {}
    for key, v in tensors.items():
        if key.startswith(prefix + "."):
            pid, k = key[len(prefix) + 1:].split(".", 1)
            state.setdefault(int(pid), {})[k] = v
    for key, v in rest["scalars"].items():
        pid, k = key.split(".", 1)
        state.setdefault(int(pid), {})[k] = v
    opt.load_state_dict({"state": state, "param_groups": rest["param_groups"]})


def save_checkpoint(path: Path, modules: dict[str, nn.Module], optimizers: dict[str, torch.optim.Optimizer],
                    meta: dict[str, Any], rng: torch.Generator | None = None) -> None:
    """Write modules, optimizers, RNG states and `meta` (JSON) to one safetensors file, atomically.

    Written to a temporary name, fsynced, then renamed over `path`: a kill leaves the previous checkpoint.
    """
    tensors: dict[str, torch.Tensor] = {}
    opt_rest = {}
    for name, m in modules.items():
        for k, v in m.state_dict().items():
            tensors[f"module.{name}.{k}"] = v.detach().clone().contiguous()
    for name, opt in optimizers.items():
        t, rest = _flatten_optimizer(f"optim.{name}", opt)
        tensors.update(t)
        opt_rest[name] = rest
    tensors["rng.torch"] = torch.get_rng_state()
    if rng is not None:
        tensors["rng.data"] = rng.get_state()
    metadata = {"meta": json.dumps(meta), "optimizers": json.dumps(opt_rest),
                "numpy_rng": json.dumps(np.random.get_state()[1].tolist()),
                "numpy_pos": json.dumps(int(np.random.get_state()[2]))}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def load_checkpoint(path: Path, modules: dict[str, nn.Module], optimizers: dict[str, torch.optim.Optimizer],
                    rng: torch.Generator | None = None) -> dict[str, Any]:
    """Restore what `save_checkpoint` wrote (strictly: every module key must match); return `meta`."""
    with safe_open(str(path), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        metadata = f.metadata()
    for name, m in modules.items():
        prefix = f"module.{name}."
        m.load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}, strict=True)
    opt_rest = json.loads(metadata["optimizers"])
    for name, opt in optimizers.items():
        _unflatten_optimizer(f"optim.{name}", opt, tensors, opt_rest[name])
    torch.set_rng_state(tensors["rng.torch"])
    if rng is not None and "rng.data" in tensors:
        rng.set_state(tensors["rng.data"])
    np.random.set_state(("MT19937", np.array(json.loads(metadata["numpy_rng"]), dtype=np.uint32),
                         json.loads(metadata["numpy_pos"]), 0, 0.0))
    return json.loads(metadata["meta"])


def checkpoint_meta(path: Path) -> dict[str, Any]:
    with safe_open(str(path), framework="pt") as f:
        return json.loads(f.metadata()["meta"])


# --- EMA -------------------------------------------------------------------------------------------

class EMA:
    """Exponential moving average of a module's weights (Yazici et al. 2019 for GANs; the shipped generator).

    `decay` applies after a warm-up: the effective decay is min(decay, (1 + t) / (10 + t)), so early
    averages do not drag in the random initialisation. Buffers (BatchNorm statistics) are copied.
    """

    def __init__(self, module: nn.Module, decay: float):
        self.decay = decay
        self.module = copy.deepcopy(module).eval().requires_grad_(False)
        self.num_updates = 0

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        self.num_updates += 1
        d = min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))
        for pe, p in zip(self.module.parameters(), module.parameters()):
            pe.lerp_(p.detach(), 1 - d)
        for be, b in zip(self.module.buffers(), module.buffers()):
            be.copy_(b)


# --- curves and grids ------------------------------------------------------------------------------

class Curves:
    """Scalars to TensorBoard (if installed) and to a JSON history that `plot` turns into curves.png."""

    def __init__(self, out: Path, history: dict[str, list] | None = None):
        self.out = Path(out)
        self.history: dict[str, list[tuple[int, float]]] = history or {}
        try:
            from torch.utils.tensorboard import (
                SummaryWriter,  # optional: tensorboard may be absent
            )

            self.tb = SummaryWriter(str(self.out / "tb"))
        except Exception:  # tensorboard missing: the PNG curves still work
            self.tb = None

    def add(self, step: int, **scalars: float) -> None:
        for k, v in scalars.items():
            v = float(v)
            self.history.setdefault(k, []).append((step, v))
            if self.tb is not None:
                self.tb.add_scalar(k, v, step)

    def flush(self) -> None:
        if self.tb is not None:
            self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()

    def plot(self, path: Path, groups: list[tuple[str, list[str]]], smooth: int = 1) -> None:
        """One panel per (title, [keys]); `smooth` = moving-average window for noisy per-step values."""
        groups = [(t, [k for k in ks if k in self.history]) for t, ks in groups]
        groups = [(t, ks) for t, ks in groups if ks]
        if not groups:
            return
        fig = Figure(figsize=(4.2 * len(groups), 3.2))
        axes = fig.subplots(1, len(groups), squeeze=False)
        for ax, (title, keys) in zip(axes[0], groups):
            for k in keys:
                steps, vals = map(np.asarray, zip(*self.history[k]))
                w = min(smooth, len(vals)) if len(vals) > 20 else 1
                if w > 1:
                    vals = np.convolve(vals, np.ones(w) / w, mode="valid")
                    steps = steps[w - 1:]
                ax.plot(steps, vals, label=k, lw=1.2)
            ax.set_title(title, fontsize=10)
            ax.set_xlabel("step")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        fig.tight_layout()
        tmp = Path(path).with_name(f".{Path(path).name}.tmp.png")
        fig.savefig(tmp, dpi=90)
        os.replace(tmp, path)


def image_grid(images: np.ndarray, nrow: int, path: Path, value_range=(-1.0, 1.0), upscale: int = 2) -> None:
    """Save (N, 1, H, W) images as one grayscale PNG grid, `nrow` per row."""
    lo, hi = value_range
    x = np.clip((np.asarray(images, np.float32) - lo) / (hi - lo), 0, 1)[:, 0]  # (N, H, W)
    n, h, w = x.shape
    rows = (n + nrow - 1) // nrow
    grid = np.ones((rows * (h + 2) + 2, nrow * (w + 2) + 2), np.float32)
    for i in range(n):
        r, c = divmod(i, nrow)
        grid[2 + r * (h + 2):2 + r * (h + 2) + h, 2 + c * (w + 2):2 + c * (w + 2) + w] = x[i]
    img = Image.fromarray((grid * 255).round().astype(np.uint8), "L")
    if upscale > 1:
        img = img.resize((img.width * upscale, img.height * upscale), Image.NEAREST)
    img.save(path)


def scatter_png(points: np.ndarray, means: np.ndarray, path: Path, title: str = "", lim: float | None = None) -> None:
    """Generated 2-D points (blue) over the mixture means (red crosses)."""
    fig = Figure(figsize=(4, 4))
    ax = fig.subplots()
    ax.scatter(points[:, 0], points[:, 1], s=2, alpha=0.4, c="tab:blue")
    ax.scatter(means[:, 0], means[:, 1], s=30, marker="x", c="tab:red")
    if lim is None:
        lim = float(np.abs(means).max()) * 1.5
    ax.set_xlim(-lim, lim)
    ax.set_ylim(-lim, lim)
    ax.set_aspect("equal")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
