"""HttpSource against a mocked server (respx): searches, paging, batch, retries, failures.

Each fault the nightly job must survive is one test: 429 with Retry-After, 503 then
success, timeouts, a page that fails mid-way, malformed JSON, an OperationOutcome 400,
a refused batch, a non-conditional write. Sleeps are injected, so nothing really waits.
"""

from __future__ import annotations

import asyncio
import json
import logging
import pickle
import re
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx
from builders import capability_statement, json_response, medication, observation, patient
from http_harness import BASE, NOW, Harness, outcome, run, searchset

from previsit.capability import RECORD_TYPES
from previsit.errors import PatientReadError, SourceError, WriteError
from previsit.record import PatientRecord, ResourcesRead
from previsit.sources import VisitWindow
from previsit.sources.http import (
    HttpSource,
    is_conditional_transaction,
    retry_after_seconds,
)


def appointment(aid: str, start: str, *, pid: str = "p1", status: str = "booked",
                practitioner: str | None = "Practitioner/dr1") -> dict[str, Any]:
    participants = [{"actor": {"reference": f"Patient/{pid}"}, "status": "accepted"}]
    if practitioner:
        participants.append({"actor": {"reference": practitioner}, "status": "accepted"})
    return {"resourceType": "Appointment", "id": aid, "status": status, "start": start,
            "participant": participants}


def batch_response(*resources: dict[str, Any], statuses: list[str] | None = None
                   ) -> dict[str, Any]:
    statuses = statuses or ["200 OK"] * len(resources)
    return {"resourceType": "Bundle", "type": "batch-response",
            "entry": [{"response": {"status": s}, "resource": r}
                      for s, r in zip(statuses, resources, strict=True)]}


def record_batch(*clinical: dict[str, Any], pid: str = "p1") -> dict[str, Any]:
    """A batch-response for one record: Patient, then a searchset per record search, in
    order."""
    by_type: dict[str, list[dict[str, Any]]] = {}
    for resource in clinical:
        by_type.setdefault(resource["resourceType"], []).append(resource)
    return batch_response(patient(pid=pid), *(searchset(*by_type.get(t, []))
                                              for t in RECORD_TYPES))


WINDOW = VisitWindow(date(2026, 12, 1), date(2026, 12, 2), timezone="America/Chicago")


# --- appointments -----------------------------------------------------------------------


def test_appointments_query_uses_local_midnights_statuses_filters_and_page_size() -> None:
    h = Harness(page_size=50)
    route = h.router.get("/Appointment").mock(return_value=json_response(searchset()))
    window = VisitWindow(date(2026, 12, 1), date(2026, 12, 3), timezone="America/Chicago",
                         practitioners=("Practitioner/dr1", "dr2"), locations=("loc1",),
                         service_types=("http://snomed.info/sct|185349003",))
    run(h.source.appointments(window))
    params = route.calls.last.request.url.params
    assert params.get_list("date") == ["ge2026-12-01T00:00:00-06:00",
                                       "lt2026-12-03T00:00:00-06:00"]
    assert params["status"] == "booked,arrived,pending"
    assert params["practitioner"] == "Practitioner/dr1,dr2"
    assert params["location"] == "loc1"
    assert params["service-type"] == "http://snomed.info/sct|185349003"
    assert params["_count"] == "50"
    assert "actor" not in params


def test_practitioner_role_filters_search_by_actor() -> None:
    h = Harness()
    route = h.router.get("/Appointment").mock(return_value=json_response(searchset()))
    run(h.source.appointments(VisitWindow(date(2026, 12, 1), date(2026, 12, 2),
                                          practitioners=("PractitionerRole/r1", "dr2"))))
    params = route.calls.last.request.url.params
    assert params["actor"] == "PractitionerRole/r1,Practitioner/dr2"
    assert "practitioner" not in params


def test_appointments_follow_next_links_to_the_end_and_filter_locally() -> None:
    h = Harness()
    page2, page3 = f"{BASE}/Appointment?_page=2", f"{BASE}/Appointment?_page=3"
    h.router.get("/Appointment", params={"_page": "2"}).mock(return_value=json_response(
        searchset(appointment("a3", "2026-12-01T08:00:00-06:00", pid="p2"),
                  # 23:30 the evening before, local: a server comparing in UTC includes it
                  appointment("early", "2026-11-30T23:30:00-06:00"), next_url=page3)))
    h.router.get("/Appointment", params={"_page": "3"}).mock(return_value=json_response(
        searchset(appointment("cancelled", "2026-12-01T10:00:00-06:00", status="cancelled"),
                  appointment("a1", "2026-12-01T15:00:00Z"))))  # 09:00 in Chicago
    first = h.router.get("/Appointment", params={"status": "booked,arrived,pending"}).mock(
        return_value=json_response(searchset(
            appointment("a2", "2026-12-01T14:00:00-06:00"),
            {"resourceType": "OperationOutcome", "issue": []}, next_url=page2)))
    visits = run(h.source.appointments(WINDOW))
    assert [v.appointment_id for v in visits] == ["a3", "a1", "a2"]
    assert visits[1].start == datetime.fromisoformat("2026-12-01T09:00:00-06:00")
    assert first.call_count == 1
    assert h.source.request_count == 3


def test_unplannable_appointment_becomes_a_problem_not_a_failure() -> None:
    h = Harness()
    no_patient = {"resourceType": "Appointment", "id": "bad", "status": "booked",
                  "start": "2026-12-01T09:00:00-06:00", "participant": []}
    h.router.get("/Appointment").mock(return_value=json_response(searchset(
        no_patient, appointment("ok", "2026-12-01T10:00:00-06:00"))))
    visits = run(h.source.appointments(WINDOW))
    assert [v.appointment_id for v in visits] == ["ok"]
    assert [p.where for p in h.source.problems()] == ["Appointment/bad"]


# --- retries ----------------------------------------------------------------------------


def test_429_with_retry_after_seconds_waits_that_long() -> None:
    h = Harness()
    route = h.router.get("/Appointment").mock(side_effect=[
        json_response(outcome("slow down", "throttled"), 429, **{"Retry-After": "7"}),
        json_response(searchset(appointment("a1", "2026-12-01T09:00:00-06:00")))])
    visits = run(h.source.appointments(WINDOW))
    assert [v.appointment_id for v in visits] == ["a1"]
    assert h.sleeps == [7.0]
    assert route.call_count == 2
    assert h.source.request_count == 2


def test_429_with_retry_after_http_date_waits_until_then() -> None:
    h = Harness()
    h.router.get("/Appointment").mock(side_effect=[
        json_response({}, 429, **{"Retry-After": "Mon, 30 Nov 2026 12:00:42 GMT"}),
        json_response(searchset())])
    run(h.source.appointments(WINDOW))
    assert h.sleeps == [42.0]


def test_503_then_success_backs_off_with_jitter_within_bounds() -> None:
    h = Harness(retry={"initial_delay": 0.5, "max_delay": 30.0})
    route = h.router.get("/Appointment").mock(side_effect=[
        json_response(outcome("busy"), 503), json_response(outcome("busy"), 503),
        json_response(searchset())])
    run(h.source.appointments(WINDOW))
    assert route.call_count == 3
    assert len(h.sleeps) == 2
    assert 0.5 <= h.sleeps[0] <= 1.0  # initial delay plus up to one initial delay of jitter
    assert 1.0 <= h.sleeps[1] <= 1.5


@pytest.mark.parametrize("error", [httpx.ConnectTimeout, httpx.ReadTimeout])
def test_timeouts_are_retried(error: type[Exception]) -> None:
    h = Harness()
    route = h.router.get("/Appointment").mock(side_effect=[error, json_response(searchset())])
    run(h.source.appointments(WINDOW))
    assert route.call_count == 2 and len(h.sleeps) == 1


def test_a_server_that_never_answered_is_a_one_line_source_error_at_once() -> None:
    # A wrong URL or a server that is down: backing off would only delay the message.
    h = Harness(retry={"max_attempts": 3})
    route = h.router.get("/Appointment").mock(side_effect=httpx.ConnectError(
        "[Errno 111] Connection refused"))
    with pytest.raises(SourceError) as caught:
        run(h.source.appointments(WINDOW))
    message = str(caught.value)
    assert route.call_count == 1 and h.sleeps == []
    assert "\n" not in message
    assert "cannot connect to ehr.example" in message and "is the server up" in message


def test_a_refused_connection_after_the_server_answered_is_retried_boundedly() -> None:
    h = Harness(retry={"max_attempts": 3})
    refused = httpx.ConnectError("[Errno 111] Connection refused")
    route = h.router.get("/Appointment").mock(
        side_effect=[json_response(searchset()), refused, refused, refused])
    run(h.source.appointments(WINDOW))  # the server answered once
    with pytest.raises(SourceError) as caught:
        run(h.source.appointments(WINDOW))
    assert route.call_count == 4 and len(h.sleeps) == 2
    assert "gave up after 3 attempts" in str(caught.value)


def test_once_the_server_stopped_answering_later_requests_try_once_until_it_answers() -> None:
    # A server that dies mid-run: the first request spends the retry budget, the next ones
    # fail at once (each visit would otherwise wait the whole budget); an answer resets it.
    h = Harness(retry={"max_attempts": 3})
    refused = httpx.ConnectError("[Errno 111] Connection refused")
    route = h.router.get("/Appointment").mock(side_effect=[
        json_response(searchset()), refused, refused, refused, refused, refused,
        json_response(searchset()), refused, refused, refused])
    run(h.source.appointments(WINDOW))  # the server answers
    for _ in range(3):  # dies: 3 attempts, then 1, then 1
        with pytest.raises(SourceError):
            run(h.source.appointments(WINDOW))
    assert route.call_count == 6 and len(h.sleeps) == 2
    run(h.source.appointments(WINDOW))  # back: it answers
    with pytest.raises(SourceError):  # and the full budget applies again
        run(h.source.appointments(WINDOW))
    assert route.call_count == 10 and len(h.sleeps) == 4


def test_retry_after_beyond_the_budget_gives_up_without_waiting() -> None:
    h = Harness(retry={"max_retry_seconds": 60})
    route = h.router.get("/Appointment").mock(return_value=json_response(
        outcome("maintenance"), 503, **{"Retry-After": "600"}))
    with pytest.raises(SourceError) as caught:
        run(h.source.appointments(WINDOW))
    assert route.call_count == 1 and h.sleeps == []
    assert "asked to wait 600 s" in str(caught.value)


def test_total_wait_stays_within_the_budget() -> None:
    h = Harness(retry={"max_attempts": 20, "max_retry_seconds": 10, "initial_delay": 1.0})
    h.router.get("/Appointment").mock(return_value=json_response({}, 502))
    with pytest.raises(SourceError):
        run(h.source.appointments(WINDOW))
    assert sum(h.sleeps) <= 10
    assert len(h.sleeps) < 19  # the budget, not the attempt count, stopped it


def test_operation_outcome_400_becomes_an_actionable_message_without_query_values() -> None:
    h = Harness()
    h.router.get("/Appointment").mock(return_value=json_response({
        "resourceType": "OperationOutcome", "issue": [{
            "severity": "error", "code": "invalid",
            "diagnostics": "Unknown search parameter 'service-type' for Appointment",
            "expression": ["Appointment.serviceType"]}]}, 400))
    window = VisitWindow(date(2026, 12, 1), date(2026, 12, 2),
                         service_types=("secret-code-123",))
    with pytest.raises(SourceError) as caught:
        run(h.source.appointments(window))
    message = str(caught.value)
    assert "HTTP 400 Bad Request on GET Appointment?" in message
    assert "Unknown search parameter 'service-type' for Appointment" in message
    assert "error (invalid)" in message and "[at Appointment.serviceType]" in message
    assert "service-type=…" in message and "secret-code-123" not in message


def test_401_on_appointments_is_a_source_error() -> None:
    h = Harness()
    h.router.get("/Appointment").mock(return_value=json_response(outcome("expired", "login"),
                                                                 401))
    with pytest.raises(SourceError, match="refused our credentials"):
        run(h.source.appointments(WINDOW))


# --- patient records --------------------------------------------------------------------


def test_record_is_read_with_one_batch_and_each_search_paged_to_the_end() -> None:
    h = Harness(page_size=2)
    h.capability(batch=True)
    obs = [observation("4548-4", days_ago=d, value=7.0, unit="%") for d in (10, 100, 200)]
    response = record_batch(obs[0], obs[1], medication("860975", "metformin"))
    response["entry"][3]["resource"]["link"] = [
        {"relation": "next", "url": f"{BASE}/Observation?patient=p1&_count=2&_offset=2"}]
    batch = h.router.post(BASE).mock(return_value=json_response(response))
    page2 = h.router.get("/Observation", params={"_offset": "2"}).mock(
        return_value=json_response(searchset(obs[2])))
    record = run(h.source.patient_record("p1"))
    assert record.patient.id == "p1"
    assert sorted(o.ref for o in record.observations) == sorted(
        f"Observation/{o['id']}" for o in obs)
    assert len(record.medications) == 1
    sent = json.loads(batch.calls.last.request.content)
    assert sent["type"] == "batch"
    assert [e["request"]["url"] for e in sent["entry"]] == [
        "Patient/p1", "Condition?patient=p1&_count=2",
        "MedicationRequest?patient=p1&_include=MedicationRequest%3Amedication&_count=2",
        "Observation?patient=p1&_count=2", "Procedure?patient=p1&_count=2",
        "Immunization?patient=p1&_count=2", "ServiceRequest?patient=p1&_count=2",
        "Encounter?patient=p1&_count=2", "MedicationDispense?patient=p1&_count=2",
        "MedicationStatement?patient=p1&_count=2"]
    assert {e["request"]["method"] for e in sent["entry"]} == {"GET"}
    assert page2.call_count == 1
    assert h.source.request_count == 3  # metadata, batch, page 2


def test_a_malformed_capability_statement_is_read_as_none_and_batch_tried() -> None:
    h = Harness()
    h.router.get("/metadata").mock(return_value=json_response(
        {"resourceType": "CapabilityStatement", "rest": 5}))
    batch = h.router.post(BASE).mock(return_value=json_response(record_batch()))
    assert run(h.source.patient_record("p1")).patient.id == "p1"
    assert batch.call_count == 1


def test_a_patient_with_several_visits_is_read_once() -> None:
    h = Harness()
    h.capability()
    batch = h.router.post(BASE).mock(return_value=json_response(record_batch()))

    async def twice() -> None:
        first, second = await asyncio.gather(h.source.patient_record("p1"),
                                             h.source.patient_record("p1"))
        assert first is second
        await h.source.patient_record("p1")

    run(twice())
    assert batch.call_count == 1


def test_without_batch_in_the_capability_statement_records_are_read_search_by_search() -> None:
    h = Harness()
    h.capability(batch=False)
    batch = h.router.post(BASE).mock(return_value=json_response({}, 500))
    h.router.get("/Patient/p1").mock(return_value=json_response(patient(pid="p1")))
    searches = h.router.get(path__regex=r"/[A-Za-z]+$").mock(
        return_value=json_response(searchset()))
    record = run(h.source.patient_record("p1"))
    assert record.patient.id == "p1"
    assert batch.call_count == 0
    assert sorted(c.request.url.path.rsplit("/", 1)[-1] for c in searches.calls) == [
        "Condition", "Encounter", "Immunization", "MedicationDispense", "MedicationRequest",
        "MedicationStatement", "Observation", "Procedure", "ServiceRequest"]
    assert all(c.request.url.params["patient"] == "p1" for c in searches.calls)


@pytest.mark.parametrize("status", [400, 404, 405, 501])
def test_a_refused_batch_falls_back_to_individual_searches_for_the_rest_of_the_run(
        status: int) -> None:
    h = Harness()
    h.router.get("/metadata").mock(return_value=json_response({}, 404))
    batch = h.router.post(BASE).mock(return_value=json_response(outcome("no batch"), status))
    h.router.get(path__regex=r"/Patient/(?P<pid>p\d)$").mock(
        side_effect=lambda request, pid: json_response(patient(pid=pid)))
    h.router.get(path__regex=r"/[A-Za-z]+$").mock(return_value=json_response(
        searchset()))

    async def two() -> None:
        assert (await h.source.patient_record("p1")).patient.id == "p1"
        assert (await h.source.patient_record("p2")).patient.id == "p2"

    run(two())
    assert batch.call_count == 1


def test_batch_and_individual_reads_build_the_same_record() -> None:
    obs = observation("4548-4", days_ago=30, value=6.5, unit="%")
    med = medication("860975", "metformin")
    records = []
    for use_batch in (True, False):
        h = Harness(use_batch=use_batch)
        h.capability()
        h.router.post(BASE).mock(return_value=json_response(record_batch(obs, med)))
        h.router.get("/Patient/p1").mock(return_value=json_response(patient(pid="p1")))
        h.router.get("/Observation").mock(return_value=json_response(searchset(obs)))
        h.router.get("/MedicationRequest").mock(return_value=json_response(searchset(med)))
        h.router.get(path__regex=r"/[A-Za-z]+$").mock(
            return_value=json_response(searchset()))
        records.append(run(h.source.patient_record("p1")))
    assert records[0] == records[1]
    assert len(records[0].observations) == 1 and len(records[0].medications) == 1


def test_a_page_failing_mid_way_names_the_patient_and_the_step() -> None:
    h = Harness(retry={"max_attempts": 3})
    h.capability()
    response = record_batch(observation("4548-4", days_ago=10))
    response["entry"][3]["resource"]["link"] = [
        {"relation": "next", "url": f"{BASE}/Observation?patient=p1&_offset=100"}]
    h.router.post(BASE).mock(return_value=json_response(response))
    page = h.router.get("/Observation").mock(return_value=json_response(
        outcome("database gone away", "exception"), 503))
    with pytest.raises(PatientReadError) as caught:
        run(h.source.patient_record("p1"))
    error = caught.value
    assert error.patient_id == "p1"
    assert str(error).startswith("Patient/p1: reading Observation, page 2: HTTP 503")
    assert "database gone away" in str(error) and "gave up after 3 attempts" in str(error)
    assert page.call_count == 3


def test_a_500_is_not_retried() -> None:
    h = Harness()
    h.capability()
    response = record_batch()
    response["entry"][1]["resource"]["link"] = [
        {"relation": "next", "url": f"{BASE}/Condition?patient=p1&_offset=100"}]
    h.router.post(BASE).mock(return_value=json_response(response))
    page = h.router.get("/Condition").mock(return_value=json_response(outcome("bug"), 500))
    with pytest.raises(PatientReadError, match="reading Condition, page 2: HTTP 500"):
        run(h.source.patient_record("p1"))
    assert page.call_count == 1 and h.sleeps == []


def test_malformed_json_is_a_patient_read_error() -> None:
    h = Harness()
    h.capability()
    h.router.post(BASE).mock(return_value=httpx.Response(
        200, content=b'{"resourceType": "Bundle", "entry": [', headers={
            "Content-Type": "application/fhir+json"}))
    with pytest.raises(PatientReadError, match="not a JSON object"):
        run(h.source.patient_record("p1"))


def test_an_operation_outcome_on_a_search_says_what_the_server_said() -> None:
    h = Harness(use_batch=False)
    h.router.get("/Patient/p1").mock(return_value=json_response(patient(pid="p1")))
    h.router.get("/Observation").mock(return_value=json_response(
        outcome("Search parameter 'patient' requires a Patient reference"), 400))
    h.router.get(path__regex=r"/[A-Za-z]+$").mock(return_value=json_response(
        searchset()))
    with pytest.raises(PatientReadError) as caught:
        run(h.source.patient_record("p1"))
    message = str(caught.value)
    assert "reading Observation: HTTP 400 Bad Request on GET Observation?patient=…" in message
    assert "requires a Patient reference" in message
    assert "patient=p1" not in message


def test_a_failed_entry_in_the_batch_fails_the_record_with_the_servers_words() -> None:
    h = Harness()
    h.capability()
    response = record_batch()
    response["entry"][0] = {"response": {"status": "404 Not Found", "outcome": outcome(
        "Patient/p1 is not known", "not-found")}}
    h.router.post(BASE).mock(return_value=json_response(response))
    with pytest.raises(PatientReadError, match="reading Patient: GET Patient/… in the batch "
                       "answered 404: error \\(not-found\\): Patient/p1 is not known"):
        run(h.source.patient_record("p1"))


def test_a_throttled_entry_in_the_batch_is_fetched_again_on_its_own() -> None:
    h = Harness()
    h.capability()
    obs = observation("4548-4", days_ago=10)
    response = record_batch()
    response["entry"][3] = {"response": {"status": "429 Too Many Requests"}}
    h.router.post(BASE).mock(return_value=json_response(response))
    again = h.router.get("/Observation").mock(return_value=json_response(searchset(obs)))
    record = run(h.source.patient_record("p1"))
    assert again.call_count == 1 and len(record.observations) == 1


def test_next_link_to_another_host_is_not_followed() -> None:
    h = Harness(use_batch=False)
    h.router.get("/Patient/p1").mock(return_value=json_response(patient(pid="p1")))
    h.router.get("/Condition").mock(return_value=json_response(searchset(
        next_url="https://elsewhere.example/fhir/Condition?page=2")))
    h.router.get(path__regex=r"/[A-Za-z]+$").mock(return_value=json_response(
        searchset()))
    with pytest.raises(PatientReadError, match=r"points at https://elsewhere\.example"):
        run(h.source.patient_record("p1"))


def test_next_links_that_loop_are_an_error_not_a_hang() -> None:
    h = Harness()
    loop = f"{BASE}/Appointment?_page=2"
    h.router.get("/Appointment").mock(return_value=json_response(searchset(next_url=loop)))
    with pytest.raises(SourceError, match="next links do not end"):
        run(h.source.appointments(WINDOW))


def test_an_invalid_patient_id_is_never_put_in_a_url() -> None:
    h = Harness()
    with pytest.raises(PatientReadError, match="not a valid FHIR id"):
        run(h.source.patient_record("p1&_include=*"))
    assert h.source.request_count == 0


def test_concurrency_is_bounded() -> None:
    h = Harness(concurrency=2, use_batch=False)
    in_flight = 0
    peak = 0

    async def slow(request: httpx.Request) -> httpx.Response:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.01)
        in_flight -= 1
        if request.url.path.split("/")[-2] == "Patient":
            return json_response(patient(pid=request.url.path.split("/")[-1]))
        return json_response(searchset())

    h.router.route().mock(side_effect=slow)

    async def many() -> None:
        await asyncio.gather(*(h.source.patient_record(f"p{i}") for i in range(5)))

    run(many())
    assert peak == 2
    assert h.source.request_count == 5 * (1 + len(RECORD_TYPES))


# --- write-back -------------------------------------------------------------------------


def transaction(*, conditional: bool = True) -> dict[str, Any]:
    request: dict[str, Any] = {"method": "POST", "url": "ServiceRequest"}
    if conditional:
        request["ifNoneExist"] = "identifier=urn:previsit:proposal|a1-lipid"
    return {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": {"resourceType": "ServiceRequest"}, "request": request},
        {"resource": {"resourceType": "ServiceRequest"}, "request": dict(request)}]}


def transaction_response() -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "transaction-response", "entry": [
        {"response": {"status": "201 Created",
                      "location": f"{BASE}/ServiceRequest/sr1/_history/1"}},
        {"response": {"status": "200 OK", "location": "ServiceRequest/sr0"}}]}


def test_write_transaction_reports_created_and_existing() -> None:
    h = Harness()
    route = h.router.post(BASE).mock(return_value=json_response(transaction_response()))
    result = run(h.source.write_transaction(transaction(), key="a1"))
    assert result.created == ("ServiceRequest/sr1",)
    assert result.existing == ("ServiceRequest/sr0",)
    assert route.calls.last.request.headers["Content-Type"] == "application/fhir+json"


def test_a_conditional_transaction_is_retried() -> None:
    h = Harness()
    route = h.router.post(BASE).mock(side_effect=[
        httpx.ReadTimeout("slow"), json_response(transaction_response())])
    result = run(h.source.write_transaction(transaction(conditional=True), key="a1"))
    assert route.call_count == 2 and result.created == ("ServiceRequest/sr1",)


@pytest.mark.parametrize("failure", [json_response(outcome("busy"), 503),
                                     httpx.ReadTimeout("slow")])
def test_a_non_conditional_write_is_never_retried(failure: Any) -> None:
    h = Harness()
    route = h.router.post(BASE).mock(side_effect=[failure, json_response(
        transaction_response())])
    with pytest.raises(WriteError) as caught:
        run(h.source.write_transaction(transaction(conditional=False), key="a1"))
    assert route.call_count == 1 and h.sleeps == []
    assert caught.value.key == "a1"
    if isinstance(failure, Exception):
        assert "may or may not have been applied" in str(caught.value)


def test_a_refused_transaction_says_why() -> None:
    h = Harness()
    h.router.post(BASE).mock(return_value=json_response(
        outcome("ServiceRequest.subject: reference to a Patient required"), 422))
    with pytest.raises(WriteError, match=r"HTTP 422.*reference to a Patient required"):
        run(h.source.write_transaction(transaction(), key="a1"))


def test_conditional_transaction_detection() -> None:
    assert is_conditional_transaction(transaction(conditional=True))
    assert not is_conditional_transaction(transaction(conditional=False))
    put = {"entry": [{"request": {"method": "PUT", "url": "ServiceRequest/x"}}]}
    patch = {"entry": [{"request": {"method": "PATCH", "url": "ServiceRequest/x"}}]}
    assert is_conditional_transaction(put)
    assert not is_conditional_transaction(patch)


# --- small pieces -----------------------------------------------------------------------


@pytest.mark.parametrize(("value", "seconds"), [
    ("120", 120.0), (" 0 ", 0.0), ("Mon, 30 Nov 2026 12:01:00 GMT", 60.0),
    ("Mon, 30 Nov 2026 11:00:00 GMT", 0.0),  # already past: no wait
    ("soon", None), (None, None), ("", None)])
def test_retry_after_parsing(value: str | None, seconds: float | None) -> None:
    assert retry_after_seconds(value, NOW) == seconds


# --- built from configuration -------------------------------------------------------------


def test_from_config_works_across_event_loops_as_the_cli_uses_it() -> None:
    from previsit.config import AuthConfig, SourceConfig

    router = respx.MockRouter(base_url=BASE, assert_all_called=False)
    router.get("/metadata").mock(return_value=json_response(capability_statement()))
    router.get("/Appointment").mock(return_value=json_response(searchset(
        appointment("a1", "2026-12-01T09:00:00-06:00"))))

    async def slow_batch(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(0.005)  # let the reads queue on the concurrency gate
        pid = json.loads(request.content)["entry"][0]["request"]["url"].split("/")[1]
        return json_response(record_batch(pid=pid))

    router.post(BASE).mock(side_effect=slow_batch)
    source = HttpSource.from_config(
        SourceConfig(kind="fhir", base_url=BASE, concurrency=1),
        AuthConfig(method="bearer"), {"PREVISIT_TOKEN": "t0k"},
        transport=httpx.MockTransport(router.async_handler))

    async def day(pids: list[str]) -> list[str]:
        await source.appointments(WINDOW)
        records = await asyncio.gather(*(source.patient_record(p) for p in pids))
        return [r.patient.id for r in records]

    assert run(day(["p1", "p2", "p3"])) == ["p1", "p2", "p3"]
    assert run(day(["p1", "p4", "p5"])) == ["p1", "p4", "p5"]  # p1 from the first run
    run(source.aclose())
    assert all(c.request.headers["Authorization"] == "Bearer t0k" for c in router.calls)
    assert sum(1 for c in router.calls if c.request.method == "POST") == 5


def test_from_config_needs_a_base_url() -> None:
    from previsit.config import AuthConfig, SourceConfig

    with pytest.raises(SourceError, match=r"source\.base_url is not set"):
        HttpSource.from_config(SourceConfig(kind="fhir"), AuthConfig(), {})


# --- bounded reads: size, decompression, pages, time --------------------------------------


class Chunks(httpx.AsyncByteStream):
    """A body as a server streams it, piece by piece (respx's own responses arrive read)."""

    def __init__(self, *pieces: bytes) -> None:
        self.pieces = pieces
        self.sent = 0

    async def __aiter__(self) -> Any:
        for piece in self.pieces:
            self.sent += len(piece)
            yield piece


def streamed(body: bytes, *, gzip: bool = False, piece: int = 65536,
             length: bool = True) -> tuple[httpx.Response, Chunks]:
    import zlib

    data = body
    headers = {"Content-Type": "application/fhir+json"}
    if gzip:
        packer = zlib.compressobj(9, zlib.DEFLATED, 31)
        data = packer.compress(body) + packer.flush()
        headers["Content-Encoding"] = "gzip"
    if length:
        headers["Content-Length"] = str(len(data))
    stream = Chunks(*(data[i:i + piece] for i in range(0, len(data), piece)))
    return httpx.Response(200, headers=headers, stream=stream), stream


def padded_searchset(size: int) -> bytes:
    head = b'{"resourceType":"Bundle","type":"searchset","entry":[]'
    return head + b" " * (size - len(head) - 1) + b"}"


def test_a_body_within_the_cap_is_read_and_decompressed() -> None:
    h = Harness(max_response_bytes=10_000)
    response, _ = streamed(json.dumps(searchset(appointment(
        "a1", "2026-12-01T09:00:00-06:00"))).encode(), gzip=True, piece=7)
    h.router.get("/Appointment").mock(return_value=response)
    assert [v.appointment_id for v in run(h.source.appointments(WINDOW))] == ["a1"]
    assert h.router.calls.last.request.headers["Accept-Encoding"] == "gzip, deflate"


def test_a_declared_length_over_the_cap_is_refused_before_reading() -> None:
    h = Harness(max_response_bytes=10_000)
    response, stream = streamed(padded_searchset(1_000_000))
    route = h.router.get("/Appointment").mock(return_value=response)
    with pytest.raises(SourceError, match=r"^reading appointments: GET Appointment\?date=…&"
                       r"date=…&status=…&_count=…: the answer is larger than "
                       r"source.max_response_bytes \(10,000 bytes\); not read$"):
        run(h.source.appointments(WINDOW))
    assert stream.sent == 0 and route.call_count == 1  # not read, not retried


@pytest.mark.parametrize("gzip", [True, False], ids=["gzip bomb", "no length"])
def test_a_body_growing_past_the_cap_is_cut_there(gzip: bool) -> None:
    h = Harness(max_response_bytes=100_000)
    response, stream = streamed(padded_searchset(50_000_000), gzip=gzip, length=False)
    h.router.get("/Appointment").mock(return_value=response)
    with pytest.raises(SourceError, match=r"larger than source.max_response_bytes "
                       r"\(100,000 bytes\); not read$"):
        run(h.source.appointments(WINDOW))
    assert stream.sent < (1_000_000 if not gzip else 100_000)


@pytest.mark.parametrize(("encoding", "body", "words"), [
    ("br", b"...", "the answer is encoded as 'br'; previsit asks for gzip, deflate only"),
    ("gzip", b"not gzip at all", "the answer is not valid compressed data"),
])
def test_a_body_that_cannot_be_decoded_is_refused(encoding: str, body: bytes,
                                                  words: str) -> None:
    h = Harness()
    h.router.get("/Appointment").mock(return_value=httpx.Response(
        200, headers={"Content-Encoding": encoding}, stream=Chunks(body)))
    with pytest.raises(SourceError, match=re.escape(words)):
        run(h.source.appointments(WINDOW))


def test_a_search_over_its_byte_budget_stops_paging() -> None:
    h = Harness(max_search_bytes=3_000, use_batch=False)
    for n in range(1, 20):
        h.router.get("/Condition", params={"page": str(n)}).mock(return_value=json_response(
            searchset(next_url=f"{BASE}/Condition?patient=p1&page={n + 1}")
            | {"padding": "x" * 900}))
    h.router.get("/Patient/p1").mock(return_value=json_response(patient(pid="p1")))
    h.router.get("/Condition").mock(return_value=json_response(
        searchset(next_url=f"{BASE}/Condition?patient=p1&page=1")))
    for rtype in ("MedicationRequest", "Observation", "Procedure", "Immunization",
                  "ServiceRequest"):
        h.router.get(f"/{rtype}").mock(return_value=json_response(searchset()))
    with pytest.raises(PatientReadError, match=r"reading Condition: the search is larger than "
                       r"source.max_search_bytes \(3,000 bytes\) after 4 pages; not read "
                       r"further"):
        run(h.source.patient_record("p1"))


def test_a_request_with_no_complete_answer_by_its_deadline_is_retried_then_fails() -> None:
    h = Harness(request_deadline_seconds=0.05, retry={"max_attempts": 2})

    asked: list[str] = []

    async def slow(request: httpx.Request) -> httpx.Response:
        asked.append(request.url.path)
        await asyncio.sleep(5)
        return json_response(searchset())

    h.router.get("/Appointment").mock(side_effect=slow)
    with pytest.raises(SourceError, match=r"no complete answer within "
                       r"source.request_deadline_seconds \(0.05 s\) \(gave up after 2 attempts"):
        run(h.source.appointments(WINDOW))
    assert asked == ["/fhir/R4/Appointment"] * 2


# --- the answer checked against the question ------------------------------------------------


@pytest.mark.parametrize(("clinical", "words"), [
    ([patient(pid="p2")], "the server answered the read of this patient with another patient"),
    ([observation("4548-4", 10, 7.0, "%", pid="p2")],
     "the server returned a Observation whose subject is not the patient asked for"),
    ([{**observation("4548-4", 10, 7.0, "%"), "subject": {"reference": "Patient/p1/x"}}],
     "the server returned a Observation whose subject is not the patient asked for"),
    ([{**observation("4548-4", 10, 7.0, "%"), "subject": None}],
     "the server returned a Observation whose subject is not the patient asked for"),
    ([{"resourceType": "Immunization", "id": "i1", "status": "completed",
       "patient": {"reference": "https://other.example/fhir/Patient/p1"},
       "occurrenceDateTime": "2026-01-01"}],
     "the server returned a Immunization whose patient is not the patient asked for"),
])
def test_a_record_holding_another_patients_data_is_not_used(clinical: list[dict[str, Any]],
                                                            words: str) -> None:
    h = Harness()
    h.capability()
    answer = record_batch(*[r for r in clinical if r["resourceType"] != "Patient"])
    if clinical[0]["resourceType"] == "Patient":
        answer["entry"][0]["resource"] = clinical[0]
    h.router.post(BASE).mock(return_value=json_response(answer))
    with pytest.raises(PatientReadError, match=re.escape(
            f"Patient/p1: {words}; this record is not used (another patient's data must never "
            "be planned)")):
        run(h.source.patient_record("p1"))


def test_subjects_under_the_servers_own_base_and_included_medications_are_the_patients(
        ) -> None:
    h = Harness()
    h.capability()
    mine = {**observation("4548-4", 10, 7.0, "%"),
            "subject": {"reference": f"{BASE}/Patient/p1"}}
    versioned = {**observation("2823-3", 10, 4.0, "mmol/L"),
                 "subject": {"reference": "Patient/p1/_history/3"}}
    drug = {"resourceType": "Medication", "id": "m1", "code": {"text": "lisinopril"}}
    answer = record_batch(mine, versioned)
    answer["entry"][2]["resource"]["entry"].append({"resource": drug,
                                                    "search": {"mode": "include"}})
    h.router.post(BASE).mock(return_value=json_response(answer))
    assert len(run(h.source.patient_record("p1")).observations) == 2


def test_a_header_that_is_not_ascii_does_not_fail_the_read() -> None:
    h = Harness()
    body = json.dumps(searchset(appointment("a1", "2026-12-01T09:00:00-06:00"))).encode()
    h.router.get("/Appointment").mock(return_value=httpx.Response(
        200, headers=[(b"Content-Type", b"application/fhir+json"),
                      (b"X-Served-By", "Zürich \u202e".encode())], stream=Chunks(body)))
    assert [v.appointment_id for v in run(h.source.appointments(WINDOW))] == ["a1"]


# --- the record cache (source.cache_dir) ---------------------------------------------------


def test_a_server_that_ignores_summary_count_gets_full_reads_without_asking_again(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A server answering _summary=count with a plain searchset (no total) cannot have a
    kept record checked: that record is read in full, and no other is revalidated."""
    from previsit.sources.cache import RecordCache

    def source() -> Harness:
        h = Harness(cache=RecordCache(tmp_path, BASE, max_age=timedelta(days=7), now=lambda:
                                      NOW))
        h.capability()
        return h

    a1c = observation("4548-4", days_ago=30)
    first = source()
    first.router.post(BASE).mock(side_effect=[json_response(record_batch(a1c)),
                                              json_response(record_batch(pid="p2"))])
    for pid in ("p1", "p2"):
        run(first.source.patient_record(pid))
    assert len(list(tmp_path.rglob("*.json"))) == 2  # both kept
    # The next night: the first batch is a revalidation (19 entries) answered without totals.
    night = source()
    no_totals = batch_response(patient(), *[searchset() for _ in range(2 * len(RECORD_TYPES))])
    batches = night.router.post(BASE).mock(side_effect=[
        json_response(no_totals), json_response(record_batch(a1c)),
        json_response(record_batch(pid="p2"))])
    with caplog.at_level(logging.WARNING):
        record = run(night.source.patient_record("p1"))
        run(night.source.patient_record("p2"))
    assert len(record.observations) == 1
    sizes = [len(json.loads(c.request.content)["entry"]) for c in batches.calls]
    assert sizes == [1 + 2 * len(RECORD_TYPES), 1 + len(RECORD_TYPES), 1 + len(RECORD_TYPES)]
    assert "_summary=count without a total; records are read in full" in caplog.text


def test_a_kept_record_naming_another_patient_is_read_in_full_not_failed(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from previsit.sources.cache import RecordCache

    cache = RecordCache(tmp_path, BASE, max_age=timedelta(days=7), now=lambda: NOW)
    a1c = observation("4548-4", days_ago=30)
    first = Harness(cache=cache)
    first.capability()
    first.router.post(BASE).mock(return_value=json_response(record_batch(a1c)))
    run(first.source.patient_record("p1"))
    # The file is damaged: it now holds an Observation of p2 among p1's.
    kept = json.loads(cache.path("p1").read_bytes())
    kept["searches"]["Observation"]["matches"].append(
        observation("2160-0", days_ago=10, pid="p2"))
    cache.path("p1").write_text(json.dumps(kept))

    def count(total: int) -> dict[str, Any]:
        return {"resourceType": "Bundle", "type": "searchset", "total": total}

    # Nothing changed on the server, and its counts agree with the damaged file.
    totals = {"Observation": 2}
    revalidation = batch_response(patient(), *[part for rtype in RECORD_TYPES for part in (
        searchset(), count(totals.get(rtype, 0)))])
    night = Harness(cache=cache)
    night.capability()
    batches = night.router.post(BASE).mock(side_effect=[
        json_response(revalidation), json_response(record_batch(a1c))])
    with caplog.at_level(logging.WARNING):
        record = run(night.source.patient_record("p1"))
    assert [c.code for o in record.observations for c in o.code.codings] == ["4548-4"]
    assert batches.call_count == 2
    assert "holds another patient's data; reading the record in full" in caplog.text


def test_a_request_does_not_search_the_python_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """httpcore asks, on every request, which async library runs (`import sniffio`); were
    sniffio missing, each request would search every folder of sys.path for it (measured:
    6 % of a night through a server, in the run's busiest process)."""
    import importlib.machinery
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Ok(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args: Any) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.1", 0), Ok)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    searches: list[str] = []
    real = importlib.machinery.PathFinder.find_spec

    def counted(name: str, *args: Any, **kwargs: Any) -> Any:
        searches.append(name)
        return real(name, *args, **kwargs)

    async def requests() -> list[int]:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.server_port}") \
                as client:
            await client.get("/warm-up")  # what a first request imports, it imports once
            monkeypatch.setattr(importlib.machinery.PathFinder, "find_spec", counted)
            return [(await client.get(f"/Patient/{n}")).status_code for n in range(20)]

    try:
        assert asyncio.run(requests()) == [200] * 20
    finally:
        server.shutdown()
    assert searches == []


def test_a_record_fetched_for_a_worker_is_built_there_as_it_would_be_here() -> None:
    h = Harness()
    h.capability(batch=True)
    obs = observation("4548-4", days_ago=10, value=7.25, unit="%")
    obs["note"] = [{"text": "repris \u00e0 jeun \u2014 \U0001f489"}]
    h.router.post(BASE).mock(return_value=json_response(record_batch(obs)))
    fetched = run(h.source.fetch_record("p1"))
    assert isinstance(fetched, ResourcesRead)
    assert (fetched.patient_id, fetched.where) == ("p1", "Patient/p1")
    # what crosses to the worker is plain JSON; the record it builds is the one read here
    record = pickle.loads(pickle.dumps(fetched)).load()
    assert record == run(h.source.patient_record("p1"))
    assert [o.value_quantity.value for o in record.observations
            if o.value_quantity is not None] == [7.25]
    assert h.source.request_count == 3  # metadata, then one batch a read


def test_a_record_fetched_for_a_worker_fails_as_it_would_here() -> None:
    # another patient's data is refused here, before anything crosses to a worker
    h = Harness()
    h.capability(batch=True)
    response = record_batch()
    response["entry"][0]["resource"] = patient(pid="p2")
    h.router.post(BASE).mock(return_value=json_response(response))
    with pytest.raises(PatientReadError, match="answered the read of this patient with "
                                               "another patient") as err:
        run(h.source.fetch_record("p1"))
    assert err.value.patient_id == "p1"
    # a record that cannot be built fails in the worker with the reason it has here
    with pytest.raises(PatientReadError) as there:
        ResourcesRead("p1", "Patient/p1", b"[]").load()
    assert (there.value.patient_id, str(there.value)) == (
        "p1", "Patient/p1: no Patient resource among the resources")


def test_a_record_orjson_cannot_write_is_built_here() -> None:
    h = Harness()
    h.capability(batch=True)
    obs = observation("4548-4", days_ago=10, value=7.0, unit="%")
    obs["valueQuantity"]["value"] = 10**400  # beyond a double: the record sets it aside
    h.router.post(BASE).mock(return_value=json_response(record_batch(obs)))
    fetched = run(h.source.fetch_record("p1"))
    assert isinstance(fetched, PatientRecord)
    assert fetched == run(h.source.patient_record("p1"))
