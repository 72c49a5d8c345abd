"""A mocked FHIR server (respx) and an HttpSource talking to it, for the HTTP source's tests.

Sleeps are injected and recorded, and they move a fake clock forward, so retries, backoff
and rate-limit pauses happen instantly and can be asserted exactly.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import httpx
import respx
from builders import capability_statement, json_response

from previsit.sources.http import HttpSource, RetryPolicy

BASE = "https://ehr.example/fhir/R4"
NOW = datetime(2026, 11, 30, 12, 0, 0, tzinfo=UTC)
T = TypeVar("T")


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coroutine)


class Harness:
    """A mocked server, a source talking to it, and the sleeps the source asked for."""

    def __init__(self, **options: Any) -> None:
        self.router = respx.MockRouter(base_url=BASE, assert_all_called=False)
        self.sleeps: list[float] = []
        self.elapsed = 0.0  # seconds of fake time slept so far
        retry = options.pop("retry", {})

        async def sleep(seconds: float) -> None:
            self.sleeps.append(seconds)
            self.elapsed += seconds
            await asyncio.sleep(0)  # let other tasks run, as a real sleep would

        self.client = httpx.AsyncClient(transport=httpx.MockTransport(self.router.async_handler))
        self.source = HttpSource(self.client, BASE, retry=RetryPolicy(
            sleep=sleep, now=self.now, clock=lambda: self.elapsed, **retry), **options)

    def now(self) -> datetime:
        return NOW + timedelta(seconds=self.elapsed)

    def capability(self, *, batch: bool = True) -> respx.Route:
        return self.router.get("/metadata").mock(return_value=json_response(
            capability_statement(batch=batch)))


def searchset(*resources: dict[str, Any], next_url: str | None = None) -> dict[str, Any]:
    bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset",
                              "entry": [{"resource": r} for r in resources]}
    if next_url:
        bundle["link"] = [{"relation": "self", "url": f"{BASE}/x"},
                          {"relation": "next", "url": next_url}]
    return bundle


def outcome(text: str, code: str = "invalid") -> dict[str, Any]:
    return {"resourceType": "OperationOutcome",
            "issue": [{"severity": "error", "code": code, "diagnostics": text}]}
