"""The gradient graph (ganserve/inversion/grad_graph.py) against torch autograd, on the generator shapes we ship."""

import io

import numpy as np
import onnx
import onnxruntime as ort
import pytest

torch = pytest.importorskip("torch", reason="needs torch (the train extra)")

import torch.nn as nn

from ganserve.inversion.grad_graph import GradGraphError, build_grad_graph


class DCGAN(nn.Module):
    """Linear -> BN1d -> ReLU -> reshape -> (ConvT | Upsample+Conv) -> BN2d -> act -> ... -> Tanh."""

    def __init__(self, zd=16, nc=0, up=False):
        super().__init__()
        self.nc = nc
        self.fc = nn.Sequential(nn.Linear(zd + nc, 32 * 7 * 7, bias=False), nn.BatchNorm1d(32 * 7 * 7), nn.ReLU())
        if up:
            self.net = nn.Sequential(nn.Upsample(scale_factor=2), nn.Conv2d(32, 16, 3, 1, 1), nn.BatchNorm2d(16),
                                     nn.LeakyReLU(0.2), nn.Upsample(scale_factor=2), nn.Conv2d(16, 1, 3, 1, 1),
                                     nn.Tanh())
        else:
            self.net = nn.Sequential(nn.ConvTranspose2d(32, 16, 4, 2, 1), nn.BatchNorm2d(16), nn.ReLU(),
                                     nn.ConvTranspose2d(16, 8, 4, 2, 1), nn.BatchNorm2d(8), nn.ReLU(),
                                     nn.Conv2d(8, 1, 3, 1, 1), nn.Tanh())

    def forward(self, z, y=None):
        h = torch.cat([z, y], 1) if self.nc else z
        return self.net(self.fc(h).view(-1, 32, 7, 7))


def _randomize_bn(g):
    gen = torch.Generator().manual_seed(1)
    for m in g.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=gen) - 0.5)
            m.running_var.copy_(torch.rand(n, generator=gen) * 1.5 + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=gen) + 0.5)
            m.bias.data.copy_(torch.rand(n, generator=gen) * 0.4 - 0.2)
    return g.eval()


def _export(g, args, names):
    buf = io.BytesIO()
    torch.onnx.export(g, args, buf, input_names=names, output_names=["x"],
                      dynamic_axes={n: {0: "N"} for n in [*names, "x"]}, opset_version=17, dynamo=False)
    return onnx.load_from_string(buf.getvalue())


def _check(g, z, y, tgt):
    names = ["z", "y"] if y is not None else ["z"]
    args = (z, y) if y is not None else (z,)
    sess = ort.InferenceSession(build_grad_graph(_export(g, args, names)).SerializeToString(),
                                providers=["CPUExecutionProvider"])
    feed = {"z": z.numpy(), "target": tgt.numpy(), **({"y": y.numpy()} if y is not None else {})}
    loss, grad = sess.run(["loss", "grad_z"], feed)
    zz = z.clone().requires_grad_(True)
    ref_loss = ((g(zz, y) if y is not None else g(zz)) - tgt).pow(2).flatten(1).sum(1)
    ref_loss.sum().backward()
    assert loss.shape == (len(z),) and grad.shape == z.shape
    np.testing.assert_allclose(loss, ref_loss.detach().numpy(), rtol=1e-5, atol=1e-3)
    scale = float(zz.grad.abs().max())
    assert scale > 1e-3  # a real gradient, not zeros on both sides
    assert np.abs(grad - zz.grad.numpy()).max() <= 1e-4 * max(1.0, scale)


@pytest.mark.parametrize("up,nc", [(False, 0), (True, 0), (False, 10), (True, 10)])
def test_grad_graph_matches_autograd(up, nc):
    torch.manual_seed(0)
    g = _randomize_bn(DCGAN(nc=nc, up=up))
    z = torch.randn(5, 16)
    y = torch.softmax(torch.randn(5, nc) * 2, 1) if nc else None
    _check(g, z, y, torch.rand(5, 1, 28, 28) * 2 - 1)


def test_grad_graph_latent_constraint_generator():
    """decoder o gated actor: Sigmoid, Mul/Sub/Add of two active tensors, Concat with the label."""
    from training.latent_constraints import Actor, ConstrainedGenerator
    from training.vae import VAE, VAEConfig

    torch.manual_seed(0)
    vae = VAE(VAEConfig(latent_dim=8, hidden=32))
    g = ConstrainedGenerator(vae.decoder, Actor(8, 10, 32, gate_bias_init=0.0)).eval()
    z = torch.randn(6, 8)
    _check(g, z, torch.eye(10)[torch.arange(6)], torch.rand(6, 1, 28, 28) * 2 - 1)


def test_batch_size_is_dynamic():
    torch.manual_seed(0)
    g = _randomize_bn(DCGAN())
    sess = ort.InferenceSession(build_grad_graph(_export(g, (torch.randn(2, 16),), ["z"])).SerializeToString(),
                                providers=["CPUExecutionProvider"])
    for n in (1, 7):
        loss, grad = sess.run(None, {"z": np.zeros((n, 16), np.float32), "target": np.zeros((n, 1, 28, 28), np.float32)})
        assert loss.shape == (n,) and grad.shape == (n, 16)


def test_unsupported_op_is_named():
    class Odd(nn.Module):
        def forward(self, z):
            return torch.sin(z).view(-1, 1, 4, 4)

    with pytest.raises(GradGraphError, match="Sin"):
        build_grad_graph(_export(Odd(), (torch.randn(2, 16),), ["z"]))


def test_missing_input_is_named():
    g = _randomize_bn(DCGAN())
    with pytest.raises(GradGraphError, match="latent"):
        build_grad_graph(_export(g, (torch.randn(2, 16),), ["z"]), z_name="latent")


@pytest.mark.parametrize("nc", [0, 10])
def test_grad_graph_shipped_dcgan_generator(nc):
    """The generator the GAN/WGAN-GP/cGAN families ship (training/dcgan.py); its export de-duplicates
    BatchNorm constants through Identity nodes."""
    from training.dcgan import Generator

    torch.manual_seed(0)
    g = _randomize_bn(Generator(12, nc, width=8))
    z = torch.randn(4, 12)
    _check(g, z, torch.eye(10)[:4] if nc else None, torch.rand(4, 1, 28, 28) * 2 - 1)


def test_grad_graph_self_conditioned_generator():
    """training.coded.CodedGenerator: Slice of z, comparisons on z_0 (zero gradient), the rest through the net."""
    from training.dcgan import coded_generator

    torch.manual_seed(0)
    g = _randomize_bn(coded_generator(12, [0.3, 0.3, 0.4], width=8))
    _check(g, torch.randn(5, 12), None, torch.rand(5, 1, 28, 28) * 2 - 1)
