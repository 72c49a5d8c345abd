"""The annual prescription renewal rule: when a prescription runs out, who renews it, and what
is proposed (CLINICAL.md "Prescriptions that will expire")."""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

import pytest
from builders import (
    RXNORM,
    VISIT,
    findings,
    medication,
    observation,
    patient,
    record,
    shipped_rules,
)

from previsit.evaluate import Settings, evaluate
from previsit.intervals import Duration
from previsit.plan import Finding, Role, Status

RULE = "annual-prescription-renewal"
LISINOPRIL = ("314076", "lisinopril 10 MG Oral Tablet")


def renewals(*resources: dict[str, Any], **kw: Any) -> list[Finding]:
    return findings(RULE, patient(age=60), *resources, **kw)


def one(*resources: dict[str, Any], **kw: Any) -> Finding:
    found = renewals(*resources, **kw)
    assert len(found) == 1, found
    return found[0]


def lisinopril(**kw: Any) -> dict[str, Any]:
    return medication(*LISINOPRIL, **kw)


# --- when it runs out -----------------------------------------------------------------------


def test_run_out_from_the_validity_period_alone() -> None:
    f = one(lisinopril(supply_days=None, repeats=None, validity_end_days_ahead=30))
    assert f.status == Status.DUE
    assert f.due_date == VISIT + timedelta(days=30)


def test_run_out_from_supply_times_fills_alone() -> None:
    # 300 days ago + 90 days x (3 repeats + 1) = 60 days after the visit.
    f = one(lisinopril(days_ago=300, supply_days=90, repeats=3))
    assert f.status == Status.DUE
    assert f.due_date == VISIT + timedelta(days=60)


def test_missing_repeats_means_a_single_fill() -> None:
    f = one(lisinopril(days_ago=10, supply_days=30, repeats=None))
    assert f.due_date == VISIT + timedelta(days=20)


def test_supply_in_months_is_counted_as_30_days() -> None:
    med = lisinopril(days_ago=100, repeats=0)
    med["dispenseRequest"]["expectedSupplyDuration"] = {"value": 3, "unit": "months",
                                                        "system": "http://unitsofmeasure.org",
                                                        "code": "mo"}
    assert one(med).due_date == VISIT - timedelta(days=100) + timedelta(days=90)


@pytest.mark.parametrize(("validity_ahead", "supply_ahead", "expected"), [
    (200, 60, 60),  # the fills run out first
    (45, 120, 45),  # the prescription expires first
], ids=["supply-first", "validity-first"])
def test_the_earliest_of_validity_end_and_supply(
        validity_ahead: int, supply_ahead: int, expected: int) -> None:
    f = one(lisinopril(days_ago=30, supply_days=supply_ahead + 30, repeats=0,
                       validity_end_days_ahead=validity_ahead))
    assert f.due_date == VISIT + timedelta(days=expected)


@pytest.mark.parametrize(("ahead", "status"), [
    (0, Status.OVERDUE),  # ran out on the visit day
    (1, Status.DUE),
    (89, Status.DUE),
    (90, Status.SATISFIED),  # runs out exactly at visit + 90 days: not before the horizon
    (91, Status.SATISFIED),
])
def test_day_boundaries_around_the_90_day_horizon(ahead: int, status: Status) -> None:
    f = one(lisinopril(supply_days=None, repeats=None, validity_end_days_ahead=ahead))
    assert f.status == status
    assert bool(f.orders) == status.actionable


def test_a_prescription_that_ran_out_before_the_visit_is_overdue() -> None:
    f = one(lisinopril(days_ago=200, supply_days=30, repeats=2))
    assert f.status == Status.OVERDUE
    assert "ran out" in f.explanation


def test_the_clinic_can_narrow_the_horizon() -> None:
    med = lisinopril(supply_days=None, repeats=None, validity_end_days_ahead=60)
    assert one(med).status == Status.DUE
    narrow = Settings(renewal_horizon=Duration(30, "d"))
    assert one(med, settings=narrow).status == Status.SATISFIED


@pytest.mark.parametrize("dispense", [
    {"supply_days": None, "repeats": 3},  # no supply, no validity period
    {"supply_days": None, "repeats": None},
], ids=["repeats-only", "nothing"])
def test_no_data_to_compute_run_out_is_unknown(dispense: dict[str, Any]) -> None:
    f = one(lisinopril(**dispense))
    assert f.status == Status.UNKNOWN
    assert "cannot tell when it runs out" in f.explanation
    assert f.orders == ()


def test_supply_without_an_authored_date_is_unknown() -> None:
    med = lisinopril(supply_days=90, repeats=3)
    del med["authoredOn"]
    assert one(med).status == Status.UNKNOWN


# --- what is proposed, and to whom -------------------------------------------------------------


def test_the_renewal_carries_the_drugs_rxnorm_code() -> None:
    f = one(lisinopril(supply_days=None, repeats=None, validity_end_days_ahead=30))
    assert f.role == Role.PHARMACIST
    assert "renew for 12 months" in f.explanation
    assert [(o.system, o.code, o.display, o.category, o.role, o.before_visit)
            for o in f.orders] == [(RXNORM, *LISINOPRIL, "medication", Role.PHARMACIST, False)]
    assert f.medication_ref and f.medication_ref.startswith("MedicationRequest/")


@pytest.mark.parametrize(("code", "display", "text_only"), [
    ("1049221", "Acetaminophen 325 MG / Oxycodone Hydrochloride 5 MG Oral Tablet", False),
    ("197901", "lorazepam 1 MG Oral Tablet", False),
    ("854873", "zolpidem tartrate 10 MG Oral Tablet", False),
    ("1091150", "methylphenidate hydrochloride 10 MG Oral Tablet", False),
    ("483450", "pregabalin 75 MG Oral Capsule", False),
    ("7804", "oxycodone", False),  # ingredient code
    ("", "HYDROcodone-acetaminophen 5-325 mg tablet", True),  # text only: name fallback
    ("999999", "Testosterone Cypionate 200 MG/ML Injectable Solution", False),  # unknown code
    ("999998", "Lisdexamfetamine Dimesylate 30 MG Oral Capsule", False),
], ids=["oxycodone-scd", "lorazepam", "zolpidem", "methylphenidate", "pregabalin",
        "oxycodone-ingredient", "hydrocodone-text", "testosterone-name", "lisdexamfetamine-name"])
def test_controlled_substances_go_to_the_physician_without_an_order(
        code: str, display: str, text_only: bool) -> None:
    f = one(medication(code, display, text_only=text_only, supply_days=None, repeats=None,
                       validity_end_days_ahead=30))
    assert f.status == Status.DUE
    assert f.role == Role.PHYSICIAN
    assert f.needs_physician
    assert "controlled-substance" in f.flags
    assert "not a 12-month renewal" in f.explanation
    assert f.orders == ()


def test_a_non_controlled_drug_is_not_flagged() -> None:
    f = one(lisinopril(supply_days=None, repeats=None, validity_end_days_ahead=30))
    assert f.flags == ()
    assert not f.needs_physician


def test_a_renewal_whose_monitoring_lab_is_due_says_to_renew_after_it() -> None:
    # On levothyroxine with no TSH on record: the TSH monitoring lab is due before the visit.
    levo = medication("892246", "levothyroxine sodium 0.1 MG Oral Tablet", days_ago=300,
                      supply_days=90, repeats=3)
    plan = evaluate(record(patient(age=60), levo), shipped_rules(), VISIT)
    lab = next(f for f in plan.findings if f.rule_id == "levothyroxine-monitoring")
    assert lab.status.actionable and lab.orders
    renewal = next(f for f in plan.findings if f.rule_id == RULE)
    assert renewal.status == Status.DUE
    assert f"renew after the {lab.orders[0].display} drawn before the visit" \
        in renewal.explanation


def test_no_renew_after_note_when_the_monitoring_lab_is_current() -> None:
    levo = medication("892246", "levothyroxine sodium 0.1 MG Oral Tablet", days_ago=300,
                      supply_days=90, repeats=3)
    tsh = observation("3016-3", 60, 2.1, "mIU/L")
    f = one(levo, tsh)
    assert f.status == Status.DUE
    assert "renew after" not in f.explanation


# --- which prescriptions ---------------------------------------------------------------------


@pytest.mark.parametrize("status", ["stopped", "completed", "cancelled", "entered-in-error"])
def test_an_inactive_prescription_is_not_proposed(status: str) -> None:
    found = renewals(lisinopril(status=status, supply_days=None, repeats=None,
                                validity_end_days_ahead=30))
    assert [f.status for f in found] == [Status.NOT_APPLICABLE]
    assert found[0].orders == ()


def test_a_stopped_drug_is_left_out_beside_an_active_one() -> None:
    found = renewals(
        lisinopril(status="stopped", supply_days=None, repeats=None, validity_end_days_ahead=30),
        medication("197361", "Amlodipine 5 MG Oral Tablet", supply_days=None, repeats=None,
                   validity_end_days_ahead=30))
    assert [f.title for f in found] == ["Renew Amlodipine 5 MG Oral Tablet"]


def test_the_latest_order_of_the_same_drug_decides() -> None:
    old = lisinopril(days_ago=400, supply_days=None, repeats=None, validity_end_days_ahead=10)
    new = lisinopril(days_ago=20, supply_days=None, repeats=None, validity_end_days_ahead=300)
    f = one(old, new)
    assert f.status == Status.SATISFIED
    assert f.due_date == VISIT + timedelta(days=300)


def test_an_order_written_after_the_visit_is_ignored() -> None:
    future = lisinopril(days_ago=-5, supply_days=30, repeats=0)
    assert [f.status for f in renewals(future)] == [Status.NOT_APPLICABLE]


def test_a_proposal_already_on_the_chart_is_not_a_prescription() -> None:
    proposal = lisinopril(supply_days=None, repeats=None, validity_end_days_ahead=30)
    proposal["intent"] = "proposal"
    assert [f.status for f in renewals(proposal)] == [Status.NOT_APPLICABLE]


def test_one_finding_per_active_drug() -> None:
    found = renewals(
        lisinopril(supply_days=None, repeats=None, validity_end_days_ahead=30),
        medication("1049221", "Acetaminophen 325 MG / Oxycodone Hydrochloride 5 MG Oral Tablet",
                   supply_days=None, repeats=None, validity_end_days_ahead=200))
    by_title = {f.title: f for f in found}
    assert by_title["Renew lisinopril 10 MG Oral Tablet"].status == Status.DUE
    oxy = by_title["Renew Acetaminophen 325 MG / Oxycodone Hydrochloride 5 MG Oral Tablet"]
    assert oxy.status == Status.SATISFIED
    assert oxy.role == Role.PHYSICIAN


def test_visit_date_moves_the_run_out_window() -> None:
    med = lisinopril(supply_days=None, repeats=None, validity_end_days_ahead=120)
    assert one(med).status == Status.SATISFIED
    later = VISIT + timedelta(days=31)
    assert one(med, visit=later).status == Status.DUE
    assert one(med, visit=later).due_date == date(2027, 3, 31)


# --- controlled substances by DEA schedule (RxNorm data, not a name list) -------------------


@pytest.mark.parametrize(("code", "display", "schedule"), [
    ("1049221", "Acetaminophen 325 MG / Oxycodone Hydrochloride 5 MG Oral Tablet", "Schedule II"),
    ("993781", "acetaminophen 300 MG / codeine phosphate 30 MG Oral Tablet", "Schedule III"),
    ("993755", "acetaminophen 24 MG/ML / codeine phosphate 2.4 MG/ML Oral Solution",
     "Schedule V"),  # a codeine liquid of <= 200 mg base per 100 mL
    # missed by the old name list (issue 10)
    ("199450", "clobazam 10 MG Oral Tablet", "Schedule IV"),
    ("1547104", "suvorexant 10 MG Oral Tablet", "Schedule IV"),
    ("810000", "lacosamide 50 MG Oral Tablet", "Schedule V"),
    ("238154", "acetaminophen 325 MG / butalbital 50 MG / caffeine 40 MG Oral Tablet",
     "Schedule III (exempted products exist)"),
], ids=["oxycodone", "codeine-tablet", "codeine-liquid", "clobazam", "suvorexant",
        "lacosamide", "butalbital"])
def test_the_dea_schedule_is_named(code: str, display: str, schedule: str) -> None:
    f = one(medication(code, display, supply_days=None, repeats=None,
                       validity_end_days_ahead=30))
    assert (f.status, f.role, f.orders) == (Status.DUE, Role.PHYSICIAN, ())
    assert f"controlled substance ({schedule}): physician review" in f.explanation


def test_gabapentin_is_not_federally_scheduled() -> None:
    f = one(medication("310431", "gabapentin 300 MG Oral Capsule", supply_days=None,
                       repeats=None, validity_end_days_ahead=30))
    assert f.role == Role.PHARMACIST and "controlled" not in f.explanation and f.orders


# --- high-risk medicines: the physician renews them -----------------------------------------


@pytest.mark.parametrize(("code", "display", "category"), [
    ("855332", "warfarin sodium 5 MG Oral Tablet", "Anticoagulant"),
    ("1364445", "apixaban 5 MG Oral Tablet", "Anticoagulant"),
    ("311041", "insulin glargine 100 UNT/ML Injectable Solution", "Insulin, all formulations"),
    ("105585", "methotrexate 2.5 MG Oral Tablet", "Methotrexate"),
    ("833528", "amiodarone hydrochloride 200 MG Oral Tablet", "Amiodarone"),
    ("197606", "digoxin 0.25 MG Oral Tablet", "Digoxin"),
    ("198427", "lamotrigine 100 MG Oral Tablet", "Lamotrigine"),
    ("198377", "tacrolimus 1 MG Oral Capsule", "Immunosuppressant"),
    ("", "Eliquis 5 mg tablet", ""),  # brand name, text only: the name list
], ids=["warfarin", "apixaban", "insulin", "methotrexate", "amiodarone", "digoxin",
        "lamotrigine", "tacrolimus", "eliquis-text"])
def test_a_high_risk_medicine_is_renewed_by_the_physician(code: str, display: str,
                                                          category: str) -> None:
    f = one(medication(code, display, text_only=not code, supply_days=None, repeats=None,
                       validity_end_days_ahead=30))
    assert (f.status, f.role) == (Status.DUE, Role.PHYSICIAN)
    assert set(f.flags) == {"high-risk", "physician-review"}
    # still proposed (it is not a controlled substance), for the physician to sign
    assert [(o.role, o.display) for o in f.orders] == [(Role.PHYSICIAN, display)]
    words = f"high-risk medicine ({category})" if category else "high-risk medicine:"
    assert words in f.explanation


def test_a_high_risk_medicine_with_current_monitoring_still_goes_to_the_physician() -> None:
    warfarin = medication("855332", "warfarin sodium 5 MG Oral Tablet", days_ago=300,
                          supply_days=90, repeats=3)
    inr = observation("6301-6", 10, 2.5, "{INR}")
    plan = evaluate(record(patient(age=70), warfarin, inr), shipped_rules(), VISIT)
    monitoring = next(f for f in plan.findings if f.rule_id == "warfarin-inr-monitoring")
    assert monitoring.status == Status.SATISFIED
    renewal = next(f for f in plan.findings if f.rule_id == RULE)
    assert (renewal.status, renewal.role) == (Status.DUE, Role.PHYSICIAN)


def test_phenobarbital_is_both_and_handled_as_controlled() -> None:
    f = one(medication("312362", "phenobarbital 30 MG Oral Tablet", supply_days=None,
                       repeats=None, validity_end_days_ahead=30))
    assert "controlled-substance" in f.flags and f.orders == ()
    assert "Schedule IV" in f.explanation


# --- not long-term medicines -------------------------------------------------------------------


def _course(code: str) -> dict[str, Any]:
    return {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/"
                                  "medicationrequest-course-of-therapy", "code": code}]}


@pytest.mark.parametrize(("course", "words"), [
    ("acute", "a short (acute) course, not a long-term medicine: not renewed"),
    ("seasonal", "seasonal therapy: reviewed before its season"),
])
def test_acute_and_seasonal_courses_are_never_renewed(course: str, words: str) -> None:
    amoxicillin = {**medication("308192", "Amoxicillin 500 MG Oral Tablet", days_ago=6,
                                supply_days=10, repeats=0),
                   "courseOfTherapyType": _course(course)}
    f = one(amoxicillin)
    assert (f.status, f.orders) == (Status.NOT_APPLICABLE, ())
    assert words in f.explanation


def test_a_continuous_course_is_renewed_as_usual() -> None:
    f = one({**lisinopril(supply_days=None, repeats=None, validity_end_days_ahead=30),
             "courseOfTherapyType": _course("continuous")})
    assert f.status == Status.DUE and f.orders


def _statement(status: str, days_ago: int, code: str = LISINOPRIL[0]) -> dict[str, Any]:
    return {"resourceType": "MedicationStatement", "id": f"ms-{status}-{days_ago}",
            "status": status, "subject": {"reference": "Patient/p1"},
            "medicationCodeableConcept": {"coding": [{"system": RXNORM, "code": code}]},
            "dateAsserted": (VISIT - timedelta(days=days_ago)).isoformat()}


@pytest.mark.parametrize(("statement", "renewed"), [
    (_statement("stopped", 20), False),
    (_statement("not-taken", 20), False),
    (_statement("active", 20), True),  # says they take it: no change
    (_statement("stopped", 500), True),  # stopped before this prescription was written
    (_statement("stopped", 20, code="197361"), True),  # another drug
])
def test_a_statement_that_the_patient_stopped_the_drug_stops_the_renewal(
        statement: dict[str, Any], renewed: bool) -> None:
    f = one(lisinopril(days_ago=300, supply_days=90, repeats=3), statement)
    assert (f.status == Status.DUE) is renewed
    if not renewed:
        assert f.status == Status.NOT_APPLICABLE
        assert "reconcile the medication list" in f.explanation


# --- what was dispensed -------------------------------------------------------------------------


def _dispense(days_ago: int, prescription: str | None, *, supply: int = 90,
              status: str = "completed") -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "MedicationDispense", "id": f"md-{days_ago}-{status}",
        "status": status, "subject": {"reference": "Patient/p1"},
        "medicationCodeableConcept": {"coding": [{"system": RXNORM, "code": LISINOPRIL[0]}]},
        "whenHandedOver": (VISIT - timedelta(days=days_ago)).isoformat(),
        "daysSupply": {"value": supply, "unit": "days", "code": "d"}}
    if prescription is not None:
        resource["authorizingPrescription"] = [{"reference": f"MedicationRequest/{prescription}"}]
    return resource


def _rx() -> dict[str, Any]:
    # 300 days ago, 90 days x (3 + 1) fills, valid 12 months: the arithmetic says visit + 60
    return {**lisinopril(days_ago=300, supply_days=90, repeats=3, validity_end_days_ahead=65),
            "id": "rx1"}


def test_late_refills_move_the_run_out_date_past_the_horizon() -> None:
    # two fills collected (the second two months late): supply to visit - 60, two fills
    # left while the prescription can still be filled: visit + 30, visit + 120
    f = one(_rx(), _dispense(300, "rx1"), _dispense(150, "rx1"))
    assert (f.status, f.due_date) == (Status.SATISFIED, VISIT + timedelta(days=120))
    assert ("last dispensed 2026-07-04, 90 days' supply; the prescription alone would run out "
            "2027-01-30") in f.explanation


def test_every_fill_used_runs_out_with_the_last_supply() -> None:
    fills = [_dispense(d, "rx1") for d in (300, 210, 120, 30)]
    f = one(_rx(), *fills)
    assert (f.status, f.due_date) == (Status.DUE, VISIT + timedelta(days=60))


def test_no_refill_after_the_prescription_expires() -> None:
    # first filled only 100 days ago: supply to visit - 10, one refill then (to visit + 80);
    # the two left cannot be filled after the prescription's validity ends (visit + 65)
    f = one(_rx(), _dispense(100, "rx1"))
    assert (f.status, f.due_date) == (Status.DUE, VISIT + timedelta(days=80))


def test_dispenses_of_the_same_drug_without_a_prescription_reference_count() -> None:
    f = one(_rx(), _dispense(300, None), _dispense(150, None))
    assert f.due_date == VISIT + timedelta(days=120)


def test_a_dispense_that_was_not_handed_over_does_not_count() -> None:
    f = one(_rx(), _dispense(150, "rx1", status="in-progress"))
    assert f.due_date == VISIT + timedelta(days=60)  # the prescription's arithmetic
