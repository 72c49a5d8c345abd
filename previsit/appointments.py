"""Appointments: from FHIR Appointment JSON to `Visit`, and whether one is in a window.

Shared by every source so that "which appointments count" has one answer: a booked-like
status, a start inside [start, end) in the clinic's time zone, the patient participant,
and the practitioner / location / service-type filters.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from previsit.codes import Concept
from previsit.errors import AppointmentError
from previsit.intervals import parse_fhir_date, parse_fhir_datetime
from previsit.plan import Ref, Visit
from previsit.references import bare_id
from previsit.sources import VisitWindow


def _participant(resource: Mapping[str, Any], prefix: str) -> Ref | None:
    for part in resource.get("participant") or ():
        actor = part.get("actor") if isinstance(part, dict) else None
        ref = actor.get("reference") if isinstance(actor, dict) else None
        if isinstance(actor, dict) and isinstance(ref, str) and (
                ref.startswith(prefix) or f"/{prefix}" in ref):
            display = actor.get("display")
            return Ref(ref, display if isinstance(display, str) else None)
    return None


def visit_from_appointment(resource: Mapping[str, Any], timezone: str = "UTC") -> Visit:
    """A Visit, with the start converted to the clinic's time zone."""
    rid = resource.get("id")
    if not isinstance(rid, str):
        raise AppointmentError("Appointment has no id")
    patient = _participant(resource, "Patient/")
    if patient is None or patient.reference is None:
        raise AppointmentError(f"Appointment/{rid} has no Patient participant")
    start = parse_fhir_datetime(resource.get("start"))
    if start is None:
        day = parse_fhir_date(resource.get("start"))
        if day is None:
            raise AppointmentError(f"Appointment/{rid} has no readable start")
        start = datetime(day.year, day.month, day.day, tzinfo=ZoneInfo(timezone))
    elif start.tzinfo is None:
        start = start.replace(tzinfo=ZoneInfo(timezone))
    start = start.astimezone(ZoneInfo(timezone))
    service = None
    for concept in resource.get("serviceType") or ():
        service = Concept.from_json(concept).label()
        break
    if service is None and resource.get("appointmentType"):
        service = Concept.from_json(resource["appointmentType"]).label()
    reason = None
    for concept in resource.get("reasonCode") or ():
        reason = Concept.from_json(concept).label()
        break
    description = resource.get("description")
    return Visit(
        codes=_appointment_codes(resource),
        appointment_id=rid, patient_id=bare_id(patient.reference), start=start,
        status=str(resource.get("status") or ""),
        practitioner=_participant(resource, "Practitioner/") or
        _participant(resource, "PractitionerRole/"),
        location=_participant(resource, "Location/"), service_type=service, reason=reason,
        description=description if isinstance(description, str) else None)


# The fields that say what kind of appointment it is (a lab draw or a visit).
_KIND_FIELDS = ("serviceCategory", "serviceType", "specialty", "appointmentType")


def _appointment_codes(resource: Mapping[str, Any]) -> tuple[str, ...]:
    """Every coding of the appointment's kind, as "system|code", in a stable order."""
    out: list[str] = []
    for name in _KIND_FIELDS:
        value = resource.get(name)
        for concept in value if isinstance(value, list) else [value]:
            out += [f"{c.system}|{c.code}" for c in Concept.from_json(concept).codings]
    return tuple(dict.fromkeys(out))


def _codes(resource: Mapping[str, Any]) -> set[str]:
    out = set()
    for concept in resource.get("serviceType") or ():
        for coding in Concept.from_json(concept).codings:
            out.add(coding.code)
            out.add(f"{coding.system}|{coding.code}")
    return out


def in_window(resource: Mapping[str, Any], visit: Visit, window: VisitWindow) -> bool:
    if visit.status not in window.statuses or visit.start is None:
        return False
    local_day = visit.start.astimezone(ZoneInfo(window.timezone)).date()
    if not (window.start <= local_day < window.end):
        return False
    if window.practitioners:
        wanted = {bare_id(p) for p in window.practitioners}
        if visit.practitioner is None or bare_id(visit.practitioner.reference or "") not in wanted:
            return False
    if window.locations:
        wanted = {bare_id(p) for p in window.locations}
        if visit.location is None or bare_id(visit.location.reference or "") not in wanted:
            return False
    return not (window.service_types and not (_codes(resource) & set(window.service_types)))


def sort_visits(visits: list[Visit]) -> list[Visit]:
    return sorted(visits, key=lambda v: (v.start or datetime.min.replace(tzinfo=ZoneInfo("UTC")),
                                         v.appointment_id))
