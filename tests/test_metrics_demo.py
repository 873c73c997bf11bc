"""The divergence demo (examples/divergence_demo.py) reproduces the theory with its own numbers."""

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest


def _demo():
    path = Path(__file__).resolve().parents[1] / "examples" / "divergence_demo.py"
    spec = importlib.util.spec_from_file_location("divergence_demo", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_demo_js_saturates_w1_grows_and_kls_disagree(tmp_path, capsys):
    result = _demo().main(["--out", str(tmp_path), "--n", "3000", "--seed", "1"])
    assert "KL(P||Q) prefers 'between the modes', KL(Q||P) prefers 'on one mode'" in capsys.readouterr().out
    saved = json.loads((tmp_path / "divergence_demo.json").read_text())
    assert (tmp_path / "divergence_demo.png").stat().st_size > 10_000
    for row in saved["blobs"]:
        assert row["w1_1d"] == pytest.approx(row["gap"], abs=0.05)  # W1 = distance, all the way
        if row["gap"] >= 4:
            assert row["js_mc"] == pytest.approx(math.log(2), abs=1e-3)  # flat at log 2
            assert row["js_hist"] == pytest.approx(math.log(2), abs=1e-3)
            assert row["kl_hist"] == "inf"
    js = [r["js_mc"] for r in result["blobs"]]
    assert js == sorted(js) and js[0] == pytest.approx(0.0, abs=1e-12)
    on, between = saved["modes"]
    assert on["mc_kl_pq"] > 10 * between["mc_kl_pq"] and between["mc_kl_qp"] > 2 * on["mc_kl_qp"]
    assert on["mc_kl_qp"] == pytest.approx(math.log(2), abs=0.02)  # Q on one mode: KL(Q||P) = log 2 - tiny
    assert on["knn_kl_pq"] > between["knn_kl_pq"] and between["knn_kl_qp"] > on["knn_kl_qp"]  # from samples too


def test_docs_metrics_table_is_the_registry():
    """docs/divergence_evaluation.md carries metrics_table_markdown() verbatim (regenerate it when a metric changes)."""
    from ganserve.metrics import metrics_table_markdown

    doc = (Path(__file__).resolve().parents[1] / "docs" / "divergence_evaluation.md").read_text()
    assert metrics_table_markdown() in doc
