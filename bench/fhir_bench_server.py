"""A benchmark FHIR R4 server: a whole health system's day, answered from memory.

    .venv/bin/python bench/fhir_bench_server.py --patients 10000 [--appointments N]
        [--latency-ms 50] [--port 0] [--date 2021-01-15] [--timezone America/New_York]
    .venv/bin/python bench/fhir_bench_server.py --measure [--patients 1000]   # its own speed

Serves the clinic day that bench/synthea_day.py writes as files (the same patients, ids
and appointments) on 127.0.0.1, with `--latency-ms` added to every response, so that
`previsit run --fhir-url http://127.0.0.1:PORT/fhir` can be measured at 10,000
appointments without a database. Prints `listening on <base URL>` when ready.

What it answers, as previsit asks it (previsit/sources/http.py, previsit/capability.py):
- `GET /metadata`: a CapabilityStatement listing batch, transaction, the searches below,
  conditional create (ServiceRequest, MedicationRequest) and conditional update
  (DocumentReference);
- `GET /Appointment?date=geX&date=ltY&status=a,b&_count=n` (also `practitioner`,
  `location`, `actor`, `service-type`, `patient`), paged by `Bundle.link[next]`;
- `GET /Patient/<id>`, and `GET /<Type>?patient=<id>&_count=n` for Condition,
  MedicationRequest (`_include=MedicationRequest:medication`), Observation, Procedure,
  Immunization, ServiceRequest, Encounter, MedicationDispense and MedicationStatement, each
  paged by `link[next]`;
- `POST /` with a `batch` of those GETs, or a `transaction` of conditional creates (POST
  with `ifNoneExist`: 201 the first time, 200 after) and conditional updates (PUT
  `Type?identifier=…`: 201, then 200). What was written is kept, so a re-run is
  idempotent, and written ServiceRequests / MedicationRequests appear in later searches;
- any other search parameter: 400 with an OperationOutcome, as a strict production
  server (Medplum) answers.
- `GET /__stats` (not under the FHIR base, no latency): requests by kind, bytes, the
  server's CPU seconds and peak RSS since the last `POST /__stats/reset`.

Memory stays small at any size: each of the 40 Synthea patients is held once, serialised
and cut at its UUIDs (synthea_day.split_at_ids), and replica n's page is the template's
pieces joined with n's id prefix — O(page) work per request, nothing per patient held.
HTTP/1.1 is spoken directly on asyncio streams (keep-alive, Content-Length or chunked
request bodies) to keep the server's CPU per request far below the client's.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import ipaddress
import json
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from resource import RUSAGE_SELF, getrusage
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode

import orjson
from synthea_day import (
    DEFAULT_DAY,
    DEFAULT_TZ,
    PREFIX_LEN,
    DaySpec,
    Template,
    appointment_resources,
    find_synthea,
    load_templates,
    replica_prefix,
    split_at_ids,
)

# What previsit reads of a record (previsit.record.RECORD_SEARCHES), each searched by patient.
RECORD_TYPES = ("Condition", "MedicationRequest", "Observation", "Procedure", "Immunization",
                "ServiceRequest", "Encounter", "MedicationDispense", "MedicationStatement")
WRITABLE = ("ServiceRequest", "MedicationRequest", "DocumentReference")
APPOINTMENT_PARAMS = frozenset({"date", "status", "practitioner", "location", "actor",
                                "service-type", "patient", "_count", "_offset"})
RECORD_PARAMS = frozenset({"patient", "_count", "_offset"})
INCLUDE_MEDICATION = "MedicationRequest:medication"
DEFAULT_COUNT = 100
MAX_COUNT = 1000
PATIENT_LINKS = ("subject", "patient")
REASONS = {200: "OK", 201: "Created", 400: "Bad Request", 404: "Not Found",
           405: "Method Not Allowed", 413: "Payload Too Large", 500: "Internal Server Error"}


class FhirError(Exception):
    """Answered as an OperationOutcome with this HTTP status."""

    def __init__(self, status: int, message: str, code: str = "invalid") -> None:
        super().__init__(message)
        self.status = status
        self.code = code


def outcome(message: str, code: str = "invalid") -> bytes:
    return orjson.dumps({"resourceType": "OperationOutcome", "issue": [
        {"severity": "error", "code": code, "details": {"text": message}}]})


# --- the data: templates cut at their UUIDs --------------------------------------------


@dataclass(frozen=True)
class PatientTemplate:
    """One Synthea patient as pieces: its Patient, and its search entries per type."""

    index: int
    patient_uuid: str
    patient: tuple[bytes, ...]  # the Patient resource, cut at UUIDs
    entries: Mapping[str, tuple[tuple[bytes, ...], ...]]  # type -> search entries, cut
    medications: Mapping[str, tuple[bytes, ...]]  # Medication uuid -> include entry, cut
    medication_refs: tuple[tuple[str, ...], ...]  # per MedicationRequest entry


def _dumps(data: Any) -> bytes:
    """Compact JSON, sized to fit: what is kept for the whole run (orjson's output keeps
    a ~4 KB buffer however small the document, 117 MB for 30,000 stored proposals)."""
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()


def _rewrite_references(value: Any, types: Mapping[str, str]) -> Any:
    """urn:uuid:<id> references (transaction-local) as Type/<id>, as a server stores them."""
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if key == "reference" and isinstance(item, str) and item.startswith("urn:uuid:"):
                target = item[len("urn:uuid:"):]
                out[key] = f"{types[target]}/{target}" if target in types else item
            else:
                out[key] = _rewrite_references(item, types)
        return out
    if isinstance(value, list):
        return [_rewrite_references(item, types) for item in value]
    return value


def _reference_id(resource: Mapping[str, Any], names: Iterable[str]) -> str | None:
    for name in names:
        ref = resource.get(name)
        if isinstance(ref, dict) and isinstance(ref.get("reference"), str):
            return str(ref["reference"]).rsplit("/", 1)[-1]
    return None


def build_template(template: Template, base_url: str) -> PatientTemplate:
    bundle = json.loads(template.path.read_bytes())
    resources = [e["resource"] for e in bundle.get("entry") or ()
                 if isinstance(e, dict) and isinstance(e.get("resource"), dict)]
    types = {str(r.get("id")): str(r.get("resourceType")) for r in resources}
    patient: tuple[bytes, ...] = ()
    per_type: dict[str, list[tuple[bytes, ...]]] = {t: [] for t in RECORD_TYPES}
    medications: dict[str, tuple[bytes, ...]] = {}
    medication_refs: list[tuple[str, ...]] = []
    for raw in resources:
        resource = _rewrite_references(raw, types)
        rtype, rid = resource.get("resourceType"), resource.get("id")
        if rtype == "Patient" and rid == template.patient_uuid:
            patient = split_at_ids(_dumps(resource))
        elif rtype == "Medication":
            medications[str(rid)] = split_at_ids(_dumps({
                "fullUrl": f"{base_url}/Medication/{rid}", "resource": resource,
                "search": {"mode": "include"}}))
        elif rtype in per_type and _reference_id(resource, PATIENT_LINKS) == \
                template.patient_uuid:
            per_type[str(rtype)].append(split_at_ids(_dumps({
                "fullUrl": f"{base_url}/{rtype}/{rid}", "resource": resource,
                "search": {"mode": "match"}})))
            if rtype == "MedicationRequest":
                medication_refs.append(tuple(
                    r for r in [_reference_id(resource, ("medicationReference",))] if r))
    if not patient:
        raise ValueError(f"{template.path}: no Patient {template.patient_uuid}")
    return PatientTemplate(template.index, template.patient_uuid, patient,
                           {t: tuple(e) for t, e in per_type.items()}, medications,
                           tuple(medication_refs))


@dataclass(frozen=True)
class AppointmentFacts:
    """What the Appointment search parameters filter on."""

    status: str
    actors: frozenset[str]  # every participant as Type/id and as the bare id
    service_types: frozenset[str]  # every serviceType as code and as system|code


@dataclass(frozen=True)
class AppointmentIndex:
    """The day's appointments in start order, each as its search entry."""

    starts: tuple[float, ...]  # POSIX seconds, ascending
    facts: tuple[AppointmentFacts, ...]
    entries: tuple[bytes, ...]


def _facts(appointment: Mapping[str, Any]) -> AppointmentFacts:
    actors = [str(p["actor"]["reference"]) for p in appointment["participant"]]
    codes = [(str(c.get("system", "")), str(c["code"]))
             for concept in appointment.get("serviceType") or ()
             for c in concept.get("coding") or ()]
    return AppointmentFacts(
        status=str(appointment["status"]),
        actors=frozenset(actors) | {a.rsplit("/", 1)[-1] for a in actors},
        service_types=frozenset(code for _, code in codes) |
        {f"{system}|{code}" for system, code in codes})


def build_appointments(spec: DaySpec, templates: Sequence[Template], base_url: str
                       ) -> AppointmentIndex:
    rows = []
    for appointment in appointment_resources(spec, templates):
        start = datetime.fromisoformat(str(appointment["start"])).timestamp()
        rows.append((start, str(appointment["id"]), appointment))
    rows.sort(key=lambda row: (row[0], row[1]))
    return AppointmentIndex(
        starts=tuple(row[0] for row in rows), facts=tuple(_facts(r) for _, _, r in rows),
        entries=tuple(_dumps({"fullUrl": f"{base_url}/Appointment/{r['id']}", "resource": r,
                              "search": {"mode": "match"}}) for _, _, r in rows))


# --- statistics ------------------------------------------------------------------------


@dataclass
class Stats:
    kinds: Counter[str] = field(default_factory=Counter)
    bytes_in: int = 0
    bytes_out: int = 0
    handler_seconds: float = 0.0  # building answers, latency excluded
    cpu_at_reset: float = field(default_factory=time.process_time)
    since: float = field(default_factory=time.time)
    in_flight: int = 0
    max_in_flight: int = 0

    def snapshot(self) -> dict[str, Any]:
        kinds = dict(sorted(self.kinds.items()))
        http = sum(v for k, v in kinds.items() if k.startswith("http "))
        reads = sum(v for k, v in kinds.items() if k.startswith("http GET ")
                    or k == "http POST batch")
        return {
            "http_requests": http, "reads": reads,
            "transactions": kinds.get("http POST transaction", 0),
            "kinds": kinds, "bytes_in": self.bytes_in, "bytes_out": self.bytes_out,
            "handler_seconds": round(self.handler_seconds, 3),
            "cpu_seconds": round(time.process_time() - self.cpu_at_reset, 3),
            "wall_seconds": round(time.time() - self.since, 3),
            "max_in_flight": self.max_in_flight,
            "peak_rss_mb": round(getrusage(RUSAGE_SELF).ru_maxrss / 1024, 1),
        }


# --- the FHIR server ---------------------------------------------------------------------


class BenchFhir:
    """Answers FHIR requests from the templates; knows nothing of HTTP framing."""

    def __init__(self, spec: DaySpec, templates: Sequence[Template], base_url: str) -> None:
        self.spec = spec
        self.base_url = base_url
        self.templates = [build_template(t, base_url) for t in templates]
        self.by_suffix = {t.patient_uuid[PREFIX_LEN:]: t for t in self.templates}
        self.appointments = build_appointments(spec, templates, base_url)
        self._appointment_queries: dict[tuple[tuple[str, str], ...], tuple[int, ...]] = {}
        self.stats = Stats()
        # What was written: conditional key -> (type, id, version); per patient and type
        # the search entries of written resources, so later searches see them.
        self.conditional: dict[tuple[str, str], tuple[str, str, int]] = {}
        self.written: dict[tuple[str, str], list[bytes]] = {}
        self.created_count = 0
        self.capability = _dumps(capability_statement(base_url))

    # --- routing ------------------------------------------------------------------------

    def get(self, path: str, query: str, link_base: str) -> bytes:
        """A GET relative to the base ("Patient/x", "Condition", "metadata")."""
        params = parse_qsl(query, keep_blank_values=True)
        parts = path.strip("/").split("/")
        if parts == ["metadata"]:
            self.stats.kinds["metadata"] += 1
            return self.capability
        if len(parts) == 2 and parts[0] == "Patient":
            self.stats.kinds["Patient read"] += 1
            return self.read_patient(parts[1])
        if len(parts) == 1 and parts[0] == "Appointment":
            paged = any(k == "_offset" for k, _ in params)
            self.stats.kinds["Appointment page" if paged else "Appointment search"] += 1
            return self.search_appointments(params, link_base)
        if len(parts) == 1 and parts[0] in RECORD_TYPES:
            paged = any(k == "_offset" for k, _ in params)
            self.stats.kinds[f"{parts[0]} {'page' if paged else 'search'}"] += 1
            return self.search_record(parts[0], params, link_base)
        raise FhirError(404, f"no route for GET {path}", "not-supported")

    def post(self, body: bytes, link_base: str) -> bytes:
        try:
            bundle = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise FhirError(400, f"the body is not JSON: {exc}") from None
        if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
            raise FhirError(400, "POST [base] takes a batch or transaction Bundle")
        if bundle.get("type") == "batch":
            return self.batch(bundle, link_base)
        if bundle.get("type") == "transaction":
            return self.transaction(bundle)
        raise FhirError(400, f"Bundle.type {bundle.get('type')!r} is not batch or transaction")

    # --- reads ----------------------------------------------------------------------------

    def replica(self, patient_ref: str) -> tuple[PatientTemplate, bytes] | None:
        """The template and id prefix of a replica patient id, or None when unknown."""
        pid = patient_ref.removeprefix("Patient/")
        if len(pid) != 36:
            return None
        try:
            n = int(pid[:PREFIX_LEN], 16)
        except ValueError:
            return None
        template = self.by_suffix.get(pid[PREFIX_LEN:])
        if template is None or n >= self.spec.patients or \
                n % len(self.templates) != template.index:
            return None
        return template, replica_prefix(n)

    def read_patient(self, pid: str) -> bytes:
        found = self.replica(pid)
        if found is None:
            raise FhirError(404, f"Patient/{pid} not found", "not-found")
        template, prefix = found
        return prefix.join(template.patient)

    def search_record(self, rtype: str, params: list[tuple[str, str]], link_base: str
                      ) -> bytes:
        allowed = RECORD_PARAMS | ({"_include"} if rtype == "MedicationRequest" else set())
        _check_params(rtype, params, allowed)
        include = False
        for key, value in params:
            if key == "_include":
                if value != INCLUDE_MEDICATION:
                    raise FhirError(400, f"unsupported _include {value!r}")
                include = True
        patients = [v for k, v in params if k == "patient"]
        if len(patients) != 1:
            raise FhirError(400, f"{rtype} search needs exactly one patient parameter")
        count, offset = _paging(params)
        found = self.replica(patients[0])
        pieces: Sequence[tuple[bytes, ...]] = ()
        written: Sequence[bytes] = ()
        prefix = b""
        if found is not None:
            template, prefix = found
            pieces = template.entries[rtype]
            written = self.written.get((patients[0].removeprefix("Patient/"), rtype), ())
        total = len(pieces) + len(written)
        entries = [prefix.join(p) for p in pieces[offset:offset + count]]
        rest = count - len(entries)
        if rest > 0 and written:
            start = max(0, offset - len(pieces))
            entries.extend(written[start:start + rest])
        if include and found is not None:
            template, prefix = found
            cited = dict.fromkeys(ref for refs in template.medication_refs[offset:offset + count]
                                  for ref in refs)
            entries.extend(prefix.join(template.medications[ref]) for ref in cited
                           if ref in template.medications)
        return self._searchset(rtype, params, entries, offset, count, total, link_base)

    def search_appointments(self, params: list[tuple[str, str]], link_base: str) -> bytes:
        _check_params("Appointment", params, APPOINTMENT_PARAMS)
        count, offset = _paging(params)
        key = tuple(sorted((k, v) for k, v in params if k not in ("_count", "_offset")))
        matches = self._appointment_queries.get(key)
        if matches is None:
            matches = self._match_appointments(params)
            if len(self._appointment_queries) > 64:
                self._appointment_queries.clear()
            self._appointment_queries[key] = matches
        entries = [self.appointments.entries[i] for i in matches[offset:offset + count]]
        return self._searchset("Appointment", params, entries, offset, count, len(matches),
                               link_base)

    def _match_appointments(self, params: list[tuple[str, str]]) -> tuple[int, ...]:
        index = self.appointments
        low, high = 0, len(index.starts)
        lists: dict[str, set[str]] = {}
        for key, value in params:
            if key == "date":
                prefix, instant = _date_bound(value)
                if prefix == "ge":
                    low = max(low, bisect.bisect_left(index.starts, instant))
                elif prefix == "gt":
                    low = max(low, bisect.bisect_right(index.starts, instant))
                elif prefix == "lt":
                    high = min(high, bisect.bisect_left(index.starts, instant))
                else:  # le
                    high = min(high, bisect.bisect_right(index.starts, instant))
            elif key in ("status", "practitioner", "location", "actor", "service-type",
                         "patient"):
                lists.setdefault(key, set()).update(v for v in value.split(",") if v)
        out = []
        for i in range(low, high):
            facts = index.facts[i]
            if "status" in lists and facts.status not in lists["status"]:
                continue
            if any(key in lists and not lists[key] & facts.actors
                   for key in ("practitioner", "location", "actor", "patient")):
                continue
            if "service-type" in lists and not lists["service-type"] & facts.service_types:
                continue
            out.append(i)
        return tuple(out)

    def _searchset(self, rtype: str, params: list[tuple[str, str]], entries: list[bytes],
                   offset: int, count: int, total: int, link_base: str) -> bytes:
        kept = [(k, v) for k, v in params if k != "_offset"]
        links = [b'{"relation":"self","url":"' + _url(link_base, rtype, params) + b'"}']
        if offset + count < total:
            after = [*kept, ("_offset", str(offset + count))]
            if not any(k == "_count" for k, _ in kept):
                after.append(("_count", str(count)))
            links.append(b'{"relation":"next","url":"' + _url(link_base, rtype, after) + b'"}')
        return (b'{"resourceType":"Bundle","type":"searchset","link":[' + b",".join(links) +
                b'],"entry":[' + b",".join(entries) + b"]}")

    def batch(self, bundle: Mapping[str, Any], link_base: str) -> bytes:
        self.stats.kinds["batch entries"] += len(bundle.get("entry") or ())
        answers = []
        for entry in bundle.get("entry") or ():
            request = entry.get("request") if isinstance(entry, dict) else None
            method = request.get("method") if isinstance(request, dict) else None
            url = request.get("url") if isinstance(request, dict) else None
            if method != "GET" or not isinstance(url, str):
                answers.append(_entry_answer(400, outcome(
                    "this server's batch answers GET entries only")))
                continue
            path, _, query = url.partition("?")
            try:
                answers.append(_entry_answer(200, self.get(path, query, link_base)))
            except FhirError as exc:
                answers.append(_entry_answer(exc.status, outcome(str(exc), exc.code)))
        return (b'{"resourceType":"Bundle","type":"batch-response","entry":[' +
                b",".join(answers) + b"]}")

    # --- writes ---------------------------------------------------------------------------

    def transaction(self, bundle: Mapping[str, Any]) -> bytes:
        entries = bundle.get("entry") or []
        plans = []
        for index, entry in enumerate(entries):  # check everything before writing anything
            request = entry.get("request") if isinstance(entry, dict) else None
            resource = entry.get("resource") if isinstance(entry, dict) else None
            if not isinstance(request, dict) or not isinstance(resource, dict):
                raise FhirError(400, f"entry {index}: needs request and resource")
            method, url = request.get("method"), str(request.get("url") or "")
            rtype = url.split("?", 1)[0].split("/", 1)[0]
            if rtype not in WRITABLE or resource.get("resourceType") != rtype:
                raise FhirError(400, f"entry {index}: cannot write {rtype or 'nothing'} here")
            if method == "POST" and "?" not in url and "/" not in url:
                condition = str(request.get("ifNoneExist") or "")
            elif method == "PUT" and "?" in url:
                condition = url.split("?", 1)[1]
            else:
                raise FhirError(400, f"entry {index}: only POST (conditional create) and "
                                "conditional PUT are supported")
            plans.append((str(method), rtype, _condition_key(condition), resource))
        self.stats.kinds["transaction entries"] += len(plans)
        answers = []
        for method, rtype, key, resource in plans:
            known = self.conditional.get((rtype, key)) if key else None
            if known is not None and method == "POST":
                self.stats.kinds["conditional create matched (200)"] += 1
                answers.append(_write_answer(200, *known))
                continue
            if known is not None:  # conditional update of what exists: a new version
                _, rid, version = known
                version += 1
                status = 200
                self.stats.kinds["conditional update (200)"] += 1
            else:
                self.created_count += 1
                rid = str(uuid.uuid5(uuid.NAMESPACE_URL, f"{self.base_url}/{rtype}/"
                                     f"{key or self.created_count}"))
                version = 1
                status = 201
                self.stats.kinds[f"{rtype} created (201)"] += 1
            if key:
                self.conditional[(rtype, key)] = (rtype, rid, version)
            if rtype in RECORD_TYPES and status == 201:
                self._remember(rtype, rid, resource)
            answers.append(_write_answer(status, rtype, rid, version))
        return (b'{"resourceType":"Bundle","type":"transaction-response","entry":[' +
                b",".join(answers) + b"]}")

    def _remember(self, rtype: str, rid: str, resource: Mapping[str, Any]) -> None:
        """Keep a written order's search entry so later searches of its patient find it."""
        patient = _reference_id(resource, PATIENT_LINKS)
        if patient is None:
            return
        stored = {**resource, "id": rid, "meta": {"versionId": "1"}}
        self.written.setdefault((patient, rtype), []).append(_dumps({
            "fullUrl": f"{self.base_url}/{rtype}/{rid}", "resource": stored,
            "search": {"mode": "match"}}))


def _check_params(rtype: str, params: Iterable[tuple[str, str]],
                  allowed: frozenset[str] | set[str]) -> None:
    for key, _ in params:
        if key not in allowed:
            # As a strict production server answers (Medplum: 400 on unknown parameters).
            raise FhirError(400, f"Unknown search parameter: {key} (on {rtype})")


def _paging(params: Iterable[tuple[str, str]]) -> tuple[int, int]:
    count, offset = DEFAULT_COUNT, 0
    for key, value in params:
        try:
            if key == "_count":
                count = min(MAX_COUNT, max(1, int(value)))
            elif key == "_offset":
                offset = max(0, int(value))
        except ValueError:
            raise FhirError(400, f"{key}={value!r} is not a number") from None
    return count, offset


def _date_bound(value: str) -> tuple[str, float]:
    prefix, text = value[:2], value[2:]
    if prefix not in ("ge", "gt", "le", "lt"):
        raise FhirError(400, f"date={value!r}: this server compares with ge, gt, le or lt")
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise FhirError(400, f"date={value!r} is not a FHIR dateTime") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return prefix, when.timestamp()


def _condition_key(condition: str) -> str:
    """`identifier=system|value` (or any search) in one canonical spelling."""
    return urlencode(sorted(parse_qsl(condition, keep_blank_values=True)))


def _url(link_base: str, rtype: str, params: Sequence[tuple[str, str]]) -> bytes:
    query = urlencode(list(params), quote_via=quote, safe="|:,/")
    return f"{link_base}/{rtype}{'?' + query if query else ''}".encode()


def _entry_answer(status: int, body: bytes) -> bytes:
    """A batch-response entry: the resource on success, the OperationOutcome otherwise."""
    line = b'"status":"%d %s"' % (status, REASONS.get(status, "").encode())
    if status < 300:
        return b'{"resource":' + body + b',"response":{' + line + b"}}"
    return b'{"response":{' + line + b',"outcome":' + body + b"}}"


def _write_answer(status: int, rtype: str, rid: str, version: int) -> bytes:
    return _dumps({"response": {"status": f"{status} {REASONS[status]}",
                                "location": f"{rtype}/{rid}/_history/{version}",
                                "etag": f'W/"{version}"'}})


def capability_statement(base_url: str) -> dict[str, Any]:
    def param(name: str, kind: str) -> dict[str, str]:
        return {"name": name, "type": kind}

    def interactions(*codes: str) -> list[dict[str, str]]:
        return [{"code": c} for c in codes]

    resources: list[dict[str, Any]] = [
        {"type": "Appointment", "interaction": interactions("search-type"),
         "searchParam": [param("date", "date"), param("status", "token"),
                         param("practitioner", "reference"), param("location", "reference"),
                         param("actor", "reference"), param("service-type", "token"),
                         param("patient", "reference")]},
        {"type": "Patient", "interaction": interactions("read")},
        {"type": "Medication", "interaction": interactions("read")},
    ]
    for rtype in RECORD_TYPES:
        entry: dict[str, Any] = {"type": rtype, "interaction": interactions("search-type"),
                                 "searchParam": [param("patient", "reference")]}
        if rtype == "MedicationRequest":
            entry["searchInclude"] = [INCLUDE_MEDICATION]
        if rtype in WRITABLE:
            entry["interaction"] = interactions("search-type", "create")
            entry["conditionalCreate"] = True
            entry["searchParam"].append(param("identifier", "token"))
        resources.append(entry)
    resources.append({"type": "DocumentReference", "interaction": interactions(
        "create", "update"), "conditionalCreate": True, "conditionalUpdate": True,
        "searchParam": [param("identifier", "token")]})
    return {"resourceType": "CapabilityStatement", "status": "active", "date": "2021-01-01",
            "kind": "instance", "fhirVersion": "4.0.1", "format": ["json"],
            "software": {"name": "previsit benchmark FHIR server"},
            "implementation": {"description": "Synthea replicas from memory",
                               "url": base_url},
            "rest": [{"mode": "server",
                      "interaction": interactions("batch", "transaction"),
                      "resource": resources}]}


# --- HTTP/1.1 on asyncio streams ---------------------------------------------------------


class HttpFront:
    """Reads requests, asks BenchFhir, sleeps the latency, writes responses."""

    def __init__(self, fhir: BenchFhir, base_path: str, latency: float) -> None:
        self.fhir = fhir
        self.base_path = base_path.rstrip("/")
        self.latency = latency

    async def connection(self, reader: asyncio.StreamReader,
                         writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                keep_alive = await self._one(head, reader, writer)
                if not keep_alive:
                    return
        except (ConnectionError, asyncio.LimitOverrunError, asyncio.IncompleteReadError):
            return
        finally:
            writer.close()

    async def _one(self, head: bytes, reader: asyncio.StreamReader,
                   writer: asyncio.StreamWriter) -> bool:
        lines = head.decode("latin-1").split("\r\n")
        method, target, version = [*lines[0].split(" "), "", "", ""][:3]
        headers = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        body = b""
        if headers.get("transfer-encoding", "").lower() == "chunked":
            body = await _read_chunked(reader)
        elif int(headers.get("content-length") or 0):
            body = await reader.readexactly(int(headers["content-length"]))
        keep_alive = headers.get("connection", "").lower() != "close" and \
            version == "HTTP/1.1"
        stats = self.fhir.stats
        stats.bytes_in += len(head) + len(body)
        stats.in_flight += 1
        stats.max_in_flight = max(stats.max_in_flight, stats.in_flight)
        started = time.perf_counter()
        status, payload, delay = self._answer(method, target, body,
                                              headers.get("host", "127.0.0.1"))
        stats.handler_seconds += time.perf_counter() - started
        try:
            if delay:
                await asyncio.sleep(delay)
            writer.write(b"HTTP/1.1 %d %s\r\nContent-Type: application/fhir+json\r\n"
                         b"Content-Length: %d\r\n%s\r\n" % (
                             status, REASONS.get(status, "").encode(), len(payload),
                             b"" if keep_alive else b"Connection: close\r\n") + payload)
            await writer.drain()
        finally:
            stats.in_flight -= 1
        stats.bytes_out += len(payload)
        return keep_alive

    def _answer(self, method: str, target: str, body: bytes, host: str
                ) -> tuple[int, bytes, float]:
        path, _, query = target.partition("?")
        stats = self.fhir.stats
        if path.startswith("/__stats"):
            if method == "POST" and path == "/__stats/reset":
                self.fhir.stats = Stats()
                return 200, b'{"reset":true}', 0.0
            return 200, _dumps(stats.snapshot()), 0.0
        link_base = f"http://{host}{self.base_path}"
        if path != self.base_path and not path.startswith(self.base_path + "/"):
            stats.kinds["http other"] += 1
            return 404, outcome(f"not under {self.base_path}", "not-found"), self.latency
        relative = path[len(self.base_path):].strip("/")
        try:
            if method == "GET" and relative:
                stats.kinds[f"http GET {relative.split('/', 1)[0]}"] += 1
                return 200, self.fhir.get(relative, query, link_base), self.latency
            if method == "POST" and not relative:
                kind = _bundle_type(body)
                stats.kinds[f"http POST {kind}"] += 1
                return 200, self.fhir.post(body, link_base), self.latency
            stats.kinds["http other"] += 1
            raise FhirError(405, f"{method} {relative or '[base]'} is not supported here",
                            "not-supported")
        except FhirError as exc:
            stats.kinds[f"error {exc.status}"] += 1
            return exc.status, outcome(str(exc), exc.code), self.latency
        except Exception as exc:  # a server bug must answer, not hang the client
            stats.kinds["error 500"] += 1
            return 500, outcome(f"{type(exc).__name__}: {exc}", "exception"), self.latency


def _bundle_type(body: bytes) -> str:
    """'batch' or 'transaction' from the first bytes (for counting before parsing)."""
    head = body[:400]
    for kind in (b"transaction", b"batch"):
        if b'"type":"' + kind + b'"' in head or b'"type": "' + kind + b'"' in head:
            return kind.decode()
    try:
        return str(orjson.loads(body).get("type"))
    except (orjson.JSONDecodeError, AttributeError):
        return "unreadable"


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    parts: list[bytes] = []
    while True:
        size = int((await reader.readline()).split(b";")[0].strip() or b"0", 16)
        if size == 0:
            await reader.readline()
            return b"".join(parts)
        parts.append(await reader.readexactly(size))
        await reader.readline()


def loopback(host: str) -> str:
    """Only loopback addresses: benchmark traffic never leaves this machine."""
    address = ipaddress.ip_address(socket.gethostbyname(host) if host == "localhost" else host)
    if not address.is_loopback:
        raise SystemExit(f"{host}: the benchmark server listens on loopback addresses only")
    return str(address)


async def serve(args: argparse.Namespace) -> None:
    host = loopback(args.host)
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, args.port))
    port = sock.getsockname()[1]
    base_path = "/" + args.base_path.strip("/")
    base_url = f"http://{host}:{port}{base_path}"
    started = time.perf_counter()
    templates = load_templates(args.synthea)
    spec = DaySpec(patients=args.patients,
                   appointments=args.patients if args.appointments is None
                   else args.appointments, day=args.date, timezone=args.timezone)
    fhir = BenchFhir(spec, templates, base_url)
    front = HttpFront(fhir, base_path, args.latency_ms / 1000)
    server = await asyncio.start_server(front.connection, sock=sock, backlog=1024)
    fhir.stats = Stats()
    print(f"listening on {base_url} ({spec.patients} patients from {len(templates)} "
          f"templates, {spec.appointments} appointments on {spec.day}, "
          f"{args.latency_ms} ms latency; ready in {time.perf_counter() - started:.1f} s)",
          flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    async with server:
        await stop.wait()


# --- measuring the server itself ---------------------------------------------------------


def start_server_process(*, patients: int, appointments: int | None = None,
                         latency_ms: float = 50, synthea: Path | None = None,
                         day: date = DEFAULT_DAY, timezone: str = DEFAULT_TZ,
                         timeout: float = 120) -> tuple[subprocess.Popen[str], str]:
    """Start this server as a child process; returns it and its base URL once it listens."""
    command = [sys.executable, str(Path(__file__).resolve()), "--patients", str(patients),
               "--latency-ms", str(latency_ms), "--port", "0", "--date", day.isoformat(),
               "--timezone", timezone]
    if appointments is not None:
        command += ["--appointments", str(appointments)]
    if synthea is not None:
        command += ["--synthea", str(synthea)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True,
                               start_new_session=True)
    assert process.stdout is not None
    deadline = time.monotonic() + timeout
    line = process.stdout.readline()
    if not line.startswith("listening on ") or time.monotonic() > deadline:
        process.kill()
        raise RuntimeError(f"the benchmark server did not start: {line.strip()!r}")
    return process, line.split()[2]


def stop_server_process(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def _drive(base_url: str, patient_ids: Sequence[str], clients: int) -> tuple[int, float]:
    """The request mix of a previsit run, as fast as the client can send it.

    Per patient: the batch read previsit sends, the second Observation page, and one
    transaction of three conditional creates. Responses are read, not parsed: the client
    here is only the load.
    """
    import httpx

    root = base_url
    queue: asyncio.Queue[str] = asyncio.Queue()
    for pid in patient_ids:
        queue.put_nowait(pid)
    sent = 0
    headers = {"Content-Type": "application/fhir+json", "Accept": "application/fhir+json"}

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal sent
        while not queue.empty():
            pid = queue.get_nowait()
            entries = [{"request": {"method": "GET", "url": f"Patient/{pid}"}}]
            for rtype in RECORD_TYPES:
                include = "&_include=MedicationRequest:medication" \
                    if rtype == "MedicationRequest" else ""
                entries.append({"request": {"method": "GET", "url":
                                            f"{rtype}?patient={pid}{include}&_count=100"}})
            batch = orjson.dumps({"resourceType": "Bundle", "type": "batch", "entry": entries})
            page = f"{root}/Observation?patient={pid}&_count=100&_offset=100"
            tx = orjson.dumps({"resourceType": "Bundle", "type": "transaction", "entry": [
                {"fullUrl": f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, pid + str(k))}",
                 "resource": {"resourceType": "ServiceRequest", "status": "draft",
                              "intent": "proposal", "subject": {"reference": f"Patient/{pid}"},
                              "identifier": [{"system": "urn:previsit:proposal",
                                              "value": f"pv-{pid}-{k}"}],
                              "code": {"coding": [{"system": "http://loinc.org",
                                                   "code": "4548-4"}]}},
                 "request": {"method": "POST", "url": "ServiceRequest",
                             "ifNoneExist": f"identifier=urn:previsit:proposal|pv-{pid}-{k}"}}
                for k in range(3)]})
            for method, url, body in (("POST", root, batch), ("GET", page, None),
                                      ("POST", root, tx)):
                response = await client.request(method, url, content=body, headers=headers)
                if response.status_code != 200:
                    raise RuntimeError(f"{method} {url}: HTTP {response.status_code}")
                sent += 1

    started = time.perf_counter()
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(
            max_connections=clients)) as client:
        await asyncio.gather(*(worker(client) for _ in range(clients)))
    return sent, time.perf_counter() - started


def measure(args: argparse.Namespace) -> int:
    """Start the server (no latency), send it a run's request mix, report its CPU cost."""
    import httpx
    from synthea_day import patient_id

    templates = load_templates(args.synthea)
    process, base_url = start_server_process(patients=args.patients, latency_ms=0,
                                             synthea=args.synthea)
    try:
        stats_url = base_url.rsplit("/", 1)[0] + "/__stats"
        httpx.post(stats_url + "/reset")
        ids = [patient_id(templates, n) for n in range(args.patients)]
        sent, seconds = asyncio.run(_drive(base_url, ids, args.clients))
        stats = httpx.get(stats_url).json()
    finally:
        stop_server_process(process)
    cpu = float(stats["cpu_seconds"])
    per_request = cpu / max(sent, 1)
    print(f"benchmark server self-measure: {args.patients} patients, {sent} requests "
          f"(per patient: 1 batch read of 7, 1 page, 1 transaction of 3 creates) from "
          f"{args.clients} concurrent clients, no added latency")
    print(f"  wall {seconds:.1f} s ({sent / seconds:.0f} requests/s, bounded by the client), "
          f"server CPU {cpu:.2f} s = {per_request * 1e6:.0f} µs per request, "
          f"{stats['bytes_out'] / 1e6:.0f} MB sent, server peak RSS {stats['peak_rss_mb']} MB")
    print(f"  capacity: {1 / per_request:.0f} requests/s on one core; a 10,000-appointment "
          f"run (~25,000 requests) costs the server ~{25000 * per_request:.0f} s of CPU")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--patients", type=int, default=1000)
    parser.add_argument("--appointments", type=int, default=None,
                        help="appointments on the day (default: one per patient)")
    parser.add_argument("--date", type=date.fromisoformat, default=DEFAULT_DAY)
    parser.add_argument("--timezone", default=DEFAULT_TZ)
    parser.add_argument("--latency-ms", type=float, default=50.0)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0: any free port")
    parser.add_argument("--base-path", default="/fhir")
    parser.add_argument("--synthea", type=Path, default=find_synthea())
    parser.add_argument("--measure", action="store_true",
                        help="measure the server's own CPU cost per request and exit")
    parser.add_argument("--clients", type=int, default=16, help="with --measure")
    args = parser.parse_args(argv)
    if args.synthea is None or not args.synthea.is_dir():
        parser.error("no Synthea folder: pass --synthea")
    if args.measure:
        return measure(args)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
