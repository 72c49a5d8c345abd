"""The Bulk Data source (`source.kind = "bulk"`): records from a FHIR Bulk Data export.

For a clinic whose day has thousands of patients, reading each record by search costs a
round trip per patient. A Bulk Data export (https://hl7.org/fhir/uv/bulkdata/export.html)
hands over the whole panel at once: the source asks for `[base]/Group/<bulk.group_id>/$export`
with `_type` limited to what a record is built from (Patient, `record.RECORD_SEARCHES` and
the types they `_include`), polls the status URL the server returns (honouring
`Retry-After`, else backing off exponentially, logging `X-Progress`, within
`bulk.max_export_seconds`), downloads the NDJSON files of the completion manifest (with the
same access token when it says `requiresAccessToken`, and then only from the FHIR server's
own host), including its `error` and `deleted` files, and loads them into the local store
(`bulkstore.py`). Then each record is one indexed read from disk.

Incremental nights: the store and the export's `transactionTime` are kept in
`bulk.state_folder`; the next export asks `_since` that time and applies only what
changed. A full export is made instead when there is no usable state, when the server,
panel or types changed, when the last full one is older than `bulk.full_every_days`
(deletions a server does not report are caught up), or when the Group cannot be read
(its current members decide who may still be planned from the store: a patient who left
the panel no longer gets updates).

Appointments and write-back go through the search source (`HttpSource`), unchanged; so do
the records the export cannot answer for, read by search instead: patients not in the
panel's last full export (booked but not, or not yet, on the panel), patients with a
malformed line or a server error in the export, and — when the export fails as a whole
(refused, failed, timed out, a file that cannot be downloaded) — every patient, with the
reason in the run report. The export makes a night faster; it never makes it wrong.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import shutil
import sqlite3
import tempfile
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import IO, Any, TypeVar

import httpx

from previsit.config import Config, requested_scope
from previsit.errors import PatientReadError, RecordError, RequestFailed, SourceError
from previsit.intervals import parse_fhir_datetime
from previsit.jsonio import object_or_none
from previsit.operation_outcome import describe_failure, outcome_issues, redacted_target
from previsit.plan import Visit
from previsit.record import PatientRecord, build_record
from previsit.sources import SourceProblem, VisitWindow, WriteResult
from previsit.sources.bodies import capped_send
from previsit.sources.bulkstore import (
    STATE_FILE,
    STORE_FILE,
    BulkStore,
    ExportedFile,
    ExportState,
    LoadResult,
    export_types,
    load_export,
    load_state,
    reference_id,
    save_state,
)
from previsit.sources.http import (
    FHIR_ID,
    FHIR_JSON,
    RETRY_STATUSES,
    HttpSource,
    RetryPolicy,
    build_client,
    retry_after_seconds,
)

log = logging.getLogger(__name__)

_ERROR_BODY_BYTES = 64 * 1024  # of an error page: enough to say why
NDJSON = "application/fhir+ndjson"
POLL_FIRST_SECONDS = 1.0  # without Retry-After: 1, 2, 4 … seconds between status polls
POLL_MAX_SECONDS = 60.0
# OperationOutcome issue codes of the "transient" family (FHIR R4 IssueType): a status
# request that failed with one of these is to be retried; the export itself goes on.
TRANSIENT_ISSUES = frozenset({"transient", "lock-error", "no-store", "exception", "timeout",
                              "incomplete", "throttled"})

T = TypeVar("T")


class _Transient(Exception):
    """A failure worth another attempt (transport error, 429, 502/503/504, transient)."""

    def __init__(self, message: str, wait: float | None = None) -> None:
        super().__init__(message)
        self.wait = wait


@dataclass(frozen=True)
class ExportFile:
    """One file item of the completion manifest."""

    type: str
    url: str


@dataclass(frozen=True)
class Manifest:
    """The completion manifest of an export (the status request's 200 answer)."""

    transaction_time: str
    requires_token: bool
    output: tuple[ExportFile, ...]
    error: tuple[ExportFile, ...] = ()
    deleted: tuple[ExportFile, ...] = ()


def parse_manifest(data: Any) -> Manifest:
    """The manifest; ValueError saying what is missing. `error` is required by the IG but
    some servers leave it out when empty, so it is optional here, as `deleted` is."""
    if not isinstance(data, Mapping):
        raise ValueError("it is not a JSON object")
    when = data.get("transactionTime")
    if parse_fhir_datetime(when) is None:
        raise ValueError("it has no transactionTime instant")
    requires = data.get("requiresAccessToken", True)
    if not isinstance(requires, bool):
        raise ValueError("requiresAccessToken is not true or false")

    def files(name: str) -> tuple[ExportFile, ...]:
        items = data.get(name, [] if name != "output" else None)
        if not isinstance(items, list):
            raise ValueError(f"{name} is not a list of files")
        out = []
        for item in items:
            if not isinstance(item, Mapping) or not isinstance(item.get("type"), str) \
                    or not isinstance(item.get("url"), str) or not item["url"]:
                raise ValueError(f"an item of {name} has no type and url")
            out.append(ExportFile(item["type"], item["url"]))
        return tuple(out)

    return Manifest(str(when), requires, files("output"), files("error"), files("deleted"))


def _progress(value: str | None) -> str:
    """X-Progress as it may be logged: printable, at most 100 characters (the IG's limit)."""
    return "".join(c for c in (value or "") if c.isprintable())[:100].strip()


class BulkSource:
    """A FHIR server whose records come from a Bulk Data export of the clinic's panel.

    `search` answers appointments, write-back and the records the export cannot; `client`
    (with the same auth) carries the export's requests. Nothing is exported until the
    first appointments() or patient_record(); appointments are searched meanwhile.
    """

    def __init__(self, search: HttpSource, client: httpx.AsyncClient, *, group_id: str,
                 state_folder: Path, incremental: bool = True, full_every_days: int = 7,
                 max_export_seconds: float = 3600.0, concurrency: int = 8,
                 retry: RetryPolicy | None = None, owns_client: bool = False,
                 max_response_bytes: int = 64 * 2**20,
                 max_file_bytes: int = 16 * 2**30) -> None:
        if not FHIR_ID.fullmatch(group_id):
            raise SourceError(f"bulk.group_id {group_id!r} is not a FHIR id")
        self._search = search
        self._client = client
        self._group = group_id
        self._folder = state_folder
        self._incremental = incremental
        self._full_every = timedelta(days=full_every_days)
        self._max_wait = max_export_seconds
        self._max_response_bytes = max_response_bytes
        self._max_file_bytes = max_file_bytes
        self._concurrency = concurrency
        self._retry = retry or RetryPolicy()
        self._owns_client = owns_client
        self._base = httpx.URL(search.base_url + "/")
        self._types = export_types()
        self._task: asyncio.Task[None] | None = None
        self._lock: IO[str] | None = None
        self._status_url: httpx.URL | None = None
        self._reader: BulkStore | None = None
        self._all_by_search = False
        self._suspects: set[str] = set()
        self._problems: list[SourceProblem] = []
        self._requests = 0
        self._by_search = 0

    @classmethod
    def from_config(cls, config: Config, env: Mapping[str, str]) -> BulkSource:
        """The configured source; it owns its clients (`aclose()` closes them)."""
        from previsit.auth import auth_from_config

        source, bulk = config.source, config.bulk
        if not source.base_url:
            raise SourceError("source.kind is bulk but source.base_url is not set "
                              "(or set PREVISIT_SOURCE_BASE_URL)")
        if not bulk.group_id:
            raise SourceError("source.kind is bulk but bulk.group_id is not set: the id of "
                              "the Group of the clinic's panel (or set PREVISIT_BULK_GROUP_ID)")
        scope = requested_scope(config)  # a run's, and the panel's Group
        flow = auth_from_config(config.auth, source.base_url, env, scope=scope)
        search = HttpSource.from_config(source, config.auth, env, scope=scope)
        return cls(search, build_client(source, flow), group_id=bulk.group_id,
                   state_folder=bulk.state_folder or config.output.folder / "bulk-state",
                   incremental=bulk.incremental, full_every_days=bulk.full_every_days,
                   max_export_seconds=bulk.max_export_seconds,
                   concurrency=source.concurrency,
                   retry=RetryPolicy(max_attempts=source.max_attempts,
                                     max_retry_seconds=source.max_retry_seconds),
                   owns_client=True, max_response_bytes=source.max_response_bytes,
                   max_file_bytes=bulk.max_file_bytes)

    # --- the Source protocol -------------------------------------------------------------

    async def appointments(self, window: VisitWindow) -> Sequence[Visit]:
        """The day's appointments, searched while the export runs."""
        self._start()
        return await self._search.appointments(window)

    async def patient_record(self, patient_id: str) -> PatientRecord:
        self._start()
        await asyncio.shield(self._exported())
        reader = self._reader
        if reader is None or patient_id in self._suspects or not reader.is_member(patient_id):
            self._by_search += 1
            log.debug("record %s: read by search (not served by the export)", patient_id)
            return await self._search.patient_record(patient_id)
        try:
            return build_record(reader.record(patient_id, self._types))
        except (RecordError, sqlite3.Error) as exc:
            raise PatientReadError(patient_id, f"Patient/{patient_id} in the bulk export: "
                                               f"{exc}") from None

    async def write_transaction(self, bundle: dict[str, Any], *, key: str) -> WriteResult:
        return await self._search.write_transaction(bundle, key=key)

    def problems(self) -> Sequence[SourceProblem]:
        return (*self._problems, *self._search.problems())

    @property
    def request_count(self) -> int:
        """HTTP requests of the export and of the search source, retries included."""
        return self._requests + self._search.request_count

    async def aclose(self) -> None:
        await self._stop()
        if self._by_search:
            log.info("%d records were read by search instead of the bulk export",
                     self._by_search)
        await self._search.aclose()
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        if self._owns_client:
            await self._client.aclose()
        if self._lock is not None:
            self._lock.close()  # releases the flock
            self._lock = None

    # --- the export, once per run ----------------------------------------------------------

    def _start(self) -> None:
        if self._task is None:
            self._claim_folder()
            self._task = asyncio.ensure_future(self._export())

    async def _exported(self) -> None:
        assert self._task is not None
        await self._task

    async def _stop(self) -> None:
        """Cancel an export still running, and tell the server to drop the job."""
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._delete_job()

    def _claim_folder(self) -> None:
        """The state folder, 0700 (it holds patient data), locked for this run: two runs
        sharing one store would replace it under each other."""
        try:
            self._folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(self._folder, 0o700)
            lock = (self._folder / "lock").open("w")
        except OSError as exc:
            raise SourceError(f"bulk.state_folder {self._folder}: {exc}") from None
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            lock.close()
            raise SourceError(f"bulk.state_folder {self._folder} is in use by another previsit "
                              "run; give each run (each shard) a state folder of its own") \
                from None
        self._lock = lock
        # What a killed run left behind (downloads, a half-built store): patient data that
        # nothing will use; this run holds the lock, so nobody else is using it.
        for stale in self._folder.glob("download-*"):
            shutil.rmtree(stale, ignore_errors=True)
        (self._folder / (STORE_FILE + ".partial")).unlink(missing_ok=True)

    async def _export(self) -> None:
        """Export into the store; when that fails, every record is read by search."""
        try:
            await self._export_into_store()
        except (SourceError, OSError, sqlite3.Error, ValueError) as exc:
            self._all_by_search = True
            self._problems.append(SourceProblem(
                f"bulk export of Group/{self._group}",
                f"{exc}; every record was read by search instead"))
            log.warning("the bulk export failed (%s); every record is read by search", exc)
            await self._delete_job()

    async def _export_into_store(self) -> None:
        previous = self._usable_state()
        members: set[str] | None = None
        if previous is not None:
            members = await self._group_members()
            if members is None:
                previous = None
        log.info("bulk export of Group/%s: %s", self._group,
                 f"what changed since {previous.since}" if previous else "everything")
        self._status_url = await self._kick_off(previous.since if previous else None)
        manifest = await self._manifest(self._status_url)
        store_path = self._folder / STORE_FILE
        target = store_path if previous else self._folder / (STORE_FILE + ".partial")
        if previous is None:
            target.unlink(missing_ok=True)
        downloads = Path(tempfile.mkdtemp(prefix="download-", dir=self._folder))  # 0700
        try:
            files = await self._download_all(manifest, downloads)
            load = asyncio.ensure_future(asyncio.to_thread(
                self._load, target, files, previous is None, members))
            try:
                loaded = await asyncio.shield(load)
            except asyncio.CancelledError:
                await load  # the thread cannot be stopped: let it finish with its files
                raise
        finally:
            shutil.rmtree(downloads, ignore_errors=True)
        await self._delete_job()  # done: the server may delete the files
        if previous is None:
            os.replace(target, store_path)
        self._reader = BulkStore(store_path)
        self._suspects = loaded.suspects
        self._problems.extend(loaded.problems)
        self._save_state(manifest, previous, loaded)
        log.info("bulk export applied: %d resources, %d deleted, %d problems; %s",
                 loaded.resources, loaded.deleted, len(loaded.problems),
                 f"{loaded.members} patients" if previous is None
                 else f"{loaded.left} patients left the panel")

    def _load(self, path: Path, files: list[ExportedFile], full: bool,
              members: set[str] | None) -> LoadResult:
        """Runs in a worker thread (loading blocks): its own connection to the store."""
        store = BulkStore(path, check_same_thread=False)
        try:
            return load_export(store, files, self._types, full=full, current_members=members)
        finally:
            store.close()

    def _usable_state(self) -> ExportState | None:
        """The kept state when this export may be incremental, else None (a full one)."""
        if not self._incremental or not (self._folder / STORE_FILE).exists():
            return None
        state = load_state(self._folder / STATE_FILE)
        if state is None:
            return None
        if (state.server, state.group, state.types) != (str(self._base).rstrip("/"),
                                                        self._group, self._types):
            log.info("the server, panel or exported types changed: exporting everything")
            return None
        full_at = parse_fhir_datetime(state.full_at)
        if full_at is None or self._retry.now() - full_at >= self._full_every:
            log.info("the last full export is older than bulk.full_every_days: exporting "
                     "everything")
            return None
        return state

    def _save_state(self, manifest: Manifest, previous: ExportState | None,
                    loaded: LoadResult) -> None:
        path = self._folder / STATE_FILE
        if not loaded.clean:
            # The store lacks what could not be applied, and a _since export would not
            # send it again: export everything next time.
            path.unlink(missing_ok=True)
            log.warning("the bulk export had %d problems; the next run exports everything",
                        len(loaded.problems))
            return
        save_state(path, ExportState(
            server=str(self._base).rstrip("/"), group=self._group, types=self._types,
            since=manifest.transaction_time,
            full_at=previous.full_at if previous else manifest.transaction_time))

    async def _group_members(self) -> set[str] | None:
        """The panel's current members, or None when the Group cannot be read."""
        url = self._base.join(f"Group/{self._group}")
        try:
            response = await self._retrying("reading the panel's Group", lambda: self._send(
                "GET", url, headers={"Accept": FHIR_JSON}))
        except SourceError as exc:
            log.warning("%s; exporting everything instead of what changed", exc)
            return None
        group = object_or_none(response.content)
        members = group.get("member") if group is not None else None
        if group is None or group.get("resourceType") != "Group" or \
                not isinstance(members, list):
            log.warning("Group/%s has no member list; exporting everything instead of what "
                        "changed", self._group)
            return None
        current = set()
        for member in members:
            entity = member.get("entity") if isinstance(member, dict) else None
            patient = reference_id(entity.get("reference") if isinstance(entity, dict)
                                   else None, "Patient")
            if patient and not member.get("inactive"):
                current.add(patient)
        return current

    # --- the Bulk Data requests --------------------------------------------------------------

    async def _kick_off(self, since: str | None) -> httpx.URL:
        url = self._base.join(f"Group/{self._group}/$export")
        params = [("_type", ",".join(self._types))]
        if since is not None:
            params.append(("_since", since))
        response = await self._retrying("starting the bulk export", lambda: self._send(
            "GET", url, params=params, headers={"Accept": FHIR_JSON,
                                                "Prefer": "respond-async"}))
        if response.status_code != 202:
            raise RequestFailed(f"starting the bulk export: the server answered HTTP "
                                f"{response.status_code}, not 202 Accepted")
        location = response.headers.get("Content-Location")
        if not location:
            raise RequestFailed("starting the bulk export: the server's 202 has no "
                                "Content-Location (the status URL)")
        return self._own_url(location, "the export's status URL")

    async def _manifest(self, status_url: httpx.URL) -> Manifest:
        """Poll until the export is complete; RequestFailed if it fails or takes too long."""
        waited = 0.0
        backoff = POLL_FIRST_SECONDS
        while True:
            try:
                response = await self._retrying("polling the bulk export", lambda: self._send(
                    "GET", status_url, headers={"Accept": "application/json"}))
            except RequestFailed as exc:
                raise RequestFailed(f"the server's bulk export failed — {exc}",
                                    status=exc.status) from None
            if response.status_code == 200:
                try:
                    return parse_manifest(object_or_none(response.content))
                except ValueError as exc:
                    raise RequestFailed(f"the bulk export's manifest cannot be used: {exc}") \
                        from None
            if response.status_code != 202:
                raise RequestFailed(f"polling the bulk export: HTTP {response.status_code}, "
                                    "neither 202 (in progress) nor 200 (complete)")
            progress = _progress(response.headers.get("X-Progress"))
            after = retry_after_seconds(response.headers.get("Retry-After"), self._retry.now())
            wait = backoff if after is None else after
            backoff = min(POLL_MAX_SECONDS, backoff * 2)
            if waited + wait > self._max_wait:
                last = f"; last progress: {progress}" if progress else ""
                raise RequestFailed(f"the bulk export did not finish within "
                                    f"{self._max_wait:.0f} s (bulk.max_export_seconds){last}")
            log.info("bulk export in progress%s; asking again in %.0f s",
                     f" ({progress})" if progress else "", wait)
            await self._retry.sleep(wait)
            waited += wait

    async def _download_all(self, manifest: Manifest, folder: Path) -> list[ExportedFile]:
        """Every file of the manifest this source uses, at most `concurrency` at a time;
        RequestFailed (after retries) when one cannot be downloaded."""
        gate = asyncio.Semaphore(self._concurrency)
        wanted: list[tuple[str, ExportFile]] = [
            *(("output", f) for f in manifest.output if f.type in self._types),
            *(("deleted", f) for f in manifest.deleted),
            *(("error", f) for f in manifest.error)]
        seen: dict[tuple[str, str], int] = {}
        jobs = []
        for index, (kind, item) in enumerate(wanted):
            seen[(kind, item.type)] = number = seen.get((kind, item.type), 0) + 1
            name = {"output": item.type, "deleted": "deleted", "error": "error"}[kind]
            exported = ExportedFile(kind, item.type, folder / f"{index:05d}.ndjson",
                                    f"the export's {name} file {number}")
            jobs.append((exported, item))

        failed = asyncio.Event()

        async def one(exported: ExportedFile, item: ExportFile) -> None:
            async with gate:
                if failed.is_set():
                    return  # another file failed: the export is unusable anyway
                try:
                    await self._download(item, exported, manifest.requires_token)
                except Exception:
                    failed.set()
                    raise

        tasks = [asyncio.ensure_future(one(e, i)) for e, i in jobs]
        try:
            if tasks:
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
                for task in done:
                    failure = task.exception()
                    if failure is not None:
                        raise failure
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        return [exported for exported, _ in jobs]

    async def _download(self, item: ExportFile, exported: ExportedFile, token: bool) -> None:
        """Stream one file to disk (never whole in memory); a failed attempt starts over."""
        url = self._own_url(item.url, exported.label) if token else self._base.join(item.url)
        step = f"downloading {exported.label}"

        async def attempt() -> None:
            self._requests += 1
            try:
                async with self._client.stream(
                        "GET", url, headers={"Accept": NDJSON},
                        auth=httpx.USE_CLIENT_DEFAULT if token else None) as response:
                    if not response.is_success:
                        # only the start of an error page: it says why, and a hostile one
                        # may never end
                        head = response.content if response.is_stream_consumed else b""
                        if not response.is_stream_consumed:
                            async for chunk in response.aiter_raw():
                                head += chunk
                                if len(head) >= _ERROR_BODY_BYTES:
                                    break
                        self._raise_for(httpx.Response(
                            response.status_code, headers=response.headers.raw,
                            content=head[:_ERROR_BODY_BYTES], request=response.request))
                    written = 0
                    with exported.path.open("wb") as out:
                        # decoded bytes are counted: a gzip bomb stops at the cap too
                        async for chunk in response.aiter_bytes():
                            written += len(chunk)
                            if written > self._max_file_bytes:
                                raise RequestFailed(
                                    f"{step}: the file is larger than bulk.max_file_bytes "
                                    f"({self._max_file_bytes:,} bytes); not read")
                            out.write(chunk)
            except httpx.TransportError as exc:
                raise _Transient(f"GET {exported.label}: {type(exc).__name__}") from None

        await self._retrying(step, attempt)

    async def _delete_job(self) -> None:
        """DELETE the status URL: cancels a running export, or tells the server the files
        were fetched (it may delete them). Best effort: a failure is only logged."""
        url, self._status_url = self._status_url, None
        if url is None:
            return
        try:
            await self._send("DELETE", url, headers={"Accept": FHIR_JSON})
        except (SourceError, _Transient) as exc:
            log.debug("deleting the bulk export job: %s", exc)

    # --- one request ----------------------------------------------------------------------------

    def _own_url(self, location: str, what: str) -> httpx.URL:
        """A URL the access token may be sent to: the FHIR server's own scheme and host."""
        url = self._base.join(location)
        if (url.scheme, url.host, url.port) != (self._base.scheme, self._base.host,
                                                self._base.port):
            raise RequestFailed(f"{what} is on {url.scheme}://{url.host}, not on the FHIR "
                                f"server {self._base.host}: previsit sends its access token "
                                "to the FHIR server only")
        return url

    async def _send(self, method: str, url: httpx.URL, *,
                    params: list[tuple[str, str]] | None = None,
                    headers: dict[str, str]) -> httpx.Response:
        """One request; `_Transient` for what is worth retrying, RequestFailed otherwise."""
        self._requests += 1
        request = self._client.build_request(method, url, params=tuple(params) if params
                                             else None, headers=headers)
        try:
            response = await capped_send(self._client, request, self._max_response_bytes,
                                         redacted_target(url, self._base))
        except httpx.TransportError as exc:
            raise _Transient(f"{method} {redacted_target(url, self._base)}: "
                             f"{type(exc).__name__}") from None
        if not response.is_success:
            self._raise_for(response)
        return response

    def _raise_for(self, response: httpx.Response) -> None:
        """A failed response (its body read) as _Transient or RequestFailed."""
        words = describe_failure(response, self._base)
        transient = response.status_code in RETRY_STATUSES or any(
            issue.code in TRANSIENT_ISSUES
            for issue in outcome_issues(object_or_none(response.content)))
        if transient:
            raise _Transient(words, retry_after_seconds(response.headers.get("Retry-After"),
                                                        self._retry.now()))
        raise RequestFailed(words, status=response.status_code)

    async def _retrying(self, step: str, attempt: Callable[[], Awaitable[T]]) -> T:
        """`attempt()` again after transient failures: Retry-After when the server says,
        else exponential backoff, within the source's attempts and time budget."""
        policy = self._retry
        spent = 0.0
        for number in range(1, policy.max_attempts + 1):
            try:
                return await attempt()
            except RequestFailed as exc:
                raise RequestFailed(f"{step}: {exc}", status=exc.status) from None
            except _Transient as exc:
                delay = exc.wait if exc.wait is not None else \
                    min(policy.max_delay, policy.initial_delay * 2 ** (number - 1))
                if number == policy.max_attempts or spent + delay > policy.max_retry_seconds:
                    raise RequestFailed(f"{step}: {exc} (gave up after {number} attempt"
                                        f"{'s' if number > 1 else ''})") from None
                log.warning("%s: %s; retry %d of %d in %.1f s", step, exc, number,
                            policy.max_attempts - 1, delay)
                await policy.sleep(delay)
                spent += delay
        raise AssertionError("unreachable: the last attempt returns or raises")
