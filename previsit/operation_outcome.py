"""From a FHIR server's answer to an error message a person can act on.

A failed request is described as "HTTP 400 Bad Request on GET Observation?patient=…:
error (invalid): Unknown search parameter 'foo' [at Observation.code]": the status, the
request's method and path, and each OperationOutcome issue's severity, code, text and
location. Query *values* are never shown (they may identify a patient — `patient=123`,
`identifier=MRN|…`, `birthdate=…`); the parameter names are enough to find the fault.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from previsit.jsonio import object_or_none

# Servers send an OperationOutcome with a single "All OK" information issue on success;
# when describing a failure, issues at these severities are noise unless nothing else is there.
_QUIET = ("information", "warning")


@dataclass(frozen=True)
class OutcomeIssue:
    """One OperationOutcome.issue, reduced to what a person reads."""

    severity: str  # fatal | error | warning | information
    code: str  # invalid, not-found, processing, throttled, ...
    text: str | None  # details.text, else diagnostics, else the first details coding
    expression: tuple[str, ...] = ()  # FHIRPath of the offending element(s)

    def describe(self) -> str:
        words = f"{self.severity or 'error'} ({self.code or 'unknown'})"
        if self.text:
            words += f": {self.text}"
        if self.expression:
            words += f" [at {', '.join(self.expression)}]"
        return words


def outcome_issues(resource: Any) -> tuple[OutcomeIssue, ...]:
    """The issues of an OperationOutcome (empty for anything else)."""
    if not isinstance(resource, Mapping) or resource.get("resourceType") != "OperationOutcome":
        return ()
    issues: list[OutcomeIssue] = []
    for issue in resource.get("issue") or ():
        if not isinstance(issue, Mapping):
            continue
        raw_details = issue.get("details")
        details: Mapping[str, Any] = raw_details if isinstance(raw_details, Mapping) else {}
        text = _str(details.get("text"))
        diagnostics = _str(issue.get("diagnostics"))
        # Servers put the useful words in either place (HAPI: diagnostics; Medplum: details);
        # show both when they differ.
        if text and diagnostics and diagnostics not in text:
            text = f"{text} — {diagnostics}"
        text = text or diagnostics or _first_display(details)
        where = issue.get("expression") or issue.get("location") or ()
        issues.append(OutcomeIssue(
            severity=_str(issue.get("severity")) or "",
            code=_str(issue.get("code")) or "",
            text=text,
            expression=tuple(w for w in where if isinstance(w, str))))
    return tuple(issues)


def describe_outcome(resource: Any) -> str | None:
    """The issues of an OperationOutcome as one line, errors first; None when there are none."""
    issues = outcome_issues(resource)
    loud = [i for i in issues if i.severity not in _QUIET]
    shown = loud or list(issues)
    return "; ".join(i.describe() for i in shown) or None


def redacted_target(url: httpx.URL | str, base_url: httpx.URL | str | None = None) -> str:
    """The request path relative to the FHIR base with ids and query values replaced by "…".

    redacted_target("https://ehr/fhir/Observation?patient=123&_count=100", "https://ehr/fhir")
    == "Observation?patient=…&_count=…"; "https://ehr/fhir/Patient/123" gives "Patient/…".
    Resource types, operations ($…) and _history/_search stay: they say what was asked.
    """
    url = httpx.URL(str(url))
    path = url.path
    if base_url is not None:
        base = httpx.URL(str(base_url))
        base_path = base.path.rstrip("/")
        if url.host == base.host and (path == base_path or path.startswith(base_path + "/")):
            path = path[len(base_path):]
    segments = [s for s in path.split("/") if s]
    shown = [s if i == 0 or s.startswith(("$", "_")) else "…" for i, s in enumerate(segments)]
    path = "/".join(shown) or "(base)"
    names = [name for name, _ in url.params.multi_items()]
    if not names:
        return path
    return f"{path}?{'&'.join(f'{name}=…' for name in names)}"


def describe_failure(response: httpx.Response, base_url: httpx.URL | str | None = None) -> str:
    """"HTTP 404 Not Found on GET Patient/…: error (not-found): …" for a failed response.

    The body must already have been read. Non-FHIR bodies (an HTML error page from a
    proxy) are summarised by their content type, never quoted: they can echo the request.
    """
    request = response.request
    status = f"HTTP {response.status_code} {response.reason_phrase}".rstrip()
    line = f"{status} on {request.method} {redacted_target(request.url, base_url)}".rstrip()
    detail = describe_outcome(object_or_none(response.content))
    if detail:
        return f"{line}: {detail}"
    content_type = response.headers.get("content-type", "").split(";")[0].strip()
    if content_type and "json" not in content_type:
        return f"{line} (the server answered with {content_type}, not FHIR JSON)"
    return line


def _str(value: Any) -> str | None:
    return value.strip() if isinstance(value, str) and value.strip() else None


def _first_display(details: Mapping[str, Any]) -> str | None:
    for coding in details.get("coding") or ():
        if isinstance(coding, Mapping):
            return _str(coding.get("display")) or _str(coding.get("code"))
    return None
