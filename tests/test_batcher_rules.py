"""The batcher's rules at their exact boundaries. server.batcher reads the time through its module's `time`: here a
clock moved by hand (in powers of two, so every mean is exact) replaces it, so the running means that decide a
split or a halving, the queue timeout and the overdue-bulk rule are checked at the exact values where they flip,
not with sleeps. The queue delay and the one-shot result's timeout use real waits (lower bounds only)."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

import server.batcher as batcher_module
from server.batcher import Batcher, Result
from server.errors import ResourceExhausted

P = 2.0 ** -10  # seconds per row of the hand-clocked model: a power of two, so 0.8 a + 0.2 b is exact up to rounding


class Clock:
    """Stands in for the time module inside server.batcher: monotonic and perf_counter read `now`."""

    def __init__(self):
        self.now = 1024.0

    def monotonic(self) -> float:
        return self.now

    perf_counter = monotonic


@pytest.fixture
def clock(monkeypatch):
    c = Clock()
    monkeypatch.setattr(batcher_module, "time", c)
    return c


def _rows(n: int, value: float = 1.0):
    return {"z": np.full((n, 2), value, np.float32)}


def _idle(b: Batcher) -> None:
    """Wait until the worker has finished its batch (it updates its means before it clears the busy flag)."""
    deadline = time.monotonic() + 10
    while b._busy:
        assert time.monotonic() < deadline, "the worker never finished"
        time.sleep(0.005)


class Model:
    """run(feeds): `per_row` hand-clock seconds per row; holds each run until `gate` is set; records row counts."""

    def __init__(self, clock: Clock, per_row: float = P):
        self.clock, self.per_row, self.calls = clock, per_row, []
        self.gate, self.started = threading.Event(), threading.Event()
        self.gate.set()
        self.advance_once = 0.0  # extra hand-clock seconds the next run takes (a request held in the model)

    def __call__(self, feeds):
        self.started.set()
        assert self.gate.wait(10), "the test never opened the gate"
        rows = len(feeds["z"])
        self.clock.now += rows * self.per_row + self.advance_once
        self.advance_once = 0.0
        self.calls.append(rows)
        return feeds["z"] * 2


def test_the_queued_batch_cost_per_row_is_a_running_mean_of_every_batch(clock):
    """_batch_row_s (what halving reads): the first batch's seconds per row (4 rows: per row, not per batch), then
    0.8 old + 0.2 new: P, then 3P -> 1.4 P, exactly."""
    model = Model(clock)
    b = Batcher("m", model, max_batch=64, max_queue=8, max_delay_s=0, queue_timeout_s=60)
    try:
        assert b._batch_row_s == 0.0
        b.submit(_rows(4)).result(10)
        _idle(b)
        assert b._batch_row_s == P
        model.per_row = 3 * P
        b.submit(_rows(4)).result(10)
        _idle(b)
        assert b._batch_row_s == pytest.approx(1.4 * P, rel=1e-12)
    finally:
        b.close()


def test_the_split_cost_per_row_is_measured_on_runs_of_32_rows_or_more_with_helpers_only(clock):
    """_row_s (what a split reads): untouched by a 31-row run, P after a 32-row run, 1.4 P after a 32-row run at 3P;
    never measured by a batcher without helper threads (runners=1)."""
    model = Model(clock)
    b = Batcher("m", model, max_batch=256, max_queue=8, max_delay_s=0, queue_timeout_s=60, runners=2,
                split_rows=10**6)
    alone = Batcher("a", model, max_batch=256, max_queue=8, max_delay_s=0, queue_timeout_s=60)
    try:
        assert b._row_s == 0.0
        b.submit(_rows(31)).result(10)
        assert b._row_s == 0.0
        b.submit(_rows(32)).result(10)
        assert b._row_s == P
        model.per_row = 3 * P
        b.submit(_rows(32)).result(10)
        assert b._row_s == pytest.approx(1.4 * P, rel=1e-12)
        alone.submit(_rows(32)).result(10)
        assert alone._row_s == 0.0
    finally:
        b.close()
        alone.close()


@pytest.mark.parametrize("split_s, want", [(64 * P, [32, 32, 32]),        # expected time == split_s: split
                                           (64 * P * 1.0001, [32, 64])])  # just above: one run
def test_a_batch_splits_when_its_expected_time_reaches_split_s(clock, split_s, want):
    model = Model(clock)
    b = Batcher("m", model, max_batch=256, max_queue=8, max_delay_s=0, queue_timeout_s=60, runners=2,
                split_rows=64, split_s=split_s)
    try:
        b.submit(_rows(32)).result(10)  # measures P per row
        z = np.arange(128, dtype=np.float32).reshape(64, 2)
        np.testing.assert_array_equal(b.submit({"z": z}).result(10), z * 2)
        assert sorted(model.calls) == sorted(want)
    finally:
        b.close()


def _hold_then_queue(b: Batcher, model: Model, queued: list[tuple[int, bool]], held_s: float = 0.0):
    """Hold a first 1-row request inside the model, queue `queued` ((rows, bulk) each, values 1, 2, ...), then let
    the held run finish after `held_s` hand-clock seconds. Returns the first result and the queued ones."""
    model.gate.clear()
    model.started.clear()
    first = b.submit(_rows(1))
    assert model.started.wait(10) and b.depth() == 0
    results = [b.submit(_rows(n, k + 1), bulk=bulk) for k, (n, bulk) in enumerate(queued)]
    model.advance_once = held_s
    model.gate.set()
    return first, results


@pytest.mark.parametrize("halve_s, want", [(2 * P, [1, 1, 1]),        # 2 rows x P == halve_s: half (1 row)
                                           (2 * P * 1.0001, [1, 2])])  # just above: all
def test_halving_starts_when_the_waiting_rows_would_take_halve_s(clock, halve_s, want):
    model = Model(clock)
    b = Batcher("m", model, max_batch=64, max_queue=8, max_delay_s=0, queue_timeout_s=60, halve_s=halve_s)
    try:
        b.submit(_rows(1)).result(10)  # the batch cost per row is now P
        _idle(b)
        model.calls.clear()
        first, queued = _hold_then_queue(b, model, [(1, False), (1, False)])
        assert first.result(10)[0, 0] == 2 and [q.result(10)[0, 0] for q in queued] == [2, 4]
        assert model.calls == want
    finally:
        b.close()


def test_one_waiting_row_is_never_halved_and_takes_the_bulk_behind_it(clock):
    """halving needs more than one waiting row: one interactive row and a bulk chunk still run as one batch."""
    model = Model(clock)
    b = Batcher("m", model, max_batch=64, max_queue=8, max_delay_s=0, queue_timeout_s=60, halve_s=1e-9,
                bulk_max_wait_s=60)
    try:
        _, (chunk, one) = _hold_then_queue(b, model, [(2, True), (1, False)])
        assert chunk.result(10)[:, 0].tolist() == [2, 2] and one.result(10)[0, 0] == 4
        assert model.calls == [1, 3]
    finally:
        b.close()


@pytest.mark.parametrize("held_s, want", [(2.0, [1, 4, 2]),          # waited exactly bulk_max_wait_s: chunk first
                                          (2.0 - P, [1, 2, 4])])     # just under: interactive first
def test_a_bulk_chunk_goes_first_once_it_has_waited_bulk_max_wait_s(clock, held_s, want):
    model = Model(clock)
    b = Batcher("m", model, max_batch=4, max_queue=8, max_delay_s=0, queue_timeout_s=60, bulk_max_wait_s=2.0)
    try:
        _, (chunk, small) = _hold_then_queue(b, model, [(4, True), (2, False)], held_s=held_s - P)
        assert chunk.result(10)[0, 0] == 2 and small.result(10)[0, 0] == 4
        assert model.calls == want
    finally:
        b.close()


def test_an_overdue_chunk_goes_first_at_the_first_batch_too(clock):
    """Both queued before the worker's first look (the test holds the batcher's lock while it submits): an overdue
    chunk (bulk_max_wait_s=0) runs before the interactive request, as it would after any batch."""
    model = Model(clock)
    b = Batcher("m", model, max_batch=4, max_queue=8, max_delay_s=0, queue_timeout_s=60, bulk_max_wait_s=0)
    try:
        with b._cond:
            chunk, small = b.submit(_rows(4), bulk=True), b.submit(_rows(2, 3.0))
        assert chunk.result(10)[0, 0] == 2 and small.result(10)[0, 0] == 6
        assert model.calls == [4, 2]
    finally:
        b.close()


def test_a_request_that_waited_exactly_its_deadline_or_the_queue_timeout_still_runs(clock):
    """Dropped only past them (now > deadline, waited > queue timeout); the message gives both times in ms."""
    model = Model(clock)
    b = Batcher("m", model, max_batch=64, max_queue=8, max_delay_s=0, queue_timeout_s=2.0)
    try:
        model.gate.clear()
        first = b.submit(_rows(1))
        assert model.started.wait(10)
        at_deadline = b.submit(_rows(1, 2.0), deadline=clock.now + 2.0)
        at_timeout = b.submit(_rows(1, 3.0))
        model.advance_once = 2.0 - P  # the held run ends 2.0 s after the two were queued
        model.gate.set()
        assert first.result(10)[0, 0] == 2 and at_deadline.result(10)[0, 0] == 4 and at_timeout.result(10)[0, 0] == 6
        assert model.calls == [1, 2]
    finally:
        b.close()
    short = Batcher("m", model, max_batch=64, max_queue=8, max_delay_s=0, queue_timeout_s=1.5)
    try:
        _, (late,) = _hold_then_queue(short, model, [(1, False)], held_s=2.0 - P)
        with pytest.raises(ResourceExhausted) as err:
            late.result(10)
        assert str(err.value) == ("model m: waited 2000 ms in the queue, more than the queue timeout of 1500 ms; "
                                  "retry with backoff")
    finally:
        short.close()


def test_a_request_arriving_while_the_worker_runs_a_batch_queues_instead_of_running_inline(clock):
    """inline_when_idle runs a request on its caller only when the model is idle: while the worker runs a bulk
    chunk, an interactive request queues behind it."""
    model = Model(clock)
    b = Batcher("m", model, max_batch=64, max_queue=8, max_delay_s=0, queue_timeout_s=60, inline_when_idle=True)
    try:
        model.gate.clear()
        chunk = b.submit(_rows(2), bulk=True)  # bulk work never runs inline: the worker takes it
        assert model.started.wait(10)
        small = b.submit(_rows(1, 5.0))
        assert not small.done() and b.depth() == 1
        model.gate.set()
        assert chunk.result(10)[0, 0] == 2 and small.result(10)[0, 0] == 10 and model.calls == [2, 1]
    finally:
        model.gate.set()
        b.close()


def test_run_batch_never_uses_the_idle_runner():
    idle_calls = []
    b = Batcher("m", lambda f: f["z"] * 2, max_batch=64, max_queue=8, max_delay_s=0, queue_timeout_s=60,
                inline_when_idle=True, run_idle=lambda f: idle_calls.append(len(f["z"])) or f["z"] * 3)
    try:
        np.testing.assert_array_equal(b.run_batch(_rows(2)), np.full((2, 2), 2))
        assert idle_calls == []
    finally:
        b.close()


def test_a_lone_request_waits_the_queue_delay_for_company():
    """max_delay_s 0.3 with room left in the batch: a lone request runs no sooner than 0.3 s after it arrived (a
    lower bound: a slow machine only makes it later)."""
    b = Batcher("m", lambda f: f["z"] * 2, max_batch=4, max_queue=8, max_delay_s=0.3, queue_timeout_s=60)
    try:
        t0 = time.monotonic()
        assert b.submit(_rows(1)).result(10)[0, 0] == 2
        assert time.monotonic() - t0 >= 0.3
    finally:
        b.close()


def test_a_pending_result_with_timeout_0_raises_at_once():
    """result(0) does not wait: a wrong floor of 1 s would wait at least 1 s (generous: far above any stall)."""
    from concurrent.futures import TimeoutError as FutureTimeout

    r = Result()
    t0 = time.monotonic()
    with pytest.raises(FutureTimeout):
        r.result(0)
    with pytest.raises(FutureTimeout):
        r.result(-5)
    assert time.monotonic() - t0 < 1.0
