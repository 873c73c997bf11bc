"""A dynamic batcher per model version, after Triton's: requests are rows of one graph's inputs, coalesced
into one ONNX Runtime call of at most `max_batch` rows.

Knobs (server/config.py): max batch, max queue delay (0: run what is waiting, never wait for more), max queue
size (a full queue refuses at once with RESOURCE_EXHAUSTED) and queue timeout; cancelled and expired requests
are dropped before they cost a run. On top of them: large batches split across `runners` 1-thread calls (two
cores without a 2-thread intra-op pool), bulk work (stream chunks) queued behind interactive requests, an idle
request run inline on its caller's thread, and half of a long queue per batch (no convoy of replies and
requests). Why each rule exists and what it measured: docs/design.md#the-dynamic-batcher.

A row's output depends only on that row, so a sample is the same alone or batched (tests/test_server.py).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout

import numpy as np

from server.errors import Cancelled, DeadlineExceeded, ResourceExhausted

log = logging.getLogger("ganserve.batcher")

RunFn = Callable[[dict[str, np.ndarray]], np.ndarray]


class Result:
    """A one-shot result a handler thread waits for: the part of concurrent.futures.Future the batcher uses, on
    one plain lock (held until the result is set) instead of a Condition with its RLock and per-wait lock, which
    the server's GIL profile showed at ~5% of the per-request Python of single-sample requests."""

    __slots__ = ("_lock", "_done", "_value", "_error")

    def __init__(self):
        self._lock = threading.Lock()
        self._lock.acquire()
        self._done, self._value, self._error = False, None, None

    def set_result(self, value) -> None:
        self._value, self._done = value, True
        self._lock.release()

    def set_exception(self, error: BaseException) -> None:
        self._error, self._done = error, True
        self._lock.release()

    def done(self) -> bool:
        return self._done

    def result(self, timeout: float | None = None):
        """The value (or raises the error); concurrent.futures.TimeoutError when not set within `timeout`."""
        if not self._done:
            if not self._lock.acquire(timeout=-1 if timeout is None else max(timeout, 0.0)):
                raise FutureTimeout()
            self._lock.release()  # for other waiters and later calls
        if self._error is not None:
            raise self._error
        return self._value


def coalesce(parts: list[dict[str, np.ndarray]]) -> tuple[dict[str, np.ndarray], list[slice]]:
    """Several requests' rows as one batch: each input concatenated in order (no copy for a single request), and
    each request's slice of the batch's output rows. The one rule for the queue here and the native front end's
    batches (server/gateway_backend.py)."""
    spans, lo = [], 0
    for part in parts:
        rows = len(next(iter(part.values())))
        spans.append(slice(lo, lo + rows))
        lo += rows
    if len(parts) == 1:
        return dict(parts[0]), spans
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}, spans


class _Item:
    __slots__ = ("feeds", "rows", "future", "enqueued", "deadline", "is_active", "bulk")

    def __init__(self, feeds, deadline, is_active, bulk=False):
        self.feeds, self.bulk = feeds, bulk
        self.rows = len(next(iter(feeds.values())))
        self.future = Result()
        self.enqueued = time.monotonic()
        self.deadline = deadline
        self.is_active = is_active


class Batcher:
    """Runs `run(feeds) -> outputs (rows, ...)` over coalesced requests on one worker thread."""

    def __init__(self, name: str, run: RunFn, *, max_batch: int, max_queue: int, max_delay_s: float,
                 queue_timeout_s: float, observe: Callable[[str, int, int], None] | None = None,
                 bulk_max_wait_s: float = 1.0,
                 runners: int = 1, split_rows: int = 64, split_s: float = 0.004, inline_when_idle: bool = False,
                 run_idle: RunFn | None = None, alone: Callable[[], bool] = lambda: True,
                 halve_s: float = 0.0):
        self.name, self._run, self._run_idle, self._alone = name, run, run_idle, alone
        self.inline_when_idle = inline_when_idle and max_delay_s == 0
        self._busy = False  # a batch is running (on the worker, or inline on a caller's thread)
        self.runners, self.split_rows, self.split_s = runners, split_rows, split_s
        self._row_s = 0.0  # running mean of seconds per row of runs of >= 32 rows (0 until measured: no split)
        # running mean of seconds per row of every queued run, small ones included (a batch's expected length)
        self._batch_row_s, self.halve_s = 0.0, halve_s
        # runners - 1 helper threads for the parts of a split batch (the worker thread runs the last part). Not
        # shut down at close(): a retired batcher still runs its in-flight requests; idle helpers exit when the
        # batcher is garbage-collected.
        self._helpers = (ThreadPoolExecutor(runners - 1, thread_name_prefix=f"runner-{name}")
                         if runners > 1 else None)
        self.max_batch, self.max_queue = max_batch, max_queue
        self.max_delay_s, self.queue_timeout_s = max_delay_s, queue_timeout_s
        self._observe = observe or (lambda name, batch, depth: None)
        self._queue: deque[_Item] = deque()   # interactive requests
        self._bulk: deque[_Item] = deque()    # stream chunks
        self.bulk_max_wait_s = bulk_max_wait_s
        self._bulk_went_first = False
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name=f"batcher-{name}", daemon=True)
        self._thread.start()

    # -- client side --------------------------------------------------------------------------------------
    def submit(self, feeds: dict[str, np.ndarray], *, deadline: float | None = None,
               is_active: Callable[[], bool] | None = None, bulk: bool = False) -> Result:
        """Queue one request (all feeds have the same number of rows); the future holds its output rows.
        `bulk`: a part of a long job (a stream chunk), run after the interactive requests already waiting."""
        item = _Item(feeds, deadline, is_active, bulk)
        with self._cond:
            if self._closed:
                # Retired (a newer version replaced this one, or the version was deleted): in-flight
                # requests that already hold this model still finish, on the caller's thread.
                self._execute([item])
                return item.future
            if len(self._queue) + len(self._bulk) >= self.max_queue:
                raise ResourceExhausted(f"model {self.name}: queue full ({self.max_queue} requests waiting); "
                                        "retry with backoff")
            inline = self.inline_when_idle and not bulk and not self._busy and not self._queue and not self._bulk
            if not inline:
                (self._bulk if bulk else self._queue).append(item)
                self._cond.notify()
                return item.future
            self._busy = True
        try:
            self._execute([item], idle=True)
        finally:
            with self._cond:
                self._busy = False
                if self._queue or self._bulk:
                    self._cond.notify()  # requests that arrived meanwhile: the worker runs them as one batch
        return item.future

    def depth(self) -> int:
        return len(self._queue) + len(self._bulk)

    def close(self) -> None:
        """Stop accepting into the queue; the worker finishes what is queued, then exits."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    # -- worker -------------------------------------------------------------------------------------------
    def _take(self) -> list[_Item]:
        with self._cond:
            while (self._busy or (not self._queue and not self._bulk)) and not self._closed:
                self._cond.wait()
            if not self._queue and not self._bulk:
                return []
            if self.max_delay_s > 0:
                # Wait up to max_delay for more rows, measured from the oldest request's arrival.
                until = min(q[0].enqueued for q in (self._queue, self._bulk) if q) + self.max_delay_s
                while (sum(i.rows for q in (self._queue, self._bulk) for i in q) < self.max_batch
                       and not self._closed):
                    left = until - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
            batch, rows = [], 0
            # one overdue chunk first, then interactive requests first again (alternating under saturation)
            overdue = self._bulk and time.monotonic() - self._bulk[0].enqueued >= self.bulk_max_wait_s
            if overdue and not (self._bulk_went_first and self._queue):
                batch.append(self._bulk.popleft())
                rows = batch[0].rows
            self._bulk_went_first = bool(batch)
            limit = self.max_batch
            if not batch and self.halve_s > 0 and self.max_delay_s == 0:
                waiting = sum(i.rows for i in self._queue)
                if waiting > 1 and waiting * self._batch_row_s >= self.halve_s:
                    limit = min(limit, -(-waiting // 2))  # half of them, rounded up (module docstring)
            for q in (self._queue, self._bulk):
                while q and (not batch or rows + q[0].rows <= limit):
                    item = q.popleft()
                    batch.append(item)
                    rows += item.rows
            self._busy = True
            return batch

    def _loop(self) -> None:
        while True:
            batch = self._take()
            if not batch:
                return
            t0 = time.perf_counter()
            try:
                self._execute(batch)
            finally:
                row_s = (time.perf_counter() - t0) / sum(i.rows for i in batch)
                self._batch_row_s = row_s if self._batch_row_s == 0.0 else 0.8 * self._batch_row_s + 0.2 * row_s
                with self._cond:
                    self._busy = False

    def _live(self, items: list[_Item]) -> list[_Item]:
        now = time.monotonic()
        live = []
        for item in items:
            if item.deadline is not None and now > item.deadline:
                item.future.set_exception(DeadlineExceeded("deadline passed while the request was queued"))
            elif item.is_active is not None and not item.is_active():
                item.future.set_exception(Cancelled("request cancelled by the client"))
            elif not item.bulk and now - item.enqueued > self.queue_timeout_s:
                # (a stream chunk waits behind interactive work by design: its call's deadline bounds it, not the
                # queue timeout, which would end a stream mid-way RESOURCE_EXHAUSTED for having yielded)
                item.future.set_exception(ResourceExhausted(
                    f"model {self.name}: waited {1000 * (now - item.enqueued):.0f} ms in the queue, more than "
                    f"the queue timeout of {1000 * self.queue_timeout_s:.0f} ms; retry with backoff"))
            else:
                live.append(item)
        return live

    def _timed_run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        t0 = time.perf_counter()
        out = self._run(feeds)
        rows = len(out)
        if rows >= 32:  # runs of a few rows are mostly per-call overhead: they would overstate the cost per row
            row_s = (time.perf_counter() - t0) / rows
            # racy between runner threads, harmlessly: any recent measurement will do
            self._row_s = row_s if self._row_s == 0.0 else 0.8 * self._row_s + 0.2 * row_s
        return out

    def _run_sliced(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        total = len(next(iter(feeds.values())))
        run = self._timed_run if self._helpers is not None else self._run
        if total <= self.max_batch:
            return run(feeds)
        # more rows than a batch (one large request, or a part of one): run it in max_batch slices
        return np.concatenate([run({k: v[lo:lo + self.max_batch] for k, v in feeds.items()})
                               for lo in range(0, total, self.max_batch)])

    def run_batch(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """Run rows that are already a batch at once, on the caller's thread, beside the queue: the native front
        end's batches (server/gateway_backend.py), gathered by the gateway. Several such calls run at the same
        time (ONNX Runtime's Run is thread-safe), one per core, where the queue runs one batch at a time. Never on
        `run_idle`: measured through the gateway at one client, the 2-thread run left the mean latency where it
        was (0.81 ms) and cost 30% more CPU."""
        return self._compute(feeds, idle=False)

    def _compute(self, feeds: dict[str, np.ndarray], idle: bool) -> np.ndarray:
        total = len(next(iter(feeds.values())))
        self._observe(self.name, total, self.depth())
        if idle and self._run_idle is not None and total < self.split_rows and self._alone():
            return self._run_idle(feeds)
        if self._helpers is not None and total >= self.split_rows and total * self._row_s >= self.split_s:
            step = -(-total // self.runners)
            parts = [{k: v[lo:lo + step] for k, v in feeds.items()} for lo in range(0, total, step)]
            pending = [self._helpers.submit(self._run_sliced, part) for part in parts[:-1]]
            last = self._run_sliced(parts[-1])
            return np.concatenate([f.result() for f in pending] + [last])
        return self._run_sliced(feeds)

    def _execute(self, items: list[_Item], idle: bool = False) -> None:
        """Run `items` as one batch and resolve their futures. `idle`: the inline path (nothing else runs)."""
        items = self._live(items)
        if not items:
            return
        try:
            feeds, spans = coalesce([i.feeds for i in items])
            out = self._compute(feeds, idle)
        except BaseException as e:  # noqa: BLE001 - handed to every waiting request, logged by the servicer
            for item in items:
                item.future.set_exception(e)
            return
        for item, span in zip(items, spans):
            item.future.set_result(out[span])
