"""The SDK's request builders and reply parsers (sdk/_types.py) without a server: each request compared with the
message written out by hand, each reply parsed from a message built by hand (sdk/_errors.py: test_sdk_errors.py)."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from protos import tensors
from protos.ganserve.v1 import generator_pb2 as pb
from sdk import _types
from sdk._errors import InternalError, InvalidArgumentError

T = tensors.from_array
F32 = pb.ENCODING_FLOAT32


def _refused(call, field: str, message: str):
    with pytest.raises(InvalidArgumentError) as err:
        call()
    e = err.value
    assert (e.code, e.details, e.field_violations) == (grpc.StatusCode.INVALID_ARGUMENT, f"{field}: {message}",
                                                      [(field, message)])
    assert str(e) == f"INVALID_ARGUMENT: {field}: {message}" and e.field == field and e.reason == message


# -- sdk/_types.py: arguments ---------------------------------------------------------------------------------

@pytest.mark.parametrize("value, message", [
    (2.5, "must be an integer, got 2.5"), (2.0, "must be an integer, got 2.0"), (True, "must be an integer, got True"),
    (np.bool_(False), f"must be an integer, got {np.bool_(False)!r}"), ("3", "must be an integer, got '3'"),
    (None, "must be an integer, got None"), (-1, "must be at least 0, got -1")])
def test_integer_refuses_what_is_not_a_whole_number_in_range(value, message):
    _refused(lambda: _types.integer("n", value, 0), "n", message)


def test_integer_bounds_are_inclusive_and_the_result_a_python_int():
    for value in (0, 10, np.int64(10), np.uint8(3)):
        got = _types.integer("k", value, 0, 10)
        assert got == value and type(got) is int
    assert _types.integer("seed", 2**64 - 1, 0) == 2**64 - 1
    _refused(lambda: _types.integer("k", 11, 0, 10), "k", "must be in 0..10, got 11")
    _refused(lambda: _types.integer("k", -1, 0, 10), "k", "must be in 0..10, got -1")
    _refused(lambda: _types.integer("seed", 2**64, 0), "seed", f"must be at least 0, got {2**64}")


def test_real_takes_finite_numbers_only():
    for value in (0, 2, 0.5, np.float32(0.25), np.int64(3)):
        got = _types.real("t", value)
        assert got == float(value) and type(got) is float
    for value in (float("nan"), float("inf"), -float("inf"), True, np.bool_(True), "1", None):
        _refused(lambda v=value: _types.real("t", v), "t", f"must be a finite number, got {value!r}")


def test_encoding_names_are_case_insensitive_and_checked():
    assert [_types.encoding(n) for n in ("float32", "UINT8", "Png")] == [pb.ENCODING_FLOAT32, pb.ENCODING_UINT8,
                                                                          pb.ENCODING_PNG]
    for bad in ("jpeg", None, 3):
        _refused(lambda b=bad: _types.encoding(b), "encoding",
                 f"must be one of ['float32', 'png', 'uint8'], got {bad!r}")


# -- sdk/_types.py: requests ----------------------------------------------------------------------------------

def test_sample_request_fields():
    kind, req = _types.sample_request(4, None, None, None, 7, "tiny-gan", 0.5, None, "uint8", True)
    assert kind == "Sample"
    assert req == pb.SampleRequest(model="tiny-gan", n=4, seed=7, truncation=0.5, encoding=pb.ENCODING_UINT8,
                                   return_latents=True)
    kind, req = _types.sample_request(1, None, None, None, None, None, 0, None, "float32", 0)
    assert kind == "Sample" and req == pb.SampleRequest(n=1, encoding=F32) and not req.HasField("seed")
    z = np.arange(6, dtype=np.float64).reshape(2, 3)
    kind, req = _types.sample_request("ignored", None, None, None, 0, "m", 0, z, "png", False)
    assert kind == "Sample" and req == pb.SampleRequest(model="m", n=0, seed=0, latents=T(z.astype(np.float32)),
                                                        encoding=pb.ENCODING_PNG)
    assert req.HasField("seed")
    _refused(lambda: _types.sample_request(0, None, None, None, None, "", 0, None, "float32", False), "n",
             "must be at least 1, got 0")


def test_conditional_requests_carry_exactly_one_kind_of_label():
    kind, req = _types.sample_request(2, 0, None, None, 1, "c", 0, None, "float32", False)
    assert kind == "SampleConditional"
    assert req == pb.SampleConditionalRequest(model="c", n=2, seed=1, labels=[0], encoding=F32)  # label 0, not "no label"
    _, req = _types.sample_request(3, None, np.array([[1, 2], [0, 9]]), None, None, "c", 0, None, "float32", False)
    assert list(req.labels) == [1, 2, 0, 9]
    soft = [0.25, 0.75]
    _, req = _types.sample_request(1, None, None, soft, None, "c", 0, None, "float32", False)
    assert req == pb.SampleConditionalRequest(model="c", n=1, soft_labels=T(np.array([soft], np.float32)),
                                               encoding=F32)
    both = np.array([[1, 0], [0, 1]], np.float32)
    _, req = _types.sample_request(2, None, None, both, None, "c", 0, None, "float32", False)
    assert tensors.to_array(req.soft_labels).tolist() == both.tolist()
    _refused(lambda: _types.sample_request(1, 1, [1], None, None, "", 0, None, "float32", False), "labels",
             "give one of label, labels or soft_labels")
    _refused(lambda: _types.sample_request(1, None, [1], [1.0], None, "", 0, None, "float32", False), "labels",
             "give one of label, labels or soft_labels")
    _refused(lambda: _types.sample_request(1, 2**31, None, None, None, "", 0, None, "float32", False), "label",
             f"must be in 0..{2**31 - 1}, got {2**31}")
    _refused(lambda: _types.sample_request(1, None, [0, 1, 2.5], None, None, "", 0, None, "float32", False),
             "labels[2]", "must be an integer, got 2.5")
    _refused(lambda: _types.sample_request(1, None, None, None, -1, "", 0, None, "float32", False), "seed",
             "must be at least 0, got -1")


def test_stream_request_fields():
    req = _types.stream_request(10, 3, None, None, 5, "c", 7, 4, 0.5, "uint8", True)
    assert req == pb.SampleStreamRequest(model="c", n=10, offset=7, chunk_size=4, truncation=0.5, seed=5,
                                         encoding=pb.ENCODING_UINT8, return_latents=True, labels=[3])
    req = _types.stream_request(1, None, None, None, None, None, 0, 0, 0, "float32", False)
    assert req == pb.SampleStreamRequest(n=1, encoding=F32) and not req.HasField("seed")
    _refused(lambda: _types.stream_request(1, None, None, None, None, "", -1, 0, 0, "float32", False), "offset",
             "must be at least 0, got -1")
    _refused(lambda: _types.stream_request(1, None, None, None, None, "", 0, 2**32, 0, "float32", False),
             "chunk_size", f"must be in 0..{2**32 - 1}, got {2**32}")


def test_interpolate_request_endpoints():
    latent, image = np.ones(3), np.zeros((1, 2, 2))
    req = _types.interpolate_request([4, latent, image, [latent]], [1, None, [0.5, 0.5], np.int64(2)], 8,
                                     "Linear", "c", "png")
    want = pb.InterpolateRequest(model="c", steps=8, method=pb.LINEAR, encoding=pb.ENCODING_PNG, endpoints=[
        pb.Endpoint(seed=4, label=1), pb.Endpoint(latent=T(latent.astype(np.float32))),
        pb.Endpoint(image=T(image.astype(np.float32)), soft_label=T(np.array([0.5, 0.5], np.float32))),
        pb.Endpoint(latent=T(np.ones((1, 3), np.float32)), label=2)])
    assert req == want
    assert not req.endpoints[1].HasField("label")
    req = _types.interpolate_request([True, np.int64(0)], None, 0, "slerp", None, "float32")
    assert req == pb.InterpolateRequest(method=pb.SLERP, encoding=F32, endpoints=[pb.Endpoint(latent=T(np.float32(1))),
                                                                    pb.Endpoint(seed=0)])
    _refused(lambda: _types.interpolate_request([1, 2], [1], 4, "slerp", "", "float32"), "labels",
             "give one label per endpoint (2), got 1")
    for bad in ("cubic", None):
        _refused(lambda b=bad: _types.interpolate_request([1, 2], None, 4, b, "", "float32"), "method",
                 f"must be one of ['linear', 'slerp'], got {bad!r}")
    _refused(lambda: _types.interpolate_request([1, -2], None, 4, "slerp", "", "float32"), "seed",
             "must be at least 0, got -2")


def test_invert_request_fields():
    images = np.zeros((1, 4, 4), np.float64)
    req = _types.invert_request(images, [3], "Optimize", 20, 0.05, 0.5, "m", "uint8")
    assert req == pb.InvertRequest(model="m", images=T(np.zeros((1, 1, 4, 4), np.float32)), labels=[3],
                                   method=pb.OPTIMIZE, steps=20, learning_rate=0.05, prior_weight=0.5,
                                   encoding=pb.ENCODING_UINT8)
    raw = np.full((2, 1, 2, 2), 7, np.uint8)
    req = _types.invert_request(raw, 1, None, 0, 0, 0, None, "float32")
    assert req == pb.InvertRequest(images=T(raw), labels=[1], method=pb.INVERSION_METHOD_UNSPECIFIED,
                                   encoding=F32)
    assert tensors.to_array(req.images).dtype == np.uint8
    assert _types.invert_request(raw, None, "encoder", 0, 0, 0, "", "float32").method == pb.ENCODER
    assert _types.invert_request(raw, None, "HYBRID", 0, 0, 0, "", "float32").method == pb.HYBRID
    _refused(lambda: _types.invert_request(raw, None, "guess", 0, 0, 0, "", "float32"), "method",
             "must be one of encoder, optimize, hybrid, got 'guess'")
    _refused(lambda: _types.invert_request(raw, [0, -1], None, 0, 0, 0, "", "float32"), "labels[1]",
             f"must be in 0..{2**31 - 1}, got -1")
    _refused(lambda: _types.invert_request(raw, None, None, 0, float("nan"), 0, "", "float32"), "learning_rate",
             "must be a finite number, got nan")
    _refused(lambda: _types.invert_request(raw, None, None, 0, 0, float("inf"), "", "float32"), "prior_weight",
             "must be a finite number, got inf")


def test_data_sources():
    assert _types.data_source("ring8") == pb.DataSource(reference="ring8")
    assert _types.data_source("cgan-mnist@2", [1, np.int64(3)]) == pb.DataSource(
        model=pb.ModelSource(model="cgan-mnist@2", labels=[1, 3]))
    assert _types.data_source("gan-mnist") == pb.DataSource(model=pb.ModelSource(model="gan-mnist"))
    assert _types.data_source({"model": "c", "labels": [2], "truncation": 0.5}) == pb.DataSource(
        model=pb.ModelSource(model="c", labels=[2], truncation=0.5))
    assert _types.data_source({"model": "c"}) == pb.DataSource(model=pb.ModelSource(model="c"))
    assert _types.data_source({"histogram": [3, 1]}) == pb.DataSource(samples=T(np.array([3, 1])), histogram=True)
    points = np.ones((2, 2), np.float32)
    assert _types.data_source(points) == pb.DataSource(samples=T(points))


def test_evaluate_request_fields():
    req = _types.evaluate_request("ring8", "m", ["kl", "js"], 100, 3, 0, 0.9, q_labels=[1],
                                  options={"kl": {"k": 5}})
    assert req == pb.EvaluateDivergenceRequest(
        p=pb.DataSource(reference="ring8"), q=pb.DataSource(model=pb.ModelSource(model="m", labels=[1])),
        metrics=["kl", "js"], n=100, seed=3, bootstrap=0, confidence=0.9, options={"kl": pb.MetricOptions(k=5)})
    assert req.HasField("bootstrap")
    req = _types.evaluate_request("ring8", "grid25", None, 0, None, None, 0.95)
    assert not req.HasField("bootstrap") and not req.HasField("seed") and list(req.metrics) == [] and not req.options
    assert _types.evaluate_request("ring8", "grid25", [], 0, None, 200, 0.95).bootstrap == 200
    with pytest.raises(InvalidArgumentError) as err:
        _types.evaluate_request("ring8", "grid25", [], 0, None, None, 0.95, options={"kl": {"nope": 1}})
    assert err.value.field == "options" and err.value.reason.startswith("must map metric names to MetricOptions "
                                                                       "fields: ")
    _refused(lambda: _types.evaluate_request("ring8", "grid25", [], -1, None, None, 0.95), "n",
             f"must be in 0..{2**32 - 1}, got -1")
    _refused(lambda: _types.evaluate_request("ring8", "grid25", [], 0, None, None, "x"), "confidence",
             "must be a finite number, got 'x'")


# -- sdk/_types.py: replies -----------------------------------------------------------------------------------

def test_model_info_is_parsed_field_by_field():
    m = pb.ModelInfo(name="c", version=2, kind="cgan", description="d", data_kind=pb.IMAGE, latent_dim=8,
                     num_classes=3, class_names=["a", "b", "c"], output_shape=[1, 4, 4], value_min=-1, value_max=1,
                     capabilities=pb.Capabilities(conditional=True, soft_labels=True, invertible=True,
                                                  optimizable=True, has_critic=True),
                     metrics={"fid": 1.5}, available_versions=[1, 2], created="2026", max_batch_size=64,
                     state=pb.VERSION_STATE_UNAVAILABLE, state_reason="gate", is_default=True, resident=True,
                     versions=[pb.VersionStatus(version=1, state=pb.VERSION_STATE_RETIRED, reason="old"),
                               pb.VersionStatus(version=2, resident=True, is_default=True)])
    info = _types.model_info(m)
    assert info == _types.ModelInfo(
        name="c", version=2, kind="cgan", description="d", data_kind="image", latent_dim=8, num_classes=3,
        class_names=["a", "b", "c"], output_shape=(1, 4, 4), value_range=(-1.0, 1.0), conditional=True,
        soft_labels=True, invertible=True, optimizable=True, has_critic=True, metrics={"fid": 1.5},
        available_versions=[1, 2], created="2026", max_batch_size=64, state="UNAVAILABLE", state_reason="gate",
        is_default=True, resident=True, versions=[_types.VersionStatus(1, "RETIRED", "old", False, False),
                                                  _types.VersionStatus(2, "READY", "", True, True)])
    assert info.ref == "c@2"
    plain = _types.model_info(pb.ModelInfo(name="p", version=1, data_kind=pb.POINTS, value_min=0, value_max=0))
    assert plain.data_kind == "points" and plain.value_range is None and plain.state == "READY"
    assert plain.versions == [] and plain.conditional is False


def test_sample_and_chunk_replies():
    x, z, c = np.ones((2, 1, 2, 2), np.float32), np.zeros((2, 3), np.float32), np.eye(2, dtype=np.float32)
    r = _types.sample_result(pb.SampleResponse(model="c@1", seed=9, samples=T(x), latents=T(z), conditions=T(c)))
    assert (r.model, r.seed) == ("c@1", 9)
    np.testing.assert_array_equal(r.images, x)
    np.testing.assert_array_equal(r.latents, z)
    np.testing.assert_array_equal(r.conditions, c)
    assert r.images.flags.writeable  # a copy the caller may change, not a view of the message
    r = _types.sample_result(pb.SampleResponse(model="g@1", png=[b"a", b"b"]))
    assert r.images == [b"a", b"b"] and r.latents is None and r.conditions is None
    k = _types.chunk(pb.SampleChunk(model="c@1", seed=2, start=5, samples=T(x), conditions=T(c)))
    assert (k.start, k.seed, k.model, k.latents) == (5, 2, "c@1", None)
    np.testing.assert_array_equal(k.images, x)
    np.testing.assert_array_equal(k.conditions, c)


def test_gather_puts_each_chunk_at_its_start():
    g = _types.Gather(5)
    x = np.arange(5, dtype=np.float32)[:, None]
    z = np.arange(10, dtype=np.float32).reshape(5, 2)
    assert g.add(_types.Chunk(3, x[3:], z[3:], None, 4, "m@1")) == 2  # chunks may arrive in any order
    assert g.add(_types.Chunk(0, x[:3], z[:3], None, 4, "m@1")) == 3
    r = g.result()
    np.testing.assert_array_equal(r.images, x)
    np.testing.assert_array_equal(r.latents, z)
    assert r.conditions is None and (r.seed, r.model) == (4, "m@1")
    png = _types.Gather(3)
    assert png.add(_types.Chunk(0, [b"a", b"b"], None, None, 1, "g@1")) == 2
    png.add(_types.Chunk(2, [b"c"], None, None, 1, "g@1"))
    assert png.result().images == [b"a", b"b", b"c"]
    short = _types.Gather(4)
    short.add(_types.Chunk(0, x[:3], None, None, 1, "m@1"))
    with pytest.raises(InternalError) as err:
        short.result()
    assert err.value.code == grpc.StatusCode.DATA_LOSS and err.value.details == "the stream ended after 3 of 4 samples"


def test_interpolation_inversion_and_evaluation_replies():
    x, z = np.ones((3, 1, 2, 2), np.float32), np.zeros((3, 2), np.float32)
    i = _types.interpolation(pb.InterpolateResponse(model="g@1", samples=T(x), latents=T(z), t=[0, 0.5, 1]))
    assert i.model == "g@1" and i.conditions is None and i.t.dtype == np.float32 and i.t.tolist() == [0, 0.5, 1]
    np.testing.assert_array_equal(i.latents, z)
    v = _types.inversion(pb.InvertResponse(model="g@1", method=pb.HYBRID, latents=T(z), png=[b"p"], mse=[0.25],
                                           steps=30))
    assert (v.method, v.steps, v.model, v.reconstructions) == ("HYBRID", 30, "g@1", [b"p"])
    assert v.mse.dtype == np.float32 and v.mse.tolist() == [0.25]
    per = np.array([1, 0], np.float32)
    e = _types.evaluation(pb.EvaluateDivergenceResponse(p_description="P", q_description="Q", seed=8, results=[
        pb.DivergenceResult(metric="js", value=0.5, ci_low=0.4, ci_high=0.6, confidence=0.95, n_p=10, n_q=20,
                            estimator="plug-in", unit="nats", lower_bound=True, note="n"),
        pb.DivergenceResult(metric="precision", value=1, per_sample=T(per))]))
    assert (e.p, e.q, e.seed) == ("P", "Q", 8) and [r.metric for r in e.results] == ["js", "precision"]
    assert e["js"] == _types.Divergence("js", 0.5, 0.4, 0.6, pytest.approx(0.95), 10, 20, "plug-in", "nats", True,
                                        "n", None)
    np.testing.assert_array_equal(e["precision"].per_sample, per)
    with pytest.raises(KeyError):
        e["kl"]


def test_every_bound_and_field_name():
    """The upper bounds (the proto's int32 labels, uint32 steps and bootstrap) and the field each refusal names."""
    top31, top32 = 2**31 - 1, 2**32 - 1
    assert list(_types.sample_request(1, None, [top31], None, None, "", 0, None, "float32", 0)[1].labels) == [top31]
    _refused(lambda: _types.sample_request(1, None, [0, 2**31], None, None, "", 0, None, "float32", 0), "labels[1]",
             f"must be in 0..{top31}, got {2**31}")
    assert _types.interpolate_request([1, 2], None, top32, "slerp", "", "float32").steps == top32
    _refused(lambda: _types.interpolate_request([1, 2], None, 2**32, "slerp", "", "float32"), "steps",
             f"must be in 0..{top32}, got {2**32}")
    raw = np.zeros((1, 1, 2, 2), np.uint8)
    assert _types.invert_request(raw, None, None, top32, 0, 0, "", "float32").steps == top32
    _refused(lambda: _types.invert_request(raw, None, None, 2**32, 0, 0, "", "float32"), "steps",
             f"must be in 0..{top32}, got {2**32}")
    assert _types.evaluate_request("ring8", "grid25", [], 0, None, top32, 0.95).bootstrap == top32
    _refused(lambda: _types.evaluate_request("ring8", "grid25", [], 0, None, 2**32, 0.95), "bootstrap",
             f"must be in 0..{top32}, got {2**32}")
    _refused(lambda: _types.stream_request(0, None, None, None, None, "", 0, 0, 0, "float32", 0), "n",
             "must be at least 1, got 0")
    _refused(lambda: _types.stream_request(1, None, None, None, None, "", 0, 0, float("nan"), "float32", 0),
             "truncation", "must be a finite number, got nan")


def test_integer_inputs_become_float32_tensors_and_streams_carry_their_labels():
    _, req = _types.sample_request(1, None, None, [[0, 1]], None, "c", 0, None, "float32", False)
    assert tensors.to_array(req.soft_labels).dtype == np.float32
    _, req = _types.sample_request(None, None, None, None, None, "g", 0, [[1, 2, 3]], "float32", False)
    assert tensors.to_array(req.latents).dtype == np.float32 and tensors.to_array(req.latents).tolist() == [[1, 2, 3]]
    assert list(_types.stream_request(4, None, [1, 2], None, None, "c", 0, 0, 0, "float32", 0).labels) == [1, 2]
    soft = _types.stream_request(4, None, None, [0.5, 0.5], None, "c", 0, 0, 0, "float32", 0).soft_labels
    assert tensors.to_array(soft).tolist() == [[0.5, 0.5]]


def test_replies_keep_every_part():
    x, z, c = np.ones((2, 1, 2, 2), np.float32), np.full((2, 3), 2, np.float32), np.eye(2, dtype=np.float32)
    k = _types.chunk(pb.SampleChunk(start=1, samples=T(x), latents=T(z), conditions=T(c)))
    np.testing.assert_array_equal(k.latents, z)
    i = _types.interpolation(pb.InterpolateResponse(samples=T(x), latents=T(z), conditions=T(c)))
    np.testing.assert_array_equal(i.images, x)
    np.testing.assert_array_equal(i.conditions, c)
    v = _types.inversion(pb.InvertResponse(latents=T(z), reconstructions=T(x)))
    np.testing.assert_array_equal(v.latents, z)
    np.testing.assert_array_equal(v.reconstructions, x)
    g = _types.Gather(2)
    raw = np.arange(8, dtype=np.uint8).reshape(2, 1, 2, 2)
    soft = np.array([[0.125, 0.875], [0.375, 0.625]], np.float32)  # values no other array here holds
    g.add(_types.Chunk(0, raw[:1], None, soft[:1], 3, "c@1"))  # two chunks: the second adds to the first's arrays
    g.add(_types.Chunk(1, raw[1:], None, soft[1:], 3, "c@1"))
    r = g.result()
    assert r.images.dtype == np.uint8 and r.latents is None
    np.testing.assert_array_equal(r.images, raw)
    np.testing.assert_array_equal(r.conditions, soft)
    empty = _types.Gather(0).result()
    assert (empty.images, empty.latents, empty.conditions, empty.seed, empty.model) == (None, None, None, 0, "")
