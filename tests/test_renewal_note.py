"""The note of a renewal proposal names the drug once.

The renewal finding's title is "Renew <drug>" and its explanation starts with "<drug>: …";
the note joined them into "Renew warfarin 5 mg tablet: warfarin 5 mg tablet: runs out …".
"""

from __future__ import annotations

from datetime import date, datetime
from zoneinfo import ZoneInfo

from builders import medication, patient, record

from previsit.codes import LOINC, RXNORM
from previsit.plan import Finding, Kind, Order, Role, Status, Visit, VisitPlan
from previsit.proposals import plan_proposals

VISIT = Visit(appointment_id="appt-1", patient_id="p1", status="booked",
              start=datetime(2026, 12, 1, 9, 20, tzinfo=ZoneInfo("America/Chicago")))
WARFARIN = "warfarin 5 mg tablet"


MED = medication("855332", WARFARIN)


def notes(finding: Finding) -> list[str]:
    plan = VisitPlan(visit=VISIT, patient_name="A", patient_age=70, patient_sex="male",
                     patient_mrn="1", findings=(finding,))
    result = plan_proposals(plan, record(patient(pid="p1"), MED),
                            identifier_system="urn:previsit:proposal",
                            authored=date(2026, 11, 23))
    assert result.bundle is not None
    return [n["text"] for e in result.bundle["entry"] for n in e["resource"]["note"]]


def renewal(explanation: str) -> Finding:
    order = Order(RXNORM, "855332", WARFARIN, "medication", Role.PHARMACIST, False)
    return Finding(rule_id="annual-prescription-renewal", title=f"Renew {WARFARIN}",
                   kind=Kind.RENEWAL, status=Status.DUE, explanation=explanation,
                   role=Role.PHARMACIST, orders=(order,),
                   medication_ref=f"MedicationRequest/{MED['id']}")


def test_the_renewal_note_names_the_drug_once() -> None:
    assert notes(renewal(f"{WARFARIN}: runs out 2026-12-16; renew for 12 months")) == [
        f"Renew {WARFARIN}: runs out 2026-12-16; renew for 12 months",
        "Renewal for 12 months under protocol (Clinical pharmacist)."]


def test_an_explanation_not_starting_with_the_drug_is_kept_whole() -> None:
    assert notes(renewal("ran out 2026-11-15"))[0] == f"Renew {WARFARIN}: ran out 2026-11-15"


def test_a_lab_note_is_its_title_and_explanation() -> None:
    inr = Order(LOINC, "6301-6", "INR", "laboratory", Role.MA, True, 7)
    lab = Finding(rule_id="warfarin-inr", title="INR monitoring", kind=Kind.LAB,
                  status=Status.OVERDUE, explanation="last INR 2026-09-01", role=Role.MA,
                  orders=(inr,))
    assert notes(lab) == ["INR monitoring: last INR 2026-09-01"]
