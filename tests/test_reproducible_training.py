"""Training is deterministic: a short seeded run of a shipped configuration, with its CPU kernels pinned
(`--cpu-kernels portable`, training.kernels), exports the same bytes as the golden run recorded in
tests/golden/training.json. Refactoring the trainers must not change one bit of what they train.

Pinned, the bytes do not depend on the CPU's vector unit (AVX2 or AVX-512; MKL's COMPATIBLE branch is the
same on Intel and AMD), so the golden holds on any x86-64 machine with AVX2 and the same library versions; with
other versions (another torch build, numpy, scipy, onnx) the test skips and names the difference (re-record the
golden there with the command in the file).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ganserve.store.manifest import sha256_file

torch = pytest.importorskip("torch")
import numpy  # noqa: E402
import onnx  # noqa: E402
import scipy  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = json.loads((ROOT / "tests" / "golden" / "training.json").read_text())


def _environment() -> dict:
    return {"torch": torch.__version__, "numpy": numpy.__version__, "scipy": scipy.__version__,
            "onnx": onnx.__version__}


@pytest.mark.slow
def test_a_seeded_pinned_training_run_exports_the_golden_bytes(tmp_path):
    differs = {k: (GOLDEN["environment"][k], v) for k, v in _environment().items() if GOLDEN["environment"][k] != v}
    if differs:
        pytest.skip(f"golden recorded with other library versions (golden, here): {differs}")
    out = subprocess.run([sys.executable, "-m", "training.run", GOLDEN["config"], *GOLDEN["overrides"],
                          "--cpu-kernels", GOLDEN["cpu_kernels"], "--out", str(tmp_path / "run"), "--no-publish"],
                         cwd=ROOT, capture_output=True, text=True, timeout=1200, check=False)
    if out.returncode == 2 and "cpu kernels:" in out.stderr:
        pytest.skip(out.stderr.strip().splitlines()[-1])  # a CPU without AVX2
    assert out.returncode == 0, out.stderr[-2000:]
    got = {name: sha256_file(tmp_path / "run" / name) for name in GOLDEN["files"]}
    assert got == GOLDEN["files"]
    kernels = json.loads((tmp_path / "run" / "manifest.json").read_text())["training"]["kernels"]
    assert (kernels["mode"], kernels["mkl"], kernels["aten"]) == ("portable", "COMPATIBLE", "AVX2")
    assert kernels["pins"] == {"MKL_CBWR": "COMPATIBLE", "ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}


@pytest.mark.skipif(not torch.backends.mkl.is_available(), reason="a torch build without MKL")
def test_the_pins_must_come_before_torch_computes():
    """A pin set after torch has run a matrix product would be silently ignored by MKL; it is refused instead,
    naming the variables to set before the process starts."""
    code = ("import torch; torch.ones(2, 2) @ torch.ones(2, 2)\n"
            "from training import kernels\n"
            "try:\n    kernels.pin('portable')\nexcept kernels.KernelError as e:\n    print(e)\n")
    env = {k: v for k, v in os.environ.items() if k not in ("MKL_CBWR", "ATEN_CPU_CAPABILITY")}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=120, check=False)
    assert "came too late" in out.stdout, out.stdout + out.stderr
    assert "MKL runs off, not COMPATIBLE" in out.stdout
    assert "fresh process with MKL_CBWR=COMPATIBLE ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2" in out.stdout
