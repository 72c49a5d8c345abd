"""Rate limits: what a server says about its quota, and one pause shared by every request.

A server says "wait" in several ways, and production servers use different ones:

- `Retry-After` (RFC 9110 §10.2.3): delta-seconds or an HTTP-date;
- the IETF RateLimit header fields (draft-ietf-httpapi-ratelimit-headers): one item per
  quota policy, `RateLimit: "fhirInteractions";r=0;t=44` (r: quota units remaining, t:
  seconds until it resets), beside `RateLimit-Policy: "fhirInteractions";q=50000;w=60`
  (q: the quota, w: its window in seconds); earlier drafts sent `RateLimit-Remaining` and
  `RateLimit-Reset` instead. Medplum sends the RateLimit field and no Retry-After;
- Medplum's rate limiter body, `{"_msBeforeNext": 51223, ...}`, as the whole body of a
  429, or as JSON in an OperationOutcome's diagnostics when one entry of a batch or
  transaction answers 429.

When a client's quota is spent, every request it has in flight is refused the same way.
`Throttle` makes them all wait for one deadline — a pause of the whole client, not of each
task on its own (which would keep spending requests, and on Medplum points, against a
quota that is already gone) — and counts the time paused against the run's budget for
waiting, so that a run gives up with a clear message instead of waiting without end.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from previsit.jsonio import loads, object_or_none

log = logging.getLogger(__name__)

# A rate-limit answer that says "wait 0 s" is still a refusal: come back after at least this.
MIN_PAUSE_S = 0.5


@dataclass(frozen=True)
class Quota:
    """One quota policy's state from a RateLimit header field item."""

    name: str
    remaining: float | None  # quota units left in the window ("r")
    reset: float | None  # seconds until the window resets ("t")


def retry_after_seconds(value: str | None, now: datetime) -> float | None:
    """Retry-After as seconds from `now`: delta-seconds or an HTTP-date (RFC 9110 §10.2.3)."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # HTTP-dates are GMT by definition
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - now).total_seconds())


def _number(text: str) -> float | None:
    try:
        value = float(text.strip().strip('"'))
    except ValueError:
        return None
    return value if value >= 0 else None


def _items(values: list[str]) -> list[tuple[str, dict[str, str]]]:
    """Structured-field list items as (name, parameters): `"a";r=0;t=4, "b";r=9` ->
    [("a", {"r": "0", "t": "4"}), ("b", {"r": "9"})]. Lenient: a bare `r=0;t=4` is an item
    without a name, and draft-07 dictionary members (`remaining=0, reset=4`) become
    parameters of one unnamed item."""
    items: list[tuple[str, dict[str, str]]] = []
    loose: dict[str, str] = {}
    for value in values:
        for member in value.split(","):
            parts = [p.strip() for p in member.split(";") if p.strip()]
            if not parts:
                continue
            name = ""
            if "=" not in parts[0]:
                name = parts.pop(0).strip('"')
            params = dict(p.split("=", 1) for p in parts if "=" in p)
            params = {k.strip().lower(): v.strip() for k, v in params.items()}
            if name:
                items.append((name, params))
            else:
                loose.update(params)
    if loose:
        items.append(("", loose))
    return items


def quotas(headers: httpx.Headers) -> list[Quota]:
    """Every quota the response reports (RateLimit items, or the older separate fields)."""
    found: list[Quota] = []
    for name, params in _items(headers.get_list("RateLimit")):
        remaining = params.get("r", params.get("remaining"))
        reset = params.get("t", params.get("reset"))
        found.append(Quota(name, _number(remaining) if remaining is not None else None,
                           _number(reset) if reset is not None else None))
    remaining_field = headers.get("RateLimit-Remaining")
    if remaining_field is not None:
        reset_field = headers.get("RateLimit-Reset")
        found.append(Quota("", _number(remaining_field),
                           _number(reset_field) if reset_field is not None else None))
    return found


def _policy_windows(headers: httpx.Headers) -> dict[str, float]:
    """Window lengths ("w", seconds) of the quota policies in RateLimit-Policy, by name."""
    windows: dict[str, float] = {}
    for name, params in _items(headers.get_list("RateLimit-Policy")):
        window = _number(params["w"]) if "w" in params else None
        if window is not None:
            windows[name] = window
    return windows


def spent_quota_wait(headers: httpx.Headers) -> float | None:
    """Seconds until a spent quota (remaining 0) resets, from any response; None when no
    quota is reported spent. A spent quota without a reset time waits its policy's window."""
    windows = _policy_windows(headers)
    waits = []
    for quota in quotas(headers):
        if quota.remaining is None or quota.remaining > 0:
            continue
        reset = quota.reset if quota.reset is not None else windows.get(quota.name)
        if reset is None and windows:
            reset = max(windows.values())
        if reset is not None:
            waits.append(reset)
    return max(waits) if waits else None


def limiter_wait(body: Any) -> float | None:
    """Medplum's `_msBeforeNext`, from a limiter body or an OperationOutcome carrying one in
    an issue's diagnostics (a 429 entry inside a batch/transaction-response), in seconds."""
    if isinstance(body, (bytes, str)):
        body = object_or_none(body)
    if not isinstance(body, Mapping):
        return None
    ms = body.get("_msBeforeNext")
    if isinstance(ms, (int, float)) and not isinstance(ms, bool) and ms >= 0:
        return float(ms) / 1000
    for issue in body.get("issue") or ():
        diagnostics = issue.get("diagnostics") if isinstance(issue, Mapping) else None
        if isinstance(diagnostics, str) and "_msBeforeNext" in diagnostics:
            try:
                found = limiter_wait(loads(diagnostics))
            except ValueError:
                continue
            if found is not None:
                return found
    return None


def server_wait(response: httpx.Response, now: datetime) -> float | None:
    """How long the server asks a refused request (429, 503) to wait, if it says so:
    Retry-After first (the most explicit), then a spent RateLimit quota, then Medplum's
    limiter body."""
    for wait in (retry_after_seconds(response.headers.get("Retry-After"), now),
                 spent_quota_wait(response.headers),
                 limiter_wait(response.content)):
        if wait is not None:
            return wait
    return None


class WaitBudgetSpent(Exception):
    """The server asks for a pause longer than what is left of the run's waiting budget."""


class Throttle:
    """One pause for every request of a client, counted against a budget for the run.

    `pause(seconds)` moves the client's resume time later (never earlier); `ready()` waits
    until then. The time spent paused is counted once however many tasks wait together.
    `sleep` and `clock` are injectable so that tests do not wait.
    """

    def __init__(self, budget: float, *,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.budget = budget
        self._sleep = sleep
        self._clock = clock
        self._resume_at = 0.0
        self._counted_to = 0.0  # the end of the paused time already counted in `waited`
        self.waited = 0.0  # seconds this client has been paused so far
        self.pauses = 0  # how many times the client paused (a pause extended counts once)

    @property
    def paused_for(self) -> float:
        """Seconds until requests may go again (0 when not paused)."""
        return max(0.0, self._resume_at - self._clock())

    def pause(self, seconds: float, reason: str) -> None:
        """Hold every request for `seconds` from now; WaitBudgetSpent when the run's budget
        cannot cover it (nothing is paused then)."""
        seconds = max(seconds, MIN_PAUSE_S)
        now = self._clock()
        resume_at = now + seconds
        if resume_at <= self._resume_at:
            return  # already paused at least that long
        if self.waited + seconds > self.budget:
            left = max(0.0, self.budget - self.waited)
            raise WaitBudgetSpent(
                f"{reason}: the server asks to wait {seconds:.0f} s, more than what is left "
                f"of the run's budget for waiting ({left:.0f} of {self.budget:.0f} s; "
                "source.max_wait_seconds)")
        if self._resume_at <= now:
            self.pauses += 1
            log.warning("%s: every request pauses for %.0f s until the quota resets", reason,
                        seconds)
        self._resume_at = resume_at

    async def ready(self) -> None:
        """Wait until the client may send again (at once when it is not paused)."""
        while True:
            now = self._clock()
            until = self._resume_at
            if until <= now:
                return
            await self._sleep(until - now)
            self._count(now, self._clock())
            if self._resume_at <= until:
                return  # not extended while we slept

    def _count(self, start: float, end: float) -> None:
        # Several tasks sleep through the same pause: count each second once.
        begin = max(start, self._counted_to)
        if end > begin:
            self.waited += end - begin
            self._counted_to = end
