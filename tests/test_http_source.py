"""HttpSource against a mocked server (respx): searches, paging, batch, retries, failures.

Each fault the nightly job must survive is one test: 429 with Retry-After, 503 then
success, timeouts, a page that fails mid-way, malformed JSON, an OperationOutcome 400,
a refused batch, a non-conditional write. Sleeps are injected, so nothing really waits.
"""

from __future__ import annotations

import asyncio
import json
from datetime import date, datetime
from typing import Any

import httpx
import pytest
import respx
from builders import capability_statement, json_response, medication, observation, patient
from http_harness import BASE, NOW, Harness, outcome, run, searchset

from previsit.capability import RECORD_TYPES
from previsit.errors import PatientReadError, SourceError, WriteError
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


@pytest.mark.xfail(strict=True, reason="parse_capabilities raises TypeError on a statement "
                   "whose rest is not a list; _use_batch catches only SourceError and "
                   "ValueError, so the record read (and the run) fails")
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
