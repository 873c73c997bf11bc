"""Training is deterministic: a short seeded run of a shipped configuration exports the same bytes as the golden
run recorded in tests/golden/training.json. Refactoring the trainers must not change one bit of what they train.

The golden holds for the environment it was recorded in (torch build, numpy, scipy, onnx, the CPU's vector
unit): float rounding of another build or another CPU legitimately gives other bytes, so elsewhere the test
skips and names the difference (re-record the golden there with the command in the file).
"""

from __future__ import annotations

import json
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
            "onnx": onnx.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability()}


@pytest.mark.slow
def test_a_seeded_training_run_exports_the_golden_bytes(tmp_path):
    env = _environment()
    differs = {k: (GOLDEN["environment"][k], v) for k, v in env.items() if GOLDEN["environment"][k] != v}
    if differs:
        pytest.skip(f"golden recorded with another environment (golden, here): {differs}")
    out = subprocess.run([sys.executable, "-m", "training.run", GOLDEN["config"], *GOLDEN["overrides"],
                          "--out", str(tmp_path / "run"), "--no-publish"],
                         cwd=ROOT, capture_output=True, text=True, timeout=1200)
    assert out.returncode == 0, out.stderr[-2000:]
    got = {name: sha256_file(tmp_path / "run" / name) for name in GOLDEN["files"]}
    assert got == GOLDEN["files"]
