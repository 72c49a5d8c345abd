"""`previsit serve`'s SMART app against the EHR simulator (the test server's SMART side):
the launch, the plan, the actions, and every refusal of issue 11 item 3 — each with a clear
page and nothing written.

The app runs in-process (httpx's ASGI transport); the EHR is the real test server on
127.0.0.1, so tokens, scopes, PKCE and single-use codes are checked by it, not mocked.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from ehr_sim import (
    GREENBERG,
    GREENBERG_VISIT,
    LOPEZ,
    LOPEZ_VISIT,
    PLAN_NOW,
    AppDriver,
    ehr_server,
    query_of,
    search,
    seed,
    web_config,
)
from fhirserver import FhirTestServer

from previsit.web.app import create_app

pytestmark = pytest.mark.integration

APP_URL = "http://127.0.0.1:8400"
T = TypeVar("T")


@pytest.fixture(scope="module")
def ehr() -> Iterator[FhirTestServer]:
    with ehr_server(APP_URL) as server:
        yield server


@pytest.fixture
def fresh(ehr: FhirTestServer) -> FhirTestServer:
    """The sample day as loaded, nothing written by a previous test."""
    ehr.admin.reset(data=True, tokens=True)
    seed(ehr)
    return ehr


class Clock:
    """Real time (the EHR's tokens are real), moved forward by a test."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        import time

        return time.time() + self.offset


@asynccontextmanager
async def driven(tmp_path: Path, server: FhirTestServer, *, clock: Clock | None = None,
                 **web: Any) -> AsyncIterator[AppDriver]:
    config = web_config(tmp_path, server, APP_URL, **web)
    app = create_app(config, env={}, plan_clock=lambda: PLAN_NOW, clock=clock or Clock())
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url=APP_URL) as client:
        driver = AppDriver(server, client)
        try:
            yield driver
        finally:
            await driver.aclose()


def run(test: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(test())  # type: ignore[arg-type]


def text(response: httpx.Response) -> str:
    """What a person reads on the page."""
    plain = re.sub(r"<[^>]+>", " ", response.text)
    return re.sub(r"\s+", " ", plain).replace("&#39;", "'").replace("&quot;", '"')


def csrf(page: httpx.Response) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert match, "the page has no CSRF token"
    return match.group(1)


def identifier_for(page: httpx.Response, title: str) -> str:
    """The proposal identifier of the item titled `title` on a plan page."""
    row = next(r for r in page.text.split('<tr class="item')[1:] if title in r)
    match = re.search(r'name="identifier" value="([^"]+)"', row)
    assert match, f"no action for {title}"
    return match.group(1)


def written(server: FhirTestServer, patient: str) -> list[dict[str, Any]]:
    """What previsit wrote for the patient: requests with its identifiers, Provenances."""
    ours = [r for kind in ("ServiceRequest", "MedicationRequest")
            for r in search(server, kind, patient=patient)
            if any(i.get("system") == "urn:previsit:proposal" for i in r.get("identifier", ()))]
    return ours + search(server, "Provenance")


# --- the launch and the plan ------------------------------------------------------------------


def test_ehr_launch_shows_the_plan_of_the_launched_patient_and_appointment(
        tmp_path: Path, fresh: FhirTestServer) -> None:
    async def go() -> None:
        async with driven(tmp_path, fresh) as d:
            launch = await d.ehr_launch(GREENBERG, appointment=GREENBERG_VISIT)
            assert launch.status_code == 302
            authorize = launch.headers["location"]
            params = query_of(authorize)
            assert authorize.startswith(f"{fresh.root_url}/oauth2/authorize?")
            assert params["aud"] == fresh.base_url  # the registered spelling, not iss + "/"
            assert params["code_challenge_method"] == "S256"
            assert params["scope"].split() == [
                "launch", "openid", "fhirUser", "offline_access", "patient/Patient.rs",
                "patient/Condition.rs", "patient/MedicationRequest.crus",
                "patient/Medication.rs", "patient/Observation.rs", "patient/Procedure.rs",
                "patient/Immunization.rs", "patient/ServiceRequest.crus",
                "patient/Encounter.rs", "patient/Appointment.rs",
                "patient/MedicationDispense.rs", "patient/MedicationStatement.rs",
                "patient/Provenance.c"]
            assert "previsit_launch=" in launch.headers["set-cookie"]
            done = await d.callback(await d.authorize(launch))
            assert done.status_code == 303 and done.headers["location"] == "/plan"
            cookie = next(c for c in done.headers.get_list("set-cookie")
                          if c.startswith("previsit_session="))
            assert "HttpOnly" in cookie and "SameSite=Lax" in cookie
            assert "Secure" not in cookie  # loopback http
            page = await d.app.get("/plan")
            assert page.status_code == 200
            seen = text(page)
            assert "Susan Leah Greenberg" in seen
            assert "Appointment appt-1201-0920-greenberg" in seen
            assert "Plan for the appointment the chart was opened from" in seen
            assert "TSH on thyroid hormone replacement" in seen
            assert "Signed in as Practitioner/prac-okafor" in seen
            csp = page.headers["content-security-policy"]
            assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
            assert page.headers["cache-control"] == "no-store"
            # no external scripts, fonts or requests: one stylesheet, the app's own
            assert "<script" not in page.text
            assert re.findall(r'(?:href|src)="([^"]+)"', page.text) == ["/static/app.css"]
    run(go)


def test_without_an_appointment_in_context_the_next_booked_one_is_planned(
        tmp_path: Path, fresh: FhirTestServer) -> None:
    async def go() -> None:
        async with driven(tmp_path, fresh) as d:
            page = await d.launch_to_plan(LOPEZ)
            seen = text(page)
            assert "María Elena López" in seen
            assert "Plan for the patient's next booked appointment" in seen
            # the 8:00 lab draw is her next appointment on Tue Dec 1
            assert "Appointment appt-1201-0800-lopez-lab" in seen
    run(go)


# --- actions ----------------------------------------------------------------------------------


def test_propose_accept_and_dismiss_write_the_request_pattern_with_provenance(
        tmp_path: Path, fresh: FhirTestServer) -> None:
    async def go() -> None:
        async with driven(tmp_path, fresh) as d:
            page = await d.launch_to_plan(GREENBERG, appointment=GREENBERG_VISIT)
            token = csrf(page)
            tsh = identifier_for(page, "TSH on thyroid hormone replacement")
            done = await d.app.post("/actions/propose", data={
                "csrf_token": token, "identifier": tsh, "appointment": GREENBERG_VISIT})
            assert done.status_code == 303, text(done)
            page = await d.app.get(done.headers["location"])
            assert "Proposed: the draft order is written to the chart." in text(page)
            [proposal] = [r for r in search(fresh, "ServiceRequest", patient=GREENBERG)
                          if r["identifier"][0]["value"] == tsh]
            assert (proposal["status"], proposal["intent"]) == ("draft", "proposal")

            done = await d.app.post("/actions/accept", data={
                "csrf_token": token, "identifier": tsh, "appointment": GREENBERG_VISIT})
            assert done.status_code == 303, text(done)
            tdap = identifier_for(await d.app.get("/plan"), "Td/Tdap booster")
            done = await d.app.post("/actions/dismiss", data={
                "csrf_token": token, "identifier": tdap, "appointment": GREENBERG_VISIT,
                "reason": "done-elsewhere", "text": "at the pharmacy"})
            assert done.status_code == 303, text(done)

        requests = {r["identifier"][0]["value"]: r for r in
                    search(fresh, "ServiceRequest", patient=GREENBERG)}
        assert requests[tsh]["status"] == "completed"
        orders = [r for r in requests.values() if r["intent"] == "order"]
        assert len(orders) == 1
        [order] = orders
        assert order["status"] == "draft"
        assert order["basedOn"] == [{"reference": f"ServiceRequest/{requests[tsh]['id']}"}]
        assert order["requester"] == {"reference": "Practitioner/prac-okafor"}
        assert order["code"] == requests[tsh]["code"]
        revoked = requests[tdap]
        assert revoked["status"] == "revoked"
        [reason] = [e for e in revoked["extension"]
                    if e["url"] == "http://hl7.org/fhir/StructureDefinition/request-statusReason"]
        assert reason["valueCodeableConcept"]["coding"][0]["code"] == "done-elsewhere"
        assert reason["valueCodeableConcept"]["text"] == "Done elsewhere: at the pharmacy"
        provenances = search(fresh, "Provenance")
        assert sorted(p["activity"]["coding"][0]["code"] for p in provenances) == \
            ["ABORT", "CREATE", "CREATE"]
        for provenance in provenances:
            assert provenance["agent"][0]["who"] == {"reference": "Practitioner/prac-okafor"}
        targets = {t["reference"] for p in provenances for t in p["target"]}
        assert {f"ServiceRequest/{order['id']}", f"ServiceRequest/{revoked['id']}"} <= targets
    run(go)


# --- refusals: each a clear page, nothing written ----------------------------------------------


def test_an_unknown_iss_gets_an_error_page_never_a_redirect(tmp_path: Path,
                                                            fresh: FhirTestServer) -> None:
    async def go() -> None:
        async with driven(tmp_path, fresh) as d:
            page = await d.app.get("/launch", params={"iss": "https://evil.example/fhir",
                                                      "launch": "abc"})
            assert page.status_code == 400
            assert "location" not in page.headers
            assert "previsit is not configured for the FHIR server " \
                   "'https://evil.example/fhir'" in text(page)
    run(go)


def test_a_wrong_missing_or_replayed_state_is_refused(tmp_path: Path,
                                                      fresh: FhirTestServer) -> None:
    async def go() -> None:
        async with driven(tmp_path, fresh) as d:
            answer = await d.authorize(await d.ehr_launch(GREENBERG), tamper={"state": "x" * 43})
            wrong = await d.callback(answer)
            assert wrong.status_code == 400
            assert "this sign-in link is not one previsit started" in text(wrong)

            answer = await d.authorize(await d.ehr_launch(GREENBERG))
            location = answer.headers["location"]
            missing = await d.app.get("/callback", params={"code": query_of(location)["code"]})
            assert missing.status_code == 400
            assert "the EHR's answer has no state" in text(missing)

            answer = await d.authorize(await d.ehr_launch(GREENBERG))
            assert (await d.callback(answer)).status_code == 303
            replayed = await d.callback(answer)
            assert replayed.status_code == 400
            assert "this sign-in link was already used" in text(replayed)
        assert written(fresh, GREENBERG) == []
    run(go)


def test_a_missing_or_wrong_pkce_verifier_is_refused(tmp_path: Path,
                                                     fresh: FhirTestServer) -> None:
    async def go() -> None:
        async with driven(tmp_path, fresh) as d:
            answer = await d.authorize(await d.ehr_launch(GREENBERG),
                                       tamper={"code_challenge": None}, preauthorize=False)
            page = await d.callback(answer)
            assert page.status_code == 400
            assert "the EHR refused the sign-in (invalid_request): PKCE is required" in text(page)
            # A challenge the app's verifier does not answer: the token endpoint refuses.
            answer = await d.authorize(await d.ehr_launch(GREENBERG),
                                       tamper={"code_challenge": "A" * 43})
            page = await d.callback(answer)
            assert page.status_code == 400
            assert "refused with HTTP 400: invalid_grant" in text(page)
            assert "previsit_session=" not in page.headers.get("set-cookie", "")
    run(go)


def test_a_replayed_code_is_refused(tmp_path: Path, fresh: FhirTestServer) -> None:
    async def go() -> None:
        async with driven(tmp_path, fresh) as d:
            first = await d.authorize(await d.ehr_launch(GREENBERG))
            code = query_of(first.headers["location"])["code"]
            assert (await d.callback(first)).status_code == 303
            # a second launch whose callback carries the first, used code
            second = await d.authorize(await d.ehr_launch(GREENBERG))
            state = query_of(second.headers["location"])["state"]
            page = await d.app.get("/callback", params={"code": code, "state": state})
            assert page.status_code == 400
            assert "invalid_grant" in text(page)
    run(go)


def test_posts_without_or_with_a_foreign_csrf_token_are_refused(tmp_path: Path,
                                                                fresh: FhirTestServer) -> None:
    async def go() -> None:
        (tmp_path / "other").mkdir()
        async with driven(tmp_path / "other", fresh) as other:
            foreign = csrf(await other.launch_to_plan(LOPEZ, appointment=LOPEZ_VISIT))
        async with driven(tmp_path, fresh) as d:
            page = await d.launch_to_plan(GREENBERG, appointment=GREENBERG_VISIT)
            tsh = identifier_for(page, "TSH on thyroid hormone replacement")
            form = {"identifier": tsh, "appointment": GREENBERG_VISIT}
            none = await d.app.post("/actions/propose", data=form)
            assert none.status_code == 403
            assert "the form has no CSRF token" in text(none)
            wrong = await d.app.post("/actions/propose", data={**form, "csrf_token": foreign})
            assert wrong.status_code == 403
            assert "does not belong to this session" in text(wrong)
            cross = await d.app.post("/actions/propose", data={**form, "csrf_token": csrf(page)},
                                     headers={"Origin": "https://evil.example"})
            assert cross.status_code == 403
            assert "the request comes from another site" in text(cross)
        assert written(fresh, GREENBERG) == []
    run(go)


def test_an_expired_session_is_refused_and_logout_clears_the_server_side(
        tmp_path: Path, fresh: FhirTestServer) -> None:
    async def go() -> None:
        clock = Clock()
        async with driven(tmp_path, fresh, clock=clock) as d:
            page = await d.launch_to_plan(GREENBERG, appointment=GREENBERG_VISIT)
            token = csrf(page)
            tsh = identifier_for(page, "TSH on thyroid hormone replacement")
            clock.offset = 8 * 3600 + 1  # the default session lifetime is 8 h
            acted = await d.app.post("/actions/propose", data={
                "csrf_token": token, "identifier": tsh, "appointment": GREENBERG_VISIT})
            assert acted.status_code == 401
            assert "Session ended" in text(acted)
            late = await d.app.get("/plan")
            assert late.status_code == 401
            assert "launch the app again from the EHR" in text(late)
            clock.offset = 0
            page = await d.launch_to_plan(GREENBERG, appointment=GREENBERG_VISIT)
            out = await d.app.post("/logout", data={"csrf_token": csrf(page)})
            assert out.status_code == 200 and "Signed out" in text(out)
            # the cookie alone opens nothing now
            assert (await d.app.get("/plan")).status_code == 401
        assert written(fresh, GREENBERG) == []
    run(go)


def test_another_patient_is_out_of_reach_of_a_patient_session(tmp_path: Path,
                                                              fresh: FhirTestServer) -> None:
    async def go() -> None:
        async with driven(tmp_path, fresh) as d:
            page = await d.launch_to_plan(GREENBERG, appointment=GREENBERG_VISIT)
            # the patient-level token reaches every patient on this server (Medplum's
            # patient/ scopes are not confined): previsit refuses by itself
            switched = await d.app.get("/plan", params={"appointment": LOPEZ_VISIT})
            assert switched.status_code == 403
            assert "Outside this patient's chart" in text(switched)
            lopez_page_identifier = "pv-0000"
            acted = await d.app.post("/actions/propose", data={
                "csrf_token": csrf(page), "identifier": lopez_page_identifier,
                "appointment": LOPEZ_VISIT})
            assert acted.status_code == 403
            # a second launch in the same browser (another chart): the first tab's form
            # cannot act on the new patient's session
            first_tab_tsh = identifier_for(page, "TSH on thyroid hormone replacement")
            await d.launch_to_plan(LOPEZ, appointment=LOPEZ_VISIT)
            stale = await d.app.post("/actions/propose", data={
                "csrf_token": csrf(page), "identifier": first_tab_tsh,
                "appointment": GREENBERG_VISIT})
            assert stale.status_code == 403
            assert "does not belong to this session" in text(stale)
            await d.launch_to_plan(GREENBERG, appointment=GREENBERG_VISIT)
            # the server answering with another patient's data is refused too
            fresh.admin.add_fault(method="GET", path="^Appointment/", status=200,
                                  body=search(fresh, "Appointment", patient=LOPEZ)[0])
            swapped = await d.app.get("/plan")
            assert swapped.status_code == 403
            assert "Outside this patient's chart" in text(swapped)
        assert written(fresh, LOPEZ) == [] and written(fresh, GREENBERG) == []
    run(go)


def test_narrower_scopes_show_a_read_only_plan_with_the_reason(tmp_path: Path,
                                                              fresh: FhirTestServer) -> None:
    async def go() -> None:
        async with driven(tmp_path, fresh) as d:
            launch = await d.ehr_launch(GREENBERG, appointment=GREENBERG_VISIT)
            scope = query_of(launch.headers["location"])["scope"]
            # Medplum's quirk: a wildcard read scope decides for every type
            narrowed = scope.replace("patient/Patient.rs", "patient/*.rs patient/Patient.rs")
            done = await d.callback(await d.authorize(launch, tamper={"scope": narrowed}))
            page = await d.app.get(done.headers["location"])
            seen = text(page)
            assert "Accept is unavailable: the EHR's authorization server applies the " \
                   "wildcard scope patient/*.rs to every resource type, so previsit may not " \
                   "write ServiceRequest (create and update)" in seen
            assert 'action="/actions/' not in page.text  # no action is offered
            tsh_row = next(r for r in page.text.split('<tr class="item')[1:]
                           if "TSH on thyroid" in r)
            assert "Actions unavailable (see above)" in tsh_row
            forced = await d.app.post("/actions/propose", data={
                "csrf_token": csrf(page), "identifier": "pv-x", "appointment": GREENBERG_VISIT})
            assert forced.status_code == 403
        assert written(fresh, GREENBERG) == []
    run(go)


def test_a_write_the_ehr_refuses_says_which_action_and_why(tmp_path: Path,
                                                          fresh: FhirTestServer) -> None:
    async def go() -> None:
        async with driven(tmp_path, fresh) as d:
            page = await d.launch_to_plan(GREENBERG, appointment=GREENBERG_VISIT)
            tsh = identifier_for(page, "TSH on thyroid hormone replacement")
            fresh.admin.add_fault(in_batch=True, interaction="create", path="^ServiceRequest",
                                  status=403, body={
                "resourceType": "OperationOutcome", "id": "forbidden", "issue": [
                    {"severity": "error", "code": "forbidden", "details": {"text": "Forbidden"}}]})
            refused = await d.app.post("/actions/propose", data={
                "csrf_token": csrf(page), "identifier": tsh, "appointment": GREENBERG_VISIT})
            assert refused.status_code == 403
            seen = text(refused)
            assert "Propose now is unavailable: the EHR refused the write" in seen
            assert "Nothing was changed." in seen
            assert "Susan Leah Greenberg" in seen  # the plan is still shown
        assert written(fresh, GREENBERG) == []
    run(go)


# --- embedding, standalone launch, the schedule, refresh ---------------------------------------


def test_the_launch_needs_no_cookie_and_framing_follows_the_configuration(
        tmp_path: Path, fresh: FhirTestServer) -> None:
    """Inside an EHR iframe the browser may drop the launch cookie: the state, kept on the
    server, carries the round trip; frame-ancestors names the configured EHR origins."""
    async def go() -> None:
        async with driven(tmp_path, fresh, frame_ancestors=["https://ehr.example.org"]) as d:
            answer = await d.authorize(await d.ehr_launch(GREENBERG,
                                                          appointment=GREENBERG_VISIT))
            d.app.cookies.clear()  # a third-party context that kept nothing
            done = await d.callback(answer)
            assert done.status_code == 303
            page = await d.app.get("/plan")
            assert page.status_code == 200
            csp = page.headers["content-security-policy"]
            assert "frame-ancestors https://ehr.example.org" in csp
            assert "x-frame-options" not in page.headers
    run(go)


def test_standalone_user_launch_opens_the_clinic_day_and_each_row_its_plan(
        tmp_path: Path, fresh: FhirTestServer) -> None:
    async def go() -> None:
        async with driven(tmp_path, fresh) as d:
            start = await d.app.get("/")
            assert "Open the clinic day (Test EHR)" in text(start)
            launch = await d.app.get("/standalone", params={"iss": fresh.base_url,
                                                            "level": "user"})
            scope = query_of(launch.headers["location"])["scope"].split()
            assert "launch" not in scope and "user/Appointment.rs" in scope
            done = await d.callback(await d.authorize(launch))
            assert done.headers["location"] == "/schedule"
            day = await d.app.get("/schedule", params={
                "date": "2026-12-01", "practitioner": "Practitioner/prac-okafor"})
            assert day.status_code == 200, text(day)
            seen = text(day)
            assert "Tue Dec 1, 2026" in seen and "Practitioner: Amara Okafor, MD" in seen
            links = re.findall(r'href="(/plan\?appointment=[^"]+)"', day.text)
            assert "/plan?appointment=appt-1201-0920-lopez" in links
            assert "/plan?appointment=appt-1201-0920-greenberg" not in links  # Whitfield's
            plan = await d.app.get("/plan?appointment=appt-1201-0920-lopez")
            assert plan.status_code == 200
            assert "María Elena López" in text(plan)
            assert "Appointment appt-1201-0920-lopez" in text(plan)
            # a patient-level page without a chosen appointment is not the schedule's job
            assert (await d.app.get("/plan")).status_code == 403
    run(go)


def test_standalone_patient_launch_plans_the_chosen_patient(tmp_path: Path,
                                                           fresh: FhirTestServer) -> None:
    async def go() -> None:
        async with driven(tmp_path, fresh) as d:
            launch = await d.app.get("/standalone", params={"iss": fresh.base_url,
                                                            "level": "patient"})
            assert "launch/patient" in query_of(launch.headers["location"])["scope"].split()
            done = await d.callback(await d.authorize(launch, patient=GREENBERG))
            page = await d.app.get(done.headers["location"])
            assert "Susan Leah Greenberg" in text(page)
            assert "Plan for the patient's next booked appointment" in text(page)
    run(go)


@pytest.fixture(scope="module")
def short_tokens() -> Iterator[FhirTestServer]:
    with ehr_server(APP_URL, token_ttl_s=30) as server:
        yield server


def test_the_refresh_token_is_used_when_the_access_token_runs_out(
        tmp_path: Path, short_tokens: FhirTestServer) -> None:
    async def go() -> None:
        async with driven(tmp_path, short_tokens) as d:
            await d.launch_to_plan(GREENBERG, appointment=GREENBERG_VISIT)
            issued = short_tokens.admin.stats()["tokens"]["by_grant"]
            # 30 s tokens are within the one-minute refresh margin: the next page refreshes
            page = await d.app.get("/plan")
            assert page.status_code == 200
            after = short_tokens.admin.stats()["tokens"]["by_grant"]
            assert after.get("refresh_token", 0) > issued.get("refresh_token", 0)
    run(go)


def test_an_encounter_launch_plans_the_encounters_appointment(tmp_path: Path,
                                                             fresh: FhirTestServer) -> None:
    fresh.admin.load({"resourceType": "Bundle", "type": "transaction", "entry": [{
        "resource": {"resourceType": "Encounter", "id": "enc-greenberg", "status": "arrived",
                     "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                               "code": "AMB"},
                     "subject": {"reference": f"Patient/{GREENBERG}"},
                     "appointment": [{"reference": f"Appointment/{GREENBERG_VISIT}"}]},
        "request": {"method": "PUT", "url": "Encounter/enc-greenberg"}}]})

    async def go() -> None:
        async with driven(tmp_path, fresh) as d:
            launch = await d.ehr_launch(GREENBERG, encounter="enc-greenberg")
            done = await d.callback(await d.authorize(launch))
            seen = text(await d.app.get(done.headers["location"]))
            assert "Plan for the appointment of the encounter the chart was opened from" in seen
            assert "Appointment appt-1201-0920-greenberg" in seen
    run(go)


def test_tokens_stay_out_of_the_browser_and_the_logs(tmp_path: Path, fresh: FhirTestServer,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    from previsit.web.keyring import load_keyring
    from previsit.web.store import Store

    async def go() -> tuple[str, list[str]]:
        async with driven(tmp_path, fresh) as d:
            page = await d.launch_to_plan(GREENBERG, appointment=GREENBERG_VISIT)
            tsh = identifier_for(page, "TSH on thyroid hormone replacement")
            await d.app.post("/actions/propose", data={
                "csrf_token": csrf(page), "identifier": tsh, "appointment": GREENBERG_VISIT})
            [session_id] = [v for k, v in d.app.cookies.items() if k == "previsit_session"]
            return session_id, [page.text, *d.app.cookies.values()]

    with caplog.at_level(logging.DEBUG):
        session_id, seen = run(go)
    store = Store(tmp_path / "state.sqlite3",
                  load_keyring(file=tmp_path / "web.keys", env_name=None, env={}))
    session = store.session(session_id)
    assert session is not None
    tokens = [session.tokens.access_token.reveal()]
    if session.tokens.refresh_token is not None:
        tokens.append(session.tokens.refresh_token.reveal())
    raw = b"".join(path.read_bytes() for path in tmp_path.glob("state.sqlite3*"))
    for token in tokens:
        assert token not in caplog.text
        assert all(token not in item for item in seen)
        assert token.encode() not in raw  # encrypted at rest
