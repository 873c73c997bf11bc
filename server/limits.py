"""Process-level limits of a server: what one request or one client can make the process hold.

`return_large_buffers()`: glibc serves an allocation of at least M_MMAP_THRESHOLD bytes with its own mmap and
unmaps it when freed, but by default it raises that threshold to the size of any such block once it is freed
(up to 32 MiB), so after one large request every later one of that size comes from the heap's arenas and
stays in RSS after the call (measured: 100 Health calls with 6 MiB names left +10 MB for good; with the
threshold fixed at 1 MiB, RSS came back to its baseline). Large messages are rare and cost far more than an
mmap, so the threshold is fixed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger("ganserve.server")
M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter (malloc.h)
MMAP_THRESHOLD_BYTES = 1 << 20


def return_large_buffers() -> bool:
    """Fix glibc's mmap threshold at 1 MiB (see the module docstring); False where there is no glibc."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))
    except (OSError, AttributeError, TypeError):  # not glibc (musl, macOS): their allocators behave differently
        log.debug("mallopt unavailable: large buffers stay with the allocator's defaults")
        return False
