"""give_back: the C heap's free memory goes back to the system (glibc, as on every CI and
production Linux host this runs on)."""

from __future__ import annotations

import subprocess
import sys

_PROBE = r"""
import sys
from previsit.memory import give_back

def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20

big = bytearray(24 << 20)   # mmapped; freeing it lets glibc keep 48 MB of free heap
del big
blocks = [bytearray(200_000) for _ in range(200)]  # 40 MB on the heap, under that
for block in blocks:
    block[::4096] = b"x" * len(block[::4096])  # touched: resident
before = rss_mb()
del blocks, block
kept = rss_mb()
assert give_back() is True
after = rss_mb()
print(round(before), round(kept), round(after))
"""


def test_free_heap_memory_is_returned_to_the_system() -> None:
    done = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True,
                          check=True)
    before, kept, after = (int(n) for n in done.stdout.split())
    assert kept > before - 10, (before, kept, after)  # glibc alone keeps it...
    assert after < kept - 30, (before, kept, after)   # ...until it is given back
