"""End to end over the shipped model_store/: each test is skipped only when the model it needs is absent.

The headline: `Client().sample(label=7)` against a server over model_store/ returns a digit the shipped
evaluator calls 7.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sdk import Client, FailedPreconditionError
from tests.conftest import start_server

STORE = Path(__file__).resolve().parent.parent / "model_store"
IMAGE_MODELS = ("gan-mnist", "wgan-gp-mnist", "cgan-mnist")
POINT_MODELS = {"gan-ring8": "ring8", "wgan-gp-ring8": "ring8", "gan-grid25": "grid25", "wgan-gp-grid25": "grid25"}


def _present(name: str) -> bool:
    folder = STORE / name
    return folder.is_dir() and any(p.name.isdigit() for p in folder.iterdir())


def _need(*names: str) -> None:
    missing = [n for n in names if not _present(n)]
    if missing:
        pytest.skip(f"not in model_store/ yet: {', '.join(missing)}")


@pytest.fixture(scope="module")
def shipped():
    if not any(_present(n) for n in (*IMAGE_MODELS, *POINT_MODELS, "mnist-evaluator")):
        pytest.skip("model_store/ holds no shipped models yet")
    running = start_server(STORE, reload_interval_s=0, metrics_port=-1)
    yield running
    running.app.stop(0)


def _classify(x: np.ndarray) -> np.ndarray:
    """The shipped evaluator, run directly with ONNX Runtime (not through the server under test)."""
    import json

    import onnxruntime as ort

    folder = max((p for p in (STORE / "mnist-evaluator").iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
    graph = json.loads((folder / "manifest.json").read_text())["graphs"]["classifier"]
    session = ort.InferenceSession(str(folder / graph["file"]), providers=["CPUExecutionProvider"])
    return session.run(["logits"], {graph["inputs"][0]["name"]: ((x + 1) / 2).astype(np.float32)})[0].argmax(1)


def test_client_sample_label_7_is_a_7(shipped, monkeypatch):
    _need("cgan-mnist", "mnist-evaluator")
    monkeypatch.setenv("GANSERVE_TARGET", shipped.target)
    x = Client().sample(label=7)
    assert x.shape == (1, 1, 28, 28) and -1.0 <= x.min() and x.max() <= 1.0
    assert _classify(x)[0] == 7
    many = Client().sample(200, labels=[i % 10 for i in range(200)], seed=0)
    accuracy = float((_classify(many) == np.arange(200) % 10).mean())
    assert accuracy >= 0.9, accuracy


@pytest.mark.parametrize("name", IMAGE_MODELS)
def test_image_models_sample_digits(shipped, name):
    _need(name, "mnist-evaluator")
    with Client(shipped.target) as c:
        info = c.get_model(name)
        labels = [i % 10 for i in range(500)] if info.conditional else None
        x = c.sample(500, labels=labels, seed=1, model=name)
        assert x.shape == (500, *info.output_shape) and info.value_range == (-1.0, 1.0)
        covered = len(set(_classify(x).tolist()))
        assert covered >= 8, covered  # a mode-collapsed generator would cover a few classes
        np.testing.assert_array_equal(x[:10], c.sample(10, labels=labels and labels[:10], seed=1, model=name))


@pytest.mark.parametrize("name,reference", sorted(POINT_MODELS.items()))
def test_toy_models_cover_modes(shipped, name, reference):
    _need(name)
    with Client(shipped.target) as c:
        ev = c.evaluate(reference, name, ["modes_covered", "high_quality"], n=2500, seed=0, bootstrap=10)
    modes = 8 if reference == "ring8" else 25
    assert 0.5 * modes <= ev["modes_covered"].value <= modes, ev
    assert ev["high_quality"].value > 0.3, ev


def test_evaluate_mnist_reference_against_a_model(shipped):
    _need("mnist-evaluator")
    name = next((n for n in IMAGE_MODELS if _present(n)), None)
    if name is None:
        pytest.skip("no MNIST generator in model_store/ yet")
    with Client(shipped.target) as c:
        try:
            ev = c.evaluate("mnist-test", name, ["js", "frechet"], n=1000, seed=0, bootstrap=20)
            same = c.evaluate("mnist-test", "mnist-valid", ["js"], n=1000, seed=0, bootstrap=20)
        except FailedPreconditionError as e:  # MNIST not installed on this machine
            pytest.skip(str(e))
    assert 0 <= same["js"].value < 0.01  # two halves of real MNIST: the evaluator's histograms agree
    assert 0 <= ev["js"].value <= np.log(2) and ev["frechet"].value > 0
    assert ev["js"].ci_low <= ev["js"].value <= ev["js"].ci_high
