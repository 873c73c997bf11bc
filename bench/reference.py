"""A reference DCGAN-style MNIST generator (the architecture the performance targets were set on), exported to
ONNX and published into a model store, so the benchmark and its tests have a known model before (or
besides) the shipped ones. Its weights are random: speed does not depend on them.

    z (N, 100) -> Linear 100->256*7*7 -> BN -> ReLU -> ConvT 256->128 (4, s2) 7->14 -> BN -> ReLU
              -> ConvT 128->1 (4, s2) 14->28 -> tanh -> x (N, 1, 28, 28)

1.78M parameters, 54.7 MFLOP per sample (51.4 M of them in the first transposed convolution).
Needs torch (bench only, never the server).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

LATENT_DIM = 100


def build(seed: int = 0):
    import torch
    from torch import nn

    torch.manual_seed(seed)

    class Generator(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Sequential(nn.Linear(LATENT_DIM, 256 * 7 * 7, bias=False), nn.BatchNorm1d(256 * 7 * 7),
                                    nn.ReLU())
            self.net = nn.Sequential(
                nn.ConvTranspose2d(256, 128, 4, 2, 1, bias=False), nn.BatchNorm2d(128), nn.ReLU(),  # (B,128,14,14)
                nn.ConvTranspose2d(128, 1, 4, 2, 1), nn.Tanh())                                     # (B,1,28,28)

        def forward(self, z):                              # (B, 100)
            return self.net(self.fc(z).view(-1, 256, 7, 7))

    g = Generator().eval()
    with torch.no_grad():  # non-trivial BN statistics, as after training
        for m in g.modules():
            if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return g


def export_onnx(path: Path, seed: int = 0) -> Path:
    import torch

    g = build(seed)
    torch.onnx.export(g, (torch.randn(2, LATENT_DIM),), str(path), input_names=["z"], output_names=["x"],
                      dynamic_axes={"z": {0: "batch"}, "x": {0: "batch"}}, opset_version=17, dynamo=False)
    return Path(path)


def publish_reference(store: Path, name: str = "dcgan-reference", seed: int = 0) -> Path:
    """Export and publish the reference generator as `name` into `store`; returns the version folder."""
    from ganserve.store.manifest import publish

    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = export_onnx(Path(tmp) / "generator.onnx", seed)
        manifest = {
            "name": name, "kind": "gan", "created": "2026-01-01T00:00:00Z",
            "description": "random-weight DCGAN-style reference generator for benchmarks (bench/reference.py)",
            "data_kind": "image", "latent_dim": LATENT_DIM, "num_classes": 0, "class_names": [],
            "output": {"shape": [1, 28, 28], "value_range": [-1.0, 1.0]}, "max_batch_size": 1024,
            "graphs": {"generator": {"file": "generator.onnx",
                                     "inputs": [{"name": "z", "dtype": "float32", "dims": [LATENT_DIM]}],
                                     "outputs": [{"name": "x", "dtype": "float32", "dims": [1, 28, 28]}]}},
            "training": {"note": "random weights"}, "metrics": {},
        }
        return publish(Path(store), manifest, {"generator.onnx": onnx_path})
