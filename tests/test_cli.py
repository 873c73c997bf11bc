"""`python -m sdk` against a real server: each command's output and files, and one-line errors with exit 1."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent


def run(server, *args, cwd=None):
    env = dict(os.environ, GANSERVE_TARGET=server.target, PYTHONPATH=str(ROOT))  # this checkout, from any cwd
    return subprocess.run([sys.executable, "-m", "sdk", *map(str, args)], cwd=cwd or ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def test_models_table(server):
    r = run(server, "models")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["name", "version", "kind", "data", "shape", "latent", "classes", "capabilities",
                                "versions", "state"]
    row = next(line for line in lines if line.startswith("tiny-cgan"))
    assert row.split()[:7] == ["tiny-cgan", "1", "cgan", "image", "1x8x8", "8", "4"]
    assert "conditional,soft_labels,invertible,optimizable" in row


def test_sample_writes_a_grid(server, tmp_path):
    out = tmp_path / "twos.png"
    r = run(server, "sample", "--label", 2, "--n", 16, "--seed", 3, "--out", out)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"wrote {out}: 16 samples from tiny-cgan@1 (label 2, seed 3)"
    grid = np.array(Image.open(out))
    assert grid.shape == (2 * (4 * 10 + 2), 2 * (4 * 10 + 2))  # 4x4 grid of 8x8 with padding 2, scaled 2x


def test_sample_npy_and_interpolate(server, tmp_path):
    r = run(server, "sample", "--model", "tiny-gan", "--n", 4, "--seed", 1, "--out", tmp_path / "x.npy")
    assert r.returncode == 0, r.stderr
    assert np.load(tmp_path / "x.npy").shape == (4, 1, 8, 8)
    r = run(server, "interpolate", "--model", "tiny-gan", "--seeds", 1, 2, 3, "--steps", 4, "--out", tmp_path / "i.png")
    assert r.returncode == 0 and "7 points from tiny-gan@1 through seeds [1, 2, 3] (slerp)" in r.stdout


def test_invert_prints_errors_per_image(server, tmp_path):
    x = np.random.default_rng(0).uniform(-0.5, 0.5, (2, 1, 8, 8)).astype(np.float32)
    np.save(tmp_path / "imgs.npy", x)
    r = run(server, "invert", tmp_path / "imgs.npy", "--model", "tiny-gan", "--method", "optimize", "--steps", 20,
            "--out", tmp_path / "rec.png")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["image", "mse", "[0,1]"] and len(lines) == 5
    assert lines[-1].startswith("tiny-gan@1: method OPTIMIZE, 20 steps") and (tmp_path / "rec.png").exists()


def test_evaluate_table_compare_and_plot(server, tmp_path):
    r = run(server, "evaluate", "--p", "ring8", "--q", "tiny-points", "--metrics", "w1_exact", "sliced_w", "--n", 200)
    assert r.returncode == 0, r.stderr
    assert "P = reference ring8 (200)" in r.stdout and "Q = model tiny-points@1 (200)" in r.stdout
    assert any(line.startswith("w1_exact") for line in r.stdout.splitlines())
    r = run(server, "evaluate", "--p", "tiny-gan", "--compare", "tiny-gan", "tiny-cgan", "--metrics", "js", "frechet",
            "--n", 200, "--plot", tmp_path / "cmp.png")
    assert r.returncode == 0, r.stderr
    header = r.stdout.splitlines()[2]
    assert "model tiny-gan@1 (200)" in header and "model tiny-cgan@1 (200)" in header
    assert Image.open(tmp_path / "cmp.png").size[0] > 100


@pytest.mark.parametrize("args,message", [
    (["sample", "--label", "9", "--n", "2"], "error: INVALID_ARGUMENT: labels[0]: must be in 0..3, got 9"),
    (["sample", "--model", "nope"], "error: NOT_FOUND: model: no model named 'nope' is served"),
    (["evaluate", "--p", "ring8", "--q", "tiny-points", "--metrics", "bogus"],
     "error: INVALID_ARGUMENT: metrics[0]: unknown metric 'bogus'"),
])
def test_errors_are_one_line_with_exit_1(server, args, message):
    r = run(server, *args)
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and r.stderr.startswith(message), r.stderr


def test_unreachable_server_is_one_line(tmp_path):
    from tests.conftest import free_port

    env = dict(os.environ, GANSERVE_TARGET=f"127.0.0.1:{free_port()}")
    r = subprocess.run([sys.executable, "-m", "sdk", "--timeout", "2", "models"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and r.stderr.startswith("error: ")


def test_sample_large_n_streams_into_npz_and_npy(server, tmp_path):
    """Any n to .npz/.npy, written chunk by chunk; the same samples as the SDK returns."""
    from protos import latents as latent_fn
    from tests.conftest import LATENT, reference_generator

    r = run(server, "sample", "--model", "tiny-gan", "--n", 5000, "--seed", 7, "--out", tmp_path / "big.npz")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"wrote {tmp_path / 'big.npz'}: 5000 samples from tiny-gan@1 (unconditional, seed 7)"
    x = np.load(tmp_path / "big.npz")["samples"]
    assert x.shape == (5000, 1, 8, 8) and x.dtype == np.float32
    np.testing.assert_allclose(x, reference_generator(latent_fn.latents(7, 5000, LATENT)), atol=2e-6)
    r = run(server, "sample", "--label", 1, "--n", 1500, "--seed", 7, "--out", tmp_path / "big.npy")
    assert r.returncode == 0, r.stderr
    assert np.load(tmp_path / "big.npy").shape == (1500, 1, 8, 8)
    assert not list(tmp_path.glob(".*.tmp"))


@pytest.mark.parametrize("args,message", [
    (["sample", "--model", "tiny-points", "--out", "p.png"],
     "error: tiny-points@1 returns points (2,), not images: use --out p.npz (or .npy)"),
    (["sample", "--out", "x.txt"], "error: --out must end in .png (a grid of images), .npy or .npz (arrays), got x.txt"),
    (["--client-cert", "c.pem", "models"], "error: --client-cert and --client-key go together"),
])
def test_usage_errors_exit_2(server, tmp_path, args, message):
    r = run(server, *args, cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.strip() == message, r.stderr
    assert not list(tmp_path.iterdir())  # nothing written


def test_models_json(server):
    r = run(server, "models", "--json")
    assert r.returncode == 0, r.stderr
    models = {m["name"]: m for m in __import__("json").loads(r.stdout)}
    assert set(models) == {"tiny-gan", "tiny-cgan", "tiny-points", "tiny-eval"}
    assert models["tiny-cgan"]["num_classes"] == 4 and models["tiny-cgan"]["output_shape"] == [1, 8, 8]


def test_every_option_has_help_and_tls_flags_reach_the_client(tmp_path):
    from sdk import _cli
    from sdk import batch

    for p in (_cli.parser(), batch.parser()):
        subs = [p] + [a for act in p._actions if hasattr(act, "choices") and isinstance(act.choices, dict)
                      for a in act.choices.values()]
        missing = [f"{s.prog} {a.dest}" for s in subs for a in s._actions
                   if a.help is None and a.dest != "command"]
        assert missing == []
    ca = tmp_path / "ca.pem"
    ca.write_bytes(b"-----BEGIN CERTIFICATE-----\n")
    args = _cli.parser().parse_args(["--root-certs", str(ca), "--token", "t0k", "models"])
    with _cli.connect(args) as c:
        assert c._s.tls and c._s.metadata == (("authorization", "Bearer t0k"),)
    args = batch.parser().parse_args(["--model", "m", "--n", "1", "--out", "o", "--tls"])
    assert args.timeout == 3600.0 and args.tls


@pytest.mark.parametrize("args", [["sample", "--n", "1"], ["interpolate", "--seeds", "1", "2"],
                                  ["invert", "digit.png", "--model", "m"]])
def test_a_png_without_pillow_is_refused_before_any_call(monkeypatch, capsys, args):
    """The thin SDK without its `images` extra: a command that would write (or read) a PNG is a usage error naming
    Pillow (exit 2), before any call (the target does not answer), not a traceback after the samples were made."""
    from sdk import _cli, _images

    monkeypatch.setattr(_images, "Image", None)
    assert _cli.main(["--target", "localhost:1", "--timeout", "1", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: the image helpers need Pillow: pip install pillow (or the SDK's extra: "
                          "'./sdk[images]')") and err.count("\n") == 1
    assert ("; or --out with .npz / .npy" in err) == (args[0] == "sample")


def test_arrays_need_no_pillow(monkeypatch, tmp_path):
    """--out x.npz and invert from .npy files pass the check without Pillow (then reach the server: exit 1)."""
    from sdk import _cli, _images

    monkeypatch.setattr(_images, "Image", None)
    np.save(tmp_path / "x.npy", np.zeros((1, 1, 8, 8), np.float32))
    for args in (["sample", "--n", "1", "--out", str(tmp_path / "s.npz")], ["invert", str(tmp_path / "x.npy")]):
        assert _cli.main(["--target", "localhost:1", "--timeout", "1", *args]) == 1
