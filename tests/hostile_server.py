"""A hostile FHIR R4 server for tests: real HTTP/1.1 on 127.0.0.1, misbehaviour on demand.

previsit must survive servers that lie, stall, flood and inject. A framework would refuse to
send most of what that takes (an endless body, a Content-Length that lies, a gzip bomb, raw
control bytes in a header), so this is a small HTTP/1.1 server written on asyncio streams,
running its own event loop in a background thread. It is bounded: bodies are generated lazily
in constant-size chunks (a 1 GiB body never exists in memory; the gzip bomb is ~2 MB built
once per process), every connection has a deadline after which it is cut, request bodies are
capped, and `stop()` ends every connection and the thread.

API
---
    from hostile_server import Chart, Fault, HostileFhirServer, Recorder

    chart = Chart(patient_resource, appointment_resource, condition_resource, ...)
    with HostileFhirServer(chart) as server, Recorder() as other:
        server.behaviours.swap_patient["pat-1"] = "pat-2"        # lie about who this is
        server.fault(Fault.huge(1 << 30), method="POST", patient="pat-3")
        ... run previsit against server.base_url ...
        assert not other.requests                                 # nothing leaked there
        assert not any(r.carries("s3cret") for r in server.requests)

`HostileFhirServer(chart=None, *, connection_deadline=15.0)`
    `.base_url` ("http://127.0.0.1:<port>/fhir"), `.origin`, `.port`, `.token_url`
    (`<origin>/auth/token`, a client_credentials endpoint issuing `behaviours.issued_token`).
    `.chart` (a `Chart`, editable between runs), `.behaviours` (a `Behaviours`, see there),
    `.requests` (every `RecordedRequest`, in arrival order), `.transactions` (every
    transaction Bundle POSTed, as parsed JSON), `.fault(...)` (below), `.requests_to(path)`,
    `.asked_about(pid)` (requests that read, searched or batched for that patient),
    `.connection_deadline` (settable), `.reset(chart)` (new chart, no faults, no records,
    default behaviours).

What it serves at the base (enough for previsit's HttpSource): `GET metadata` (a
CapabilityStatement listing batch and transaction, software name from the behaviours);
`GET .well-known/smart-configuration` (404 unless `behaviours.smart_token_endpoint` is set);
`GET Appointment?date=ge…&date=lt…&status=a,b&_count=N` (filters applied leniently: a start
that cannot be compared is returned, previsit must judge it); `GET Patient/<id>` and any
`GET <Type>/<id>`; `GET <Type>?patient=<id>` for every type, `_include=MedicationRequest:
medication` honoured; paging by `_count` (capped by `behaviours.max_count`) and `_offset`
with `Bundle.link[next]`; `POST [base]` with a `batch` Bundle (each GET entry answered as
above, per-entry status) or a `transaction` Bundle (conditional creates by identifier,
conditional updates, answered with a `transaction-response`; the Bundle is recorded).

Faults (`Fault.*`) replace the answer to matching requests:
    `server.fault(fault, method=None, path=None, patient=None, times=None)` — `path` is the
    path relative to the base without query ("Appointment", "Patient/p1", "metadata", ""
    for POSTs to the base); `patient` matches a read of Patient/<id>, a search with
    `patient=<id>`, and a batch whose entries ask for either; `times` limits the fault to the
    first N matching requests. The first registered matching fault wins.
    `Fault.json(body, status)`, `Fault.status_code(code, body, content_type)`,
    `Fault.outcome(status, text)` (an OperationOutcome, text verbatim: escapes, CR LF, bidi),
    `Fault.deep_json(depth)` (a searchset whose one resource nests `depth` arrays),
    `Fault.huge(size)` (valid-looking JSON of exactly `size` bytes, generated lazily),
    `Fault.endless()` (a chunked JSON body that never ends), `Fault.drip(interval, body)`
    (one byte every `interval` seconds), `Fault.gzip_bomb(expanded)` (Content-Encoding: gzip,
    ~1/1000 of `expanded` on the wire), `Fault.lying_length(declared, body)` (Content-Length
    says more than is sent, then the connection closes), `Fault.raw(data)` (bytes written
    as they are, status line included, then close).

`Recorder()` is "the other host": a second listener on 127.0.0.1 that records every request
(origin-form, absolute-form when used as a proxy, CONNECT) and answers a token request with
a token and anything else with an empty searchset, so a client that leaks keeps leaking.
`.url` is its origin, `.requests` what reached it.

`RecordedRequest`: `.method`, `.target` (as sent), `.path` (absolute path), `.relative`
(path relative to the FHIR base, or None), `.query` (list of pairs), `.headers` (lower-case
names), `.body` (first MiB), `.bytes_sent` (response bytes written, updated while streaming),
`.carries(secret)` (the secret anywhere in the request, also inside HTTP Basic credentials).

Chart values may contain `RawJSON(text)`: text spliced into the JSON as it is (100k-deep
nesting, NaN, a 5,000-digit number) — things Python's json.dumps cannot or will not write.
`dumps(value)` is that serializer.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import copy
import itertools
import json
import threading
import time
import uuid
import zlib
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

FHIR_JSON = "application/fhir+json"
MAX_HEADER_BYTES = 64 * 1024
MAX_REQUEST_BODY = 16 * 1024 * 1024  # previsit sends small Bundles; anything more is a bug
RECORDED_BODY_BYTES = 1024 * 1024
CHUNK = 1024 * 1024  # lazily generated bodies go out in pieces of this size

_REASONS = {200: "OK", 201: "Created", 202: "Accepted", 204: "No Content", 301: "Moved",
            302: "Found", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden",
            404: "Not Found", 405: "Method Not Allowed", 409: "Conflict",
            412: "Precondition Failed", 413: "Payload Too Large", 422: "Unprocessable Entity",
            429: "Too Many Requests", 500: "Internal Server Error", 502: "Bad Gateway",
            503: "Service Unavailable", 504: "Gateway Timeout"}


# --- JSON with raw pieces -------------------------------------------------------------------


@dataclass(frozen=True)
class RawJSON:
    """JSON text to splice verbatim into an otherwise ordinary value."""

    text: str


def dumps(value: Any) -> str:
    """JSON text of `value`; RawJSON pieces go in as they are.

    Strings are written with ASCII escapes, so a lone surrogate becomes the legal-looking
    escape `\\ud800` (which Python's json.loads turns back into a lone surrogate), exactly
    what a hostile export contains. Floats keep NaN/Infinity (non-standard JSON that
    Python reads).
    """
    if isinstance(value, RawJSON):
        return value.text
    if isinstance(value, Mapping):
        return "{" + ",".join(f"{json.dumps(str(k))}:{dumps(v)}" for k, v in value.items()) \
            + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(dumps(v) for v in value) + "]"
    return json.dumps(value)


def deep_json(depth: int, *, inner: str = "0") -> str:
    """`depth` nested arrays around `inner`: valid JSON that recursive parsers choke on."""
    return "[" * depth + inner + "]" * depth


# --- what was received ------------------------------------------------------------------------


@dataclass(repr=False)
class RecordedRequest:
    listener: str
    method: str
    target: str
    path: str
    relative: str | None
    query: list[tuple[str, str]]
    headers: dict[str, str]
    body: bytes
    received_at: float
    bytes_sent: int = 0

    def param(self, name: str) -> list[str]:
        return [v for k, v in self.query if k == name]

    def __repr__(self) -> str:
        auth = self.headers.get("authorization", "")
        shown = f" authorization={auth.split(' ')[0]} …" if auth else ""
        return (f"<{self.listener}: {self.method} {self.target[:100]}{shown} "
                f"body={len(self.body)} B sent={self.bytes_sent} B>")

    def carries(self, secret: str) -> bool:
        """The secret anywhere in what was sent: target, headers, body, Basic credentials."""
        text = " ".join([self.target, *(f"{k}: {v}" for k, v in self.headers.items())])
        if secret in text or secret.encode() in self.body:
            return True
        if secret in unquote(text) or secret in unquote(self.body.decode("latin-1")):
            return True
        for value in self.headers.values():
            scheme, _, credentials = value.partition(" ")
            if scheme.lower() == "basic":
                try:
                    decoded = base64.b64decode(credentials.strip(), validate=False)
                except (binascii.Error, ValueError):
                    continue
                if secret in unquote(decoded.decode("latin-1")):
                    return True
        return False


@dataclass
class _Request:
    method: str
    target: str
    path: str
    query: list[tuple[str, str]]
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except (ValueError, UnicodeDecodeError):
            return None


# --- what is sent --------------------------------------------------------------------------


Body = bytes | Callable[[], AsyncIterator[bytes]]


@dataclass
class Reply:
    """One response. `body` is bytes, or a factory of an async iterator (streamed)."""

    status: int = 200
    body: Body = b""
    headers: list[tuple[str, str]] = field(default_factory=list)
    content_type: str | None = FHIR_JSON
    length: int | None = None  # declared Content-Length for streamed bodies (may lie)
    chunked: bool = False  # streamed with Transfer-Encoding: chunked
    close: bool = False  # close the connection afterwards
    raw: bytes | None = None  # written verbatim instead of all of the above


def _json_reply(body: Any, status: int = 200, *, content_type: str = FHIR_JSON) -> Reply:
    return Reply(status, dumps(body).encode("utf-8"), content_type=content_type)


def operation_outcome(text: str, code: str = "processing", severity: str = "error"
                      ) -> dict[str, Any]:
    return {"resourceType": "OperationOutcome",
            "issue": [{"severity": severity, "code": code, "details": {"text": text},
                       "diagnostics": text}]}


# A searchset that looks right: the prefix and one filler entry, repeated to any size.
_BUNDLE_HEAD = b'{"resourceType":"Bundle","type":"searchset","entry":['
_FILLER = b'{"resource":{"resourceType":"Basic","id":"filler","code":{"text":"x"}}},'
_FILLER_LAST = b'{"resource":{"resourceType":"Basic","id":"filler","code":{"text":"x"}}}]'


def _filler_chunk() -> bytes:
    return _FILLER * (CHUNK // len(_FILLER))


async def _huge_body(size: int) -> AsyncIterator[bytes]:
    """Exactly `size` bytes of valid JSON: a searchset of filler entries, padded with spaces."""
    tail = _FILLER_LAST + b"}"
    if size < len(_BUNDLE_HEAD) + len(tail):
        raise ValueError("a huge body must be larger than its frame")
    yield _BUNDLE_HEAD
    left = size - len(_BUNDLE_HEAD) - len(tail)
    chunk = _filler_chunk()
    while left >= len(chunk):
        yield chunk
        left -= len(chunk)
    whole, rest = divmod(left, len(_FILLER))
    yield _FILLER * whole + b" " * rest
    yield tail


async def _endless_body() -> AsyncIterator[bytes]:
    yield _BUNDLE_HEAD
    chunk = _filler_chunk()
    while True:
        yield chunk


async def _drip(data: bytes, interval: float) -> AsyncIterator[bytes]:
    for byte in data:
        await asyncio.sleep(interval)
        yield bytes([byte])


_BOMBS: dict[int, bytes] = {}
_BOMB_LOCK = threading.Lock()


def gzip_bomb(expanded: int) -> bytes:
    """A valid gzip member that inflates to `expanded` bytes of JSON (a searchset padded with
    spaces), about 1,000 times smaller; built once per size and kept.

    Each 16 MiB block of spaces is deflated from a fresh state and ended with a full flush,
    so the compressed block is the same bytes every time and is simply repeated; the CRC is
    computed over the same blocks (a fraction of a second for 2.2 GB).
    """
    with _BOMB_LOCK:
        if expanded in _BOMBS:
            return _BOMBS[expanded]
        head = b'{"resourceType":"Bundle","type":"searchset","entry":[]'
        block = b" " * (16 * 1024 * 1024)
        if expanded < len(head) + 1:
            raise ValueError("a gzip bomb must expand to more than its frame")
        blocks, rest = divmod(expanded - len(head) - 1, len(block))

        def deflated(data: bytes, final: bool) -> bytes:
            compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
            return compressor.compress(data) + compressor.flush(
                zlib.Z_FINISH if final else zlib.Z_FULL_FLUSH)

        crc = zlib.crc32(head)
        for _ in range(blocks):
            crc = zlib.crc32(block, crc)
        tail = b" " * rest + b"}"
        crc = zlib.crc32(tail, crc)
        header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff"
        trailer = crc.to_bytes(4, "little") + (expanded % (1 << 32)).to_bytes(4, "little")
        data = b"".join([header, deflated(head, False), deflated(block, False) * blocks,
                         deflated(tail, True), trailer])
        _BOMBS[expanded] = data
        return data


@dataclass(frozen=True)
class Fault:
    """A misbehaviour replacing the normal answer (build with the class methods)."""

    kind: str
    status: int = 200
    body: bytes = b""
    size: int = 0
    interval: float = 0.0
    content_type: str | None = FHIR_JSON

    @classmethod
    def json(cls, body: Any, status: int = 200) -> Fault:
        return cls("bytes", status, dumps(body).encode("utf-8"))

    @classmethod
    def status_code(cls, status: int, body: bytes = b"", content_type: str | None = "text/plain"
                    ) -> Fault:
        return cls("bytes", status, body, content_type=content_type)

    @classmethod
    def outcome(cls, status: int, text: str, code: str = "exception") -> Fault:
        return cls("bytes", status, dumps(operation_outcome(text, code)).encode("utf-8"))

    @classmethod
    def deep_json(cls, depth: int = 100_000, status: int = 200) -> Fault:
        body = ('{"resourceType":"Bundle","type":"searchset","entry":[{"resource":'
                '{"resourceType":"Basic","id":"deep","extension":'
                f'{deep_json(depth)}}}}}]}}')
        return cls("bytes", status, body.encode("ascii"))

    @classmethod
    def huge(cls, size: int = 1 << 30) -> Fault:
        return cls("huge", size=size)

    @classmethod
    def endless(cls) -> Fault:
        return cls("endless")

    @classmethod
    def drip(cls, interval: float, body: bytes | None = None) -> Fault:
        return cls("drip", body=body if body is not None else
                   b'{"resourceType":"Bundle","type":"searchset","entry":[]}', interval=interval)

    @classmethod
    def gzip_bomb(cls, expanded: int = 2_200_000_000) -> Fault:
        return cls("gzip", size=expanded)

    @classmethod
    def lying_length(cls, declared: int, body: bytes = b'{"resourceType":"Bundle",') -> Fault:
        return cls("lying", body=body, size=declared)

    @classmethod
    def raw(cls, data: bytes) -> Fault:
        return cls("raw", body=data)

    def reply(self) -> Reply:
        if self.kind == "bytes":
            return Reply(self.status, self.body, content_type=self.content_type)
        if self.kind == "huge":
            size = self.size
            return Reply(self.status, lambda: _huge_body(size), length=size, close=True)
        if self.kind == "endless":
            return Reply(self.status, _endless_body, chunked=True, close=True)
        if self.kind == "drip":
            data, interval = self.body, self.interval
            return Reply(self.status, lambda: _drip(data, interval), length=len(data),
                         close=True)
        if self.kind == "gzip":
            data = gzip_bomb(self.size)
            return Reply(self.status, data, headers=[("Content-Encoding", "gzip")])
        if self.kind == "lying":
            data = self.body

            async def short() -> AsyncIterator[bytes]:
                yield data

            return Reply(self.status, short, length=self.size, close=True)
        if self.kind == "raw":
            return Reply(raw=self.body, close=True)
        raise ValueError(f"unknown fault {self.kind!r}")


@dataclass
class _FaultRule:
    fault: Fault
    method: str | None
    path: str | None
    patient: str | None
    times: int | None
    used: int = 0


# --- the chart ------------------------------------------------------------------------------


def patient_of(resource: Mapping[str, Any]) -> str | None:
    """The id in subject/patient "Patient/<id>" (exactly that form), if any."""
    for name in ("subject", "patient", "beneficiary"):
        ref = resource.get(name)
        reference = ref.get("reference") if isinstance(ref, Mapping) else None
        if isinstance(reference, str) and reference.startswith("Patient/"):
            return reference[len("Patient/"):]
    return None


class Chart:
    """The server's data: resources by type and id (insertion order kept)."""

    def __init__(self, *resources: Mapping[str, Any]) -> None:
        self._by_type: dict[str, dict[str, dict[str, Any]]] = {}
        self._anonymous = itertools.count(1)
        self.add(*resources)

    def add(self, *resources: Mapping[str, Any]) -> None:
        for resource in resources:
            rtype = resource.get("resourceType")
            if not isinstance(rtype, str):
                raise ValueError("a chart resource needs a resourceType")
            rid = resource.get("id")
            key = rid if isinstance(rid, str) else f"_anonymous-{next(self._anonymous)}"
            self._by_type.setdefault(rtype, {})[key] = dict(resource)

    def get(self, rtype: str, rid: str) -> dict[str, Any] | None:
        return self._by_type.get(rtype, {}).get(rid)

    def of_type(self, rtype: str) -> list[dict[str, Any]]:
        return list(self._by_type.get(rtype, {}).values())

    def of_patient(self, rtype: str, pid: str) -> list[dict[str, Any]]:
        return [r for r in self.of_type(rtype) if patient_of(r) == pid]

    def with_identifier(self, rtype: str, system: str, value: str) -> dict[str, Any] | None:
        for resource in self.of_type(rtype):
            for ident in resource.get("identifier") or ():
                if isinstance(ident, Mapping) and ident.get("system") == system \
                        and ident.get("value") == value:
                    return resource
        return None

    def __len__(self) -> int:
        return sum(len(v) for v in self._by_type.values())


@dataclass
class Behaviours:
    """Switches a test flips; defaults are a well-behaved server."""

    # Patient/<key> is answered with Patient/<value> (the other person's resource).
    swap_patient: dict[str, str] = field(default_factory=dict)
    # A search with patient=<key> is answered with <value>'s resources instead.
    swap_searches: dict[str, str] = field(default_factory=dict)
    # A search with patient=<key> also returns <value>'s resources (mixed in).
    leak_searches: dict[str, str] = field(default_factory=dict)
    software_name: str = "Hostile FHIR test server"
    # .well-known/smart-configuration's token_endpoint; None answers 404.
    smart_token_endpoint: str | None = None
    issued_token: str = "token-from-hostile-server"
    # When set, everything but metadata, smart-configuration and the token endpoint
    # demands `Authorization: Bearer <require_token>`.
    require_token: str | None = None
    # Next links point at this base instead of the server's own (e.g. the Recorder).
    foreign_next: str | None = None
    max_count: int = 50  # the server's own page size limit
    # Answer an Appointment search with every appointment of the statuses asked for, whatever
    # the dates (a server that ignores `date`, or one that compares differently).
    ignore_date_filter: bool = False
    # patient id -> resource type: that patient's searches of that type never end (every
    # page has another next link, to a new offset).
    endless_search: dict[str, str] = field(default_factory=dict)
    endless_page_bytes: int = 20_000
    batch: bool = True  # whether the CapabilityStatement lists batch (and batch is served)


# --- the HTTP machinery ---------------------------------------------------------------------


class _Listener:
    """An asyncio stream server on 127.0.0.1 in its own thread, one task per connection."""

    def __init__(self, name: str, handle: Callable[[_Request, RecordedRequest], Reply],
                 base_path: str, connection_deadline: float) -> None:
        self.name = name
        self._handle = handle
        self._base_path = base_path
        self.connection_deadline = connection_deadline
        self.requests: list[RecordedRequest] = []
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.AbstractServer | None = None
        self._thread: threading.Thread | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._ready = threading.Event()
        self._error: BaseException | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._main, name=f"hostile-{self.name}",
                                        daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError(f"{self.name}: the listener did not start")
        if self._error is not None:
            raise RuntimeError(f"{self.name}: the listener failed to start") from self._error

    def _main(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            self._server = loop.run_until_complete(asyncio.start_server(
                self._connection, "127.0.0.1", 0, limit=MAX_HEADER_BYTES))
            self.port = self._server.sockets[0].getsockname()[1]
        except BaseException as exc:  # reported to start()
            self._error = exc
            self._ready.set()
            loop.close()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.close()

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None or not thread.is_alive():
            return
        future = asyncio.run_coroutine_threadsafe(self._shutdown(), loop)
        try:
            future.result(timeout=10)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=10)

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _connection(self, reader: asyncio.StreamReader,
                          writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            async with asyncio.timeout(self.connection_deadline):
                while True:
                    request = await _read_request(reader)
                    if request is None:
                        break
                    if isinstance(request, Reply):  # the request itself was unacceptable
                        await _write_reply(writer, request, None)
                        break
                    record = self._record(request)
                    try:
                        reply = self._handle(request, record)
                    except Exception as exc:  # a bug in a test's chart: say so, stay up
                        reply = _json_reply(operation_outcome(
                            f"hostile server error: {type(exc).__name__}: {exc}"), 500)
                    keep = await _write_reply(writer, reply, record)
                    if not keep or request.headers.get("connection", "").lower() == "close":
                        break
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError,
                asyncio.LimitOverrunError, asyncio.CancelledError, ValueError):
            pass
        finally:
            self._tasks.discard(task)
            writer.transport.abort()  # no lingering: a cut connection is part of the test

    def _record(self, request: _Request) -> RecordedRequest:
        relative = None
        if request.path == self._base_path or request.path.startswith(self._base_path + "/"):
            relative = request.path[len(self._base_path):].strip("/")
        record = RecordedRequest(
            listener=self.name, method=request.method, target=request.target,
            path=request.path, relative=relative, query=request.query,
            headers=dict(request.headers), body=request.body[:RECORDED_BODY_BYTES],
            received_at=time.monotonic())
        self.requests.append(record)
        return record


async def _read_request(reader: asyncio.StreamReader) -> _Request | Reply | None:
    line = await reader.readline()
    if not line:
        return None
    if not line.endswith(b"\n"):
        return None
    parts = line.decode("latin-1").rstrip("\r\n").split(" ")
    if len(parts) != 3:
        return Reply(400, b"bad request line", content_type="text/plain", close=True)
    method, target, _version = parts
    headers: dict[str, str] = {}
    total = len(line)
    while True:
        raw = await reader.readline()
        total += len(raw)
        if total > MAX_HEADER_BYTES:
            return Reply(431, b"headers too large", content_type="text/plain", close=True)
        if raw in (b"\r\n", b"\n", b""):
            break
        name, _, value = raw.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    body = b""
    if headers.get("transfer-encoding", "").lower() == "chunked":
        pieces: list[bytes] = []
        size = 0
        while True:
            length = int((await reader.readline()).split(b";")[0].strip() or b"0", 16)
            if length == 0:
                await reader.readline()
                break
            size += length
            if size > MAX_REQUEST_BODY:
                return Reply(413, b"body too large", content_type="text/plain", close=True)
            pieces.append(await reader.readexactly(length))
            await reader.readline()
        body = b"".join(pieces)
    elif "content-length" in headers:
        length = int(headers["content-length"])
        if length > MAX_REQUEST_BODY:
            return Reply(413, b"body too large", content_type="text/plain", close=True)
        body = await reader.readexactly(length)
    split = urlsplit(target) if method != "CONNECT" else urlsplit(f"//{target}")
    return _Request(method=method, target=target, path=unquote(split.path) or "/",
                    query=parse_qsl(split.query, keep_blank_values=True), headers=headers,
                    body=body)


async def _write_reply(writer: asyncio.StreamWriter, reply: Reply,
                       record: RecordedRequest | None) -> bool:
    """Send one reply; whether the connection may carry another request."""

    def sent(count: int) -> None:
        if record is not None:
            record.bytes_sent += count

    if reply.raw is not None:
        writer.write(reply.raw)
        await writer.drain()
        sent(len(reply.raw))
        return False
    head = [f"HTTP/1.1 {reply.status} {_REASONS.get(reply.status, 'Unknown')}"]
    if reply.content_type:
        head.append(f"Content-Type: {reply.content_type}")
    head.extend(f"{k}: {v}" for k, v in reply.headers)
    if isinstance(reply.body, bytes):
        head.append(f"Content-Length: {len(reply.body)}")
    elif reply.chunked:
        head.append("Transfer-Encoding: chunked")
    elif reply.length is not None:
        head.append(f"Content-Length: {reply.length}")
    if reply.close:
        head.append("Connection: close")
    data = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1")
    writer.write(data)
    sent(len(data))
    if isinstance(reply.body, bytes):
        writer.write(reply.body)
        await writer.drain()
        sent(len(reply.body))
        return not reply.close
    await writer.drain()
    async for piece in reply.body():
        if reply.chunked:
            piece = f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
        writer.write(piece)
        await writer.drain()
        sent(len(piece))
        # drain() does not suspend while the socket takes everything; without a real
        # suspension a fast reader would keep this loop from ever seeing its deadline.
        await asyncio.sleep(0)
    if reply.chunked:
        writer.write(b"0\r\n\r\n")
        await writer.drain()
    return not reply.close


# --- the FHIR server --------------------------------------------------------------------------


SEARCH_PARAMS = ("date", "status", "practitioner", "actor", "location", "service-type",
                 "patient", "subject", "_count", "_offset", "_include", "identifier")
RESOURCE_TYPES = ("Appointment", "Patient", "Condition", "MedicationRequest", "Medication",
                  "Observation", "Procedure", "Immunization", "ServiceRequest",
                  "DocumentReference")


class HostileFhirServer:
    """A FHIR R4 server on 127.0.0.1 whose misbehaviour a test switches on (see module doc)."""

    base_path = "/fhir"

    def __init__(self, chart: Chart | None = None, *, connection_deadline: float = 15.0) -> None:
        self.chart = chart if chart is not None else Chart()
        self.behaviours = Behaviours()
        self.transactions: list[dict[str, Any]] = []
        self._faults: list[_FaultRule] = []
        self._lock = threading.Lock()
        self._listener = _Listener("fhir", self._handle, self.base_path, connection_deadline)

    # --- lifecycle and inspection ------------------------------------------------------

    def start(self) -> HostileFhirServer:
        self._listener.start()
        return self

    def stop(self) -> None:
        self._listener.stop()

    def __enter__(self) -> HostileFhirServer:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        return self._listener.port

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return self.origin + self.base_path

    @property
    def token_url(self) -> str:
        return self.origin + "/auth/token"

    @property
    def requests(self) -> list[RecordedRequest]:
        return self._listener.requests

    @property
    def connection_deadline(self) -> float:
        return self._listener.connection_deadline

    @connection_deadline.setter
    def connection_deadline(self, seconds: float) -> None:
        self._listener.connection_deadline = seconds

    def requests_to(self, relative: str) -> list[RecordedRequest]:
        """Requests whose path relative to the base starts with `relative`."""
        return [r for r in self.requests if r.relative is not None
                and r.relative.startswith(relative)]

    def asked_about(self, pid: str) -> list[RecordedRequest]:
        """Requests that read Patient/<pid>, searched by patient=<pid>, or batched either."""
        return [r for r in self.requests if _concerns(
            _Request(r.method, r.target, r.path, r.query, r.headers, r.body), r.relative, pid)]

    def fault(self, fault: Fault, *, method: str | None = None, path: str | None = None,
              patient: str | None = None, times: int | None = None) -> None:
        with self._lock:
            self._faults.append(_FaultRule(fault, method.upper() if method else None, path,
                                           patient, times))

    def reset(self, chart: Chart | None = None) -> None:
        with self._lock:
            self.chart = chart if chart is not None else Chart()
            self.behaviours = Behaviours()
            self.transactions.clear()
            self._faults.clear()
            self._listener.requests.clear()

    # --- dispatch ------------------------------------------------------------------------

    def _handle(self, request: _Request, record: RecordedRequest) -> Reply:
        fault = self._fault_for(request, record.relative)
        if fault is not None:
            return fault.reply()
        if request.path == "/auth/token":
            return self._token(request)
        if record.relative is None:
            return _json_reply(operation_outcome("not found", "not-found"), 404)
        relative = record.relative
        public = relative in ("metadata", ".well-known/smart-configuration")
        wanted = self.behaviours.require_token
        if wanted is not None and not public and \
                request.headers.get("authorization") != f"Bearer {wanted}":
            return _json_reply(operation_outcome("Unauthorized", "login"), 401)
        if request.method == "GET":
            status, body = self._get(relative, request.query)
            return _json_reply(body, status)
        if request.method == "POST" and relative == "":
            return self._post_bundle(request)
        return _json_reply(operation_outcome(f"{request.method} {relative} is not supported",
                                             "not-supported"), 405)

    def _fault_for(self, request: _Request, relative: str | None) -> Fault | None:
        with self._lock:
            for rule in self._faults:
                if rule.times is not None and rule.used >= rule.times:
                    continue
                if rule.method is not None and rule.method != request.method:
                    continue
                if rule.path is not None and rule.path != relative:
                    continue
                if rule.patient is not None and not _concerns(request, relative, rule.patient):
                    continue
                rule.used += 1
                return rule.fault
        return None

    def _token(self, request: _Request) -> Reply:
        if request.method != "POST":
            return _json_reply({"error": "invalid_request"}, 405, content_type="application/json")
        return _json_reply({"access_token": self.behaviours.issued_token,
                            "token_type": "bearer", "expires_in": 3600,
                            "scope": "system/*.read"}, content_type="application/json")

    def _get(self, relative: str, query: list[tuple[str, str]]) -> tuple[int, Any]:
        if relative == "metadata":
            return 200, self._capability_statement()
        if relative == ".well-known/smart-configuration":
            endpoint = self.behaviours.smart_token_endpoint
            if endpoint is None:
                return 404, operation_outcome("no SMART configuration", "not-found")
            return 200, {"token_endpoint": endpoint,
                         "grant_types_supported": ["client_credentials"],
                         "token_endpoint_auth_methods_supported": [
                             "client_secret_basic", "private_key_jwt"],
                         "token_endpoint_auth_signing_alg_values_supported": ["RS384",
                                                                              "ES384"],
                         "capabilities": ["client-confidential-symmetric",
                                          "client-confidential-asymmetric"]}
        parts = [p for p in relative.split("/") if p]
        if len(parts) == 2:
            return self._read(parts[0], parts[1])
        if len(parts) == 1:
            return 200, self._search(parts[0], query)
        return 404, operation_outcome(f"unknown path {relative}", "not-found")

    def _read(self, rtype: str, rid: str) -> tuple[int, Any]:
        if rtype == "Patient":
            rid = self.behaviours.swap_patient.get(rid, rid)
        resource = self.chart.get(rtype, rid)
        if resource is None:
            return 404, operation_outcome(f"{rtype}/{rid} not found", "not-found")
        return 200, resource

    def _search(self, rtype: str, query: list[tuple[str, str]]) -> dict[str, Any]:
        params: dict[str, list[str]] = {}
        for name, value in query:
            params.setdefault(name, []).append(value)
        count = min(_int(params.get("_count", ["50"])[0], 50), self.behaviours.max_count)
        count = max(count, 1)
        offset = max(_int(params.get("_offset", ["0"])[0], 0), 0)
        asked = params.get("patient") or params.get("subject") or []
        pid: str | None = asked[0] if asked else None
        if pid is not None and pid.startswith("Patient/"):
            pid = pid[len("Patient/"):]
        if pid is not None and self.behaviours.endless_search.get(pid) == rtype:
            return self._endless_page(rtype, pid, query, offset, count)
        if rtype == "Appointment":
            dates = [] if self.behaviours.ignore_date_filter else params.get("date", [])
            matches = [a for a in self.chart.of_type("Appointment") if _appointment_matches(
                a, params.get("status", []), dates)]
        elif pid is not None:
            source = self.behaviours.swap_searches.get(pid, pid)
            matches = self.chart.of_patient(rtype, source)
            leaked = self.behaviours.leak_searches.get(pid)
            if leaked is not None:
                matches = matches + self.chart.of_patient(rtype, leaked)
        else:
            matches = self.chart.of_type(rtype)
        page = matches[offset:offset + count]
        entries: list[dict[str, Any]] = [{"resource": r, "search": {"mode": "match"}}
                                         for r in page]
        if rtype == "MedicationRequest" and "MedicationRequest:medication" in \
                params.get("_include", []):
            for medication in self._included_medications(page):
                entries.append({"resource": medication, "search": {"mode": "include"}})
        bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset",
                                  "entry": entries}
        links = [{"relation": "self", "url": self._link(rtype, query, offset)}]
        if offset + count < len(matches):
            links.append({"relation": "next", "url": self._link(rtype, query, offset + count)})
        bundle["link"] = links
        return bundle

    def _endless_page(self, rtype: str, pid: str, query: list[tuple[str, str]], offset: int,
                      count: int) -> dict[str, Any]:
        padding = "x" * max(0, self.behaviours.endless_page_bytes // max(count, 1) - 200)
        entries = [{"resource": {"resourceType": rtype, "id": f"endless-{offset + i}",
                                 "status": "final", "subject": {"reference": f"Patient/{pid}"},
                                 "code": {"text": padding},
                                 "effectiveDateTime": "2020-01-01"}}
                   for i in range(count)]
        return {"resourceType": "Bundle", "type": "searchset", "entry": entries,
                "link": [{"relation": "self", "url": self._link(rtype, query, offset)},
                         {"relation": "next", "url": self._link(rtype, query, offset + count)}]}

    def _included_medications(self, page: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
        found: dict[str, dict[str, Any]] = {}
        for request in page:
            ref = request.get("medicationReference")
            reference = ref.get("reference") if isinstance(ref, Mapping) else None
            if isinstance(reference, str) and reference.startswith("Medication/"):
                medication = self.chart.get("Medication", reference.split("/", 1)[1])
                if medication is not None:
                    found[reference] = medication
        return list(found.values())

    def _link(self, rtype: str, query: list[tuple[str, str]], offset: int) -> str:
        base = self.behaviours.foreign_next or self.base_url
        kept = [(k, v) for k, v in query if k != "_offset"]
        if offset:
            kept.append(("_offset", str(offset)))
        return f"{base}/{rtype}?{urlencode(kept)}" if kept else f"{base}/{rtype}"

    def _capability_statement(self) -> dict[str, Any]:
        interactions = [{"code": "transaction"}]
        if self.behaviours.batch:
            interactions.append({"code": "batch"})
        return {"resourceType": "CapabilityStatement", "status": "active", "kind": "instance",
                "fhirVersion": "4.0.1", "format": ["json"],
                "software": {"name": self.behaviours.software_name, "version": "0.0.1"},
                "rest": [{"mode": "server", "interaction": interactions, "resource": [
                    {"type": t, "interaction": [{"code": c} for c in
                                                ("read", "search-type", "create", "update")],
                     "conditionalCreate": True, "conditionalUpdate": True,
                     "searchInclude": ["MedicationRequest:medication"]
                     if t == "MedicationRequest" else [],
                     "searchParam": [{"name": p, "type": "token"} for p in SEARCH_PARAMS
                                     if not p.startswith("_")]}
                    for t in RESOURCE_TYPES]}]}

    # --- batch and transaction -------------------------------------------------------------

    def _post_bundle(self, request: _Request) -> Reply:
        bundle = request.json()
        if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
            return _json_reply(operation_outcome("expected a Bundle", "invalid"), 400)
        if bundle.get("type") == "batch":
            if not self.behaviours.batch:
                return _json_reply(operation_outcome("batch is not supported",
                                                     "not-supported"), 405)
            return _json_reply(self._batch(bundle))
        if bundle.get("type") == "transaction":
            with self._lock:
                self.transactions.append(copy.deepcopy(bundle))
            return _json_reply(self._transaction(bundle))
        return _json_reply(operation_outcome("expected a batch or a transaction", "invalid"),
                           400)

    def _batch(self, bundle: Mapping[str, Any]) -> dict[str, Any]:
        entries = []
        for entry in bundle.get("entry") or ():
            request = entry.get("request") if isinstance(entry, Mapping) else None
            url = request.get("url") if isinstance(request, Mapping) else None
            if not isinstance(request, Mapping) or not isinstance(url, str) \
                    or request.get("method") != "GET":
                entries.append({"response": {"status": "400 Bad Request", "outcome":
                                             operation_outcome("only GET in a batch")}})
                continue
            split = urlsplit(url)
            status, body = self._get(split.path.strip("/"), parse_qsl(split.query))
            answer: dict[str, Any] = {"response": {"status": f"{status} "
                                                   f"{_REASONS.get(status, '')}".strip()}}
            if status < 300:
                answer["resource"] = body
            else:
                answer["response"]["outcome"] = body
            entries.append(answer)
        return {"resourceType": "Bundle", "type": "batch-response", "entry": entries}

    def _transaction(self, bundle: Mapping[str, Any]) -> dict[str, Any]:
        answers = []
        for entry in bundle.get("entry") or ():
            request = entry.get("request") or {}
            resource = entry.get("resource") or {}
            rtype = resource.get("resourceType", "Basic")
            existing = None
            condition = request.get("ifNoneExist") or (
                request.get("url", "").partition("?")[2] if request.get("method") == "PUT"
                else "")
            if condition.startswith("identifier="):
                system, _, value = condition[len("identifier="):].partition("|")
                existing = self.chart.with_identifier(rtype, unquote(system), unquote(value))
            if existing is not None and request.get("method") == "POST":
                answers.append({"response": {"status": "200 OK", "location":
                                             f"{rtype}/{existing['id']}/_history/1"}})
                continue
            stored = dict(resource)
            stored["id"] = existing["id"] if existing is not None else str(uuid.uuid4())
            self.chart.add(stored)
            status = "200 OK" if existing is not None else "201 Created"
            answers.append({"response": {"status": status,
                                         "location": f"{rtype}/{stored['id']}/_history/1"}})
        return {"resourceType": "Bundle", "type": "transaction-response", "entry": answers}


def _concerns(request: _Request, relative: str | None, pid: str) -> bool:
    """Whether a request asks about patient `pid` (read, search or batch of either)."""
    if relative == f"Patient/{pid}":
        return True
    if any(k in ("patient", "subject") and v in (pid, f"Patient/{pid}")
           for k, v in request.query):
        return True
    if request.method == "POST" and request.body:
        bundle = request.json()
        for entry in (bundle.get("entry") or ()) if isinstance(bundle, dict) else ():
            url = (entry.get("request") or {}).get("url") if isinstance(entry, dict) else None
            if not isinstance(url, str):
                continue
            split = urlsplit(url)
            if split.path.strip("/") == f"Patient/{pid}" or any(
                    k == "patient" and v == pid for k, v in parse_qsl(split.query)):
                return True
    return False


def _int(value: str, default: int) -> int:
    try:
        return int(value)
    except ValueError:
        return default


def _appointment_matches(resource: Mapping[str, Any], statuses: list[str],
                         dates: list[str]) -> bool:
    wanted = {s for value in statuses for s in value.split(",") if s}
    status = resource.get("status")
    # A status that is not a string cannot be compared either: returned, previsit judges it.
    if wanted and isinstance(status, str) and status not in wanted:
        return False
    start = resource.get("start")
    try:
        when = datetime.fromisoformat(str(start).replace("Z", "+00:00"))
        for value in dates:
            prefix, bound = value[:2], datetime.fromisoformat(value[2:].replace("Z", "+00:00"))
            if when.tzinfo is None or bound.tzinfo is None:
                continue
            if (prefix == "ge" and when < bound) or (prefix == "lt" and when >= bound) or \
                    (prefix == "gt" and when <= bound) or (prefix == "le" and when > bound):
                return False
    except (ValueError, TypeError, OverflowError):
        return True  # cannot be compared: the client must decide
    return True


# --- the other host ---------------------------------------------------------------------------


class Recorder:
    """"Another host": records whatever reaches it; answers so that a leaking client goes on."""

    def __init__(self, *, connection_deadline: float = 15.0) -> None:
        self._listener = _Listener("other", self._handle, "/fhir", connection_deadline)

    def start(self) -> Recorder:
        self._listener.start()
        return self

    def stop(self) -> None:
        self._listener.stop()

    def __enter__(self) -> Recorder:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        return self._listener.port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def requests(self) -> list[RecordedRequest]:
        return self._listener.requests

    def _handle(self, request: _Request, record: RecordedRequest) -> Reply:
        if request.method == "CONNECT":
            return Reply(405, b"", content_type=None, close=True)
        if request.method == "POST" and request.path.endswith("/token"):
            return _json_reply({"access_token": "token-from-the-other-host",
                                "token_type": "bearer", "expires_in": 3600},
                               content_type="application/json")
        return _json_reply({"resourceType": "Bundle", "type": "searchset", "entry": []})
