"""The quality gate on the shipped cgan-mnist: a deliberately bad version published with `python -m
training.publish --evaluate` while clients ask for 7s in a loop stays a CANDIDATE, and every answer, judged by
the shipped evaluator, is a 7 from the gated version (>= 95% throughout). Skipped without the shipped models."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from sdk import Client
from tests.conftest import start_server
from tests.test_server_reliability import _wait
from training.evaluate import Evaluator

ROOT = Path(__file__).resolve().parent.parent
STORE = ROOT / "model_store"
CGAN, EVAL = STORE / "cgan-mnist" / "11", STORE / "mnist-evaluator" / "1"


def _damaged(src: Path, dst: Path) -> Path:
    """cgan-mnist's generator with its weights shaken (finite, still tanh in [-1, 1]): noise for digits."""
    model = onnx.load(str(src))
    rng = np.random.default_rng(0)
    for t in model.graph.initializer:
        w = numpy_helper.to_array(t)
        if w.dtype == np.float32 and w.size > 16:
            t.CopyFrom(numpy_helper.from_array((w * rng.uniform(0.0, 2.0, w.shape)).astype(np.float32), t.name))
    onnx.save(model, str(dst))
    return dst


@pytest.mark.skipif(not (CGAN.is_dir() and EVAL.is_dir()), reason="needs model_store/cgan-mnist/11 and mnist-evaluator/1")
def test_a_bad_version_published_under_load_stays_a_candidate_and_every_answer_is_a_seven(tmp_path):
    store = tmp_path / "store"
    for src in (CGAN, EVAL):
        shutil.copytree(src, store / src.parent.name / src.name)
    running = start_server(store, reload_interval_s=0.1, metrics_port=-1)
    answers, errors, stop = [], [], threading.Event()

    def client():
        with Client(running.target) as c:
            while not stop.is_set():
                try:
                    r = c.sample_result(8, label=7, model="cgan-mnist")
                    answers.append((r.model, r.images))
                except Exception as e:  # noqa: BLE001 - any failure is what this test counts
                    errors.append(repr(e))

    threads = [threading.Thread(target=client) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        done = subprocess.run([sys.executable, "-m", "training.publish", "--onnx", str(_damaged(CGAN / "generator.onnx",
                               tmp_path / "bad.onnx")), "--name", "cgan-mnist", "--kind", "cgan", "--classes", "10",
                               "--latent-dim", "16", "--data-shape", "1,28,28", "--value-range=-1,1", "--evaluate",
                               "--eval-n", "2000",
                               "--store", str(store)], env=env, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stderr
        print(done.stdout)
        assert "published" in done.stdout and (store / "cgan-mnist" / "12").is_dir()
        with Client(running.target) as c:
            _wait(lambda: 12 in [v.version for v in c.get_model("cgan-mnist").versions], what="@12 in the index")
            info = c.get_model("cgan-mnist")
            bad = next(v for v in info.versions if v.version == 12)
            assert info.version == 11 and bad.state == "CANDIDATE" and bad.reason.startswith(
                "quality gate: conditional_accuracy"), bad
            n_after = len(answers)
            _wait(lambda: len(answers) > n_after + 20, timeout=60, what="answers after the publish")
            assert c.sample_result(8, label=7, model="cgan-mnist@12").model == "cgan-mnist@12"  # callable by version
    finally:
        stop.set()
        for t in threads:
            t.join()
        running.app.stop(0)
    assert errors == [] and {m for m, _ in answers} == {"cgan-mnist@11"}
    images = np.concatenate([x for _, x in answers])
    logits, _ = Evaluator(EVAL)((images + 1) / 2)
    sevens = float((logits.argmax(1) == 7).mean())
    print(f"{sevens:.4f} of {len(images)} samples from {len(answers)} answers read as 7")
    assert 0.95 <= sevens <= 1.0, f"{sevens:.3f} of {len(images)} answers read as 7"
