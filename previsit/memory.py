"""Giving memory back to the system after a large read.

glibc's malloc keeps what is freed for reuse, and after a large block is freed it keeps
more: its mmap threshold rises to that block's size and the heap top it keeps to twice
that (up to 64 MB). A run that has just scanned a folder, or read a 14 MB Bundle of a
day's appointments, would hold that much free memory for the rest of the night: at
10,000 appointments, 45 MB of the run's peak. `give_back()` asks glibc to return it
(`malloc_trim`); where there is no such call (musl, macOS) it does nothing.
"""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Callable


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(None)  # the process's own symbols: the C library's among them
    except OSError:
        return None
    trim = getattr(libc, "malloc_trim", None)
    if trim is None:
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim  # type: ignore[no-any-return]


def give_back() -> bool:
    """Return the C heap's free memory to the system; whether that could be asked."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
