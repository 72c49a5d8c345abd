"""A per-key cache of fetched documents (SMART configurations, JWK Sets) with a TTL.

Fetches are single-flight: when a burst of launches or CDS calls finds the entry missing
or stale, one of them fetches and the others wait for that result, so an EHR's
rate-limited endpoints see one request, never one per caller.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

V = TypeVar("V")


@dataclass(frozen=True)
class Cached(Generic[V]):
    value: V
    fetched_at: float


class TtlCache(Generic[V]):
    def __init__(self, *, ttl: float, clock: Callable[[], float] = time.time) -> None:
        self._ttl = ttl
        self._clock = clock
        self._entries: dict[str, Cached[V]] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self.fetches = 0

    async def get(self, key: str, fetch: Callable[[], Awaitable[V]], *,
                  refresh: bool = False) -> Cached[V]:
        """The entry for `key`, fetched if missing, older than the TTL, or `refresh`."""
        cached = self._entries.get(key)
        if not refresh and cached and self._clock() - cached.fetched_at < self._ttl:
            return cached
        async with self._locks.setdefault(key, asyncio.Lock()):
            current = self._entries.get(key)
            if current is not cached and current is not None:
                return current  # fetched by a concurrent caller while this one waited
            self.fetches += 1
            fetched = Cached(await fetch(), self._clock())
            self._entries[key] = fetched
            return fetched
