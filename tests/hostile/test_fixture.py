"""The hostile server itself: each fault is what it claims to be, so the tests that use it mean
what they say. Small sizes here; the same code paths serve the gigabytes."""

from __future__ import annotations

import base64
import json
import time
import zlib
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from builders import observation, patient
from fhir_strategies import clinic_days
from hostile_server import (
    Chart,
    Fault,
    HostileFhirServer,
    Recorder,
    deep_json,
    gzip_bomb,
)
from hypothesis import given, settings


@pytest.fixture
def server() -> Iterator[HostileFhirServer]:
    with HostileFhirServer(Chart(patient(pid="p1"), patient(pid="p2"),
                                 observation("4548-4", 10, 7.0, pid="p1"),
                                 observation("4548-4", 20, 8.0, pid="p2"))) as running:
        yield running


def test_huge_body_is_exactly_its_size_and_valid_json(server: HostileFhirServer) -> None:
    server.fault(Fault.huge(3_000_123), path="Observation")
    body = httpx.get(f"{server.base_url}/Observation").content
    assert len(body) == 3_000_123
    assert json.loads(body)["type"] == "searchset"


def test_gzip_bomb_inflates_to_its_size_from_a_thousandth() -> None:
    bomb = gzip_bomb(100_000_000)
    assert len(bomb) < 200_000
    inflated = zlib.decompress(bomb, wbits=31)  # checks the CRC and length too
    assert len(inflated) == 100_000_000
    assert json.loads(inflated)["type"] == "searchset"


def test_endless_body_is_cut_at_the_connection_deadline(server: HostileFhirServer) -> None:
    server.connection_deadline = 0.5
    server.fault(Fault.endless(), path="Observation")
    started = time.monotonic()
    with pytest.raises(httpx.RemoteProtocolError), \
            httpx.stream("GET", f"{server.base_url}/Observation") as response:
        for _ in response.iter_raw():
            pass
    assert time.monotonic() - started < 3


def test_drip_sends_one_byte_per_interval(server: HostileFhirServer) -> None:
    server.fault(Fault.drip(0.05, b'{"a": 1}'), path="metadata")
    started = time.monotonic()
    assert httpx.get(f"{server.base_url}/metadata").json() == {"a": 1}
    assert time.monotonic() - started >= 8 * 0.05


def test_lying_length_and_raw_bytes(server: HostileFhirServer) -> None:
    server.fault(Fault.lying_length(1000), path="Observation", times=1)
    with pytest.raises(httpx.RemoteProtocolError):
        httpx.get(f"{server.base_url}/Observation")
    server.fault(Fault.raw(b"HTTP/1.1 200 OK\r\nX-Evil: \x1b[2J\r\nContent-Length: 2\r\n\r\n{}"),
                 path="metadata")
    response = httpx.get(f"{server.base_url}/metadata")
    assert response.headers["x-evil"] == "\x1b[2J"


def test_faults_match_by_patient_in_reads_searches_and_batches(server: HostileFhirServer
                                                              ) -> None:
    server.fault(Fault.outcome(500, "boom"), patient="p2")
    with httpx.Client(base_url=server.base_url) as client:
        assert client.get("/Patient/p1").status_code == 200
        assert client.get("/Patient/p2").status_code == 500
        assert client.get("/Observation", params={"patient": "p2"}).status_code == 500
        batch: dict[str, Any] = {"resourceType": "Bundle", "type": "batch", "entry": [
            {"request": {"method": "GET", "url": u}}
            for u in ("Patient/p1", "Observation?patient=p1")]}
        answer = client.post("", json=batch).json()
        assert [e["response"]["status"] for e in answer["entry"]] == ["200 OK", "200 OK"]
        assert answer["entry"][1]["resource"]["entry"][0]["resource"]["subject"] == {
            "reference": "Patient/p1"}
        batch["entry"][0]["request"]["url"] = "Patient/p2"
        assert client.post("", json=batch).status_code == 500
    assert len(server.asked_about("p2")) == 3


def test_lies_about_patients(server: HostileFhirServer) -> None:
    server.behaviours.swap_patient["p1"] = "p2"
    server.behaviours.leak_searches["p1"] = "p2"
    assert httpx.get(f"{server.base_url}/Patient/p1").json()["id"] == "p2"
    found = httpx.get(f"{server.base_url}/Observation?patient=p1").json()
    assert [e["resource"]["subject"]["reference"] for e in found["entry"]] == [
        "Patient/p1", "Patient/p2"]


def test_paging_and_foreign_next_links(server: HostileFhirServer) -> None:
    server.behaviours.max_count = 1
    page = httpx.get(f"{server.base_url}/Patient", params={"_count": "10"}).json()
    next_url = [link["url"] for link in page["link"] if link["relation"] == "next"]
    assert next_url == [f"{server.base_url}/Patient?_count=10&_offset=1"]
    server.behaviours.foreign_next = "http://other.example/fhir"
    page = httpx.get(f"{server.base_url}/Patient").json()
    assert page["link"][1]["url"].startswith("http://other.example/fhir/Patient?")


def test_transactions_are_recorded_and_conditional(server: HostileFhirServer) -> None:
    entry = {"resource": {"resourceType": "ServiceRequest", "subject": {
                 "reference": "Patient/p1"}, "identifier": [{"system": "urn:x", "value": "1"}]},
             "request": {"method": "POST", "url": "ServiceRequest",
                         "ifNoneExist": "identifier=urn:x|1"}}
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [entry]}
    first = httpx.post(server.base_url, json=bundle).json()
    second = httpx.post(server.base_url, json=bundle).json()
    assert first["entry"][0]["response"]["status"] == "201 Created"
    assert second["entry"][0]["response"]["status"] == "200 OK"
    assert len(server.transactions) == 2


def test_recorder_sees_secrets_in_basic_auth_and_as_a_proxy() -> None:
    with Recorder() as other:
        token = httpx.post(f"{other.url}/token", auth=("client", "s3cr:et/+")).json()
        assert token["access_token"] == "token-from-the-other-host"
        # RFC 6749 2.3.1 form-encodes both parts before Basic (as previsit does)
        encoded = base64.b64encode(b"client:s3cr%3Aet%2F%2B").decode()
        httpx.post(f"{other.url}/token", headers={"Authorization": f"Basic {encoded}"})
        with httpx.Client(proxy=other.url) as client:
            client.get("http://ehr.example/fhir/Patient", headers={
                "Authorization": "Bearer tok-123"})
    assert other.requests[0].carries("s3cr:et/+")
    assert not other.requests[0].carries("nothing-like-it")
    assert other.requests[1].carries("s3cr:et/+")
    assert other.requests[2].target == "http://ehr.example/fhir/Patient"
    assert other.requests[2].carries("tok-123")


def test_deep_json_is_valid_and_deep() -> None:
    text = deep_json(5, inner='"x"')
    assert text == '[[[[["x"]]]]]'
    assert json.loads(text) == [[[[["x"]]]]]


@settings(max_examples=15, deadline=None, derandomize=True, database=None)
@given(day=clinic_days())
def test_generated_days_are_consistent(day: object) -> None:
    """Every appointment in the truth exists in the files; every pristine one is in the truth."""
    from fhir_strategies import ClinicDay

    assert isinstance(day, ClinicDay)
    assert set(day.pristine) <= set(day.truth)
    written = b"".join(day.files.values())
    for aid in day.truth:
        assert json.dumps(aid)[1:-1].encode() in written
    assert "appointments.json" in day.files


def test_an_appointment_search_returns_what_it_cannot_compare(server: HostileFhirServer
                                                              ) -> None:
    """Lenient filters: a status or start of the wrong type is returned (previsit judges),
    never a 500 that would stop the whole run for a fixture's sake."""
    odd = {"resourceType": "Appointment", "id": "odd", "status": ["booked"],
           "start": {"start": "2026-12-01"}}
    server.chart.add(odd)
    found = httpx.get(f"{server.base_url}/Appointment", params={
        "status": "booked", "date": ["ge2026-12-01T00:00:00-06:00"]})
    assert found.status_code == 200
    assert [e["resource"]["id"] for e in found.json()["entry"]] == ["odd"]
