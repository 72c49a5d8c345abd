"""A visit's planning sheet as a DocumentReference, stored with one conditional update
keyed on the appointment, so a re-run replaces the sheet instead of adding a second one.
"""

from __future__ import annotations

import base64
from datetime import date
from typing import Any

from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.documentreference import DocumentReference

from previsit.documents import sheet_document, sheet_transaction
from previsit.plan import Visit, VisitPlan

SYSTEM = "urn:previsit:sheet"
AS_OF = date(2026, 11, 30)
TZ = "America/Chicago"
HTML = "<p>Café</p>"  # 11 characters, 12 bytes in UTF-8
# sha256("appt-1" + "\x1f" + "planning-sheet"), first 32 hex digits
APPT_1_SHEET = "pv-sheet-a0dcf0a6c3ee565f427b9763a18e58d5"


def plan(aid: str = "appt-1", pid: str = "p1") -> VisitPlan:
    visit = Visit(appointment_id=aid, patient_id=pid, start=None, status="booked")
    return VisitPlan(visit=visit, patient_name="Test Patient", patient_age=50,
                     patient_sex="female", patient_mrn="000123456", findings=())


def document(html: str = HTML, **kwargs: Any) -> dict[str, Any]:
    return sheet_document(plan(**kwargs), html, identifier_system=SYSTEM, as_of=AS_OF,
                          timezone=TZ)


def attachment(doc: dict[str, Any]) -> dict[str, Any]:
    (content,) = doc["content"]
    found: dict[str, Any] = content["attachment"]
    return found


def test_the_identifier_is_stable_per_appointment() -> None:
    assert document()["identifier"] == [{"system": SYSTEM, "value": APPT_1_SHEET}]
    # the same appointment on another day, with another sheet: the same identifier
    later = sheet_document(plan(), "<p>changed</p>", identifier_system=SYSTEM,
                           as_of=date(2026, 12, 1), timezone=TZ)
    assert later["identifier"] == [{"system": SYSTEM, "value": APPT_1_SHEET}]
    assert document(aid="appt-2")["identifier"][0]["value"] == \
        "pv-sheet-bacbcfdd3f7c43ae30e094319e1f38c2"


def test_the_identifier_system_is_the_clinics() -> None:
    doc = sheet_document(plan(), HTML, identifier_system="https://clinic.example/sheets",
                         as_of=AS_OF, timezone=TZ)
    assert doc["identifier"] == [{"system": "https://clinic.example/sheets",
                                  "value": APPT_1_SHEET}]


def test_the_identifier_does_not_expose_the_appointment_id() -> None:
    assert "appt-1" not in document()["identifier"][0]["value"]


def test_subject_and_appointment() -> None:
    doc = document(aid="appt-9", pid="p42")
    assert doc["subject"] == {"reference": "Patient/p42"}
    assert doc["context"] == {"related": [{"reference": "Appointment/appt-9"}]}


def test_the_document_says_what_it_is() -> None:
    doc = document()
    assert (doc["resourceType"], doc["status"], doc["docStatus"]) == (
        "DocumentReference", "current", "preliminary")
    assert doc["type"] == {"coding": [{"system": "http://loinc.org", "code": "11506-3",
                                       "display": "Progress note"}],
                           "text": "Pre-visit planning sheet"}
    # midnight in the clinic's zone, not midnight UTC (the evening before in Chicago)
    assert doc["date"] == "2026-11-30T00:00:00-06:00"
    assert doc["description"] == "Pre-visit planning sheet prepared by previsit"


def test_the_document_names_no_patient_data_outside_the_sheet() -> None:
    # Name and MRN are on the sheet (the attachment), never in the searchable metadata.
    doc = document()
    del doc["content"]
    text = repr(doc)
    assert "Test Patient" not in text and "000123456" not in text


def test_the_attachment_is_the_html_in_base64_with_its_byte_size() -> None:
    found = attachment(document())
    assert found["contentType"] == "text/html; charset=utf-8"
    assert found["language"] == "en"
    assert found["title"] == "Pre-visit planning sheet"
    assert found["data"] == "PHA+Q2Fmw6k8L3A+"
    assert base64.b64decode(found["data"]).decode("utf-8") == HTML
    assert found["size"] == 12  # bytes, not characters


def test_the_hash_is_the_base64_sha1_of_the_data_as_fhir_r4_defines() -> None:
    # printf '<p>Café</p>' | sha1sum  ->  1427b1556e47eb8e45c844ec88018f0c6d1f6372
    assert attachment(document())["hash"] == "FCexVW5H645FyETsiAGPDG0fY3I="
    assert attachment(document("<p>Hello</p>"))["hash"] == "4a+EvIM3a0+SSNp45gaEvHsev3E="


def test_an_empty_sheet_is_still_a_document() -> None:
    found = attachment(document(""))
    assert (found["data"], found["size"]) == ("", 0)
    # the SHA-1 of nothing
    assert found["hash"] == "2jmj7l5rSw0yVb/vlWAYkK/YBwk="


def test_the_document_validates_as_an_r4b_document_reference() -> None:
    parsed = DocumentReference.model_validate(document())
    assert parsed.subject is not None and parsed.subject.reference == "Patient/p1"
    assert parsed.content[0].attachment.size == 12


# --- sheet_transaction ------------------------------------------------------------------


def transaction(aid: str = "appt-1", html: str = HTML) -> dict[str, Any]:
    return sheet_transaction(plan(aid), html, identifier_system=SYSTEM, as_of=AS_OF,
                             timezone=TZ)


def test_one_conditional_update_on_the_identifier() -> None:
    bundle = transaction()
    assert (bundle["resourceType"], bundle["type"]) == ("Bundle", "transaction")
    (entry,) = bundle["entry"]
    assert entry["request"] == {
        "method": "PUT",
        "url": f"DocumentReference?identifier=urn:previsit:sheet|{APPT_1_SHEET}"}
    assert entry["resource"] == document()


def test_a_rerun_writes_the_same_request_with_the_current_sheet() -> None:
    first, again = transaction(html="<p>v1</p>"), transaction(html="<p>v2</p>")
    assert first["entry"][0]["request"] == again["entry"][0]["request"]
    assert attachment(again["entry"][0]["resource"])["data"] == "PHA+djI8L3A+"


def test_the_transaction_validates_as_an_r4b_bundle() -> None:
    parsed = Bundle.model_validate(transaction())
    assert parsed.entry is not None and parsed.entry[0].request is not None
    assert parsed.entry[0].request.method == "PUT"


def test_the_date_follows_the_zone_and_its_summer_time() -> None:
    summer = sheet_document(plan(), HTML, identifier_system=SYSTEM, as_of=date(2026, 7, 1),
                            timezone=TZ)
    assert summer["date"] == "2026-07-01T00:00:00-05:00"
    utc = sheet_document(plan(), HTML, identifier_system=SYSTEM, as_of=AS_OF, timezone="UTC")
    assert utc["date"] == "2026-11-30T00:00:00+00:00"
