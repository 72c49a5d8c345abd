"""HttpSource against a real FHIR server: the window, filters, records by batch and by
individual searches, write-back, and a server that requires a token.

The data is one clinic day far in the future (a random day, so the suite can also run
against a shared external server without meeting its own earlier runs), loaded with one
transaction; the server's ids are read from the transaction-response.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import Coroutine
from dataclasses import dataclass
from datetime import date, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

import httpx
import pytest

from previsit.auth import BearerToken
from previsit.capability import check_server
from previsit.codes import LOINC, RXNORM, SNOMED
from previsit.errors import SourceError
from previsit.record import RECORD_SEARCHES
from previsit.sources import VisitWindow
from previsit.sources.http import HttpSource, RetryPolicy

if TYPE_CHECKING:  # the fixture's type; conftest modules are not imported by name
    from conftest import FhirTarget

pytestmark = pytest.mark.integration

TZ = "America/Chicago"
CHECKUP = "185349003"  # SNOMED: encounter for check up
FOLLOW_UP = "390906007"  # SNOMED: follow-up encounter
T = TypeVar("T")


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coroutine)


@dataclass(frozen=True)
class Clinic:
    """What was loaded: server ids by our local names, and the clinic day."""

    day: date
    ids: dict[str, str]  # "p1" -> "Patient/…" id, "a1" -> Appointment id, ...
    tag: str  # unique per session: the identifier value of our write-back test

    def window(self, **filters: Any) -> VisitWindow:
        return VisitWindow(self.day, self.day + timedelta(days=1), timezone=TZ, **filters)


def _ref(name: str) -> dict[str, str]:
    return {"reference": f"urn:uuid:{_uuid(name)}"}


_SESSION = uuid.uuid4()


def _uuid(name: str) -> uuid.UUID:
    return uuid.uuid5(_SESSION, name)


def _code(system: str, code: str, display: str) -> dict[str, Any]:
    return {"coding": [{"system": system, "code": code, "display": display}]}


def _clinic_bundle(day: date) -> tuple[dict[str, Any], list[str]]:
    """A transaction loading the clinic day; also the local names in entry order."""
    local = lambda d, hm: f"{d.isoformat()}T{hm}:00-06:00"  # noqa: E731  (December: CST)
    nxt, prev = day + timedelta(days=1), day - timedelta(days=1)
    resources: list[tuple[str, dict[str, Any]]] = [
        ("drA", {"resourceType": "Practitioner", "name": [{"family": "Alpha"}]}),
        ("drB", {"resourceType": "Practitioner", "name": [{"family": "Beta"}]}),
        ("L1", {"resourceType": "Location", "name": "Clinic room 1"}),
        ("L2", {"resourceType": "Location", "name": "Clinic room 2"}),
        ("p1", {"resourceType": "Patient", "gender": "female", "birthDate": "1970-03-04"}),
        ("p2", {"resourceType": "Patient", "gender": "male", "birthDate": "1958-07-01"}),
        ("p3", {"resourceType": "Patient", "gender": "female", "birthDate": "1990-01-15"}),
        ("metformin", {"resourceType": "Medication",
                       "code": _code(RXNORM, "860975", "metformin 500 MG ER")}),
        ("rx1", {"resourceType": "MedicationRequest", "status": "active", "intent": "order",
                 "subject": _ref("p1"), "medicationReference": _ref("metformin"),
                 "authoredOn": "2026-01-10"}),
        ("dm", {"resourceType": "Condition", "subject": _ref("p1"),
                "code": _code(SNOMED, "44054006", "Diabetes mellitus type 2"),
                "clinicalStatus": _code("http://terminology.hl7.org/CodeSystem/"
                                        "condition-clinical", "active", "Active")}),
        ("colo", {"resourceType": "Procedure", "status": "completed", "subject": _ref("p1"),
                  "code": _code(SNOMED, "73761001", "Colonoscopy"),
                  "performedDateTime": "2020-05-05"}),
        ("flu", {"resourceType": "Immunization", "status": "completed", "patient": _ref("p1"),
                 "vaccineCode": _code("http://hl7.org/fhir/sid/cvx", "197", "Influenza"),
                 "occurrenceDateTime": "2025-10-01"}),
        ("sr", {"resourceType": "ServiceRequest", "status": "active", "intent": "order",
                "subject": _ref("p1"), "code": _code(LOINC, "2093-3", "Cholesterol")}),
        *((f"a1c{i}", {"resourceType": "Observation", "status": "final",
                       "subject": _ref("p1"), "code": _code(LOINC, "4548-4", "HbA1c"),
                       "effectiveDateTime": f"202{i}-02-01",
                       "valueQuantity": {"value": 7.0 + i / 10, "unit": "%"}})
          for i in range(5)),
        ("p2obs", {"resourceType": "Observation", "status": "final", "subject": _ref("p2"),
                   "code": _code(LOINC, "2093-3", "Cholesterol"),
                   "effectiveDateTime": "2025-02-01"}),
    ]

    def appointment(patient: str, start: str, *, status: str = "booked", dr: str = "drA",
                    loc: str = "L1", service: str = CHECKUP) -> dict[str, Any]:
        end = start[:11] + "23:59:00" + start[19:]
        return {"resourceType": "Appointment", "status": status, "start": start, "end": end,
                "serviceType": [_code(SNOMED, service, "visit")],
                "participant": [{"actor": _ref(p), "status": "accepted"}
                                for p in (patient, dr, loc)]}

    resources += [
        ("a1", appointment("p1", local(day, "09:00"))),
        ("a2", appointment("p1", local(day, "14:00"))),
        ("a3", appointment("p2", local(day, "00:00"), dr="drB", loc="L2", service=FOLLOW_UP)),
        ("a4", appointment("p3", local(prev, "23:30"))),  # the evening before
        ("a5", appointment("p3", local(nxt, "00:00"))),  # the next day
        ("a6", appointment("p3", local(day, "10:00"), status="cancelled")),
        ("a7", appointment("p3", local(day, "11:00"), status="pending", dr="drB")),
    ]
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": f"urn:uuid:{_uuid(name)}", "resource": resource,
         "request": {"method": "POST", "url": resource["resourceType"]}}
        for name, resource in resources]}
    return bundle, [name for name, _ in resources]


@pytest.fixture(scope="module")
def clinic(fhir_server: FhirTarget) -> Clinic:
    day = date(2031, 1, 1) + timedelta(days=random.randrange(2000))
    if day.month in (3, 4, 5, 6, 7, 8, 9, 10, 11):  # keep to CST (-06:00) months
        day = day.replace(month=12, day=min(day.day, 28))
    bundle, names = _clinic_bundle(day)

    async def load() -> dict[str, Any]:
        async with fhir_server.client() as client:
            response = await client.post(fhir_server.base_url, json=bundle, headers={
                "Content-Type": "application/fhir+json", "Accept": "application/fhir+json"})
            assert response.status_code == 200, response.text[:2000]
            result: dict[str, Any] = response.json()
            return result

    answer = run(load())
    ids = {}
    for name, entry in zip(names, answer["entry"], strict=True):
        location = entry["response"]["location"]
        ids[name] = location.split("/_history")[0].rstrip("/").split("/")[-1]
    return Clinic(day, ids, tag=uuid.uuid4().hex)


def source(target: FhirTarget, client: httpx.AsyncClient, **options: Any) -> HttpSource:
    return HttpSource(client, target.base_url, retry=RetryPolicy(max_attempts=2), **options)


def test_the_window_has_booked_like_appointments_of_the_local_day(
        fhir_server: FhirTarget, clinic: Clinic) -> None:
    async def go() -> list[str]:
        async with fhir_server.client() as client:
            visits = await source(fhir_server, client, page_size=2).appointments(
                clinic.window())
            return [v.appointment_id for v in visits]

    found = run(go())
    ours = [i for i in found if i in clinic.ids.values()]
    assert ours == [clinic.ids[n] for n in ("a3", "a1", "a7", "a2")]  # in start order
    if not fhir_server.external:
        assert found == ours


@pytest.mark.parametrize(("filters", "expected"), [
    ({"practitioners": ("drA",)}, ["a1", "a2"]),
    ({"practitioners": ("drB",)}, ["a3", "a7"]),
    ({"locations": ("L2",)}, ["a3"]),
    ({"service_types": (FOLLOW_UP,)}, ["a3"]),
    ({"service_types": (f"{SNOMED}|{CHECKUP}",), "locations": ("L1",)}, ["a1", "a7", "a2"]),
])
def test_the_window_filters_by_practitioner_location_and_service_type(
        fhir_server: FhirTarget, clinic: Clinic, filters: dict[str, tuple[str, ...]],
        expected: list[str]) -> None:
    resolved = {key: tuple(clinic.ids.get(v, v) for v in values)
                for key, values in filters.items()}

    async def go() -> list[str]:
        async with fhir_server.client() as client:
            visits = await source(fhir_server, client).appointments(clinic.window(**resolved))
            return [v.appointment_id for v in visits]

    assert run(go()) == [clinic.ids[n] for n in expected]


def test_records_read_by_batch_and_by_individual_searches_are_identical(
        fhir_server: FhirTarget, clinic: Clinic) -> None:
    pid = clinic.ids["p1"]

    async def read(use_batch: bool) -> tuple[Any, int]:
        async with fhir_server.client() as client:
            src = source(fhir_server, client, page_size=2, use_batch=use_batch)
            record = await src.patient_record(pid)
            again = await src.patient_record(pid)  # a second visit: not read again
            assert again is record
            return record, src.request_count

    by_batch, batch_requests = run(read(True))
    one_by_one, single_requests = run(read(False))
    assert by_batch == one_by_one
    assert by_batch.patient.id == pid and by_batch.patient.sex == "female"
    assert len(by_batch.observations) == 5  # three pages of two
    assert [m.medication.codings[0].code for m in by_batch.medications] == ["860975"]
    assert len(by_batch.conditions) == len(by_batch.procedures) == 1
    assert len(by_batch.immunizations) == len(by_batch.requests) == 1
    if not fhir_server.external:
        assert batch_requests == 1 + 1 + 2  # metadata, the batch, Observation pages 2 and 3
        assert single_requests == 1 + len(RECORD_SEARCHES) + 2


def test_a_conditional_write_creates_once_and_then_finds_it(
        fhir_server: FhirTarget, clinic: Clinic) -> None:
    identifier = {"system": "urn:previsit:test", "value": f"{clinic.tag}-lipid"}
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [{
        "fullUrl": f"urn:uuid:{uuid.uuid4()}",
        "resource": {"resourceType": "ServiceRequest", "status": "draft", "intent": "proposal",
                     "identifier": [identifier],
                     "code": _code(LOINC, "57698-3", "Lipid panel"),
                     "subject": {"reference": f"Patient/{clinic.ids['p1']}"}},
        "request": {"method": "POST", "url": "ServiceRequest",
                    "ifNoneExist": f"identifier={identifier['system']}|{identifier['value']}"}}]}

    async def write_twice() -> tuple[Any, Any]:
        async with fhir_server.client() as client:
            src = source(fhir_server, client)
            return (await src.write_transaction(bundle, key="a1"),
                    await src.write_transaction(bundle, key="a1"))

    first, second = run(write_twice())
    assert len(first.created) == 1 and first.existing == ()
    assert second.created == () and second.existing == first.created
    assert first.created[0].startswith("ServiceRequest/")


def test_the_capability_check_finds_nothing_failing(fhir_server: FhirTarget) -> None:
    async def go() -> list[Any]:
        async with fhir_server.client() as client:
            return await check_server(client, fhir_server.base_url)

    lines = run(go())
    if fhir_server.external:
        assert lines[0].level == "ok"
    else:
        assert [str(x) for x in lines if x.level == "fail"] == []
        assert any(x.topic == "batch" and x.level == "ok" for x in lines)


def test_a_token_server_works_with_the_token_and_fails_cleanly_without(
        token_fhir_server: FhirTarget) -> None:
    window = VisitWindow(date(2031, 1, 1), date(2031, 1, 2), timezone=TZ)

    async def with_token() -> int:
        assert token_fhir_server.token is not None
        async with httpx.AsyncClient(auth=BearerToken(token_fhir_server.token)) as client:
            src = source(token_fhir_server, client)
            await src.appointments(window)
            return src.request_count

    async def without() -> None:
        async with token_fhir_server.client(with_token=False) as client:
            await source(token_fhir_server, client).appointments(window)

    assert run(with_token()) >= 1
    with pytest.raises(SourceError) as caught:
        run(without())
    assert "HTTP 401" in str(caught.value) and "\n" not in str(caught.value)


def test_an_unreachable_server_is_a_one_line_source_error() -> None:
    async def go() -> None:
        async with httpx.AsyncClient(timeout=2.0) as client:
            # Port 9 (discard) on loopback: nothing listens there on a test machine.
            src = HttpSource(client, "http://127.0.0.1:9/fhir", retry=RetryPolicy(
                max_attempts=2, initial_delay=0.01))
            await src.appointments(VisitWindow(date(2031, 1, 1), date(2031, 1, 2)))

    with pytest.raises(SourceError) as caught:
        run(go())
    assert "cannot connect to 127.0.0.1:9" in str(caught.value)
    assert "\n" not in str(caught.value)


def test_a_token_that_starts_with_a_dash_reaches_the_server() -> None:
    # secrets.token_urlsafe() starts with "-" now and then; the server must take it as the
    # token, not as an option (this once failed CI at random).
    from fhirserver import running_fhir_server

    with running_fhir_server(token="-starts-with-a-dash") as base_url:
        ok = httpx.get(f"{base_url}/Patient", headers={
            "Authorization": "Bearer -starts-with-a-dash"}, timeout=10)
        refused = httpx.get(f"{base_url}/Patient", timeout=10)
    assert ok.status_code == 200
    assert refused.status_code == 401
