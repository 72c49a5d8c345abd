"""The test server's Bulk Data export (tests/fhir_server/bulk.mjs), asked directly: what
the kick-off accepts and refuses, what polling answers, what the manifest and files hold,
_type and _since, the token on files, DELETE — the behaviour the Bulk Data source relies on.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fhirserver import FhirTestServer, fhir_test_server

pytestmark = pytest.mark.integration

TOKEN = "bulk-test-token"
ASYNC = {"Prefer": "respond-async", "Accept": "application/fhir+json"}


@pytest.fixture(scope="module")
def server() -> Iterator[FhirTestServer]:
    with fhir_test_server(token=TOKEN, export_polls=2, export_retry_after_s=3,
                          export_file_lines=2) as running:
        with client(running, admin=True) as c:
            for pid in ("p1", "p2", "p3"):
                assert c.put(f"Patient/{pid}", json={"resourceType": "Patient", "id": pid,
                                                     "gender": "female"}).is_success
            for n, pid in enumerate(("p1", "p1", "p1", "p2", "p3"), start=1):
                assert c.put(f"Observation/o{n}", json=observation(f"o{n}", pid)).is_success
            assert c.put("Medication/m1", json={"resourceType": "Medication",
                                                "id": "m1"}).is_success
            assert c.put("Medication/m2", json={"resourceType": "Medication",
                                                "id": "m2"}).is_success
            assert c.put("MedicationRequest/mr1", json={
                "resourceType": "MedicationRequest", "id": "mr1", "status": "active",
                "intent": "order", "subject": {"reference": "Patient/p2"},
                "medicationReference": {"reference": "Medication/m1"}}).is_success
            assert c.put("Group/g", json={
                "resourceType": "Group", "id": "g", "type": "person", "actual": True,
                "member": [{"entity": {"reference": "Patient/p1"}},
                           {"entity": {"reference": "Patient/p2"}},
                           {"entity": {"reference": "Patient/p3"}, "inactive": True},
                           {"entity": {"reference": "Patient/gone"}}]}).is_success
        yield running


def client(server: FhirTestServer, *, token: bool = True, admin: bool = False) -> httpx.Client:
    """A client with the static token (or none); the admin's may store readable ids."""
    bearer = server.admin_token if admin else TOKEN
    headers = {"Authorization": f"Bearer {bearer}"} if token else {}
    return httpx.Client(base_url=server.base_url + "/", headers=headers, timeout=30)


def observation(rid: str, pid: str) -> dict[str, Any]:
    return {"resourceType": "Observation", "id": rid, "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "4548-4"}]},
            "subject": {"reference": f"Patient/{pid}"}}


def export(server: FhirTestServer, path: str = "Group/g/$export",
           **params: str) -> tuple[str, dict[str, Any]]:
    """Kick off, poll to the end; (status URL, manifest)."""
    with client(server) as c:
        kicked = c.get(path, params=params, headers=ASYNC)
        assert kicked.status_code == 202, kicked.text
        status = kicked.headers["Content-Location"]
        for _ in range(5):
            answer = c.get(status, headers={"Accept": "application/json"})
            if answer.status_code == 200:
                return status, answer.json()
            assert answer.status_code == 202
        raise AssertionError("the export never completed")


def contents(server: FhirTestServer, manifest: dict[str, Any], kind: str = "output"
             ) -> dict[str, list[str]]:
    """resource type -> ids (or OperationOutcome texts), over all files of `kind`."""
    found: dict[str, list[str]] = {}
    with client(server) as c:
        for item in manifest[kind]:
            text = c.get(item["url"]).text
            lines = [line for line in text.splitlines() if line]
            assert item["count"] == len(lines)
            for line in lines:
                resource = httpx.Response(200, content=line).json()
                assert resource["resourceType"] == item["type"]
                found.setdefault(item["type"], []).append(
                    resource.get("id") or resource["issue"][0]["diagnostics"])
    return found


def test_a_group_export_holds_its_active_members_compartments_and_their_medications(
        server: FhirTestServer) -> None:
    _, manifest = export(server, _type="Patient,Observation,MedicationRequest,Medication")
    assert manifest["requiresAccessToken"] is True
    assert manifest["request"].endswith(
        "/Group/g/$export?_type=Patient%2CObservation%2CMedicationRequest%2CMedication")
    assert manifest["deleted"] == []
    assert contents(server, manifest) == {
        "Patient": ["p1", "p2"],  # p3 is an inactive member
        "Observation": ["o1", "o2", "o3", "o4"],  # two files of at most two lines
        "MedicationRequest": ["mr1"],
        "Medication": ["m1"],  # referenced by mr1; m2 is nobody's
    }
    assert [i["type"] for i in manifest["output"]].count("Observation") == 2
    assert contents(server, manifest, "error") == {
        "OperationOutcome": ["Patient/gone (a member of Group/g) was not found"]}


def test_polling_answers_in_progress_with_progress_and_retry_after(
        server: FhirTestServer) -> None:
    with client(server) as c:
        status = c.get("Group/g/$export", params={"_type": "Patient"},
                       headers=ASYNC).headers["Content-Location"]
        answers = [c.get(status) for _ in range(3)]
    assert [a.status_code for a in answers] == [202, 202, 200]
    assert [a.headers.get("X-Progress") for a in answers[:2]] == ["33% complete",
                                                                  "67% complete"]
    assert answers[0].headers["Retry-After"] == "3"
    assert answers[2].headers["Content-Type"].startswith("application/json")
    assert "Expires" in answers[2].headers


def test_since_keeps_what_changed_after_it(server: FhirTestServer) -> None:
    _, first = export(server, _type="Patient,Observation")
    time.sleep(0.01)
    with client(server, admin=True) as c:
        assert c.put("Observation/o2", json={**observation("o2", "p1"),
                                             "status": "amended"}).is_success
    _, second = export(server, _type="Patient,Observation", _since=first["transactionTime"])
    assert contents(server, second) == {"Observation": ["o2"]}
    assert second["transactionTime"] > first["transactionTime"]


def test_system_and_patient_level_exports(server: FhirTestServer) -> None:
    _, system = export(server, "$export", _type="Medication")
    assert contents(server, system) == {"Medication": ["m1", "m2"]}
    _, everyone = export(server, "Patient/$export", _type="Patient")
    assert contents(server, everyone) == {"Patient": ["p1", "p2", "p3"]}


@pytest.mark.parametrize(("path", "params", "headers", "status", "words"), [
    ("Group/g/$export", {}, {"Accept": "application/fhir+json"}, 400, "Prefer: respond-async"),
    ("Group/g/$export", {"_type": "Patient,Nonsense"}, ASYNC, 400, "Unknown resource type"),
    ("Group/g/$export", {"_since": "yesterday"}, ASYNC, 400, "_since is not a FHIR instant"),
    ("Group/g/$export", {"_outputFormat": "text/csv"}, ASYNC, 400, "Unsupported _outputFormat"),
    ("Group/g/$export", {"_elements": "id"}, ASYNC, 400, "Unsupported $export parameter"),
    ("Group/nope/$export", {}, ASYNC, 404, "Group/nope is not known"),
])
def test_the_kick_off_refuses_what_it_cannot_do(server: FhirTestServer, path: str,
                                                params: dict[str, str],
                                                headers: dict[str, str], status: int,
                                                words: str) -> None:
    with client(server) as c:
        answer = c.get(path, params=params, headers=headers)
    assert answer.status_code == status
    assert answer.json()["resourceType"] == "OperationOutcome"
    assert words in answer.text


def test_lenient_handling_ignores_unknown_parameters(server: FhirTestServer) -> None:
    with client(server) as c:
        answer = c.get("Group/g/$export", params={"_elements": "id", "_type": "Patient"},
                       headers={**ASYNC, "Prefer": "respond-async, handling=lenient"})
    assert answer.status_code == 202


def test_status_and_files_need_the_token_and_delete_ends_the_job(
        server: FhirTestServer) -> None:
    status, manifest = export(server, _type="Patient")
    url = manifest["output"][0]["url"]
    with client(server, token=False) as anonymous:
        assert anonymous.get(url).status_code == 401
        assert anonymous.get(status).status_code == 401
        assert anonymous.get("Group/g/$export", headers=ASYNC).status_code == 401
    with client(server) as c:
        assert c.get(url).status_code == 200
        assert c.delete(status).status_code == 202
        assert c.get(status).status_code == 404
        assert c.get(url).status_code == 404
    jobs = server.admin.stats()["bulk"]["jobs"]
    assert any(j["status"] == "deleted" for j in jobs)
