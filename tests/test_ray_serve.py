"""ganserve on Ray Serve (server/ray_serve.py): two replicas behind Serve's gRPC proxy answer our SDK, a plain
v1 gRPC client and a v2 (Open Inference Protocol) client with the bytes `python -m server` answers for a seed,
keep the chosen status codes and field violations, report health, and both serve a version published into the
store while they run. With a token configured, calls without it are refused as `python -m server` refuses them
(gRPC UNAUTHENTICATED, REST 401) except the probes; the replicas keep the proxies' request_timeout_s as deadline."""

from __future__ import annotations

import asyncio
import json
import shutil
import time

import grpc
import numpy as np
import pytest

serve = pytest.importorskip("ray.serve", reason="the Ray Serve deployment needs: pip install -e '.[ray]'")

import ray  # noqa: E402
from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: E402
from ray.serve.config import gRPCOptions, HTTPOptions  # noqa: E402

import ganserve  # noqa: E402
import protos  # noqa: E402
from protos import tensors  # noqa: E402
import server  # noqa: E402
from ganserve.scale import cluster  # noqa: E402
from protos.ganserve.v1 import generator_pb2 as pb  # noqa: E402
from protos.ganserve.v1 import generator_pb2_grpc as pb_grpc  # noqa: E402
from protos.inference import grpc_predict_v2_pb2 as v2  # noqa: E402
from protos.inference import grpc_predict_v2_pb2_grpc as v2_grpc  # noqa: E402
from sdk import Client, InvalidArgumentError  # noqa: E402
from server import ray_serve  # noqa: E402
from tests.conftest import free_port, publish_gan  # noqa: E402
from tests.test_oip import http, json_inputs, grpc_request  # noqa: E402

pytestmark = pytest.mark.timeout(300)
SECRET = "s3cret-ray"
TOKEN = ("authorization", f"Bearer {SECRET}")
TIMEOUTS = ray_serve.Timeouts(grpc=97.0, http=89.0)  # the proxies' request_timeout_s


@pytest.fixture(scope="module")
def serve_app(model_store, tmp_path_factory):
    """The app with 2 replicas on a local loopback Ray cluster of 2 CPUs, over a copy of the tiny store, the token
    in a file (auth_token_file, as `python -m server` takes it): (gRPC proxy target, store, HTTP proxy port)."""
    root = tmp_path_factory.mktemp("serve")
    store, token_file = root / "store", root / "token"
    shutil.copytree(model_store, store)
    token_file.write_text(SECRET + "\n")
    cluster.connect("local", runtime_env={"py_modules": [ganserve, protos, server]}, num_cpus=2)
    try:
        port, http_port = free_port(), free_port()
        serve.start(http_options=HTTPOptions(host="127.0.0.1", port=http_port, request_timeout_s=TIMEOUTS.http),
                    grpc_options=gRPCOptions(port=port, grpc_servicer_functions=ray_serve.SERVICER_FUNCTIONS,
                                             request_timeout_s=TIMEOUTS.grpc))
        serve.run(ray_serve.Ganserve.options(num_replicas=2).bind(store=str(store), reload_interval_s=0.2,
                                                                  auth_token_file=str(token_file)),
                  name="ganserve")
        yield f"127.0.0.1:{port}", store, http_port
    finally:
        serve.shutdown()
        ray.shutdown()


def replies(target: str, method: str, request, n: int):
    """`n` calls of `method` on a plain stub with the token: [(reply, replica id)]."""
    with grpc.insecure_channel(target) as ch:
        call = getattr(pb_grpc.GeneratorServiceStub(ch), method).with_call
        out = []
        for _ in range(n):
            reply, c = call(request, timeout=30, metadata=[TOKEN])
            out.append((reply, dict(c.trailing_metadata())[ray_serve.REPLICA_KEY]))
        return out


def test_same_bytes_as_python_m_server(serve_app, server):
    target, _, _ = serve_app
    requests = {"Sample": pb.SampleRequest(model="tiny-gan", n=5, seed=11),
                "SampleConditional": pb.SampleConditionalRequest(model="tiny-cgan", n=5, seed=11, labels=[3],
                                                                 encoding=pb.ENCODING_UINT8)}
    for method, request in requests.items():
        with grpc.insecure_channel(server.target) as ch:
            want = getattr(pb_grpc.GeneratorServiceStub(ch), method)(request, timeout=30)
        got = replies(target, method, request, 6)  # both replicas, most likely
        assert len(want.samples.data) > 0
        for reply, _ in got:
            assert reply.SerializeToString() == want.SerializeToString()
    # the Open Inference Protocol (v2) through the same proxy: the reply python -m server gives
    v2_request = grpc_request("tiny-cgan", {"seed": ("INT64", [8]), "labels": ("INT64", [1, 3])})
    with grpc.insecure_channel(target) as ours, grpc.insecure_channel(server.target) as theirs:
        got = v2_grpc.GRPCInferenceServiceStub(ours).ModelInfer(v2_request, timeout=30, metadata=[TOKEN])
        want = v2_grpc.GRPCInferenceServiceStub(theirs).ModelInfer(v2_request, timeout=30)
        assert got.SerializeToString() == want.SerializeToString() and len(got.raw_output_contents[0]) == 2 * 64 * 4
        assert v2_grpc.GRPCInferenceServiceStub(ours).ServerReady(v2.ServerReadyRequest(), timeout=30).ready
    with Client(target, token=SECRET) as ours, Client(server.target) as theirs:
        np.testing.assert_array_equal(ours.sample(n=7, seed=3, model="tiny-gan"),
                                      theirs.sample(n=7, seed=3, model="tiny-gan"))
        np.testing.assert_array_equal(ours.sample(n=4, label=2, seed=3, model="tiny-cgan", encoding="png"),
                                      theirs.sample(n=4, label=2, seed=3, model="tiny-cgan", encoding="png"))
        ours_s, theirs_s = ([c.images for c in client.stream(2500, seed=4, model="tiny-gan", chunk_size=1000)]
                            for client in (ours, theirs))
        np.testing.assert_array_equal(np.concatenate(ours_s), np.concatenate(theirs_s))
        with pytest.raises(InvalidArgumentError) as bad:
            ours.sample(n=2, labels=[9], seed=1, model="tiny-cgan")
        assert bad.value.field == "labels[0]" and "must be in 0..3, got 9" in str(bad.value)


def test_health_through_the_proxy(serve_app):
    target, _, http_port = serve_app
    with grpc.insecure_channel(target) as ch:  # probes need no token
        reply = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=30)
        assert v2_grpc.GRPCInferenceServiceStub(ch).ServerLive(v2.ServerLiveRequest(), timeout=30).live
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    assert [http(http_port, f"/v2/health/{probe}")[:1] for probe in ("live", "ready")] == [(200,), (200,)]


def test_calls_without_the_token_are_refused_as_the_server_refuses_them(serve_app, server):
    target, _, http_port = serve_app
    wrong = ("authorization", "Bearer nope")
    with grpc.insecure_channel(target) as ch:
        v1, oip = pb_grpc.GeneratorServiceStub(ch), v2_grpc.GRPCInferenceServiceStub(ch)
        calls = {"Sample": lambda md: v1.Sample(pb.SampleRequest(model="tiny-gan", n=2, seed=1), timeout=30,
                                                metadata=md),
                 "SampleStream": lambda md: list(v1.SampleStream(pb.SampleStreamRequest(model="tiny-gan", n=3, seed=1),
                                                                 timeout=30, metadata=md)),
                 "ListModels": lambda md: v1.ListModels(pb.ListModelsRequest(), timeout=30, metadata=md),
                 "ModelInfer": lambda md: oip.ModelInfer(grpc_request("tiny-gan", {"seed": ("INT64", [1])}),
                                                         timeout=30, metadata=md)}
        for name, call in calls.items():
            for metadata in ([], [wrong], [("authorization", SECRET)]):  # none, wrong, not a bearer
                with pytest.raises(grpc.RpcError) as err:
                    call(metadata)
                assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED, (name, metadata)
                assert "bearer token" in err.value.details()
            assert call([TOKEN])  # the same call with the token is served
        with pytest.raises(grpc.RpcError) as err:  # a stream refused before its first message keeps its code
            list(v1.SampleStream(pb.SampleStreamRequest(model="no-such-model", n=3), timeout=30, metadata=[TOKEN]))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND and "no-such-model" in err.value.details()
    body = {"inputs": json_inputs({"seed": ("INT64", [4]), "n": ("INT64", [3])})}
    for path, data in (("/v2/models/tiny-gan/infer", body), ("/v2/models/tiny-gan", None), ("/v2", None)):
        for headers in ({}, dict([wrong])):
            status, head, reply = http(http_port, path, data, headers)
            assert (status, head["www-authenticate"]) == (401, "Bearer"), (path, headers, reply)
            assert json.loads(reply) == {"error": "missing or wrong bearer token (header Authorization)"}
    # with the token: the samples python -m server gives for the seed, over Serve's HTTP proxy
    status, _, reply = http(http_port, "/v2/models/tiny-gan/infer", body, dict([TOKEN]))
    assert status == 200, reply
    (out,) = json.loads(reply)["outputs"]
    with grpc.insecure_channel(server.target) as ch:
        want = pb_grpc.GeneratorServiceStub(ch).Sample(pb.SampleRequest(model="tiny-gan", n=3, seed=4), timeout=30)
    assert out["shape"] == [3, 1, 8, 8]
    assert np.asarray(out["data"], np.float32).tobytes() == tensors.to_array(want.samples).tobytes()


def test_replicas_take_the_proxies_request_timeouts(serve_app):
    # Serve does not pass the client's deadline on: a replica asks the controller for its proxies' timeouts
    assert asyncio.run(ray_serve.proxy_timeouts()) == TIMEOUTS
    t0 = time.monotonic()
    left = ray_serve._Context(None, "r", TIMEOUTS.grpc).time_remaining()
    assert TIMEOUTS.grpc - (time.monotonic() - t0) - 1e-6 <= left <= TIMEOUTS.grpc
    assert ray_serve._Context(None, "r").time_remaining() is None
    rest = ray_serve.ServeRestApi(None, ray_serve.settings({}), None, None, None, timeout_s=TIMEOUTS.http)
    for headers, timeout in (({}, TIMEOUTS.http), ({b"x-request-timeout-seconds": b"2.5"}, 2.5),
                             ({b"x-request-timeout-seconds": b"0"}, None)):  # (0: no timeout, as the proxy reads it)
        t0 = time.monotonic()
        deadline = rest.deadline(headers)
        assert deadline is None if timeout is None else t0 + timeout <= deadline <= time.monotonic() + timeout


def test_a_published_version_is_served_by_both_replicas(serve_app, tmp_path):
    target, store, _ = serve_app
    before = replies(target, "GetModel", pb.GetModelRequest(model="tiny-gan"), 8)
    assert {r.version for r, _ in before} == {1}
    publish_gan(store, tmp_path, seed=1)  # tiny-gan@2, other weights
    seen: dict[str, int] = {}
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (len(seen) == 2 and set(seen.values()) == {2}):
        for reply, replica in replies(target, "Sample", pb.SampleRequest(model="tiny-gan", n=1, seed=1), 4):
            seen[replica] = int(reply.model.rsplit("@", 1)[1])
        time.sleep(0.1)
    assert len(seen) == 2 and set(seen.values()) == {2}, seen
