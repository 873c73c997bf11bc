"""GeneratorService over real servers on port 0 and real channels: every RPC and encoding, determinism,
health, reflection, metrics. The tiny models are in tests/conftest.py."""

from __future__ import annotations

import io
import threading
import time
import urllib.request

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image

from protos import latents as latent_fn
from protos import tensors
from protos.ganserve.v1 import generator_pb2 as pb
from protos.ganserve.v1 import generator_pb2_grpc as pb_grpc
from tests.conftest import CLASSES, LATENT, SIDE, reference_generator, start_server


@pytest.fixture(scope="module")
def stub(server):
    channel = grpc.insecure_channel(server.target)
    yield pb_grpc.GeneratorServiceStub(channel)
    channel.close()


def arr(t: pb.Tensor) -> np.ndarray:
    return np.array(tensors.to_array(t))


# -- models -----------------------------------------------------------------------------------------------

def test_list_and_get_models(stub):
    models = {m.name: m for m in stub.ListModels(pb.ListModelsRequest()).models}
    assert sorted(models) == ["tiny-cgan", "tiny-eval", "tiny-gan", "tiny-points"]
    gan, cgan, pts, ev = models["tiny-gan"], models["tiny-cgan"], models["tiny-points"], models["tiny-eval"]
    assert (gan.kind, gan.version, gan.latent_dim, list(gan.output_shape)) == ("gan", 1, LATENT, [1, SIDE, SIDE])
    assert (gan.value_min, gan.value_max, gan.data_kind) == (-1.0, 1.0, pb.IMAGE)
    assert gan.capabilities == pb.Capabilities(invertible=True, optimizable=True, has_critic=True)
    assert cgan.capabilities == pb.Capabilities(conditional=True, soft_labels=True, invertible=True, optimizable=True)
    assert pts.capabilities == pb.Capabilities() and pts.data_kind == pb.POINTS and list(pts.output_shape) == [2]
    assert ev.kind == "evaluator" and list(ev.class_names) == [f"class{i}" for i in range(CLASSES)]
    assert [(i.name, list(i.dims)) for i in cgan.inputs] == [("z", [LATENT]), ("y", [CLASSES])]
    assert gan.metrics["test_metric"] == pytest.approx(1.5) and list(gan.available_versions) == [1]
    assert stub.GetModel(pb.GetModelRequest(model="tiny-cgan@1")) == cgan


# -- sampling ---------------------------------------------------------------------------------------------

def test_sample_matches_the_graph_and_the_latent_contract(stub):
    r = stub.Sample(pb.SampleRequest(model="tiny-gan", n=6, seed=11, return_latents=True))
    z = latent_fn.latents(11, 6, LATENT)
    np.testing.assert_array_equal(arr(r.latents), z)
    np.testing.assert_allclose(arr(r.samples), reference_generator(z), rtol=0, atol=2e-6)
    assert (r.model, r.seed) == ("tiny-gan@1", 11) and not r.HasField("conditions")


def test_sample_without_seed_returns_the_seed_it_used(stub):
    a = stub.Sample(pb.SampleRequest(n=3))
    b = stub.Sample(pb.SampleRequest(n=3, seed=a.seed))
    assert a.seed != 0 and a.samples == b.samples


def test_explicit_latents_and_truncation(stub):
    z = np.random.default_rng(0).standard_normal((4, LATENT)).astype(np.float32)
    r = stub.Sample(pb.SampleRequest(latents=tensors.from_array(z)))
    np.testing.assert_allclose(arr(r.samples), reference_generator(z), atol=2e-6)
    t = stub.Sample(pb.SampleRequest(n=64, seed=1, truncation=0.5, return_latents=True))
    zt = arr(t.latents)
    assert np.abs(zt).max() <= 0.5 and np.array_equal(zt, latent_fn.latents(1, 64, LATENT, truncation=0.5))


@pytest.mark.parametrize("encoding", [pb.ENCODING_UNSPECIFIED, pb.ENCODING_FLOAT32, pb.ENCODING_UINT8, pb.ENCODING_PNG])
def test_encodings(stub, encoding):
    ref = arr(stub.Sample(pb.SampleRequest(n=3, seed=5)).samples)
    r = stub.Sample(pb.SampleRequest(n=3, seed=5, encoding=encoding))
    expect_u8 = np.round((ref + 1) / 2 * 255).astype(np.uint8)
    if encoding in (pb.ENCODING_UNSPECIFIED, pb.ENCODING_FLOAT32):
        assert r.samples.dtype == pb.FLOAT32 and np.array_equal(arr(r.samples), ref)
    elif encoding == pb.ENCODING_UINT8:
        assert r.samples.dtype == pb.UINT8 and np.array_equal(arr(r.samples), expect_u8)
    else:
        assert len(r.png) == 3 and not r.samples.data
        decoded = np.stack([np.array(Image.open(io.BytesIO(b)))[None] for b in r.png])
        assert decoded.dtype == np.uint8 and np.array_equal(decoded, expect_u8)


def test_points_model(stub):
    r = stub.Sample(pb.SampleRequest(model="tiny-points", n=5, seed=2))
    z = latent_fn.latents(2, 5, 2)
    expect = z @ np.array([[1.0, 0.5], [-0.5, 1.0]]) + np.array([0.2, -0.1])
    np.testing.assert_allclose(arr(r.samples), expect, atol=1e-5)


def test_conditional_hard_labels_one_and_per_sample(stub):
    one = stub.SampleConditional(pb.SampleConditionalRequest(n=4, seed=3, labels=[2]))
    assert one.model == "tiny-cgan@1"
    np.testing.assert_array_equal(arr(one.conditions), np.eye(CLASSES, dtype=np.float32)[[2, 2, 2, 2]])
    per = stub.SampleConditional(pb.SampleConditionalRequest(n=4, seed=3, labels=[0, 1, 2, 3]))
    y = np.eye(CLASSES, dtype=np.float32)
    z = latent_fn.latents(3, 4, LATENT)
    np.testing.assert_allclose(arr(per.samples), reference_generator(z, y), atol=2e-6)
    # the evaluator recognises the requested class
    ev = stub.EvaluateDivergence(pb.EvaluateDivergenceRequest(
        p=pb.DataSource(samples=tensors.from_array(np.array([3] * 200))),
        q=pb.DataSource(model=pb.ModelSource(model="tiny-cgan", labels=[3])), metrics=["tv"], n=200, seed=0))
    assert ev.results[0].value == pytest.approx(0.0, abs=1e-12)


def test_soft_labels(stub):
    soft = np.array([[0.5, 0.5, 0.0, 0.0]], np.float32)
    r = stub.SampleConditional(pb.SampleConditionalRequest(n=3, seed=4, soft_labels=tensors.from_array(soft)))
    z = latent_fn.latents(4, 3, LATENT)
    np.testing.assert_allclose(arr(r.samples), reference_generator(z, np.repeat(soft, 3, 0)), atol=2e-6)
    rows = np.random.default_rng(1).dirichlet(np.ones(CLASSES), 3).astype(np.float32)
    r = stub.SampleConditional(pb.SampleConditionalRequest(n=3, seed=4, soft_labels=tensors.from_array(rows)))
    np.testing.assert_allclose(arr(r.samples), reference_generator(z, rows), atol=2e-6)


# -- determinism ------------------------------------------------------------------------------------------

def test_same_seed_same_samples_whatever_the_batch(stub):
    big = arr(stub.Sample(pb.SampleRequest(n=300, seed=9)).samples)  # 300 > max_batch_size 64: five runs
    z = latent_fn.latents(9, 300, LATENT)
    for i in (0, 63, 64, 299):
        one = arr(stub.Sample(pb.SampleRequest(latents=tensors.from_array(z[i:i + 1]))).samples)
        np.testing.assert_array_equal(one[0], big[i])


def test_concurrent_requests_are_batched_and_identical(model_store):
    running = start_server(model_store, reload_interval_s=0, max_queue_delay_ms=100, metrics_port=-1)
    try:
        channel = grpc.insecure_channel(running.target)
        stub = pb_grpc.GeneratorServiceStub(channel)
        alone = [arr(stub.Sample(pb.SampleRequest(n=3, seed=s)).samples) for s in range(8)]
        out = [None] * 8
        threads = [threading.Thread(target=lambda s=s: out.__setitem__(
            s, arr(stub.Sample(pb.SampleRequest(n=3, seed=s)).samples))) for s in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for a, b in zip(alone, out):
            np.testing.assert_array_equal(a, b)
        hist = running.app.telemetry.registry.get_sample_value
        runs = hist("ganserve_batch_samples_count", {"model": "tiny-gan@1"})
        rows = hist("ganserve_batch_samples_sum", {"model": "tiny-gan@1"})
        assert rows == 48 and runs < 16, (runs, rows)  # 16 requests of 3 rows took fewer than 16 runs
        channel.close()
    finally:
        running.app.stop(0)


def test_stream_equals_sample_and_supports_offset(stub):
    full = arr(stub.Sample(pb.SampleRequest(n=1000, seed=21)).samples)
    chunks = list(stub.SampleStream(pb.SampleStreamRequest(n=1000, seed=21, chunk_size=128)))
    assert [c.start for c in chunks] == list(range(0, 1000, 128)) and {c.seed for c in chunks} == {21}
    np.testing.assert_array_equal(np.concatenate([arr(c.samples) for c in chunks]), full)
    tail = list(stub.SampleStream(pb.SampleStreamRequest(n=300, seed=21, offset=700, chunk_size=256)))
    assert [c.start for c in tail] == [700, 956]
    np.testing.assert_array_equal(np.concatenate([arr(c.samples) for c in tail]), full[700:])


def test_stream_conditional_and_png(stub):
    labels = [i % CLASSES for i in range(10)]
    ref = stub.SampleConditional(pb.SampleConditionalRequest(n=10, seed=2, labels=labels, encoding=pb.ENCODING_PNG))
    chunks = list(stub.SampleStream(pb.SampleStreamRequest(n=10, seed=2, labels=labels, chunk_size=4,
                                                           encoding=pb.ENCODING_PNG)))
    assert chunks[0].model == "tiny-cgan@1" and [len(c.png) for c in chunks] == [4, 4, 2]
    assert [p for c in chunks for p in c.png] == list(ref.png)


def test_stream_per_sample_labels_follow_each_chunk_offset(stub):
    """Per-sample labels whose period (3) does not divide the chunk size (4), from offset 5: chunk k must use
    labels[4k:4k+4], checked against the numpy reference generator, not against the server's own Sample."""
    n, offset, chunk = 11, 5, 4
    labels = [i % 3 for i in range(n)]  # chunks [0 1 2 0] [1 2 0 1] [2 0 1]; y[:size] would repeat the first
    chunks = list(stub.SampleStream(pb.SampleStreamRequest(model="tiny-cgan", n=n, seed=8, offset=offset,
                                                           labels=labels, chunk_size=chunk, return_latents=True)))
    assert [c.start for c in chunks] == [5, 9, 13] and [len(arr(c.samples)) for c in chunks] == [4, 4, 3]
    z = latent_fn.latents(8, n, LATENT, offset=offset)
    np.testing.assert_array_equal(np.concatenate([arr(c.latents) for c in chunks]), z)
    y = np.eye(CLASSES, dtype=np.float32)[labels]
    got = np.concatenate([arr(c.samples) for c in chunks])
    np.testing.assert_allclose(got, reference_generator(z, y), rtol=0, atol=2e-6)


# -- interpolation ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("method,name", [(pb.LINEAR, "linear"), (pb.SLERP, "slerp"),
                                         (pb.INTERPOLATION_METHOD_UNSPECIFIED, "slerp")])
def test_interpolate_seeds_and_latents(stub, method, name):
    z3 = np.random.default_rng(0).standard_normal(LATENT).astype(np.float32)
    r = stub.Interpolate(pb.InterpolateRequest(
        model="tiny-gan", steps=5, method=method,
        endpoints=[pb.Endpoint(seed=1), pb.Endpoint(seed=2), pb.Endpoint(latent=tensors.from_array(z3))]))
    points = np.stack([latent_fn.latents(1, 1, LATENT)[0], latent_fn.latents(2, 1, LATENT)[0], z3])
    path, t = latent_fn.path(points, 5, name)
    np.testing.assert_array_equal(arr(r.latents), path)
    np.testing.assert_allclose(list(r.t), t)
    np.testing.assert_allclose(arr(r.samples), reference_generator(path), atol=2e-6)
    assert len(r.t) == 9


def test_interpolate_class_morphing(stub):
    soft = np.array([0.0, 0.5, 0.5, 0.0], np.float32)
    r = stub.Interpolate(pb.InterpolateRequest(
        model="tiny-cgan", steps=3, endpoints=[pb.Endpoint(seed=1, label=0),
                                               pb.Endpoint(seed=1, soft_label=tensors.from_array(soft))]))
    np.testing.assert_allclose(arr(r.conditions), [[1, 0, 0, 0], [0.5, 0.25, 0.25, 0], [0, 0.5, 0.5, 0]], atol=1e-6)


def test_interpolate_from_images_inverts_them_first(stub):
    x = arr(stub.Sample(pb.SampleRequest(n=2, seed=8)).samples)
    r = stub.Interpolate(pb.InterpolateRequest(model="tiny-gan", steps=4, endpoints=[
        pb.Endpoint(image=tensors.from_array(x[0])), pb.Endpoint(image=tensors.from_array(x[1:2]))]))
    s = arr(r.samples)
    # HYBRID: the tiny encoder inverts its generator exactly, then Adam trades a little pixel error for the prior
    np.testing.assert_allclose(s[0], x[0], atol=2e-2)
    np.testing.assert_allclose(s[-1], x[1], atol=2e-2)
    assert np.abs(s[1] - x[0]).max() > 0.05  # the middle of the path is neither end


# -- inversion --------------------------------------------------------------------------------------------

def test_invert_methods(stub):
    x = arr(stub.Sample(pb.SampleRequest(n=4, seed=12)).samples)
    z = latent_fn.latents(12, 4, LATENT)
    enc = stub.Invert(pb.InvertRequest(model="tiny-gan", images=tensors.from_array(x), method=pb.ENCODER))
    assert enc.method == pb.ENCODER and enc.steps == 0
    np.testing.assert_allclose(arr(enc.latents), z, atol=1e-3)
    assert max(enc.mse) < 1e-8
    opt = stub.Invert(pb.InvertRequest(model="tiny-gan", images=tensors.from_array(x), method=pb.OPTIMIZE, steps=200,
                                       learning_rate=0.1))
    assert opt.method == pb.OPTIMIZE and opt.steps == 200
    assert max(opt.mse) < 1e-3  # from z = 0 to (nearly) the true latent by Adam on the analytic gradient
    start = float(np.mean(((reference_generator(np.zeros((4, LATENT))) - x) / 2) ** 2))
    assert np.mean(opt.mse) < start / 20
    hyb = stub.Invert(pb.InvertRequest(model="tiny-gan", images=tensors.from_array(x)))
    assert hyb.method == pb.HYBRID and max(hyb.mse) < 1e-4
    np.testing.assert_allclose(arr(hyb.reconstructions), x, atol=2e-2)


def test_invert_uint8_and_conditional_labels_guessed_by_the_evaluator(stub):
    r = stub.SampleConditional(pb.SampleConditionalRequest(n=4, seed=1, labels=[0, 1, 2, 3], encoding=pb.ENCODING_UINT8))
    inv = stub.Invert(pb.InvertRequest(model="tiny-cgan", images=r.samples, method=pb.ENCODER, encoding=pb.ENCODING_PNG))
    assert len(inv.png) == 4 and max(inv.mse) < 1e-4
    given = stub.Invert(pb.InvertRequest(model="tiny-cgan", images=r.samples, labels=[0, 1, 2, 3], method=pb.ENCODER))
    np.testing.assert_allclose(arr(given.latents), arr(
        stub.Invert(pb.InvertRequest(model="tiny-cgan", images=r.samples, method=pb.ENCODER)).latents), atol=1e-6)


# -- health, reflection, metrics --------------------------------------------------------------------------

def test_health_serving(server):
    with grpc.insecure_channel(server.target) as channel:
        h = health_pb2_grpc.HealthStub(channel)
        for name in ("", "ganserve.v1.GeneratorService"):
            assert h.Check(health_pb2.HealthCheckRequest(service=name)).status == health_pb2.HealthCheckResponse.SERVING


def test_health_not_serving_until_models_load(model_store):
    from server.app import create_server
    from server.config import Config

    _, port, app = create_server(Config(address="127.0.0.1:0", store=str(model_store), metrics_port=-1))
    app.server.start()  # answering, store not loaded yet
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            h = health_pb2_grpc.HealthStub(channel)
            assert h.Check(health_pb2.HealthCheckRequest()).status == health_pb2.HealthCheckResponse.NOT_SERVING
            with pytest.raises(grpc.RpcError) as err:
                pb_grpc.GeneratorServiceStub(channel).Sample(pb.SampleRequest(n=1))
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            app.load()
            assert h.Check(health_pb2.HealthCheckRequest()).status == health_pb2.HealthCheckResponse.SERVING
    finally:
        app.stop(0)


def test_reflection_client_calls_without_our_stubs(server):
    from grpc_requests import Client as ReflectionClient

    client = ReflectionClient(server.target)
    assert "ganserve.v1.GeneratorService" in client.service_names
    models = client.request("ganserve.v1.GeneratorService", "ListModels", {})
    assert {m["name"] for m in models["models"]} == {"tiny-cgan", "tiny-eval", "tiny-gan", "tiny-points"}
    r = client.request("ganserve.v1.GeneratorService", "SampleConditional",
                       {"model": "tiny-cgan", "n": 2, "seed": "5", "labels": [1], "encoding": "ENCODING_UINT8"})
    assert r["model"] == "tiny-cgan@1" and r["samples"]["shape"] == ["2", "1", "8", "8"]
    assert r["samples"]["dtype"] == "UINT8"


def test_prometheus_metrics(server, stub):
    stub.Sample(pb.SampleRequest(model="tiny-gan", n=2, seed=1))
    with pytest.raises(grpc.RpcError):
        stub.Sample(pb.SampleRequest(model="tiny-gan", n=0))
    port = server.app.metrics_port
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    assert 'ganserve_requests_total{code="OK",method="Sample",model="tiny-gan@1"}' in text
    assert 'ganserve_requests_total{code="INVALID_ARGUMENT",method="Sample",model="tiny-gan@1"}' in text
    # latency per model: a dashboard tells a slow model from a fast one
    stub.SampleConditional(pb.SampleConditionalRequest(model="tiny-cgan", n=2, seed=1, labels=[1]))
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    assert 'ganserve_request_seconds_count{method="Sample",model="tiny-gan@1"}' in text
    assert 'ganserve_request_seconds_count{method="SampleConditional",model="tiny-cgan@1"}' in text
    assert 'ganserve_request_seconds_bucket{le="0.005",method="Sample",model="tiny-gan@1"}' in text
    assert 'ganserve_model_loaded{kind="cgan",model="tiny-cgan",version="1"} 1.0' in text
    assert "ganserve_batch_samples_bucket" in text and "ganserve_queue_depth" in text


def test_unexpected_errors_are_internal_not_unknown(server, stub, monkeypatch):
    from server import engine

    def broken(*args, **kwargs):
        raise ZeroDivisionError("boom")

    monkeypatch.setattr(engine, "generate", broken)
    with pytest.raises(grpc.RpcError) as err:
        stub.Sample(pb.SampleRequest(n=1, seed=1))
    assert err.value.code() == grpc.StatusCode.INTERNAL and "ZeroDivisionError" in err.value.details()
    assert "boom" not in err.value.details()  # the traceback goes to the log, not to the client


def test_the_server_stops_work_past_the_deadline(server, stub):
    def count():
        return server.app.telemetry.registry.get_sample_value(
            "ganserve_requests_total", {"method": "Invert", "model": "tiny-gan@1", "code": "DEADLINE_EXCEEDED"}) or 0

    before = count()
    images = tensors.from_array(np.zeros((256, 1, 8, 8), np.float32))
    with pytest.raises(grpc.RpcError) as err:
        stub.Invert(pb.InvertRequest(model="tiny-gan", images=images, method=pb.OPTIMIZE, steps=500), timeout=0.05)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    deadline = time.monotonic() + 10
    while count() == before and time.monotonic() < deadline:  # the server gave up too (it did not finish OK)
        time.sleep(0.02)
    assert count() == before + 1
