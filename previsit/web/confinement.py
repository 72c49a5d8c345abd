"""Patient confinement: a patient-level session reads and writes its launch patient only.

SMART `patient/` scopes promise that an access token reaches one patient's data; production
servers do not keep that promise (Medplum grants `patient/Observation.rs` and then answers
any Observation search). previsit keeps it itself, on both sides of every FHIR call:

- **requests** go to the session's FHIR base only, in the few shapes the app uses: a read
  (`Type/id`), a search that names the launch patient (`?patient=`, `?subject=`…) for
  every type in the patient compartment, a create or update whose body belongs to the
  patient, `Patient/{id}/$everything`, and batch/transaction Bundles of those. Anything
  else is refused before it leaves.
- **responses**: every resource returned (inside Bundles too) that refers to a patient
  refers to the launch patient; a resource of a patient-compartment type must refer to it;
  a Patient must be the launch patient.

`ConfinedTransport` applies both to an `httpx.AsyncClient`, so the app cannot forget.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import httpx

from previsit.errors import PrevisitError
from previsit.web.urls import UrlError, normalize_url

# FHIR R4 resource types whose instances belong to one patient (the Patient compartment,
# less the few linked only indirectly, such as Provenance through its target).
PATIENT_OWNED = frozenset({
    "AllergyIntolerance", "Appointment", "CarePlan", "CareTeam", "ClinicalImpression",
    "Communication", "CommunicationRequest", "Composition", "Condition", "Consent",
    "Coverage", "DetectedIssue", "DeviceRequest", "DiagnosticReport", "DocumentReference",
    "Encounter", "EpisodeOfCare", "FamilyMemberHistory", "Flag", "Goal", "ImagingStudy",
    "Immunization", "ImmunizationRecommendation", "List", "MedicationAdministration",
    "MedicationDispense", "MedicationRequest", "MedicationStatement", "NutritionOrder",
    "Observation", "Procedure", "QuestionnaireResponse", "RiskAssessment", "ServiceRequest",
    "Specimen", "VisionPrescription",
})
# Search parameters that select the patient of a patient-compartment resource.
PATIENT_SELECTORS = frozenset({"patient", "subject", "actor", "beneficiary"})
_PATIENT_REF = re.compile(r"(?:^|/)Patient/([^/?#]+)(?:/_history/[^/?#]+)?$")
_RESOURCE_TYPE = re.compile(r"^[A-Z][A-Za-z]+$")


class ConfinementError(PrevisitError):
    """A FHIR request or response that reaches beyond the session's patient. The message
    names the resource type and field, never another patient's id."""


@dataclass(frozen=True)
class PatientConfinement:
    fhir_base: str  # the session's issuer
    patient_id: str  # the launch patient

    # --- requests -----------------------------------------------------------------------

    def check_request(self, method: str, url: str, body: Any = None) -> None:
        """Refuse (ConfinementError) a request that could read or write another patient."""
        method = method.upper()
        segments, query = self._relative(url)
        if not segments:
            if method == "POST" and isinstance(body, dict) and \
                    body.get("resourceType") == "Bundle" and \
                    body.get("type") in ("batch", "transaction"):
                self._check_bundle_request(body)
                return
            raise ConfinementError(f"{method} on the server base (a system-wide "
                                   "interaction) is not allowed in a patient session")
        if segments == ["metadata"] and method in ("GET", "HEAD") and not query:
            return  # the CapabilityStatement: about the server, no patient's data
        resource_type = segments[0]
        if not _RESOURCE_TYPE.match(resource_type):
            raise ConfinementError(f"{method} {resource_type}: not a resource type")
        for name, value in query:
            self._check_parameter(resource_type, name, value)
        if len(segments) == 1:
            if method in ("GET", "HEAD"):
                self._check_search(resource_type, query)
            elif method == "POST":
                self._check_body(resource_type, None, body)
            else:
                raise ConfinementError(f"{method} {resource_type} is not allowed")
            return
        resource_id = segments[1]
        if resource_type == "Patient" and resource_id != self.patient_id:
            raise ConfinementError("the request names another Patient than the launch patient")
        rest = segments[2:]
        if not rest or (rest[0] == "_history" and len(rest) <= 2):
            if method in ("GET", "HEAD"):
                return  # the response is checked: what comes back must be this patient's
            if method == "PUT" and not rest:
                self._check_body(resource_type, resource_id, body)
                return
            raise ConfinementError(f"{method} {resource_type}/… is not allowed")
        if resource_type == "Patient" and rest == ["$everything"] and method == "GET":
            return
        raise ConfinementError(f"{method} {resource_type}/…/{'/'.join(rest)} is not allowed "
                               "in a patient session")

    def _relative(self, url: str) -> tuple[list[str], list[tuple[str, str]]]:
        """Path segments below the FHIR base, and the query; refuses other servers."""
        try:
            base = urlsplit(normalize_url(self.fhir_base))
            target = urlsplit(normalize_url(url))
        except UrlError as exc:
            raise ConfinementError(str(exc)) from None
        if (target.scheme, target.netloc) != (base.scheme, base.netloc) or not (
                target.path == base.path or target.path.startswith(base.path + "/")):
            raise ConfinementError("the request goes to another server than the session's "
                                   "FHIR server")
        relative = target.path[len(base.path):].strip("/")
        segments = [unquote(s) for s in relative.split("/")] if relative else []
        if any(s in ("", ".", "..") for s in segments):
            raise ConfinementError("the request path has empty or dot segments")
        return segments, parse_qsl(target.query, keep_blank_values=True)

    def _check_parameter(self, resource_type: str, name: str, value: str) -> None:
        if name.startswith("_has") or name in ("_query", "_filter", "_list"):
            # Reverse chaining, named queries, filters and lists select by other resources'
            # contents, which previsit cannot bound to one patient.
            raise ConfinementError(f"search parameter {name.split(':')[0]} is not allowed "
                                   "in a patient session")
        for part in value.split(","):
            if _PATIENT_REF.search(part.strip()) and not self._is_patient(part.strip()):
                raise ConfinementError(f"{resource_type} search parameter {name} names "
                                       "another patient")

    def _check_search(self, resource_type: str, query: Sequence[tuple[str, str]]) -> None:
        if resource_type == "Patient":
            ids = [value for name, value in query if name == "_id"]
            if not ids or any(value != self.patient_id for value in ids):
                raise ConfinementError("a Patient search must be by _id of the launch patient")
            return
        if resource_type not in PATIENT_OWNED:
            return  # shared resources (Medication, Practitioner…); responses are checked
        selectors = [(name, value) for name, value in query
                     if name.split(":")[0] in PATIENT_SELECTORS]
        if not selectors:
            raise ConfinementError(f"a {resource_type} search must name the launch patient "
                                   "(patient= or subject=)")
        for name, value in selectors:
            modifier = name.partition(":")[2]
            if modifier not in ("", "Patient") or not self._is_patient(value, bare_id=True):
                raise ConfinementError(f"{resource_type} search parameter "
                                       f"{name.split(':')[0]} must be the launch patient")

    def _check_body(self, resource_type: str, resource_id: str | None, body: Any) -> None:
        if not isinstance(body, dict) or body.get("resourceType") != resource_type:
            raise ConfinementError(f"the body of a {resource_type} write is not a "
                                   f"{resource_type}")
        if resource_id is not None and body.get("id") != resource_id:
            raise ConfinementError(f"the {resource_type} body's id differs from the URL's")
        if resource_type == "Patient" and resource_id is None:
            raise ConfinementError("creating a Patient is not allowed in a patient session")
        self.check_resource(body)

    def _check_bundle_request(self, bundle: Mapping[str, Any]) -> None:
        base = self.fhir_base.rstrip("/")
        for entry in bundle.get("entry") or []:
            request = entry.get("request") if isinstance(entry, dict) else None
            if not isinstance(request, dict) or not isinstance(request.get("url"), str) \
                    or not isinstance(request.get("method"), str):
                raise ConfinementError("a Bundle entry has no request method and url")
            url = request["url"]
            if request.get("ifNoneExist") is not None:
                for name, value in parse_qsl(str(request["ifNoneExist"])):
                    self._check_parameter("ifNoneExist", name, value)
            absolute = url if "://" in url else f"{base}/{url.lstrip('/')}"
            self.check_request(request["method"], absolute, entry.get("resource"))

    # --- responses ----------------------------------------------------------------------

    def check_response(self, body: Any) -> None:
        """Refuse (ConfinementError) a response with anything of another patient."""
        if body is None:
            return
        if not isinstance(body, dict) or not isinstance(body.get("resourceType"), str):
            raise ConfinementError("the FHIR server answered something that is not a resource")
        if body["resourceType"] == "Bundle":
            for entry in body.get("entry") or []:
                if isinstance(entry, dict) and entry.get("resource") is not None:
                    self.check_response(entry["resource"])
            return
        if body["resourceType"] == "OperationOutcome":
            return
        self.check_resource(body)

    def check_resource(self, resource: Mapping[str, Any]) -> None:
        """Every patient reference in the resource is the launch patient, and a resource
        that belongs to a patient belongs to this one."""
        resource_type = resource.get("resourceType")
        if resource_type == "Patient":
            if resource.get("id") != self.patient_id:
                raise ConfinementError("a Patient other than the launch patient")
            # Patient.link names other records of the same person (merges): not another
            # patient's data.
            resource = {k: v for k, v in resource.items() if k != "link"}
        found = False
        for field, reference in _references(resource):
            if reference.startswith("Patient?") or "/Patient?" in reference:
                raise ConfinementError(f"{resource_type}.{field} is a conditional patient "
                                       "reference, which cannot be checked")
            if _PATIENT_REF.search(reference):
                if not self._is_patient(reference):
                    raise ConfinementError(f"a {resource_type} whose {field} is another "
                                           "patient")
                found = True
        if resource_type in PATIENT_OWNED and not found:
            raise ConfinementError(f"a {resource_type} that does not refer to the launch "
                                   "patient")

    def _is_patient(self, value: str, *, bare_id: bool = False) -> bool:
        """Whether `value` (a reference, or with bare_id a plain id) names the launch patient
        on the session's server."""
        if bare_id and value == self.patient_id:
            return True
        match = _PATIENT_REF.search(value)
        if match is None or match.group(1) != self.patient_id:
            return False
        prefix = value[:match.start()] if value[match.start()] == "/" else ""
        if "://" not in value:
            return prefix == "" and not value.startswith("/")
        try:
            return normalize_url(prefix) == normalize_url(self.fhir_base)
        except UrlError:
            return False


def _references(resource: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(top-level field, reference) for every `reference` string anywhere in a resource,
    contained resources included. Iterative and without building paths: a CDS prefetch
    runs this over a thousand resources within the hook's time budget."""
    found: list[tuple[str, str]] = []
    for field, top in resource.items():
        if field == "reference" and type(top) is str:
            found.append((field, top))
            continue
        if type(top) is not dict and type(top) is not list:
            continue
        stack: list[Any] = [top]
        while stack:
            item = stack.pop()
            if type(item) is dict:
                for key, child in item.items():
                    kind = type(child)
                    if kind is str:
                        if key == "reference":
                            found.append((field, child))
                    elif kind is dict or kind is list:
                        stack.append(child)
            elif type(item) is list:
                stack.extend(c for c in item if type(c) is dict or type(c) is list)
    return found


class ConfinedTransport(httpx.AsyncBaseTransport):
    """An httpx transport that checks every request before sending it and every JSON
    response before the app sees it. Wrap the real transport of the session's client."""

    def __init__(self, inner: httpx.AsyncBaseTransport, confinement: PatientConfinement
                 ) -> None:
        self._inner = inner
        self.confinement = confinement

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        content = await request.aread()
        body = _json_or_none(content, request.headers.get("content-type", ""))
        if content and body is None and request.method not in ("GET", "HEAD"):
            raise ConfinementError("the request body is not JSON; previsit cannot check it")
        self.confinement.check_request(request.method, str(request.url), body)
        response = await self._inner.handle_async_request(request)
        if 200 <= response.status_code < 300:
            data = await response.aread()
            if data:
                parsed = _json_or_none(data, response.headers.get("content-type", ""))
                if parsed is None:
                    await response.aclose()
                    raise ConfinementError("the FHIR server answered something that is "
                                           "not JSON; previsit cannot check it")
                try:
                    self.confinement.check_response(parsed)
                except ConfinementError:
                    await response.aclose()
                    raise
        return response

    async def aclose(self) -> None:
        await self._inner.aclose()


def _json_or_none(content: bytes, content_type: str) -> Any:
    if not content or "json" not in content_type.lower():
        return None
    try:
        return json.loads(content)
    except (ValueError, UnicodeDecodeError):
        return None
