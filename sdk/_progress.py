"""A progress bar for long jobs: tqdm's when it is installed (not a dependency of the thin SDK), else one line on
stderr refreshed at most once a second."""

from __future__ import annotations

import sys
import time

try:
    from tqdm import tqdm
except ImportError:  # optional
    tqdm = None


class _Line:
    """The few tqdm members the SDK uses: update(k), n, close(), and use as a context manager."""

    def __init__(self, total: int, initial: int, desc: str, disable: bool):
        self.total, self.n, self.desc, self.disable = total, initial, desc, disable
        self._shown = 0.0

    def update(self, k: int) -> None:
        self.n += k
        now = time.monotonic()
        if not self.disable and (now - self._shown >= 1.0 or self.n >= self.total):
            self._shown = now
            print(f"\r{self.desc}: {self.n}/{self.total} samples", end="", file=sys.stderr, flush=True)

    def close(self) -> None:
        if not self.disable and self._shown:
            print(file=sys.stderr)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def progress(total: int, desc: str, initial: int = 0, disable: bool = False):
    """A context manager counting samples up to `total`."""
    if tqdm is not None:
        return tqdm(total=total, initial=initial, unit="sample", unit_scale=True, dynamic_ncols=True, desc=desc,
                    disable=disable)
    return _Line(total, initial, desc, disable)
