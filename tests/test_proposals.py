"""Proposals: merged per visit, de-duplicated against the chart, idempotent, valid FHIR R4B."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from builders import medication, patient, record
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.medicationrequest import MedicationRequest
from fhir.resources.R4B.servicerequest import ServiceRequest

from previsit.codes import LOINC, RXNORM
from previsit.identifiers import proposal_identifier
from previsit.plan import EvidenceRef, Finding, Kind, Order, Role, Status, Visit, VisitPlan
from previsit.proposals import Dating, SameDay, Where, plan_proposals
from previsit.record import PatientRecord
from previsit.timeline import draw_window

SYSTEM = "urn:previsit:proposal"
VISIT = Visit(appointment_id="appt-1", patient_id="p1", status="booked",
              start=datetime(2026, 12, 1, 9, 20, tzinfo=ZoneInfo("America/Chicago")))
POTASSIUM = Order(LOINC, "2823-3", "Potassium", "laboratory", Role.MA, True, 7)


def lab(rule_id: str, order: Order = POTASSIUM, status: Status = Status.OVERDUE,
        evidence: tuple[EvidenceRef, ...] = ()) -> Finding:
    return Finding(rule_id=rule_id, title=rule_id.title(), kind=Kind.LAB, status=status,
                   explanation=f"{rule_id} explanation", role=order.role, orders=(order,),
                   evidence=evidence)


def plan_of(*findings: Finding, visit: Visit = VISIT) -> VisitPlan:
    return VisitPlan(visit=visit, patient_name="A", patient_age=60, patient_sex="female",
                     patient_mrn="1", findings=findings)


def chart(*resources: dict[str, Any]) -> PatientRecord:
    return record(patient(pid="p1"), *resources)


def service_request(code: str, status: str, *, ours: str | None = None) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "ServiceRequest", "id": f"sr-{code}-{status}", "status": status,
        "intent": "order", "subject": {"reference": "Patient/p1"},
        "code": {"coding": [{"system": LOINC, "code": code}]}}
    if ours:
        resource["identifier"] = [{"system": SYSTEM, "value": ours}]
    return resource


RUN_DAY = date(2026, 11, 16)  # the night the proposals are written: 15 days before the visit
LABS_HERE_REST_LATER = SameDay(labs=Where.HERE, visit_work=Where.LATER)


def ahead(order: Order) -> tuple[date, date]:
    """Ordered ahead on RUN_DAY for the 2026-12-01 visit (the labs-ahead horizon)."""
    return draw_window(order, date(2026, 12, 1), RUN_DAY, at_check_in=False)


AHEAD: Dating = ahead


def proposals(plan: VisitPlan, rec: PatientRecord, **kwargs: Any) -> Any:
    return plan_proposals(plan, rec, identifier_system=SYSTEM, authored=RUN_DAY, **kwargs)


def test_same_code_from_two_rules_is_one_order_with_two_reasons() -> None:
    ace = lab("ace-arb-diuretic-monitoring")
    lithium = lab("lithium-monitoring", Order(LOINC, "2823-3", "Potassium", "laboratory",
                                              Role.MA, True, 10))
    result = proposals(plan_of(ace, lithium), chart(), dating=AHEAD)
    assert len(result.summaries) == 1
    summary = result.summaries[0]
    assert summary.rule_ids == ("ace-arb-diuretic-monitoring", "lithium-monitoring")
    # the longest turnaround wins so both rules' results are in before the visit; the draw
    # starts the night the order is written, never before
    assert (summary.occurrence_start, summary.occurrence) == (RUN_DAY, date(2026, 11, 21))
    resource = result.bundle["entry"][0]["resource"]
    assert [r["text"] for r in resource["reasonCode"]] == [
        "Ace-Arb-Diuretic-Monitoring", "Lithium-Monitoring"]
    assert resource["occurrencePeriod"] == {"start": "2026-11-16", "end": "2026-11-21"}
    assert "occurrenceDateTime" not in resource


def test_service_request_shape_and_validates_as_r4b() -> None:
    evidence = (EvidenceRef("MedicationRequest/m1", date(2025, 1, 1), "lisinopril", "reason"),
                EvidenceRef("Condition/c1", date(2020, 1, 1), "Hypertension", "reason"),
                EvidenceRef("Observation/o1", date(2025, 10, 1), "Potassium 4.1 mmol/L"))
    result = proposals(plan_of(lab("ace-arb-diuretic-monitoring", evidence=evidence)), chart())
    entry = result.bundle["entry"][0]
    resource = entry["resource"]
    ServiceRequest.model_validate(resource)
    Bundle.model_validate(result.bundle)
    assert (resource["status"], resource["intent"]) == ("draft", "proposal")
    assert resource["code"]["coding"][0] == {"system": LOINC, "code": "2823-3",
                                             "display": "Potassium"}
    assert resource["subject"] == {"reference": "Patient/p1"}
    assert resource["performerType"]["coding"][0]["code"] == "medical-assistant"
    assert resource["reasonReference"] == [{"reference": "Condition/c1",
                                            "display": "Hypertension"}]
    supporting = [s["reference"] for s in resource["supportingInfo"]]
    assert supporting == ["Appointment/appt-1", "MedicationRequest/m1", "Observation/o1"]
    identifier = proposal_identifier("appt-1", LOINC, "2823-3")
    assert resource["identifier"] == [{"system": SYSTEM, "value": identifier}]
    assert entry["request"] == {"method": "POST", "url": "ServiceRequest",
                                "ifNoneExist": f"identifier={SYSTEM}|{identifier}"}


def test_identifier_is_deterministic_and_specific() -> None:
    first = proposal_identifier("appt-1", LOINC, "2823-3")
    assert first == proposal_identifier("appt-1", LOINC, "2823-3")
    assert first != proposal_identifier("appt-2", LOINC, "2823-3")
    assert first != proposal_identifier("appt-1", LOINC, "2160-0")
    assert "|" not in first and "," not in first
    again = proposals(plan_of(lab("x")), chart())
    assert again.bundle == proposals(plan_of(lab("x")), chart()).bundle


@pytest.mark.parametrize("status,outcome", [
    ("active", "already-open"), ("draft", "already-open"), ("on-hold", "already-open"),
    ("completed", "proposed"), ("revoked", "proposed"), ("entered-in-error", "proposed")])
def test_someone_elses_order_suppresses_only_while_open(status: str, outcome: str) -> None:
    result = proposals(plan_of(lab("x")), chart(service_request("2823-3", status)))
    assert result.summaries[0].outcome == outcome
    assert (result.bundle is None) == (outcome != "proposed")


@pytest.mark.parametrize("status,outcome", [
    ("draft", "already-written"), ("active", "already-written"), ("revoked", "declined"),
    ("completed", "done"), ("entered-in-error", "proposed")])
def test_our_own_proposal_is_never_written_twice_or_re_proposed(status: str,
                                                                outcome: str) -> None:
    ours = proposal_identifier("appt-1", LOINC, "2823-3")
    existing = service_request("9999-9", status, ours=ours)  # the code may have been edited
    result = proposals(plan_of(lab("x")), chart(existing))
    assert result.summaries[0].outcome == outcome
    if outcome != "proposed":
        assert result.summaries[0].existing == existing["resourceType"] + "/" + existing["id"]


def test_a_different_code_is_not_suppressed() -> None:
    result = proposals(plan_of(lab("x")), chart(service_request("2160-0", "active")))
    assert result.summaries[0].outcome == "proposed"


def test_second_visit_same_day_does_not_duplicate_the_draw() -> None:
    result = proposals(plan_of(lab("x")), chart(),
                       already_this_run=[("ServiceRequest", "2823-3")])
    assert result.summaries[0].outcome == "earlier-visit"
    assert result.bundle is None


FLU = Order("http://hl7.org/fhir/sid/cvx", "88", "Influenza vaccine", "immunization",
            Role.NURSE, False, 0)


def test_with_a_later_visit_the_same_day_labs_are_drawn_here_and_the_rest_waits() -> None:
    # 8:00 lab draw before a 9:20 physician visit: the potassium is drawn at 8:00 (dated
    # today, not a week before the draw), the flu vaccine is left to the 9:20 visit.
    plan = plan_of(lab("k"), lab("flu", order=FLU))
    first = proposals(plan, chart(), same_day=LABS_HERE_REST_LATER)
    outcomes = {s.code: (s.outcome, s.occurrence) for s in first.summaries}
    assert outcomes == {"2823-3": ("proposed", date(2026, 12, 1)),
                        "88": ("later-visit", date(2026, 12, 1))}
    assert first.bundle is not None
    assert [e["resource"]["code"]["coding"][0]["code"] for e in first.bundle["entry"]] == \
        ["2823-3"]
    assert first.bundle["entry"][0]["resource"]["occurrenceDateTime"] == "2026-12-01"
    # the 9:20 visit: the draw was the earlier visit's, the vaccine is proposed here
    second = proposals(plan, chart(), same_day=SameDay(labs=Where.EARLIER))
    assert {s.code: s.outcome for s in second.summaries} == {"2823-3": "earlier-visit",
                                                             "88": "proposed"}
    # without another appointment that day, a lab ordered ahead keeps its window
    alone = proposals(plan, chart(), dating=AHEAD)
    assert {s.code: (s.occurrence_start, s.occurrence) for s in alone.summaries}[
        "2823-3"] == (RUN_DAY, date(2026, 11, 24))


def test_someone_elses_open_order_still_wins_at_the_earlier_visit() -> None:
    plan = plan_of(lab("flu", order=FLU))
    order = service_request("88", "active")
    order["code"]["coding"][0]["system"] = FLU.system
    result = proposals(plan, chart(order), same_day=LABS_HERE_REST_LATER)
    assert [s.outcome for s in result.summaries] == ["already-open"]


def test_a_rerun_keeps_the_later_visits_own_proposal_at_the_later_visit() -> None:
    # Run 1 wrote the flu proposal for the 9:20 visit. Run 2, at the 8:00 visit, finds it
    # open by code: it is ours (another appointment's), so still "later-visit", not
    # "someone's open order"; and the 8:00 lab, ours, makes the 9:20 say earlier-visit.
    plan = plan_of(lab("k"), lab("flu", order=FLU))
    flu_for_later = service_request("88", "draft", ours="pv-for-the-9-20-visit")
    flu_for_later["code"]["coding"][0]["system"] = FLU.system
    first = proposals(plan, chart(flu_for_later), same_day=LABS_HERE_REST_LATER)
    assert {s.code: s.outcome for s in first.summaries} == {"2823-3": "proposed",
                                                            "88": "later-visit"}
    lab_for_earlier = service_request("2823-3", "draft", ours="pv-for-the-8-00-visit")
    second = proposals(plan, chart(lab_for_earlier),
                       already_this_run=[("ServiceRequest", "2823-3")])
    assert {s.code: s.outcome for s in second.summaries} == {"2823-3": "earlier-visit",
                                                             "88": "proposed"}


def test_satisfied_findings_propose_nothing() -> None:
    result = proposals(plan_of(lab("x", status=Status.SATISFIED),
                               lab("y", status=Status.UNKNOWN)), chart())
    assert result.summaries == () and result.bundle is None


def test_due_soon_is_proposed_now() -> None:
    result = proposals(plan_of(lab("x", status=Status.DUE_SOON)), chart())
    assert result.summaries[0].outcome == "proposed"


def test_renewal_is_a_medication_request_proposal_with_prior_prescription() -> None:
    med = medication("314076", "lisinopril 10 MG Oral Tablet", supply_days=90, repeats=3)
    rec = chart(med)
    order = Order(RXNORM, "314076", "lisinopril 10 MG Oral Tablet", "medication",
                  Role.PHARMACIST, False)
    renewal = Finding(rule_id="annual-prescription-renewal", title="Renew lisinopril",
                      kind=Kind.RENEWAL, status=Status.DUE, explanation="runs out",
                      role=Role.PHARMACIST, orders=(order,),
                      medication_ref=f"MedicationRequest/{med['id']}")
    result = proposals(plan_of(renewal), rec)
    resource = result.bundle["entry"][0]["resource"]
    MedicationRequest.model_validate(resource)
    assert (resource["status"], resource["intent"]) == ("draft", "proposal")
    assert resource["priorPrescription"]["reference"] == f"MedicationRequest/{med['id']}"
    assert resource["medicationCodeableConcept"] == med["medicationCodeableConcept"]
    assert resource["dispenseRequest"]["validityPeriod"] == {"start": "2026-12-01",
                                                             "end": "2027-12-01"}
    # 365 days of 90-day fills: 5 fills, so 4 repeats
    assert resource["dispenseRequest"]["numberOfRepeatsAllowed"] == 4
    assert result.bundle["entry"][0]["request"]["url"] == "MedicationRequest"


def test_an_open_renewal_proposal_by_someone_else_suppresses_ours() -> None:
    med = medication("314076", "lisinopril 10 MG Oral Tablet")
    pending = {**medication("314076", "lisinopril 10 MG Oral Tablet"), "intent": "proposal",
               "status": "draft"}
    order = Order(RXNORM, "314076", "lisinopril 10 MG Oral Tablet", "medication",
                  Role.PHARMACIST, False)
    renewal = Finding(rule_id="annual-prescription-renewal", title="Renew", kind=Kind.RENEWAL,
                      status=Status.DUE, explanation="", role=Role.PHARMACIST, orders=(order,),
                      medication_ref=f"MedicationRequest/{med['id']}")
    result = proposals(plan_of(renewal), chart(med, pending))
    assert result.summaries[0].outcome == "already-open"


def _renewal(role: Role) -> tuple[PatientRecord, Finding]:
    med = medication("855332", "warfarin sodium 5 MG Oral Tablet", supply_days=90, repeats=3)
    order = Order(RXNORM, "855332", "warfarin 5 mg tablet", "medication", role, False)
    return chart(med), Finding(rule_id="annual-prescription-renewal", title="Renew warfarin",
                               kind=Kind.RENEWAL, status=Status.DUE, explanation="runs out",
                               role=role, orders=(order,),
                               medication_ref=f"MedicationRequest/{med['id']}")


@pytest.mark.parametrize(("role", "note"), [
    (Role.PHARMACIST, "Renewal for 12 months under protocol (Clinical pharmacist)."),
    (Role.PHYSICIAN, "Renewal for 12 months: the physician decides and signs."),
])
def test_a_renewal_says_who_signs_it(role: Role, note: str) -> None:
    rec, renewal = _renewal(role)
    resource = proposals(plan_of(renewal), rec).bundle["entry"][0]["resource"]
    assert resource["note"][-1] == {"text": note}


# --- the timeline: what is proposed where, and dated when -------------------------------------


def test_a_lab_drawn_at_check_in_is_one_day() -> None:
    result = proposals(plan_of(lab("k")), chart())  # default: the visit day
    resource = result.bundle["entry"][0]["resource"]
    assert resource["occurrenceDateTime"] == "2026-12-01" and "occurrencePeriod" not in resource
    summary = result.summaries[0]
    assert (summary.occurrence_start, summary.occurrence) == (date(2026, 12, 1),) * 2


def test_further_out_only_the_pre_visit_labs_are_proposed() -> None:
    plan = plan_of(lab("k"), lab("flu", order=FLU))
    result = proposals(plan, chart(), labs_only=True, dating=AHEAD)
    assert [(s.code, s.outcome) for s in result.summaries] == [("2823-3", "proposed")]
    assert [e["resource"]["code"]["coding"][0]["code"]
            for e in result.bundle["entry"]] == ["2823-3"]


def test_a_lone_lab_only_appointment_draws_and_offers_nothing() -> None:
    plan = plan_of(lab("k"), lab("flu", order=FLU))
    result = proposals(plan, chart(), same_day=SameDay(Where.HERE, Where.NOWHERE))
    assert {s.code: s.outcome for s in result.summaries} == {"2823-3": "proposed",
                                                             "88": "lab-only"}


def test_labs_drawn_at_a_later_lab_appointment_are_not_drawn_here() -> None:
    # the physician visit comes first, the lab draw after it: the visit does the rest
    plan = plan_of(lab("k"), lab("flu", order=FLU))
    someone = service_request("2823-3", "active")  # even someone's open order: drawn there
    result = proposals(plan, chart(someone), same_day=SameDay(Where.LATER, Where.HERE))
    assert {s.code: s.outcome for s in result.summaries} == {"2823-3": "later-visit",
                                                             "88": "proposed"}
