"""Training is deterministic: retraining a shipped configuration with its own seed reproduces the shipped
generator byte for byte (same torch build, CPU). Refactoring the trainers must not change one bit of it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ganserve.store.manifest import sha256_file
from ganserve.store.sessions import latest

pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parent.parent
MODEL = "gan-sc-ring8"  # the fastest shipped configuration: ~2.5 min for its first seed on 2 cores


@pytest.mark.slow
def test_retraining_reproduces_the_shipped_generator(tmp_path):
    shipped = latest(ROOT / "model_store", MODEL)
    manifest = json.loads((shipped / "manifest.json").read_text())
    seed = manifest["training"]["config"]["seed"]
    # --seeds=1: the shipped generator is the first seed's; the other seeds only add metrics
    out = subprocess.run([sys.executable, "-m", "training.run", MODEL, f"--seed={seed}", "--seeds=1",
                          "--out", str(tmp_path / "run"), "--no-publish"],
                         cwd=ROOT, capture_output=True, text=True, timeout=1500)
    assert out.returncode == 0, out.stderr[-2000:]
    assert sha256_file(tmp_path / "run" / "generator.onnx") == manifest["files"]["generator.onnx"]
    assert sha256_file(tmp_path / "run" / "critic.onnx") == manifest["files"]["critic.onnx"]
