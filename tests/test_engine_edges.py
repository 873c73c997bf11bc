"""server/engine.py at its edges: what it hands the batcher (deadline, cancellation, bulk), how a waiting request
polls (a spy future records each wait), exact deadlines under a hand-set clock, float64 inputs, a logits-only
evaluator, conditional inversion across slices, and the messages of the rare paths. Fixtures: tests/test_engine.py."""

from __future__ import annotations

import copy
import threading
import time
from concurrent.futures import TimeoutError as FutureTimeout
from types import SimpleNamespace

import numpy as np
import pytest

from protos import latents as latent_fn
from server import engine
from server.errors import BadModelOutput, Cancelled, DeadlineExceeded
from tests import test_engine
from tests.conftest import CLASSES, LATENT, SIDE, reference_generator
from tests.test_engine import _held_model

registry, gan, cgan = test_engine.registry, test_engine.gan, test_engine.cgan  # the same module-scoped fixtures

EYE = np.eye(CLASSES, dtype=np.float32)


def _copy(model, **manifest_changes):
    other = type(model).__new__(type(model))
    other.__dict__.update(model.__dict__)
    other.manifest = copy.deepcopy(model.manifest)
    other.manifest.update(manifest_changes)
    return other


def test_float64_inputs_are_fed_as_float32(gan, cgan, registry):
    z = latent_fn.latents(5, 3, LATENT).astype(np.float64)
    y = EYE[[0, 1, 2]].astype(np.float64)
    np.testing.assert_allclose(engine.generate(cgan, z, y, engine.Call()), reference_generator(z, y), atol=2e-6)
    x01 = (reference_generator(z) + 1) / 2  # float64
    logits, _ = engine.classify(registry.evaluator(), x01)
    assert logits.shape == (3, CLASSES)


def test_a_logits_only_evaluator(registry):
    ev = registry.evaluator()
    only = _copy(ev)
    only.manifest["graphs"]["classifier"]["outputs"] = only.manifest["graphs"]["classifier"]["outputs"][:1]
    x01 = ((reference_generator(latent_fn.latents(1, 4, LATENT)) + 1) / 2).astype(np.float32)
    logits, feats = engine.classify(only, x01, batch=3)
    full, _ = engine.classify(ev, x01)
    np.testing.assert_array_equal(logits, full)
    np.testing.assert_array_equal(feats, logits)  # no features: the logits stand in for them
    e_logits, e_feats = engine.classify(ev, np.zeros((0, 1, SIDE, SIDE), np.float32))
    assert e_feats.dtype == np.float32 and e_logits.dtype == np.float32
    unnamed = _copy(ev, num_classes=0, class_names=[])
    assert engine.classify(unnamed, np.zeros((0, 1, SIDE, SIDE), np.float32))[0].shape == (0, 10)


def test_the_batcher_gets_the_calls_deadline_cancellation_and_bulk_flag(gan):
    """A queued request past its deadline, or cancelled, is dropped by the batcher (never run); a stream chunk is
    bulk work, which the queue timeout does not drop."""
    z = latent_fn.latents(1, 1, LATENT)
    for timeout in (30.0, 0.2):
        model, release, started = _held_model(gan, max_queue=4)
        runs = []
        inner = model.batcher._run
        model.batcher._run = lambda feeds, runs=runs, inner=inner: runs.append(len(feeds["z"])) or inner(feeds)
        model.batcher.queue_timeout_s = timeout
        try:
            model.batcher.submit({"z": np.repeat(z, 5, 0)})  # held: 5 rows
            assert started.wait(10)
            if timeout > 1:
                with pytest.raises(DeadlineExceeded):
                    engine.generate(model, np.repeat(z, 2, 0), None, engine.Call(deadline=time.monotonic() + 0.1))
                flag = [True]
                threading.Timer(0.1, flag.clear).start()
                with pytest.raises(Cancelled):
                    engine.generate(model, np.repeat(z, 3, 0), None, engine.Call(is_active=lambda f=flag: bool(f)))
                release.set()
                engine.generate(model, z, None, engine.Call())
                assert runs == [5, 1]  # the expired and the cancelled requests never ran
                continue
            chunk: list = []
            waiter = threading.Thread(target=lambda m=model, c=chunk: c.append(
                engine.generate(m, z, None, engine.Call(), wait_for_queue=True)))
            waiter.start()
            time.sleep(0.3)  # past the 0.2 s queue timeout: a single request would be refused now
            release.set()
            waiter.join(10)
            np.testing.assert_allclose(chunk[0], reference_generator(z), atol=2e-6)
            assert runs == [5, 1]
        finally:
            release.set()
            model.batcher.close()


def test_a_chunk_polls_for_room_every_5_ms(gan, monkeypatch):
    model, release, started = _held_model(gan)
    sleeps = []

    def sleep(s):
        sleeps.append(s)
        if len(sleeps) == 3:
            release.set()
        time.sleep(0.001)

    monkeypatch.setattr(engine, "time", SimpleNamespace(monotonic=time.monotonic, sleep=sleep))
    z = latent_fn.latents(1, 1, LATENT)
    try:
        model.batcher.submit({"z": z})
        assert started.wait(10)
        model.batcher.submit({"z": z})  # the queue of 1 is full
        np.testing.assert_allclose(engine.generate(model, z, None, engine.Call(), wait_for_queue=True),
                                   reference_generator(z), atol=2e-6)
        assert len(sleeps) >= 3 and set(sleeps) == {0.005}
    finally:
        release.set()
        model.batcher.close()


class _SpyFuture:
    """Records each wait's timeout; times out `misses` times (sleeping the timeout), then returns `value`."""

    def __init__(self, value, misses):
        self.value, self.misses, self.timeouts = value, misses, []

    def result(self, timeout=None):
        self.timeouts.append(timeout)
        if len(self.timeouts) <= self.misses:
            time.sleep(timeout)
            raise FutureTimeout()
        return self.value


def _spy_model(gan, future):
    model = _copy(gan)
    model.batcher = SimpleNamespace(submit=lambda feeds, **kw: future)
    return model


def test_a_waiting_request_polls_at_most_every_100_ms_and_never_past_its_deadline(gan):
    z = latent_fn.latents(1, 1, LATENT)
    free = _SpyFuture("x", misses=2)
    assert engine.generate(_spy_model(gan, free), z, None, engine.Call()) == "x"
    assert free.timeouts == [0.1, 0.1, 0.1]
    far = _SpyFuture("x", misses=1)
    assert engine.generate(_spy_model(gan, far), z, None, engine.Call(deadline=time.monotonic() + 60)) == "x"
    assert far.timeouts == [0.1, 0.1]
    near = _SpyFuture("x", misses=10**6)
    t0 = time.monotonic()
    with pytest.raises(DeadlineExceeded):
        engine.generate(_spy_model(gan, near), z, None, engine.Call(deadline=t0 + 0.05))
    assert 0.0 <= min(near.timeouts) and max(near.timeouts) <= 0.05  # the time left, at most


def test_the_deadline_is_passed_only_after_it(monkeypatch):
    now = [100.0]
    monkeypatch.setattr(engine, "time", SimpleNamespace(monotonic=lambda: now[0], sleep=time.sleep))
    at = engine.Call(deadline=100.0)
    at.check()
    assert at.stopped() is False
    now[0] = 100.0 + 1e-9
    with pytest.raises(DeadlineExceeded):
        at.check()
    assert at.stopped() is True


def test_an_unconditional_stream_and_a_linear_path(gan, cgan):
    got = list(engine.stream(gan, seed=3, n=5, offset=2, chunk=2, truncation=0, y=None, call=engine.Call()))
    z = latent_fn.latents(3, 5, LATENT, offset=2)
    assert [s for s, _ in got] == [2, 4, 6] and all(c.y is None for _, c in got)
    np.testing.assert_allclose(np.concatenate([c.x for _, c in got]), reference_generator(z), atol=2e-6)
    points = latent_fn.latents(1, 2, LATENT).astype(np.float64)
    s, _ = engine.interpolate(cgan, points, EYE[[0, 3]], 3, "linear", engine.Call())
    np.testing.assert_array_equal(s.z, latent_fn.path(points, 3, "linear")[0])


def test_to_unit_clips_both_ends(gan):
    x = np.array([-1.5, -1, 1, 1.5], np.float32)
    np.testing.assert_array_equal(engine.to_unit(gan, x), [0, 0, 1, 1])


def test_conditional_inversion_across_slices_and_its_settings(cgan, monkeypatch):
    labels = [i % CLASSES for i in range(20)]
    z = latent_fn.latents(6, 20, LATENT) * 0.5
    x = reference_generator(z, EYE[labels]).astype(np.float32)
    inv = engine.invert(cgan, x, EYE[labels], "ENCODER", steps=None, lr=None, prior_weight=None, call=engine.Call())
    np.testing.assert_allclose(inv.z, z, atol=2e-3)
    np.testing.assert_allclose(inv.reconstruction, reference_generator(inv.z, EYE[labels]), atol=2e-6)
    seen = []
    real = cgan.inverter().invert

    def spy(images_, method, y, *, settings, reconstruct, should_stop):
        seen.append(settings.prior_weight)
        return real(images_, method, y, settings=settings, reconstruct=reconstruct, should_stop=should_stop)

    monkeypatch.setattr(cgan.inverter(), "invert", spy)
    engine.invert(cgan, x[:2], EYE[labels[:2]], "ENCODER", steps=None, lr=None, prior_weight=0.5,
                  call=engine.Call())
    assert seen == [0.5]


def test_the_mse_uses_the_models_value_range(gan):
    wide = _copy(gan, output={**gan.manifest["output"], "value_range": [-2.0, 2.0]})
    x = reference_generator(latent_fn.latents(7, 3, LATENT) * 0.5).astype(np.float32) * np.float32(0.9)
    inv = engine.invert(wide, x, None, "ENCODER", steps=None, lr=None, prior_weight=None, call=engine.Call())
    want = (((inv.reconstruction.astype(np.float64) - x) / 4) ** 2).reshape(3, -1).mean(1)
    np.testing.assert_allclose(inv.mse, want, rtol=1e-5, atol=1e-12)


def test_non_finite_latents_from_the_inverter_are_not_answered(gan, monkeypatch):
    bad = np.zeros((1, LATENT), np.float32)
    bad[0, 2] = np.nan
    monkeypatch.setattr(gan.inverter(), "invert", lambda *a, **k: SimpleNamespace(z=bad, steps=3))
    with pytest.raises(BadModelOutput) as err:
        engine.invert(gan, np.zeros((1, 1, SIDE, SIDE), np.float32), None, "OPTIMIZE", steps=None, lr=None,
                      prior_weight=None, call=engine.Call())
    assert str(err.value) == (f"tiny-gan@1 produced 1 non-finite value(s) (NaN/Inf) out of {LATENT} in its latents; "
                              "not answered")
    far = np.full((1, LATENT), 50.0, np.float32)  # latents have no value range
    monkeypatch.setattr(gan.inverter(), "invert", lambda *a, **k: SimpleNamespace(z=far, steps=3))
    inv = engine.invert(gan, np.zeros((1, 1, SIDE, SIDE), np.float32), None, "OPTIMIZE", steps=None, lr=None,
                        prior_weight=None, call=engine.Call())
    assert inv.steps == 3 and inv.z.tolist() == far.tolist()


def test_an_inverter_that_stops_while_the_call_is_still_wanted_is_a_cancellation(gan):
    """should_stop said stop, then the call's own check passes (its client came back): still Cancelled."""
    answers = iter([True, False])
    call = engine.Call(is_active=lambda: next(answers, True))
    x = reference_generator(latent_fn.latents(1, 1, LATENT)).astype(np.float32)
    with pytest.raises(Cancelled) as err:
        engine.invert(gan, x, None, "OPTIMIZE", steps=10**6, lr=None, prior_weight=None, call=call)
    assert str(err.value) == "request cancelled by the client"
