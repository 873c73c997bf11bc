"""server/engine.py without gRPC: the tiny models of tests/conftest.py loaded by a real Registry (ONNX Runtime
sessions, a real batcher), each engine function checked against the numpy reference generator, written-out
values, and the exact refusals. tests/test_server.py runs the same work through a server."""

from __future__ import annotations

import copy
import threading
import time

import numpy as np
import pytest

from ganserve import images
from protos import latents as latent_fn
from protos.ganserve.v1 import generator_pb2 as pb
from server import engine
from server.batcher import Batcher
from server.config import Config
from server.errors import (
    BadModelOutput,
    Cancelled,
    DeadlineExceeded,
    FailedPrecondition,
    ResourceExhausted,
)
from server.registry import Registry
from tests.conftest import CLASSES, LATENT, SIDE, _weights, reference_generator

EYE = np.eye(CLASSES, dtype=np.float32)


@pytest.fixture(scope="module")
def registry(model_store):
    def make_batcher(model):
        return Batcher(model.ref, engine.make_runner(model), max_batch=16, max_queue=4, max_delay_s=0,
                       queue_timeout_s=30)

    r = Registry(Config(store=str(model_store), reload_interval_s=0), make_batcher=make_batcher)
    r.scan()
    yield r
    r.close()


@pytest.fixture(scope="module")
def gan(registry):
    return registry.resolve("tiny-gan")


@pytest.fixture(scope="module")
def cgan(registry):
    return registry.resolve("tiny-cgan")


def _call(**kw) -> tuple[engine.Call, list[int]]:
    reserved: list[int] = []
    return engine.Call(reserve=reserved.append, **kw), reserved


def test_call_check_and_stopped():
    engine.Call().check()
    assert engine.Call().stopped() is False
    assert engine.Call(deadline=time.monotonic() + 60).stopped() is False
    with pytest.raises(DeadlineExceeded, match="^deadline exceeded$"):
        engine.Call(deadline=time.monotonic() - 0.001).check()
    assert engine.Call(deadline=time.monotonic() - 0.001).stopped() is True
    with pytest.raises(Cancelled, match="^request cancelled by the client$"):
        engine.Call(is_active=lambda: False).check()
    assert engine.Call(is_active=lambda: False).stopped() is True
    assert engine.Call().reserve(10) is None


def test_reply_bytes_are_three_float32_copies(gan, registry):
    assert engine.REPLY_COPIES == 3
    assert engine.reply_bytes(gan, 5) == 3 * 4 * 5 * SIDE * SIDE
    assert engine.reply_bytes(registry.resolve("tiny-points"), 7) == 3 * 4 * 7 * 2


def test_generate_matches_the_reference_and_reserves_the_reply(gan, cgan):
    z = latent_fn.latents(3, 5, LATENT)
    call, reserved = _call()
    x = engine.generate(gan, z, None, call)
    assert x.shape == (5, 1, SIDE, SIDE) and x.dtype == np.float32 and reserved == [engine.reply_bytes(gan, 5)]
    np.testing.assert_allclose(x, reference_generator(z), rtol=0, atol=2e-6)
    y = EYE[[0, 1, 2, 3, 1]]
    np.testing.assert_allclose(engine.generate(cgan, z, y, engine.Call()), reference_generator(z, y), atol=2e-6)
    np.testing.assert_allclose(engine.generate_batch(cgan, z, y, engine.Call()), reference_generator(z, y), atol=2e-6)
    bulk, reserved = _call()
    np.testing.assert_allclose(engine.generate(gan, z, None, bulk, wait_for_queue=True), reference_generator(z),
                               atol=2e-6)
    assert reserved == []  # a stream reserves once for all its chunks
    with pytest.raises(DeadlineExceeded):
        engine.generate_batch(gan, z, None, engine.Call(deadline=time.monotonic() - 1))
    with pytest.raises(Cancelled):
        engine.generate(gan, z, None, engine.Call(is_active=lambda: False))


def _held_model(gan, max_queue=1):
    """A copy of `gan` whose batcher (of `max_queue`) is held inside its run until the returned event is set."""
    release, started = threading.Event(), threading.Event()
    runner = engine.make_runner(gan)

    def run(feeds):
        started.set()
        release.wait(10)
        return runner(feeds)

    model = type(gan).__new__(type(gan))
    model.__dict__.update(gan.__dict__)
    model.batcher = Batcher("held", run, max_batch=16, max_queue=max_queue, max_delay_s=0, queue_timeout_s=30)
    return model, release, started


def test_a_full_queue_refuses_a_request_and_holds_a_stream_chunk_until_there_is_room(gan):
    model, release, started = _held_model(gan)
    z = latent_fn.latents(1, 2, LATENT)
    try:
        first = model.batcher.submit({"z": z})  # held in run
        assert started.wait(10)
        queued = model.batcher.submit({"z": z})  # fills the queue of 1
        with pytest.raises(ResourceExhausted, match="queue full"):
            engine.generate(model, z, None, engine.Call())
        out: list = []
        waiting = threading.Thread(target=lambda: out.append(engine.generate(model, z, None, engine.Call(),
                                                                              wait_for_queue=True)))
        waiting.start()
        time.sleep(0.05)  # the chunk keeps retrying while the queue is full (no refusal reaches the caller)
        assert waiting.is_alive() and not out
        release.set()
        waiting.join(10)
        np.testing.assert_allclose(out[0], reference_generator(z), atol=2e-6)
        assert first.result(10).shape == queued.result(10).shape == (2, 1, SIDE, SIDE)
        release.clear()
        started.clear()
        model.batcher.submit({"z": z})
        assert started.wait(10)
        model.batcher.submit({"z": z})
        with pytest.raises(DeadlineExceeded):  # a chunk that waits for room still honours the deadline
            engine.generate(model, z, None, engine.Call(deadline=time.monotonic() + 0.2), wait_for_queue=True)
    finally:
        release.set()
        model.batcher.close()


def test_a_queued_request_gives_up_at_its_deadline_or_cancellation(gan):
    model, release, started = _held_model(gan, max_queue=2)
    z = latent_fn.latents(1, 1, LATENT)
    try:
        model.batcher.submit({"z": z})
        assert started.wait(10)
        t0 = time.monotonic()
        with pytest.raises(DeadlineExceeded):
            engine.generate(model, z, None, engine.Call(deadline=t0 + 0.3))
        assert time.monotonic() - t0 >= 0.3
        flag = [True]
        threading.Timer(0.2, flag.clear).start()
        with pytest.raises(Cancelled):
            engine.generate(model, z, None, engine.Call(is_active=lambda: bool(flag)))
    finally:
        release.set()
        model.batcher.close()


def test_check_output_and_encode(gan, registry):
    x = np.array([[[[-1.0000001, 0.25], [1, 0]]]], np.float32)
    assert engine.check_output(gan, x) is x
    out, pngs = engine.encode(gan, x, pb.ENCODING_FLOAT32)
    assert pngs == [] and out.dtype == np.float32 and out.tolist() == [[[[-1, 0.25], [1, 0]]]]
    out, pngs = engine.encode(gan, x, pb.ENCODING_UINT8)
    assert pngs == [] and out.dtype == np.uint8
    np.testing.assert_array_equal(out, images.to_uint8(x, (-1.0, 1.0)))
    np.testing.assert_array_equal(engine.to_uint8(gan, x), out)
    out, pngs = engine.encode(gan, np.concatenate([x, -x]), pb.ENCODING_PNG)
    assert out is None and pngs == [images.png_bytes(i) for i in images.to_uint8(np.concatenate([x, -x]), (-1.0, 1.0))]
    bad = x.copy()
    bad[0, 0, 0, 1] = np.nan
    with pytest.raises(BadModelOutput) as err:
        engine.encode(gan, bad, pb.ENCODING_FLOAT32)
    assert str(err.value) == ("tiny-gan@1 produced 1 non-finite value(s) (NaN/Inf) out of 4 in its samples; "
                              "not answered") and err.value.model == "tiny-gan@1"
    with pytest.raises(BadModelOutput, match=r"^tiny-gan@1 produced samples in \[-3, 3\], outside its declared value "
                                             r"range \[-1, 1\]; not answered$"):
        engine.check_output(gan, x * 3)
    z = np.full((1, LATENT), 40, np.float32)
    assert engine.check_output(gan, z, "latents") is z  # latents have no value range
    with pytest.raises(BadModelOutput, match=r"^tiny-gan@1 produced 1 non-finite value\(s\) \(NaN/Inf\) out of 8 in "
                                             r"its latents; not answered$"):
        engine.check_output(gan, np.where(np.arange(8) == 3, np.inf, 0).reshape(1, 8), "latents")
    points = registry.resolve("tiny-points")
    np.testing.assert_array_equal(engine.encode(points, np.float32([[5, -7]]), pb.ENCODING_FLOAT32)[0], [[5, -7]])


def test_clean_output_checks_and_clamps_many_requests_rows_at_once(gan):
    x = np.array([[[[-1.0000001, 0.25], [1, 0]]], [[[0.5, 1.0000002], [0, 0]]]], np.float32)
    clean = engine.clean_output(gan, x)
    assert clean.tolist() == [[[[-1, 0.25], [1, 0]]], [[[0.5, 1], [0, 0]]]]
    for rows in (slice(0, 1), slice(1, 2)):  # each request's slice encodes as it would alone
        out, _ = engine.encode(gan, clean[rows], pb.ENCODING_FLOAT32, clean=True)
        assert out.tobytes() == engine.encode(gan, x[rows], pb.ENCODING_FLOAT32)[0].tobytes()
        out, _ = engine.encode(gan, clean[rows], pb.ENCODING_UINT8, clean=True)
        assert out.tobytes() == engine.encode(gan, x[rows], pb.ENCODING_UINT8)[0].tobytes()
    bad = x.copy()
    bad[1, 0, 0, 0] = np.nan
    assert engine.clean_output(gan, bad) is None  # then each request's own rows decide its status
    assert engine.encode(gan, bad[:1], pb.ENCODING_FLOAT32)[0].tolist() == [[[[-1, 0.25], [1, 0]]]]
    with pytest.raises(BadModelOutput):
        engine.encode(gan, bad[1:], pb.ENCODING_FLOAT32)


def test_clamp_copies_only_rows_that_overshoot():
    inside = np.array([[-1.0, 0.5, 1.0]], np.float32)
    assert images.clamp(inside, (-1.0, 1.0)) is inside
    over = np.array([[-1.0000001, 0.5, 1.0000001]], np.float32)
    out = images.clamp(over, (-1.0, 1.0))
    assert out is not over and out.tolist() == [[-1.0, 0.5, 1.0]] and over[0, 0] < -1.0  # the input is left alone
    assert images.clamp(np.float64([[7.0]]), None).dtype == np.float32
    strided = np.arange(8, dtype=np.float32).reshape(2, 4)[:, ::2] / 8
    got = images.clamp(strided, (0.0, 1.0))
    assert got.flags.c_contiguous and got.tolist() == [[0.0, 0.25], [0.5, 0.75]]
    assert images.clamp(np.zeros((0, 3), np.float32), (-1.0, 1.0)).shape == (0, 3)


def test_stream_chunks_follow_the_offset_labels_and_reserve_one_chunk(cgan):
    n, offset, chunk = 11, 5, 4
    y = EYE[[i % 3 for i in range(n)]]
    call, reserved = _call()
    ticks = []
    got = list(engine.stream(cgan, seed=8, n=n, offset=offset, chunk=chunk, truncation=0, y=y, call=call,
                             on_chunk=lambda: ticks.append(1)))
    assert [start for start, _ in got] == [5, 9, 13] and [len(s.x) for _, s in got] == [4, 4, 3]
    assert reserved == [engine.reply_bytes(cgan, 4)] and len(ticks) == 3
    z = latent_fn.latents(8, n, LATENT, offset=offset)
    np.testing.assert_array_equal(np.concatenate([s.z for _, s in got]), z)
    np.testing.assert_array_equal(np.concatenate([s.y for _, s in got]), y)
    np.testing.assert_allclose(np.concatenate([s.x for _, s in got]), reference_generator(z, y), atol=2e-6)
    one = list(engine.stream(cgan, seed=8, n=3, offset=0, chunk=2, truncation=0.5, y=EYE[[2]], call=engine.Call()))
    np.testing.assert_array_equal(np.concatenate([s.y for _, s in one]), EYE[[2, 2, 2]])
    np.testing.assert_array_equal(np.concatenate([s.z for _, s in one]), latent_fn.latents(8, 3, LATENT,
                                                                                            truncation=0.5))
    call, reserved = _call()
    small = list(engine.stream(cgan, seed=1, n=2, offset=0, chunk=64, truncation=0, y=EYE[[0]], call=call))
    assert reserved == [engine.reply_bytes(cgan, 2)] and [s for s, _ in small] == [0]


def test_interpolate_moves_latents_on_the_path_and_labels_linearly(gan, cgan):
    points = latent_fn.latents(1, 3, LATENT).astype(np.float64)
    s, t = engine.interpolate(gan, points, None, 4, "slerp", engine.Call())
    path, want_t = latent_fn.path(points, 4, "slerp")
    np.testing.assert_array_equal(s.z, path)
    np.testing.assert_array_equal(t, want_t)
    assert s.y is None and len(t) == 7
    np.testing.assert_allclose(s.x, reference_generator(path), atol=2e-6)
    conds = EYE[[0, 3]]
    s, _ = engine.interpolate(cgan, points[:2], conds, 3, "linear", engine.Call())
    np.testing.assert_allclose(s.y, [[1, 0, 0, 0], [0.5, 0, 0, 0.5], [0, 0, 0, 1]], atol=1e-7)
    np.testing.assert_allclose(s.x, reference_generator(s.z, s.y), atol=2e-6)


def _reference_logits(x01: np.ndarray) -> np.ndarray:
    w = _weights(0)
    return (x01.reshape(len(x01), -1) * 2 - 1) @ w["P"].T


def test_classify_in_batches(registry):
    ev = registry.evaluator()
    assert ev.ref == "tiny-eval@1"
    x01 = (reference_generator(latent_fn.latents(2, 5, LATENT)) + 1) / 2
    logits, feats = engine.classify(ev, x01.astype(np.float32), batch=2)
    np.testing.assert_allclose(logits, _reference_logits(x01), atol=1e-4)
    w = _weights(0)
    np.testing.assert_allclose(feats, np.maximum(x01.reshape(5, -1) @ w["F"], 0), atol=1e-4)
    assert feats.shape == (5, 16)
    empty_logits, empty_feats = engine.classify(ev, np.zeros((0, 1, SIDE, SIDE), np.float32))
    assert empty_logits.shape == (0, CLASSES) and empty_feats.shape == (0, 0) and empty_logits.dtype == np.float32
    with pytest.raises(ValueError, match=r"takes inputs in \[0, 1\]"):
        engine.classify(ev, x01.astype(np.float32) * 2 - 1)


def test_to_unit_and_guessed_labels(registry, cgan, gan):
    x = np.array([[[[-1, 0], [0.5, 1.5]]]], np.float32)
    np.testing.assert_array_equal(engine.to_unit(gan, x), np.float32([[[[0, 0.5], [0.75, 1]]]]))
    assert engine.to_unit(gan, x).dtype == np.float32
    labels = [0, 1, 2, 3, 2]
    z = latent_fn.latents(4, 5, LATENT)
    xs = reference_generator(z, EYE[labels]).astype(np.float32)
    want = _reference_logits(engine.to_unit(cgan, xs)).argmax(1)
    guessed = engine.guess_labels(registry, cgan, xs)
    assert guessed.dtype == np.float32
    np.testing.assert_array_equal(guessed, EYE[want])


def test_guessing_labels_needs_a_matching_evaluator(registry, cgan, monkeypatch):
    x = np.zeros((1, 1, SIDE, SIDE), np.float32)
    ev = registry.evaluator()
    monkeypatch.setattr(registry, "evaluator", lambda: None)
    with pytest.raises(FailedPrecondition) as err:
        engine.guess_labels(registry, cgan, x)
    assert (err.value.field, err.value.reason) == ("labels", ("tiny-cgan@1 is conditional and no evaluator model is "
                                                             "served to guess the labels; send labels"))
    other = type(ev).__new__(type(ev))
    other.__dict__.update(ev.__dict__)
    other.manifest = copy.deepcopy(ev.manifest)
    other.manifest["graphs"]["classifier"]["inputs"][0]["dims"] = [1, 4, 4]
    monkeypatch.setattr(registry, "evaluator", lambda: other)
    with pytest.raises(FailedPrecondition) as err:
        engine.guess_labels(registry, cgan, x)
    assert (err.value.field, err.value.reason) == (
        "labels", (f"the evaluator tiny-eval@1 takes images of shape [1, 4, 4], tiny-cgan@1 makes [1, {SIDE}, {SIDE}]: "
                  "it cannot guess the labels; send labels"))


def test_invert_slices_and_settings(gan, monkeypatch):
    z = latent_fn.latents(12, 20, LATENT) * 0.5
    x = reference_generator(z).astype(np.float32)
    inv = engine.invert(gan, x, None, "ENCODER", steps=None, lr=None, prior_weight=None, call=engine.Call())
    assert inv.method == "ENCODER" and inv.steps == 0 and inv.z.shape == (20, LATENT)
    np.testing.assert_allclose(inv.z, z, atol=2e-3)
    np.testing.assert_allclose(inv.reconstruction, reference_generator(inv.z), atol=2e-6)
    assert inv.mse.dtype == np.float32 and inv.mse.shape == (20,)
    want_mse = (((inv.reconstruction.astype(np.float64) - x) / 2) ** 2).reshape(20, -1).mean(1)  # pixels in [0, 1]
    np.testing.assert_allclose(inv.mse, want_mse, rtol=1e-5, atol=1e-12)
    seen = []
    real = gan.inverter().invert

    def spy(images_, method, y, *, settings, reconstruct, should_stop):
        seen.append((len(images_), settings.steps, settings.lr, settings.prior_weight, reconstruct))
        return real(images_, method, y, settings=settings, reconstruct=reconstruct, should_stop=should_stop)

    monkeypatch.setattr(gan.inverter(), "invert", spy)
    opt = engine.invert(gan, x, None, "OPTIMIZE", steps=3, lr=0.05, prior_weight=None, call=engine.Call())
    default = engine.DEFAULTS.prior_weight
    assert seen == [(16, 3, 0.05, default, False), (4, 3, 0.05, default, False)] and opt.steps == 3


def test_invert_stops_at_the_deadline_or_when_cancelled(gan):
    x = reference_generator(latent_fn.latents(1, 2, LATENT)).astype(np.float32)
    with pytest.raises(DeadlineExceeded):
        engine.invert(gan, x, None, "OPTIMIZE", steps=10**6, lr=None, prior_weight=None,
                      call=engine.Call(deadline=time.monotonic() + 0.3))
    flag = [True]
    threading.Timer(0.3, flag.clear).start()
    with pytest.raises(Cancelled, match="^request cancelled by the client$"):
        engine.invert(gan, x, None, "OPTIMIZE", steps=10**6, lr=None, prior_weight=None,
                      call=engine.Call(is_active=lambda: bool(flag)))
