"""Tiny real ONNX models (built with onnx.helper from numpy weights), a store holding them, and real servers on
port 0. Nothing here depends on the shipped models in model_store/.

Models (images are 1x8x8 so everything runs in milliseconds):
    tiny-gan     gan        z (N,8) -> tanh(z W + b) -> (N,1,8,8) in [-1,1]; encoder, generator_grad, critic
    tiny-cgan    cgan       z (N,8), y (N,4) -> tanh(0.3 z Wz + 2.5 y P) -> (N,1,8,8); encoder (x,y)->z,
                            generator_grad; class k draws pattern P[k], so the evaluator recognises it
    tiny-points  gan        z (N,2) -> z A + c: 2-D points, no value range
    tiny-eval    evaluator  x (N,1,8,8) in [0,1] -> logits = (2x-1) P^T (N,4), features relu(x F) (N,16)
The generator_grad graphs are written analytically for the linear+tanh generators:
    loss = sum_j (x_j - t_j)^2,  dloss/dz = (2 (x - t) * (1 - x^2)) W_z^T   with x = tanh(h).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from protos.ganserve.v1 import generator_pb2 as pb
from ganserve.store import manifest as mf

# Property tests: a developer's `make test` draws new random cases every run (that is how they find bugs); CI
# (.ci/run sets GANSERVE_CI=1) runs hypothesis's "ci" profile: derandomized, the same cases every run, no
# example database, so a red CI is a regression of the change under test, not a lucky draw.
if os.environ.get("GANSERVE_CI"):
    from hypothesis import settings

    settings.load_profile("ci")

LATENT, CLASSES, SIDE = 8, 4, 8
PIXELS = SIDE * SIDE
F32 = TensorProto.FLOAT


ROOT = Path(__file__).resolve().parent.parent
NATIVE = {ROOT / "build" / "ganserve-gateway": ROOT / "gateway",  # binary -> its Go sources
          ROOT / "build" / "ganserve-goecho": ROOT / "bench" / "goecho"}


def native_binaries() -> list[Path]:
    """The Go executables (the gateway, the benchmark's grpc-go echo), built with `make gateway` when Go and
    grpc-go are installed and a binary is missing or older than its sources; else the calling test skips."""
    go_ok = shutil.which("go") and Path("/usr/share/gocode/src/google.golang.org/grpc").is_dir()
    stale = [b for b, src in NATIVE.items()
             if not b.exists() or any(b.stat().st_mtime < p.stat().st_mtime for p in src.glob("*.go"))]
    if go_ok and stale:
        subprocess.run(["make", "-s", "gateway"], cwd=ROOT, check=True, capture_output=True, timeout=600)
    if not all(b.exists() for b in NATIVE):
        pytest.skip("the gateway needs Go: apt-get install golang-go golang-google-grpc-dev "
                    "golang-google-protobuf-dev golang-google-genproto-dev (README, 'Native front end')")
    return list(NATIVE)


def _weights(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    patterns = np.sign(rng.standard_normal((CLASSES, PIXELS))).astype(np.float32)  # +-1 templates
    return {
        "W": (rng.standard_normal((LATENT, PIXELS)) / np.sqrt(LATENT)).astype(np.float32),
        "b": (0.1 * rng.standard_normal(PIXELS)).astype(np.float32),
        "Wz": (0.3 * rng.standard_normal((LATENT, PIXELS)) / np.sqrt(LATENT)).astype(np.float32),
        "P": patterns,
        "A": np.array([[1.0, 0.5], [-0.5, 1.0]], np.float32),
        "c": np.array([0.2, -0.1], np.float32),
        "E": (0.1 * rng.standard_normal((PIXELS, LATENT))).astype(np.float32),
        "Ey": (0.1 * rng.standard_normal((CLASSES, LATENT))).astype(np.float32),
        "F": (rng.standard_normal((PIXELS, 16)) / 8).astype(np.float32),
        "C": (rng.standard_normal((PIXELS, 1)) / 8).astype(np.float32),
    }


def _save(graph: onnx.GraphProto, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _info(name, dims):
    return helper.make_tensor_value_info(name, F32, ["N", *dims])


def _init(arrays: dict[str, np.ndarray]):
    return [numpy_helper.from_array(np.asarray(v), k) for k, v in arrays.items()]


def _pre_activation(conditional: bool, w: dict) -> tuple[list, dict]:
    """Nodes computing h (N, 64) from z [and y]; the weights they use."""
    if conditional:
        nodes = [helper.make_node("MatMul", ["z", "Wz"], ["hz"]),
                 helper.make_node("MatMul", ["y", "P25"], ["hy"]),
                 helper.make_node("Add", ["hz", "hy"], ["h"])]
        return nodes, {"Wz": w["Wz"], "P25": 2.5 * w["P"]}
    return [helper.make_node("MatMul", ["z", "W"], ["hw"]), helper.make_node("Add", ["hw", "b"], ["h"])], \
        {"W": w["W"], "b": w["b"]}


def build_generator(path: Path, conditional: bool, w: dict) -> Path:
    nodes, weights = _pre_activation(conditional, w)
    nodes += [helper.make_node("Tanh", ["h"], ["flat"]), helper.make_node("Reshape", ["flat", "shape"], ["x"])]
    inputs = [_info("z", [LATENT])] + ([_info("y", [CLASSES])] if conditional else [])
    graph = helper.make_graph(nodes, "generator", inputs, [_info("x", [1, SIDE, SIDE])],
                              _init({**weights, "shape": np.array([-1, 1, SIDE, SIDE], np.int64)}))
    return _save(graph, path)


def build_generator_grad(path: Path, conditional: bool, w: dict) -> Path:
    nodes, weights = _pre_activation(conditional, w)
    wz = weights["Wz"] if conditional else weights["W"]
    nodes += [
        helper.make_node("Tanh", ["h"], ["xf"]),
        helper.make_node("Reshape", ["target", "flat_shape"], ["tf"]),
        helper.make_node("Sub", ["xf", "tf"], ["r"]),
        helper.make_node("Mul", ["r", "r"], ["r2"]),
        helper.make_node("ReduceSum", ["r2", "axis1"], ["loss"], keepdims=0),
        helper.make_node("Mul", ["xf", "xf"], ["x2"]),
        helper.make_node("Sub", ["one", "x2"], ["dtanh"]),
        helper.make_node("Mul", ["r", "dtanh"], ["rd"]),
        helper.make_node("Mul", ["rd", "two"], ["gh"]),
        helper.make_node("MatMul", ["gh", "WzT"], ["grad_z"]),
    ]
    inputs = [_info("z", [LATENT]), _info("target", [1, SIDE, SIDE])] + ([_info("y", [CLASSES])] if conditional else [])
    outputs = [helper.make_tensor_value_info("loss", F32, ["N"]), _info("grad_z", [LATENT])]
    consts = {"flat_shape": np.array([-1, PIXELS], np.int64), "axis1": np.array([1], np.int64),
              "one": np.array(1.0, np.float32), "two": np.array(2.0, np.float32), "WzT": wz.T.copy()}
    return _save(helper.make_graph(nodes, "generator_grad", inputs, outputs, _init({**weights, **consts})), path)


def build_encoder(path: Path, conditional: bool, w: dict) -> Path:
    """A linear least-squares encoder: z = pinv(W) applied to atanh(x) - offset (near-exact for small x)."""
    wz = w["Wz"] if conditional else w["W"]
    pinv = np.linalg.pinv(wz).astype(np.float32)  # (64, 8)
    nodes = [helper.make_node("Reshape", ["x", "flat_shape"], ["xf"]),
             helper.make_node("Clip", ["xf", "lo", "hi"], ["xc"]),
             # atanh(x) = 0.5 * log((1 + x) / (1 - x))
             helper.make_node("Add", ["one", "xc"], ["num"]), helper.make_node("Sub", ["one", "xc"], ["den"]),
             helper.make_node("Div", ["num", "den"], ["ratio"]), helper.make_node("Log", ["ratio"], ["lg"]),
             helper.make_node("Mul", ["lg", "half"], ["h"])]
    consts = {"flat_shape": np.array([-1, PIXELS], np.int64), "lo": np.array(-0.999, np.float32),
              "hi": np.array(0.999, np.float32), "one": np.array(1.0, np.float32), "half": np.array(0.5, np.float32),
              "pinv": pinv}
    if conditional:
        nodes += [helper.make_node("MatMul", ["y", "P25"], ["hy"]), helper.make_node("Sub", ["h", "hy"], ["hz"]),
                  helper.make_node("MatMul", ["hz", "pinv"], ["z"])]
        consts["P25"] = 2.5 * w["P"]
    else:
        nodes += [helper.make_node("Sub", ["h", "b"], ["hz"]), helper.make_node("MatMul", ["hz", "pinv"], ["z"])]
        consts["b"] = w["b"]
    inputs = [_info("x", [1, SIDE, SIDE])] + ([_info("y", [CLASSES])] if conditional else [])
    return _save(helper.make_graph(nodes, "encoder", inputs, [_info("z", [LATENT])], _init(consts)), path)


def build_critic(path: Path, w: dict) -> Path:
    nodes = [helper.make_node("Reshape", ["x", "flat_shape"], ["xf"]), helper.make_node("MatMul", ["xf", "C"], ["score"])]
    consts = {"flat_shape": np.array([-1, PIXELS], np.int64), "C": w["C"]}
    return _save(helper.make_graph(nodes, "critic", [_info("x", [1, SIDE, SIDE])], [_info("score", [1])],
                                   _init(consts)), path)


def build_points(path: Path, w: dict) -> Path:
    nodes = [helper.make_node("MatMul", ["z", "A"], ["za"]), helper.make_node("Add", ["za", "c"], ["x"])]
    return _save(helper.make_graph(nodes, "generator", [_info("z", [2])], [_info("x", [2])],
                                   _init({"A": w["A"], "c": w["c"]})), path)


def build_evaluator(path: Path, w: dict) -> Path:
    nodes = [helper.make_node("Reshape", ["x", "flat_shape"], ["xf"]),
             helper.make_node("Mul", ["xf", "two"], ["x2"]), helper.make_node("Sub", ["x2", "one"], ["xs"]),
             helper.make_node("MatMul", ["xs", "PT"], ["logits"]),
             helper.make_node("MatMul", ["xf", "F"], ["fl"]), helper.make_node("Relu", ["fl"], ["features"])]
    consts = {"flat_shape": np.array([-1, PIXELS], np.int64), "two": np.array(2.0, np.float32),
              "one": np.array(1.0, np.float32), "PT": w["P"].T.copy(), "F": w["F"]}
    return _save(helper.make_graph(nodes, "classifier", [_info("x", [1, SIDE, SIDE])],
                                   [_info("logits", [CLASSES]), _info("features", [16])], _init(consts)), path)


def _spec(name, dims, dtype="float32"):
    return {"name": name, "dtype": dtype, "dims": list(dims)}


def manifest(name: str, kind: str, *, latent_dim: int = LATENT, num_classes: int = 0, data_kind: str = "image",
             shape=(1, SIDE, SIDE), value_range=(-1.0, 1.0), graphs: dict, description: str = "") -> dict:
    return {"format": 1, "name": name, "version": 1, "kind": kind, "created": "2026-11-23T08:00:00Z",
            "description": description or f"test model {name}", "data_kind": data_kind, "latent_dim": latent_dim,
            "num_classes": num_classes, "class_names": [f"class{i}" for i in range(num_classes)],
            "output": {"shape": list(shape), "value_range": list(value_range) if value_range else None},
            "max_batch_size": 64, "graphs": graphs, "files": {}, "training": {"seed": 0},
            "metrics": {"test_metric": 1.5}}


IMG = [1, SIDE, SIDE]


def publish_gan(store: Path, tmp: Path, name: str = "tiny-gan", seed: int = 0, *, extras: bool = True) -> Path:
    w = _weights(seed)
    tmp.mkdir(parents=True, exist_ok=True)
    files = {"generator.onnx": build_generator(tmp / f"{name}-g.onnx", False, w)}
    graphs = {"generator": {"file": "generator.onnx", "inputs": [_spec("z", [LATENT])], "outputs": [_spec("x", IMG)]}}
    if extras:
        files["encoder.onnx"] = build_encoder(tmp / f"{name}-e.onnx", False, w)
        files["generator_grad.onnx"] = build_generator_grad(tmp / f"{name}-gg.onnx", False, w)
        files["critic.onnx"] = build_critic(tmp / f"{name}-c.onnx", w)
        graphs["encoder"] = {"file": "encoder.onnx", "inputs": [_spec("x", IMG)], "outputs": [_spec("z", [LATENT])]}
        graphs["generator_grad"] = {"file": "generator_grad.onnx",
                                    "inputs": [_spec("z", [LATENT]), _spec("target", IMG)],
                                    "outputs": [_spec("loss", []), _spec("grad_z", [LATENT])]}
        graphs["critic"] = {"file": "critic.onnx", "inputs": [_spec("x", IMG)], "outputs": [_spec("score", [1])]}
    return mf.publish(store, manifest(name, "gan", graphs=graphs), files)


def publish_cgan(store: Path, tmp: Path, name: str = "tiny-cgan") -> Path:
    w = _weights(0)
    tmp.mkdir(parents=True, exist_ok=True)
    files = {"generator.onnx": build_generator(tmp / f"{name}-g.onnx", True, w),
             "encoder.onnx": build_encoder(tmp / f"{name}-e.onnx", True, w),
             "generator_grad.onnx": build_generator_grad(tmp / f"{name}-gg.onnx", True, w)}
    zy = [_spec("z", [LATENT]), _spec("y", [CLASSES])]
    graphs = {"generator": {"file": "generator.onnx", "inputs": zy, "outputs": [_spec("x", IMG)]},
              "encoder": {"file": "encoder.onnx", "inputs": [_spec("x", IMG), _spec("y", [CLASSES])],
                          "outputs": [_spec("z", [LATENT])]},
              "generator_grad": {"file": "generator_grad.onnx",
                                 "inputs": [_spec("z", [LATENT]), _spec("target", IMG), _spec("y", [CLASSES])],
                                 "outputs": [_spec("loss", []), _spec("grad_z", [LATENT])]}}
    return mf.publish(store, manifest(name, "cgan", num_classes=CLASSES, graphs=graphs), files)


def publish_points(store: Path, tmp: Path, name: str = "tiny-points") -> Path:
    tmp.mkdir(parents=True, exist_ok=True)
    files = {"generator.onnx": build_points(tmp / f"{name}-g.onnx", _weights(0))}
    graphs = {"generator": {"file": "generator.onnx", "inputs": [_spec("z", [2])], "outputs": [_spec("x", [2])]}}
    return mf.publish(store, manifest(name, "gan", latent_dim=2, data_kind="points", shape=(2,), value_range=None,
                                      graphs=graphs), files)


def publish_evaluator(store: Path, tmp: Path, name: str = "tiny-eval") -> Path:
    tmp.mkdir(parents=True, exist_ok=True)
    files = {"classifier.onnx": build_evaluator(tmp / f"{name}-c.onnx", _weights(0))}
    graphs = {"classifier": {"file": "classifier.onnx", "inputs": [_spec("x", IMG)],
                             "outputs": [_spec("logits", [CLASSES]), _spec("features", [16])]}}
    return mf.publish(store, manifest(name, "evaluator", latent_dim=0, num_classes=CLASSES, graphs=graphs), files)


def reference_generator(z: np.ndarray, y: np.ndarray | None = None) -> np.ndarray:
    """The tiny generators in numpy (float64), to check the served outputs against."""
    w = _weights(0)
    h = z @ w["Wz"] + y @ (2.5 * w["P"]) if y is not None else z @ w["W"] + w["b"]
    return np.tanh(h).reshape(-1, 1, SIDE, SIDE)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sigterm_during_slow_stream(stub, proc) -> list[int]:
    """Start a SampleStream of 40 chunks of 1 MiB, SIGTERM `proc` after the first chunk, read the rest slowly (HTTP/2
    flow control keeps the stream in flight on the server): the chunks' start indices, to compare with all 40."""
    stream = stub.SampleStream(pb.SampleStreamRequest(model="tiny-gan", n=4096 * 40, seed=3, chunk_size=4096),
                               timeout=60)
    got = [next(stream).start]
    proc.send_signal(signal.SIGTERM)
    for chunk in stream:  # drained, not cut off
        got.append(chunk.start)
        time.sleep(0.02)
    return got


@dataclass
class Running:
    target: str
    port: int
    app: object
    store: Path


def start_server(store: Path, **overrides) -> Running:
    from server.app import create_server
    from server.config import Config

    settings = dict(address="127.0.0.1:0", store=str(store), metrics_port=0, reload_interval_s=0.2)
    settings.update(overrides)
    _, port, app = create_server(Config(**settings))
    app.start()
    return Running(f"127.0.0.1:{port}", port, app, store)


@pytest.fixture(scope="session")
def model_store(tmp_path_factory) -> Path:
    """A store with one of each tiny model (read-only for tests: copy it to modify)."""
    root = tmp_path_factory.mktemp("store")
    store, build = root / "store", root / "build"
    publish_gan(store, build)
    publish_cgan(store, build)
    publish_points(store, build)
    publish_evaluator(store, build)
    return store


@pytest.fixture(scope="session")
def server(model_store) -> Running:
    """A real server on port 0 over the tiny store, shared by tests that do not change the store."""
    running = start_server(model_store, reload_interval_s=0)
    yield running
    running.app.stop(0)


@pytest.fixture(autouse=True)
def _no_ambient_target(monkeypatch):
    """Tests never pick up a GANSERVE_* setting from the developer's shell."""
    for key in list(os.environ):
        if key.startswith("GANSERVE_") and key != "GANSERVE_MNIST":
            monkeypatch.delenv(key)
