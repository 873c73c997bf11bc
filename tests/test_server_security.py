"""Access and loading rules of the reliability issue that are properties of the code rather than of one call:
the bearer token is compared in constant time, nothing the server or SDK loads goes through pickle, training
loads torch files only with weights_only=True, and the defaults bind loopback only."""

from __future__ import annotations

import ast
from pathlib import Path

import grpc
import pytest

from protos.ganserve.v1 import generator_pb2 as pb
from protos.ganserve.v1 import generator_pb2_grpc as pb_grpc
from server.config import from_args
from tests.conftest import start_server

ROOT = Path(__file__).resolve().parent.parent
UNSAFE_MODULES = {"pickle", "cPickle", "dill", "joblib", "shelve", "marshal", "cloudpickle"}


def test_the_token_is_compared_in_constant_time(model_store, monkeypatch):
    import hmac

    from server import interceptors as app_module

    seen, compare = [], hmac.compare_digest

    def recording_compare(a, b):
        seen.append((a, b))
        return compare(a, b)

    monkeypatch.setattr(app_module.hmac, "compare_digest", recording_compare)
    running = start_server(model_store, reload_interval_s=0, metrics_port=-1, auth_token="tok-123")
    try:
        with grpc.insecure_channel(running.target) as channel:
            stub = pb_grpc.GeneratorServiceStub(channel)
            for given in ("Bearer tok-124", "Bearer tok-1234567", "tok-123"):  # same length, longer, no scheme
                with pytest.raises(grpc.RpcError) as err:
                    stub.ListModels(pb.ListModelsRequest(), metadata=[("authorization", given)])
                assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
            stub.ListModels(pb.ListModelsRequest(), metadata=[("authorization", "Bearer tok-123")])
    finally:
        running.app.stop(0)
    # every check went through hmac.compare_digest, on bytes, against the full expected header
    assert [a for a, _ in seen] == [b"Bearer tok-124", b"Bearer tok-1234567", b"tok-123", b"Bearer tok-123"]
    assert {b for _, b in seen} == {b"Bearer tok-123"}


def _python_files(*folders: str) -> list[Path]:
    out = []
    for folder in folders:
        out += [p for p in (ROOT / folder).rglob("*.py") if "_pb2" not in p.name and "node_modules" not in p.parts]
    return out


def _calls(tree: ast.AST, attr: str):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == attr:
            yield node


def _keyword(call: ast.Call, name: str):
    for kw in call.keywords:
        if kw.arg == name and isinstance(kw.value, ast.Constant):
            return kw.value.value
    return None


@pytest.mark.parametrize("folder", ["server", "sdk", "protos"])
def test_serving_code_never_unpickles(folder):
    files = _python_files(folder)
    assert files
    for path in files:
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                names = {(node.module or "").split(".")[0]}
            else:
                continue
            assert not names & UNSAFE_MODULES, f"{path}:{node.lineno} imports {names & UNSAFE_MODULES}"
            assert "torch" not in names, f"{path}:{node.lineno}: the serving side never imports torch"
        for call in _calls(tree, "load"):
            if isinstance(call.func.value, ast.Name) and call.func.value.id in ("np", "numpy"):
                assert _keyword(call, "allow_pickle") is False, f"{path}:{call.lineno}: np.load without allow_pickle=False"


def test_training_loads_torch_files_with_weights_only():
    """Checkpoints are safetensors; a torch.load that appears later is held to weights_only=True."""
    for path in _python_files("training"):
        tree = ast.parse(path.read_text(), str(path))
        for call in _calls(tree, "load"):
            if isinstance(call.func.value, ast.Name) and call.func.value.id == "torch":
                assert _keyword(call, "weights_only") is True, f"{path}:{call.lineno}: torch.load without weights_only"
            if isinstance(call.func.value, ast.Name) and call.func.value.id in ("np", "numpy"):
                assert _keyword(call, "allow_pickle") is False, f"{path}:{call.lineno}: np.load may unpickle"


def test_model_files_are_opened_by_onnx_runtime_only():
    """The registry hands model files to onnxruntime.InferenceSession and reads manifests as JSON, nothing else."""
    source = "".join((ROOT / p).read_text() for p in ("server/registry.py", "server/model.py", "ganserve/store/manifest.py",
                                                       "ganserve/store/sessions.py"))
    assert "InferenceSession(" in source and ("json.loads(" in source or "json.load(" in source)
    for unsafe in ("pickle", "import torch", "eval(", "exec(", "yaml.load"):
        assert unsafe not in source


def test_defaults_bind_loopback_only():
    c = from_args([], env={})
    assert c.address.split(":")[0] == "localhost" and c.metrics_address == "127.0.0.1"
    assert c.max_concurrent_rpcs >= 1 and c.max_message_bytes <= 64 << 20
