"""The batcher on its own, where what matters is exact: which rows each queued request gets back. (Backpressure,
deadlines, bulk ordering and halving are in tests/test_server_reliability.py.)"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from server.batcher import Batcher, Result, coalesce
from server.errors import Cancelled, DeadlineExceeded, ResourceExhausted

ROOT = Path(__file__).resolve().parent.parent


def test_held_gate_three_queued_items_each_get_their_own_rows():
    """Hold the run on a first request, queue three requests of 2, 3 and 1 rows with distinct values, release: the
    three run as one batch of 6 rows and each gets back exactly its rows (sliced by rows, not by item index)."""
    started, release, calls = threading.Event(), threading.Event(), []

    def run(feeds):
        calls.append(len(feeds["z"]))
        started.set()
        assert release.wait(10), "the test never released the gate"
        return feeds["z"] * 10 + 1

    b = Batcher("m", run, max_batch=64, max_queue=8, max_delay_s=0, queue_timeout_s=30)
    try:
        first = b.submit({"z": np.zeros((1, 2), np.float32)})
        assert started.wait(10) and b.depth() == 0  # the worker holds the first request inside run
        inputs = [np.arange(2 * r, dtype=np.float32).reshape(r, 2) + 100 * k for k, r in enumerate((2, 3, 1))]
        queued = [b.submit({"z": z}) for z in inputs]
        assert b.depth() == 3 and not any(q.done() for q in queued)
        release.set()
        np.testing.assert_array_equal(first.result(10), [[1, 1]])
        for z, q in zip(inputs, queued):
            out = q.result(10)
            assert out.shape == z.shape
            np.testing.assert_array_equal(out, z * 10 + 1)
        assert calls == [1, 6]
    finally:
        release.set()
        b.close()


def _double(feeds):
    return feeds["z"] * 2


def test_coalesce_concatenates_every_input_and_returns_each_requests_rows():
    parts = [{"z": np.full((r, 2), k, np.float32), "y": np.full((r, 3), -k, np.float32)} for k, r in enumerate((2, 1, 3))]
    feeds, spans = coalesce(parts)
    assert spans == [slice(0, 2), slice(2, 3), slice(3, 6)]
    np.testing.assert_array_equal(feeds["z"][:, 0], [0, 0, 1, 2, 2, 2])
    np.testing.assert_array_equal(feeds["y"][:, 0], [0, 0, -1, -2, -2, -2])
    alone, spans = coalesce(parts[2:])
    assert spans == [slice(0, 3)] and alone["z"] is parts[2]["z"] and alone is not parts[2]  # no copy of the rows


def test_a_failed_result_is_done_and_raises_for_every_call():
    r = Result()
    r.set_exception(ResourceExhausted("full"))
    assert r.done()
    for _ in range(2):
        with pytest.raises(ResourceExhausted, match="full"):
            r.result(0)


def test_bulk_chunks_count_against_the_queue_limit():
    release = threading.Event()
    b = Batcher("m", lambda f: release.wait(10) and _double(f), max_batch=8, max_queue=2, max_delay_s=0,
                queue_timeout_s=30)
    try:
        first = b.submit({"z": np.ones((1, 2), np.float32)})
        _until(lambda: b.depth() == 0)
        chunks = [b.submit({"z": np.ones((1, 2), np.float32)}, bulk=True) for _ in range(2)]
        assert b.depth() == 2
        with pytest.raises(ResourceExhausted, match=r"model m: queue full \(2 requests waiting\); retry with backoff"):
            b.submit({"z": np.ones((1, 2), np.float32)})
        release.set()
        assert first.result(10)[0, 0] == 2 and [c.result(10)[0, 0] for c in chunks] == [2, 2]
    finally:
        release.set()
        b.close()


def test_a_closed_batcher_runs_a_late_request_on_the_callers_thread():
    threads = []

    def run(feeds):
        threads.append(threading.current_thread().name)
        return _double(feeds)

    b = Batcher("m", run, max_batch=8, max_queue=2, max_delay_s=0, queue_timeout_s=30)
    b.close()
    late = b.submit({"z": np.arange(4, dtype=np.float32).reshape(2, 2)})
    assert late.done() and threads == [threading.current_thread().name]
    np.testing.assert_array_equal(late.result(0), [[0, 2], [4, 6]])


def test_run_batch_runs_rows_beside_the_queue_and_reports_the_batch():
    seen = []
    b = Batcher("m", _double, max_batch=4, max_queue=2, max_delay_s=0, queue_timeout_s=30,
                observe=lambda name, rows, depth: seen.append((name, rows, depth)))
    try:
        out = b.run_batch({"z": np.arange(12, dtype=np.float32).reshape(6, 2)})
        np.testing.assert_array_equal(out, np.arange(12).reshape(6, 2) * 2)  # 6 rows in max_batch slices of 4
        assert seen == [("m", 6, 0)]
    finally:
        b.close()


def test_a_large_batch_splits_across_the_runners_once_the_cost_per_row_is_measured():
    """runners=3: after one measured run (of >= 32 rows), a batch of >= split_rows rows whose expected time reaches
    split_s runs in three parts on three threads; the rows come back in order."""
    threads = []

    def run(feeds):
        threads.append((threading.current_thread().name, len(feeds["z"])))
        return _double(feeds)

    b = Batcher("m", run, max_batch=256, max_queue=4, max_delay_s=0, queue_timeout_s=30, runners=3,
                split_rows=64, split_s=1e-9)
    try:
        z = np.arange(128, dtype=np.float32).reshape(64, 2)  # exactly split_rows
        # 32 rows: the smallest run that measures the cost per row (until then a batch never splits)
        np.testing.assert_array_equal(b.submit({"z": z[:32]}).result(10), z[:32] * 2)
        assert [n for _, n in threads] == [32]
        threads.clear()
        np.testing.assert_array_equal(b.submit({"z": z}).result(10), z * 2)
        parts = threads
        assert [n for _, n in sorted(parts)] == [20, 22, 22], parts  # batcher-m ran the last part
        # two parts on the helper pool (one thread may take both), the last on the worker itself
        assert sum(name.startswith("runner-m") for name, _ in parts) == 2
        assert sum(name == "batcher-m" for name, _ in parts) == 1
    finally:
        b.close()


def test_the_batcher_defaults():
    """The knobs the server leaves at their defaults (server/app.py passes the others): overdue bulk after 1 s,
    split at 64 rows and 4 ms; one runner (no helper threads), no halving, no inline path unless asked."""
    b = Batcher("m", _double, max_batch=8, max_queue=2, max_delay_s=0, queue_timeout_s=30)
    try:
        assert (b.bulk_max_wait_s, b.split_rows, b.split_s, b.runners, b.halve_s) == (1.0, 64, 0.004, 1, 0.0)
        assert b._helpers is None and b.inline_when_idle is False and b._thread.daemon
    finally:
        b.close()


def test_a_forgotten_batcher_does_not_keep_the_process_alive():
    """The worker thread is a daemon: a process that never closes its batcher still exits."""
    code = ("import numpy as np; from server.batcher import Batcher; "
            "b = Batcher('m', lambda f: f['z'], max_batch=8, max_queue=2, max_delay_s=0, queue_timeout_s=1); "
            "print(b.submit({'z': np.ones((1, 2), np.float32)}).result(10).sum())")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 0 and done.stdout.strip() == "2.0", done.stderr


def test_a_queue_delay_waits_for_more_rows_and_stops_waiting_at_max_batch():
    """max_delay 0.9 s: a lone request waits for company (a second one queued right after it joins its batch);
    max_delay 30 s: the batch leaves as soon as it holds max_batch rows, not after the delay."""
    for delay in (0.9, 30.0):
        calls = []
        b = Batcher("m", lambda f, calls=calls: calls.append(len(f["z"])) or _double(f), max_batch=4, max_queue=4,
                    max_delay_s=delay, queue_timeout_s=60)
        try:
            one = b.submit({"z": np.ones((1, 2), np.float32)})
            if delay > 1:
                time.sleep(0.3)  # the lone request is waiting for company by now (it may wait 30 s)
            three = b.submit({"z": np.full((3, 2), 2, np.float32)})
            assert one.result(10)[0, 0] == 2 and three.result(10)[:, 0].tolist() == [4, 4, 4]
            assert calls == [4], (delay, calls)
        finally:
            b.close()


def test_result_without_a_timeout_waits_as_long_as_it_takes():
    r = Result()
    threading.Timer(1.5, r.set_result, args=(7,)).start()  # longer than any fixed wait a bug could put there
    assert r.result() == 7


def test_a_failing_run_fails_every_request_of_its_batch():
    release = threading.Event()

    def run(feeds):
        release.wait(10)
        if len(feeds["z"]) > 1:
            raise RuntimeError("the model failed")
        return _double(feeds)

    b = Batcher("m", run, max_batch=8, max_queue=4, max_delay_s=0, queue_timeout_s=30)
    try:
        first = b.submit({"z": np.ones((1, 2), np.float32)})
        _until(lambda: b.depth() == 0)
        queued = [b.submit({"z": np.ones((1, 2), np.float32)}) for _ in range(2)]
        release.set()
        assert first.result(10)[0, 0] == 2
        for q in queued:
            with pytest.raises(RuntimeError, match="the model failed"):
                q.result(10)
    finally:
        release.set()
        b.close()


def test_requests_dropped_in_the_queue_say_why():
    release = threading.Event()
    b = Batcher("m", lambda f: release.wait(10) and _double(f), max_batch=8, max_queue=8, max_delay_s=0,
                queue_timeout_s=0.2)
    try:
        b.submit({"z": np.ones((1, 2), np.float32)})
        _until(lambda: b.depth() == 0)
        t0 = time.monotonic()
        expired = b.submit({"z": np.ones((1, 2), np.float32)}, deadline=t0 + 0.01)
        cancelled = b.submit({"z": np.ones((1, 2), np.float32)}, is_active=lambda: False)
        waited = b.submit({"z": np.ones((1, 2), np.float32)})
        time.sleep(0.3)  # past the 10 ms deadline and the 0.2 s queue timeout (the checks below expect the drops)
        release.set()
        with pytest.raises(DeadlineExceeded, match="^deadline passed while the request was queued$"):
            expired.result(10)
        with pytest.raises(Cancelled, match="^request cancelled by the client$"):
            cancelled.result(10)
        with pytest.raises(ResourceExhausted) as err:
            waited.result(10)
        message = str(err.value)
        assert message.endswith("ms in the queue, more than the queue timeout of 200 ms; retry with backoff")
        ms = int(message.split("waited ")[1].split(" ms")[0])
        assert 200 <= ms <= 1000 * (time.monotonic() - t0) + 50, message  # between the timeout and what passed
    finally:
        release.set()
        b.close()


def test_a_stream_chunk_waits_past_the_queue_timeout_that_refuses_a_single_request():
    """Bulk work (stream chunks) yields to interactive requests by design, so the queue timeout, which sheds
    interactive load, does not end a stream mid-way: a chunk queued as long as a refused request is served;
    only its call's deadline bounds it."""
    release = threading.Event()
    b = Batcher("m", lambda f: release.wait(10) and _double(f), max_batch=8, max_queue=8, max_delay_s=0,
                queue_timeout_s=0.05)
    try:
        b.submit({"z": np.ones((1, 2), np.float32)})
        _until(lambda: b.depth() == 0)
        single = b.submit({"z": np.ones((1, 2), np.float32)})
        chunk = b.submit({"z": np.full((2, 2), 3, np.float32)}, bulk=True)
        late = b.submit({"z": np.ones((1, 2), np.float32)}, bulk=True, deadline=time.monotonic() + 0.01)
        time.sleep(0.2)  # 4x the queue timeout
        release.set()
        with pytest.raises(ResourceExhausted, match="queue timeout of 50 ms"):
            single.result(10)
        np.testing.assert_array_equal(chunk.result(10), np.full((2, 2), 6, np.float32))
        with pytest.raises(DeadlineExceeded):
            late.result(10)
    finally:
        release.set()
        b.close()


def _until(cond, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)
