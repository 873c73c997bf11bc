"""Bad input: every mistake gets a chosen status and a message naming the field.

The cases below are also docs/bad_input.md (input -> status -> message): `python -m tests.test_server_bad_input
> docs/bad_input.md` writes the page from a live server over the tiny test models, and a test fails when the
committed page differs. The hypothesis test throws random and malformed requests at every RPC of a server checked
live first: each answer is one of the statuses listed for that RPC (never UNKNOWN, INTERNAL or UNAVAILABLE) or a
reply that answers the request, and the server stays healthy.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import grpc
import numpy as np
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ganserve.metrics import METRICS as METRIC_NAMES
from protos import tensors
from protos.ganserve.v1 import generator_pb2 as pb
from protos.ganserve.v1 import generator_pb2_grpc as pb_grpc
from tests.conftest import publish_cgan, publish_evaluator, publish_gan, publish_points, start_server

IA, NF, FP, RE = (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION,
                  grpc.StatusCode.RESOURCE_EXHAUSTED)
T = tensors.from_array
NAN = float("nan")


def _t(shape, dtype=pb.FLOAT32, data=None, fill=0.0):
    if data is None:
        data = np.full(shape, fill, np.float32).tobytes()
    return pb.Tensor(shape=list(shape), dtype=dtype, data=data)


def _img(n=1, fill=0.0):
    return T(np.full((n, 1, 8, 8), fill, np.float32))


SR, SCR, SSR, IR, INV, EV = (pb.SampleRequest, pb.SampleConditionalRequest, pb.SampleStreamRequest,
                             pb.InterpolateRequest, pb.InvertRequest, pb.EvaluateDivergenceRequest)
E = pb.Endpoint
DS = pb.DataSource

# (description, method, request, status, field named in the BadRequest details)
CASES = [
    ("unknown model", "GetModel", pb.GetModelRequest(model="nope"), NF, "model"),
    ("unknown version", "GetModel", pb.GetModelRequest(model="tiny-gan@7"), NF, "model"),
    ("empty model name in GetModel", "GetModel", pb.GetModelRequest(), IA, "model"),
    ("path trick `../tiny-gan`", "Sample", SR(model="../tiny-gan", n=1), IA, "model"),
    ("absolute path `/etc/passwd`", "Sample", SR(model="/etc/passwd", n=1), IA, "model"),
    ("NUL byte in the name", "Sample", SR(model="tiny\x00gan", n=1), IA, "model"),
    ("path trick in the version `tiny-gan@../1`", "Sample", SR(model="tiny-gan@../1", n=1), IA, "model"),
    ("version 0", "Sample", SR(model="tiny-gan@0", n=1), IA, "model"),
    ("n = 0", "Sample", SR(n=0), IA, "n"),
    ("n over the limit (1025 > 1024)", "Sample", SR(n=1025), IA, "n"),
    ("truncation NaN", "Sample", SR(n=1, truncation=NAN), IA, "truncation"),
    ("truncation too small (0.01)", "Sample", SR(n=1, truncation=0.01), IA, "truncation"),
    ("latents with NaN", "Sample", SR(latents=_t((1, 8), fill=NAN)), IA, "latents.data"),
    ("latents with Inf", "Sample", SR(latents=_t((1, 8), fill=math.inf)), IA, "latents.data"),
    ("latents of the wrong shape", "Sample", SR(latents=_t((2, 7))), IA, "latents.shape"),
    ("latents of the wrong dtype", "Sample", SR(latents=T(np.zeros((1, 8), np.uint8))), IA, "latents.dtype"),
    ("latents without a dtype", "Sample", SR(latents=_t((1, 8), dtype=pb.DTYPE_UNSPECIFIED)), IA, "latents.dtype"),
    ("latents data length not matching the shape", "Sample", SR(latents=_t((1, 8), data=b"\0" * 31)), IA,
     "latents.data"),
    ("negative dimension", "Sample", SR(latents=_t((-1, 8), data=b"")), IA, "latents.shape"),
    ("a latent entry beyond the server's bound", "Sample", SR(latents=_t((1, 8), fill=2e4)), IA, "latents.data"),
    ("more latent values than n x latent_dim allows", "Sample", SR(latents=_t((2000, 8))), IA, "latents.shape"),
    ("unknown encoding", "Sample", SR(n=1, encoding=99), IA, "encoding"),
    ("PNG for a points model", "Sample", SR(model="tiny-points", n=1, encoding=pb.ENCODING_PNG), IA, "encoding"),
    ("Sample on a conditional model", "Sample", SR(model="tiny-cgan", n=1), IA, "model"),
    ("Sample on the evaluator", "Sample", SR(model="tiny-eval", n=1), IA, "model"),
    ("label out of range (4 of 0..3)", "SampleConditional", SCR(n=2, labels=[4]), IA, "labels[0]"),
    ("negative label", "SampleConditional", SCR(n=2, labels=[1, -1]), IA, "labels[1]"),
    ("label count not 1 and not n", "SampleConditional", SCR(n=5, labels=[1, 2, 3]), IA, "labels"),
    ("no labels for a conditional model", "SampleConditional", SCR(n=2), IA, "labels"),
    ("labels and soft labels together", "SampleConditional",
     SCR(n=1, labels=[1], soft_labels=T(np.eye(4, dtype=np.float32)[:1])), IA, "labels"),
    ("negative soft label", "SampleConditional",
     SCR(n=1, soft_labels=T(np.array([[1.5, -0.5, 0, 0]], np.float32))), IA, "soft_labels.data"),
    ("soft labels not summing to 1", "SampleConditional",
     SCR(n=1, soft_labels=T(np.array([[0.5, 0.4, 0, 0]], np.float32))), IA, "soft_labels.data"),
    ("soft labels of the wrong shape", "SampleConditional", SCR(n=2, soft_labels=_t((2, 3), fill=1 / 3)), IA,
     "soft_labels.shape"),
    ("soft labels with NaN", "SampleConditional", SCR(n=1, soft_labels=_t((1, 4), fill=NAN)), IA,
     "soft_labels.data"),
    ("labels for an unconditional model", "SampleConditional", SCR(model="tiny-gan", n=1, labels=[1]), IA, "model"),
    ("stream n = 0", "SampleStream", SSR(n=0), IA, "n"),
    ("stream n over the limit", "SampleStream", SSR(n=10_000_001), IA, "n"),
    ("stream labels for an unconditional model", "SampleStream", SSR(model="tiny-gan", n=3, labels=[1]), IA, "labels"),
    ("one endpoint", "Interpolate", IR(endpoints=[E(seed=1)], steps=3), IA, "endpoints"),
    ("steps 0", "Interpolate", IR(endpoints=[E(seed=1), E(seed=2)], steps=0), IA, "steps"),
    ("steps over the limit (257)", "Interpolate", IR(endpoints=[E(seed=1), E(seed=2)], steps=257), IA, "steps"),
    ("empty endpoint", "Interpolate", IR(endpoints=[E(seed=1), E()], steps=3), IA, "endpoints[1]"),
    ("endpoint latent of the wrong shape", "Interpolate",
     IR(endpoints=[E(latent=_t((3,))), E(seed=2)], steps=3), IA, "endpoints[0].latent.shape"),
    ("endpoint image outside [-1, 1]", "Interpolate",
     IR(endpoints=[E(image=_img(fill=2.0)), E(seed=2)], steps=3), IA, "endpoints[0].image.data"),
    ("endpoint label for an unconditional model", "Interpolate",
     IR(endpoints=[E(seed=1, label=1), E(seed=2)], steps=3), IA, "endpoints[0].label"),
    ("endpoint without a label on a conditional model", "Interpolate",
     IR(model="tiny-cgan", endpoints=[E(seed=1), E(seed=2, label=1)], steps=3), IA, "endpoints[0].label"),
    ("endpoint soft label not summing to 1", "Interpolate",
     IR(model="tiny-cgan", endpoints=[E(seed=1, soft_label=_t((4,), fill=0.5)), E(seed=2, label=1)], steps=3), IA,
     "endpoints[0].soft_label.data"),
    ("no images", "Invert", INV(model="tiny-gan"), IA, "images"),
    ("images with NaN", "Invert", INV(images=_img(fill=NAN)), IA, "images.data"),
    ("image values outside the value range", "Invert", INV(images=_img(fill=3.0)), IA, "images.data"),
    ("images of the wrong shape", "Invert", INV(images=_t((1, 1, 9, 9))), IA, "images.shape"),
    ("images of the wrong dtype", "Invert", INV(images=T(np.zeros((1, 1, 8, 8), np.int64))), IA, "images.dtype"),
    ("too many images (257 > 256)", "Invert", INV(images=_img(257)), IA, "images.shape"),
    ("inversion steps over the limit", "Invert", INV(images=_img(), steps=501), IA, "steps"),
    ("negative prior weight", "Invert", INV(images=_img(), prior_weight=-1.0), IA, "prior_weight"),
    ("learning rate NaN", "Invert", INV(images=_img(), learning_rate=NAN), IA, "learning_rate"),
    ("Invert a model with neither encoder nor gradient graph", "Invert",
     INV(model="tiny-points", images=_t((1, 2))), FP, "method"),
    ("label out of range in Invert", "Invert", INV(model="tiny-cgan", images=_img(), labels=[9]), IA, "labels[0]"),
    ("empty EvaluateDivergence", "EvaluateDivergence", EV(), IA, "p"),
    ("unknown metric", "EvaluateDivergence",
     EV(p=DS(reference="ring8"), q=DS(model=pb.ModelSource(model="tiny-points")), metrics=["fid"]), IA, "metrics[0]"),
    ("evaluation n over the limit", "EvaluateDivergence",
     EV(p=DS(reference="ring8"), q=DS(reference="ring8"), n=10_001), IA, "n"),
    ("unknown reference", "EvaluateDivergence", EV(p=DS(reference="imagenet"), q=DS(reference="ring8")), IA,
     "p.reference"),
    ("bootstrap over the limit", "EvaluateDivergence",
     EV(p=DS(reference="ring8"), q=DS(reference="ring8"), bootstrap=100_000), IA, "bootstrap"),
    ("confidence outside (0, 1)", "EvaluateDivergence",
     EV(p=DS(reference="ring8"), q=DS(reference="ring8"), confidence=1.5), IA, "confidence"),
    ("uploaded samples with NaN", "EvaluateDivergence",
     EV(p=DS(samples=_t((10, 2), fill=NAN)), q=DS(reference="ring8")), IA, "p.samples.data"),
    ("negative histogram counts", "EvaluateDivergence",
     EV(p=DS(samples=T(np.array([3, 4], np.int64)), histogram=True),
        q=DS(samples=T(np.array([3, -4], np.int64)), histogram=True)), IA, "q.samples.data"),
    ("labels for an unconditional model side", "EvaluateDivergence",
     EV(p=DS(reference="ring8"), q=DS(model=pb.ModelSource(model="tiny-points", labels=[1]))), IA, "q.model.labels"),
    ("uploaded images with an empty dimension", "EvaluateDivergence",
     EV(p=DS(samples=_t((2, 0, 0, 0))), q=DS(reference="mnist-test")), IA, "p.samples.shape"),
    ("images against reference points", "EvaluateDivergence",
     EV(p=DS(reference="ring8"), q=DS(reference="mnist-test")), IA, "q"),
    ("generated points against images", "EvaluateDivergence",
     EV(p=DS(reference="mnist-test"), q=DS(model=pb.ModelSource(model="tiny-points"))), IA, "q"),
    ("unknown model side", "EvaluateDivergence",
     EV(p=DS(reference="ring8"), q=DS(model=pb.ModelSource(model="nope"))), NF, "q.model.model"),
    ("histogram metric on points without classes", "EvaluateDivergence",
     EV(p=DS(samples=_t((10, 3))), q=DS(samples=_t((10, 3))), metrics=["kl_pq"]), IA, "p"),
]


def _violation(err: grpc.RpcError) -> str | None:
    status = rpc_status.from_call(err)
    for detail in status.details if status else []:
        bad = error_details_pb2.BadRequest()
        if detail.Unpack(bad):
            return bad.field_violations[0].field
    return None


@pytest.fixture(scope="module")
def stub(server):
    channel = grpc.insecure_channel(server.target)
    yield pb_grpc.GeneratorServiceStub(channel)
    channel.close()


def _call(stub, method, request, timeout=30):
    call = getattr(stub, method)
    if method == "SampleStream":
        return list(call(request, timeout=timeout))
    return call(request, timeout=timeout)


@pytest.mark.parametrize("what,method,request_,code,field", CASES, ids=[c[0] for c in CASES])
def test_bad_input(stub, what, method, request_, code, field):
    with pytest.raises(grpc.RpcError) as err:
        _call(stub, method, request_)
    assert err.value.code() == code, err.value.details()
    assert _violation(err.value) == field
    assert err.value.details().startswith(f"{field}: ") and len(err.value.details()) > len(field) + 10


def test_oversize_message_is_resource_exhausted(model_store):
    from tests.conftest import start_server

    running = start_server(model_store, reload_interval_s=0, metrics_port=-1, max_request_bytes=1 << 20)
    try:
        with grpc.insecure_channel(running.target) as channel:
            stub = pb_grpc.GeneratorServiceStub(channel)
            big = T(np.zeros((300_000,), np.float32))  # 1.2 MB > 1 MiB
            with pytest.raises(grpc.RpcError) as err:
                stub.Invert(INV(images=big))
            assert err.value.code() == RE
            assert stub.Sample(SR(n=1, seed=1)).model == "tiny-gan@1"  # and the server carries on
    finally:
        running.app.stop(0)


# -- property test: random and malformed requests for every RPC -------------------------------------------

# Mostly valid values, so that random requests also reach the deep code paths, not only the first check.
_VALID_MODELS = st.sampled_from(["", "tiny-gan", "tiny-cgan", "tiny-points", "tiny-gan@1", "tiny-cgan@1"])
MODELS = _VALID_MODELS | _VALID_MODELS | _VALID_MODELS | st.sampled_from(
    ["tiny-eval", "tiny-gan@2", "nope", "../x", "a" * 100, "tiny-gan@", "@1", "TINY-GAN"]) | st.text(max_size=12)
TRUNCATIONS = st.just(0.0) | st.just(0.0) | st.sampled_from([0.5, -1.0, NAN, 0.01, 3.0])
FLOATS = st.floats(allow_nan=True, allow_infinity=True, width=32)


@st.composite
def tensor_msgs(draw):
    shape = draw(st.lists(st.integers(-2, 12), max_size=5))
    dtype = draw(st.integers(0, 4))
    count = int(np.prod([max(d, 0) for d in shape])) if shape else 1
    itemsize = {1: 4, 2: 1, 3: 8}.get(dtype, 4)
    if draw(st.booleans()) and dtype == 1 and count <= 4096:
        values = draw(st.lists(FLOATS, min_size=count, max_size=count))
        data = np.array(values, np.float32).tobytes()
    elif draw(st.booleans()) and count * itemsize <= 4096:
        data = bytes(count * itemsize)
    else:
        data = draw(st.binary(max_size=64))
    return pb.Tensor(shape=shape, dtype=dtype, data=data)


LABELS = st.lists(st.integers(-3, 12), max_size=6) | st.lists(st.integers(0, 3), min_size=1, max_size=1)
SEEDS = st.none() | st.integers(0, 2**64 - 1)


def _seeded(cls, seed, **kw):
    return cls(**kw) if seed is None else cls(seed=seed, **kw)


@st.composite
def requests(draw):
    method = draw(st.sampled_from(["ListModels", "GetModel", "Sample", "SampleConditional", "SampleStream",
                                   "Interpolate", "Invert", "EvaluateDivergence"]))
    model, seed = draw(MODELS), draw(SEEDS)
    common = dict(model=model, truncation=draw(TRUNCATIONS),
                  encoding=draw(st.integers(0, 4)))
    if method == "ListModels":
        return method, pb.ListModelsRequest(all_versions=draw(st.booleans()))
    if method == "GetModel":
        return method, pb.GetModelRequest(model=model)
    if method in ("Sample", "SampleConditional"):
        kw = dict(common, n=draw(st.integers(0, 1100)), return_latents=draw(st.booleans()))
        if draw(st.integers(0, 3)) == 0:
            kw["latents"] = draw(tensor_msgs())
        if method == "SampleConditional":
            kw["labels"] = draw(LABELS)
            if draw(st.integers(0, 3)) == 0:
                kw["soft_labels"] = draw(tensor_msgs())
            return method, _seeded(SCR, seed, **kw)
        return method, _seeded(SR, seed, **kw)
    if method == "SampleStream":
        kw = dict(common, n=draw(st.integers(0, 3000) | st.just(2**63)),
                  offset=draw(st.integers(0, 10**6) | st.integers(0, 2**64 - 1)),
                  chunk_size=draw(st.integers(0, 5000)), labels=draw(LABELS))
        if draw(st.integers(0, 3)) == 0:
            kw["soft_labels"] = draw(tensor_msgs())
        return method, _seeded(SSR, seed, **kw)
    if method == "Interpolate":
        eps = []
        for _ in range(draw(st.integers(0, 4) | st.just(2))):
            ep = pb.Endpoint()
            which = draw(st.sampled_from(["seed", "seed", "seed", "latent", "image", "none"]))
            if which == "seed":
                ep.seed = draw(st.integers(0, 2**64 - 1))
            elif which != "none":
                getattr(ep, which).CopyFrom(draw(tensor_msgs()))
            if draw(st.integers(0, 3)) == 0:
                ep.label = draw(st.integers(-2, 6))
            eps.append(ep)
        return method, IR(model=model, endpoints=eps, steps=draw(st.integers(0, 300) | st.integers(2, 9)),
                          method=draw(st.integers(0, 4)),
                          encoding=common["encoding"])
    if method == "Invert":
        images = draw(tensor_msgs() | st.just(_img(2)) | st.just(_img(1, fill=0.5)))
        rate = st.just(0.0) | st.just(0.0) | FLOATS
        return method, INV(model=model, images=images, labels=draw(st.just([]) | LABELS),
                           method=draw(st.integers(0, 5)), steps=draw(st.integers(0, 40) | st.just(600)),
                           learning_rate=draw(rate), prior_weight=draw(rate), encoding=common["encoding"])
    sources = st.sampled_from([DS(), DS(reference="ring8"), DS(reference="ring8"), DS(reference="grid25"), DS(reference="mnist-test"),
                               DS(reference="x"), DS(model=pb.ModelSource(model="tiny-points")),
                               DS(model=pb.ModelSource(model="tiny-cgan", labels=[1, 2])),
                               DS(model=pb.ModelSource(model="tiny-gan", truncation=NAN)),
                               DS(model=pb.ModelSource(model="tiny-gan")), DS(samples=_img(20, fill=0.5)),
                               DS(samples=T(np.random.default_rng(0).normal(size=(30, 2)).astype(np.float32))),
                               DS(samples=T(np.random.default_rng(1).normal(size=(30, 16)).astype(np.float32))),
                               DS(samples=T(np.arange(30, dtype=np.int64) % 4)),
                               DS(samples=T(np.array([3.0, 1.0, 0.0, 2.0], np.float32)), histogram=True)])
    uploads = tensor_msgs().map(lambda t: DS(samples=t)) | tensor_msgs().map(lambda t: DS(samples=t, histogram=True))
    metrics = st.lists(st.sampled_from(sorted(METRIC_NAMES) + ["bogus", ""]), max_size=3)
    kw = dict(p=draw(sources | sources | uploads), q=draw(sources | sources | uploads),
              metrics=draw(st.just([]) | metrics), n=draw(st.sampled_from([0, 50, 200, 400, 20_000])),
              bootstrap=draw(st.sampled_from([0, 0, 5, 10**6])),
              confidence=draw(st.sampled_from([0.0, 0.0, 0.0, 0.9, 1.0, -0.5, NAN])))
    return method, _seeded(EV, seed, **kw)


# The statuses each RPC may answer a random request with (what the property test accepts). Not UNAVAILABLE (a dead
# or stopped server), UNKNOWN/INTERNAL (a stray exception) or DEADLINE_EXCEEDED (a hang); RESOURCE_EXHAUSTED needs
# a full queue or an oversized message, which one client's small requests never make.
ALLOWED = {"ListModels": set(), "GetModel": {IA, NF},
           "Sample": {IA, NF}, "SampleConditional": {IA, NF}, "SampleStream": {IA, NF},
           "Interpolate": {IA, NF, FP}, "Invert": {IA, NF, FP}, "EvaluateDivergence": {IA, NF, FP}}


def _count(tensor: pb.Tensor, png) -> int:
    return tensor.shape[0] if tensor.shape else len(png)


def _check_reply(method: str, request_, reply) -> None:
    """A successful reply answers the request: the rows asked for, from a served tiny model."""
    if method == "ListModels":
        assert {m.name for m in reply.models} == {"tiny-gan", "tiny-cgan", "tiny-points", "tiny-eval"}
    elif method == "GetModel":
        assert reply.name == request_.model.split("@")[0] or not request_.model, (request_, reply.name)
    elif method in ("Sample", "SampleConditional"):
        assert reply.model.startswith("tiny-") and reply.model.endswith("@1"), reply.model
        want = request_.latents.shape[0] if request_.latents.shape else request_.n  # an empty Tensor: no latents
        assert _count(reply.samples, reply.png) == want, (request_, reply.samples.shape)
    elif method == "SampleStream":
        assert sum(_count(c.samples, c.png) for c in reply) == request_.n
        assert reply[0].start == request_.offset
    elif method == "Interpolate":
        assert len(reply.t) == (len(request_.endpoints) - 1) * (request_.steps - 1) + 1
    elif method == "Invert":
        assert reply.latents.shape[0] == request_.images.shape[0], (request_.images.shape, reply.latents.shape)
    else:
        assert len(reply.results) >= 1 and all(r.metric for r in reply.results)
        if request_.metrics:
            assert [r.metric for r in reply.results] == list(request_.metrics), (request_.metrics, reply.results)


@pytest.fixture(scope="module")
def live_target(server) -> str:
    """The server the property test calls, checked live first (SERVING and one Sample): a dead port would
    otherwise answer every call with UNAVAILABLE."""
    with grpc.insecure_channel(server.target) as channel:
        status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10).status
        assert status == health_pb2.HealthCheckResponse.SERVING
        assert pb_grpc.GeneratorServiceStub(channel).Sample(SR(n=2, seed=1), timeout=10).model == "tiny-gan@1"
    return server.target


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(requests())
def test_random_requests_get_a_whitelisted_status_or_a_real_answer(live_target, case):
    method, request_ = case
    with grpc.insecure_channel(live_target) as channel:
        stub = pb_grpc.GeneratorServiceStub(channel)
        try:
            reply = _call(stub, method, request_, timeout=60)
        except grpc.RpcError as e:
            assert e.code() in ALLOWED[method], (method, e.code(), e.details(), request_)
        else:
            _check_reply(method, request_, reply)


def test_server_healthy_after_the_property_test(server):
    with grpc.insecure_channel(server.target) as channel:
        status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest()).status
        assert status == health_pb2.HealthCheckResponse.SERVING
        assert pb_grpc.GeneratorServiceStub(channel).Sample(SR(n=2, seed=1)).model == "tiny-gan@1"


def markdown_table(target: str) -> str:
    """The table of docs/bad_input.md, from a live server: input -> status -> message."""
    rows = ["| input | RPC | status | message |", "| --- | --- | --- | --- |"]
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.GeneratorServiceStub(channel)
        for what, method, request_, _, _ in CASES:
            try:
                _call(stub, method, request_)
                status, message = "OK", ""
            except grpc.RpcError as e:
                status, message = e.code().name, e.details()
            rows.append(f"| {what} | {method} | {status} | `{message.replace('|', '/')}` |")
    return "\n".join(rows)


PAGE_HEAD = """# Bad input: what the server answers

Every client mistake gets a specific status and a message naming the field; the SDK raises the typed exception
for each status, and the CLI exits 1 with the one-line message. Generated from the cases
`tests/test_server_bad_input.py` checks, answered by a live server over the tiny test models: `python -m
tests.test_server_bad_input > docs/bad_input.md` (a test fails when this page is stale). The same test file throws
random and malformed requests at every RPC (hypothesis): never UNKNOWN or INTERNAL, and the server stays healthy.

"""

PAGE_TAIL = """
Behind the native front end (`--frontend native`) the same inputs get the same status, message and BadRequest
details (tests/test_frontend.py compares them call by call); only the transport's own messages are worded by
grpc-go instead (an over-size message is RESOURCE_EXHAUSTED either way). The gateway adds one answer of its own:
more than `--max-concurrent-rpcs` Sample calls waiting → RESOURCE_EXHAUSTED `server busy: 128 calls waiting
for the model (gateway max_queue); retry with backoff`, at once.
"""


def oversize_row(target: str) -> str:
    """The size limit's row: a server started with --max-request-bytes 1 MiB refuses a 1.2 MB message."""
    with grpc.insecure_channel(target) as channel:
        try:
            pb_grpc.GeneratorServiceStub(channel).Invert(INV(images=T(np.zeros((300_000,), np.float32))))
            status, message = "OK", ""
        except grpc.RpcError as e:
            status, message = e.code().name, e.details()
    return f"| message of 1.2 MB over a 1 MiB limit (`--max-request-bytes`) | Invert | {status} | `{message}` |"


V2_HEAD = """
## Open Inference Protocol (v2), over gRPC and REST

The same checks behind `inference.GRPCInferenceService` and the REST port (`--http-port`): a gRPC status with
the message, or an HTTP status with the body `{"error": "<message>"}` (the same message, except where the two
wires differ: raw bytes against JSON values, a body the JSON parser rejects, a route). `-`: the mistake cannot be
made over that binding. Cases: `tests/test_oip_bad_input.py`, which also throws random requests at both bindings
(never INTERNAL, UNKNOWN or a 500).

"""


def page(target: str, http_port: int) -> str:
    """docs/bad_input.md, from a live server whose message limit is 1 MiB (v2 REST on `http_port`)."""
    from tests.test_oip_bad_input import markdown_section

    return (f"{PAGE_HEAD}{markdown_table(target)}\n{oversize_row(target)}\n{PAGE_TAIL}{V2_HEAD}"
            f"{markdown_section(target, http_port)}\n")


def test_docs_bad_input_page_is_current(model_store):
    """docs/bad_input.md is what the server answers now (regenerate it with the command in the module docstring)."""
    running = start_server(model_store, reload_interval_s=0, metrics_port=-1, max_request_bytes=1 << 20, http_port=0)
    try:
        expected = page(running.target, running.app.http.port)
    finally:
        running.app.stop(0)
    committed = (Path(__file__).resolve().parent.parent / "docs" / "bad_input.md").read_text()
    assert committed == expected, "docs/bad_input.md is stale: python -m tests.test_server_bad_input > docs/bad_input.md"


def main() -> int:
    """Print docs/bad_input.md from a server over a fresh tiny store (the same models the tests use)."""
    with tempfile.TemporaryDirectory() as tmp:
        store, build = Path(tmp) / "store", Path(tmp) / "build"
        for publish in (publish_gan, publish_cgan, publish_points, publish_evaluator):
            publish(store, build)
        running = start_server(store, reload_interval_s=0, metrics_port=-1, max_request_bytes=1 << 20, http_port=0)
        try:
            print(page(running.target, running.app.http.port), end="")
        finally:
            running.app.stop(0)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
