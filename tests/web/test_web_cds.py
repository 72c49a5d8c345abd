"""CDS Hooks 2.0 services of `previsit serve`, called as an EHR calls them: requests in the
exact shape of the spec's examples (hook, hookInstance, fhirServer, fhirAuthorization,
context, prefetch), signed JWTs, feedback — and what the nightly run makes of it.

The EHR's FHIR server is the test server seeded with the sample day (fallback reads go to
it); the EHR's JWKS is served by a mock transport.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from ehr_sim import (
    GREENBERG,
    LOPEZ,
    PLAN_NOW,
    STATIC_TOKEN,
    TIMEZONE,
    ehr_server,
    fhir,
    seed,
    web_config,
)
from fhirserver import FhirTestServer
from web_fakes import signer

from previsit.web.app import create_app
from previsit.web.cds import SERVICES, markdown_escape

pytestmark = pytest.mark.integration

APP_URL = "http://127.0.0.1:8400"
EHR_ISS = "https://ehr.example"
EHR_JWKS = "https://ehr.example/.well-known/cds-jwks.json"
BOOK = f"{APP_URL}/cds-services/previsit-appointment-book"
VIEW = f"{APP_URL}/cds-services/previsit-patient-view"
KEY = signer("ES384", "ehr-cds-1")
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def ehr() -> Iterator[FhirTestServer]:
    with ehr_server(APP_URL) as server:
        yield server


@pytest.fixture
def fresh(ehr: FhirTestServer) -> FhirTestServer:
    ehr.admin.reset(data=True, tokens=True)
    seed(ehr)
    return ehr


def jwks_transport() -> httpx.MockTransport:
    def answer(request: httpx.Request) -> httpx.Response:
        assert str(request.url) == EHR_JWKS, f"previsit fetched {request.url}"
        return httpx.Response(200, json={"keys": [KEY.jwk()]})
    return httpx.MockTransport(answer)


class Cds:
    """previsit's CDS services in-process, and the EHR's side of calling them."""

    def __init__(self, tmp_path: Path, server: FhirTestServer) -> None:
        self.server = server
        self.config_path = tmp_path / "previsit.toml"
        config = web_config(tmp_path, server, APP_URL)
        text = self.config_path.read_text() + (
            f'\n[[web.cds_issuers]]\niss = "{EHR_ISS}"\njwks_url = "{EHR_JWKS}"\n'
            f'fhir_server = "{server.base_url}"\n')
        self.config_path.write_text(text)
        from previsit.config import load_config

        config = load_config(self.config_path, env={})
        self.app = create_app(config, env={}, plan_clock=lambda: PLAN_NOW,
                              http=httpx.AsyncClient(transport=jwks_transport()))

    def token(self, aud: str, **claims: Any) -> str:
        now = int(time.time())
        body: dict[str, Any] = {"iss": EHR_ISS, "aud": aud, "iat": now, "exp": now + 300,
                                "jti": str(uuid.uuid4())}
        body.update(claims)
        return KEY.sign({k: v for k, v in body.items() if v is not None})

    def post(self, url: str, body: Any, *, token: str | None = None,
             raw: bytes | None = None) -> httpx.Response:
        async def go() -> httpx.Response:
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app),
                                         base_url=APP_URL) as client:
                headers = {"Authorization": f"Bearer {token or self.token(url)}",
                           "Content-Type": "application/json"}
                return await client.post(url, content=raw if raw is not None
                                         else json.dumps(body), headers=headers)
        return asyncio.run(go())

    def get(self, url: str) -> httpx.Response:
        async def go() -> httpx.Response:
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app),
                                         base_url=APP_URL) as client:
                return await client.get(url)
        return asyncio.run(go())

    def prefetch(self, service_id: str, patient: str) -> dict[str, Any]:
        """What an EHR prefetches for the service's templates (read as the administrator)."""
        out = {}
        with fhir(self.server) as client:
            for key, template in SERVICES[service_id].prefetch.items():
                path = template.replace("{{context.patientId}}", patient)
                response = client.get(path + ("&_count=1000" if "?" in path else ""))
                response.raise_for_status()
                out[key] = response.json()
        return out


@pytest.fixture
def cds(tmp_path: Path, fresh: FhirTestServer) -> Cds:
    return Cds(tmp_path, fresh)


NEW_VISIT = "appt-new-greenberg"


def booking(patient: str, appointment_id: str = NEW_VISIT,
            start: str = "2026-12-03T10:00:00-06:00") -> dict[str, Any]:
    return {"resourceType": "Appointment", "id": appointment_id, "status": "proposed",
            "serviceType": [{"coding": [{"system": "http://snomed.info/sct", "code": "394814009",
                                         "display": "General practice"}]}],
            "start": start, "end": start.replace("10:00", "10:20"),
            "participant": [
                {"actor": {"reference": f"Patient/{patient}"}, "status": "accepted"},
                {"actor": {"reference": "Practitioner/prac-whitfield",
                           "display": "Daniel Whitfield, DO"}, "status": "accepted"}]}


def book_request(server: FhirTestServer, patient: str, prefetch: dict[str, Any] | None,
                 *, authorization: bool = True, appointment: dict[str, Any] | None = None
                 ) -> dict[str, Any]:
    """The spec's appointment-book example, for a sample patient."""
    body: dict[str, Any] = {
        "hookInstance": str(uuid.uuid4()),
        "fhirServer": server.base_url,
        "hook": "appointment-book",
        "context": {"userId": "PractitionerRole/A2340113", "patientId": patient,
                    "appointments": {"resourceType": "Bundle", "type": "collection",
                                     "entry": [{"resource": appointment or booking(patient)}]}},
    }
    if authorization:
        body["fhirAuthorization"] = {"access_token": STATIC_TOKEN, "token_type": "Bearer",
                                     "expires_in": 300, "scope": "patient/*.rs",
                                     "subject": "previsit-cds"}
    if prefetch is not None:
        body["prefetch"] = prefetch
    return body


# --- the response schema (CDS Hooks 2.0, "CDS Service Response") ---------------------------


def check_card(card: dict[str, Any]) -> None:
    allowed = {"uuid", "summary", "detail", "indicator", "source", "suggestions",
               "selectionBehavior", "overrideReasons", "links"}
    assert set(card) <= allowed, f"unexpected card fields {set(card) - allowed}"
    assert isinstance(card["summary"], str) and 0 < len(card["summary"]) < 140
    assert card["indicator"] in ("info", "warning")  # "critical" never, for screening either
    uuid.UUID(card["uuid"])
    assert isinstance(card.get("detail", ""), str)
    source = card["source"]
    assert isinstance(source["label"], str) and source["label"] == "previsit"
    assert source.get("url", "https://x").startswith("https://")
    assert set(source["topic"]) == {"system", "code", "display"}
    for suggestion in card.get("suggestions", ()):
        assert isinstance(suggestion["label"], str) and suggestion["label"]
        uuid.UUID(suggestion["uuid"])
        assert suggestion["isRecommended"] in (True, False)
        for action in suggestion["actions"]:
            assert action["type"] == "create"
            assert isinstance(action["description"], str)
            assert action["resource"]["resourceType"] in ("ServiceRequest", "MedicationRequest")
            assert action["resource"]["status"] == "draft"
            assert action["resource"]["intent"] == "proposal"
    if card.get("suggestions"):
        assert card["selectionBehavior"] == "any"
    for reason in card["overrideReasons"]:
        assert set(reason) == {"system", "code", "display"}
    for link in card["links"]:
        assert set(link) <= {"label", "url", "type", "appContext"}
        assert link["type"] in ("absolute", "smart")


def cards_of(response: httpx.Response) -> list[dict[str, Any]]:
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"cards"}
    for card in body["cards"]:
        check_card(card)
    return list(body["cards"])


# --- discovery -------------------------------------------------------------------------------


def test_discovery_lists_both_services_with_prefetch_templates(cds: Cds) -> None:
    response = cds.get("/cds-services")
    assert response.status_code == 200
    services = {s["id"]: s for s in response.json()["services"]}
    assert {s["hook"] for s in services.values()} == {"appointment-book", "patient-view"}
    book = services["previsit-appointment-book"]
    assert book["prefetch"] == {
        "patient": "Patient/{{context.patientId}}",
        "condition": "Condition?patient={{context.patientId}}",
        "medicationRequest": "MedicationRequest?patient={{context.patientId}}"
                             "&_include=MedicationRequest:medication",
        "observation": "Observation?patient={{context.patientId}}",
        "procedure": "Procedure?patient={{context.patientId}}",
        "immunization": "Immunization?patient={{context.patientId}}",
        "serviceRequest": "ServiceRequest?patient={{context.patientId}}",
        "encounter": "Encounter?patient={{context.patientId}}",
        "medicationDispense": "MedicationDispense?patient={{context.patientId}}",
        "medicationStatement": "MedicationStatement?patient={{context.patientId}}",
    }
    view = services["previsit-patient-view"]
    assert view["prefetch"]["appointment"] == \
        "Appointment?patient={{context.patientId}}&status=booked,arrived,pending"
    for service in services.values():
        assert service["title"] and service["description"] and service["usageRequirements"]


# --- appointment-book ------------------------------------------------------------------------


def test_full_prefetch_answers_from_prefetch_alone(cds: Cds, fresh: FhirTestServer) -> None:
    before = fresh.admin.stats()["requests"]["total"]
    prefetch = cds.prefetch("previsit-appointment-book", GREENBERG)
    read_for_prefetch = fresh.admin.stats()["requests"]["total"]
    cards = cards_of(cds.post(BOOK, book_request(fresh, GREENBERG, prefetch)))
    assert fresh.admin.stats()["requests"]["total"] == read_for_prefetch != before  # nothing read
    summaries = [c["summary"] for c in cards]
    assert summaries == [
        "1 lab to draw before the visit on Thu Dec 3, 2026: TSH on thyroid hormone replacement",
        # at most 139 characters: cut with an ellipsis
        "4 immunizations due on Thu Dec 3, 2026: Hepatitis B vaccine series, Pneumococcal "
        "vaccine, Shingles vaccine (recombinant, 2 doses), Td/Tdap…",
        "1 prescription to renew on Thu Dec 3, 2026: Renew levothyroxine 125 mcg tablet",
    ]
    lab = cards[0]
    assert lab["indicator"] == "warning"  # the TSH is overdue
    # booked on Mon Nov 30 for Thu Dec 3: the draw-by date is today, not a week before
    assert "draw by Mon Nov 30" in lab["detail"]
    [suggestion] = lab["suggestions"]
    resource = suggestion["actions"][0]["resource"]
    assert resource["occurrenceDateTime"] == "2026-11-30"
    assert resource["code"]["coding"][0]["code"] == "3016-3"
    assert resource["identifier"][0]["system"] == "urn:previsit:proposal"
    assert lab["source"]["url"].startswith("https://")
    assert lab["links"] == [{"label": "Open the pre-visit plan in previsit",
                             "url": f"{APP_URL}/launch", "type": "smart"}]
    assert [r["code"] for r in lab["overrideReasons"]] == \
        ["patient-declined", "done-elsewhere", "not-appropriate"]
    assert cards[1]["indicator"] == "info"


def test_partial_prefetch_reads_the_rest_from_the_fhir_server(cds: Cds,
                                                              fresh: FhirTestServer) -> None:
    prefetch = cds.prefetch("previsit-appointment-book", GREENBERG)
    full = cards_of(cds.post(BOOK, book_request(fresh, GREENBERG, prefetch)))
    prefetch["observation"] = None  # the EHR could not prefetch it
    del prefetch["immunization"]
    before = fresh.admin.stats()["requests"]["total"]
    partial = cards_of(cds.post(BOOK, book_request(fresh, GREENBERG, prefetch)))
    assert fresh.admin.stats()["requests"]["total"] > before
    assert [c["summary"] for c in partial] == [c["summary"] for c in full]
    assert [c["detail"] for c in partial] == [c["detail"] for c in full]


def test_no_prefetch_and_no_authorization_gives_no_cards_and_a_logged_reason(
        cds: Cds, fresh: FhirTestServer, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="previsit.web.cds"):
        response = cds.post(BOOK, book_request(fresh, GREENBERG, None, authorization=False))
    assert cards_of(response) == []
    assert "prefetch is incomplete and the request has no fhirServer and " \
           "fhirAuthorization" in caplog.text


def test_an_unknown_patient_gives_no_cards(cds: Cds, fresh: FhirTestServer,
                                           caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="previsit.web.cds"):
        response = cds.post(BOOK, book_request(fresh, "pat-nobody", None,
                                               appointment=booking("pat-nobody")))
    assert cards_of(response) == []
    assert "reading the rest from fhirServer failed" in caplog.text


@pytest.mark.parametrize(("mutate", "message"), [
    (lambda b: b.pop("context"), "context is missing or not an object"),
    (lambda b: b["context"].pop("appointments"),
     "context.appointments must be a Bundle of the Appointments being booked"),
    (lambda b: b.update(hook="patient-view"),
     "hook must be 'appointment-book' for service previsit-appointment-book"),
    (lambda b: b["context"].update(patientId="../Patient/x"),
     "context.patientId is missing or not a FHIR id"),
    (lambda b: b["fhirAuthorization"].pop("access_token"),
     "fhirAuthorization lacks access_token, a Bearer token_type, expires_in, scope or subject"),
])
def test_a_malformed_request_is_400_with_an_operation_outcome(
        cds: Cds, fresh: FhirTestServer, mutate: Any, message: str) -> None:
    body = book_request(fresh, GREENBERG, None)
    mutate(body)
    response = cds.post(BOOK, body)
    assert response.status_code == 400
    assert response.json() == {"resourceType": "OperationOutcome", "issue": [
        {"severity": "error", "code": "invalid", "diagnostics": message}]}


def test_a_body_that_is_not_json_is_400(cds: Cds) -> None:
    response = cds.post(BOOK, None, raw=b"{not json")
    assert response.status_code == 400
    assert response.json()["issue"][0]["diagnostics"] == "the request body is not a JSON object"


def test_every_jwt_failure_is_401(cds: Cds, fresh: FhirTestServer) -> None:
    body = book_request(fresh, GREENBERG, None, authorization=False)
    now = int(time.time())
    other = signer("ES384", "ehr-cds-1-forged")
    forged = other.sign({"iss": EHR_ISS, "aud": BOOK, "iat": now, "exp": now + 300,
                         "jti": "j-forged"}, kid="ehr-cds-1")
    replayed = cds.token(BOOK, jti="j-replayed")
    assert cds.post(BOOK, body, token=replayed).status_code == 200
    for token in (forged,  # bad signature
                  cds.token(VIEW),  # another service's URL as audience
                  cds.token(BOOK, iat=now - 900, exp=now - 600),  # expired
                  replayed,  # jti seen before
                  cds.token(BOOK, iss="https://other-ehr.example"),  # unknown issuer
                  "not-a-jwt"):
        response = cds.post(BOOK, body, token=token)
        assert response.status_code == 401
        assert response.json()["issue"][0]["diagnostics"] == "the request is not authenticated"


def test_hostile_fhir_text_stays_inert_markdown(cds: Cds, fresh: FhirTestServer) -> None:
    prefetch = cds.prefetch("previsit-appointment-book", GREENBERG)
    hostile = "<script>alert(1)</script> [click](javascript:alert(1)) **bold** # heading"
    for entry in prefetch["medicationRequest"]["entry"]:
        resource = entry["resource"]
        if "levothyroxine" in json.dumps(resource).lower() and \
                resource.get("medicationCodeableConcept"):
            resource["medicationCodeableConcept"]["text"] = hostile
            for coding in resource["medicationCodeableConcept"].get("coding", ()):
                coding["display"] = hostile
    cards = cards_of(cds.post(BOOK, book_request(fresh, GREENBERG, prefetch)))
    detail = "\n".join(c["detail"] for c in cards)
    assert "\\<script\\>alert\\(1\\)\\<\\/script\\>" in detail
    assert "<script>" not in detail
    assert "](javascript" not in detail
    assert "\\*\\*bold\\*\\*" in detail
    assert markdown_escape("a\n# b") == "a \\# b"


# --- patient-view ----------------------------------------------------------------------------


def test_patient_view_plans_the_next_booked_visit(cds: Cds, fresh: FhirTestServer) -> None:
    prefetch = cds.prefetch("previsit-patient-view", LOPEZ)
    body = {"hookInstance": str(uuid.uuid4()), "fhirServer": fresh.base_url,
            "hook": "patient-view",
            "context": {"userId": "Practitioner/prac-okafor", "patientId": LOPEZ},
            "prefetch": prefetch}
    cards = cards_of(cds.post(VIEW, body))
    # her next booked visit is the 8:00 lab draw on Tue Dec 1: the labs are due before it
    assert cards[0]["summary"].startswith("3 labs to draw before the visit on Tue Dec 1, 2026")


# --- suggestions, feedback and the nightly run --------------------------------------------------


def nightly(cds: Cds, tmp_path: Path, day: str) -> dict[str, Any]:
    out = tmp_path / f"out-{day}-{uuid.uuid4().hex[:6]}"
    result = subprocess.run(
        [sys.executable, "-c", "from previsit.cli.app import main; main()", "run",
         "--config", str(cds.config_path), "--date", day, "--timezone", TIMEZONE,
         "--write-back", "--out", str(out), "--quiet"],
        env={**os.environ, "PREVISIT_TOKEN": STATIC_TOKEN}, capture_output=True, text=True,
        timeout=300, check=False)
    assert result.returncode == 0, result.stderr
    plan: dict[str, Any] = json.loads((out / "plan.json").read_text())
    return plan


def test_a_suggestion_taken_is_recognised_and_feedback_declines_the_next_run(
        cds: Cds, fresh: FhirTestServer, tmp_path: Path) -> None:
    prefetch = cds.prefetch("previsit-appointment-book", LOPEZ)
    appointment = booking(LOPEZ, "appt-new-lopez", "2026-12-10T10:00:00-06:00")
    cards = cards_of(cds.post(BOOK, book_request(fresh, LOPEZ, prefetch,
                                                 appointment=appointment)))
    screening = next(c for c in cards if "screening" in c["summary"])
    assert "Colorectal cancer screening" in screening["summary"]
    immunizations = next(c for c in cards if "immunization" in c["summary"])
    # the EHR books the visit and carries out one suggestion: creates its resource
    taken = immunizations["suggestions"][0]
    with fhir(fresh) as client:
        client.put(f"Appointment/{appointment['id']}",
                   json={**appointment, "status": "booked"}).raise_for_status()
        client.post("ServiceRequest", json=taken["actions"][0]["resource"]).raise_for_status()
    feedback = {"feedback": [
        {"card": immunizations["uuid"], "outcome": "accepted",
         "acceptedSuggestions": [{"id": taken["uuid"]}],
         "outcomeTimestamp": "2026-11-30T17:05:00Z"},
        {"card": screening["uuid"], "outcome": "overridden",
         "overrideReason": {"reason": {"code": "done-elsewhere",
                                       "system": screening["overrideReasons"][1]["system"],
                                       "display": "Done elsewhere"},
                            "userComment": "FIT at the county clinic"},
         "outcomeTimestamp": "2026-11-30T17:06:00Z"}]}
    url = f"{BOOK}/feedback"
    assert cds.post(url, feedback).status_code == 200
    unknown = {"feedback": [{"card": str(uuid.uuid4()), "outcome": "accepted",
                             "outcomeTimestamp": "2026-11-30T17:05:00Z"}]}
    assert cds.post(url, unknown).status_code == 400
    assert cds.post(url, {"feedback": "nope"}).status_code == 400

    plan = nightly(cds, tmp_path, "2026-12-10")
    [visit] = [v for v in plan["visits"] if v["visit"]["appointment_id"] == "appt-new-lopez"]
    findings = {f["rule_id"]: f for f in visit["findings"]}
    crc = findings["colorectal-cancer-screening"]
    assert crc["status"] == "excluded"
    assert crc["explanation"] == ("Declined on Mon Nov 30, 2026: Done elsewhere. Not proposed "
                                  "again before Tue Nov 30, 2027.")
    taken_id = taken["actions"][0]["resource"]["identifier"][0]["value"]
    [summary] = [p for p in visit["proposals"] if p["identifier"] == taken_id]
    assert summary["outcome"] == "already-written"
    assert not any("colorectal-cancer-screening" in p["rule_ids"] for p in visit["proposals"])
