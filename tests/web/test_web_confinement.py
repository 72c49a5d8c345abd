"""Patient confinement: production servers do not confine `patient/` scopes, so previsit
refuses any request or response that reaches another patient."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from web_fakes import run

from previsit.web.confinement import ConfinedTransport, ConfinementError, PatientConfinement

BASE = "https://ehr.example/fhir/R4"
SCOPE = PatientConfinement(BASE + "/", "pat-1")


def condition(subject: str = "Patient/pat-1", **extra: Any) -> dict[str, Any]:
    return {"resourceType": "Condition", "id": "c1", "subject": {"reference": subject},
            **extra}


def searchset(*resources: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "searchset",
            "entry": [{"resource": r} for r in resources]}


# --- requests -----------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "url"), [
    ("GET", f"{BASE}/Patient/pat-1"),
    ("GET", f"{BASE}/Patient?_id=pat-1"),
    ("GET", f"{BASE}/Condition?patient=pat-1&clinical-status=active"),
    ("GET", f"{BASE}/Observation?subject=Patient/pat-1&code=4548-4&_sort=-date"),
    ("GET", f"{BASE}/Observation?subject:Patient=pat-1"),
    ("GET", f"{BASE}/Appointment?actor={BASE}/Patient/pat-1&date=ge2026-12-01"),
    ("GET", f"{BASE}/MedicationRequest?patient=pat-1&_include=MedicationRequest:medication"),
    ("GET", f"{BASE}/Medication/med-1"),
    ("GET", f"{BASE}/Medication?code=http://www.nlm.nih.gov/research/umls/rxnorm|197361"),
    ("GET", f"{BASE}/ServiceRequest/sr-1"),
    ("GET", f"{BASE}/ServiceRequest/sr-1/_history/2"),
    ("GET", f"{BASE}/Patient/pat-1/$everything"),
    ("GET", "https://EHR.example:443/fhir/R4/Condition?patient=pat-1"),
])
def test_requests_for_the_launch_patient_pass(method: str, url: str) -> None:
    SCOPE.check_request(method, url)


@pytest.mark.parametrize(("method", "url", "message"), [
    ("GET", f"{BASE}/Patient/pat-2", "another Patient"),
    ("GET", f"{BASE}/Patient?_id=pat-2", "by _id of the launch patient"),
    ("GET", f"{BASE}/Patient?name=smith", "by _id of the launch patient"),
    ("GET", f"{BASE}/Condition", "must name the launch patient"),
    ("GET", f"{BASE}/Condition?code=E11.9", "must name the launch patient"),
    ("GET", f"{BASE}/Condition?patient=pat-2", "must be the launch patient"),
    ("GET", f"{BASE}/Condition?patient=Patient/pat-2", "names another patient"),
    ("GET", f"{BASE}/Condition?patient=pat-1,pat-2", "must be the launch patient"),
    ("GET", f"{BASE}/Condition?patient=pat-1&patient=pat-2", "must be the launch patient"),
    ("GET", f"{BASE}/Condition?patient:missing=true", "must be the launch patient"),
    ("GET", f"{BASE}/Observation?subject=Group/g1", "must be the launch patient"),
    ("GET", f"{BASE}/Condition?patient=https://other.example/fhir/Patient/pat-1",
     "names another patient"),
    ("GET", f"{BASE}/Observation?patient=pat-1&performer=Patient/pat-2",
     "names another patient"),
    ("GET", f"{BASE}/Medication?_has:MedicationRequest:medication:patient=pat-2",
     "_has is not allowed"),
    ("GET", f"{BASE}?_type=Condition", "system-wide"),
    ("GET", "https://other.example/fhir/R4/Patient/pat-1", "another server"),
    ("GET", "https://ehr.example/fhir/R4-evil/Patient/pat-1", "another server"),
    ("GET", f"{BASE}/Patient/pat-1/../pat-2", "dot segments"),
    ("DELETE", f"{BASE}/Condition/c1", "not allowed"),
    ("PATCH", f"{BASE}/ServiceRequest/sr-1", "not allowed"),
    ("GET", f"{BASE}/Patient/pat-2/$everything", "another Patient"),
    ("GET", f"{BASE}/Group/g1/$export", "not allowed"),
])
def test_requests_beyond_the_launch_patient_are_refused(method: str, url: str,
                                                        message: str) -> None:
    with pytest.raises(ConfinementError, match=message):
        SCOPE.check_request(method, url)


def test_writes_must_belong_to_the_launch_patient() -> None:
    proposal = {"resourceType": "ServiceRequest", "id": "sr-1", "status": "revoked",
                "intent": "proposal", "subject": {"reference": "Patient/pat-1"}}
    SCOPE.check_request("PUT", f"{BASE}/ServiceRequest/sr-1", proposal)
    order = {**proposal, "intent": "order", "basedOn": [{"reference": "ServiceRequest/sr-1"}]}
    del order["id"]
    SCOPE.check_request("POST", f"{BASE}/ServiceRequest", order)
    with pytest.raises(ConfinementError, match="whose subject is another patient"):
        SCOPE.check_request("POST", f"{BASE}/ServiceRequest",
                            {**order, "subject": {"reference": "Patient/pat-2"}})
    with pytest.raises(ConfinementError, match="does not refer to the launch patient"):
        SCOPE.check_request("POST", f"{BASE}/ServiceRequest", {**order, "subject": None})
    with pytest.raises(ConfinementError, match="id differs"):
        SCOPE.check_request("PUT", f"{BASE}/ServiceRequest/sr-2", proposal)
    with pytest.raises(ConfinementError, match="is not a ServiceRequest"):
        SCOPE.check_request("POST", f"{BASE}/ServiceRequest", condition())
    with pytest.raises(ConfinementError, match="creating a Patient"):
        SCOPE.check_request("POST", f"{BASE}/Patient", {"resourceType": "Patient"})
    with pytest.raises(ConfinementError, match="conditional patient reference"):
        SCOPE.check_request("POST", f"{BASE}/ServiceRequest",
                            {**order, "subject": {"reference": "Patient?identifier=x|1"}})


def test_a_transaction_is_checked_entry_by_entry() -> None:
    provenance = {"resourceType": "Provenance",
                  "target": [{"reference": "ServiceRequest/sr-1"}],
                  "agent": [{"who": {"reference": "Practitioner/prac-1"}}]}
    good = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": {"resourceType": "ServiceRequest", "subject": {"reference":
                                                                    "Patient/pat-1"}},
         "request": {"method": "POST", "url": "ServiceRequest",
                     "ifNoneExist": "identifier=urn:previsit:proposal|abc"}},
        {"resource": provenance, "request": {"method": "POST", "url": "Provenance"}},
        {"request": {"method": "GET", "url": "Condition?patient=pat-1"}}]}
    SCOPE.check_request("POST", BASE, good)
    bad = json.loads(json.dumps(good))
    bad["entry"][2]["request"]["url"] = "Condition?patient=pat-2"
    with pytest.raises(ConfinementError, match="must be the launch patient"):
        SCOPE.check_request("POST", BASE, bad)
    bad = json.loads(json.dumps(good))
    bad["entry"][0]["resource"]["subject"]["reference"] = "Patient/pat-2"
    with pytest.raises(ConfinementError, match="another patient"):
        SCOPE.check_request("POST", BASE, bad)


# --- responses ----------------------------------------------------------------------------


def test_responses_for_the_launch_patient_pass() -> None:
    SCOPE.check_response({"resourceType": "Patient", "id": "pat-1",
                          "link": [{"other": {"reference": "Patient/merged-old"},
                                    "type": "replaces"}]})
    SCOPE.check_response(searchset(
        condition(), condition(f"{BASE}/Patient/pat-1"),
        {"resourceType": "Medication", "id": "m1"},
        {"resourceType": "Appointment", "id": "a1", "participant": [
            {"actor": {"reference": "Patient/pat-1"}},
            {"actor": {"reference": "Practitioner/prac-1"}}]},
        {"resourceType": "OperationOutcome", "issue": []}))
    SCOPE.check_response(None)


@pytest.mark.parametrize(("body", "message"), [
    ({"resourceType": "Patient", "id": "pat-2"}, "a Patient other than the launch patient"),
    (searchset(condition(), condition("Patient/pat-2")), "whose subject is another patient"),
    (searchset(condition("https://other.example/fhir/Patient/pat-1")),
     "whose subject is another patient"),
    (searchset({"resourceType": "Observation", "id": "o1", "code": {}}),
     "Observation that does not refer to the launch patient"),
    (searchset({"resourceType": "Appointment", "participant": [
        {"actor": {"reference": "Patient/pat-1"}}, {"actor": {"reference": "Patient/pat-2"}}]}),
     "another patient"),
    (searchset({"resourceType": "Medication", "id": "m1",
                "contained": [condition("Patient/pat-2")]}), "another patient"),
    ({"resourceType": "Bundle", "type": "batch-response", "entry": [
        {"resource": searchset(condition())},
        {"resource": searchset(condition("Patient/pat-9"))}]}, "another patient"),
    ("<html>", "not a resource"),
])
def test_responses_with_another_patient_are_refused(body: Any, message: str) -> None:
    with pytest.raises(ConfinementError, match=message):
        SCOPE.check_response(body)


def test_error_messages_do_not_name_the_other_patient() -> None:
    with pytest.raises(ConfinementError) as refused:
        SCOPE.check_response(searchset(condition("Patient/SOMEONE-ELSE")))
    assert "SOMEONE-ELSE" not in str(refused.value)


# --- as an httpx transport ----------------------------------------------------------------


def test_the_confined_transport_checks_both_directions() -> None:
    sent: list[str] = []

    def server(request: httpx.Request) -> httpx.Response:
        sent.append(str(request.url))
        if "leak" in request.url.params.get("code", ""):
            return httpx.Response(200, json=searchset(condition("Patient/pat-2")),
                                  headers={"Content-Type": "application/fhir+json"})
        return httpx.Response(200, json=searchset(condition()),
                              headers={"Content-Type": "application/fhir+json"})

    transport = ConfinedTransport(httpx.MockTransport(server), SCOPE)

    async def calls() -> None:
        async with httpx.AsyncClient(transport=transport, base_url=BASE) as client:
            ok = await client.get("/Condition", params={"patient": "pat-1"})
            assert ok.json()["entry"][0]["resource"]["subject"]["reference"] == \
                "Patient/pat-1"
            with pytest.raises(ConfinementError, match="must name the launch patient"):
                await client.get("/Condition")
            with pytest.raises(ConfinementError, match="another patient"):
                await client.get("/Condition", params={"patient": "pat-1", "code": "leak"})
            with pytest.raises(ConfinementError, match="another patient"):
                await client.post("/ServiceRequest", json={
                    "resourceType": "ServiceRequest",
                    "subject": {"reference": "Patient/pat-2"}})

    run(calls())
    assert len(sent) == 2  # the refused requests never left
