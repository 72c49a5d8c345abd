"""The file names of sheets: from the appointment id, never from the patient's name."""

from __future__ import annotations

from previsit.filenames import safe_part
from previsit.plan import DayPlan, VisitPlan
from previsit.references import bare_id


def visit_sheet_filename(plan: VisitPlan, ext: str = "html") -> str:
    """The file name of a visit's sheet: the appointment id, never the patient's name."""
    visit = plan.visit
    key = visit.appointment_id or f"patient-{visit.patient_id}-{visit.day or 'undated'}"
    return f"visit-{safe_part(key)}.{ext}"


def huddle_sheet_filename(day: DayPlan, *, location: str | None = None,
                     practitioner: str | None = None, ext: str = "html") -> str:
    parts = [f"huddle-{day.generated_for.isoformat()}"]
    if location:
        parts.append(f"location-{safe_part(bare_id(location))}")
    if practitioner:
        parts.append(f"practitioner-{safe_part(bare_id(practitioner))}")
    return "-".join(parts) + f".{ext}"
