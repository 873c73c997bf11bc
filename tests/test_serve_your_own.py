"""docs/serve_your_own_generator.md, run as written: a torch generator exported with the page's command,
published with its one command into a temporary store, served by a real server that answers Sample,
Interpolate and Invert; a fixed-batch export is fixed (same samples as the dynamic one), wrong names, NaN
outputs and a wrong value range are refused with one line per problem and nothing published."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sdk import Client
from tests.conftest import start_server

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "serve_your_own_generator.md"
EXTRA_EXPORTS = """
torch.onnx.export(G, (torch.randn(1, 16),), "G_fixed.onnx", dynamo=False, opset_version=17,
                  input_names=["z"], output_names=["x"])                      # no dynamic_axes: batch fixed at 1


class NaNOut(nn.Module):
    def __init__(self, g):
        super().__init__()
        self.g = g

    def forward(self, z):
        return self.g(z) * float("nan")


torch.onnx.export(NaNOut(G), (torch.randn(2, 16),), "G_nan.onnx", dynamo=False, opset_version=17,
                  input_names=["z"], output_names=["x"], dynamic_axes={"z": {0: "N"}, "x": {0: "N"}})
"""


def _block(name: str) -> str:
    m = re.search(rf"<!-- test: {name} -->\n```\w+\n(.*?)```", PAGE.read_text(), re.S)
    assert m, f"{PAGE.name} has no block marked `test: {name}`"
    return m.group(1)


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def _publish_args(**changes: str) -> list[str]:
    """The page's publish command as argv (the venv's python), with flags changed or added."""
    args = shlex.split(_block("publish").replace("\\\n", " "))
    assert args[:3] == ["python", "-m", "training.publish"]
    for flag, value in changes.items():
        flag = "--" + flag.replace("_", "-")
        if flag in args:
            args[args.index(flag) + 1] = value
        else:
            args += [flag, value]
    return [sys.executable, *args[1:]]


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("own")
    (work / "export.py").write_text(_block("export") + EXTRA_EXPORTS)
    done = _run([sys.executable, "export.py"], work)
    assert done.returncode == 0, done.stderr
    return work


def test_the_page_end_to_end(exported):
    done = _run(_publish_args(), exported)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[:3] == _block("publish").split("```text\n")[-1].splitlines()[:0] + [
        "gradient graph: derived at load from the generator (Invert OPTIMIZE and HYBRID)",
        "checked as the server loads it: generator, generator_grad", "published my_store/my-gan/1"]
    assert _block("serve").strip() == "python -m server --store my_store"
    running = start_server(exported / "my_store", reload_interval_s=0, metrics_port=-1)
    try:
        code = _block("call").replace("Client()", f"Client({running.target!r})")
        scope: dict = {}
        exec(compile(code, str(PAGE), "exec"), scope)  # noqa: S102 - the page's own example
        x, path, inv = scope["x"], scope["path"], scope["inv"]
        assert x.shape == (4, 1, 28, 28) and x.dtype == np.float32 and np.abs(x).max() <= 1.0
        assert path.images.shape == (5, 1, 28, 28) and inv.latents.shape == (4, 16)
        assert inv.method == "OPTIMIZE" and np.isfinite(inv.mse).all()
        with Client(running.target) as c:
            info = c.get_model("my-gan")
            assert info.optimizable and not info.invertible
    finally:
        running.app.stop(0)


def test_a_fixed_batch_export_is_made_dynamic_and_samples_the_same(exported, tmp_path):
    store = tmp_path / "store"
    dynamic = _run(_publish_args(store=str(store)), exported)
    fixed = _run(_publish_args(onnx="G_fixed.onnx", store=str(store)), exported)
    assert dynamic.returncode == 0 and fixed.returncode == 0, fixed.stderr
    assert "batch axis: fixed in the export (declared {'z': 1, 'x': 1}); made dynamic" in fixed.stdout
    running = start_server(store, reload_interval_s=0, metrics_port=-1)
    try:
        with Client(running.target) as c:
            a = c.sample(5, model="my-gan@1", seed=3)
            b = c.sample(5, model="my-gan@2", seed=3)
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-5)
    finally:
        running.app.stop(0)


@pytest.mark.parametrize("changes, problems", [
    ({"onnx": "G.onnx", "inputs": "latent", "output": "image"},
     ["refused: inputs: 'latent' is not an input of G.onnx (its inputs: ['z'])",
      "refused: output: 'image' is not an output of G.onnx (its outputs: ['x'])"]),
    ({"onnx": "G.onnx", "latent_dim": "32", "data_shape": "1,32,32"},
     ["refused: z: the graph's dims (without the batch axis) are [16], --latent-dim says [32]",
      "refused: x: the graph's dims (without the batch axis) are [1, 28, 28], --data-shape says [1, 32, 32]"]),
    ({"onnx": "G_nan.onnx"}, ["refused: graphs.generator.outputs x: 784 non-finite value(s) (NaN or inf) on a probe "
                              "batch of 1"]),
    ({"onnx": "G.onnx", "value_range": "0,1"}, ["refused: graphs.generator.outputs x: values in ["]),
])
def test_bad_generators_are_refused_one_line_per_problem(exported, tmp_path, changes, problems):
    done = _run(_publish_args(store=str(tmp_path / "store"), **changes), exported)
    assert done.returncode == 2
    lines = [line for line in done.stderr.splitlines() if line.startswith("refused: ")]
    assert len(lines) == len(problems) and all(line.startswith(p) for line, p in zip(lines, problems)), done.stderr
    assert "nothing was published" in done.stderr and not (tmp_path / "store").exists()
