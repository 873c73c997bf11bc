"""Experiment: the stock server with proposed changes patched in, so `python -m bench --variant ...` can
measure them against the stock server in the same interleaved rounds. Nothing here is used by the server
itself; a change that measures well is for the server's owner to adopt (see docs/bench.md).

    python -m bench.variants PATCHES [server flags...]      PATCHES: comma list, or "none"

Patches:
  latents-prefix  seed -> latents draws only the rows a request needs from its 1024-row block (when
                  truncation is off). numpy's Generator fills an array element by element, so the first k rows
                  of a (1024, d) draw are exactly a (k, d) draw from the same generator: identical latents,
                  ~1 ms less per single-sample request (a 1024 x d block of normals is drawn today).
  pool            N = `GANSERVE_BENCH_RUNNERS` (default 2) model runs at a time per model, each with the
                  session's 1 intra-op thread (instead of one batcher thread), and a caller whose model is idle
                  runs its batch on its own thread (no hand-off to the batcher thread and back, which costs a
                  scheduler wake-up each way on a busy machine); requests of >= 64 rows are split across the
                  N runners.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from concurrent.futures import Future

import numpy as np


def patch_latents_prefix() -> None:
    from protos import latents as L

    stock = L.latents

    def latents(seed, n, dim, *, offset=0, truncation=0.0):
        if truncation > 0 or not 0 <= seed <= L.MAX_SEED or n < 0 or offset < 0 or dim <= 0:
            return stock(seed, n, dim, offset=offset, truncation=truncation)  # same checks and errors
        out = np.empty((n, dim), dtype=np.float32)
        first, last = offset // L.BLOCK, (offset + n - 1) // L.BLOCK
        for block in range(first, last + 1 if n else first):
            lo, hi = max(offset, block * L.BLOCK), min(offset + n, (block + 1) * L.BLOCK)
            rng = np.random.default_rng([int(seed), int(block)])
            z = rng.standard_normal((hi - block * L.BLOCK, dim), dtype=np.float32)  # the block's first rows
            out[lo - offset:hi - offset] = z[lo - block * L.BLOCK:]
        return out

    L.latents = latents


def patch_pool(runners: int) -> None:
    from server import batcher as B

    class PoolBatcher(B.Batcher):
        def __init__(self, *args, **kwargs):
            self._running, self._runners = 0, runners
            super().__init__(*args, **kwargs)  # starts the first worker thread
            for i in range(1, runners):
                threading.Thread(target=self._loop, name=f"batcher-{self.name}-{i}", daemon=True).start()

        def submit(self, feeds, *, deadline=None, is_active=None):
            rows = len(next(iter(feeds.values())))
            if self._runners > 1 and rows >= 64:  # split a large request across the runners
                step = -(-rows // self._runners)
                slices = [{k: v[lo:lo + step] for k, v in feeds.items()} for lo in range(0, rows, step)]
                # all but the last go to the queue (worker threads), the last runs here if a runner is free
                parts = [B.Batcher.submit(self, f, deadline=deadline, is_active=is_active) for f in slices[:-1]]
                parts.append(self._submit_one(slices[-1], deadline, is_active))
                return _joined(parts)
            return self._submit_one(feeds, deadline, is_active)

        def _submit_one(self, feeds, deadline, is_active):
            with self._cond:
                inline = not self._closed and not self._queue and self._running < self._runners
                if inline:
                    self._running += 1
            if not inline:
                return B.Batcher.submit(self, feeds, deadline=deadline, is_active=is_active)
            item = B._Item(feeds, deadline, is_active)
            try:
                self._execute([item])
            finally:
                self._done()
            return item.future

        def _done(self):
            with self._cond:
                self._running -= 1
                self._cond.notify_all()

        def _take(self):
            # the stock coalescing (max batch, max delay), plus: wait for a free runner; one lock hold throughout
            with self._cond:
                while (not self._queue or self._running >= self._runners) and not self._closed:
                    self._cond.wait()
                if not self._queue:
                    return []
                if self.max_delay_s > 0:
                    until = self._queue[0].enqueued + self.max_delay_s
                    while sum(i.rows for i in self._queue) < self.max_batch and not self._closed:
                        left = until - time.monotonic()
                        if left <= 0:
                            break
                        self._cond.wait(left)
                batch, rows = [], 0
                while self._queue and (not batch or rows + self._queue[0].rows <= self.max_batch):
                    item = self._queue.popleft()
                    batch.append(item)
                    rows += item.rows
                self._running += 1
                return batch

        def _loop(self):
            while True:
                batch = self._take()
                if not batch:
                    return
                try:
                    self._execute(batch)
                finally:
                    self._done()

    def _joined(parts: list[Future]) -> Future:
        out, left, lock = Future(), [len(parts)], threading.Lock()

        def one_done(_):
            with lock:
                left[0] -= 1
                if left[0]:
                    return
            errors = [p.exception() for p in parts if p.exception() is not None]
            if errors:
                out.set_exception(errors[0])
            else:
                out.set_result(np.concatenate([p.result() for p in parts]))

        for p in parts:
            p.add_done_callback(one_done)
        return out

    B.Batcher = PoolBatcher
    import server.app as app

    app.Batcher = PoolBatcher  # the name app.py imported


def main() -> int:
    patches = [p for p in sys.argv.pop(1).split(",") if p and p != "none"]
    for p in patches:
        if p == "latents-prefix":
            patch_latents_prefix()
        elif p == "pool":
            patch_pool(int(os.environ.get("GANSERVE_BENCH_RUNNERS", "2")))
        else:
            raise SystemExit(f"unknown patch {p!r}; known: latents-prefix, pool")
    from server.__main__ import main as serve

    return serve(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
