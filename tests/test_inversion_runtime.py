"""The torch-free inversion runtime (ganserve/inversion/runtime.py) on a tiny ONNX generator, and the
encoder training step (training/inversion.py)."""

import io
import json

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch", reason="needs torch (the train extra)")

import torch.nn as nn

from ganserve.inversion import runtime as rt
from ganserve.inversion.grad_graph import build_grad_graph


class Tiny(nn.Module):
    def __init__(self, zd=4, nc=0):
        super().__init__()
        self.nc = nc
        self.net = nn.Sequential(nn.Linear(zd + nc, 32), nn.Tanh(), nn.Linear(32, 64), nn.Tanh())

    def forward(self, z, y=None):
        return self.net(torch.cat([z, y], 1) if self.nc else z).view(-1, 1, 8, 8)


class TinyEncoder(nn.Module):
    def __init__(self, zd=4):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, zd))

    def forward(self, x):
        return self.net(x)


def _onnx(module, args, names, out):
    buf = io.BytesIO()
    torch.onnx.export(module, args, buf, input_names=names, output_names=[out],
                      dynamic_axes={n: {0: "N"} for n in [*names, out]}, opset_version=17, dynamo=False)
    return onnx.load_from_string(buf.getvalue())


def _session(model):
    import onnxruntime as ort

    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    g, e = Tiny().eval(), TinyEncoder().eval()
    gm = _onnx(g, (torch.randn(2, 4),), ["z"], "x")
    inv = rt.Inverter(generator_grad=_session(build_grad_graph(gm)), encoder=_session(_onnx(e, (torch.randn(2, 1, 8, 8),), ["x"], "z")),
                      generator=_session(gm))
    z_true = np.random.default_rng(0).standard_normal((16, 4)).astype(np.float32)
    return inv, z_true, inv.generate(z_true)


def test_optimize_reduces_the_objective(tiny):
    inv, z_true, x = tiny
    s = rt.InversionSettings(steps=200, lr=0.05, prior_weight=0.0)
    r = inv.invert(x, "OPTIMIZE", settings=s)
    assert r.history[0] > 0.5  # the zero start is far from the targets
    assert r.history[-1] < 0.05 * r.history[0]
    assert rt.pixel_mse01(r.reconstruction, x).mean() < 1e-3
    assert r.z.shape == (16, 4) and r.reconstruction.shape == x.shape and r.steps == 200


def test_hybrid_never_worse_than_encoder(tiny):
    inv, _, x = tiny
    s = rt.InversionSettings(steps=10, lr=0.05, prior_weight=1e-3)
    enc = inv.invert(x, "ENCODER", settings=s)
    hyb = inv.invert(x, "HYBRID", settings=s)
    assert np.all(hyb.objective <= enc.objective + 1e-5)
    assert hyb.objective.mean() < enc.objective.mean()


def test_prior_term_gradient(tiny):
    inv, z_true, x = tiny
    z = z_true + 0.3
    f0, g0 = inv.objective_and_grad(z, x, None, 0.0)
    f1, g1 = inv.objective_and_grad(z, x, None, 0.5)
    np.testing.assert_allclose(f1 - f0, 0.5 * (z * z).sum(1), rtol=1e-5)
    np.testing.assert_allclose(g1 - g0, z, rtol=1e-5, atol=1e-6)  # d/dz 0.5 ||z||^2 = z


def test_bad_inputs_are_named(tiny):
    inv, _, x = tiny
    with pytest.raises(ValueError, match="method"):
        inv.invert(x, "GRADIENT")
    with pytest.raises(ValueError, match="z0"):
        inv.invert(x, "OPTIMIZE", z0=np.zeros((3, 4), np.float32))
    with pytest.raises(ValueError, match="unconditional"):
        inv.invert(x, "ENCODER", y=np.zeros((16, 10), np.float32))
    with pytest.raises(ValueError, match="steps"):
        rt.InversionSettings(steps=-1)


@pytest.mark.parametrize("method,calls_before_stop", [("OPTIMIZE", 7), ("HYBRID", 3), ("ENCODER", 0)])
def test_should_stop_is_asked_before_every_step(tiny, method, calls_before_stop):
    """A server's deadline stops the work within one step: should_stop() is asked before every
    ONNX Runtime call, and the first True raises Stopped."""
    inv, _, x = tiny
    asked = []

    def should_stop():
        asked.append(1)
        return len(asked) > calls_before_stop

    with pytest.raises(rt.Stopped):
        inv.invert(x, method, settings=rt.InversionSettings(steps=500), should_stop=should_stop)
    assert len(asked) == calls_before_stop + 1  # stopped at the first True: no step after it
    assert inv.invert(x, method, settings=rt.InversionSettings(steps=3), should_stop=lambda: False).z.shape == (16, 4)


def test_metric_helpers_known_answers():
    a = np.zeros((2, 1, 2, 2))
    b = np.ones((2, 1, 2, 2))  # a difference of 1 in [-1, 1] units is 0.5 in [0, 1] units
    np.testing.assert_allclose(rt.pixel_mse01(a, b), [0.25, 0.25])
    np.testing.assert_allclose(rt.cosine(np.array([[1.0, 0], [1, 1]]), np.array([[2.0, 0], [-1, -1]])), [1.0, -1.0])


def test_encoder_training_step(tmp_path):
    """train_encoder on a tiny conditional 28x28 generator published in a scratch version folder."""
    from training.inversion import InversionEncoder, EncoderConfig, export_encoder, train_encoder

    class G28(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Linear(8 + 10, 784), nn.Tanh())

        def forward(self, z, y):
            return self.net(torch.cat([z, y], 1)).view(-1, 1, 28, 28)

    torch.manual_seed(0)
    gm = _onnx(G28().eval(), (torch.randn(2, 8), torch.eye(10)[:2]), ["z", "y"], "x")
    onnx.save(gm, tmp_path / "generator.onnx")
    onnx.save(build_grad_graph(gm), tmp_path / "generator_grad.onnx")
    (tmp_path / "manifest.json").write_text(json.dumps({
        "name": "tiny", "version": 1, "latent_dim": 8, "num_classes": 10,
        "graphs": {"generator": {"file": "generator.onnx"}}, "files": {"generator.onnx": "0" * 64}}))
    enc, info = train_encoder(tmp_path, tmp_path / "generator_grad.onnx",
                              EncoderConfig(steps=3, batch_size=8, pair_pool=64, channels=4, hidden=16), log=lambda *_: None)
    assert isinstance(enc, InversionEncoder) and len(info["history"]["pair_latent"]) >= 1
    x = torch.rand(3, 1, 28, 28) * 2 - 1
    assert enc(x, torch.eye(10)[:3]).shape == (3, 8)
    assert export_encoder(enc, tmp_path / "encoder.onnx") <= 1e-4
    (tmp_path / "manifest.json").write_text(json.dumps({  # the graphs as published: generator_grad derived at load
        "name": "tiny", "version": 1, "latent_dim": 8, "num_classes": 10,
        "graphs": {"generator": {"file": "generator.onnx"}, "encoder": {"file": "encoder.onnx"},
                   "generator_grad": {"derive": "vjp"}}}))
    inv = rt.Inverter.from_version_dir(tmp_path)
    assert inv.conditional and inv.latent_dim == 8
    r = inv.invert(x.numpy(), "HYBRID", np.eye(10, dtype=np.float32)[:3], settings=rt.InversionSettings(steps=2))
    assert r.z.shape == (3, 8) and np.isfinite(r.objective).all()


def test_label_free_encoder_on_a_conditional_model():
    """The latent-constraint model ships its VAE encoder (image only) next to a conditional generator: each graph
    is fed only the inputs it declares, and the model still counts as conditional."""
    torch.manual_seed(0)
    g, e = Tiny(nc=10).eval(), TinyEncoder().eval()
    gm = _onnx(g, (torch.randn(2, 4), torch.eye(10)[:2]), ["z", "y"], "x")
    inv = rt.Inverter(generator_grad=_session(build_grad_graph(gm)),
                      encoder=_session(_onnx(e, (torch.randn(2, 1, 8, 8),), ["x"], "z")), generator=_session(gm))
    assert inv.conditional
    y = np.eye(10, dtype=np.float32)[np.arange(6) % 10]
    x = inv.generate(np.random.default_rng(0).standard_normal((6, 4)).astype(np.float32), y)
    with torch.no_grad():
        want = e(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(inv.encode(x, y), want, rtol=1e-5, atol=1e-6)
    enc = inv.invert(x, "ENCODER", y, settings=rt.InversionSettings(steps=5))
    hyb = inv.invert(x, "HYBRID", y, settings=rt.InversionSettings(steps=5))
    assert np.all(hyb.objective <= enc.objective + 1e-5)
    with pytest.raises(ValueError, match="required"):
        inv.invert(x, "ENCODER")


def _linear_version(tmp_path, scales):
    """A version folder whose generator is x = W z with orthogonal columns of norms `scales` (no bias)."""
    d = len(scales)
    q, _ = np.linalg.qr(np.random.default_rng(0).standard_normal((784, d)))
    lin = nn.Linear(d, 784, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.from_numpy((q * np.asarray(scales)).astype(np.float32)))

    class G(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = lin

        def forward(self, z):
            return self.lin(z).view(-1, 1, 28, 28)

    gm = _onnx(G().eval(), (torch.randn(2, d),), ["z"], "x")
    onnx.save(gm, tmp_path / "generator.onnx")
    (tmp_path / "manifest.json").write_text(json.dumps({
        "name": "lin", "version": 1, "latent_dim": d, "num_classes": 0,
        "graphs": {"generator": {"file": "generator.onnx"}, "generator_grad": {"derive": "vjp"}},
        "files": {"generator.onnx": "0" * 64}}))
    return tmp_path


def test_jacobian_spectrum_known_linear_map(tmp_path):
    from training.inversion_cost import jacobian_spectrum

    # Singular values of W are the column norms; in [0, 1] pixel units they halve.
    s = jacobian_spectrum(_linear_version(tmp_path, [4.0, 2.0, 1.0, 0.3]), n=2)
    assert s["sv_max"] == pytest.approx(2.0, rel=1e-3)
    assert s["sv_min"] == pytest.approx(0.15, rel=1e-3)
    assert s["dims_below_10pct_of_max"] == 1.0  # 0.15 < 0.2


def test_grad_cost_agrees_with_finite_differences(tmp_path):
    from training.inversion_cost import grad_cost

    r = grad_cost(_linear_version(tmp_path, [4.0, 2.0, 1.0, 0.3]), batch=8, threads=1, repeats=1)
    assert 0.999 <= r["cosine_grad_graph_vs_fd"] <= 1.0 + 1e-9
    assert r["forward_ms_per_image"] > 0 and r["grad_graph_ms_per_image"] > 0 and r["finite_differences_ms_per_image"] > 0


def test_discrete_code_is_found_by_search_and_kept_fixed():
    """A self-conditioned generator (training.coded.CodedGenerator): z_0's cell is chosen by search, optimisation
    never moves it (the prior alone would drag it to 0 under Adam), and the true cell is recovered."""
    from training.dcgan import coded_generator

    torch.manual_seed(0)
    g = coded_generator(6, [0.25, 0.25, 0.25, 0.25], width=8, image_size=8)
    for m in g.modules():  # distinct, well-conditioned eval-mode statistics
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            m.running_var.fill_(0.5)
    g.eval()
    gm = _onnx(g, (torch.randn(2, 6),), ["z"], "x")
    code = g.latent_code()
    inv = rt.Inverter(generator_grad=_session(build_grad_graph(gm)), generator=_session(gm), latent_code=code)
    rng = np.random.default_rng(1)
    z_true = rng.standard_normal((12, 6)).astype(np.float32)
    z_true[:, 0] = np.asarray(code["values"], np.float32)[np.arange(12) % 4]  # every cell, at its value
    x = inv.generate(z_true)
    start = z_true.copy()
    start[:, 0] = 0.3  # a wrong cell for most
    found, f = inv.search_code(x, start)
    assert np.array_equal(found[:, 0], z_true[:, 0]) and np.allclose(f, 0, atol=1e-8)
    settings = rt.InversionSettings(steps=5, prior_weight=0.1)
    r = inv.invert(x, "OPTIMIZE", z0=start, settings=settings)  # right continuous part, wrong cells
    assert np.array_equal(r.z[:, 0], z_true[:, 0])  # found by search, not moved by the prior's gradient
    r = inv.invert(x, "OPTIMIZE", settings=settings)  # from zeros: some cell, held at its value throughout
    assert np.isin(r.z[:, 0], np.asarray(code["values"], np.float32)).all()
    with pytest.raises(ValueError, match="discrete"):
        rt.Inverter(generator_grad=inv.grad, generator=inv.generator).search_code(x, start)


def test_manifest_latent_code_is_validated():
    from ganserve.store.manifest import ManifestError, _check_latent_code

    _check_latent_code({"dim": 0, "edges": [-0.5, 0.5], "values": [-1.0, 0.0, 1.0]}, 4)
    for bad, why in [({"dim": 4, "edges": [0.0], "values": [-1.0, 1.0]}, "dim"),
                     ({"dim": 0, "edges": [0.5, -0.5], "values": [-1.0, 0.0, 1.0]}, "increasing"),
                     ({"dim": 0, "edges": [0.0], "values": [-1.0]}, "K >= 2"),
                     ({"dim": 0, "edges": [0.0], "values": [1.0, 2.0]}, "cell")]:
        with pytest.raises(ManifestError, match=why):
            _check_latent_code(bad, 4)


def test_republish_with_derived_grad_keeps_everything_else(tmp_path):
    """--derive-grad: a new version without generator_grad.onnx whose derived graph is the stored one, byte for
    byte; the old version stays; a stored graph that differs from the derivation is refused."""
    from ganserve.store.manifest import ManifestError, publish, read_manifest
    from training.export import graph_spec
    from training.inversion import republish_derived_grad

    torch.manual_seed(0)
    gm = _onnx(Tiny().eval(), (torch.randn(2, 4),), ["z"], "x")
    work = tmp_path / "work"
    work.mkdir()
    onnx.save(gm, work / "generator.onnx")
    onnx.save(build_grad_graph(gm), work / "generator_grad.onnx")
    manifest = {"name": "tiny", "kind": "gan", "created": "2026-01-01T00:00:00Z", "data_kind": "image",
                "latent_dim": 4, "num_classes": 0, "class_names": [], "max_batch_size": 8,
                "output": {"shape": [1, 8, 8], "value_range": [-1.0, 1.0]},
                "graphs": {"generator": graph_spec(work / "generator.onnx"),
                           "generator_grad": graph_spec(work / "generator_grad.onnx")},
                "training": {}, "metrics": {}, "export": {}}
    store = tmp_path / "store"
    v1 = publish(store, manifest, {"generator.onnx": work / "generator.onnx",
                                   "generator_grad.onnx": work / "generator_grad.onnx"})
    v2 = republish_derived_grad(v1, store)
    m2 = read_manifest(v2)
    assert v2.name == "2" and (v1 / "generator_grad.onnx").exists() and not (v2 / "generator_grad.onnx").exists()
    assert m2["graphs"]["generator_grad"]["derive"] == "vjp" and set(m2["files"]) == {"generator.onnx"}
    x = rt.Inverter.from_version_dir(v1).generate(np.ones((2, 4), np.float32))
    settings = rt.InversionSettings(steps=3)
    a = rt.Inverter.from_version_dir(v1).optimize(x, np.zeros((2, 4), np.float32), settings=settings)
    b = rt.Inverter.from_version_dir(v2).optimize(x, np.zeros((2, 4), np.float32), settings=settings)
    np.testing.assert_array_equal(a[0], b[0])
    onnx.save(build_grad_graph(_onnx(Tiny().eval(), (torch.randn(2, 4),), ["z"], "x")), work / "other.onnx")
    manifest["graphs"]["generator_grad"]["file"] = "generator_grad.onnx"
    v3 = publish(store, manifest, {"generator.onnx": work / "generator.onnx", "generator_grad.onnx": work / "other.onnx"})
    with pytest.raises(ManifestError, match="differs"):
        republish_derived_grad(v3, store)
