"""Training package: configs, network shapes, objectives against known values, one tiny step per family, resume."""

import json
import math
from dataclasses import replace

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from training import losses  # noqa: E402
from training.config import ConfigError, build, config_path  # noqa: E402
from ganserve.data import Split  # noqa: E402
from training.dcgan import Discriminator, Generator  # noqa: E402
from training.evaluator import EvaluatorConfig, MnistClassifier, random_shift  # noqa: E402
from training.gan import GANConfig  # noqa: E402
from training.run import load  # noqa: E402
from training.toy import PointDiscriminator, PointGenerator  # noqa: E402

SHIPPED = ["gan-mnist", "wgan-gp-mnist", "cgan-mnist", "gan-ring8", "gan-r1-ring8", "gan-sc-ring8", "wgan-gp-ring8", "gan-grid25",
           "gan-sc-grid25", "wgan-gp-grid25",
           "mnist-evaluator"]


# --- configs -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_configs_load(name):
    module, cfg = load(name, [])
    assert cfg.name == name
    assert config_path(name).exists()


def test_override_parsed_and_typed():
    _, cfg = load("gan-mnist", ["--loss=minimax", "--steps=7", "--lr_g=1e-3", "--clusters=0", "--conditional=true"])
    assert (cfg.loss, cfg.steps, cfg.lr_g, cfg.conditional) == ("minimax", 7, 1e-3, True)


@pytest.mark.parametrize("override,match", [
    (["--stepz=3"], "unknown config key 'stepz'"),
    (["--steps=many"], "steps must be an int"),
    (["--conditional=maybe"], "conditional must be a bool"),
    (["--loss=l2"], "loss must be one of"),
    (["--batch_size=0"], "batch_size must be > 0"),
    (["steps=3"], "must look like --key=value"),
])
def test_override_errors(override, match):
    with pytest.raises(ConfigError, match=match):
        load("gan-mnist", override)


def test_toml_wrong_type_and_unknown_key():
    with pytest.raises(ConfigError, match="steps must be an int, got str"):
        build(GANConfig, {"steps": "10"})
    with pytest.raises(ConfigError, match="unknown config key 'colour'"):
        build(GANConfig, {"colour": "red"})
    with pytest.raises(ConfigError, match="lr_g must be a float, got bool"):
        build(GANConfig, {"lr_g": True})
    assert build(GANConfig, {"lr_g": 1}).lr_g == 1.0  # TOML ints are fine for floats


def test_unknown_config_name():
    with pytest.raises(ConfigError, match="unknown config 'gan-cifar'"):
        load("gan-cifar", [])


def test_cli_config_error_exit_code(capsys):
    from training.run import main

    assert main(["gan-mnist", "--nope=1", "--no-publish"]) == 2
    assert "unknown config key 'nope'" in capsys.readouterr().err


# --- shapes ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("k,size", [(0, 28), (10, 28), (0, 8), (10, 8)])
def test_dcgan_shapes(k, size):
    g, d = Generator(16, k, 8, size), Discriminator(k, 8, size)
    z, y = torch.randn(3, 16), torch.softmax(torch.randn(3, 10), 1)
    x = g(z, y) if k else g(z)
    assert x.shape == (3, 1, size, size)
    assert x.abs().max() <= 1.0
    assert (d(x, y) if k else d(x)).shape == (3, 1)


def test_coded_generator_draws_clusters_at_their_prior():
    """The cluster code read off z_0 is one-hot and has the prior's frequencies; z_1.. carries the rest."""
    from training.dcgan import coded_generator

    probs = np.array([0.5, 0.2, 0.2, 0.1])
    g = coded_generator(9, probs, width=8).eval()
    z = torch.randn(40000, 9, generator=torch.Generator().manual_seed(0))
    c = g.code(z)
    assert torch.equal(c.sum(1), torch.ones(len(z))) and set(c.unique().tolist()) == {0.0, 1.0}
    freq = c.mean(0).numpy()
    np.testing.assert_allclose(freq, probs, atol=0.01)  # binomial sd <= 0.0025
    assert g(z[:3]).shape == (3, 1, 28, 28)
    with torch.no_grad():  # same z_0 cluster, other z_1..: the code alone does not decide the image
        a, b = z[:2].clone(), z[:2].clone()
        b[:, 1:] = torch.randn(2, 8)
        assert torch.equal(g.code(a), g.code(b)) and not torch.allclose(g(a), g(b))
    with pytest.raises(ValueError, match="probs"):
        coded_generator(9, [1.0])


def test_cluster_data_is_unsupervised_and_deterministic():
    from ganserve.data import load_digits
    from training.gan_data import cluster_data

    d = load_digits("train")
    a1, p1, info = cluster_data(d.images, 10, seed=0, labels=d.labels)
    a2, p2, _ = cluster_data(d.images, 10, seed=0)  # no labels: same clusters, no purity
    assert np.array_equal(a1, a2) and np.allclose(p1, p2) and p1.sum() == pytest.approx(1.0)
    assert a1.shape == d.labels.shape and set(np.unique(a1)) == set(range(10))
    assert 0.5 < info["purity"] <= 1.0  # digits separate well in pixel PCA; chance is ~0.1


def test_clusters_config_errors():
    with pytest.raises(ValueError, match="clusters"):
        GANConfig(clusters=10, conditional=True)
    with pytest.raises(ValueError, match="clusters"):
        GANConfig(clusters=1)


def test_projection_discriminator_is_linear_in_y():
    d = Discriminator(10, 8, 28)
    x = torch.randn(2, 1, 28, 28)
    ya, yb = torch.eye(10)[[1, 2]], torch.eye(10)[[7, 3]]
    mix = d(x, 0.3 * ya + 0.7 * yb)
    assert torch.allclose(mix, 0.3 * d(x, ya) + 0.7 * d(x, yb), atol=1e-5)


def test_point_net_shapes():
    g, d = PointGenerator(8, 16, 2, scale=4.0), PointDiscriminator(16, 2, scale=4.0)
    x = g(torch.randn(5, 8))
    assert x.shape == (5, 2) and d(x).shape == (5, 1)


def test_evaluator_shapes_and_shift():
    m = MnistClassifier(EvaluatorConfig(width=4, feature_dim=12)).eval()
    logits, feats = m(torch.rand(3, 1, 28, 28))
    assert logits.shape == (3, 10) and feats.shape == (3, 12)
    x = torch.zeros(2, 1, 28, 28)
    x[:, :, 10, 10] = 1
    shifted = random_shift(x, 2, torch.Generator().manual_seed(0))
    assert shifted.shape == x.shape and shifted.sum() == 2  # moved, not lost (max_shift < distance to edge)


# --- objectives against known values ---------------------------------------------------------------------

def test_js_family_known_values():
    zero = torch.zeros(4, 1)
    # D(x) = 1/2 everywhere: V = 2 log(1/2) = -log 4, so the JS estimate is 0 and the D loss is log 4.
    assert losses.minimax_loss_dis(zero, zero).item() == pytest.approx(math.log(4))
    assert losses.js_estimate(zero, zero).item() == pytest.approx(0.0, abs=1e-7)
    assert losses.ns_loss_gen(zero).item() == pytest.approx(math.log(2))
    assert losses.minimax_loss_gen(zero).item() == pytest.approx(-math.log(2))
    # A perfect D (logits +-inf): V = 0, the estimate reaches its maximum log 2.
    big = torch.full((4, 1), 60.0)
    assert losses.js_estimate(big, -big).item() == pytest.approx(math.log(2), abs=1e-6)


def test_wasserstein_and_hinge_known_values():
    real, fake = torch.tensor([[2.0], [4.0]]), torch.tensor([[-1.0], [1.0]])
    assert losses.wasserstein_estimate(real, fake).item() == pytest.approx(3.0)
    assert losses.wgan_loss_dis(real, fake).item() == pytest.approx(-3.0)
    assert losses.wgan_loss_gen(fake).item() == pytest.approx(0.0)
    assert losses.hinge_loss_dis(real, fake).item() == pytest.approx((0 + 0) / 2 + (0 + 2) / 2)


@pytest.mark.parametrize("slope", [0.5, 1.0, 3.0])
def test_gradient_penalty_of_linear_critic(slope):
    # f(x) = w . x has gradient norm |w| everywhere: the penalty is lambda (|w| - 1)^2 exactly.
    w = torch.tensor([slope * 0.6, slope * 0.8])
    critic = lambda x: (x @ w)[:, None]  # noqa: E731
    gp = losses.gradient_penalty(critic, torch.randn(16, 2), torch.randn(16, 2), weight=10.0)
    assert gp.item() == pytest.approx(10.0 * (slope - 1) ** 2, rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("slope", [0.5, 2.0])
def test_r1_penalty_of_known_critics(slope):
    # linear f(x) = w . x: gamma/2 |w|^2 anywhere; quadratic f(x) = |x|^2/2: gamma/2 E|x|^2 at the real points
    w = torch.tensor([slope * 0.6, slope * 0.8])
    x = torch.randn(32, 2)
    assert losses.r1_penalty(lambda v: (v @ w)[:, None], x, gamma=4.0).item() == pytest.approx(2.0 * slope**2, rel=1e-5)
    want = 2.0 * x.pow(2).sum(1).mean().item()
    assert losses.r1_penalty(lambda v: 0.5 * v.pow(2).sum(1, keepdim=True), x, gamma=4.0).item() == pytest.approx(want, rel=1e-5)


def test_r1_config_and_tiny_step(tmp_path):
    from training.gan import train

    with pytest.raises(ValueError, match="r1"):
        GANConfig(loss="wgan-gp", r1=1.0)
    cfg = GANConfig(name="t", data="ring8", latent_dim=4, g_width=16, d_width=16, layers=2, batch_size=32, steps=2,
                    eval_every=2, eval_samples=100, r1=1.0, threads=1)
    res = train(cfg, tmp_path, log=lambda *a: None)
    assert "r1_penalty" in res["history"] and res["history"]["r1_penalty"]


def test_gradient_penalty_reaches_critic_weights():
    d = PointDiscriminator(8, 1)
    gp = losses.gradient_penalty(d, torch.randn(8, 2), torch.randn(8, 2))
    gp.backward()
    assert all(p.grad is not None for p in d.parameters() if p.dim() > 1)


def test_clip_weights():
    d = PointDiscriminator(8, 1)
    losses.clip_weights(d, 0.01)
    assert max(p.abs().max().item() for p in d.parameters()) <= 0.01


# --- one tiny training step per family; resume ---------------------------------------------------------

def _digits():
    from ganserve.data import load_digits

    return load_digits("train")


def _tiny_mnist(n=64):
    rng = np.random.default_rng(0)
    return Split(rng.random((n, 1, 28, 28), dtype=np.float32), rng.integers(0, 10, n), "random", "none")


TINY_GAN = dict(data="digits", latent_dim=8, g_width=8, d_width=8, batch_size=16, steps=2, eval_every=2,
                eval_samples=50, threads=1)


@pytest.mark.parametrize("loss,conditional", [("ns", False), ("minimax", False), ("wgan-gp", False),
                                              ("ns", True), ("wgan-clip", False)])
def test_gan_tiny_step(tmp_path, loss, conditional):
    from training.gan import train

    cfg = GANConfig(name="t", loss=loss, conditional=conditional, n_critic=2 if "wgan" in loss else 1, **TINY_GAN)
    res = train(cfg, tmp_path, log=lambda *a: None, data=_digits())
    assert res["steps"] == 2
    assert (tmp_path / "checkpoint.safetensors").exists() and (tmp_path / "samples.png").exists()
    hist = res["history"]
    assert ("wasserstein_estimate" in hist) == loss.startswith("wgan")
    assert ("js_estimate" in hist) == (not loss.startswith("wgan"))


def test_latent_regression_config_errors():
    with pytest.raises(ValueError, match="latent_regression"):
        GANConfig(latent_regression=-1.0)
    with pytest.raises(ValueError, match="latent_regression"):
        GANConfig(data="ring8", latent_regression=1.0)


@pytest.mark.parametrize("clusters,conditional", [(0, True), (6, False)])
def test_latent_regression_head_learns_z(tmp_path, clusters, conditional):
    """The head on D's features learns to read z from G(z): its R^2 on G's batches rises well above its start
    (it starts near 0 or below), and the head is checkpointed with D; with 0 there is no head and no latent_r2."""
    from training.gan import train_one

    cfg = GANConfig(name="t", clusters=clusters, conditional=conditional, latent_regression=5.0,
                    **dict(TINY_GAN, steps=300, eval_every=300))
    res = train_one(cfg, tmp_path, log=lambda *a: None, data=_digits())
    values = [v for _, v in res["history"]["latent_r2"]]  # every 25 steps, one batch of 16 each
    assert len(values) == 12 and np.mean(values[:3]) < 0.25 and np.mean(values[-3:]) > 0.45, values
    from safetensors import safe_open

    with safe_open(str(tmp_path / "checkpoint.safetensors"), "pt") as f:
        assert any(k.startswith("module.q.") for k in f.keys())
    off = train_one(replace(cfg, latent_regression=0.0, steps=2, eval_every=2), tmp_path / "off",
                    log=lambda *a: None, data=_digits())
    assert "latent_r2" not in off["history"]


@pytest.mark.parametrize("loss", ["ns", "wgan-gp"])
def test_self_conditioned_tiny_step_exports_unconditional_graphs(tmp_path, loss):
    """clusters=K: trains, keeps the prior in G, and exports z -> x and x -> score graphs (no code input)."""
    import onnxruntime as ort

    from training.gan import export, train
    from ganserve.inversion.grad_graph import build_grad_graph

    cfg = GANConfig(name="t", loss=loss, clusters=6, n_critic=2 if "wgan" in loss else 1, **TINY_GAN)
    res = train(cfg, tmp_path, log=lambda *a: None, data=_digits())
    g = res["g_ema"]
    assert g.probs.shape == (6,) and float(g.probs.sum()) == pytest.approx(1.0)
    assert res["training_extra"]["self_conditioning"]["clusters"] == 6
    out = export(res, tmp_path)
    assert max(out["export"]["parity_max_abs_diff"].values()) <= 1e-4
    sess = ort.InferenceSession(str(tmp_path / "generator.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["z"] and sess.get_inputs()[0].shape[1] == 8
    critic = ort.InferenceSession(str(tmp_path / "critic.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in critic.get_inputs()] == ["x"]
    # the served critic is the prior-weighted mixture of the per-cluster critics
    x = torch.rand(4, 1, 8, 8) * 2 - 1
    mix = sum(float(g.probs[j]) * res["d"](x, torch.eye(6)[[j] * 4]) for j in range(6))
    np.testing.assert_allclose(critic.run(None, {"x": x.numpy()})[0], mix.detach().numpy(), atol=1e-5)
    # the inversion gradient graph builds: z_0 (the code) gets zero gradient, z_1.. the real one
    import onnx

    grad = ort.InferenceSession(build_grad_graph(onnx.load(tmp_path / "generator.onnx")).SerializeToString(),
                                providers=["CPUExecutionProvider"])
    z = np.random.default_rng(0).standard_normal((3, 8)).astype(np.float32)
    _, gz = grad.run(["loss", "grad_z"], {"z": z, "target": np.zeros((3, 1, 8, 8), np.float32)})
    assert np.all(gz[:, 0] == 0) and np.abs(gz[:, 1:]).max() > 1e-4


def test_self_conditioned_points_tiny_step(tmp_path):
    """clusters on a mixture: k-means cells of a point sample label fresh batches (each cell inside one mode, the
    modes never used), G reads the cell from z_0, and the export is an ordinary z -> x generator with its
    latent_code."""
    import onnxruntime as ort

    from ganserve.data import ring8
    from training.gan import RealData, export, manifest_fields, train

    cfg = GANConfig(name="t", data="ring8", clusters=16, latent_dim=5, g_width=16, d_width=16, layers=2,
                    batch_size=32, steps=3, eval_every=3, eval_samples=100, threads=1)
    real = RealData(cfg, torch.Generator().manual_seed(0))
    x, code = real.batch(4000)
    modes, _ = ring8().nearest_mode(x.numpy())
    cell = code.argmax(1).numpy()
    assert code.shape == (4000, 16) and all(len(set(modes[cell == j])) == 1 for j in set(cell))
    assert real.cluster_info["purity"] == 1.0 and real.cluster_probs.sum() == pytest.approx(1.0)
    res = train(cfg, tmp_path, log=lambda *a: None)
    assert res["training_extra"]["self_conditioning"]["clusters"] == 16 and 0 <= res["metrics"]["modes"] <= 8
    out = export(res, tmp_path)
    assert max(out["export"]["parity_max_abs_diff"].values()) <= 1e-4
    assert out["fields"]["latent_code"]["dim"] == 0 and len(out["fields"]["latent_code"]["edges"]) == 15
    sess = ort.InferenceSession(str(tmp_path / "generator.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["z"]
    assert sess.run(None, {"z": np.zeros((3, 5), np.float32)})[0].shape == (3, 2)
    assert "self-conditioned on 16" in manifest_fields(cfg)["description"]


def test_toy_tiny_step_with_seeds(tmp_path):
    from training.gan import train

    cfg = GANConfig(name="t", data="ring8", latent_dim=4, g_width=16, d_width=16, layers=2, batch_size=32, steps=3,
                    eval_every=3, eval_samples=100, seeds=2, threads=1)
    res = train(cfg, tmp_path, log=lambda *a: None)
    m = res["metrics"]
    assert m["seeds"] == 2 and [s["seed"] for s in m["per_seed"]] == [0, 1]
    assert 0 <= m["modes"] <= 8 and 0 <= m["high_quality"] <= 1
    assert m["modes_mean"] == pytest.approx(np.mean([s["modes"] for s in m["per_seed"]]))


def test_evaluator_tiny_step(tmp_path):
    from training.evaluator import train

    cfg = EvaluatorConfig(width=4, feature_dim=8, epochs=1, batch_size=32, threads=1)
    res = train(cfg, tmp_path, log=lambda *a: None, data=(_tiny_mnist(), _tiny_mnist(32)))
    assert res["steps"] == 2 and 0 <= res["metrics"]["test_accuracy"] <= 1


def _weights(m):
    return {k: v.clone() for k, v in m.state_dict().items()}


@pytest.mark.parametrize("loss,latent_regression", [("ns", 0.0), ("wgan-gp", 0.0), ("ns", 2.0)])
def test_resume_matches_uninterrupted_run(tmp_path, loss, latent_regression):
    """4 steps straight == 2 steps, 'kill', resume to 4: same weights bit for bit (RNG and optimizer state,
    the latent-regression head's included)."""
    from training.gan import train_one

    cfg = GANConfig(name="t", loss=loss, n_critic=2 if loss == "wgan-gp" else 1, latent_regression=latent_regression,
                    **dict(TINY_GAN, steps=4, eval_every=2))
    full = train_one(cfg, tmp_path / "a", log=lambda *a: None, data=_digits())
    train_one(replace(cfg, steps=2), tmp_path / "b", log=lambda *a: None, data=_digits())
    resumed = train_one(cfg, tmp_path / "b", resume=True, log=lambda *a: None, data=_digits())
    assert resumed["steps"] == 4
    for name in ("g_ema", "d"):
        a, b = _weights(full[name]), _weights(resumed[name])
        for k in a:
            assert torch.equal(a[k], b[k]), f"{name}.{k} differs after resume"


def test_run_saves_config_and_refuses_changed_resume(tmp_path):
    from training import run

    args = ["--data=digits", "--latent_dim=8", "--g_width=8", "--d_width=8", "--batch_size=8", "--steps=1",
            "--eval_every=1", "--eval_samples=20"]
    out = run.run("gan-mnist", args, out=tmp_path / "r", store=tmp_path / "store", log=lambda *a: None)
    saved = json.loads((tmp_path / "r" / "config.json").read_text())
    assert saved["steps"] == 1 and saved["data"] == "digits"
    assert out["published"] == tmp_path / "store" / "gan-mnist" / "1"
    published = json.loads((out["published"] / "manifest.json").read_text())  # a smoke run is a candidate
    assert published["candidate"].startswith("smoke run (steps 1 of 8000)")
    # more steps may be asked for on resume; a different objective may not
    run.run("gan-mnist", [*args[:-3], "--steps=2", "--eval_every=1", "--eval_samples=20"], out=tmp_path / "r",
            store=None, resume=True, log=lambda *a: None)
    with pytest.raises(ConfigError, match="differs .* in loss"):
        run.run("gan-mnist", [*args, "--loss=minimax"], out=tmp_path / "r", store=None, resume=True,
                log=lambda *a: None)
    # a run saved before an option existed resumes when the option is at its default, not otherwise
    cfg_file = tmp_path / "r" / "config.json"
    cfg_file.write_text(json.dumps({k: v for k, v in json.loads(cfg_file.read_text()).items() if k != "r1"}))
    with pytest.raises(ConfigError, match="differs .* in r1"):
        run.run("gan-mnist", [*args, "--steps=2", "--r1=1.0"], out=tmp_path / "r", store=None, resume=True,
                log=lambda *a: None)
    run.run("gan-mnist", [*args[:-3], "--steps=3", "--eval_every=1", "--eval_samples=20"], out=tmp_path / "r",
            store=None, resume=True, log=lambda *a: None)
    # the manifest says which CPU kernels trained it; a run begun with other kernels is not continued with these
    kernels = json.loads((out["published"] / "manifest.json").read_text())["training"]["kernels"]
    assert kernels["mode"] == "native" and kernels["aten"] and kernels["cpu"] and kernels["torch"] == torch.__version__
    began = tmp_path / "r" / "kernels.json"
    began.write_text(json.dumps({**json.loads(began.read_text()), "mode": "portable"}))
    with pytest.raises(ConfigError, match="--cpu-kernels=native, but the run began with portable"):
        run.run("gan-mnist", [*args[:-3], "--steps=4", "--eval_every=1", "--eval_samples=20"], out=tmp_path / "r",
                store=None, resume=True, log=lambda *a: None)


def test_ema_tracks_weights():
    from training.common import EMA

    lin = torch.nn.Linear(2, 1)
    ema = EMA(lin, decay=0.5)
    with torch.no_grad():
        lin.weight.fill_(1.0)
    for _ in range(50):
        ema.update(lin)
    assert torch.allclose(ema.module.weight, torch.ones_like(lin.weight), atol=1e-6)


def test_sigkill_mid_run_then_resume_publishes(tmp_path):
    """SIGKILL a real `python -m training.run` after its first checkpoint, `--resume` it, publish.

    Nothing is published by the killed run; the resumed run continues from the checkpoint's step (its curves
    keep the killed run's history) and publishes version 1.
    """
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    from training import run
    from training.common import checkpoint_meta

    root = Path(__file__).resolve().parent.parent
    out, store = tmp_path / "r", tmp_path / "store"
    args = ["--data=digits", "--latent_dim=8", "--g_width=8", "--d_width=8", "--batch_size=8", "--eval_every=25",
            "--eval_samples=20"]  # checkpoints every 25 steps, where the curves log too
    proc = subprocess.Popen([sys.executable, "-m", "training.run", "gan-mnist", *args, "--steps=1000000",
                             "--out", str(out), "--store", str(store)], cwd=root,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "PYTHONPATH": str(root)})
    ckpt = out / "checkpoint.safetensors"
    deadline = time.time() + 600  # generous: the machine is shared; normally a few seconds
    try:
        while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert ckpt.exists(), "the run wrote no checkpoint"
        time.sleep(0.3)  # let it get past the checkpoint, mid-step
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not store.exists() or not any((store / "gan-mnist").glob("[0-9]*"))
    killed_at = checkpoint_meta(ckpt)["step"]
    assert killed_at >= 25 and killed_at % 25 == 0

    res = run.run("gan-mnist", [*args, f"--steps={killed_at + 3}"], out=out, store=store, resume=True,
                  log=lambda *a: None)
    assert res["published"] == store / "gan-mnist" / "1"
    assert res["manifest"]["training"]["steps"] == killed_at + 3
    steps_logged = [s for s, _ in res["result"]["history"]["loss_d"]]
    assert steps_logged[0] == 25 and steps_logged[-1] == killed_at + 3  # one history across the kill
    assert json.loads((res["published"] / "manifest.json").read_text())["training"]["steps"] == killed_at + 3


# --- mixture metrics through training.evaluate (known answers) ------------------------------------------

def test_point_metrics_known_answers_ring8():
    from ganserve.data import ring8
    from training.evaluate import point_metrics

    r = ring8()
    perfect = point_metrics(r.sample(2500, seed=0), r)
    assert perfect["modes"] == 8
    assert perfect["high_quality"] == pytest.approx(1 - math.exp(-4.5), abs=0.006)  # 98.9% within 3 std
    assert 0 <= perfect["reverse_kl"] <= 0.01
    collapsed = point_metrics(r.means[3] + r.std * np.random.default_rng(0).standard_normal((2500, 2)), r)
    assert collapsed["modes"] == 1
    assert collapsed["reverse_kl"] == pytest.approx(math.log(8), abs=1e-12)


def test_summarize_seeds_mean_and_spread():
    from training.evaluate import summarize_seeds

    per_seed = [{"modes": 8.0, "high_quality": 0.99}, {"modes": 7.0, "high_quality": 0.97},
                {"modes": 6.0, "high_quality": 0.95}]
    s = summarize_seeds(per_seed, [0, 1, 2])
    assert (s["modes"], s["modes_mean"], s["modes_std"], s["modes_min"]) == (8.0, 7.0, 1.0, 6.0)
    assert s["high_quality_mean"] == pytest.approx(0.97, abs=1e-12)
    assert s["high_quality_std"] == pytest.approx(0.02, abs=1e-12)
    assert [p["seed"] for p in s["per_seed"]] == [0, 1, 2]


def test_evaluate_cli_on_a_published_toy_writes_json_and_docs(tmp_path, capsys):
    """train (2 seeds, a few steps) -> publish -> `python -m training.evaluate` -> JSON, table, docs/models."""
    from training import run
    from training.evaluate import main

    store = tmp_path / "store"
    args = ["--latent_dim=4", "--g_width=16", "--d_width=16", "--layers=2", "--batch_size=32", "--steps=3",
            "--eval_every=3", "--seeds=2"]
    out = run.run("wgan-gp-ring8", args, out=tmp_path / "r", store=store, log=lambda *a: None)
    assert out["published"] == store / "wgan-gp-ring8" / "1"
    docs = tmp_path / "docs"
    assert main(["wgan-gp-ring8", "--store", str(store), "--json", str(tmp_path / "e.json"), "--docs", str(docs)]) == 0
    printed = capsys.readouterr().out
    assert "wgan-gp-ring8@1" in printed and "high_quality" in printed
    res = json.loads((tmp_path / "e.json").read_text())
    assert res["model"] == "wgan-gp-ring8@1" and res["n"] == 2500 and 0 <= res["modes"] <= 8
    summary = json.loads((docs / "summary.json").read_text())
    (row,) = summary["models"]
    assert row["seeds"] == 2 and set(row["bars"]) == {"modes_mean >= 7.95", "high_quality_mean >= 0.98",
                                                      "reverse_kl_mean <= 0.03"}
    assert not any(row["bars"].values())  # 3 steps of training cannot meet them
    assert (docs / "wgan-gp-ring8" / "samples.png").is_file() and (docs / "wgan-gp-ring8" / "curves.png").is_file()
    readme = (docs / "README.md").read_text()
    assert readme.startswith("<!-- GENERATED by `python -m training.evaluate")
    assert "| `wgan-gp-ring8@1` | wgan-gp |" in readme and "0/3; missed:" in readme


def test_evaluate_cli_unknown_model(tmp_path, capsys):
    from training.evaluate import main

    assert main(["nope", "--store", str(tmp_path)]) == 1
    assert "model 'nope' not found" in capsys.readouterr().err


@pytest.mark.parametrize("metrics,expected", [
    ({"conditional_accuracy": 0.995, "conditional_accuracy_min_class": 0.98, "frechet_ratio": 9.9,
      "precision_ratio": 0.7, "recall_ratio": 0.61}, [True] * 5),
    ({"conditional_accuracy": 0.989, "conditional_accuracy_min_class": 0.969, "frechet_ratio": 10.1,
      "precision_ratio": 0.59, "recall_ratio": float("nan")}, [False] * 5),
])
def test_cgan_quality_bars_both_sides(metrics, expected):
    from training.evaluate import quality_bars

    manifest = {"kind": "cgan", "data_kind": "image", "training": {"wall_time_s": 1000.0}}
    bars = quality_bars(metrics, manifest)
    assert list(bars.values()) == [*expected, True]
    assert list(bars)[-1] == "training <= 30 min"
