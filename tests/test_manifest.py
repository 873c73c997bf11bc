"""ganserve/store/manifest.py on its own: every schema rule refuses with its exact reason, the valid forms pass,
and reading, verifying, publishing and the classifier input range behave exactly. Fast (no model runs)."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import stat

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from ganserve.store import manifest as mf
from ganserve.store.manifest import ManifestError

SHA = "ab" * 32
SPEC = {"name": "z", "dtype": "float32", "dims": [2]}


def base(**changes) -> dict:
    m = {"format": 1, "name": "m", "version": 1, "kind": "gan", "data_kind": "points", "latent_dim": 2,
         "num_classes": 0, "class_names": [], "output": {"shape": [2], "value_range": None}, "max_batch_size": 8,
         "graphs": {"generator": {"file": "generator.onnx", "inputs": [dict(SPEC)],
                                  "outputs": [dict(SPEC, name="x")]}},
         "files": {"generator.onnx": SHA}}
    m.update(changes)
    return m


def refused(m, reason: str):
    with pytest.raises(ManifestError) as err:
        mf.validate(m)
    assert str(err.value) == reason


def _edit(path: str, value, m=None):
    """`base()` (or `m`) with the value at a dotted path set, or deleted when `value` is `...`."""
    m = m or base()
    *keys, last = path.split(".")
    target = m
    for k in keys:
        target = target[int(k)] if isinstance(target, list) else target[k]
    if value is ...:
        del target[last]
    elif isinstance(target, list):
        target[int(last)] = value
    else:
        target[last] = value
    return m


KINDS = "('gan', 'wgan-gp', 'cgan', 'latent-constraint', 'evaluator')"
ROLES = "('generator', 'encoder', 'generator_grad', 'critic', 'classifier')"
CASES = [
    ("format", 2, "format must be 1, got 2"),
    ("format", ..., "format must be 1, got None"),
    ("name", "M", "name must match [a-z0-9][a-z0-9._-]{0,63}, got 'M'"),
    ("name", "m\n", "name must match [a-z0-9][a-z0-9._-]{0,63}, got 'm\\n'"),
    ("name", "a" * 65, f"name must match [a-z0-9][a-z0-9._-]{{0,63}}, got '{'a' * 65}'"),
    ("name", 3, "name must match [a-z0-9][a-z0-9._-]{0,63}, got 3"),
    ("version", 0, "version must be a positive int"),
    ("version", "1", "version must be a positive int"),
    ("kind", "vae", f"kind must be one of {KINDS}, got 'vae'"),
    ("data_kind", "audio", "data_kind must be 'image' or 'points'"),
    ("latent_dim", -1, "latent_dim must be an int >= 0"),
    ("latent_dim", 2.0, "latent_dim must be an int >= 0"),
    ("num_classes", -1, "num_classes must be an int >= 0"),
    ("num_classes", "0", "num_classes must be an int >= 0"),
    ("class_names", ["a"], "class_names must have num_classes entries"),
    ("class_names", "", "class_names must have num_classes entries"),
    ("output", [2], "output.shape must be positive ints"),
    ("output.shape", [], "output.shape must be positive ints"),
    ("output.shape", [2, 0], "output.shape must be positive ints"),
    ("output.shape", [2.0], "output.shape must be positive ints"),
    ("output.shape", (2,), "output.shape must be positive ints"),
    ("output.value_range", [1, 1], "output.value_range must be null or [lo, hi] with lo < hi"),
    ("output.value_range", [0, 1, 2], "output.value_range must be null or [lo, hi] with lo < hi"),
    ("output.value_range", (0, 1), "output.value_range must be null or [lo, hi] with lo < hi"),
    ("max_batch_size", 0, "max_batch_size must be > 0"),
    ("max_batch_size", "8", "max_batch_size must be > 0"),
    ("input", {"value_range": [1, 0]}, "input.value_range must be [lo, hi] with lo < hi"),
    ("input", {"value_range": [0, 0]}, "input.value_range must be [lo, hi] with lo < hi"),
    ("input", {"value_range": [0, "1"]}, "input.value_range must be [lo, hi] with lo < hi"),
    ("input", {"value_range": [0]}, "input.value_range must be [lo, hi] with lo < hi"),
    ("input", {"value_range": (0, 1)}, "input.value_range must be [lo, hi] with lo < hi"),
    ("input", [0, 1], "input.value_range must be [lo, hi] with lo < hi"),
    ("input", {}, "input.value_range must be [lo, hi] with lo < hi"),
    ("precision", "fp16", "precision must be one of ('fp32', 'int8'), got 'fp16'"),
    ("precision", "int8", "a int8 variant needs derived_from: the fp32 version it was made from"),
    ("graphs", {}, "graphs must name at least one graph"),
    ("graphs", [], "graphs must name at least one graph"),
    ("files", [], "files must map file names to sha256"),
    ("graphs.decoder", {"file": "generator.onnx", "inputs": [SPEC], "outputs": [SPEC]},
     f"unknown graph role 'decoder'; known: {ROLES}"),
    ("graphs.encoder", "encoder.onnx", "graphs.encoder must be an object"),
    ("graphs.generator.file", ..., "graphs.generator.file missing"),
    ("graphs.generator.file", "g.onnx", "graphs.generator.file g.onnx is not listed in files"),
    ("graphs.generator.inputs", [], "graphs.generator needs inputs and outputs"),
    ("graphs.generator.outputs", ..., "graphs.generator needs inputs and outputs"),
    ("graphs.generator.inputs", ..., "graphs.generator needs inputs and outputs"),
    ("graphs.generator.inputs.0", "z", "graphs.generator.inputs[0]: needs a name"),
    ("graphs.generator.inputs.0.name", 1, "graphs.generator.inputs[0]: needs a name"),
    ("graphs.generator.outputs.0.dtype", "float64",
     "graphs.generator.outputs[0]: dtype must be one of ('float32', 'uint8', 'int64')"),
    ("graphs.generator.outputs.0.dims", [2, 0], "graphs.generator.outputs[0]: dims must be a list of positive ints"),
    ("graphs.generator.outputs.0.dims", (2,), "graphs.generator.outputs[0]: dims must be a list of positive ints"),
    ("graphs.generator.outputs.0.dims", [2.0], "graphs.generator.outputs[0]: dims must be a list of positive ints"),
    ("files.x/y.onnx", SHA, "file name 'x/y.onnx' must be a plain name inside the version folder"),
    ("files.x\\y", SHA, "file name 'x\\\\y' must be a plain name inside the version folder"),
    ("files.generator.onnx", "AB" * 32, "files.generator.onnx must be a sha256 hex digest"),
    ("files.generator.onnx", "ab" * 31, "files.generator.onnx must be a sha256 hex digest"),
    ("files.generator.onnx", "ab" * 32 + "\n", "files.generator.onnx must be a sha256 hex digest"),
    ("files.generator.onnx", None, "files.generator.onnx must be a sha256 hex digest"),
]


@pytest.mark.parametrize("path, value, reason", CASES,  # plain ids: mutmut passes node ids to its workers
                         ids=[f"{i:02d}-{re.sub(r'[^a-z0-9_.]', '_', c[0])}" for i, c in enumerate(CASES)])
def test_each_rule_refuses_with_its_reason(path, value, reason):
    if path.startswith("files."):  # file names contain dots: set them directly
        m = base()
        m["files"][path[len("files."):]] = value
    else:
        m = _edit(path, value)
    refused(m, reason)


@pytest.mark.parametrize("name", [".", "..", ".hidden"])
def test_file_names_may_not_leave_or_hide_in_the_folder(name):
    m = base()
    m["files"][name] = SHA
    refused(m, f"file name {name!r} must be a plain name inside the version folder")


def test_the_valid_forms_pass_and_come_back_unchanged():
    for m in (base(), base(name="a" * 64), base(name="0a._-z"), base(latent_dim=0, num_classes=0),
              base(output={"shape": [1, 2, 2], "value_range": [-1, 1]}), base(input={"value_range": [-1.5, 2]}),
              base(input={"value_range": [0, 1]}), base(precision="fp32"),
              base(precision="int8", derived_from=3), base(num_classes=2, class_names=["a", "b"], kind="cgan"),
              _edit("graphs.critic", {"file": "generator.onnx", "inputs": [SPEC], "outputs": [SPEC]}),
              _edit("graphs.generator.inputs.0.dtype", "int64"), _edit("graphs.generator.inputs.0.dtype", "uint8"),
              _edit("graphs.generator.inputs.0.dims", [1]), base(max_batch_size=1), base(data_kind="image"),
              base(precision="int8", derived_from=1), _edit("class_names", ...)):
        before = copy.deepcopy(m)
        assert mf.validate(m) is m and m == before


def test_a_manifest_is_an_object():
    for m in ([], "m", None):
        refused(m, "manifest must be a JSON object")


def test_precision_variants():
    for src in (0, -1, True, "1", None):
        refused(base(precision="int8", derived_from=src),
                "a int8 variant needs derived_from: the fp32 version it was made from")
    assert mf.precision(base()) == "fp32" and mf.precision(base(precision="int8")) == "int8"
    assert mf.precision({"precision": None}) is None


def test_the_main_graph_of_each_kind():
    ev = base(kind="evaluator")
    refused(ev, "kind evaluator needs a classifier graph")
    ev["graphs"] = {"classifier": ev["graphs"]["generator"]}
    assert mf.validate(ev) is ev
    refused(base(graphs={"critic": base()["graphs"]["generator"]}), "kind gan needs a generator graph")


def test_derived_generator_grad():
    grad = {"derive": "vjp", "inputs": [SPEC], "outputs": [SPEC]}
    assert mf.validate(_edit("graphs.generator_grad", grad))
    refused(_edit("graphs.critic", grad),
            "graphs.critic.derive: only generator_grad may be derived, as 'vjp', without a file")
    refused(_edit("graphs.generator_grad", dict(grad, derive="fd")),
            "graphs.generator_grad.derive: only generator_grad may be derived, as 'vjp', without a file")
    refused(_edit("graphs.generator_grad", dict(grad, file="generator.onnx")),
            "graphs.generator_grad.derive: only generator_grad may be derived, as 'vjp', without a file")
    ev = base(kind="evaluator")
    ev["graphs"] = {"classifier": ev["graphs"]["generator"], "generator_grad": grad}
    refused(ev, "graphs.generator_grad is derived from the generator graph, which is missing")


@pytest.mark.parametrize("code, reason", [
    ([0], "latent_code must be an object"),
    ({"dim": 2, "edges": [0], "values": [-1, 1]}, "latent_code.dim must be in 0..1"),
    ({"dim": -1, "edges": [0], "values": [-1, 1]}, "latent_code.dim must be in 0..1"),
    ({"dim": 1.0, "edges": [0], "values": [-1, 1]}, "latent_code.dim must be in 0..1"),
    ({"dim": 0, "edges": [], "values": [1]}, "latent_code needs edges (K-1 numbers) and values (K numbers), K >= 2"),
    ({"dim": 0, "edges": [0], "values": [1]}, "latent_code needs edges (K-1 numbers) and values (K numbers), K >= 2"),
    ({"dim": 0, "edges": (0,), "values": [-1, 1]},
     "latent_code needs edges (K-1 numbers) and values (K numbers), K >= 2"),
    ({"dim": 0, "edges": [0], "values": (-1, 1)},
     "latent_code needs edges (K-1 numbers) and values (K numbers), K >= 2"),
    ({"dim": 0, "edges": ["0"], "values": [-1, 1]},
     "latent_code needs edges (K-1 numbers) and values (K numbers), K >= 2"),
    ({"dim": 0, "edges": [0], "values": [-1, None]},
     "latent_code needs edges (K-1 numbers) and values (K numbers), K >= 2"),
    ({"dim": 0, "edges": [1, 1], "values": [0, 1, 2]}, "latent_code.edges must be strictly increasing"),
    ({"dim": 0, "edges": [1, 0.5], "values": [0, 0.7, 2]}, "latent_code.edges must be strictly increasing"),
    ({"dim": 0, "edges": [0, 1], "values": [0.5, 0.7, 2]},
     "latent_code.values[k] must lie in cell k (edges[k-1] < value <= edges[k])"),
    ({"dim": 0, "edges": [0, 1], "values": [-1, 0, 2]},
     "latent_code.values[k] must lie in cell k (edges[k-1] < value <= edges[k])"),
    ({"dim": 0, "edges": [0, 1], "values": [-1, 1.5, 2]},
     "latent_code.values[k] must lie in cell k (edges[k-1] < value <= edges[k])"),
    ({"dim": 0, "edges": [0, 1], "values": [-1, 0.5, 1]},
     "latent_code.values[k] must lie in cell k (edges[k-1] < value <= edges[k])"),
])
def test_latent_code_rules(code, reason):
    refused(base(latent_code=code), reason)


def test_valid_latent_codes():
    for code in ({"dim": 1, "edges": [0], "values": [-1, 1]}, {"dim": 0, "edges": [0, 1], "values": [0, 1, 5]},
                 {"dim": 0, "edges": [-1, 0, 1.5], "values": [-3, -0.5, 1.5, 2]}):
        assert mf.validate(base(latent_code=code))["latent_code"] is code


def test_sha256_file_reads_in_chunks(tmp_path):
    data = os.urandom((1 << 20) + 123)
    (tmp_path / "f").write_bytes(data)
    assert mf.sha256_file(tmp_path / "f") == hashlib.sha256(data).hexdigest()
    (tmp_path / "e").write_bytes(b"")
    assert mf.sha256_file(tmp_path / "e") == hashlib.sha256(b"").hexdigest()


def _folder(tmp_path, m, name="m", version="1"):
    d = tmp_path / name / version
    d.mkdir(parents=True)
    (d / "manifest.json").write_text(json.dumps(m))
    return d


def test_read_manifest(tmp_path):
    d = _folder(tmp_path, base())
    assert mf.read_manifest(d) == base()
    with pytest.raises(ManifestError) as err:
        mf.read_manifest(tmp_path / "m" / "2")
    assert str(err.value) == f"{tmp_path / 'm' / '2'}: no manifest.json"
    bad = tmp_path / "b" / "1"
    bad.mkdir(parents=True)
    (bad / "manifest.json").write_text("{")
    with pytest.raises(ManifestError, match=r"/b/1/manifest.json: not valid JSON \(Expecting"):
        mf.read_manifest(bad)
    (bad / "manifest.json").write_bytes(b"\xff")
    with pytest.raises(ManifestError, match=r"/b/1/manifest.json: not valid JSON \("):
        mf.read_manifest(bad)
    for folder in (_folder(tmp_path, base(), "other"), _folder(tmp_path, base(), "m", "3")):
        with pytest.raises(ManifestError) as err:
            mf.read_manifest(folder)
        assert str(err.value) == f"{folder}: manifest says m@1, folder says {folder.parent.name}@{folder.name}"
    (d / "manifest.json").write_text(json.dumps(base(format=2)))
    with pytest.raises(ManifestError, match="^format must be 1, got 2$"):
        mf.read_manifest(d)


def _onnx(path, external: str | None = None):
    w = numpy_helper.from_array(np.ones((2, 2), np.float32), "W")
    if external:
        w.data_location = TensorProto.EXTERNAL
        w.ClearField("raw_data")
        w.external_data.add(key="location", value=external)
    g = helper.make_graph([helper.make_node("MatMul", ["z", "W"], ["x"])], "g",
                          [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 2])],
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2])], [w])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_verify_files(tmp_path):
    d = tmp_path / "m" / "1"
    d.mkdir(parents=True)
    _onnx(d / "generator.onnx")
    (d / "notes.txt").write_text("x")
    m = base(files={"generator.onnx": mf.sha256_file(d / "generator.onnx"), "notes.txt": mf.sha256_file(d / "notes.txt")})
    mf.verify_files(d, m)
    (d / "notes.txt").write_text("y")
    with pytest.raises(ManifestError) as err:
        mf.verify_files(d, m)
    actual, want = mf.sha256_file(d / "notes.txt"), m["files"]["notes.txt"]
    assert str(err.value) == f"{d}/notes.txt: sha256 {actual[:12]}... != manifest {want[:12]}..."
    (d / "notes.txt").unlink()
    with pytest.raises(ManifestError) as err:
        mf.verify_files(d, m)
    assert str(err.value) == f"{d}: missing file notes.txt"
    (d / "notes.txt").symlink_to(d / "generator.onnx")
    with pytest.raises(ManifestError, match="missing file notes.txt$"):
        mf.verify_files(d, dict(m, files=dict(m["files"], **{"notes.txt": m["files"]["generator.onnx"]})))
    (d / "notes.txt").unlink()
    (d / "notes.txt").mkdir()
    with pytest.raises(ManifestError, match="missing file notes.txt$"):
        mf.verify_files(d, m)


def test_verify_files_refuses_external_data_not_listed(tmp_path):
    d = tmp_path / "m" / "1"
    d.mkdir(parents=True)
    _onnx(d / "generator.onnx", external="weights.bin")
    (d / "weights.bin").write_bytes(bytes(16))
    digest = {n: mf.sha256_file(d / n) for n in ("generator.onnx", "weights.bin")}
    mf.verify_files(d, base(files=digest))
    with pytest.raises(ManifestError) as err:
        mf.verify_files(d, base(files={"generator.onnx": digest["generator.onnx"]}))
    assert str(err.value) == (f"{d}/generator.onnx: external data 'weights.bin' is not a file listed (with its "
                              "sha256) in the manifest; refused")
    _onnx(d / "generator.onnx", external="generator.onnx")
    with pytest.raises(ManifestError, match="external data 'generator.onnx' is not a file listed"):
        mf.verify_files(d, base(files={"generator.onnx": mf.sha256_file(d / "generator.onnx")}))
    (d / "generator.onnx").write_bytes(b"not onnx")  # onnx cannot read it: ONNX Runtime refuses it later
    mf.verify_files(d, base(files={"generator.onnx": mf.sha256_file(d / "generator.onnx")}))
    derived = base(files={"generator.onnx": mf.sha256_file(d / "generator.onnx")})
    derived["graphs"]["generator_grad"] = {"derive": "vjp", "inputs": [SPEC], "outputs": [SPEC]}
    mf.verify_files(d, derived)


def test_graph_model_and_generator_names(tmp_path):
    _onnx(tmp_path / "generator.onnx")
    m = base()
    assert mf.graph_model(tmp_path, m, "generator") == str(tmp_path / "generator.onnx")
    m["graphs"]["generator_grad"] = {"derive": "vjp"}
    derived = mf.graph_model(tmp_path, m, "generator_grad")
    assert isinstance(derived, bytes) and onnx.load_from_string(derived).graph.node
    g = helper.make_graph([helper.make_node("Sin", ["z"], ["x"])], "g",  # no VJP rule for Sin
                          [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 2])],
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2])])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "generator.onnx"))
    with pytest.raises(ManifestError, match=rf"^{tmp_path}: cannot derive generator_grad from generator.onnx \("):
        mf.graph_model(tmp_path, m, "generator_grad")
    assert mf.generator_names(base()) == ("z", None, "x")
    cond = base()
    cond["graphs"]["generator"]["inputs"].append(dict(SPEC, name="y"))
    assert mf.generator_names(cond) == ("z", "y", "x")


def test_next_version_and_publish(tmp_path):
    store = tmp_path / "store"
    assert mf.next_version(store, "m") == 1
    src = tmp_path / "g.onnx"
    src.write_bytes(b"bytes")
    v1 = mf.publish(store, base(version=7, files={}), {"generator.onnx": src})
    assert v1 == store / "m" / "1" and stat.S_IMODE(v1.stat().st_mode) == 0o755
    m = json.loads((v1 / "manifest.json").read_text())
    assert m == base(files={"generator.onnx": hashlib.sha256(b"bytes").hexdigest()})
    assert (v1 / "manifest.json").read_text() == json.dumps(m, indent=2) + "\n"
    (store / "m" / "5").mkdir()
    (store / "m" / "notes").mkdir()
    (store / "m" / "9").write_text("a file, not a version")
    assert mf.next_version(store, "m") == 6
    assert mf.publish(store, base(), {"generator.onnx": src}) == store / "m" / "6"
    with pytest.raises(OSError):
        mf.publish(store, base(), {"generator.onnx": src}, version=6)  # taken: a fixed number is not retried
    assert sorted(p.name for p in (store / "m").iterdir()) == ["1", "5", "6", "9", "notes"]  # no .tmp-* left
    with pytest.raises(ManifestError, match="^invalid model name 'Bad'$"):
        mf.publish(store, base(name="Bad"), {})
    with pytest.raises(ManifestError, match="^graphs.generator.file generator.onnx is not listed in files$"):
        mf.publish(store, base(), {})
    assert sorted(p.name for p in (store / "m").iterdir()) == ["1", "5", "6", "9", "notes"]


def test_input_range_and_check(tmp_path):
    assert mf.CLASSIFIER_INPUT_RANGE == (0.0, 1.0)
    assert mf.input_range(base()) == (0.0, 1.0) and mf.input_range(base(input=None)) == (0.0, 1.0)
    assert mf.input_range(base(input={"value_range": [-1, 2]})) == (-1.0, 2.0)
    m = base(input={"value_range": [-1, 1]})
    mf.check_input_range(m, np.array([-1.001, 1.001]))
    mf.check_input_range(m, np.zeros(0))
    for x, got in (([-1.0011, 0.5], "[-1, 0.5]"), ([0, 1.0011], "[0, 1]")):
        with pytest.raises(ValueError) as err:
            mf.check_input_range(m, np.array(x))
        assert str(err.value) == (f"m@1 takes inputs in [-1, 1] (its manifest's input.value_range), got values in "
                                  f"{got}: map the images there first (from [-1, 1]: (x + 1) / 2)")
    with pytest.raises(ValueError, match=r"takes inputs in \[0, 1\]"):
        mf.check_input_range(base(), np.array([0.5, 1.002]), tolerance=0.001)
    mf.check_input_range(base(), np.array([0.5, 1.002]), tolerance=0.0025)
