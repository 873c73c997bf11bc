"""TorchServe as a deployment target (training/torchserve.py): request validation, the handler's batching,
the .mar export, and a real TorchServe (JVM + Python worker) on free loopback ports that serves the same
samples as the in-process generator for the same seed, then stops without leaving a process behind.
"""

from __future__ import annotations

import json
import shutil
import urllib.error
import urllib.request
import zipfile

import numpy as np
import psutil
import pytest

from protos import latents as latent_fn
from tests.conftest import CLASSES, LATENT, reference_generator
from training import torchserve as ts


class FakeContext:
    """The parts of TorchServe's Context the handler uses."""

    def __init__(self, model_dir, n_requests=0, yaml=None):
        self.system_properties = {"model_dir": str(model_dir)}
        self.model_yaml_config = yaml or {}
        self.status, self.headers = {}, {}

    def set_response_status(self, code=200, phrase="", idx=0):
        self.status[idx] = (code, phrase)

    def set_response_content_type(self, idx, value):
        self.set_response_header(idx, "content-type", value)

    def set_response_header(self, idx, key, value):
        self.headers.setdefault(idx, {})[key] = value


def _unpacked(mar, dest):
    with zipfile.ZipFile(mar) as z:
        z.extractall(dest)
    return dest


@pytest.fixture(scope="module")
def mars(model_store, tmp_path_factory):
    out = tmp_path_factory.mktemp("mar")
    return {name: ts.export_mar(model_store, name, out) for name in ("tiny-gan", "tiny-cgan")}


def _handler(mars, name, tmp_path):
    h = ts.GeneratorHandler()
    h.initialize(FakeContext(_unpacked(mars[name], tmp_path / name)))
    return h


def test_export_packs_handler_model_latents_and_manifest(mars, model_store):
    with zipfile.ZipFile(mars["tiny-gan"]) as z:
        names = set(z.namelist())
        mar_manifest = json.loads(z.read("MAR-INF/MANIFEST.json"))
        manifest = json.loads(z.read("manifest.json"))
    assert {"generator.onnx", "manifest.json", "latents.py", ts.HANDLER_FILE, "model-config.yaml"} <= names
    assert mar_manifest["model"]["modelName"] == "tiny-gan"          # must equal the registered name
    assert mar_manifest["model"]["handler"] == ts.HANDLER_FILE
    assert manifest == json.loads((model_store / "tiny-gan" / "1" / "manifest.json").read_text())


def test_export_refuses_unknown_or_corrupt_models(model_store, tmp_path):
    with pytest.raises(FileNotFoundError, match="nope"):
        ts.export_mar(model_store, "nope", tmp_path)
    with pytest.raises(ValueError, match="no generator graph"):
        ts.export_mar(model_store, "tiny-eval", tmp_path)
    broken = tmp_path / "store"
    shutil.copytree(model_store / "tiny-gan", broken / "tiny-gan")
    (broken / "tiny-gan" / "1" / "generator.onnx").write_bytes(b"not onnx")
    with pytest.raises(FileNotFoundError, match="sha256"):
        ts.export_mar(broken, "tiny-gan", tmp_path / "out")
    assert ts.main(["--model", "nope", "--store", str(model_store), "--out", str(tmp_path)]) == 2


@pytest.mark.parametrize("body, field", [
    ({"n": 0}, "n"), ({"n": 2000}, "n"), ({"n": "3"}, "n"), ({"seed": -1}, "seed"), ({"seed": 2**64}, "seed"),
    ({"encoding": "png"}, "encoding"), ({"truncation": -1}, "truncation"), ({"labels": [1]}, "labels"),
    ({"bogus": 1}, "bogus"), (b"{not json", "body"), ([1, 2], "body"),
])
def test_bad_requests_name_the_field(body, field):
    manifest = {"num_classes": 0, "latent_dim": LATENT}
    with pytest.raises(ValueError, match=f"^{field}: "):
        ts.parse_request(body, manifest, 1024)


def test_uint8_needs_an_image_value_range():
    points = {"num_classes": 0, "latent_dim": 2, "output": {"shape": [2], "value_range": None}}
    with pytest.raises(ValueError, match="^encoding: uint8 needs"):
        ts.parse_request({"encoding": "uint8"}, points, 1024)
    assert ts.parse_request({"n": 2}, points, 1024)["encoding"] == "float32"


def test_conditional_requests_need_valid_labels():
    manifest = {"num_classes": CLASSES, "latent_dim": LATENT}
    for labels in (None, [CLASSES], [0, 1], [True]):
        with pytest.raises(ValueError, match="^labels: "):
            ts.parse_request({"n": 3, "labels": labels}, manifest, 1024)
    assert ts.parse_request({"n": 3, "labels": [0, 1, 2]}, manifest, 1024)["labels"] == [0, 1, 2]


def test_handler_batches_requests_and_matches_the_generator(mars, tmp_path):
    h = _handler(mars, "tiny-gan", tmp_path)
    bodies = [{"n": 3, "seed": 5}, b'{"n": 0}', json.dumps({"n": 2, "seed": 9, "encoding": "uint8"}).encode()]
    ctx = FakeContext(tmp_path)
    replies = h.handle([{"body": b} for b in bodies], ctx)
    # the bad request in the middle gets its own 400; the others still succeed
    assert ctx.status == {1: (400, "n: must be an integer in 1..1024, got 0")}
    assert json.loads(replies[1]) == {"error": "n: must be an integer in 1..1024, got 0"}
    x0 = np.frombuffer(replies[0], "<f4").reshape(3, 1, 8, 8)
    np.testing.assert_allclose(x0, reference_generator(latent_fn.latents(5, 3, LATENT)), rtol=0, atol=1e-5)
    assert ctx.headers[0] == {"content-type": "application/octet-stream", "x-shape": "3,1,8,8",
                              "x-dtype": "float32", "x-seed": "5"}
    # a request's samples do not depend on what it was batched with
    alone = h.handle([{"body": {"n": 3, "seed": 5}}], FakeContext(tmp_path))[0]
    assert alone == replies[0]
    x2 = np.frombuffer(replies[2], np.uint8).reshape(2, 1, 8, 8)
    ref = reference_generator(latent_fn.latents(9, 2, LATENT))
    np.testing.assert_allclose(x2, np.round((ref + 1) / 2 * 255), rtol=0, atol=1)


def test_handler_conditional_labels(mars, tmp_path):
    h = _handler(mars, "tiny-cgan", tmp_path)
    reply = h.handle([{"body": {"n": 4, "seed": 3, "labels": [0, 1, 2, 3]}}], FakeContext(tmp_path))[0]
    x = np.frombuffer(reply, "<f4").reshape(4, 1, 8, 8)
    y = np.eye(CLASSES, dtype=np.float32)
    np.testing.assert_allclose(x, reference_generator(latent_fn.latents(3, 4, LATENT), y), rtol=0, atol=1e-5)


def _post(url, body):
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return r.headers, r.read()


@pytest.mark.slow
def test_torchserve_serves_the_same_samples_and_stops_cleanly(model_store, tmp_path):
    pytest.importorskip("ts", reason="the torchserve package is not installed")
    if shutil.which("java") is None:
        pytest.skip("TorchServe needs Java 17 (java not on PATH)")
    from bench.servers import TorchServe

    mar_dir = tmp_path / "mar"
    ts.export_mar(model_store, "tiny-gan", mar_dir)
    ts.export_mar(model_store, "tiny-cgan", mar_dir, name="cgan", batch_size=4, max_batch_delay_ms=5)
    server = TorchServe(mar_dir, {"tiny-gan": "tiny-gan.mar", "cgan": "cgan.mar"}, workdir=tmp_path / "ts",
                        ready_timeout=120)
    with server:
        family = [server.proc.pid, *(c.pid for c in psutil.Process(server.proc.pid).children(recursive=True))]
        assert len(family) >= 3  # launcher, JVM, at least one Python worker per model
        assert server.describe("cgan")["batchSize"] == 4
        headers, data = _post(server.predictions_url("tiny-gan"), {"n": 5, "seed": 11})
        assert headers["x-shape"] == "5,1,8,8" and headers["x-seed"] == "11"
        x = np.frombuffer(data, "<f4").reshape(5, 1, 8, 8)
        np.testing.assert_allclose(x, reference_generator(latent_fn.latents(11, 5, LATENT)), rtol=0, atol=1e-5)
        _, data = _post(server.predictions_url("cgan"), {"n": 2, "seed": 4, "labels": [3]})
        y = np.eye(CLASSES, dtype=np.float32)[[3, 3]]
        np.testing.assert_allclose(np.frombuffer(data, "<f4").reshape(2, 1, 8, 8),
                                   reference_generator(latent_fn.latents(4, 2, LATENT), y), rtol=0, atol=1e-5)
        with pytest.raises(urllib.error.HTTPError) as err:
            _post(server.predictions_url("tiny-gan"), {"n": 1, "seed": -3})
        assert err.value.code == 400 and b"seed: must be" in err.value.read()
    assert not [p for p in family if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
