"""The HTTP source: appointments, patient records and write-back against a FHIR R4 server.

The client is passed in (`httpx.AsyncClient`, with its auth and transport), so tests swap
the transport (respx) and the CLI builds one from configuration (`HttpSource.from_config`).

Reads follow the FHIR conventions in DESIGN.md: only spec-defined search parameters,
`Bundle.link[next]` followed to the end (never `total`), each patient's record in one
`batch` round trip where the server lists batch (individual searches otherwise, or when a
batch POST is refused), record searches in pages of `record_page_size` (1000), each patient
read once per run, and at most `concurrency` requests in flight. With a record cache
(`source.cache_dir`, previsit/sources/cache.py) a record kept from an earlier night is
revalidated in that same one batch instead of read again. Transient failures
(429/502/503/504, connect errors, timeouts) are retried with exponential backoff and
jitter, honouring Retry-After, within a bounded number of attempts and a bounded total
wait; a write is retried only when it is conditional. A rate limit (429 with Retry-After,
the IETF RateLimit fields or Medplum's `_msBeforeNext`, or a RateLimit field saying the
quota is spent) pauses every request of the source until the quota resets
(`throttle.Throttle`), within the run's budget for waiting.

Errors a person reads name the request as "GET Observation?patient=…": parameter names,
never values (DESIGN: no patient identifiers at INFO).

What a server sends is bounded: every body is streamed and read up to
`max_response_bytes` (counted after gzip/deflate is undone, which is done here with a cap,
so a gzip bomb inflates no further than the cap), a search's pages up to
`max_search_bytes` together, and one request from sending to its last byte within
`request_deadline_seconds` (a server dripping a byte at a time never trips a read
timeout). And what it answers is checked against the question: the Patient read must be
that patient, and every Condition, Observation, … a record's searches return must have that
patient as its subject; anything else fails that patient ("never the wrong chart").
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import re
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from datetime import time as dtime
from email.utils import parsedate_to_datetime
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

import httpx
import orjson
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type

from previsit.appointments import in_window, sort_visits, visit_from_appointment
from previsit.capability import ServerCapabilities, parse_capabilities
from previsit.config import AuthConfig, Config, SourceConfig, requested_scope
from previsit.errors import (
    AppointmentError,
    PatientReadError,
    RequestFailed,
    SourceError,
    WriteError,
)
from previsit.jsonio import object_or_none
from previsit.operation_outcome import describe_failure, describe_outcome, redacted_target
from previsit.plan import Visit
from previsit.record import (
    RECORD_SEARCHES,
    PatientRecord,
    ResourcesRead,
    build_patient_record,
)
from previsit.references import patient_id as patient_of_reference
from previsit.sources import SourceProblem, VisitWindow, WriteResult
from previsit.sources.bodies import ACCEPT_ENCODING, capped_send
from previsit.sources.cache import KeptRecord, KeptSearch, RecordCache, revalidated
from previsit.sources.throttle import (
    Throttle,
    WaitBudgetSpent,
    limiter_wait,
    retry_after_seconds,
    server_wait,
    spent_quota_wait,
)
from previsit.sources.transactions import (
    forward_reference,
    is_transient_conflict,
    smaller_size,
    transaction_of,
)

log = logging.getLogger(__name__)

FHIR_JSON = "application/fhir+json"
RETRY_STATUSES = frozenset({429, 502, 503, 504})
# A batch POST answered with one of these means "no batch here": read searches one by one.
BATCH_REFUSED = frozenset({400, 404, 405, 501})
# A search answered with one of these means "not a search this server does".
SEARCH_REFUSED = frozenset({400, 403, 404, 405, 422, 501})
# FHIR R4 id: [A-Za-z0-9\-\.]{1,64}. Checked before an id goes into a URL.
FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
MAX_PAGES = 1000  # per search: a server whose next links never end is a server bug
_DEFAULTS = SourceConfig()
# The searches of a record, and the field that names the patient in each (FHIR R4).
_SUBJECT_FIELD = {rtype: "patient" if rtype == "Immunization" else "subject"
                  for rtype, _ in RECORD_SEARCHES}
# Rate-limited attempts of one request are bounded by the run's budget for waiting; this
# only stops a server that answers 429 "wait 0 s" forever.
MAX_THROTTLED_ATTEMPTS = 50
LONG_WRITE = 100  # entries from which a write logs its progress

T = TypeVar("T")
# One GET of a record: (step, resource type or read path, params).
_Query = tuple[str, str, list[tuple[str, str]]]

__all__ = ["HttpSource", "RetryPolicy", "build_client", "is_conditional_transaction",
           "open_http_source", "retry_after_seconds"]


class _Retry(Exception):
    """Raised inside one attempt to ask tenacity for another."""

    def __init__(self, message: str, *, response: httpx.Response | None = None,
                 error: Exception | None = None, throttled: bool = False) -> None:
        super().__init__(message)
        self.response = response
        self.error = error
        # A rate limit with a stated wait: the shared pause does the waiting, and the
        # attempt does not count against max_attempts (the run's waiting budget bounds it).
        self.throttled = throttled


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to try one request, and how long the whole run may pause for rate limits.
    `sleep`/`now`/`clock` are injectable so tests do not wait."""

    max_attempts: int = 5
    max_retry_seconds: float = 120.0  # total time a request may spend being retried
    initial_delay: float = 0.5
    max_delay: float = 30.0
    sleep: Callable[[float], Awaitable[None]] = field(default=asyncio.sleep, compare=False,
                                                      repr=False)
    now: Callable[[], datetime] = field(default=_utcnow, compare=False, repr=False)
    clock: Callable[[], float] = field(default=time.monotonic, compare=False, repr=False)
    # The whole run's budget for pausing on rate limits (all requests together).
    max_wait_seconds: float = 900.0


def is_conditional_transaction(bundle: Mapping[str, Any]) -> bool:
    """Safe to send twice: every POST is a conditional create, nothing is a PATCH.

    GET/HEAD/PUT/DELETE are idempotent by HTTP's definition; a POST with ifNoneExist
    creates at most one resource however often it is sent.
    """
    return all(_repeatable(entry) for entry in bundle.get("entry") or ())


def _repeatable(entry: Any) -> bool:
    request = entry.get("request") if isinstance(entry, Mapping) else None
    if not isinstance(request, Mapping):
        return False
    method = str(request.get("method", "")).upper()
    if method == "POST":
        return bool(request.get("ifNoneExist"))
    return method in ("GET", "HEAD", "PUT", "DELETE")


def _backoff_delay(policy: RetryPolicy, attempt: int) -> float:
    """Exponential backoff with up to one initial delay of jitter, so that many clients
    throttled together do not come back together."""
    delay = policy.initial_delay * float(2 ** (max(attempt, 1) - 1))
    return min(policy.max_delay, delay + random.uniform(0, policy.initial_delay))


class _Writing:
    """The state of one write_transaction: what is written, what is still to send."""

    def __init__(self, entries: list[Mapping[str, Any]]) -> None:
        self.entries = entries
        self.pending = list(range(len(entries)))
        self.created: list[str] = []
        self.existing: list[str] = []
        self.done: set[int] = set()
        # fullUrl of a written entry -> what the server made of it ("Patient/123")
        self.written: dict[str, str] = {}
        self._tries: dict[int, int] = {}

    def record(self, index: int, status: int, location: str | None) -> None:
        reference = location or f"entry {index}"
        (self.created if status == 201 else self.existing).append(reference)
        self.done.add(index)
        url = self.entries[index].get("fullUrl")
        if isinstance(url, str) and location:
            self.written[url] = location

    def tries(self, indices: list[int]) -> int:
        return max((self._tries.get(i, 0) for i in indices), default=0)

    def again(self, indices: list[int], attempts: int) -> bool:
        """Count one more try of these entries; False when they have had `attempts`."""
        if self.tries(indices) + 1 >= attempts:
            return False
        for i in indices:
            self._tries[i] = self._tries.get(i, 0) + 1
        return True

    def missing(self) -> tuple[str, ...]:
        return tuple(str(self.entries[i].get("fullUrl") or f"entry {i}") for i in self.pending)


def _span(part: list[int]) -> str:
    return f"{part[0] + 1}-{part[-1] + 1}" if len(part) > 1 else str(part[0] + 1)


class _Stop:
    """Stop after `attempts` failures, or when the next wait would overrun the time budget.

    Rate-limited attempts are not failures: the throttle's pause (counted against the run's
    budget for waiting) bounds them, and their pauses do not eat this request's budget. A
    request that may be sent only once (a write that is not conditional) stops on them too.
    """

    def __init__(self, attempts: int, budget: float, throttle: Throttle) -> None:
        self.attempts = attempts
        self.budget = budget
        self.throttle = throttle
        self.paused_before = throttle.waited
        self.failures = 0
        self.throttled = 0

    def __call__(self, state: RetryCallState) -> bool:
        failure = state.outcome.exception() if state.outcome else None
        if isinstance(failure, _Retry) and failure.throttled and self.attempts > 1:
            self.throttled += 1
            return self.throttled >= MAX_THROTTLED_ATTEMPTS
        self.failures += 1
        if self.failures >= self.attempts:
            return True
        paused = self.throttle.waited - self.paused_before
        elapsed = max(state.idle_for, (state.seconds_since_start or 0.0) - paused)
        return elapsed + state.upcoming_sleep > self.budget


class HttpSource:
    """A FHIR R4 server as a `Source`."""

    def __init__(self, client: httpx.AsyncClient, base_url: str, *, concurrency: int = 8,
                 page_size: int = 100, record_page_size: int | None = None,
                 use_batch: bool = True,
                 retry: RetryPolicy | None = None, owns_client: bool = False,
                 max_transaction_entries: int = 8,
                 max_response_bytes: int = _DEFAULTS.max_response_bytes,
                 max_search_bytes: int = _DEFAULTS.max_search_bytes,
                 request_deadline_seconds: float = _DEFAULTS.request_deadline_seconds,
                 cache: RecordCache | None = None) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if max_transaction_entries < 1:
            raise ValueError("max_transaction_entries must be at least 1")
        self._client = client
        self._max_response_bytes = max_response_bytes
        self._max_search_bytes = max_search_bytes
        self._request_deadline = request_deadline_seconds
        self.base_url = base_url.rstrip("/")
        self._base = httpx.URL(self.base_url + "/")  # for joining relative paths
        self._root = httpx.URL(self.base_url)  # batch and transaction go to [base] itself
        self._page_size = page_size
        self._record_page_size = page_size if record_page_size is None else record_page_size
        self._retry = retry or RetryPolicy()
        # One pause for every request of this source when the server's quota is spent.
        self.throttle = Throttle(self._retry.max_wait_seconds, sleep=self._retry.sleep,
                                 clock=self._retry.clock)
        # Entries per transaction: as configured, or smaller once the server refused a size.
        self.transaction_limit = max_transaction_entries
        self._owns_client = owns_client
        self._new_client: Callable[[], httpx.AsyncClient] | None = None  # from_config's
        self._concurrency = concurrency
        self._loop: asyncio.AbstractEventLoop | None = None
        self._gate = asyncio.Semaphore(concurrency)
        self._batch: bool | None = None if use_batch else False  # None: ask /metadata first
        self._batch_decided: asyncio.Event | None = None
        self._records: dict[str, asyncio.Task[PatientRecord]] = {}
        # Records kept between nights (source.cache_dir), revalidated instead of re-read.
        self._cache = cache
        self._revalidating = True  # until the server refuses a search revalidation needs
        self.cache_counts: Counter[str] = Counter()  # revalidated, read in full, ...
        self._problems: list[SourceProblem] = []
        self.capabilities: ServerCapabilities | None = None
        self.request_count = 0  # HTTP requests sent to the FHIR server, retries included
        # Until something answers, a refused connection means a wrong URL or a server that is
        # down: say so at once (one line) instead of backing off. Once the server has
        # answered, a refused connection is a restart or a blip, and is retried.
        self._answered = False
        # Set when a request gave up because the server stopped answering (transport errors
        # to the end of the retry budget); later requests then try once instead of spending
        # the whole budget each, so a dead server fails the rest of the run in seconds, not
        # minutes. Cleared by the next answer.
        self._unreachable = False

    @classmethod
    def from_config(cls, source: SourceConfig, auth: AuthConfig, env: Mapping[str, str], *,
                    transport: httpx.AsyncBaseTransport | None = None,
                    scope: str | None = None) -> HttpSource:
        """A source with its own client (closed by aclose), auth from files/environment;
        `scope`: what the command needs (auth.scope, when set, wins)."""
        from previsit.auth import auth_from_config

        if not source.base_url:
            raise SourceError("source.kind is fhir but source.base_url is not set "
                              "(or set PREVISIT_SOURCE_BASE_URL)")
        # one token cache for all
        flow = auth_from_config(auth, source.base_url, env, scope=scope)

        def new_client() -> httpx.AsyncClient:
            return build_client(source, flow, transport=transport)

        made = cls(new_client(), source.base_url, concurrency=source.concurrency,
                   page_size=source.page_size, record_page_size=source.record_page_size,
                   use_batch=source.use_batch,
                   retry=RetryPolicy(max_attempts=source.max_attempts,
                                     max_retry_seconds=source.max_retry_seconds,
                                     max_wait_seconds=source.max_wait_seconds),
                   owns_client=True, max_transaction_entries=source.max_transaction_entries,
                   max_response_bytes=source.max_response_bytes,
                   max_search_bytes=source.max_search_bytes,
                   request_deadline_seconds=source.request_deadline_seconds,
                   cache=None if source.cache_dir is None else RecordCache(
                       source.cache_dir, source.base_url,
                       max_age=timedelta(days=source.cache_max_age_days),
                       overlap=timedelta(seconds=source.cache_overlap_seconds)))
        made._new_client = new_client
        return made

    # --- the Source protocol -------------------------------------------------------------

    async def appointments(self, window: VisitWindow) -> Sequence[Visit]:
        """Booked-like appointments in the window, searched on the server, checked locally.

        The server is asked for [start, end) as local midnights with their UTC offsets;
        servers differ in how they compare a dateTime range with Appointment.start, so
        every answer is filtered again with `in_window`.
        """
        tz = ZoneInfo(window.timezone)
        params: list[tuple[str, str]] = [
            ("date", "ge" + datetime.combine(window.start, dtime(), tz).isoformat()),
            ("date", "lt" + datetime.combine(window.end, dtime(), tz).isoformat()),
        ]
        if window.statuses:
            params.append(("status", ",".join(window.statuses)))
        if window.practitioners:
            if any(p.startswith("PractitionerRole/") for p in window.practitioners):
                # `practitioner` only targets Practitioner; `actor` takes any participant.
                params.append(("actor", ",".join(
                    p if "/" in p else f"Practitioner/{p}" for p in window.practitioners)))
            else:
                params.append(("practitioner", ",".join(window.practitioners)))
        if window.locations:
            params.append(("location", ",".join(window.locations)))
        if window.service_types:
            params.append(("service-type", ",".join(window.service_types)))
        params.append(("_count", str(self._page_size)))
        visits: dict[str, Visit] = {}

        def take(resource: Mapping[str, Any]) -> None:
            if resource.get("resourceType") != "Appointment":
                return  # included resources, OperationOutcome entries
            try:
                visit = visit_from_appointment(resource, window.timezone,
                                               base_url=self.base_url)
            except AppointmentError as exc:
                self._problems.append(SourceProblem(
                    f"Appointment/{resource.get('id', '?')}", str(exc)))
                return
            if visit.appointment_id not in visits and in_window(resource, visit, window):
                visits[visit.appointment_id] = visit

        try:
            # page by page: a health system's day of appointments is never held as JSON
            await self._search("Appointment", params, step="reading appointments", each=take)
        except RequestFailed as exc:
            raise SourceError(str(exc)) from None
        return sort_visits(list(visits.values()))

    async def patient_record(self, patient_id: str) -> PatientRecord:
        """The patient's record, read once per run however many visits ask for it.

        Raises PatientReadError for any failure (server gone, refused, malformed) so the
        run marks that patient's visits failed and goes on.
        """
        self._bind_loop()
        task = self._records.get(patient_id)
        if task is not None and task.done():  # possibly from an earlier event loop
            if not task.cancelled():
                return task.result()
            task = None  # cancelled with its loop: read again
        if task is None:
            task = asyncio.ensure_future(self._read_record(patient_id))
            self._records[patient_id] = task
        return await asyncio.shield(task)

    def release_record(self, patient_id: str) -> None:
        """The run is done with this patient: let the record go, so that memory stays
        bounded by the run's concurrency rather than by the day. A read still under way
        is kept (another visit of the same patient may be waiting on it)."""
        task = self._records.get(patient_id)
        if task is not None and task.done():
            del self._records[patient_id]

    async def write_transaction(self, bundle: dict[str, Any], *, key: str) -> WriteResult:
        """Write a transaction Bundle, in parts of at most `transaction_limit` entries.

        201 entries were created, 200 entries already existed. A part refused for its size
        is split smaller (and the smaller size kept for the rest of the run). A part, or an
        entry of a non-atomic transaction-response, is sent again after a transient failure
        (429/502/503/504, a rate limit, a conflict with another writer) only when it is
        conditional: otherwise a lost response could mean a second, duplicate write.

        When a part fails after earlier parts were written, the result is partial: it names
        the entries not written (`missing`) and why (`problem`). WriteError when nothing was
        written.
        """
        if bundle.get("resourceType") != "Bundle" or bundle.get("type") != "transaction":
            raise ValueError("write_transaction needs a Bundle of type transaction")
        writing = _Writing([e if isinstance(e, Mapping) else {} for e in
                            bundle.get("entry") or ()])
        problem: str | None = None
        tenths = 0  # progress of a long write (an upload), logged every tenth
        while writing.pending and problem is None:
            try:
                problem = await self._write_part(writing, key)
            except SourceError as exc:
                problem = f"writing the transaction for {key}: {exc}"
            if len(writing.entries) >= LONG_WRITE and \
                    len(writing.done) * 10 // len(writing.entries) > tenths:
                tenths = len(writing.done) * 10 // len(writing.entries)
                log.info("%d of %d entries written", len(writing.done), len(writing.entries))
        if problem is None:
            return WriteResult(created=tuple(writing.created), existing=tuple(writing.existing))
        if not writing.created and not writing.existing:
            raise WriteError(key, problem)
        log.warning("a transaction was written in part: %d of %d entries are missing",
                    len(writing.pending), len(writing.entries))
        return WriteResult(created=tuple(writing.created), existing=tuple(writing.existing),
                           missing=writing.missing(), problem=problem)

    async def _write_part(self, writing: _Writing, key: str) -> str | None:
        """Send the next part; None when it went (or is to be sent again), else the problem."""
        part = writing.pending[:self.transaction_limit]
        later = writing.pending[len(part):]
        step = f"writing the transaction for {key}"
        if later or len(part) < len(writing.entries):
            step += f" (entries {_span(part)} of {len(writing.entries)})"
        ahead = forward_reference(writing.entries, part, later)
        if ahead is not None:
            return (f"{step}: entry {ahead[0]} refers to an entry written later (entry "
                    f"{ahead[1]}), which the server's transaction size "
                    f"({self.transaction_limit}) keeps out of its transaction; order the "
                    "entries so that references point back")
        body = transaction_of(writing.entries, part, writing.written)
        conditional = is_conditional_transaction(body)
        try:
            response = await self._request("POST", self._root, json_body=body,
                                           idempotent=conditional, step=step, errors=False)
        except RequestFailed as exc:
            unsure = "" if conditional or exc.status is not None else (
                " — it may or may not have been applied, and it is not retried because its "
                "creates are not conditional")
            return f"{exc}{unsure}"
        answer = object_or_none(response.content)
        if not response.is_success:
            size = smaller_size(response.status_code, answer, len(part))
            if size is not None:
                self._learn_transaction_limit(size, len(part))
                return None
            if conditional and is_transient_conflict(response.status_code, answer) and \
                    writing.again(part, self._retry.max_attempts):
                # the step names the appointment: at DEBUG only (no identifiers at INFO)
                log.warning("a conditional write met another writer (HTTP %d); sending it again",
                            response.status_code)
                log.debug("%s: conflict, sent again", step)
                await self._backoff(_backoff_delay(self._retry, writing.tries(part)))
                return None
            return str(self._refusal(response, step))
        if answer is None or answer.get("type") != "transaction-response":
            kind = (answer or {}).get("type") or (answer or {}).get("resourceType") or \
                "body that is not a FHIR Bundle"
            return f"{step}: the server answered with a {kind}, not a transaction-response"
        results = answer.get("entry") or []
        if not isinstance(results, list):
            results = []
        if len(results) != len(part):
            return (f"{step}: the server answered {len(results)} entries for a transaction "
                    f"of {len(part)}")
        return await self._read_part(writing, part, later, results, step)

    async def _read_part(self, writing: _Writing, part: list[int], later: list[int],
                         results: list[Any], step: str) -> str | None:
        """Record each entry's answer; queue the transient failures of conditional entries
        to be sent again; the first other failure is the problem."""
        again: list[int] = []
        failure: str | None = None
        throttled = False
        for index, result in zip(part, results, strict=True):
            answer = result.get("response") if isinstance(result, Mapping) else None
            status = _entry_status(answer)
            outcome = answer.get("outcome") if isinstance(answer, Mapping) else None
            if status is not None and 200 <= status < 300:
                writing.record(index, status, _location(answer, result, self._base))
                continue
            transient = status is not None and (status in RETRY_STATUSES or
                                                is_transient_conflict(status, outcome))
            # a rate-limited entry is bounded by the run's waiting budget, not max_attempts
            limit = MAX_THROTTLED_ATTEMPTS if status == 429 else self._retry.max_attempts
            if failure is None and transient and _repeatable(writing.entries[index]) and \
                    writing.again([index], limit):
                again.append(index)
                if status == 429:
                    try:
                        self._note_entry_quota(answer, "an entry of a transaction: HTTP 429")
                        throttled = throttled or self.throttle.paused_for > 0
                    except WaitBudgetSpent as exc:
                        failure = f"{step}: {exc}"
                continue
            if failure is None:
                detail = describe_outcome(outcome) or "no outcome given"
                failure = (f"{step}: entry {index} answered {status or 'without a status'}: "
                           f"{detail}")
        unwritten = [i for i in part if i not in writing.done]
        writing.pending = unwritten + later
        if failure is not None:
            return failure
        if again and not throttled:
            await self._backoff(_backoff_delay(self._retry, writing.tries(again)))
        return None

    def _learn_transaction_limit(self, size: int, refused: int) -> None:
        if size < self.transaction_limit:
            log.warning("the server refused a transaction of %d entries as too large; writing "
                        "at most %d entries per transaction from now on (set "
                        "source.max_transaction_entries = %d to start there)", refused, size,
                        size)
            self.transaction_limit = size

    def problems(self) -> Sequence[SourceProblem]:
        return tuple(self._problems)

    async def aclose(self) -> None:
        if self._cache is not None and any(self.cache_counts.values()):
            log.info("record cache: %d records revalidated, %d kept but read in full (a count "
                     "that did not add up, a refused search), %d not kept or too old (read "
                     "in full)", self.cache_counts["revalidated"],
                     self.cache_counts["kept but read in full"],
                     self.cache_counts["read in full"])
        for task in self._records.values():
            if not task.done():
                task.cancel()
        if self._owns_client:
            try:
                await self._client.aclose()
            except RuntimeError:
                # Its connections belong to an event loop that has ended (an earlier
                # asyncio.run): they cannot be closed from this one and died with it.
                log.debug("the HTTP client's event loop has ended; nothing left to close")

    def _bind_loop(self) -> None:
        """Fresh asyncio primitives (and an owned client) for each event loop.

        Semaphores and pooled connections belong to the loop that made them; the CLI may
        call the source from more than one asyncio.run().
        """
        loop = asyncio.get_running_loop()
        if loop is self._loop:
            return
        if self._loop is not None:
            self._gate = asyncio.Semaphore(self._concurrency)
            if self._batch is None:
                self._batch_decided = None
            if self._new_client is not None:
                self._client = self._new_client()
        self._loop = loop

    # --- reading one record ------------------------------------------------------------

    async def fetch_record(self, patient_id: str) -> PatientRecord | ResourcesRead:
        """`patient_record` for a run that plans in worker processes: the record's
        resources read and checked here, built by the worker that plans the patient
        (ResourcesRead), so that this process spends its time reading. A record whose
        resources orjson cannot write (an integer beyond 64 bits, which the record sets
        aside) is built here. Raises PatientReadError as `patient_record` does."""
        self._bind_loop()
        resources = await self._checked_resources(patient_id)
        try:
            text = orjson.dumps(resources)
        except orjson.JSONEncodeError:
            return build_patient_record(patient_id, resources, f"Patient/{patient_id}")
        return ResourcesRead(patient_id, f"Patient/{patient_id}", text)

    async def _read_record(self, patient_id: str) -> PatientRecord:
        return build_patient_record(patient_id, await self._checked_resources(patient_id),
                                    f"Patient/{patient_id}")

    async def _checked_resources(self, patient_id: str) -> list[Mapping[str, Any]]:
        """The record's resources, every one of them this patient's."""
        if not FHIR_ID.fullmatch(patient_id):
            raise PatientReadError(patient_id, f"{patient_id!r} is not a valid FHIR id")
        where = f"Patient/{patient_id}"
        try:
            resources = await self._record_resources(patient_id)
        except SourceError as exc:
            raise PatientReadError(patient_id, f"{where}: {exc}") from None
        foreign = _not_of_patient(resources, patient_id, self.base_url)
        if foreign is not None:
            raise PatientReadError(patient_id, f"{where}: {foreign}; this record is not used "
                                   "(another patient's data must never be planned)")
        return resources

    async def _record_resources(self, patient_id: str) -> list[Mapping[str, Any]]:
        """The record's resources: revalidated from the cache, else by one batch, else by
        individual searches."""
        queries = self._record_queries(patient_id)
        if await self._use_batch():
            kept = None if self._cache is None or not self._revalidating else \
                await asyncio.to_thread(self._cache.load, patient_id)
            if kept is not None:
                resources = await self._revalidate(kept)
                if resources is not None:
                    self.cache_counts["revalidated"] += 1
                    return resources
                self.cache_counts["kept but read in full"] += 1
            elif self._cache is not None:
                self.cache_counts["read in full"] += 1
            started = self._retry.now()
            answer = await self._read_batch(queries, "reading the record (batch)")
            if answer is not None:
                parts, server_date = answer
                if self._cache is not None:
                    await self._keep(patient_id, parts, started, server_date)
                return _unique([r for part in parts for r in part])
            log.info("the server refused a batch read; reading records one search at a time "
                     "from now on")
            self._batch = False
        parts = await _all([self._query(step, path, params) for step, path, params in queries])
        return _unique([r for part in parts for r in part])

    def _record_queries(self, patient_id: str) -> list[_Query]:
        """(step, resource type or read path, params) for one record, in a fixed order:
        the Patient, then RECORD_SEARCHES."""
        queries: list[_Query] = [("reading Patient", f"Patient/{patient_id}", [])]
        for rtype, extra in RECORD_SEARCHES:
            params = [("patient", patient_id), *extra,
                      ("_count", str(self._record_page_size))]
            queries.append((f"reading {rtype}", rtype, params))
        return queries

    async def _keep(self, patient_id: str, parts: list[list[Mapping[str, Any]]],
                    started: datetime, server_date: datetime | None) -> None:
        """Keep a record read in full (parts as `_record_queries` asked) in the cache."""
        assert self._cache is not None
        searches: dict[str, KeptSearch] = {}
        for (rtype, _), part in zip(RECORD_SEARCHES, parts[1:], strict=True):
            kept = KeptSearch.of(rtype, part)
            if kept is None:
                return  # a resource without an id cannot be merged by id: not kept
            searches[rtype] = kept
        await asyncio.to_thread(self._cache.store, KeptRecord(
            self.base_url, patient_id, full_at=started,
            since=self._cache.next_since(started, server_date), searches=searches))

    async def _revalidate(self, kept: KeptRecord) -> list[Mapping[str, Any]] | None:
        """The record from its kept copy and one batch asking what changed since it was
        read (previsit/sources/cache.py); None when it must be read in full."""
        assert self._cache is not None
        pid = kept.patient_id
        since = "gt" + kept.since.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
        count = str(self._record_page_size)
        queries: list[_Query] = [("reading Patient", f"Patient/{pid}", [])]
        for rtype, extra in RECORD_SEARCHES:
            queries.append((f"reading {rtype} changes", rtype, [
                ("patient", pid), *extra, ("_lastUpdated", since), ("_count", count)]))
            queries.append((f"counting {rtype}", rtype, [("patient", pid),
                                                         ("_summary", "count")]))
        again: dict[str, list[int]] = {}  # search -> its queries reading includes again
        for rtype, search in sorted(kept.searches.items()):
            for itype, ids in search.included_ids().items():
                again.setdefault(rtype, []).append(len(queries))
                queries.append((f"reading {itype} again", itype, [("_id", ",".join(ids)),
                                                                  ("_count", count)]))
        started = self._retry.now()
        try:
            answer = await self._read_batch(queries, "revalidating the record (batch)")
        except RequestFailed as exc:
            if exc.status not in SEARCH_REFUSED:
                raise
            # A server without _lastUpdated, _summary=count or _id searches: the kept
            # records cannot be revalidated here; read them in full (and keep them).
            self._stop_revalidating(f"the server refused a search the record cache needs "
                                    f"(HTTP {exc.status})")
            return None
        if answer is None:
            return None
        parts, server_date = answer
        searches: dict[str, KeptSearch] = {}
        for index, (rtype, _) in enumerate(RECORD_SEARCHES):
            changed, counted = parts[1 + 2 * index], parts[2 + 2 * index]
            total = counted[0].get("total") if counted else None
            if not isinstance(total, int) or isinstance(total, bool):
                # _summary=count answered without a count: revalidation cannot be checked
                # here; read in full, and do not ask again this run.
                self._stop_revalidating("the server answered _summary=count without a total")
                return None
            included = [r for i in again.get(rtype, ()) for r in parts[i]]
            merged = None if rtype not in kept.searches else revalidated(
                kept.searches[rtype], rtype, changed, total, included)
            if merged is None:
                log.info("a kept record no longer adds up to what the server holds (a "
                         "deletion?); reading it in full")
                log.debug("Patient/%s: %s: %d kept, %s now", pid, rtype,
                          len(kept.searches[rtype].matches) if rtype in kept.searches else 0,
                          total)
                return None
            searches[rtype] = merged
        news = any(parts[1 + 2 * index] for index in range(len(RECORD_SEARCHES))) or \
            any(search.included != kept.searches[rtype].included
                for rtype, search in searches.items())
        resources = list(parts[0])
        for search in searches.values():
            resources.extend(search.matches)
            resources.extend(search.included)
        if _not_of_patient(resources, pid, self.base_url) is not None:
            # The server's answers are checked again by the caller; a kept file naming
            # another patient is a damaged cache, not this patient's failure.
            log.warning("the record cache file %s holds another patient's data; reading the "
                        "record in full", self._cache.path(pid))
            return None
        if news:  # else the kept record and its time still hold: nothing to write
            await asyncio.to_thread(self._cache.store, replace(
                kept, since=self._cache.next_since(started, server_date), searches=searches))
        return _unique(resources)

    def _stop_revalidating(self, why: str) -> None:
        if self._revalidating:
            log.warning("%s; records are read in full from now on", why)
        self._revalidating = False

    async def _read_batch(self, queries: list[_Query], step: str
                     ) -> tuple[list[list[Mapping[str, Any]]], datetime | None] | None:
        """Each query's resources (a read's or count's answer itself, a search's resources
        of every page) from one batch, and the server's Date; None when the server refuses
        batch."""
        bundle = {"resourceType": "Bundle", "type": "batch", "entry": [
            {"request": {"method": "GET", "url": _relative(path, params)}}
            for _, path, params in queries]}
        try:
            response = await self._request("POST", self._root, json_body=bundle,
                                           idempotent=True, step=step)
        except RequestFailed as exc:
            if exc.status in BATCH_REFUSED:
                return None
            raise
        body = _json_object(response, self._base)
        entries = body.get("entry") or []
        if body.get("type") != "batch-response" or len(entries) != len(queries):
            raise RequestFailed(f"{step}: the server answered with {len(entries)} entries of a "
                                f"{body.get('type')!r} Bundle for a batch of {len(queries)}")

        async def one(entry: Any, query: _Query) -> list[Mapping[str, Any]]:
            step, path, params = query
            answer = entry.get("response") if isinstance(entry, Mapping) else None
            status = _entry_status(answer)
            resource = entry.get("resource") if isinstance(entry, Mapping) else None
            if status is not None and 200 <= status < 300 and isinstance(resource, Mapping):
                if _whole(params):
                    return [resource]
                return await self._pages(resource, step, first=_relative(path, params))
            if status in RETRY_STATUSES or status is None:
                # One entry hit a transient failure: ask for it alone, with retries (after
                # the pause its rate limit asked for, shared with every other request).
                return await self._query(step, path, params)
            detail = describe_outcome((answer or {}).get("outcome")) or "no outcome given"
            target = redacted_target(self._base.join(path), self._base)
            raise RequestFailed(f"{step}: GET {target} in the batch answered {status}: "
                                f"{detail}", status=status)

        for entry in entries:  # the batch's answer is one moment: pause once, from it
            answer = entry.get("response") if isinstance(entry, Mapping) else None
            if _entry_status(answer) == 429:
                try:
                    self._note_entry_quota(answer, step)
                except WaitBudgetSpent as exc:
                    raise RequestFailed(str(exc), status=429) from None
        parts = await _all([one(entry, query) for entry, query in zip(entries, queries,
                                                                       strict=True)])
        return parts, _server_date(response)

    async def _query(self, step: str, path: str, params: list[tuple[str, str]]
                     ) -> list[Mapping[str, Any]]:
        if _whole(params):  # a read, or a count
            response = await self._request("GET", self._base.join(path), params=params or None,
                                           step=step)
            return [_json_object(response, self._base)]
        return await self._search(path, params, step=step)

    async def _use_batch(self) -> bool:
        """Whether to read records by batch: as configured, and as /metadata lists."""
        if self._batch is not None:
            return self._batch
        self._bind_loop()
        if self._batch_decided is not None:  # another record read is asking already
            await self._batch_decided.wait()
            return bool(self._batch)
        self._batch_decided = asyncio.Event()
        try:
            response = await self._request("GET", self._base.join("metadata"),
                                           step="reading the CapabilityStatement")
            self.capabilities = parse_capabilities(_json_object(response, self._base))
            self._batch = self.capabilities.batch
            if not self._batch:
                log.info("the server does not list batch; reading records one search at a "
                         "time")
        except (SourceError, ValueError) as exc:
            # No usable statement: try batch anyway; a refusal falls back per BATCH_REFUSED.
            log.info("could not read the CapabilityStatement (%s); trying batch", exc)
            self._batch = True
        finally:
            self._batch_decided.set()
        return self._batch

    # --- searching and paging ----------------------------------------------------------

    async def _search(self, resource_type: str, params: list[tuple[str, str]], *,
                      step: str, each: Callable[[Mapping[str, Any]], None] | None = None
                      ) -> list[Mapping[str, Any]]:
        response = await self._request("GET", self._base.join(resource_type), params=params,
                                       step=step)
        first = _json_object(response, self._base)
        return await self._pages(first, step, first=_relative(resource_type, params),
                                 spent=len(response.content), each=each)

    async def _pages(self, bundle: Mapping[str, Any], step: str, *, first: str,
                     spent: int = 0, each: Callable[[Mapping[str, Any]], None] | None = None
                     ) -> list[Mapping[str, Any]]:
        """The resources of a searchset and of every page its next links lead to, at most
        `max_search_bytes` of pages (`spent`: the first page's size, when known). With
        `each`, every resource is handed to it as its page arrives and none is kept (a
        day's appointments: only what is made of each page outlives it)."""
        resources: list[Mapping[str, Any]] = []
        keep = resources.append if each is None else each
        seen = {first}
        page = 1
        while True:
            if bundle.get("resourceType") != "Bundle":
                raise RequestFailed(f"{step}, page {page}: the server answered with a "
                                    f"{bundle.get('resourceType')}, not a search Bundle")
            for entry in bundle.get("entry") or ():
                resource = entry.get("resource") if isinstance(entry, Mapping) else None
                if isinstance(resource, Mapping):
                    keep(resource)
            next_url = _next_link(bundle)
            if next_url is None:
                return resources
            url = self._base.join(next_url)
            if (url.scheme, url.host, url.port) != (self._base.scheme, self._base.host,
                                                    self._base.port):
                # SMART: a client SHOULD NOT send its token to another server; a proxy
                # that rewrites hosts needs its base URL fixed, not followed blindly.
                raise RequestFailed(f"{step}, page {page + 1}: the server's next link points "
                                    f"at {url.scheme}://{url.host} instead of "
                                    f"{self._base.host}; not followed")
            if str(url) in seen or page >= MAX_PAGES:
                raise RequestFailed(f"{step}: the server's next links do not end (page "
                                    f"{page + 1} repeats an earlier page or exceeds "
                                    f"{MAX_PAGES})")
            seen.add(str(url))
            page += 1
            response = await self._request("GET", url, step=f"{step}, page {page}")
            spent += len(response.content)
            if spent > self._max_search_bytes:
                # Every page is kept until the record is built: the bound on memory.
                raise RequestFailed(f"{step}: the search is larger than "
                                    f"source.max_search_bytes ({self._max_search_bytes:,} "
                                    f"bytes) after {page} pages; not read further")
            bundle = _json_object(response, self._base)

    # --- one request, with retries --------------------------------------------------------

    async def _request(self, method: str, url: httpx.URL, *,
                       params: list[tuple[str, str]] | None = None,
                       json_body: Mapping[str, Any] | None = None, idempotent: bool = True,
                       step: str, errors: bool = True) -> httpx.Response:
        """A 2xx response with its body read, or RequestFailed saying what went wrong.

        With `errors=False` a final 4xx/5xx answer is returned for the caller to read (a
        transaction refused for its size, or for a transient conflict) instead of raised.
        """
        policy = self._retry
        attempts = policy.max_attempts if idempotent and not self._unreachable else 1
        retrying = AsyncRetrying(
            stop=_Stop(attempts, policy.max_retry_seconds, self.throttle),
            wait=self._wait,
            retry=retry_if_exception_type(_Retry),
            sleep=self._backoff,
            before_sleep=self._note_retry,
            reraise=True)
        headers = {"Accept": FHIR_JSON}
        content = None
        if json_body is not None:
            headers["Content-Type"] = FHIR_JSON
            content = json.dumps(json_body).encode("utf-8")
        target = redacted_target(url.copy_merge_params(tuple(params or ())), self._base)
        started = time.monotonic()
        try:
            async for attempt in retrying:
                with attempt:
                    response = await self._send(method, url, params, headers, content, target)
        except _Retry as exc:
            attempts = retrying.statistics.get("attempt_number", 1)
            spent = time.monotonic() - started
            tries = f"gave up after {attempts} attempt{'s' if attempts != 1 else ''}" \
                f" in {spent:.1f} s"
            if exc.response is not None:
                after = server_wait(exc.response, policy.now())
                wait = f"; the server asked to wait {after:.0f} s more" if after else ""
                raise RequestFailed(f"{step}: {describe_failure(exc.response, self._base)} "
                                    f"({tries}{wait})",
                                    status=exc.response.status_code) from None
            if not self._unreachable:
                log.warning("the server stopped answering; the rest of the run tries each "
                            "request once")
            self._unreachable = True
            raise RequestFailed(f"{step}: {exc} ({tries})") from None
        except RequestFailed as exc:  # not retried: say which step it was
            raise RequestFailed(f"{step}: {exc}", status=exc.status) from None
        if response.is_success or not errors:
            return response
        raise self._refusal(response, step)

    def _refusal(self, response: httpx.Response, step: str) -> RequestFailed:
        message = f"{step}: {describe_failure(response, self._base)}"
        if response.status_code == 401:
            message += " — the server refused our credentials"
        elif response.status_code == 403:
            message += " — the credentials do not allow this request (scopes?)"
        return RequestFailed(message, status=response.status_code)

    async def _send(self, method: str, url: httpx.URL, params: list[tuple[str, str]] | None,
                    headers: dict[str, str], content: bytes | None, target: str
                    ) -> httpx.Response:
        started = time.monotonic()
        self._bind_loop()
        request = self._client.build_request(
            method, url, params=tuple(params) if params else None,
            headers={**headers, "Accept-Encoding": ACCEPT_ENCODING}, content=content)
        await self.throttle.ready()
        try:
            async with self._gate:
                self.request_count += 1
                async with asyncio.timeout(self._request_deadline):
                    response = await self._read(request, target)
        except TimeoutError:
            raise _Retry(f"{method} {target}: no complete answer within "
                         f"source.request_deadline_seconds ({self._request_deadline:g} s)") \
                from None
        except httpx.ConnectError as exc:
            words = f"{method} {target}: {_transport_words(exc, url)}"
            if not self._answered:
                raise RequestFailed(f"{words}; nothing has answered at this address in this "
                                    "run: is the server up and the base URL right?") from None
            raise _Retry(words, error=exc) from None
        except (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError) as exc:
            raise _Retry(f"{method} {target}: {_transport_words(exc, url)}", error=exc) \
                from None
        except httpx.HTTPError as exc:  # not transient: a bad URL, a protocol violation
            raise RequestFailed(f"{method} {target}: {type(exc).__name__}: {exc}") from None
        self._answered = True
        self._unreachable = False
        log.debug("%s %s -> %d (%.0f ms)", method, target, response.status_code,
                  (time.monotonic() - started) * 1000)
        words = f"{method} {target}: HTTP {response.status_code}"
        throttled = self._note_quota(response, words)
        if response.status_code in RETRY_STATUSES:
            raise _Retry(words, response=response, throttled=throttled)
        return response

    async def _read(self, request: httpx.Request, target: str) -> httpx.Response:
        return await capped_send(self._client, request, self._max_response_bytes, target)

    def _note_quota(self, response: httpx.Response, words: str) -> bool:
        """Pause the whole source when the answer says the quota is spent: a 429 with a
        stated wait, or any answer whose RateLimit field reports nothing left (the next
        request would be refused). True when this answer was such a rate limit."""
        if response.status_code == 429:
            wait = server_wait(response, self._retry.now())
        else:
            wait = spent_quota_wait(response.headers)
        if wait is None:
            return False
        try:
            self.throttle.pause(wait, f"rate limit reached ({words})")
        except WaitBudgetSpent as exc:
            if response.status_code != 429:
                return False  # this answer is good; the next request will say more
            raise RequestFailed(str(exc), status=response.status_code) from None
        return response.status_code == 429

    def _note_entry_quota(self, answer: Any, words: str) -> None:
        """A 429 entry inside a batch/transaction-response: pause the source for as long as
        its OperationOutcome says (Medplum puts the limiter's `_msBeforeNext` there)."""
        wait = limiter_wait(answer.get("outcome") if isinstance(answer, Mapping) else None)
        if wait is not None:
            self.throttle.pause(wait, f"rate limit reached ({words})")

    async def _backoff(self, seconds: float) -> None:
        # A rate-limited retry waits in Throttle.ready() (with every other request), so
        # tenacity's own wait for it is zero and not slept.
        if seconds > 0:
            await self._retry.sleep(seconds)

    def _wait(self, state: RetryCallState) -> float:
        failure = state.outcome.exception() if state.outcome else None
        if isinstance(failure, _Retry) and failure.throttled:
            return 0.0
        if isinstance(failure, _Retry) and failure.response is not None:
            after = retry_after_seconds(failure.response.headers.get("Retry-After"),
                                        self._retry.now())
            if after is not None:
                return after
        return _backoff_delay(self._retry, state.attempt_number)

    def _note_retry(self, state: RetryCallState) -> None:
        failure = state.outcome.exception() if state.outcome else None
        if isinstance(failure, _Retry) and failure.throttled:
            log.debug("%s; sent again when the rate limit resets", failure)
            return
        log.warning("%s; retry %d of %d in %.1f s", failure, state.attempt_number,
                    self._retry.max_attempts - 1, state.upcoming_sleep)


def build_client(source: SourceConfig, auth: httpx.Auth | None, *,
                 transport: httpx.AsyncBaseTransport | None = None) -> httpx.AsyncClient:
    """An httpx client as the configuration asks (timeouts, pool size, auth)."""
    return httpx.AsyncClient(
        auth=auth, timeout=httpx.Timeout(source.timeout_seconds),
        headers={"Accept": FHIR_JSON, "User-Agent": "previsit",
                 "Accept-Encoding": ACCEPT_ENCODING},
        limits=httpx.Limits(max_connections=source.concurrency * 2,
                            max_keepalive_connections=source.concurrency),
        # No proxy, .netrc or certificate settings from the environment: a proxy sees every
        # request and its credentials, so it is used only when configured (source.proxy).
        trust_env=False, proxy=source.proxy,
        transport=transport)


def open_http_source(config: Config, env: Mapping[str, str] | None = None, *,
                     scope: str | None = None) -> HttpSource:
    """The configured HTTP source (it owns its client; `aclose()` closes it), asking for
    `scope` (default: what a run needs, config.requested_scope)."""
    return HttpSource.from_config(config.source, config.auth,
                                  os.environ if env is None else env,
                                  scope=scope or requested_scope(config))


# --- helpers ---------------------------------------------------------------------------------


async def _all(coroutines: list[Coroutine[Any, Any, T]]) -> list[T]:
    """Run together; on the first failure cancel the rest and raise that failure."""
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(c) for c in coroutines]
    except BaseExceptionGroup as group_error:
        first = group_error.exceptions[0]
        while isinstance(first, BaseExceptionGroup):
            first = first.exceptions[0]
        raise first from None
    return [t.result() for t in tasks]


def _whole(params: Sequence[tuple[str, str]]) -> bool:
    """Whether a query's answer is used as it is (a read, a count), not paged through."""
    return not params or ("_summary", "count") in params


def _server_date(response: httpx.Response) -> datetime | None:
    """The server's clock from its Date header, or None."""
    try:
        when = parsedate_to_datetime(response.headers.get("date", ""))
    except (TypeError, ValueError, IndexError):
        return None
    return when if when.tzinfo is not None else None


def _relative(path: str, params: Sequence[tuple[str, str]]) -> str:
    return f"{path}?{httpx.QueryParams(list(params))}" if params else path


def _json_object(response: httpx.Response, base: httpx.URL) -> dict[str, Any]:
    body = object_or_none(response.content)
    if body is None:
        request = response.request
        content_type = response.headers.get("content-type", "no content type").split(";")[0]
        raise RequestFailed(f"{request.method} {redacted_target(request.url, base)} answered "
                            f"HTTP {response.status_code} with a body that is not a JSON "
                            f"object ({content_type}, {len(response.content)} bytes)",
                            status=response.status_code)
    return body


def _not_of_patient(resources: Sequence[Mapping[str, Any]], patient_id: str,
                    base_url: str) -> str | None:
    """Why `resources` (read for one patient) are not all that patient's, or None.

    The Patient must be the one asked for, and every resource of a record search must name
    that patient in its subject (Immunization: patient), as `Patient/<id>` or under this
    server's base. Included Medications and OperationOutcomes name no patient. Said without
    ids: the reason is printed.
    """
    for resource in resources:
        rtype = resource.get("resourceType")
        if rtype == "Patient":
            if resource.get("id") != patient_id:
                return "the server answered the read of this patient with another patient"
        elif rtype in _SUBJECT_FIELD:
            name = _SUBJECT_FIELD[str(rtype)]
            ref = resource.get(name)
            reference = ref.get("reference") if isinstance(ref, Mapping) else None
            if not isinstance(reference, str) or \
                    patient_of_reference(reference, base_url) != patient_id:
                return (f"the server returned a {rtype} whose {name} is not the patient asked "
                        "for")
    return None


def _next_link(bundle: Mapping[str, Any]) -> str | None:
    for link in bundle.get("link") or ():
        if isinstance(link, Mapping) and link.get("relation") == "next" \
                and isinstance(link.get("url"), str) and link["url"]:
            return str(link["url"])
    return None


def _entry_status(answer: Any) -> int | None:
    """Bundle.entry.response.status is a string starting with the code: "201 Created"."""
    status = answer.get("status") if isinstance(answer, Mapping) else None
    if isinstance(status, str) and status[:3].isdigit():
        return int(status[:3])
    return None


def _location(answer: Any, entry: Any, base: httpx.URL) -> str | None:
    """"ServiceRequest/123" from a response location (absolute or with _history)."""
    location = answer.get("location") if isinstance(answer, Mapping) else None
    if not isinstance(location, str) or not location:
        resource = entry.get("resource") if isinstance(entry, Mapping) else None
        if isinstance(resource, Mapping) and resource.get("id"):
            return f"{resource.get('resourceType')}/{resource['id']}"
        return None
    path = httpx.URL(location).path if "://" in location else location
    base_path = base.path.rstrip("/")
    if base_path and path.startswith(base_path + "/"):
        path = path[len(base_path) + 1:]
    parts = path.strip("/").split("/")
    return "/".join(parts[-4:-2]) if len(parts) >= 4 and parts[-2] == "_history" \
        else "/".join(parts[-2:])


def _unique(resources: list[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Drop repeats (an _include'd Medication comes back on every page that cites it)."""
    seen: set[tuple[str, str]] = set()
    out: list[Mapping[str, Any]] = []
    for resource in resources:
        rid = resource.get("id")
        if isinstance(rid, str):
            key = (str(resource.get("resourceType")), rid)
            if key in seen:
                continue
            seen.add(key)
        out.append(resource)
    return out


def _transport_words(exc: Exception, url: httpx.URL) -> str:
    try:  # the failed request may be the auth flow's (token endpoint), not ours
        failed = exc.request.url if isinstance(exc, httpx.RequestError) else url
    except RuntimeError:
        failed = url
    where = f"{failed.host}:{failed.port}" if failed.port else str(failed.host)
    if failed.host != url.host:
        where += " (the authorization server)"
    if isinstance(exc, httpx.ConnectTimeout):
        return f"timed out connecting to {where}"
    if isinstance(exc, httpx.ReadTimeout):
        return f"{where} did not answer in time (read timeout)"
    if isinstance(exc, httpx.TimeoutException):
        return f"timed out talking to {where} ({type(exc).__name__})"
    if isinstance(exc, httpx.ConnectError):
        return f"cannot connect to {where} ({exc or 'connection failed'})"
    detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return f"connection to {where} failed ({detail})"
