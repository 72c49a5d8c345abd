"""Generic evaluation semantics, on the synthetic rules in tests/fixtures/engine_rules/.

Each fixture rule exercises one feature of the schema, so these tests pin down what the
engine does independently of the shipped clinical library. The visit is builders.VISIT
(2026-12-01) unless a test says otherwise.
"""

from __future__ import annotations

import builtins
import io
import os
import socket
import sys
import time
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from builders import (
    LOINC,
    RXNORM,
    SNOMED,
    VISIT,
    coding,
    condition,
    finding,
    findings,
    immunization,
    medication,
    observation,
    patient,
    procedure,
    record,
    shipped_rules,
)

import previsit
from previsit.evaluate import Settings, evaluate, run_out_date
from previsit.intervals import Duration
from previsit.plan import Finding, Order, Role, Status, Visit
from previsit.ruleset import RuleSet, load_ruleset

RULES: RuleSet = load_ruleset(Path(__file__).resolve().parent / "fixtures" / "engine_rules")

POTASSIUM = "2823-3"
NEGATIVE = (SNOMED, "260385009")  # a qualitative result's value: Negative
NO_DUE_SOON = Settings(due_soon=Duration(0, "d"))


def ago(day: date, visit: date = VISIT) -> int:
    """days_ago for the builders, so a test can name the calendar date it means."""
    return (visit - day).days


def result(rule_id: str, *resources: dict[str, Any], settings: Settings | None = None,
           visit: date = VISIT) -> Finding:
    return finding(rule_id, *resources, rules=RULES, settings=settings, visit=visit)


def potassium(on: date, value: float | None = 4.2, **kw: Any) -> dict[str, Any]:
    return observation(POTASSIUM, ago(on), value, "mmol/L", **kw)


# --- status boundaries (annual-lab: potassium, 1-year look-back) ----------------------------


def test_nothing_on_record_is_due_with_the_order() -> None:
    f = result("annual-lab", patient())
    assert f.status == Status.DUE
    assert f.explanation == "no potassium on record"
    assert f.due_date is None
    assert f.orders == (Order(system=LOINC, code=POTASSIUM, display="Potassium",
                              category="laboratory", role=Role.MA, before_visit=True,
                              lead_days=7),)


def test_evidence_exactly_the_lookback_before_the_visit_is_overdue() -> None:
    f = result("annual-lab", patient(), potassium(date(2025, 12, 1)))
    assert f.status == Status.OVERDUE
    assert f.due_date == VISIT
    assert "due since 2026-12-01" in f.explanation
    assert [o.code for o in f.orders] == [POTASSIUM]


def test_evidence_one_day_later_is_due_soon_by_default() -> None:
    f = result("annual-lab", patient(), potassium(date(2025, 12, 2)))
    assert f.status == Status.DUE_SOON
    assert f.due_date == date(2026, 12, 2)
    assert "falls due 2026-12-02, within 60 days of the visit" in f.explanation
    assert [o.code for o in f.orders] == [POTASSIUM]  # due-soon is done now


def test_evidence_one_day_later_is_satisfied_without_a_due_soon_window() -> None:
    f = result("annual-lab", patient(), potassium(date(2025, 12, 2)), settings=NO_DUE_SOON)
    assert f.status == Status.SATISFIED
    assert f.due_date == date(2026, 12, 2)
    assert f.orders == ()


def test_due_soon_window_edge() -> None:
    # good through 2027-01-30 = visit + 60 days: inside the window
    inside = result("annual-lab", patient(), potassium(date(2026, 1, 30)))
    assert (inside.status, inside.due_date) == (Status.DUE_SOON, date(2027, 1, 30))
    # one day later: outside it
    outside = result("annual-lab", patient(), potassium(date(2026, 1, 31)))
    assert (outside.status, outside.due_date) == (Status.SATISFIED, date(2027, 1, 31))
    assert "next due 2027-01-31" in outside.explanation
    assert outside.orders == ()


def test_due_soon_window_is_a_setting() -> None:
    f = result("annual-lab", patient(), potassium(date(2026, 1, 31)),
               settings=Settings(due_soon=Duration(61, "d")))
    assert f.status == Status.DUE_SOON


def test_evidence_on_the_visit_day_counts() -> None:
    f = result("annual-lab", patient(), potassium(VISIT))
    assert f.status == Status.SATISFIED
    assert f.due_date == date(2027, 12, 1)


def test_evidence_dated_after_the_visit_is_ignored() -> None:
    f = result("annual-lab", patient(), potassium(date(2026, 12, 2)))
    assert f.status == Status.DUE
    assert f.evidence == ()
    older = potassium(date(2026, 6, 1))
    f = result("annual-lab", patient(), older, potassium(date(2026, 12, 2)))
    assert (f.status, f.due_date) == (Status.SATISFIED, date(2027, 6, 1))
    assert [e.reference for e in f.evidence] == [f"Observation/{older['id']}"]


def test_latest_evidence_decides_and_is_cited() -> None:
    old = potassium(date(2025, 6, 1))
    new = potassium(date(2026, 6, 1), 4.6)
    f = result("annual-lab", patient(), new, old)
    assert f.status == Status.SATISFIED
    assert f.due_date == date(2027, 6, 1)
    (ev,) = f.evidence
    assert (ev.reference, ev.day, ev.purpose) == (f"Observation/{new['id']}", date(2026, 6, 1),
                                                  "result")
    assert "4.6 mmol/L" in ev.summary


@pytest.mark.parametrize("status", ["preliminary", "registered", "unknown"])
def test_unfinished_results_do_not_count(status: str) -> None:
    f = result("annual-lab", patient(), potassium(date(2026, 11, 1), status=status))
    assert f.status == Status.DUE


def test_a_requirement_window_narrower_than_the_clinic_window_applies() -> None:
    # inr-monthly: 4-week look-back, due_soon 7d on the requirement
    edge = result("inr-monthly", patient(), observation("6301-6", 21, 2.5))
    assert (edge.status, edge.due_date) == (Status.DUE_SOON, date(2026, 12, 8))
    assert "within 7 days of the visit" in edge.explanation
    outside = result("inr-monthly", patient(), observation("6301-6", 20, 2.5))
    assert (outside.status, outside.due_date) == (Status.SATISFIED, date(2026, 12, 9))


def test_the_clinic_window_applies_when_it_is_the_narrower() -> None:
    f = result("inr-monthly", patient(), observation("6301-6", 21, 2.5), settings=NO_DUE_SOON)
    assert f.status == Status.SATISFIED


# --- review_if -----------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "flagged"), [
    (5.5, True), (5.0, False), (3.5, False), (3.4, True), (4.2, False),
])
def test_review_if_flags_a_latest_value_outside_the_range(value: float, flagged: bool) -> None:
    f = result("annual-lab", patient(), potassium(date(2026, 11, 1), value))
    assert f.status == Status.SATISFIED
    if flagged:
        assert f.flags == ("abnormal", "physician-review")
        assert f.needs_physician
    else:
        assert f.flags == ()


def test_review_if_looks_at_the_latest_value_only() -> None:
    f = result("annual-lab", patient(), potassium(date(2026, 3, 1), 6.1),
               potassium(date(2026, 11, 1), 4.4))
    assert f.flags == ()


# --- orders and rule flags ---------------------------------------------------------------------


def test_two_requirements_with_the_same_order_code_propose_it_once() -> None:
    f = result("same-order", patient())
    assert f.status == Status.DUE
    assert [(o.system, o.code, o.display) for o in f.orders] == [
        (LOINC, "24323-8", "Comprehensive metabolic panel (for potassium)")]


@pytest.mark.parametrize(("on", "orders"), [
    (date(2025, 12, 1), 1),  # expired on the visit date: both due, one order
    (date(2026, 1, 31), 1),  # potassium satisfied, HbA1c due: the one order it needs
])
def test_one_order_whichever_requirement_is_due(on: date, orders: int) -> None:
    f = result("same-order", patient(), potassium(on))
    assert len(f.orders) == orders
    assert f.orders[0].code == "24323-8"


def test_requirements_all_satisfied_propose_nothing() -> None:
    f = result("same-order", patient(), potassium(date(2026, 1, 31)),
               observation("4548-4", ago(date(2026, 1, 31)), 5.4, "%"))
    assert (f.status, f.orders) == (Status.SATISFIED, ())


@pytest.mark.parametrize(("done", "status", "flags"), [
    (None, Status.DUE, ("physician-review", "shared-decision")),
    (date(2025, 12, 1), Status.OVERDUE, ("physician-review", "shared-decision")),
    (date(2025, 12, 2), Status.DUE_SOON, ("physician-review", "shared-decision")),
    (date(2026, 1, 31), Status.SATISFIED, ()),  # one day beyond the due-soon window
])
def test_a_rule_flag_is_attached_only_when_actionable(done: date | None, status: Status,
                                                      flags: tuple[str, ...]) -> None:
    ldct = [procedure("16334891000119106", ago(done))] if done else []
    f = result("shared-decision", patient(age=60), *ldct)
    assert (f.status, f.flags) == (status, flags)
    assert f.role == Role.MA  # the flag asks for a physician; the rule's role is unchanged


def test_a_rule_flag_is_not_attached_when_not_applicable() -> None:
    f = result("shared-decision", patient(age=50, days=1))
    assert (f.status, f.flags) == (Status.NOT_APPLICABLE, ())


def test_repeated_clauses_are_said_once() -> None:
    f = result("repeated-clause", patient(age=60))
    assert f.status == Status.NOT_APPLICABLE
    assert f.explanation == ("not applicable: not on an ACE inhibitor and ages ≥ 90; "
                             "patient is 60")


# --- three-valued logic --------------------------------------------------------------------


def test_all_with_an_unknown_part_is_unknown_and_says_why() -> None:
    f = result("logic-all", patient(age=None, sex="female"))
    assert f.status == Status.UNKNOWN
    assert "no birth date on record" in f.explanation
    assert "ages ≥ 40" in f.explanation
    assert f.orders == ()


def test_all_with_a_false_part_is_false_even_if_another_is_unknown() -> None:
    f = result("logic-all", patient(age=None, sex="male"))
    assert f.status == Status.NOT_APPLICABLE


def test_missing_sex_is_unknown_with_a_readable_explanation() -> None:
    f = result("logic-all", patient(age=50, sex=None))
    assert f.status == Status.UNKNOWN
    assert "sex is not recorded" in f.explanation
    assert "female-specific" in f.explanation


def test_all_true_applies() -> None:
    assert result("logic-all", patient(age=40, sex="female")).status == Status.DUE
    assert result("logic-all", patient(age=40, sex="female", days=1)).status == \
        Status.NOT_APPLICABLE


def test_any_with_one_true_part_is_true_even_if_another_is_unknown() -> None:
    # female is true; BMI is missing and `missing: unknown`
    assert result("logic-any", patient(sex="female")).status == Status.DUE


def test_any_with_unknown_and_false_parts_is_unknown() -> None:
    f = result("logic-any", patient(sex="male"))
    assert f.status == Status.UNKNOWN
    assert "no BMI on record, so cannot decide" in f.explanation


def test_any_with_all_parts_false_is_false() -> None:
    bmi = observation("39156-5", 30, 29.9, "kg/m2")
    assert result("logic-any", patient(sex="male"), bmi).status == Status.NOT_APPLICABLE
    bmi30 = observation("39156-5", 30, 30, "kg/m2")
    assert result("logic-any", patient(sex="male"), bmi30).status == Status.DUE


def test_any_with_unknown_sex_and_false_bmi_is_unknown() -> None:
    bmi = observation("39156-5", 30, 22, "kg/m2")
    f = result("logic-any", patient(sex=None), bmi)
    assert f.status == Status.UNKNOWN
    assert "sex is not recorded" in f.explanation


@pytest.mark.parametrize(("sex", "status"), [
    ("male", Status.NOT_APPLICABLE), ("female", Status.DUE), (None, Status.UNKNOWN),
    ("other", Status.UNKNOWN), ("unknown", Status.UNKNOWN),
])
def test_not_keeps_unknown_unknown(sex: str | None, status: Status) -> None:
    assert result("logic-not", patient(sex=sex)).status == status


def test_sex_other_than_male_or_female_is_named_in_the_explanation() -> None:
    f = result("logic-not", patient(sex="other"))
    assert "sex is 'other'" in f.explanation


# --- applicability and exclusions (crc-screening: 45-75, two exclusions) --------------------


@pytest.mark.parametrize(("age", "days", "status"), [
    (45, 0, Status.DUE),  # 45th birthday on the visit day
    (45, 1, Status.NOT_APPLICABLE),  # 45 tomorrow: still 44
    (75, 0, Status.DUE),
    (76, 0, Status.NOT_APPLICABLE),
    (76, 1, Status.DUE),  # 76 tomorrow: still 75
])
def test_age_range_is_inclusive_in_completed_years_on_the_visit_day(
        age: int, days: int, status: Status) -> None:
    assert result("crc-screening", patient(age=age, days=days)).status == status


def test_not_applicable_says_to_whom_it_applies() -> None:
    f = result("crc-screening", patient(age=30))
    assert f.explanation == "not applicable: ages 45–75; patient is 30"


def test_missing_birth_date_makes_an_age_rule_unknown() -> None:
    f = result("crc-screening", patient(age=None))
    assert f.status == Status.UNKNOWN
    assert f.explanation == "no birth date on record, so cannot tell whether ages 45–75 applies"
    assert f.orders == ()


def test_alternative_evidence_the_longest_lasting_wins() -> None:
    colonoscopy = procedure("73761001", ago(date(2020, 1, 1)))
    fit = observation("29771-3", ago(date(2026, 5, 1)))
    f = result("crc-screening", patient(age=60), colonoscopy, fit)
    assert f.status == Status.SATISFIED
    assert f.due_date == date(2030, 1, 1)
    assert "colonoscopy" in f.explanation


def test_exclusion_wins_over_satisfied_requirements() -> None:
    colectomy = procedure("26390003", ago(date(2015, 3, 3)), display="Total colectomy")
    f = result("crc-screening", patient(age=60), colectomy,
               procedure("73761001", ago(date(2026, 1, 1))))
    assert f.status == Status.EXCLUDED
    assert f.explanation.startswith("excluded: total colectomy")
    assert [e.reference for e in f.evidence] == [f"Procedure/{colectomy['id']}"]
    assert f.orders == ()


def test_exclusion_wins_over_due() -> None:
    hospice = condition("385763009", days_ago=20)
    f = result("crc-screening", patient(age=60), hospice)
    assert f.status == Status.EXCLUDED
    assert "hospice care" in f.explanation
    assert f.orders == ()


@pytest.mark.parametrize("kw", [{"verification": "refuted"}, {"status": "resolved"},
                                {"verification": "entered-in-error"},
                                {"days_ago": -10}])  # onset after the visit
def test_an_exclusion_that_does_not_hold_does_not_exclude(kw: dict[str, Any]) -> None:
    f = result("crc-screening", patient(age=60), condition("385763009", **kw))
    assert f.status == Status.DUE


def _order(days_ago: int | None, status: str = "active", intent: str = "order",
           code: str = "385763009") -> dict[str, Any]:
    resource: dict[str, Any] = {"resourceType": "ServiceRequest", "id": f"sr-{status}-{intent}",
                                "status": status, "intent": intent,
                                "code": coding(SNOMED, code),
                                "subject": {"reference": "Patient/p1"}}
    if days_ago is not None:
        resource["authoredOn"] = (VISIT - timedelta(days=days_ago)).isoformat()
    return resource


@pytest.mark.parametrize(("order", "status"), [
    (_order(ago(date(2025, 12, 2))), Status.EXCLUDED),  # a day inside the 1-year look-back
    (_order(ago(date(2025, 12, 1))), Status.DUE),  # exactly a year before the visit
    (_order(0), Status.EXCLUDED),
    (_order(-1), Status.DUE),  # authored after the visit
    (_order(None), Status.DUE),  # no authored date
    (_order(30, status="completed"), Status.EXCLUDED),
    (_order(30, intent="filler-order"), Status.EXCLUDED),
    (_order(30, status="revoked"), Status.DUE),
    (_order(30, status="draft", intent="proposal"), Status.DUE),
    (_order(30, code="73761001"), Status.DUE),  # not in the value set
], ids=["inside", "a-year-ago", "visit-day", "after-visit", "undated", "completed",
        "filler-order", "revoked", "proposal", "other-code"])
def test_service_request_criterion(order: dict[str, Any], status: Status) -> None:
    f = result("crc-screening", patient(age=60), order)
    assert f.status == status
    if status == Status.EXCLUDED:
        assert f.explanation.startswith("excluded: hospice care ordered (385763009 ordered ")
        assert [e.reference for e in f.evidence] == [f"ServiceRequest/{order['id']}"]


# --- count ------------------------------------------------------------------------------------


def test_two_doses_on_the_same_day_count_once() -> None:
    f = result("zoster", patient(), immunization("187", 100), immunization("187", 100))
    assert f.status == Status.DUE
    assert "1 of 2 RZV doses on record" in f.explanation
    assert [o.code for o in f.orders] == ["187"]
    assert f.role == Role.NURSE
    assert f.orders[0].role == Role.NURSE


def test_two_doses_on_different_days_satisfy_a_series_for_ever() -> None:
    f = result("zoster", patient(), immunization("187", 400), immunization("187", 300))
    assert f.status == Status.SATISFIED
    assert f.due_date is None
    assert "2 doses" in f.explanation
    assert len(f.evidence) == 2


def test_a_dose_not_done_does_not_count() -> None:
    f = result("zoster", patient(), immunization("187", 400),
               immunization("187", 300, status="not-done"))
    assert f.status == Status.DUE


# --- with ---------------------------------------------------------------------------------------


def test_with_needs_both() -> None:
    egfr = observation("33914-3", 30, 80, "mL/min")
    f = result("kidney-health", patient(), egfr)
    assert f.status == Status.DUE
    assert "but no uACR on record" in f.explanation
    uacr = observation("9318-7", 30, 12, "mg/g")
    assert result("kidney-health", patient(), uacr).status == Status.DUE
    both = result("kidney-health", patient(), egfr, uacr)
    assert both.status == Status.SATISFIED
    assert len(both.evidence) == 2


def test_with_runs_out_when_the_first_of_the_two_does() -> None:
    egfr = observation("33914-3", 10, 80, "mL/min")
    uacr = observation("9318-7", ago(date(2025, 12, 15)), 12, "mg/g")
    f = result("kidney-health", patient(), egfr, uacr)
    assert f.status == Status.DUE_SOON
    assert f.due_date == date(2026, 12, 15)


# --- min_age on the evidence date (cervical: hrHPV counts from 30) --------------------------


def test_min_age_is_the_age_on_the_evidence_date() -> None:
    born = "1993-06-15"  # 33 at the visit; 30th birthday 2023-06-15
    before = observation("21440-3", ago(date(2023, 6, 14)), value_code=NEGATIVE)
    on = observation("21440-3", ago(date(2023, 6, 15)), value_code=NEGATIVE)
    assert result("cervical", patient(birth=born), before).status == Status.DUE
    f = result("cervical", patient(birth=born), on)
    assert f.status == Status.SATISFIED
    assert f.due_date == date(2028, 6, 15)


def test_min_age_evidence_never_counts_without_a_birth_date() -> None:
    hpv = observation("21440-3", 100, value_code=NEGATIVE)
    assert result("cervical", patient(age=None), hpv).status == Status.DUE
    cytology = observation("10524-7", 100, value_code=NEGATIVE)
    assert result("cervical", patient(age=None), cytology).status == Status.SATISFIED


# --- if_value (a1c-monitoring: 6 months, 3 months while >= 7) -----------------------------


def _a1c(value: float) -> dict[str, Any]:
    return observation("4548-4", ago(date(2026, 8, 23)), value, "%")


def test_if_value_at_the_threshold_shortens_the_lookback() -> None:
    f = result("a1c-monitoring", patient(), condition("44054006"), _a1c(7.0))
    assert f.status == Status.OVERDUE
    assert f.due_date == date(2026, 11, 23)
    assert "while above goal" in f.explanation
    assert "every 3 months" in f.explanation


def test_if_value_just_below_the_threshold_keeps_the_lookback() -> None:
    f = result("a1c-monitoring", patient(), condition("44054006"), _a1c(6.9))
    assert f.status == Status.SATISFIED
    assert f.due_date == date(2027, 2, 23)
    assert "every 6 months" in f.explanation
    assert "while above goal" not in f.explanation


def test_condition_criterion_needs_the_condition_active() -> None:
    assert result("a1c-monitoring", patient(), _a1c(6.9)).status == Status.NOT_APPLICABLE
    resolved = condition("44054006", status="resolved")
    assert result("a1c-monitoring", patient(), resolved).status == Status.NOT_APPLICABLE
    f = result("a1c-monitoring", patient(), condition("44054006"))
    assert f.status == Status.DUE
    assert any(e.purpose == "reason" and e.reference.startswith("Condition/")
               for e in f.evidence)


# --- lookback ever / season ------------------------------------------------------------------


def test_lookback_ever_is_satisfied_for_good() -> None:
    f = result("hcv-once", patient(), observation("13955-0", 365 * 30, value_code=NEGATIVE))
    assert f.status == Status.SATISFIED
    assert f.due_date is None
    assert "(once)" in f.explanation
    assert result("hcv-once", patient()).status == Status.DUE


def _flu(on: date) -> dict[str, Any]:
    return {**immunization("140", 0), "occurrenceDateTime": on.isoformat()}


def test_season_dose_from_august_first_counts_for_the_season() -> None:
    f = result("influenza", patient(), _flu(date(2026, 8, 1)))
    assert f.status == Status.SATISFIED
    assert f.due_date == date(2027, 8, 1)
    assert "every season" in f.explanation


def test_season_dose_on_july_31_belongs_to_the_last_season() -> None:
    f = result("influenza", patient(), _flu(date(2026, 7, 31)))
    assert f.status == Status.OVERDUE
    assert f.due_date == date(2026, 8, 1)


def test_season_end_can_fall_in_the_due_soon_window() -> None:
    f = result("influenza", patient(), _flu(date(2026, 9, 15)), visit=date(2027, 7, 1))
    assert f.status == Status.DUE_SOON
    assert f.due_date == date(2027, 8, 1)


# --- medication criterion (ace-monitoring: on an ACE inhibitor >= 6 months) -----------------


def test_min_duration_on_the_boundary_applies() -> None:
    lisinopril = medication("314076", "lisinopril 10 MG Oral Tablet",
                            days_ago=ago(date(2026, 6, 1)))
    f = result("ace-monitoring", patient(), lisinopril)
    assert f.status == Status.DUE
    assert f"MedicationRequest/{lisinopril['id']}" in [
        e.reference for e in f.evidence if e.purpose == "reason"]


def test_min_duration_one_day_short_does_not_apply() -> None:
    lisinopril = medication("314076", "lisinopril 10 MG Oral Tablet",
                            days_ago=ago(date(2026, 6, 2)))
    f = result("ace-monitoring", patient(), lisinopril)
    assert f.status == Status.NOT_APPLICABLE
    assert "only since 2026-06-02" in f.explanation
    assert "less than 6 months" in f.explanation


def test_ingredient_name_fallback_through_names() -> None:
    uncoded = medication("", "Lisinopril 20 MG Oral Tablet", text_only=True, days_ago=400)
    assert result("ace-monitoring", patient(), uncoded).status == Status.DUE
    other = medication("", "Amlodipine 5 MG Oral Tablet", text_only=True, days_ago=400)
    assert result("ace-monitoring", patient(), other).status == Status.NOT_APPLICABLE


def test_a_stopped_medication_does_not_count() -> None:
    stopped = medication("314076", "lisinopril 10 MG Oral Tablet", status="stopped")
    f = result("ace-monitoring", patient(), stopped)
    assert f.status == Status.NOT_APPLICABLE
    assert "not on an ACE inhibitor" in f.explanation


def test_a_medication_ordered_after_the_visit_does_not_count() -> None:
    future = medication("314076", "lisinopril 10 MG Oral Tablet", days_ago=-3)
    assert result("ace-monitoring", patient(), future).status == Status.NOT_APPLICABLE


def test_min_duration_without_a_start_date_is_unknown() -> None:
    undated = medication("314076", "lisinopril 10 MG Oral Tablet")
    del undated["authoredOn"]
    f = result("ace-monitoring", patient(), undated)
    assert f.status == Status.UNKNOWN
    assert "no start date on record" in f.explanation


# --- observation criterion: missing unknown vs false -----------------------------------------


def test_missing_result_is_false_by_default() -> None:
    f = result("bmi-missing-false", patient())
    assert f.status == Status.NOT_APPLICABLE
    assert "no BMI in the last 2 years" in f.explanation


def test_missing_result_can_be_unknown() -> None:
    f = result("bmi-missing-unknown", patient())
    assert f.status == Status.UNKNOWN
    assert f.explanation == "no BMI in the last 2 years, so cannot decide"


@pytest.mark.parametrize("rule_id", ["bmi-missing-false", "bmi-missing-unknown"])
def test_observation_value_boundary_and_lookback(rule_id: str) -> None:
    assert result(rule_id, patient(), observation("39156-5", 30, 25, "kg/m2")).status == \
        Status.DUE
    assert result(rule_id, patient(), observation("39156-5", 30, 24.9, "kg/m2")).status == \
        Status.NOT_APPLICABLE
    # the latest result decides, not the highest
    assert result(rule_id, patient(), observation("39156-5", 300, 31, "kg/m2"),
                  observation("39156-5", 30, 24, "kg/m2")).status == Status.NOT_APPLICABLE


def test_a_result_older_than_the_criterion_lookback_is_missing() -> None:
    old = observation("39156-5", ago(date(2024, 12, 1)), 31, "kg/m2")
    assert result("bmi-missing-unknown", patient(), old).status == Status.UNKNOWN
    assert result("bmi-missing-false", patient(), old).status == Status.NOT_APPLICABLE
    edge = observation("39156-5", ago(date(2024, 12, 2)), 31, "kg/m2")
    assert result("bmi-missing-false", patient(), edge).status == Status.DUE


def test_a_result_without_a_numeric_value_follows_missing() -> None:
    bare = observation("39156-5", 30)
    assert result("bmi-missing-unknown", patient(), bare).status == Status.UNKNOWN
    assert result("bmi-missing-false", patient(), bare).status == Status.NOT_APPLICABLE


# --- coded values and the physician role (current-smoker) ----------------------------------


def _smoking(code: str | None) -> dict[str, Any]:
    return observation("72166-2", 30, value_code=(SNOMED, code) if code else None)


def test_value_in_matches_the_coded_value() -> None:
    assert result("current-smoker", patient(), _smoking("449868002")).status == Status.DUE
    assert result("current-smoker", patient(), _smoking("8517006")).status == \
        Status.NOT_APPLICABLE
    assert result("current-smoker", patient(), _smoking(None)).status == Status.NOT_APPLICABLE


def test_physician_role_rule_is_flagged_for_review_when_actionable() -> None:
    f = result("current-smoker", patient(), _smoking("449868002"))
    assert f.status == Status.DUE
    assert f.flags == ("physician-review",)
    assert f.orders[0].role == Role.PHYSICIAN
    done = result("current-smoker", patient(), _smoking("449868002"),
                  procedure("16334891000119106", 100))
    assert done.status == Status.SATISFIED
    assert done.flags == ()


# --- renewals -------------------------------------------------------------------------------


def rx(code: str | None, name: str, *, authored: str | None = "2026-01-01",
       supply: int | None = None, repeats: int | None = None, validity_end: str | None = None,
       status: str = "active", rid: str | None = None) -> dict[str, Any]:
    dispense: dict[str, Any] = {}
    if supply is not None:
        dispense["expectedSupplyDuration"] = {"value": supply, "unit": "days", "code": "d",
                                              "system": "http://unitsofmeasure.org"}
    if repeats is not None:
        dispense["numberOfRepeatsAllowed"] = repeats
    if validity_end is not None:
        dispense["validityPeriod"] = {"start": authored or "2026-01-01", "end": validity_end}
    resource: dict[str, Any] = {
        "resourceType": "MedicationRequest", "id": rid or f"rx-{name.split()[0].lower()}",
        "status": status, "intent": "order",
        "medicationCodeableConcept": ({**coding(RXNORM, code, name), "text": name} if code
                                      else {"text": name}),
        "subject": {"reference": "Patient/p1"}, "dispenseRequest": dispense}
    if authored is not None:
        resource["authoredOn"] = authored
    return resource


LISINOPRIL = ("314076", "lisinopril 10 MG Oral Tablet")


def _run_out(**kw: Any) -> date | None:
    (order,) = record(patient(), rx(*LISINOPRIL, **kw)).medications
    return run_out_date(order)


def test_run_out_date_from_validity_end() -> None:
    assert _run_out(validity_end="2027-01-15") == date(2027, 1, 15)


def test_run_out_date_from_supply_times_fills() -> None:
    # 90 days x (3 repeats + 1) = 360 days after 2026-01-01
    assert _run_out(supply=90, repeats=3) == date(2026, 12, 27)
    assert _run_out(supply=30) == date(2026, 1, 31)  # no repeats: one fill


def test_run_out_date_is_the_earliest_of_both() -> None:
    assert _run_out(supply=90, repeats=3, validity_end="2026-12-20") == date(2026, 12, 20)
    assert _run_out(supply=90, repeats=3, validity_end="2027-01-15") == date(2026, 12, 27)


def test_run_out_date_is_none_when_it_cannot_be_computed() -> None:
    assert _run_out() is None
    assert _run_out(authored=None, supply=90, repeats=3) is None


def renewals(*resources: dict[str, Any], settings: Settings | None = None) -> list[Finding]:
    return findings("renewals", patient(), *resources, rules=RULES, settings=settings)


def test_a_renewal_due_within_the_horizon_proposes_an_order() -> None:
    # a recent potassium keeps ace-monitoring satisfied, so no "renew after the lab" note
    (f,) = renewals(rx(*LISINOPRIL, supply=90, repeats=3), potassium(date(2026, 10, 1)))
    assert f.status == Status.DUE
    assert f.title == "Renew lisinopril 10 MG Oral Tablet"
    assert f.due_date == date(2026, 12, 27)
    assert f.explanation == ("lisinopril 10 MG Oral Tablet: runs out 2026-12-27; "
                             "renew for 12 months")
    assert f.role == Role.PHARMACIST
    assert f.medication_ref == "MedicationRequest/rx-lisinopril"
    assert f.orders == (Order(system=RXNORM, code="314076",
                              display="lisinopril 10 MG Oral Tablet", category="medication",
                              role=Role.PHARMACIST, before_visit=False),)
    assert f.flags == ()


def test_a_prescription_that_ran_out_on_or_before_the_visit_is_overdue() -> None:
    (f,) = renewals(rx(*LISINOPRIL, validity_end="2026-12-01"))
    assert f.status == Status.OVERDUE
    assert "ran out 2026-12-01" in f.explanation


def test_renewal_horizon_boundary() -> None:
    # visit + 90 days = 2027-03-01
    (at,) = renewals(rx(*LISINOPRIL, validity_end="2027-03-01"))
    assert at.status == Status.SATISFIED
    assert at.orders == ()
    (inside,) = renewals(rx(*LISINOPRIL, validity_end="2027-02-28"))
    assert inside.status == Status.DUE


def test_renewal_horizon_is_a_setting() -> None:
    (f,) = renewals(rx(*LISINOPRIL, validity_end="2027-01-15"),
                    settings=Settings(renewal_horizon=Duration(30, "d")))
    assert f.status == Status.SATISFIED


def test_a_renewal_without_a_run_out_date_is_unknown() -> None:
    (f,) = renewals(rx(*LISINOPRIL))
    assert f.status == Status.UNKNOWN
    assert "cannot tell when it runs out" in f.explanation
    assert f.orders == ()


@pytest.mark.parametrize("drug", [("1049621", "oxycodone hydrochloride 5 MG Oral Tablet"),
                                  (None, "Oxycodone HCl 5 mg tablet")])
def test_a_controlled_substance_goes_to_the_physician_without_an_order(
        drug: tuple[str | None, str]) -> None:
    (f,) = renewals(rx(*drug, validity_end="2026-12-20"))
    assert f.status == Status.DUE
    assert f.orders == ()
    assert f.role == Role.PHYSICIAN
    assert set(f.flags) == {"controlled-substance", "physician-review"}
    assert "controlled substance: physician review" in f.explanation
    assert "renew for 12 months" not in f.explanation


@pytest.mark.parametrize(("validity_end", "status"), [
    ("2027-02-28", Status.DUE),  # runs out the day before visit + 90 days
    ("2027-03-01", Status.SATISFIED),  # runs out on visit + 90 days: beyond the horizon
])
def test_a_controlled_substance_is_flagged_only_when_its_renewal_is_due(
        validity_end: str, status: Status) -> None:
    (f,) = renewals(rx("1049621", "oxycodone hydrochloride 5 MG Oral Tablet",
                       validity_end=validity_end))
    assert f.status == status
    if status == Status.DUE:
        assert f.flags == ("controlled-substance", "physician-review")
        assert "controlled substance" in f.explanation
    else:
        assert f.flags == ()
        assert not f.needs_physician
        assert "controlled" not in f.explanation
    assert f.orders == ()


def test_a_controlled_substance_with_an_unknown_run_out_is_not_flagged() -> None:
    (f,) = renewals(rx("1049621", "oxycodone hydrochloride 5 MG Oral Tablet"))
    assert (f.status, f.flags, f.role) == (Status.UNKNOWN, (), Role.PHYSICIAN)


@pytest.mark.parametrize("newest_first", [True, False])
def test_the_latest_order_per_drug_wins(newest_first: bool) -> None:
    old = rx(*LISINOPRIL, authored="2025-01-01", supply=90, rid="old")
    new = rx(*LISINOPRIL, authored="2026-11-01", supply=90, repeats=3, rid="new")
    (f,) = renewals(*((new, old) if newest_first else (old, new)))
    assert f.medication_ref == "MedicationRequest/new"
    assert f.status == Status.SATISFIED
    assert f.due_date == date(2027, 10, 27)


def test_one_finding_per_drug_and_inactive_orders_are_skipped() -> None:
    out = renewals(rx(*LISINOPRIL, validity_end="2026-12-20"),
                   rx("197361", "amlodipine 5 MG Oral Tablet", validity_end="2026-12-20"),
                   rx("6809", "metformin 500 MG", validity_end="2026-12-20", status="stopped"))
    assert sorted(f.title for f in out) == ["Renew amlodipine 5 MG Oral Tablet",
                                            "Renew lisinopril 10 MG Oral Tablet"]


def test_no_active_prescription_is_not_applicable() -> None:
    (f,) = renewals()
    assert f.status == Status.NOT_APPLICABLE
    (stopped,) = renewals(rx(*LISINOPRIL, validity_end="2026-12-20", status="stopped"))
    assert stopped.status == Status.NOT_APPLICABLE


def test_a_renewal_says_to_wait_for_the_monitoring_lab_that_is_due() -> None:
    # On lisinopril since January (>= 6 months) with no potassium: ace-monitoring is due.
    lisinopril = rx(*LISINOPRIL, supply=90, repeats=3)
    plan = evaluate(record(patient(), lisinopril), RULES, VISIT)
    (lab,) = [f for f in plan.findings if f.rule_id == "ace-monitoring"]
    assert lab.status == Status.DUE
    (renewal,) = [f for f in plan.findings if f.rule_id == "renewals"]
    assert renewal.status == Status.DUE
    assert renewal.explanation.endswith("; renew after the BMP drawn before the visit")


def test_a_renewal_does_not_mention_a_lab_that_is_satisfied() -> None:
    lisinopril = rx(*LISINOPRIL, supply=90, repeats=3)
    (renewal,) = renewals(lisinopril, potassium(date(2026, 10, 1)))
    assert renewal.status == Status.DUE
    assert "renew after" not in renewal.explanation


# --- evaluate(): purity and the visit argument ------------------------------------------------


def _busy_record() -> Any:
    return record(patient(age=60, sex="female"), potassium(date(2026, 1, 30), 5.6),
                  condition("44054006"), _a1c(7.2), immunization("187", 100),
                  rx(*LISINOPRIL, supply=90, repeats=3),
                  rx("1049621", "oxycodone hydrochloride 5 MG Oral Tablet"))


# What "reading the clock" means in CPython: these builtins, whatever module calls them.
_CLOCKS = {"time", "time_ns", "monotonic", "monotonic_ns", "perf_counter", "perf_counter_ns",
           "localtime", "gmtime", "ctime", "datetime.now", "datetime.utcnow", "datetime.today",
           "date.today"}


def _chart_situations() -> Any:
    """A record that walks every new path of the shipped library: an encounter, a dispense,
    a statement, a positive FIT, a valueless and an impossible result, a too-early dose."""
    encounter = {"resourceType": "Encounter", "id": "e1", "status": "in-progress",
                 "type": [coding(SNOMED, "305336008")], "period": {"start": "2026-10-01"},
                 "subject": {"reference": "Patient/p1"}}
    dispense = {"resourceType": "MedicationDispense", "id": "d1", "status": "completed",
                "medicationCodeableConcept": coding(RXNORM, LISINOPRIL[0]),
                "whenHandedOver": "2026-09-01", "daysSupply": {"value": 90, "code": "d"},
                "subject": {"reference": "Patient/p1"}}
    statement = {"resourceType": "MedicationStatement", "id": "s1", "status": "stopped",
                 "medicationCodeableConcept": coding(RXNORM, "855332"),
                 "dateAsserted": "2026-11-01", "subject": {"reference": "Patient/p1"}}
    return record(patient(age=62, sex="female"), condition("44054006"), encounter,
                  dispense, statement, rx(*LISINOPRIL, supply=90, repeats=3),
                  rx("855332", "warfarin sodium 5 MG Oral Tablet"),
                  observation("29771-3", 40, value_code=(SNOMED, "10828004")),
                  observation("4548-4", 20), observation("2823-3", 10, 0.4, "mmol/L"),
                  immunization("187", 45), immunization("187", 25))


@pytest.mark.parametrize("which", ["engine-fixtures", "shipped-library"])
def test_evaluate_reads_no_clock_and_does_no_io(monkeypatch: pytest.MonkeyPatch,
                                                which: str) -> None:
    """Pure: everything evaluate needs is passed in. Opening a file or a socket raises, and
    a profiler records every call of a clock, even one made from C."""
    rec, rules = (_busy_record(), RULES) if which == "engine-fixtures" else \
        (_chart_situations(), shipped_rules())
    clock_calls: list[str] = []

    package = str(Path(previsit.__file__).parent)

    def profile(frame: Any, event: str, arg: Any) -> None:
        # Only previsit's own code counts: a garbage-collector callback or a test plugin
        # may read the clock in the middle of an evaluation without evaluate asking.
        if event == "c_call" and getattr(arg, "__qualname__", "") in _CLOCKS and \
                frame.f_code.co_filename.startswith(package):
            clock_calls.append(f"{arg.__qualname__} in {frame.f_code.co_name}")

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"evaluate did I/O: {args!r}")

    for module, name in ((builtins, "open"), (io, "open"), (os, "open"), (socket, "socket"),
                         (socket, "create_connection"), (time, "time"), (time, "monotonic")):
        monkeypatch.setattr(module, name, refuse)
    sys.setprofile(profile)
    try:
        first = evaluate(rec, rules, VISIT)
        second = evaluate(rec, rules, VISIT)
    finally:
        sys.setprofile(None)
    assert clock_calls == []
    assert first == second
    assert len(first.findings) == len(rules.rules) + 1  # renewals: one per drug


def test_evaluate_accepts_a_date_or_a_visit() -> None:
    rec = _busy_record()
    visit = Visit(appointment_id="appt-9", patient_id="p1",
                  start=datetime(2026, 12, 1, 9, 30), status="booked")
    by_visit = evaluate(rec, RULES, visit)
    by_date = evaluate(rec, RULES, VISIT)
    assert by_visit.visit is visit
    assert by_visit.findings == by_date.findings
    assert by_date.visit.day == VISIT
    assert by_date.visit.patient_id == "p1"


def test_a_visit_without_a_start_cannot_be_evaluated() -> None:
    visit = Visit(appointment_id="appt-9", patient_id="p1", start=None, status="booked")
    with pytest.raises(ValueError, match="appt-9"):
        evaluate(_busy_record(), RULES, visit)


def test_the_plan_carries_the_patient_and_the_record_issues() -> None:
    undated = potassium(date(2026, 1, 1))
    del undated["effectiveDateTime"]
    plan = evaluate(record(patient(age=60, sex="male", name="Alan Turing"), undated), RULES,
                    VISIT)
    assert (plan.patient_name, plan.patient_age, plan.patient_sex) == ("Alan Turing", 60,
                                                                       "male")
    assert plan.issues == (f"Observation/{undated['id']}: result has no date; not used",)


def test_disabled_rules_are_not_evaluated() -> None:
    rules = load_ruleset(Path(RULES.sources[0]), disabled=["annual-lab"])
    plan = evaluate(record(patient()), rules, VISIT)
    assert "annual-lab" not in {f.rule_id for f in plan.findings}
    assert "kidney-health" in {f.rule_id for f in plan.findings}


def test_a_deceased_patient_gets_no_plan() -> None:
    rec = record({**patient(age=80), "deceasedDateTime": "2026-10-19T04:10:00-05:00"},
                 potassium(date(2025, 1, 1)))
    plan = evaluate(rec, RULES, VISIT)
    assert (plan.findings, plan.failed, plan.patient_age) == ((), None, None)
    assert plan.not_planned == ("the patient is recorded as deceased on 2026-10-19: the "
                                "booking was not planned and no order was written; cancel it")
    unknown_date = evaluate(record({**patient(), "deceasedBoolean": True}), RULES, VISIT)
    assert unknown_date.not_planned is not None
    assert unknown_date.not_planned.startswith("the patient is recorded as deceased: ")


def test_the_plan_lists_implausible_results_to_check() -> None:
    plan = evaluate(record(patient(), potassium(date(2026, 11, 1), 12.4),
                           potassium(date(2027, 1, 1), 0.1)), RULES, VISIT)
    # the result after the visit is not the visit's business
    assert plan.checks == ("check this value: 2823-3 12.4 mmol/L on 2026-11-01 is outside "
                           "1.5–9 mmol/L, the range a patient can have; it was not used",)
