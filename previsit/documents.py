"""A visit's planning sheet stored in the EHR as a DocumentReference (`--write-sheets`).

Written with a conditional update (`PUT DocumentReference?identifier=…`) keyed on the
appointment, in the sheets' own identifier system (output.sheet_identifier_system, not the
proposals'): a re-run replaces the sheet with the current one instead of adding a second
document, and two runs at once still leave one.
"""

from __future__ import annotations

import base64
import hashlib
from datetime import date, datetime, time
from typing import Any
from zoneinfo import ZoneInfo

from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.documentreference import DocumentReference

from previsit.codes import LOINC
from previsit.identifiers import sheet_identifier
from previsit.plan import VisitPlan
from previsit.validation import SHAPES


def sheet_document(plan: VisitPlan, html: str, *, identifier_system: str,
                   as_of: date, timezone: str) -> dict[str, Any]:
    """The DocumentReference for one visit's sheet (HTML attachment, patient, appointment),
    dated `as_of` at midnight in the clinic's time zone (midnight UTC would be the evening
    before in the Americas)."""
    data = html.encode("utf-8")
    resource: dict[str, Any] = {
        "resourceType": "DocumentReference",
        "identifier": [{"system": identifier_system,
                        "value": sheet_identifier(plan.visit.appointment_id)}],
        "status": "current",
        "docStatus": "preliminary",
        # LOINC 11506-3 "Progress note" is the closest general document type; planning
        # sheets have no LOINC document code of their own.
        "type": {"coding": [{"system": LOINC, "code": "11506-3", "display": "Progress note"}],
                 "text": "Pre-visit planning sheet"},
        "subject": {"reference": f"Patient/{plan.visit.patient_id}"},
        "date": datetime.combine(as_of, time(), ZoneInfo(timezone)).isoformat(),
        "description": "Pre-visit planning sheet prepared by previsit",
        "content": [{"attachment": {
            "contentType": "text/html; charset=utf-8", "language": "en",
            "data": base64.b64encode(data).decode("ascii"), "size": len(data),
            # FHIR R4 defines Attachment.hash as the SHA-1 of the data
            "hash": base64.b64encode(hashlib.sha1(data).digest()).decode("ascii"),
            "title": "Pre-visit planning sheet"}}],
        "context": {"related": [{"reference": f"Appointment/{plan.visit.appointment_id}"}]},
    }
    SHAPES.validate(DocumentReference, resource)
    return resource


def sheet_transaction(plan: VisitPlan, html: str, *, identifier_system: str,
                      as_of: date, timezone: str) -> dict[str, Any]:
    resource = sheet_document(plan, html, identifier_system=identifier_system, as_of=as_of,
                              timezone=timezone)
    value = resource["identifier"][0]["value"]
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [{
        "resource": resource,
        "request": {"method": "PUT",
                    "url": f"DocumentReference?identifier={identifier_system}|{value}"}}]}
    SHAPES.validate(Bundle, bundle)
    return bundle
