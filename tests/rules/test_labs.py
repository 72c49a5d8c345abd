"""Pre-visit monitoring labs (rules/*-monitoring.yaml, kidney-health-evaluation), at their edges.

Every look-back is tested at its boundary: a result dated exactly one look-back before the
visit (2026-12-01) is overdue, one dated a day later still counts. Medication rules are tested
with clinical-drug codes, ingredient codes and the ingredient-name fallback, and with stopped
orders, which must not count.
"""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

import pytest
from builders import (
    ICD10CM,
    SNOMED,
    VISIT,
    condition,
    finding,
    medication,
    observation,
    patient,
    procedure,
    record,
    shipped_rules,
)

from previsit.evaluate import Settings, evaluate
from previsit.plan import Finding, Role, Status
from previsit.proposals import merge_orders
from previsit.timeline import draw_window

DIABETES = "44054006"  # SNOMED CT "Diabetes mellitus type 2", in the VSAC Diabetes set


# Dates one look-back before the visit (2026-12-01), written out rather than computed with
# the product's own calendar arithmetic (which these tests check).
ONE_BEFORE_VISIT = {"1y": date(2025, 12, 1), "6mo": date(2026, 6, 1), "4mo": date(2026, 8, 1),
                    "3mo": date(2026, 9, 1)}
# The latest result date whose look-back still runs out within `after_visit` days of the
# visit (2026-12-31 or 2027-01-30); one day later and it runs out after that.
LATEST_FALLING_DUE = {("6mo", 30): date(2026, 6, 30), ("1y", 60): date(2026, 1, 30),
                      ("3mo", 30): date(2026, 9, 30)}


def days_ago(duration: str, *, extra: int = 0) -> int:
    """Days before the visit of the date one `duration` before it (+extra days earlier)."""
    return (VISIT - ONE_BEFORE_VISIT[duration]).days + extra


def days_ago_falling_due(lookback: str, after_visit: int) -> int:
    return (VISIT - LATEST_FALLING_DUE[(lookback, after_visit)]).days


def order_codes(f: Finding) -> list[str]:
    return [o.code for o in f.orders]


def diabetic(age: int | None = 60, **kwargs: Any) -> list[dict[str, Any]]:
    return [patient(age, **kwargs), condition(DIABETES, display="Diabetes mellitus type 2")]


# --- HbA1c -------------------------------------------------------------------------------


def hba1c(days: int, value: float | None = 6.5, code: str = "4548-4",
          **kwargs: Any) -> dict[str, Any]:
    return observation(code, days, value, "%", **kwargs)


def test_hba1c_not_applicable_without_diabetes() -> None:
    assert finding("hba1c-monitoring", patient(60)).status is Status.NOT_APPLICABLE


@pytest.mark.parametrize(("system", "code"), [(SNOMED, "44054006"), (ICD10CM, "E11.9"),
                                              (ICD10CM, "E10.9")])
def test_hba1c_due_for_diabetes_coded_either_way(system: str, code: str) -> None:
    f = finding("hba1c-monitoring", patient(60), condition(code, system=system))
    assert f.status is Status.DUE
    assert order_codes(f) == ["4548-4"]
    order = f.orders[0]
    assert order.before_visit and order.lead_days == 3 and order.category == "laboratory"
    assert order.role is Role.MA and f.role is Role.MA


@pytest.mark.parametrize(("clinical", "verification"), [("resolved", "confirmed"),
                                                        ("active", "refuted")])
def test_hba1c_resolved_or_refuted_diabetes_does_not_count(clinical: str,
                                                           verification: str) -> None:
    f = finding("hba1c-monitoring", patient(60),
                condition(DIABETES, status=clinical, verification=verification))
    assert f.status is Status.NOT_APPLICABLE


@pytest.mark.parametrize(("value", "lookback"), [(6.9, "6mo"), (7.0, "3mo"), (9.5, "3mo")])
def test_hba1c_goal_switch_boundaries(value: float, lookback: str) -> None:
    """At goal (< 7 %) an HbA1c counts for 6 months; at or above it, for 3 months."""
    exactly = finding("hba1c-monitoring", *diabetic(), hba1c(days_ago(lookback), value))
    day_later = finding("hba1c-monitoring", *diabetic(), hba1c(days_ago(lookback) - 1, value))
    assert exactly.status is Status.OVERDUE
    assert day_later.status is Status.DUE_SOON
    assert order_codes(exactly) == order_codes(day_later) == ["4548-4"]


def test_hba1c_above_goal_four_months_ago_is_overdue_but_at_goal_is_satisfied() -> None:
    four_months = days_ago("4mo")
    assert finding("hba1c-monitoring", *diabetic(),
                   hba1c(four_months, 7.0)).status is Status.OVERDUE
    at_goal = finding("hba1c-monitoring", *diabetic(), hba1c(four_months, 6.9))
    assert at_goal.status is Status.SATISFIED
    assert at_goal.orders == ()


def test_hba1c_interval_follows_the_latest_value_not_an_older_one() -> None:
    f = finding("hba1c-monitoring", *diabetic(), hba1c(300, 8.4), hba1c(days_ago("4mo"), 6.8))
    assert f.status is Status.SATISFIED


@pytest.mark.parametrize(("newer", "status"), [(0, Status.DUE_SOON), (1, Status.SATISFIED)])
def test_hba1c_due_soon_window_is_30_days(newer: int, status: Status) -> None:
    days = days_ago_falling_due("6mo", 30) - newer
    assert finding("hba1c-monitoring", *diabetic(), hba1c(days, 6.5)).status is status


def test_hba1c_hplc_code_counts() -> None:
    f = finding("hba1c-monitoring", *diabetic(), hba1c(20, 6.1, code="17856-6"))
    assert f.status is Status.SATISFIED


@pytest.mark.parametrize("status", ["preliminary", "entered-in-error", "cancelled"])
def test_hba1c_not_final_does_not_count(status: str) -> None:
    f = finding("hba1c-monitoring", *diabetic(), hba1c(20, 6.1, status=status))
    assert f.status is Status.DUE


@pytest.mark.parametrize(("value", "flagged"), [(10.0, False), (10.1, True)])
def test_hba1c_very_high_value_flags_physician_review(value: float, flagged: bool) -> None:
    f = finding("hba1c-monitoring", *diabetic(), hba1c(20, value))
    assert f.needs_physician is flagged
    assert f.status is Status.SATISFIED  # drawn 20 days ago: no redraw, a physician looks


def test_hba1c_excluded_in_hospice_or_palliative_care_within_a_year() -> None:
    palliative = condition("Z51.5", system=ICD10CM, days_ago=200)
    assert finding("hba1c-monitoring", *diabetic(), palliative).status is Status.EXCLUDED
    hospice = procedure("385763009", days_ago=days_ago("1y") - 1)  # Hospice care
    assert finding("hba1c-monitoring", *diabetic(), hospice).status is Status.EXCLUDED
    old_hospice = procedure("385763009", days_ago=days_ago("1y", extra=1))
    assert finding("hba1c-monitoring", *diabetic(), old_hospice).status is Status.DUE


# --- kidney health evaluation ---------------------------------------------------------------


EGFR, UACR = "98979-8", "9318-7"


@pytest.mark.parametrize(("age", "days", "applies"), [
    (18, 0, True), (18, 1, False),   # 18th birthday on the visit date / the day after
    (86, 1, True), (86, 0, False),   # still 85 / 86 on the visit date
])
def test_kidney_age_limits(age: int, days: int, applies: bool) -> None:
    f = finding("kidney-health-evaluation", *diabetic(age, days=days))
    assert (f.status is Status.DUE) is applies
    assert (f.status is Status.NOT_APPLICABLE) is not applies


def test_kidney_unknown_without_birth_date() -> None:
    f = finding("kidney-health-evaluation", *diabetic(None))
    assert f.status is Status.UNKNOWN


def test_kidney_needs_both_tests_and_orders_both() -> None:
    f = finding("kidney-health-evaluation", *diabetic())
    assert f.status is Status.DUE
    assert order_codes(f) == [EGFR, UACR]


def test_kidney_orders_only_the_missing_test() -> None:
    only_egfr = finding("kidney-health-evaluation", *diabetic(),
                        observation("62238-1", 100, 75, "mL/min/{1.73_m2}"))
    assert only_egfr.status is Status.DUE
    assert order_codes(only_egfr) == [UACR]
    only_uacr = finding("kidney-health-evaluation", *diabetic(),
                        observation("9318-7", 100, 12, "mg/g"))
    assert order_codes(only_uacr) == [EGFR]


@pytest.mark.parametrize("egfr_code", ["98979-8", "62238-1", "33914-3"])
def test_kidney_satisfied_by_egfr_and_uacr(egfr_code: str) -> None:
    """33914-3 (MDRD) is not in the VSAC set but is what Synthea and many labs send."""
    f = finding("kidney-health-evaluation", *diabetic(),
                observation(egfr_code, 100, 75, "mL/min/{1.73_m2}"),
                observation("14959-1", 100, 12, "mg/g"))
    assert f.status is Status.SATISFIED
    assert f.orders == ()


@pytest.mark.parametrize(("code", "missing_order"), [("98979-8", EGFR), ("9318-7", UACR)])
def test_kidney_one_year_boundary(code: str, missing_order: str) -> None:
    other = observation("14959-1" if code == "98979-8" else "62238-1", 30, 50)
    exactly = finding("kidney-health-evaluation", *diabetic(), other,
                      observation(code, days_ago("1y"), 50))
    assert exactly.status is Status.OVERDUE
    assert order_codes(exactly) == [missing_order]
    day_later = finding("kidney-health-evaluation", *diabetic(), other,
                        observation(code, days_ago("1y") - 1, 50))
    assert day_later.status is Status.DUE_SOON


@pytest.mark.parametrize("excluding", [
    condition("N18.6", system=ICD10CM, days_ago=3000, status="resolved"),  # ESRD, ever
    condition("433146000", days_ago=500),                                 # CKD stage 5
    procedure("302497006", 3000),                                         # hemodialysis, ever
    procedure("90935", 3000, system="http://www.ama-assn.org/go/cpt"),    # CPT hemodialysis
    condition("Z51.5", system=ICD10CM, days_ago=100),                     # palliative care
], ids=["esrd", "ckd5", "dialysis-snomed", "dialysis-cpt", "palliative"])
def test_kidney_exclusions(excluding: dict[str, Any]) -> None:
    assert finding("kidney-health-evaluation", *diabetic(),
                   excluding).status is Status.EXCLUDED


@pytest.mark.parametrize(("ckd5", "status"), [
    (condition("433146000", days_ago=500), Status.EXCLUDED),
    (condition("433146000", days_ago=500, status="resolved"), Status.DUE),
    (condition("433146000", days_ago=500, abated_days_ago=1), Status.DUE),  # ended yesterday
    (condition("433146000", days_ago=500, abated_days_ago=-1), Status.EXCLUDED),  # ends tomorrow
    (condition("N18.6", system=ICD10CM, days_ago=500, abated_days_ago=300), Status.EXCLUDED),
], ids=["ckd5-active", "ckd5-resolved", "ckd5-abated-yesterday", "ckd5-abates-tomorrow",
        "esrd-resolved"])
def test_kidney_ckd5_excludes_while_active_esrd_for_ever(ckd5: dict[str, Any],
                                                         status: Status) -> None:
    # CMS951: CKD stage 5 that is active; KED: ESRD at any time
    assert finding("kidney-health-evaluation", *diabetic(), ckd5).status is status


def test_kidney_hospice_assessment_answered_yes_excludes_but_no_does_not() -> None:
    yes = observation("45755-6", 30, value_code=(SNOMED, "373066001"))
    no = observation("45755-6", 30, value_code=(SNOMED, "373067005"))
    assert finding("kidney-health-evaluation", *diabetic(), yes).status is Status.EXCLUDED
    assert finding("kidney-health-evaluation", *diabetic(), no).status is Status.DUE


FRAIL = condition("R26.2", system=ICD10CM, days_ago=100)          # difficulty in walking
ADVANCED = condition("C25.9", system=ICD10CM, days_ago=300)       # pancreatic cancer


@pytest.mark.parametrize(("age", "days", "extra", "status"), [
    (66, 0, [FRAIL, ADVANCED], Status.EXCLUDED),
    (66, 1, [FRAIL, ADVANCED], Status.DUE),      # still 65
    (75, 0, [FRAIL], Status.DUE),                # frailty alone is not enough before 81
    (81, 0, [FRAIL], Status.EXCLUDED),
    (81, 1, [FRAIL], Status.DUE),                # still 80
])
def test_kidney_frailty_exclusions(age: int, days: int, extra: list[dict[str, Any]],
                                   status: Status) -> None:
    f = finding("kidney-health-evaluation", *diabetic(age, days=days), *extra)
    assert f.status is status


# --- lipids --------------------------------------------------------------------------------


def test_lipids_not_applicable_without_diabetes_or_statin() -> None:
    assert finding("lipid-monitoring", patient(55)).status is Status.NOT_APPLICABLE


@pytest.mark.parametrize("statin", [
    medication("617310", "atorvastatin 20 MG Oral Tablet"),
    medication("83367", "atorvastatin"),                                  # ingredient
    medication("316672", "Simvistatin 10 MG"),                            # Synthea's code
    medication("", "Rosuvastatin 10 MG Oral Tablet", text_only=True),     # text only
    medication("999999", "pravastatin sodium 30 MG Oral Tablet"),         # unknown code
], ids=["scd", "ingredient", "synthea-scdc", "text-only", "name-fallback"])
def test_lipids_apply_on_a_statin(statin: dict[str, Any]) -> None:
    f = finding("lipid-monitoring", patient(55), statin)
    assert f.status is Status.DUE
    assert order_codes(f) == ["57698-3"]


def test_lipids_stopped_statin_does_not_count() -> None:
    stopped = medication("617310", "atorvastatin 20 MG Oral Tablet", status="stopped")
    assert finding("lipid-monitoring", patient(55), stopped).status is Status.NOT_APPLICABLE


def test_lipids_apply_in_diabetes_without_a_statin() -> None:
    assert finding("lipid-monitoring", *diabetic()).status is Status.DUE


@pytest.mark.parametrize("code", ["13457-7", "18262-6", "57698-3", "24331-1"])
def test_lipids_one_year_boundary_for_each_evidence(code: str) -> None:
    exactly = finding("lipid-monitoring", *diabetic(), observation(code, days_ago("1y"), 90))
    day_later = finding("lipid-monitoring", *diabetic(),
                        observation(code, days_ago("1y") - 1, 90))
    recent = finding("lipid-monitoring", *diabetic(), observation(code, 200, 90))
    assert exactly.status is Status.OVERDUE
    assert day_later.status is Status.DUE_SOON
    assert recent.status is Status.SATISFIED


@pytest.mark.parametrize(("newer", "status"), [(0, Status.DUE_SOON), (1, Status.SATISFIED)])
def test_lipids_default_due_soon_window(newer: int, status: Status) -> None:
    days = days_ago_falling_due("1y", 60) - newer
    f = finding("lipid-monitoring", *diabetic(), observation("13457-7", days, 90))
    assert f.status is status


def test_lipids_excluded_in_hospice() -> None:
    f = finding("lipid-monitoring", *diabetic(), procedure("385763009", 40))
    assert f.status is Status.EXCLUDED


# --- ACE inhibitor / ARB / diuretic ---------------------------------------------------------


POTASSIUM, CREATININE = "2823-3", "2160-0"
LISINOPRIL = ("314076", "lisinopril 10 MG Oral Tablet")


def on_drug(code: str = LISINOPRIL[0], display: str = LISINOPRIL[1], *, since: int = 400,
            **kwargs: Any) -> list[dict[str, Any]]:
    return [patient(60), medication(code, display, days_ago=since, **kwargs)]


@pytest.mark.parametrize(("since", "applies"), [(days_ago("6mo"), True),
                                                (days_ago("6mo") - 1, False)])
def test_ace_min_duration_six_months(since: int, applies: bool) -> None:
    f = finding("ace-arb-diuretic-monitoring", *on_drug(since=since))
    assert f.status is (Status.DUE if applies else Status.NOT_APPLICABLE)


@pytest.mark.parametrize(("code", "display", "text_only"), [
    ("29046", "lisinopril", False),                                   # ingredient
    ("979492", "losartan potassium 50 MG Oral Tablet", False),        # SCD in the set
    ("316049", "Hydrochlorothiazide 25 MG", False),                   # Synthea's code
    ("", "Lisinopril 20 MG Oral Tablet", True),                       # text only
    ("999999", "valsartan 240 MG Oral Tablet", False),                # SCD not in the set
    ("", "HCTZ 25 mg tablet daily", True),                            # abbreviation
    ("313988", "furosemide 40 MG Oral Tablet", False),                # loop diuretic
    ("313096", "spironolactone 25 MG Oral Tablet", False),            # K-sparing diuretic
])
def test_ace_arb_diuretic_recognised(code: str, display: str, text_only: bool) -> None:
    f = finding("ace-arb-diuretic-monitoring", *on_drug(code, display, text_only=text_only))
    assert f.status is Status.DUE
    assert order_codes(f) == [POTASSIUM, CREATININE]


def test_ace_unrelated_drug_does_not_apply() -> None:
    f = finding("ace-arb-diuretic-monitoring", *on_drug("197361", "Amlodipine 5 MG Oral Tablet"))
    assert f.status is Status.NOT_APPLICABLE


def test_ace_stopped_order_does_not_count() -> None:
    f = finding("ace-arb-diuretic-monitoring", *on_drug(status="stopped"))
    assert f.status is Status.NOT_APPLICABLE


def test_ace_switch_within_the_class_keeps_counting_from_the_first_order() -> None:
    f = finding("ace-arb-diuretic-monitoring", patient(60),
                medication("858813", "enalapril maleate 5 MG Oral Tablet", days_ago=400,
                           status="stopped"),
                medication("979492", "losartan potassium 50 MG Oral Tablet", days_ago=30))
    assert f.status is Status.DUE


def test_ace_orders_only_the_missing_lab() -> None:
    f = finding("ace-arb-diuretic-monitoring", *on_drug(),
                observation("2823-3", 100, 4.2, "mmol/L"))
    assert order_codes(f) == [CREATININE]
    f = finding("ace-arb-diuretic-monitoring", *on_drug(),
                observation("38483-4", 100, 1.0, "mg/dL"))  # Synthea's creatinine code
    assert order_codes(f) == [POTASSIUM]


@pytest.mark.parametrize("code", [POTASSIUM, CREATININE])
def test_ace_one_year_boundary(code: str) -> None:
    other = observation(CREATININE if code == POTASSIUM else POTASSIUM, 30, 4.0)
    exactly = finding("ace-arb-diuretic-monitoring", *on_drug(), other,
                      observation(code, days_ago("1y"), 4.0))
    day_later = finding("ace-arb-diuretic-monitoring", *on_drug(), other,
                        observation(code, days_ago("1y") - 1, 4.0))
    assert exactly.status is Status.OVERDUE
    assert order_codes(exactly) == [code]
    assert day_later.status is Status.DUE_SOON


@pytest.mark.parametrize(("value", "flagged"), [(3.4, True), (3.5, False), (5.5, False),
                                                (5.6, True)])
def test_ace_potassium_outside_range_flags_physician_review(value: float,
                                                            flagged: bool) -> None:
    f = finding("ace-arb-diuretic-monitoring", *on_drug(),
                observation("6298-4", 20, value, "mmol/L"),  # potassium in blood
                observation(CREATININE, 20, 1.0, "mg/dL"))
    assert f.status is Status.SATISFIED
    assert f.needs_physician is flagged


def test_creatinine_due_under_two_rules_is_one_order() -> None:
    """ACE inhibitor and lithium both want a creatinine: one merged proposal."""
    resources = [patient(60), medication(*LISINOPRIL, days_ago=400),
                 medication("197889", "lithium carbonate 300 MG Oral Capsule", days_ago=400)]
    rec = record(*resources)
    plan = evaluate(rec, shipped_rules(), VISIT)
    run_day = VISIT - timedelta(days=7)  # ordered a week ahead
    creatinine = [p for p in merge_orders(plan, rec, dating=lambda order: draw_window(
        order, VISIT, run_day, at_check_in=False)) if p.order.code == CREATININE]
    assert len(creatinine) == 1
    assert set(creatinine[0].rule_ids) == {"ace-arb-diuretic-monitoring", "lithium-monitoring"}
    # drawn from the night it is ordered until 3 days before the visit
    assert (creatinine[0].occurrence_start, creatinine[0].occurrence) == (
        date(2026, 11, 24), date(2026, 11, 28))


# --- levothyroxine -----------------------------------------------------------------------


@pytest.mark.parametrize(("code", "display", "text_only"), [
    ("10582", "levothyroxine", False),
    ("892246", "levothyroxine sodium 0.1 MG Oral Tablet", False),
    ("999999", "levothyroxine sodium 0.088 MG Oral Tablet", False),   # name fallback
    ("", "Synthroid 100 MCG tablet", True),                           # brand, text only
    ("313391", "thyroid (USP) 60 MG Oral Tablet", False),             # desiccated thyroid
])
def test_levothyroxine_recognised(code: str, display: str, text_only: bool) -> None:
    f = finding("levothyroxine-monitoring", patient(50),
                medication(code, display, text_only=text_only))
    assert f.status is Status.DUE
    assert order_codes(f) == ["3016-3"]


def test_levothyroxine_stopped_does_not_count() -> None:
    f = finding("levothyroxine-monitoring", patient(50),
                medication("10582", "levothyroxine", status="stopped"))
    assert f.status is Status.NOT_APPLICABLE


@pytest.mark.parametrize("code", ["3016-3", "11580-8"])
def test_levothyroxine_tsh_one_year_boundary(code: str) -> None:
    drug = medication("892246", "levothyroxine sodium 0.1 MG Oral Tablet")
    exactly = finding("levothyroxine-monitoring", patient(50), drug,
                      observation(code, days_ago("1y"), 2.1))
    day_later = finding("levothyroxine-monitoring", patient(50), drug,
                        observation(code, days_ago("1y") - 1, 2.1))
    assert exactly.status is Status.OVERDUE
    assert day_later.status is Status.DUE_SOON


# --- lithium -------------------------------------------------------------------------------


LITHIUM = medication("197889", "lithium carbonate 300 MG Oral Capsule")


def test_lithium_orders_level_tsh_and_creatinine() -> None:
    f = finding("lithium-monitoring", patient(40), LITHIUM)
    assert f.status is Status.DUE
    assert order_codes(f) == ["14334-7", "3016-3", CREATININE]


def test_lithium_text_only_order_counts() -> None:
    f = finding("lithium-monitoring", patient(40),
                medication("", "Lithium carbonate 450 MG 12HR ER tablet", text_only=True))
    assert f.status is Status.DUE


@pytest.mark.parametrize(("code", "lookback", "order"), [
    ("14334-7", "3mo", "14334-7"), ("3016-3", "6mo", "3016-3"), ("2160-0", "6mo", CREATININE)])
def test_lithium_boundaries(code: str, lookback: str, order: str) -> None:
    recent = {"14334-7": observation("14334-7", 10, 0.7, "mmol/L"),
              "3016-3": observation("3016-3", 10, 2.0),
              "2160-0": observation("2160-0", 10, 1.0)}
    others = [obs for c, obs in recent.items() if c != code]
    exactly = finding("lithium-monitoring", patient(40), LITHIUM, *others,
                      observation(code, days_ago(lookback), 1.0))
    day_later = finding("lithium-monitoring", patient(40), LITHIUM, *others,
                        observation(code, days_ago(lookback) - 1, 1.0))
    assert exactly.status is Status.OVERDUE
    assert order_codes(exactly) == [order]
    assert day_later.status is Status.DUE_SOON


@pytest.mark.parametrize(("newer", "status"), [(0, Status.DUE_SOON), (1, Status.SATISFIED)])
def test_lithium_level_due_soon_window_is_30_days(newer: int, status: Status) -> None:
    f = finding("lithium-monitoring", patient(40), LITHIUM,
                observation("14334-7", days_ago_falling_due("3mo", 30) - newer, 0.7),
                observation("3016-3", 10, 2.0), observation("2160-0", 10, 1.0))
    assert f.status is status


# --- warfarin ------------------------------------------------------------------------------


WARFARIN = medication("855332", "warfarin sodium 5 MG Oral Tablet")


@pytest.mark.parametrize(("code", "display", "text_only"), [
    ("855332", "warfarin sodium 5 MG Oral Tablet", False),
    ("11289", "warfarin", False),
    ("", "Jantoven 5 MG tablet", True),
])
def test_warfarin_recognised(code: str, display: str, text_only: bool) -> None:
    f = finding("warfarin-inr-monitoring", patient(70),
                medication(code, display, text_only=text_only))
    assert f.status is Status.DUE
    assert order_codes(f) == ["6301-6"]


def test_warfarin_stopped_does_not_count() -> None:
    f = finding("warfarin-inr-monitoring", patient(70),
                medication("855332", "warfarin sodium 5 MG Oral Tablet", status="stopped"))
    assert f.status is Status.NOT_APPLICABLE
    assert f.explanation == "not applicable: not on warfarin"


@pytest.mark.parametrize(("days", "status"), [
    (28, Status.OVERDUE),      # exactly 4 weeks
    (27, Status.DUE_SOON),
    (21, Status.DUE_SOON),     # falls due 7 days after the visit: edge of the window
    (20, Status.SATISFIED),
])
def test_warfarin_inr_four_weeks_and_seven_day_window(days: int, status: Status) -> None:
    f = finding("warfarin-inr-monitoring", patient(70), WARFARIN,
                observation("6301-6", days, 2.5))
    assert f.status is status


def test_warfarin_point_of_care_inr_counts() -> None:
    f = finding("warfarin-inr-monitoring", patient(70), WARFARIN,
                observation("34714-6", 5, 2.4))
    assert f.status is Status.SATISFIED


@pytest.mark.parametrize(("value", "flagged"), [(4.0, False), (4.1, True)])
def test_warfarin_high_inr_flags_physician_review(value: float, flagged: bool) -> None:
    f = finding("warfarin-inr-monitoring", patient(70), WARFARIN,
                observation("6301-6", 5, value))
    assert f.needs_physician is flagged


# --- metformin -----------------------------------------------------------------------------


@pytest.mark.parametrize(("since", "applies"), [(days_ago("1y"), True),
                                                (days_ago("1y") - 1, False)])
def test_metformin_long_term_is_one_year(since: int, applies: bool) -> None:
    f = finding("metformin-b12-monitoring", patient(60),
                medication("861007", "metformin hydrochloride 500 MG Oral Tablet",
                           days_ago=since))
    assert f.status is (Status.DUE if applies else Status.NOT_APPLICABLE)
    if applies:
        assert order_codes(f) == ["2132-9"]


def test_metformin_combination_product_by_name() -> None:
    f = finding("metformin-b12-monitoring", patient(60),
                medication("999999", "sitagliptin 50 MG / metformin hydrochloride 1000 MG "
                           "Oral Tablet", days_ago=800))
    assert f.status is Status.DUE


def test_metformin_stopped_does_not_count() -> None:
    f = finding("metformin-b12-monitoring", patient(60),
                medication("861007", "metformin hydrochloride 500 MG Oral Tablet",
                           days_ago=800, status="stopped"))
    assert f.status is Status.NOT_APPLICABLE


def test_metformin_b12_one_year_boundary() -> None:
    drug = medication("860975", "24 HR metformin hydrochloride 500 MG Extended Release "
                      "Oral Tablet", days_ago=800)
    exactly = finding("metformin-b12-monitoring", patient(60), drug,
                      observation("2132-9", days_ago("1y"), 350, "pg/mL"))
    day_later = finding("metformin-b12-monitoring", patient(60), drug,
                        observation("2132-9", days_ago("1y") - 1, 350, "pg/mL"))
    assert exactly.status is Status.OVERDUE
    assert day_later.status is Status.DUE_SOON


# --- methotrexate --------------------------------------------------------------------------


METHOTREXATE = medication("105585", "methotrexate 2.5 MG Oral Tablet")
CBC_PARTS = ["6690-2", "718-7", "777-3"]


def test_methotrexate_orders_cbc_alt_creatinine() -> None:
    f = finding("methotrexate-monitoring", patient(55), METHOTREXATE)
    assert f.status is Status.DUE
    assert order_codes(f) == ["58410-2", "1742-6", CREATININE]


def test_methotrexate_text_only_order_counts() -> None:
    f = finding("methotrexate-monitoring", patient(55),
                medication("", "Methotrexate 25 MG/ML injection, weekly", text_only=True))
    assert f.status is Status.DUE


def cbc_panel(code: str, days: int) -> dict[str, Any]:
    """A CBC panel result: the panel carries no value of its own, its members do."""
    return {**observation(code, days), "hasMember": [{"reference": "Observation/wbc"}]}


def alt_and_creatinine(days: int = 10) -> list[dict[str, Any]]:
    return [observation("1742-6", days, 25, "U/L"), observation("2160-0", days, 0.9)]


@pytest.mark.parametrize("panel", ["58410-2", "57021-8"])
def test_methotrexate_cbc_panel_three_month_boundary(panel: str) -> None:
    exactly = finding("methotrexate-monitoring", patient(55), METHOTREXATE,
                      *alt_and_creatinine(), cbc_panel(panel, days_ago("3mo")))
    day_later = finding("methotrexate-monitoring", patient(55), METHOTREXATE,
                        *alt_and_creatinine(), cbc_panel(panel, days_ago("3mo") - 1))
    assert exactly.status is Status.OVERDUE
    assert order_codes(exactly) == ["58410-2"]
    assert day_later.status is Status.DUE_SOON


def test_methotrexate_cbc_components_together_count() -> None:
    parts = [observation(code, 20, 5.0) for code in CBC_PARTS]
    f = finding("methotrexate-monitoring", patient(55), METHOTREXATE, *alt_and_creatinine(),
                *parts)
    assert f.status is Status.SATISFIED


@pytest.mark.parametrize("missing", CBC_PARTS)
def test_methotrexate_cbc_needs_all_three_components(missing: str) -> None:
    parts = [observation(code, 20, 5.0) for code in CBC_PARTS if code != missing]
    f = finding("methotrexate-monitoring", patient(55), METHOTREXATE, *alt_and_creatinine(),
                *parts)
    assert f.status is Status.DUE
    assert order_codes(f) == ["58410-2"]


@pytest.mark.parametrize(("code", "order"), [("1742-6", "1742-6"), ("1744-2", "1742-6"),
                                             ("2160-0", CREATININE)])
def test_methotrexate_alt_and_creatinine_three_month_boundary(code: str, order: str) -> None:
    others = [cbc_panel("58410-2", 10)] + [
        o for o in alt_and_creatinine() if o["code"]["coding"][0]["code"] != order]
    exactly = finding("methotrexate-monitoring", patient(55), METHOTREXATE, *others,
                      observation(code, days_ago("3mo"), 30))
    day_later = finding("methotrexate-monitoring", patient(55), METHOTREXATE, *others,
                        observation(code, days_ago("3mo") - 1, 30))
    assert exactly.status is Status.OVERDUE
    assert order_codes(exactly) == [order]
    assert day_later.status is Status.DUE_SOON


@pytest.mark.parametrize(("newer", "status"), [(0, Status.DUE_SOON), (1, Status.SATISFIED)])
def test_methotrexate_due_soon_window_is_30_days(newer: int, status: Status) -> None:
    days = days_ago_falling_due("3mo", 30) - newer
    f = finding("methotrexate-monitoring", patient(55), METHOTREXATE,
                cbc_panel("58410-2", days), *alt_and_creatinine(days))
    assert f.status is status


# --- amiodarone ----------------------------------------------------------------------------


AMIODARONE = medication("833528", "amiodarone hydrochloride 200 MG Oral Tablet")


@pytest.mark.parametrize(("code", "display", "text_only"), [
    ("833528", "amiodarone hydrochloride 200 MG Oral Tablet", False),
    ("703", "amiodarone", False),
    ("", "Pacerone 200 MG tablet", True),
])
def test_amiodarone_recognised(code: str, display: str, text_only: bool) -> None:
    f = finding("amiodarone-monitoring", patient(70),
                medication(code, display, text_only=text_only))
    assert f.status is Status.DUE
    assert order_codes(f) == ["3016-3", "1742-6"]


def test_amiodarone_stopped_does_not_count() -> None:
    f = finding("amiodarone-monitoring", patient(70),
                medication("833528", "amiodarone hydrochloride 200 MG Oral Tablet",
                           status="stopped"))
    assert f.status is Status.NOT_APPLICABLE


@pytest.mark.parametrize(("code", "other"), [("3016-3", "1742-6"), ("1742-6", "3016-3")])
def test_amiodarone_six_month_boundaries(code: str, other: str) -> None:
    exactly = finding("amiodarone-monitoring", patient(70), AMIODARONE,
                      observation(other, 10, 1.0), observation(code, days_ago("6mo"), 1.0))
    day_later = finding("amiodarone-monitoring", patient(70), AMIODARONE,
                        observation(other, 10, 1.0),
                        observation(code, days_ago("6mo") - 1, 1.0))
    assert exactly.status is Status.OVERDUE
    assert order_codes(exactly) == [code]
    assert day_later.status is Status.DUE_SOON


# --- all lab rules ---------------------------------------------------------------------------


LAB_RULES = ["hba1c-monitoring", "kidney-health-evaluation", "lipid-monitoring",
             "ace-arb-diuretic-monitoring", "levothyroxine-monitoring", "lithium-monitoring",
             "warfarin-inr-monitoring", "metformin-b12-monitoring", "methotrexate-monitoring",
             "amiodarone-monitoring"]


@pytest.mark.parametrize("rule_id", LAB_RULES)
def test_every_lab_rule_is_a_pre_visit_lab_with_citation_and_differences(rule_id: str) -> None:
    rule = shipped_rules().get(rule_id)
    assert rule.kind.value == "lab" and rule.role is Role.MA
    assert rule.citations and all(c.url for c in rule.citations)
    assert rule.differences and len(rule.differences) > 200
    for req in rule.requirements:
        assert req.order is not None
        assert req.order.system == "http://loinc.org"
        # drawn at the latest 3 days before the visit; the INR (point of care) in the 3 days
        # before the visit or at it
        point_of_care = rule_id == "warfarin-inr-monitoring"
        assert req.order.before_visit
        assert (req.order.lead_days, req.order.draw_within_days) == (
            (0, 3) if point_of_care else (3, None))


# --- results without a value, and values no patient can have ----------------------------------

def a1c_plan(*results: dict[str, Any], settings: Settings | None = None) -> Any:
    return evaluate(record(*diabetic(), *results), shipped_rules(), VISIT, settings)


def a1c(plan: Any) -> Finding:
    return next(f for f in plan.findings if f.rule_id == "hba1c-monitoring")


@pytest.mark.parametrize("result", [
    observation("4548-4", 30),  # no value at all
    {**observation("4548-4", 30), "dataAbsentReason": {"coding": [{"code": "error"}]}},
    {**observation("4548-4", 30, 6.5, "%"), "dataAbsentReason": {"coding": [{"code": "error"}]}},
    observation("4548-4", 30, 6.5, "%", status="preliminary"),
    observation("4548-4", 30, 6.5, "%", status="cancelled"),
    observation("4548-4", 30, 6.5, "%", status="entered-in-error"),
], ids=["no-value", "data-absent", "value-and-data-absent", "preliminary", "cancelled",
        "entered-in-error"])
def test_an_hba1c_without_a_usable_value_is_a_gap_as_in_cms122(result: dict[str, Any]) -> None:
    f = a1c(a1c_plan(result))
    assert f.status is Status.DUE and order_codes(f) == ["4548-4"]


def test_the_result_without_a_value_is_named_and_an_older_one_still_decides() -> None:
    f = a1c(a1c_plan(observation("4548-4", 170, 6.5, "%"),
                     {**observation("4548-4", 20), "dataAbsentReason": {
                         "coding": [{"code": "error"}], "text": "Specimen haemolysed"}}))
    assert f.status is Status.DUE_SOON  # the 6.5 % of 170 days ago, good for 6 months
    assert "the HbA1c of 2026-11-11 has no value (Specimen haemolysed): not counted" \
        in f.explanation


def test_a_text_value_is_a_value() -> None:
    result = {**observation("4548-4", 30), "valueString": "6.4"}
    assert a1c(a1c_plan(result)).status is Status.SATISFIED


@pytest.mark.parametrize(("value", "counted"), [
    (2.9, False), (3.0, True), (20.0, True), (20.1, False)])
def test_an_hba1c_outside_3_to_20_percent_is_implausible(value: float, counted: bool) -> None:
    plan = a1c_plan(observation("4548-4", 30, value, "%"))
    assert (a1c(plan).status is not Status.DUE) is counted
    assert bool(plan.checks) is not counted
    if not counted:
        assert plan.checks == (f"check this value: 4548-4 {value:g} % on 2026-11-01 is outside "
                               "3–20 %, the range a patient can have; it was not used",)


@pytest.mark.parametrize(("result", "counted"), [
    (observation("2823-3", 30, 0.4, "mmol/L"), False),
    (observation("2823-3", 30, 1.5, "mmol/L"), True),
    (observation("2823-3", 30, 9.1, "mmol/L"), False),
    # another unit: not judged (and not converted)
    (observation("2823-3", 30, 16.0, "mg/dL"), True),
    # a bound the lab reported is not a measurement
    ({**observation("2823-3", 30), "valueQuantity": {"value": 0.4, "unit": "mmol/L",
                                                     "comparator": "<"}}, True),
], ids=["0.4", "1.5", "9.1", "other-unit", "comparator"])
def test_an_impossible_potassium_does_not_satisfy_monitoring(result: dict[str, Any],
                                                             counted: bool) -> None:
    plan = evaluate(record(patient(60), medication(*LISINOPRIL, days_ago=400), result,
                           observation("2160-0", 30, 1.0, "mg/dL")), shipped_rules(), VISIT)
    f = next(f for f in plan.findings if f.rule_id == "ace-arb-diuretic-monitoring")
    assert (f.status is Status.SATISFIED) is counted, f.explanation
    assert bool(plan.checks) is not counted


def test_the_clinic_can_change_or_switch_off_a_plausible_range() -> None:
    from previsit.plausibility import DEFAULT_BOUNDS, Bounds

    low = observation("4548-4", 30, 2.8, "%")
    wider = Settings(plausible={**DEFAULT_BOUNDS, "4548-4": Bounds("%", 2, 20)})
    assert a1c(a1c_plan(low, settings=wider)).status is Status.SATISFIED
    off = Settings(plausible={k: v for k, v in DEFAULT_BOUNDS.items() if k != "4548-4"})
    assert not a1c_plan(low, settings=off).checks


# --- the INR is drawn close to the visit --------------------------------------------------------


def test_the_inr_order_is_point_of_care() -> None:
    f = finding("warfarin-inr-monitoring", patient(70),
                medication("855332", "warfarin sodium 5 MG Oral Tablet"))
    [order] = f.orders
    assert (order.before_visit, order.lead_days, order.draw_within_days) == (True, 0, 3)
