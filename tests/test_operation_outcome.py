"""From a server's failed answer to one line a person can act on, without patient data.

OperationOutcome issues are reduced to severity, code, words and location (HAPI puts its
words in `diagnostics`, Medplum in `details.text`); request targets keep resource types,
operations and parameter names but never ids or query values.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from previsit.operation_outcome import (
    OutcomeIssue,
    describe_failure,
    describe_outcome,
    outcome_issues,
    redacted_target,
)

BASE = "https://ehr.example/fhir/R4"


def issue(severity: str = "error", code: str = "invalid", *, text: str | None = None,
          diagnostics: str | None = None, **extra: Any) -> dict[str, Any]:
    """One OperationOutcome.issue; `text` goes to details.text."""
    found: dict[str, Any] = {"severity": severity, "code": code, **extra}
    if text is not None:
        found["details"] = {"text": text}
    if diagnostics is not None:
        found["diagnostics"] = diagnostics
    return found


def outcome(*issues: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "OperationOutcome", "issue": list(issues)}


def failed(status: int, *, method: str = "GET", url: str = f"{BASE}/Patient/p1",
           body: Any = None, content: bytes | None = None,
           content_type: str | None = "application/fhir+json") -> httpx.Response:
    """A failed response to `method url`, with a JSON `body` or raw `content`."""
    headers = {"Content-Type": content_type} if content_type else {}
    request = httpx.Request(method, url)
    if body is not None:
        return httpx.Response(status, json=body, headers=headers, request=request)
    return httpx.Response(status, content=content or b"", headers=headers, request=request)


# --- redacted_target --------------------------------------------------------------------


def test_redacted_target_keeps_names_and_drops_values() -> None:
    assert redacted_target(f"{BASE}/Observation?patient=123&_count=100", BASE) == \
        "Observation?patient=…&_count=…"
    assert redacted_target(f"{BASE}/metadata", BASE) == "metadata"
    assert redacted_target(BASE, BASE) == "(base)"
    assert redacted_target(f"{BASE}/Patient/p1/_history/2", BASE) == "Patient/…/_history/…"
    assert redacted_target(f"{BASE}/Patient/p1/$everything?_count=5", BASE) == \
        "Patient/…/$everything?_count=…"


@pytest.mark.parametrize(("url", "shown"), [
    (f"{BASE}/Patient?identifier=MRN%7C000123456", "Patient?identifier=…"),
    (f"{BASE}/Patient?identifier=MRN|000123456&birthdate=1961-04-02",
     "Patient?identifier=…&birthdate=…"),
    (f"{BASE}/Observation?patient=123&code=http://loinc.org%7C4548-4",
     "Observation?patient=…&code=…"),
    # a repeated parameter is listed each time, so the shape of the query stays readable
    (f"{BASE}/Appointment?date=ge2026-12-01&date=lt2026-12-02", "Appointment?date=…&date=…"),
])
def test_query_values_are_never_shown(url: str, shown: str) -> None:
    assert redacted_target(url, BASE) == shown


@pytest.mark.parametrize(("url", "shown"), [
    (f"{BASE}/Patient/123", "Patient/…"),
    (f"{BASE}/Patient/$match", "Patient/$match"),
    (f"{BASE}/Observation/_search", "Observation/_search"),
    (f"{BASE}/Patient/123/_history", "Patient/…/_history"),
    (f"{BASE}/Observation/obs-9/_history/3", "Observation/…/_history/…"),
    (f"{BASE}/$export", "$export"),
    (f"{BASE}/", "(base)"),
])
def test_ids_in_paths_are_redacted_and_operations_and_history_kept(url: str,
                                                                   shown: str) -> None:
    assert redacted_target(url, BASE) == shown


def test_the_base_is_matched_with_or_without_a_trailing_slash_and_at_the_root() -> None:
    assert redacted_target(f"{BASE}/Patient/1", f"{BASE}/") == "Patient/…"
    assert redacted_target("https://ehr.example/Patient/1", "https://ehr.example") == \
        "Patient/…"


def test_a_url_outside_the_base_shows_only_its_first_segment() -> None:
    # Another host, or a path that merely starts with the base's text: nothing is stripped,
    # so every segment after the first is treated as a possible id.
    assert redacted_target("https://other.example/fhir/Patient/1?x=1", BASE) == \
        "fhir/…/…?x=…"
    assert redacted_target("https://ehr.example/fhir/R4x/Patient/1", BASE) == \
        "fhir/…/…/…"
    assert redacted_target("https://ehr.example/fhir/R4/Patient/1") == "fhir/…/…/…"


# --- outcome_issues ---------------------------------------------------------------------


def test_outcome_issues_prefer_errors_and_keep_text_and_diagnostics() -> None:
    issues = outcome_issues({"resourceType": "OperationOutcome", "issue": [
        {"severity": "information", "code": "informational", "details": {"text": "All OK"}},
        {"severity": "error", "code": "processing", "details": {"text": "Rejected"},
         "diagnostics": "duplicate identifier", "expression": ["ServiceRequest.identifier"]}]})
    assert issues[1].describe() == ("error (processing): Rejected — duplicate identifier "
                                    "[at ServiceRequest.identifier]")
    request = httpx.Request("POST", BASE)
    response = httpx.Response(409, json={"resourceType": "OperationOutcome",
                                         "issue": [issues_json(issues[0]), {
                                             "severity": "error", "code": "conflict",
                                             "diagnostics": "version conflict"}]},
                              request=request)
    assert describe_failure(response, BASE) == (
        "HTTP 409 Conflict on POST (base): error (conflict): version conflict")


def issues_json(issue: Any) -> dict[str, Any]:
    return {"severity": issue.severity, "code": issue.code, "details": {"text": issue.text}}


@pytest.mark.parametrize(("details_text", "diagnostics", "words"), [
    # HAPI: the words are in diagnostics only
    (None, "HAPI-0524: Unknown search parameter \"foo\"",
     "HAPI-0524: Unknown search parameter \"foo\""),
    # Medplum: the words are in details.text only
    ("Invalid search operator", None, "Invalid search operator"),
    # both, different: both shown, details first
    ("Rejected", "duplicate identifier", "Rejected — duplicate identifier"),
    # both the same, or diagnostics already inside the text: shown once
    ("Not found", "Not found", "Not found"),
    ("Resource Patient/1 not found", "not found", "Resource Patient/1 not found"),
    # surrounding blanks are not words
    ("  ", " timed out ", "timed out"),
])
def test_details_text_and_diagnostics(details_text: str | None, diagnostics: str | None,
                                      words: str) -> None:
    (found,) = outcome_issues(outcome(issue(text=details_text, diagnostics=diagnostics)))
    assert found.text == words


def test_without_text_or_diagnostics_the_first_coding_speaks() -> None:
    coded = issue(details={"coding": [
        {"system": "http://hl7.org/fhir/operation-outcome", "code": "MSG_NO_MATCH",
         "display": "No Resource found matching the query"}]})
    code_only = issue(details={"coding": [
        {"system": "http://hl7.org/fhir/operation-outcome", "code": "MSG_DELETED"}]})
    bare = issue()
    assert [i.text for i in outcome_issues(outcome(coded, code_only, bare))] == [
        "No Resource found matching the query", "MSG_DELETED", None]


def test_expression_is_preferred_to_the_deprecated_location() -> None:
    both = issue(diagnostics="bad", expression=["Patient.birthDate"],
                 location=["/f:Patient/f:birthDate"])
    location_only = issue(diagnostics="bad", location=["/f:Patient/f:gender"])
    several = issue(diagnostics="bad", expression=["Patient.name[0]", 7, "Patient.name[1]"])
    assert [i.expression for i in outcome_issues(outcome(both, location_only, several))] == [
        ("Patient.birthDate",), ("/f:Patient/f:gender",),
        ("Patient.name[0]", "Patient.name[1]")]
    assert outcome_issues(outcome(several))[0].describe() == \
        "error (invalid): bad [at Patient.name[0], Patient.name[1]]"


def test_an_issue_without_severity_or_code_is_still_described() -> None:
    found = outcome_issues(outcome({"diagnostics": "something broke"}))
    assert found == (OutcomeIssue(severity="", code="", text="something broke"),)
    assert found[0].describe() == "error (unknown): something broke"


@pytest.mark.parametrize("resource", [
    {"resourceType": "Bundle", "type": "searchset", "entry": []},
    {"issue": [{"severity": "error", "code": "invalid", "diagnostics": "no resourceType"}]},
    [{"resourceType": "OperationOutcome"}],
    "OperationOutcome",
    None,
])
def test_anything_but_an_operation_outcome_has_no_issues(resource: Any) -> None:
    assert outcome_issues(resource) == ()
    assert describe_outcome(resource) is None


def test_malformed_issues_are_skipped_not_fatal() -> None:
    resource = {"resourceType": "OperationOutcome", "issue": [
        "not an issue", {"severity": "error", "code": "invalid", "details": "not an object",
                         "diagnostics": "the real one"}]}
    assert [i.describe() for i in outcome_issues(resource)] == [
        "error (invalid): the real one"]


# --- describe_outcome -------------------------------------------------------------------


def test_errors_hide_information_and_warnings() -> None:
    resource = outcome(issue("information", "informational", text="All OK"),
                       issue("warning", "business-rule", diagnostics="deprecated code"),
                       issue("error", "required", diagnostics="subject is required"),
                       issue("fatal", "exception", diagnostics="database unavailable"))
    assert describe_outcome(resource) == ("error (required): subject is required; "
                                          "fatal (exception): database unavailable")


def test_information_and_warnings_are_shown_when_nothing_is_louder() -> None:
    resource = outcome(issue("warning", "business-rule", diagnostics="deprecated code"),
                       issue("information", "informational", text="All OK"))
    assert describe_outcome(resource) == ("warning (business-rule): deprecated code; "
                                          "information (informational): All OK")


def test_an_issue_with_no_severity_counts_as_loud() -> None:
    resource = outcome(issue("information", "informational", text="All OK"),
                       {"code": "processing", "diagnostics": "rejected"})
    assert describe_outcome(resource) == "error (processing): rejected"


def test_an_outcome_without_issues_says_nothing() -> None:
    assert describe_outcome({"resourceType": "OperationOutcome", "issue": []}) is None
    assert describe_outcome({"resourceType": "OperationOutcome"}) is None


# --- describe_failure -------------------------------------------------------------------


def test_a_non_fhir_error_page_is_summarised_not_quoted() -> None:
    request = httpx.Request("GET", f"{BASE}/Patient/p1")
    response = httpx.Response(502, content=b"<html>upstream p1 failed</html>",
                              headers={"Content-Type": "text/html"}, request=request)
    words = describe_failure(response, BASE)
    assert words == ("HTTP 502 Bad Gateway on GET Patient/… (the server answered with "
                     "text/html, not FHIR JSON)")


def test_a_failure_names_status_method_target_and_the_servers_words() -> None:
    response = failed(400, url=f"{BASE}/Observation?patient=123&code=4548-4",
                      body=outcome(issue(diagnostics="Unknown code system",
                                         expression=["Observation.code"])))
    assert describe_failure(response, BASE) == (
        "HTTP 400 Bad Request on GET Observation?patient=…&code=…: error (invalid): "
        "Unknown code system [at Observation.code]")


def test_an_identifier_search_failure_never_shows_the_mrn() -> None:
    response = failed(404, url=f"{BASE}/Patient?identifier=MRN%7C000123456",
                      body=outcome(issue(code="not-found", text="No match")))
    words = describe_failure(response, BASE)
    assert words == "HTTP 404 Not Found on GET Patient?identifier=…: error (not-found): No match"
    assert "000123456" not in words


def test_a_json_body_that_is_not_an_operation_outcome_is_not_quoted() -> None:
    response = failed(401, body={"error": "invalid_token", "patient": "p1"},
                      content_type="application/json")
    assert describe_failure(response, BASE) == "HTTP 401 Unauthorized on GET Patient/…"


def test_a_body_that_is_not_json_is_summarised_by_its_content_type() -> None:
    plain = failed(503, content=b"Service Unavailable for Patient p1",
                   content_type="text/plain; charset=utf-8")
    assert describe_failure(plain, BASE) == ("HTTP 503 Service Unavailable on GET Patient/… "
                                             "(the server answered with text/plain, not FHIR "
                                             "JSON)")


def test_a_body_that_is_not_json_without_a_content_type_gives_the_status_line_only() -> None:
    response = failed(500, content=b"Internal error for p1", content_type=None)
    assert describe_failure(response, BASE) == \
        "HTTP 500 Internal Server Error on GET Patient/…"


def test_broken_json_labelled_json_gives_the_status_line_only() -> None:
    response = failed(500, content=b'{"resourceType": "OperationOutcome", "issue": [',
                      content_type="application/fhir+json; charset=utf-8")
    assert describe_failure(response, BASE) == \
        "HTTP 500 Internal Server Error on GET Patient/…"


def test_a_failure_on_a_write_names_the_method_and_base() -> None:
    response = failed(422, method="POST", url=BASE, body=outcome(
        issue("error", "processing", text="Validation failed",
              diagnostics="ServiceRequest.subject: minimum required = 1",
              expression=["ServiceRequest.subject"])))
    assert describe_failure(response, BASE) == (
        "HTTP 422 Unprocessable Entity on POST (base): error (processing): Validation "
        "failed — ServiceRequest.subject: minimum required = 1 [at ServiceRequest.subject]")


def test_a_status_without_a_reason_phrase_reads_cleanly() -> None:
    assert describe_failure(failed(520, content_type=None), BASE) == \
        "HTTP 520 on GET Patient/…"
