"""The batcher on its own, where what matters is exact: which rows each queued request gets back. (Backpressure,
deadlines, bulk ordering and halving are in tests/test_server_reliability.py.)"""

from __future__ import annotations

import threading

import numpy as np

from server.batcher import Batcher


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
