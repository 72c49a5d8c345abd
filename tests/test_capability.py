"""What a server says it can do (CapabilityStatement, SMART configuration) and what
`previsit config check` tells a person about it: one line per thing that will or won't work.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Generator
from typing import Any

import httpx
import pytest
import respx
from builders import capability_statement, json_response

from previsit.capability import (
    CheckLine,
    assess,
    assess_scopes,
    check_access,
    check_server,
    parse_capabilities,
    verify_create,
)
from previsit.errors import AuthError
from previsit.scopes import run_permissions

BASE = "https://ehr.example/fhir/R4"
SMART = {"token_endpoint": "https://ehr.example/token",
         "token_endpoint_auth_methods_supported": ["private_key_jwt"],
         "token_endpoint_auth_signing_alg_values_supported": ["RS384"]}


def levels(lines: list[Any], topic: str) -> list[str]:
    return [line.level for line in lines if line.topic == topic]


def said(lines: list[CheckLine], topic: str) -> list[str]:
    """The lines about one topic, as printed."""
    return [str(line) for line in lines if line.topic == topic]


def resource(statement: dict[str, Any], rtype: str) -> dict[str, Any]:
    """The statement's entry for one resource type, to change in place."""
    entries: list[dict[str, Any]] = statement["rest"][0]["resource"]
    return next(e for e in entries if e["type"] == rtype)


def offering(statement: dict[str, Any], rtype: str, *interactions: str) -> dict[str, Any]:
    """The statement with `rtype` offering only these interactions."""
    resource(statement, rtype)["interaction"] = [{"code": c} for c in interactions]
    return statement


def verdicts(statement: dict[str, Any], smart: dict[str, Any] | None = None
             ) -> list[CheckLine]:
    return assess(parse_capabilities(statement), smart)


# --- parse_capabilities -----------------------------------------------------------------


def test_the_server_mode_rest_entry_is_read() -> None:
    client = {"mode": "client", "interaction": [{"code": "batch"}],
              "resource": [{"type": "Questionnaire", "interaction": [{"code": "read"}]}]}
    server = {"mode": "server", "interaction": [{"code": "transaction"}],
              "resource": [{"type": "Patient", "interaction": [{"code": "read"}]}]}
    caps = parse_capabilities({"resourceType": "CapabilityStatement",
                               "rest": [client, server]})
    assert caps.system_interactions == frozenset({"transaction"})
    assert not caps.batch and caps.transaction
    assert set(caps.resources) == {"Patient"}
    assert caps.can("Patient", "read") and not caps.can("Questionnaire", "read")


def test_a_rest_entry_without_mode_counts_as_the_server() -> None:
    caps = parse_capabilities({"resourceType": "CapabilityStatement",
                               "rest": [{"interaction": [{"code": "batch"}]}]})
    assert caps.batch


def test_search_parameters_absent_are_unknown_and_listed_are_known() -> None:
    statement = capability_statement(search_params=("date", "status"))
    del resource(statement, "Patient")["searchParam"]
    resource(statement, "Condition")["searchParam"] = []
    caps = parse_capabilities(statement)
    assert caps.searchable("Appointment", "date") is True
    assert caps.searchable("Appointment", "practitioner") is False
    assert caps.searchable("Patient", "identifier") is None  # none listed: may still work
    assert caps.searchable("Condition", "patient") is None  # an empty list says as little
    assert caps.searchable("Basic", "code") is False  # a type not offered at all
    assert caps.resources["Appointment"].search_params == frozenset({"date", "status"})


def test_search_include_wildcard_listed_and_absent() -> None:
    statement = capability_statement()
    resource(statement, "MedicationRequest")["searchInclude"] = ["*"]
    resource(statement, "Observation")["searchInclude"] = ["Observation:patient"]
    caps = parse_capabilities(statement)
    assert caps.includes("MedicationRequest", "MedicationRequest:medication") is True
    assert caps.includes("Observation", "Observation:patient") is True
    assert caps.includes("Observation", "Observation:performer") is False
    assert caps.includes("Condition", "Condition:patient") is None  # nothing listed
    assert caps.includes("Basic", "Basic:subject") is None


def test_conditional_flags_are_true_only_when_stated_true() -> None:
    statement = capability_statement(conditional=False)
    resource(statement, "ServiceRequest")["conditionalCreate"] = True
    resource(statement, "DocumentReference")["conditionalUpdate"] = True
    resource(statement, "Observation")["conditionalCreate"] = "true"  # a string is not a yes
    del resource(statement, "Patient")["conditionalCreate"]
    caps = parse_capabilities(statement)
    assert caps.resources["ServiceRequest"].conditional_create is True
    assert caps.resources["ServiceRequest"].conditional_update is False
    assert caps.resources["DocumentReference"].conditional_update is True
    assert caps.resources["DocumentReference"].conditional_create is False
    assert caps.resources["Observation"].conditional_create is False
    assert caps.resources["Patient"].conditional_create is False


def test_fhir_version_and_software_name() -> None:
    statement = capability_statement(version="4.0.1")
    statement["software"] = {"name": "Medplum", "version": "3.2.0"}
    caps = parse_capabilities(statement)
    assert (caps.fhir_version, caps.software, caps.r4) == ("4.0.1", "Medplum", True)
    assert parse_capabilities(capability_statement(version="4.0.0")).r4
    assert not parse_capabilities(capability_statement(version="4.3.0")).r4
    bare = parse_capabilities({"resourceType": "CapabilityStatement", "fhirVersion": 4,
                               "software": "HAPI"})
    assert (bare.fhir_version, bare.software, bare.r4) == (None, None, False)
    assert bare.resources == {} and bare.system_interactions == frozenset()


def test_malformed_entries_are_skipped() -> None:
    statement = {"resourceType": "CapabilityStatement", "rest": [{"mode": "server",
        "interaction": ["batch", {"code": 7}, {"code": "transaction"}],
        "resource": ["Patient", {"interaction": [{"code": "read"}]},
                     {"type": "Patient", "interaction": [{"code": "read"}, {}],
                      "searchParam": [{"name": "_id"}, "name", {"name": 3}]}]}]}
    caps = parse_capabilities(statement)
    assert caps.system_interactions == frozenset({"transaction"})
    assert set(caps.resources) == {"Patient"}
    assert caps.resources["Patient"].interactions == frozenset({"read"})
    assert caps.resources["Patient"].search_params == frozenset({"_id"})


def test_anything_but_a_capability_statement_is_refused() -> None:
    with pytest.raises(ValueError, match="not a CapabilityStatement"):
        parse_capabilities({"resourceType": "OperationOutcome", "issue": []})


@pytest.mark.parametrize("statement", [
    {"resourceType": "CapabilityStatement", "rest": 5},
    {"resourceType": "CapabilityStatement", "rest": [{"mode": "server", "interaction": 5}]},
    {"resourceType": "CapabilityStatement", "rest": [{"mode": "server", "resource": [
        {"type": "Patient", "searchParam": True}]}]},
])
def test_a_malformed_statement_is_a_value_error_or_read_as_far_as_it_goes(
        statement: dict[str, Any]) -> None:
    # Either answer is usable: callers treat ValueError as "no usable statement".
    with contextlib.suppress(ValueError):
        parse_capabilities(statement)


# --- assess -----------------------------------------------------------------------------


def test_capability_assessment_of_a_capable_server() -> None:
    lines = assess(parse_capabilities(capability_statement()), {
        "token_endpoint": "https://ehr.example/token",
        "token_endpoint_auth_methods_supported": ["private_key_jwt"],
        "token_endpoint_auth_signing_alg_values_supported": ["RS384"]})
    assert {line.level for line in lines} <= {"ok", "info"}, [str(x) for x in lines]
    assert "[ok] sheets: sheets can be stored as DocumentReferences" in "\n".join(map(str, lines))
    assert any("token endpoint https://ehr.example/token" in line.message for line in lines)


def test_capability_assessment_says_what_will_not_work() -> None:
    statement = capability_statement(batch=False, conditional=False, version="5.0.0",
                                     search_params=("date", "status", "patient"))
    statement["rest"][0]["interaction"] = []
    lines = assess(parse_capabilities(statement), None)
    text = "\n".join(map(str, lines))
    assert "[fail] FHIR version: the server speaks FHIR 5.0.0" in text
    assert "[warn] batch: batch is not listed" in text
    assert "[fail] write-back: transaction is not listed" in text
    assert "[fail] write-back: conditional create on ServiceRequest is not listed" in text
    assert "[warn] appointments: filtering by practitioner will not work" in text
    assert "[warn] sheets: conditional update on DocumentReference is not listed" in text
    assert levels(lines, "SMART") == ["info"]


def test_a_capable_server_in_full() -> None:
    assert [str(line) for line in verdicts(capability_statement(), SMART)] == [
        "[ok] FHIR version: 4.0.1 (R4), the version previsit speaks",
        "[ok] appointments: appointments can be searched by date and status",
        "[ok] records: Patient read is supported",
        "[ok] batch: batch is supported: each patient's record is read in one round trip "
        "(more only for long histories)",
        "[ok] write-back: transaction is supported (each visit's proposals in transactions of "
        "source.max_transaction_entries at most)",
        "[ok] write-back: conditional create on ServiceRequest: re-runs cannot duplicate "
        "proposals",
        "[ok] write-back: conditional create on MedicationRequest: re-runs cannot duplicate "
        "proposals",
        "[ok] sheets: sheets can be stored as DocumentReferences (conditional update: one "
        "per visit, replaced on a re-run)",
        "[ok] SMART: token endpoint https://ehr.example/token",
        "[info] SMART: signing algorithms accepted: RS384"]


@pytest.mark.parametrize(("version", "line"), [
    ("4.0.0", "[ok] FHIR version: 4.0.0 (R4), the version previsit speaks"),
    ("5.0.0", "[fail] FHIR version: the server speaks FHIR 5.0.0; previsit needs R4 (4.0.x) "
              "— point source.base_url at the server's R4 endpoint"),
    ("3.0.2", "[fail] FHIR version: the server speaks FHIR 3.0.2; previsit needs R4 (4.0.x) "
              "— point source.base_url at the server's R4 endpoint"),
    (None, "[warn] FHIR version: the server does not state its FHIR version; previsit "
           "assumes R4 (4.0.x)"),
])
def test_fhir_version(version: str | None, line: str) -> None:
    statement = capability_statement()
    statement["fhirVersion"] = version
    assert said(verdicts(statement), "FHIR version") == [line]


def test_without_appointment_search_no_visit_can_be_planned() -> None:
    statement = offering(capability_statement(), "Appointment", "read")
    assert said(verdicts(statement), "appointments") == [
        "[fail] appointments: the server does not offer Appointment search: no visits can "
        "be planned"]


@pytest.mark.parametrize(("params", "line"), [
    (("status", "practitioner", "location", "service-type"),
     "[fail] appointments: Appointment search lacks date: the visit window cannot be read"),
    (("practitioner", "location", "service-type"),
     "[fail] appointments: Appointment search lacks date, status: the visit window cannot "
     "be read"),
])
def test_appointment_search_without_date_or_status(params: tuple[str, ...],
                                                   line: str) -> None:
    assert said(verdicts(capability_statement(search_params=params)),
                "appointments") == [line]


@pytest.mark.parametrize(("param", "line"), [
    ("practitioner", "[warn] appointments: filtering by practitioner will not work (the "
     "server does not list Appointment?practitioner); leave planning.practitioners empty"),
    ("location", "[warn] appointments: filtering by location will not work (the server "
     "does not list Appointment?location); leave planning.locations empty"),
    ("service-type", "[warn] appointments: filtering by service type will not work (the "
     "server does not list Appointment?service-type); leave planning.service_types empty"),
])
def test_each_filter_the_server_does_not_list_is_a_warning(param: str, line: str) -> None:
    params = tuple(p for p in ("date", "status", "practitioner", "location", "service-type")
                   if p != param)
    assert said(verdicts(capability_statement(search_params=params)), "appointments") == [
        "[ok] appointments: appointments can be searched by date and status", line]


def test_search_parameters_not_listed_at_all_are_information() -> None:
    statement = capability_statement()
    del resource(statement, "Appointment")["searchParam"]
    assert said(verdicts(statement), "appointments") == [
        "[ok] appointments: appointments can be searched by date and status",
        "[info] appointments: the server does not list its Appointment search parameters; "
        "filtering by practitioner may be refused",
        "[info] appointments: the server does not list its Appointment search parameters; "
        "filtering by location may be refused",
        "[info] appointments: the server does not list its Appointment search parameters; "
        "filtering by service type may be refused"]


def test_without_patient_read_no_record_can_be_read() -> None:
    statement = offering(capability_statement(), "Patient", "search-type")
    assert said(verdicts(statement), "records") == [
        "[fail] records: Patient read is not listed: no patient record can be read"]


@pytest.mark.parametrize("rtype", ["Condition", "MedicationRequest", "Observation",
                                   "Procedure", "Immunization", "ServiceRequest"])
def test_each_record_type_without_search_is_a_failure(rtype: str) -> None:
    statement = offering(capability_statement(), rtype, "read", "create", "update")
    assert said(verdicts(statement), "records") == [
        "[ok] records: Patient read is supported",
        f"[fail] records: {rtype} search is not offered: records will lack {rtype} data and "
        "rules that need it will say 'unknown'"]


def test_a_record_type_that_cannot_be_searched_by_patient_is_a_failure() -> None:
    statement = capability_statement()
    resource(statement, "Immunization")["searchParam"] = [{"name": "date"}]
    assert said(verdicts(statement), "records") == [
        "[ok] records: Patient read is supported",
        "[fail] records: Immunization?patient= is not supported: records will lack "
        "Immunization data"]


def test_medication_include_not_among_those_listed_is_a_warning() -> None:
    statement = capability_statement()
    resource(statement, "MedicationRequest")["searchInclude"] = ["MedicationRequest:patient"]
    assert said(verdicts(statement), "records") == [
        "[ok] records: Patient read is supported",
        "[warn] records: MedicationRequest?_include=MedicationRequest:medication is not "
        "listed: medications given by reference may be unnamed or the search refused"]


def test_without_batch_records_are_slower_but_work() -> None:
    assert said(verdicts(capability_statement(batch=False)), "batch") == [
        "[warn] batch: batch is not listed: each record takes 10 or more requests (slower, "
        "still works)"]


def test_without_transaction_write_back_fails() -> None:
    statement = capability_statement()
    statement["rest"][0]["interaction"] = [{"code": "batch"}]
    assert said(verdicts(statement), "write-back")[0] == (
        "[fail] write-back: transaction is not listed: --write-back will not work (planning "
        "and sheets still do)")


@pytest.mark.parametrize("rtype", ["ServiceRequest", "MedicationRequest"])
def test_without_conditional_create_write_back_could_duplicate(rtype: str) -> None:
    statement = capability_statement()
    resource(statement, rtype)["conditionalCreate"] = False
    assert (f"[fail] write-back: conditional create on {rtype} is not listed: a re-run could "
            "write duplicate proposals, so do not use --write-back here"
            ) in said(verdicts(statement), "write-back")


def test_without_create_a_proposal_kind_cannot_be_written() -> None:
    statement = offering(capability_statement(), "MedicationRequest", "read", "search-type")
    assert said(verdicts(statement), "write-back")[2] == (
        "[fail] write-back: MedicationRequest create is not listed: proposals of this kind "
        "cannot be written")


def test_document_reference_without_conditional_update_is_a_warning() -> None:
    statement = capability_statement()
    resource(statement, "DocumentReference")["conditionalUpdate"] = False
    assert said(verdicts(statement), "sheets") == [
        "[warn] sheets: conditional update on DocumentReference is not listed: "
        "--write-sheets could store a visit's sheet twice; do not use it here"]


def test_document_reference_without_update_is_a_warning() -> None:
    statement = offering(capability_statement(), "DocumentReference", "create", "read")
    assert said(verdicts(statement), "sheets") == [
        "[warn] sheets: DocumentReference update is not listed: --write-sheets will not "
        "work"]


@pytest.mark.parametrize(("smart", "lines"), [
    (None, ["[info] SMART: no .well-known/smart-configuration: fine for auth.method none or "
            "bearer; smart-backend then needs auth.token_url"]),
    ({**SMART, "token_endpoint": None},
     ["[warn] SMART: the SMART configuration has no token_endpoint; set auth.token_url",
      "[info] SMART: signing algorithms accepted: RS384"]),
    ({**SMART, "token_endpoint_auth_methods_supported": ["client_secret_basic",
                                                          "client_secret_post"]},
     ["[ok] SMART: token endpoint https://ehr.example/token",
      "[warn] SMART: private_key_jwt is not among the token endpoint's auth methods "
      "(client_secret_basic, client_secret_post): smart-backend may be refused",
      "[info] SMART: signing algorithms accepted: RS384"]),
    ({**SMART, "token_endpoint_auth_signing_alg_values_supported": ["RS256"]},
     ["[ok] SMART: token endpoint https://ehr.example/token",
      "[warn] SMART: the token endpoint accepts RS256, neither RS384 nor ES384"]),
    ({**SMART, "token_endpoint_auth_signing_alg_values_supported": ["RS256", "ES384",
                                                                     "RS384"]},
     ["[ok] SMART: token endpoint https://ehr.example/token",
      "[info] SMART: signing algorithms accepted: RS384, ES384"]),
    # Nothing said about methods or algorithms: nothing to warn about.
    ({"token_endpoint": "https://ehr.example/token"},
     ["[ok] SMART: token endpoint https://ehr.example/token"]),
])
def test_smart_configuration(smart: dict[str, Any] | None, lines: list[str]) -> None:
    assert said(verdicts(capability_statement(), smart), "SMART") == lines


def test_a_malformed_smart_configuration_does_not_stop_the_check() -> None:
    lines = verdicts(capability_statement(),
                     {**SMART, "token_endpoint_auth_methods_supported": 5})
    assert said(lines, "SMART")[0] == "[ok] SMART: token endpoint https://ehr.example/token"


# --- check_server -----------------------------------------------------------------------


class Bearer(httpx.Auth):
    """The configured credentials, as the CLI plugs them in (or a token endpoint that
    refuses, with `refuse`)."""

    def __init__(self, refuse: bool = False) -> None:
        self.refuse = refuse

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response,
                                                                None]:
        if self.refuse:
            raise AuthError("the token endpoint refused the client assertion (HTTP 400)")
        request.headers["Authorization"] = "Bearer t0k"
        yield request


def server(statement: Any = None, *, smart: Any = None,
           probe: httpx.Response | Exception | None = None) -> respx.MockRouter:
    """A mocked FHIR server: /metadata, the SMART configuration (404 unless given) and
    Appointment search (200 unless `probe` says otherwise)."""
    router = respx.MockRouter(base_url=BASE, assert_all_called=False)
    router.get("/metadata").mock(return_value=json_response(
        capability_statement() if statement is None else statement))
    router.get("/.well-known/smart-configuration").mock(return_value=(
        httpx.Response(404) if smart is None else httpx.Response(200, json=smart)))
    answer = json_response({"resourceType": "Bundle", "type": "searchset"}) \
        if probe is None else probe
    route = router.get("/Appointment")
    if isinstance(answer, Exception):
        route.mock(side_effect=answer)
    else:
        route.mock(return_value=answer)
    return router


def check(router: respx.MockRouter, *, auth: httpx.Auth | None = None,
          probe: bool = True, base: str = BASE) -> list[CheckLine]:
    async def checked() -> list[CheckLine]:
        async with httpx.AsyncClient(transport=httpx.MockTransport(router.async_handler),
                                     auth=auth) as client:
            return await check_server(client, base, probe=probe)

    return asyncio.run(checked())


def first(lines: list[CheckLine]) -> tuple[str, str, str]:
    return lines[0].level, lines[0].topic, lines[0].message


def test_check_server_reads_metadata_and_smart_config_and_probes_credentials() -> None:
    router = respx.MockRouter(base_url=BASE, assert_all_called=False)
    router.get("/metadata").mock(return_value=json_response(capability_statement()))
    router.get("/.well-known/smart-configuration").mock(return_value=httpx.Response(
        200, json={"token_endpoint": "https://ehr.example/token"}))
    router.get("/Appointment").mock(return_value=json_response(
        {"resourceType": "OperationOutcome",
         "issue": [{"severity": "error", "code": "login", "diagnostics": "no"}]}, 401))

    async def checked() -> list[Any]:
        async with httpx.AsyncClient(transport=httpx.MockTransport(router.async_handler)) as c:
            return await check_server(c, BASE)

    lines = asyncio.run(checked())
    assert lines[0].level == "ok" and lines[0].topic == "server"
    assert levels(lines, "credentials") == ["fail"]
    assert "refused the configured credentials" in lines[-1].message


def test_a_capability_statement_larger_than_the_cap_is_not_read() -> None:
    router = respx.MockRouter(base_url=BASE, assert_all_called=False)
    router.get("/metadata").mock(return_value=httpx.Response(
        200, content=b"{" + b" " * 5000 + b"}", headers={"Content-Type": "application/json"}))

    async def checked() -> list[CheckLine]:
        async with httpx.AsyncClient(
                transport=httpx.MockTransport(router.async_handler)) as client:
            return await check_server(client, BASE, max_bytes=1000)

    lines = asyncio.run(checked())
    assert len(lines) == 1 and (lines[0].level, lines[0].topic) == ("fail", "server")
    assert "larger than source.max_response_bytes (1,000 bytes)" in lines[0].message


def test_check_server_on_an_unreachable_url_is_one_failing_line() -> None:
    router = respx.MockRouter(base_url=BASE)
    router.get("/metadata").mock(side_effect=httpx.ConnectError("refused"))

    async def checked() -> list[Any]:
        async with httpx.AsyncClient(transport=httpx.MockTransport(router.async_handler)) as c:
            return await check_server(c, BASE)

    lines = asyncio.run(checked())
    assert [(line.level, line.topic) for line in lines] == [("fail", "server")]
    assert "cannot reach" in lines[0].message


def test_public_documents_are_read_without_credentials_and_the_probe_with_them() -> None:
    statement = capability_statement()
    statement["software"] = {"name": "Medplum"}
    router = server(statement, smart=SMART)
    lines = check(router, auth=Bearer(), base=f"{BASE}/")
    assert first(lines) == ("ok", "server", f"reached {BASE} (Medplum)")
    assert str(lines[-1]) == "[ok] credentials: an authenticated search succeeded"
    sent = {c.request.url.path.rsplit("/", 1)[-1]: c.request for c in router.calls}
    assert "Authorization" not in sent["metadata"].headers
    assert "Authorization" not in sent["smart-configuration"].headers
    assert sent["Appointment"].headers["Authorization"] == "Bearer t0k"
    assert dict(sent["Appointment"].url.params) == {"_count": "1"}
    assert sent["metadata"].headers["Accept"] == "application/fhir+json"


@pytest.mark.parametrize("status", [401, 403])
def test_a_protected_metadata_is_read_again_with_credentials(status: int) -> None:
    router = server()
    route = router.get("/metadata").mock(side_effect=[
        json_response({"resourceType": "OperationOutcome", "issue": []}, status),
        json_response(capability_statement())])
    lines = check(router, auth=Bearer())
    assert first(lines) == ("ok", "server", f"reached {BASE}")
    assert route.call_count == 2
    assert "Authorization" not in route.calls[0].request.headers
    assert route.calls[1].request.headers["Authorization"] == "Bearer t0k"


def test_metadata_refused_even_with_credentials_is_one_failing_line() -> None:
    router = server()
    router.get("/metadata").mock(return_value=json_response(
        {"resourceType": "OperationOutcome",
         "issue": [{"severity": "error", "code": "login", "diagnostics": "Unauthorized"}]},
        401))
    assert [str(line) for line in check(router, auth=Bearer())] == [
        "[fail] server: HTTP 401 Unauthorized on GET metadata: error (login): Unauthorized: "
        "this does not look like a FHIR server's base URL"]


def test_credentials_that_cannot_be_obtained_for_metadata_are_one_failing_line() -> None:
    router = server()
    router.get("/metadata").mock(return_value=httpx.Response(401))
    assert [str(line) for line in check(router, auth=Bearer(refuse=True))] == [
        f"[fail] server: {BASE}/metadata: the token endpoint refused the client assertion "
        "(HTTP 400)"]


def test_metadata_not_found_is_one_failing_line() -> None:
    router = server()
    router.get("/metadata").mock(return_value=httpx.Response(
        404, text="<html>Not Found</html>", headers={"Content-Type": "text/html"}))
    assert [str(line) for line in check(router)] == [
        "[fail] server: HTTP 404 Not Found on GET metadata (the server answered with "
        "text/html, not FHIR JSON): this does not look like a FHIR server's base URL"]


@pytest.mark.parametrize("answer", [
    httpx.Response(200, text="<html>Welcome to nginx</html>",
                   headers={"Content-Type": "text/html"}),
    json_response({"resourceType": "Bundle", "type": "searchset"}),
    json_response(["not", "an", "object"]),
])
def test_metadata_that_is_not_a_capability_statement_is_one_failing_line(
        answer: httpx.Response) -> None:
    router = server()
    router.get("/metadata").mock(return_value=answer)
    assert [str(line) for line in check(router)] == [
        f"[fail] server: {BASE}/metadata is not a CapabilityStatement: this does not look "
        "like a FHIR server's base URL"]


def test_a_malformed_capability_statement_does_not_crash_the_check() -> None:
    lines = check(server({"resourceType": "CapabilityStatement", "rest": 5}))
    assert lines[0].topic == "server"


def test_an_unreadable_smart_configuration_counts_as_none() -> None:
    router = server()
    router.get("/.well-known/smart-configuration").mock(side_effect=httpx.ReadTimeout("slow"))
    assert said(check(router), "SMART") == [
        "[info] SMART: no .well-known/smart-configuration: fine for auth.method none or "
        "bearer; smart-backend then needs auth.token_url"]


@pytest.mark.parametrize(("probe", "line"), [
    (json_response({"resourceType": "Bundle", "type": "searchset"}),
     "[ok] credentials: an authenticated search succeeded"),
    (json_response({"resourceType": "OperationOutcome", "issue": [
        {"severity": "error", "code": "login", "diagnostics": "Invalid token"}]}, 401),
     "[fail] credentials: HTTP 401 Unauthorized on GET Appointment?_count=…: error (login): "
     "Invalid token: the server refused the configured credentials"),
    (httpx.Response(403), "[fail] credentials: HTTP 403 Forbidden on GET Appointment?_count=…: "
                          "the server refused the configured credentials"),
    (json_response({"resourceType": "OperationOutcome", "issue": [
        {"severity": "error", "code": "exception", "diagnostics": "boom"}]}, 500),
     "[warn] credentials: HTTP 500 Internal Server Error on GET Appointment?_count=…: "
     "error (exception): boom"),
    (httpx.ConnectError("refused"),
     f"[fail] credentials: cannot reach {BASE}: ConnectError: refused"),
])
def test_the_credentials_probe(probe: httpx.Response | Exception, line: str) -> None:
    lines = check(server(probe=probe))
    assert said(lines, "credentials") == [line]
    assert lines[-1].topic == "credentials"


def test_credentials_the_token_endpoint_refuses_fail_the_probe() -> None:
    lines = check(server(), auth=Bearer(refuse=True))
    assert said(lines, "credentials") == [
        "[fail] credentials: the token endpoint refused the client assertion (HTTP 400)"]


def test_without_the_probe_no_authenticated_request_is_made() -> None:
    router = server()
    lines = check(router, probe=False)
    assert levels(lines, "credentials") == []
    assert [c.request.url.path for c in router.calls] == [
        "/fhir/R4/metadata", "/fhir/R4/.well-known/smart-configuration"]


# --- the credentials' permissions ------------------------------------------------------------


RUN = run_permissions(sheets=False)
RUN_SCOPE = ("system/Appointment.rs system/Patient.rs system/Condition.rs "
             "system/MedicationRequest.crus system/Medication.rs system/Observation.rs "
             "system/Procedure.rs system/Immunization.rs system/ServiceRequest.crus "
             "system/Encounter.rs system/MedicationDispense.rs system/MedicationStatement.rs")


def test_a_grant_of_what_the_run_asks_for_is_green() -> None:
    assert [str(line) for line in assess_scopes(RUN_SCOPE, RUN)] == [
        "[ok] scopes: the token grants every permission the run needs (12 resource types)"]


def test_each_missing_permission_is_a_failed_line_naming_the_scope() -> None:
    # The old default: read everything, v1 writes (Medplum: .write grants nothing).
    granted = "system/*.read system/ServiceRequest.write system/MedicationRequest.write"
    lines = assess_scopes(granted, run_permissions(sheets=True))
    assert [str(line) for line in lines] == [
        "[fail] scopes: system/DocumentReference.cu is not granted: storing planning sheets "
        f"will be refused (granted: {granted})",
        "[warn] scopes: system/ServiceRequest.write, system/MedicationRequest.write: SMART v1 "
        ".write scopes grant nothing on some servers (Medplum); set auth.scope_version = "
        "\"v2\" (the default) or ask for v2 scopes"]


def test_a_read_only_grant_fails_both_proposal_kinds() -> None:
    lines = assess_scopes("system/*.rs", RUN)
    assert [(line.level, line.message.split(" is not granted")[0]) for line in lines] == [
        ("fail", "system/MedicationRequest.cu"), ("fail", "system/ServiceRequest.cu")]
    assert "writing renewal proposals will be refused" in lines[0].message


def test_only_the_missing_letters_are_named() -> None:
    granted = RUN_SCOPE.replace("system/ServiceRequest.crus", "system/ServiceRequest.crs")
    (line,) = assess_scopes(granted, RUN)
    assert line.message.startswith("system/ServiceRequest.u is not granted")


def test_a_static_token_says_nothing_about_its_scope() -> None:
    (line,) = assess_scopes(None, RUN)
    assert (line.level, line.topic) == ("info", "scopes")


def searchset(*resources: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "searchset",
            "entry": [{"resource": r} for r in resources]}


OURS = {"resourceType": "ServiceRequest", "id": "sr-9", "status": "draft",
        "intent": "proposal", "subject": {"reference": "Patient/p1"},
        "identifier": [{"system": "urn:previsit:proposal", "value": "pv-1"}],
        "meta": {"versionId": "2"}}


def verify(router: respx.MockRouter, rtype: str = "ServiceRequest") -> CheckLine:
    need = next(p for p in run_permissions(sheets=True) if p.resource_type == rtype)

    async def checked() -> CheckLine:
        async with httpx.AsyncClient(transport=httpx.MockTransport(router.async_handler)) as c:
            return await verify_create(c, BASE, need, "urn:previsit:proposal")

    return asyncio.run(checked())


def test_writing_is_verified_by_a_conditional_create_matching_one_of_ours() -> None:
    router = respx.MockRouter(base_url=BASE, assert_all_called=False)
    search = router.get("/ServiceRequest").mock(return_value=json_response(searchset(OURS)))
    create = router.post("/ServiceRequest").mock(return_value=json_response(OURS))
    line = verify(router)
    assert str(line) == ("[ok] write check: creating ServiceRequest is allowed (a conditional "
                         "create matched an existing one: nothing was written)")
    assert search.calls[0].request.url.params["identifier"] == "urn:previsit:proposal|"
    sent = create.calls[0].request
    assert sent.headers["If-None-Exist"] == "identifier=urn:previsit:proposal|pv-1"
    assert "id" not in json.loads(sent.content) and "meta" not in json.loads(sent.content)


def test_without_one_of_ours_any_resource_of_the_type_is_matched_by_id() -> None:
    router = respx.MockRouter(base_url=BASE, assert_all_called=False)
    theirs = {**OURS, "id": "sr-1", "identifier": []}
    router.get("/ServiceRequest").mock(side_effect=[json_response(searchset()),
                                                    json_response(searchset(theirs))])
    create = router.post("/ServiceRequest").mock(return_value=json_response(theirs))
    assert verify(router).level == "ok"
    assert create.calls[0].request.headers["If-None-Exist"] == "_id=sr-1"


def test_a_refused_create_is_a_failed_line() -> None:
    router = respx.MockRouter(base_url=BASE, assert_all_called=False)
    router.get("/ServiceRequest").mock(return_value=json_response(searchset(OURS)))
    router.post("/ServiceRequest").mock(return_value=json_response(
        {"resourceType": "OperationOutcome", "id": "forbidden", "issue": [
            {"severity": "error", "code": "forbidden", "details": {"text": "Forbidden"}}]}, 403))
    line = verify(router)
    assert line.level == "fail"
    assert line.message.startswith("creating ServiceRequest is refused (HTTP 403 Forbidden")
    assert line.message.endswith("writing lab, screening and immunization proposals will "
                                 "fail; the token needs system/ServiceRequest.crus (SMART v2)")


def test_with_nothing_to_match_no_create_is_tried() -> None:
    router = respx.MockRouter(base_url=BASE, assert_all_called=False)
    router.get("/DocumentReference").mock(return_value=json_response(searchset()))
    create = router.post("/DocumentReference")
    line = verify(router, "DocumentReference")
    assert (line.level, create.call_count) == ("info", 0)
    assert "no DocumentReference on the server to match without writing one" in line.message


def test_a_create_the_server_did_not_match_is_reported_for_deletion() -> None:
    router = respx.MockRouter(base_url=BASE, assert_all_called=False)
    router.get("/ServiceRequest").mock(return_value=json_response(searchset(OURS)))
    router.post("/ServiceRequest").mock(return_value=json_response({**OURS, "id": "new"}, 201))
    line = verify(router)
    assert line.level == "warn" and "created ServiceRequest/new: delete it" in line.message


def test_check_access_judges_the_grant_then_tries_each_written_type() -> None:
    router = respx.MockRouter(base_url=BASE, assert_all_called=False)
    router.get(path__regex=r"/(ServiceRequest|MedicationRequest)$").mock(
        return_value=json_response(searchset()))

    async def checked() -> list[CheckLine]:
        async with httpx.AsyncClient(transport=httpx.MockTransport(router.async_handler)) as c:
            return await check_access(c, BASE, None, RUN, {})

    lines = asyncio.run(checked())
    assert [(line.level, line.topic) for line in lines] == [
        ("info", "scopes"), ("info", "write check"), ("info", "write check")]
    assert [line.message.split(" not tried")[0] for line in lines[1:]] == [
        "creating MedicationRequest", "creating ServiceRequest"]
