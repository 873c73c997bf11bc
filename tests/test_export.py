"""ONNX export: dynamic batch, parity with torch, graph specs for the manifest."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")

from training.dcgan import Discriminator, Generator  # noqa: E402
from training.evaluator import EvaluatorConfig, MnistClassifier  # noqa: E402
from training.export import export_onnx, graph_spec, ort_samples_per_s  # noqa: E402
from training.gan_export import _Critic  # noqa: E402


def _soft(n, gen):
    return torch.softmax(3 * torch.randn(n, 10, generator=gen), 1)


def test_conditional_generator_parity_and_dynamic_batch(tmp_path):
    torch.manual_seed(0)
    g = Generator(16, 10, 8, 28).eval()
    path = tmp_path / "g.onnx"
    diff = export_onnx(g, {"z": torch.randn(2, 16), "y": torch.eye(10)[:2]}, ["x"], path,
                       probe=lambda n, gen: {"z": torch.randn(n, 16, generator=gen), "y": _soft(n, gen)})
    assert 0 <= diff <= 1e-4
    spec = graph_spec(path)
    assert spec["inputs"] == [{"name": "z", "dtype": "float32", "dims": [16]},
                              {"name": "y", "dtype": "float32", "dims": [10]}]
    assert spec["outputs"] == [{"name": "x", "dtype": "float32", "dims": [1, 28, 28]}]
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for n in (1, 5, 300):  # the batch axis is dynamic
        z = np.random.default_rng(n).standard_normal((n, 16)).astype(np.float32)
        y = np.eye(10, dtype=np.float32)[np.arange(n) % 10]
        x = sess.run(["x"], {"z": z, "y": y})[0]
        assert x.shape == (n, 1, 28, 28)
        with torch.no_grad():
            ref = g(torch.from_numpy(z), torch.from_numpy(y)).numpy()
        np.testing.assert_allclose(x, ref, atol=1e-4, rtol=0)


def test_critic_and_classifier_specs(tmp_path):
    d = _Critic(Discriminator(10, 8, 28), True).eval()
    diff = export_onnx(d, {"x": torch.rand(2, 1, 28, 28) * 2 - 1, "y": torch.eye(10)[:2]}, ["score"],
                       tmp_path / "c.onnx",
                       probe=lambda n, gen: {"x": torch.rand(n, 1, 28, 28, generator=gen) * 2 - 1, "y": _soft(n, gen)})
    assert diff <= 1e-4
    assert graph_spec(tmp_path / "c.onnx")["outputs"] == [{"name": "score", "dtype": "float32", "dims": [1]}]
    m = MnistClassifier(EvaluatorConfig(width=4, feature_dim=12)).eval()
    diff = export_onnx(m, {"x": torch.rand(2, 1, 28, 28)}, ["logits", "features"], tmp_path / "e.onnx",
                       probe=lambda n, gen: {"x": torch.rand(n, 1, 28, 28, generator=gen)})
    assert diff <= 1e-4
    spec = graph_spec(tmp_path / "e.onnx")
    assert [o["name"] for o in spec["outputs"]] == ["logits", "features"]
    assert [o["dims"] for o in spec["outputs"]] == [[10], [12]]


def test_parity_detects_a_mismatch(tmp_path):
    """The parity check is real: a module whose eval output differs from the exported graph is caught."""

    class Drifting(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(4, 3)
            self.calls = 0

        def forward(self, z):
            self.calls += 1
            return self.lin(z) + (0.5 if self.calls > 1 else 0.0)  # export traces call 1; the check is call 2

    diff = export_onnx(Drifting(), {"z": torch.randn(2, 4)}, ["x"], tmp_path / "d.onnx")
    assert diff == pytest.approx(0.5, abs=1e-5)


def test_ort_speed_positive(tmp_path):
    g = Generator(8, 0, 4, 28).eval()
    export_onnx(g, {"z": torch.randn(2, 8)}, ["x"], tmp_path / "g.onnx")
    feeds = lambda n: {"z": np.zeros((n, 8), np.float32)}  # noqa: E731
    assert ort_samples_per_s(tmp_path / "g.onnx", feeds, 4, threads=1, min_time=0.05) > 0
