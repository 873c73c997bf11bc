"""Publishing into the model store: atomic, verified; the shipped store is valid and small."""

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from ganserve.store.manifest import ManifestError, graph_model, read_manifest, sha256_file, validate, verify_files

STORE = Path(__file__).resolve().parent.parent / "model_store"
SHIPPED = ["mnist-evaluator", "gan-mnist", "wgan-gp-mnist", "cgan-mnist", "gan-ring8", "gan-r1-ring8", "gan-sc-ring8",
           "wgan-gp-ring8", "gan-grid25", "gan-sc-grid25", "wgan-gp-grid25"]


def _versions():
    return sorted(p for p in STORE.glob("*/*") if p.is_dir() and p.name.isdigit())


def _manifest(name="m"):
    return {"format": 1, "name": name, "version": 1, "kind": "gan", "created": "2026-01-01T00:00:00+00:00",
            "data_kind": "points", "latent_dim": 2, "num_classes": 0, "class_names": [],
            "output": {"shape": [2], "value_range": None}, "max_batch_size": 8,
            "graphs": {"generator": {"file": "generator.onnx", "inputs": [{"name": "z", "dtype": "float32", "dims": [2]}],
                                     "outputs": [{"name": "x", "dtype": "float32", "dims": [2]}]}},
            "files": {}, "training": {}, "metrics": {}, "export": {}}


def test_publish_model_writes_sha_and_numbers_versions(tmp_path):
    from training.publish import publish_model

    src = tmp_path / "g.onnx"
    src.write_bytes(b"not really onnx, but bytes to hash")
    v1 = publish_model(tmp_path / "store", _manifest(), {"generator.onnx": src})
    v2 = publish_model(tmp_path / "store", _manifest(), {"generator.onnx": src})
    assert (v1.name, v2.name) == ("1", "2")
    m = read_manifest(v2)
    assert m["version"] == 2 and m["files"]["generator.onnx"] == sha256_file(src)
    verify_files(v2, m)


def test_publish_refuses_missing_file(tmp_path):
    from training.publish import publish_model

    with pytest.raises(FileNotFoundError, match="missing"):
        publish_model(tmp_path, _manifest(), {"generator.onnx": tmp_path / "nope.onnx"})


def test_interrupted_publish_leaves_no_visible_version(tmp_path):
    """SIGKILL a publisher while it copies a large file: no numbered version appears, only a hidden .tmp-*."""
    big = tmp_path / "big.onnx"
    with open(big, "wb") as f:
        f.truncate(400 << 20)  # sparse 400 MB: copying takes a while, creating it does not
    store = tmp_path / "store"
    script = textwrap.dedent(f"""
        import json, sys
        sys.path.insert(0, {str(Path(__file__).resolve().parent.parent)!r})
        from pathlib import Path
        from training.publish import publish_model
        m = json.loads({json.dumps(json.dumps(_manifest()))})
        print("start", flush=True)
        publish_model(Path({str(store)!r}), m, {{"generator.onnx": Path({str(big)!r})}})
        print("done", flush=True)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "start"
    deadline = time.time() + 60
    started = False
    while not started and time.time() < deadline:  # wait until the copy has begun
        tmps = list((store / "m").glob(".tmp-*/generator.onnx")) if (store / "m").exists() else []
        started = bool(tmps) and tmps[0].stat().st_size > 0
        time.sleep(0.005)
    proc.kill()
    proc.wait()
    assert started, "the publisher never began copying"
    visible = [p for p in (store / "m").iterdir() if not p.name.startswith(".")]
    assert visible == [], f"an interrupted publish left {visible}"


def test_manifest_with_bad_sha_is_refused(tmp_path):
    from training.publish import publish_model

    src = tmp_path / "g.onnx"
    src.write_bytes(b"abc")
    v = publish_model(tmp_path / "store", _manifest(), {"generator.onnx": src})
    os.chmod(v / "generator.onnx", 0o644)
    (v / "generator.onnx").write_bytes(b"abd")
    with pytest.raises(ManifestError, match="sha256"):
        verify_files(v, read_manifest(v))


def test_derived_generator_grad_rules():
    """Only generator_grad may be derived (as "vjp", from a generator graph the manifest has, without a file)."""
    spec = {"inputs": [{"name": "z", "dtype": "float32", "dims": [2]}],
            "outputs": [{"name": "grad_z", "dtype": "float32", "dims": [2]}]}
    m = dict(_manifest(), files={"generator.onnx": "0" * 64})
    validate(dict(m, graphs=dict(m["graphs"], generator_grad=dict(spec, derive="vjp"))))
    for graphs, why in [(dict(m["graphs"], critic=dict(spec, derive="vjp")), "only generator_grad"),
                        (dict(m["graphs"], generator_grad=dict(spec, derive="finite-differences")), "vjp"),
                        (dict(m["graphs"], generator_grad=dict(spec, derive="vjp", file="generator.onnx")),
                         "without a file")]:
        with pytest.raises(ManifestError, match=why):
            validate(dict(m, graphs=graphs))
    with pytest.raises(ManifestError, match="generator"):
        validate(dict(m, kind="evaluator", graphs={"classifier": m["graphs"]["generator"],
                                                   "generator_grad": dict(spec, derive="vjp")}))


def test_derivation_failure_is_a_manifest_error(tmp_path):
    """A generator the VJP builder cannot differentiate makes the version invalid (skipped and logged by the
    server), not a crash at the first Invert."""
    import onnx
    from onnx import TensorProto, helper

    g = helper.make_graph([helper.make_node("Sin", ["z"], ["x"])], "g",
                          [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 2])],
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2])])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "generator.onnx")
    m = dict(_manifest(), graphs=dict(_manifest()["graphs"], generator_grad={"derive": "vjp"}))
    with pytest.raises(ManifestError, match="cannot derive generator_grad"):
        graph_model(tmp_path, m, "generator_grad")
    assert graph_model(tmp_path, m, "generator") == str(tmp_path / "generator.onnx")


# --- the shipped store ---------------------------------------------------------------------------------

@pytest.mark.parametrize("version_dir", _versions(), ids=lambda p: f"{p.parent.name}@{p.name}")
def test_shipped_manifest_valid_and_files_match(version_dir):
    m = read_manifest(version_dir)
    validate(m)
    verify_files(version_dir, m)
    listed = set(m["files"]) | {"manifest.json"}
    assert {p.name for p in version_dir.iterdir()} == listed, "unlisted files in a shipped version"
    if m.get("derived_from") is not None:  # a reduced-precision variant: compared with its fp32 source, not torch
        p = m["export"]["parity_vs_fp32"]
        assert m.get("precision") == "int8" and p["n"] >= 1000
        assert 0 < p["mean_abs_diff"] <= 0.01 and 0 < p["max_abs_diff"] <= 1.0, p  # outputs span [-1, 1]
        assert m["training"]["derived_from"] and m["training"]["data"]["sha256"]
        return
    for role, graph in m["graphs"].items():
        parity = m["export"]["parity_max_abs_diff"].get(role)
        if parity is None:  # a graph derived from another ONNX graph (generator_grad): no torch module
            fd = m["export"][f"{role}_fd_max_rel_err"]  # to compare with; checked by finite differences instead
            assert 0 <= fd <= 0.05, f"{role} finite-difference error {fd}"
            continue
        assert 0 <= parity <= 1e-4, f"{role} parity {parity}"
    assert m["training"]["wall_time_s"] > 0 and m["training"]["data"]["sha256"]
    assert m["export"]["inprocess_samples_per_s"] > 0


@pytest.mark.parametrize("version_dir", _versions(), ids=lambda p: f"{p.parent.name}@{p.name}")
def test_shipped_graphs_match_their_manifest(version_dir):
    ort = pytest.importorskip("onnxruntime")
    m = read_manifest(version_dir)
    for role, graph in m["graphs"].items():
        sess = ort.InferenceSession(graph_model(version_dir, m, role), providers=["CPUExecutionProvider"])
        assert [(i.name, list(i.shape[1:])) for i in sess.get_inputs()] == \
            [(i["name"], i["dims"]) for i in graph["inputs"]]
        feeds = {i["name"]: np.full((3, *i["dims"]), 0.1, np.float32) for i in graph["inputs"]}
        outs = sess.run(None, feeds)
        assert [list(o.shape) for o in outs] == [[3, *o["dims"]] for o in graph["outputs"]]


def test_shipped_store_complete_and_small():
    names = {p.parent.name for p in _versions()}
    missing = [n for n in SHIPPED if n not in names]
    assert not missing, f"not shipped: {missing}"
    size = sum(f.stat().st_size for f in STORE.rglob("*") if f.is_file())
    # The store's budget is ~40 MB (it ships with the repository). Gradient graphs are derived from generator.onnx at load, not stored (they would
    # repeat each generator's weights: ~13 MB); encoders (4.8 MB each) are the largest files left.
    assert 0 < size < 40 * 2**20, f"model_store is {size / 2**20:.1f} MiB"
