"""The USPSTF screening rules at their boundaries: ages, sex, each kind of evidence and its
look-back, the due-soon window, every exclusion, missing data and the order proposed.

Dates are relative to builders.VISIT (2026-12-01). Evidence dated exactly one look-back before
the visit has expired (overdue); one day later it still counts but falls due within the
60-day due-soon window; 61 days later it is satisfied.
"""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

import pytest
from builders import (
    ICD10CM,
    LOINC,
    SNOMED,
    VISIT,
    condition,
    finding,
    medication,
    observation,
    patient,
    procedure,
)

from previsit.plan import Role, Status

CPT = "http://www.ama-assn.org/go/cpt"
NEGATIVE = (SNOMED, "260385009")  # a qualitative result's value: Negative
HCPCS = "http://www.nlm.nih.gov/research/umls/hcpcs"


# Dates one look-back before the visit (2026-12-01), written out rather than computed with
# the product's own calendar arithmetic (which these tests check).
ONE_BEFORE_VISIT = {"1y": date(2025, 12, 1), "2y": date(2024, 12, 1), "3y": date(2023, 12, 1),
                    "5y": date(2021, 12, 1), "10y": date(2016, 12, 1),
                    "15y": date(2011, 12, 1)}


def days(lookback: str) -> int:
    """Days between the visit and the date exactly one look-back before it."""
    return (VISIT - ONE_BEFORE_VISIT[lookback]).days


def status(rule_id: str, *resources: dict[str, Any]) -> Status:
    return finding(rule_id, *resources).status


def hospice_condition() -> dict[str, Any]:
    return condition("Z51.5", system=ICD10CM, days_ago=100)


# --- boundaries shared by several rules ---------------------------------------------------

# (rule, patient sex, resources that make the rule apply apart from age)
SMOKER = [observation("72166-2", 10, value_code=(SNOMED, "449868002")),
          observation("8664-5", 10, 30, "{pack-years}")]
FORMER = [observation("72166-2", 10, value_code=(SNOMED, "8517006"))]
OVERWEIGHT = [observation("39156-5", 30, 31.2, "kg/m2")]

AGE_LIMITS = [
    # rule, sex, youngest, oldest (None: no upper limit), extra resources
    ("colorectal-cancer-screening", "male", 45, 75, []),
    ("breast-cancer-screening", "female", 40, 74, []),
    ("cervical-cancer-screening", "female", 21, 65, []),
    ("lung-cancer-screening", "male", 50, 80, SMOKER),
    ("aaa-screening", "male", 65, 75, FORMER),
    ("osteoporosis-screening", "female", 65, None, []),
    ("diabetes-screening", "female", 35, 70, OVERWEIGHT),
    ("hepatitis-c-screening", "female", 18, 79, []),
    ("hiv-screening", "male", 15, 65, []),
]


@pytest.mark.parametrize(("rule_id", "sex", "youngest", "oldest", "extra"), AGE_LIMITS,
                         ids=[a[0] for a in AGE_LIMITS])
def test_age_limits_are_inclusive_on_the_visit_date(rule_id: str, sex: str, youngest: int,
                                                    oldest: int | None,
                                                    extra: list[dict[str, Any]]) -> None:
    # the youngest birthday is tomorrow: still one year too young
    assert status(rule_id, patient(youngest, sex, days=1), *extra) == Status.NOT_APPLICABLE
    assert status(rule_id, patient(youngest, sex), *extra) == Status.DUE
    if oldest is None:
        assert status(rule_id, patient(95, sex), *extra) == Status.DUE
        return
    assert status(rule_id, patient(oldest + 1, sex, days=1), *extra) == Status.DUE
    assert status(rule_id, patient(oldest + 1, sex), *extra) == Status.NOT_APPLICABLE


@pytest.mark.parametrize(("rule_id", "sex", "youngest", "oldest", "extra"), AGE_LIMITS,
                         ids=[a[0] for a in AGE_LIMITS])
def test_no_birth_date_is_unknown(rule_id: str, sex: str, youngest: int, oldest: int | None,
                                  extra: list[dict[str, Any]]) -> None:
    result = finding(rule_id, patient(None, sex), *extra)
    assert result.status == Status.UNKNOWN
    assert "birth date" in result.explanation


SEXED = [("breast-cancer-screening", "female", 50, []),
         ("cervical-cancer-screening", "female", 30, []),
         ("osteoporosis-screening", "female", 70, []),
         ("aaa-screening", "male", 70, FORMER)]


@pytest.mark.parametrize(("rule_id", "sex", "age", "extra"), SEXED, ids=[s[0] for s in SEXED])
def test_sex_specific_rules(rule_id: str, sex: str, age: int,
                            extra: list[dict[str, Any]]) -> None:
    other = "male" if sex == "female" else "female"
    assert status(rule_id, patient(age, sex), *extra) == Status.DUE
    assert status(rule_id, patient(age, other), *extra) == Status.NOT_APPLICABLE
    assert status(rule_id, patient(age, None), *extra) == Status.UNKNOWN
    assert status(rule_id, patient(age, "unknown"), *extra) == Status.UNKNOWN


# (rule, patient, evidence builder taking days_ago, look-back)
EVIDENCE = [
    ("colorectal-cancer-screening", "colonoscopy", (55, "male"),
     lambda d: procedure("73761001", d), "10y"),
    ("colorectal-cancer-screening", "colonoscopy-cpt", (55, "male"),
     lambda d: procedure("45378", d, system=CPT), "10y"),
    ("colorectal-cancer-screening", "ct-colonography", (55, "male"),
     lambda d: observation("79101-2", d), "5y"),
    ("colorectal-cancer-screening", "flexible-sigmoidoscopy", (55, "male"),
     lambda d: procedure("44441009", d), "5y"),
    ("colorectal-cancer-screening", "fit-dna", (55, "male"),
     lambda d: observation("77354-9", d, value_code=(SNOMED, "260385009")), "3y"),
    ("colorectal-cancer-screening", "fit", (55, "male"),
     lambda d: observation("57905-2", d, 12, "ng/mL"), "1y"),
    ("colorectal-cancer-screening", "gfobt", (55, "male"),
     lambda d: observation("2335-8", d, value_code=NEGATIVE), "1y"),
    ("breast-cancer-screening", "mammogram-observation", (55, "female"),
     lambda d: observation("24606-6", d), "2y"),
    ("breast-cancer-screening", "mammogram-procedure", (55, "female"),
     lambda d: procedure("24623002", d), "2y"),
    ("breast-cancer-screening", "mammogram-cpt", (55, "female"),
     lambda d: procedure("77067", d, system=CPT), "2y"),
    ("cervical-cancer-screening", "cytology-observation", (25, "female"),
     lambda d: observation("10524-7", d, value_code=NEGATIVE), "3y"),
    ("cervical-cancer-screening", "cytology-procedure", (25, "female"),
     lambda d: procedure("90226004", d), "3y"),
    ("cervical-cancer-screening", "hpv", (45, "female"),
     lambda d: observation("59420-0", d, value_code=NEGATIVE), "5y"),
    ("lung-cancer-screening", "ldct", (60, "male"),
     lambda d: procedure("16334891000119106", d), "1y"),
    ("lung-cancer-screening", "ldct-cpt", (60, "male"),
     lambda d: procedure("71271", d, system=CPT), "1y"),
    ("osteoporosis-screening", "dxa-observation", (70, "female"),
     lambda d: observation("38265-5", d, -1.2, "{T-score}"), "2y"),
    ("osteoporosis-screening", "dxa-procedure", (70, "female"),
     lambda d: procedure("312681000", d), "2y"),
    ("osteoporosis-screening", "dxa-cpt", (70, "female"),
     lambda d: procedure("77080", d, system=CPT), "2y"),
    ("diabetes-screening", "hba1c", (50, "female"),
     lambda d: observation("4548-4", d, 5.4, "%"), "3y"),
    ("diabetes-screening", "fasting-glucose", (50, "female"),
     lambda d: observation("1558-6", d, 92, "mg/dL"), "3y"),
    ("diabetes-screening", "fasting-glucose-mmol", (50, "female"),
     lambda d: observation("14771-0", d, 5.1, "mmol/L"), "3y"),
]

CONTEXT: dict[str, list[dict[str, Any]]] = {
    "lung-cancer-screening": SMOKER,
    "diabetes-screening": OVERWEIGHT,
}


@pytest.mark.parametrize(("rule_id", "kind", "who", "make", "lookback"), EVIDENCE,
                         ids=[e[1] for e in EVIDENCE])
def test_lookback_boundary_for_each_kind_of_evidence(rule_id: str, kind: str,
                                                     who: tuple[int, str], make: Any,
                                                     lookback: str) -> None:
    person = patient(*who)
    extra = CONTEXT.get(rule_id, [])
    limit = days(lookback)
    assert status(rule_id, person, *extra, make(limit)) == Status.OVERDUE
    # one day later it still counts, but runs out within the 60-day due-soon window
    assert status(rule_id, person, *extra, make(limit - 1)) == Status.DUE_SOON
    assert status(rule_id, person, *extra, make(limit - 60)) == Status.DUE_SOON
    assert status(rule_id, person, *extra, make(limit - 61)) == Status.SATISFIED


def test_due_soon_finding_carries_the_due_date() -> None:
    result = finding("colorectal-cancer-screening", patient(55, "male"),
                     observation("57905-2", days("1y") - 10, 12, "ng/mL"))
    assert result.status == Status.DUE_SOON
    assert result.due_date == date(2026, 12, 11)
    assert result.orders and result.orders[0].code == "29771-3"


def test_satisfied_finding_proposes_no_order() -> None:
    result = finding("colorectal-cancer-screening", patient(55, "male"),
                     procedure("73761001", 400))
    assert result.status == Status.SATISFIED
    assert result.orders == ()


def test_the_longest_lasting_evidence_decides() -> None:
    # an old FIT has expired but a colonoscopy 2 years ago is good for 8 more
    result = finding("colorectal-cancer-screening", patient(60, "male"),
                     observation("57905-2", 800, 12, "ng/mL"), procedure("73761001", 730))
    assert result.status == Status.SATISFIED
    assert "colonoscopy" in result.explanation


# --- what does not count ------------------------------------------------------------------


@pytest.mark.parametrize("bad", [
    procedure("73761001", 100, status="not-done"),
    procedure("73761001", 100, status="entered-in-error"),
    procedure("73761001", 100, status="in-progress"),
    observation("57905-2", 100, 12, "ng/mL", status="entered-in-error"),
    observation("57905-2", 100, 12, "ng/mL", status="preliminary"),
    observation("57905-2", 100, 12, "ng/mL", status="cancelled"),
    procedure("73761001", -5),  # scheduled after the visit
], ids=["not-done", "procedure-error", "in-progress", "observation-error", "preliminary",
        "cancelled", "future"])
def test_evidence_that_did_not_happen_does_not_count(bad: dict[str, Any]) -> None:
    assert status("colorectal-cancer-screening", patient(55, "male"), bad) == Status.DUE


def test_random_glucose_is_not_a_diabetes_screen() -> None:
    assert status("diabetes-screening", patient(50, "female"), *OVERWEIGHT,
                  observation("2345-7", 100, 99, "mg/dL")) == Status.DUE


# --- orders and roles -------------------------------------------------------------------------

ORDERS = [
    ("colorectal-cancer-screening", (55, "male"), [], LOINC, "29771-3", "laboratory",
     Role.MA, False, 0),
    ("breast-cancer-screening", (55, "female"), [], LOINC, "24606-6", "imaging", Role.MA,
     False, 0),
    ("cervical-cancer-screening", (35, "female"), [], SNOMED, "90226004", "procedure",
     Role.PHYSICIAN, False, 0),
    ("lung-cancer-screening", (60, "male"), SMOKER, SNOMED, "16334891000119106", "imaging",
     Role.PHYSICIAN, False, 0),
    ("aaa-screening", (70, "male"), FORMER, CPT, "76706", "imaging", Role.MA, False, 0),
    ("osteoporosis-screening", (70, "female"), [], SNOMED, "312681000", "imaging", Role.MA,
     False, 0),
    ("diabetes-screening", (50, "female"), OVERWEIGHT, LOINC, "4548-4", "laboratory",
     Role.MA, True, 3),
    ("hepatitis-c-screening", (40, "female"), [], LOINC, "13955-0", "laboratory", Role.MA,
     True, 3),
    ("hiv-screening", (30, "male"), [], LOINC, "56888-1", "laboratory", Role.MA, True, 3),
]


@pytest.mark.parametrize(("rule_id", "who", "extra", "system", "code", "category", "role",
                          "before", "lead"), ORDERS, ids=[o[0] for o in ORDERS])
def test_order_proposed_when_due(rule_id: str, who: tuple[int, str],
                                 extra: list[dict[str, Any]], system: str, code: str,
                                 category: str, role: Role, before: bool, lead: int) -> None:
    result = finding(rule_id, patient(*who), *extra)
    assert result.status == Status.DUE
    assert len(result.orders) == 1
    order = result.orders[0]
    assert (order.system, order.code, order.category) == (system, code, category)
    assert (order.role, order.before_visit, order.lead_days) == (role, before, lead)
    # shared decision-making / clinician-collected screenings go to the physician
    assert result.needs_physician == (role == Role.PHYSICIAN)


@pytest.mark.parametrize(("rule_id", "who", "extra"), [
    ("colorectal-cancer-screening", (55, "male"), []),
    ("breast-cancer-screening", (55, "female"), []),
    ("cervical-cancer-screening", (35, "female"), []),
    ("hiv-screening", (30, "male"), []),
])
def test_measure_and_citation_are_reported(rule_id: str, who: tuple[int, str],
                                           extra: list[dict[str, Any]]) -> None:
    result = finding(rule_id, patient(*who), *extra)
    assert result.measure and result.measure.startswith("CMS")
    assert result.citation and "USPSTF" in result.citation


# --- exclusions shared by CMS130 / CMS125 / CMS124 ------------------------------------------

CMS_RULES = [("colorectal-cancer-screening", (60, "male")),
             ("breast-cancer-screening", (60, "female")),
             ("cervical-cancer-screening", (60, "female"))]


@pytest.mark.parametrize("evidence", [
    condition("Z51.5", system=ICD10CM, days_ago=30),
    condition("170935008", days_ago=30),
    procedure("385763009", 200),
    procedure("103735009", 364),
    observation("45755-6", 100, value_code=(SNOMED, "373066001")),
    observation("45755-6", 100, value_code=(LOINC, "LA33-6")),
    observation("71007-9", 100, 42, "{score}"),
], ids=["palliative-encounter-dx", "hospice-finding", "hospice-care", "palliative-care",
        "mds-yes-snomed", "mds-yes-loinc", "facit-pal"])
@pytest.mark.parametrize(("rule_id", "who"), CMS_RULES, ids=[r[0] for r in CMS_RULES])
def test_hospice_or_palliative_care_excludes(rule_id: str, who: tuple[int, str],
                                             evidence: dict[str, Any]) -> None:
    result = finding(rule_id, patient(*who), evidence)
    assert result.status == Status.EXCLUDED
    assert "hospice or palliative" in result.explanation
    assert result.orders == ()


@pytest.mark.parametrize(("rule_id", "who"), CMS_RULES, ids=[r[0] for r in CMS_RULES])
def test_hospice_lookback_is_one_year(rule_id: str, who: tuple[int, str]) -> None:
    year = days("1y")
    # a look-back of 1 year covers the 364 days before the visit (evaluate.py convention)
    assert status(rule_id, patient(*who), procedure("385763009", year - 1)) == Status.EXCLUDED
    assert status(rule_id, patient(*who), procedure("385763009", year)) == Status.DUE
    ended = condition("Z51.5", system=ICD10CM, days_ago=900, status="resolved",
                      abated_days_ago=year)
    assert status(rule_id, patient(*who), ended) == Status.DUE
    ended_recently = condition("Z51.5", system=ICD10CM, days_ago=900, status="resolved",
                               abated_days_ago=year - 1)
    assert status(rule_id, patient(*who), ended_recently) == Status.EXCLUDED


def test_hospice_assessment_answered_no_does_not_exclude() -> None:
    no = observation("45755-6", 100, value_code=(SNOMED, "373067005"))
    assert status("colorectal-cancer-screening", patient(60, "male"), no) == Status.DUE


def test_refuted_hospice_diagnosis_does_not_exclude() -> None:
    refuted = condition("Z51.5", system=ICD10CM, days_ago=30, verification="refuted")
    assert status("breast-cancer-screening", patient(60, "female"), refuted) == Status.DUE


FRAILTY_RULES = [("colorectal-cancer-screening", "male"), ("breast-cancer-screening", "female")]
FRAIL = condition("129588001", days_ago=100)  # adult failure to thrive (Frailty Diagnosis)
ILL = condition("87433001", days_ago=500)  # pulmonary emphysema (Advanced Illness)


@pytest.mark.parametrize(("rule_id", "sex"), FRAILTY_RULES, ids=[r[0] for r in FRAILTY_RULES])
def test_frailty_and_advanced_illness_excludes_from_66(rule_id: str, sex: str) -> None:
    result = finding(rule_id, patient(66, sex), FRAIL, ILL)
    assert result.status == Status.EXCLUDED
    assert "frailty and advanced illness" in result.explanation
    # 65 (66th birthday tomorrow): the exclusion does not apply
    assert status(rule_id, patient(66, sex, days=1), FRAIL, ILL) == Status.DUE
    # both parts are needed
    assert status(rule_id, patient(70, sex), FRAIL) == Status.DUE
    assert status(rule_id, patient(70, sex), ILL) == Status.DUE


@pytest.mark.parametrize(("frailty", "illness"), [
    (condition("R54", system=ICD10CM, days_ago=30), ILL),
    (observation("248279007", 30, system=SNOMED), ILL),
    (FRAIL, medication("997223", "donepezil hydrochloride 10 MG Oral Tablet")),
    # ingredient-name fallback: a clinical drug code that is not in the VSAC set
    (FRAIL, medication("000000", "Memantine HCl 10 mg tablet", text_only=True)),
    (FRAIL, medication("1100184", "galantamine oral solution", text_only=True)),
], ids=["frailty-symptom-condition", "frailty-symptom-observation", "dementia-drug-code",
        "dementia-drug-name", "dementia-drug-text-only"])
def test_each_kind_of_frailty_and_advanced_illness_evidence(frailty: dict[str, Any],
                                                           illness: dict[str, Any]) -> None:
    assert status("colorectal-cancer-screening", patient(72, "male"), frailty,
                  illness) == Status.EXCLUDED


def test_frailty_and_advanced_illness_windows() -> None:
    person = patient(72, "male")
    old_frailty = condition("129588001", days_ago=900, status="resolved",
                            abated_days_ago=days("1y"))
    assert status("colorectal-cancer-screening", person, old_frailty, ILL) == Status.DUE
    old_illness = condition("87433001", days_ago=1500, status="resolved",
                            abated_days_ago=days("2y"))
    assert status("colorectal-cancer-screening", person, FRAIL, old_illness) == Status.DUE
    recent_illness = condition("87433001", days_ago=1500, status="resolved",
                               abated_days_ago=days("2y") - 1)
    assert status("colorectal-cancer-screening", person, FRAIL, recent_illness) == \
        Status.EXCLUDED
    stopped = medication("997223", "donepezil hydrochloride 10 MG Oral Tablet",
                         status="stopped")
    assert status("colorectal-cancer-screening", person, FRAIL, stopped) == Status.DUE


def test_frailty_exclusion_is_not_part_of_cervical_screening() -> None:
    # CMS124 has no frailty exclusion (its population ends at 64)
    assert status("cervical-cancer-screening", patient(65, "female"), FRAIL, ILL) == Status.DUE


@pytest.mark.parametrize(("rule_id", "sex"), FRAILTY_RULES, ids=[r[0] for r in FRAILTY_RULES])
def test_nursing_home_residence_excludes_from_66(rule_id: str, sex: str) -> None:
    home = observation("71802-3", 200, value_code=(SNOMED, "160734000"))
    assert status(rule_id, patient(66, sex), home) == Status.EXCLUDED
    assert status(rule_id, patient(66, sex, days=1), home) == Status.DUE
    # the latest housing status decides: moved back home
    moved = observation("71802-3", 20, value_code=(SNOMED, "000000"))
    assert status(rule_id, patient(70, sex), home, moved) == Status.DUE


# --- colorectal ---------------------------------------------------------------------------------


@pytest.mark.parametrize("evidence", [
    condition("363406005", days_ago=4000, status="resolved", abated_days_ago=3000),
    condition("C18.9", system=ICD10CM, days_ago=200),
    procedure("26390003", 6000),
    procedure("44150", 3000, system=CPT),
], ids=["colon-cancer-history", "colon-cancer-icd10", "total-colectomy", "colectomy-cpt"])
def test_colorectal_cancer_or_total_colectomy_excludes(evidence: dict[str, Any]) -> None:
    assert status("colorectal-cancer-screening", patient(55, "male"),
                  evidence) == Status.EXCLUDED


def test_refuted_colorectal_cancer_does_not_exclude() -> None:
    refuted = condition("363406005", days_ago=200, verification="refuted")
    assert status("colorectal-cancer-screening", patient(55, "male"), refuted) == Status.DUE


# --- breast -------------------------------------------------------------------------------------


def test_breast_uses_two_years_not_cms125s_27_months() -> None:
    # 25 months: CMS125 would still count it, but the USPSTF interval has passed
    old = observation("24606-6", 761)
    assert status("breast-cancer-screening", patient(60, "female"), old) == Status.OVERDUE


@pytest.mark.parametrize("evidence", [
    [procedure("22418005", 3000)],
    [condition("Z90.13", system=ICD10CM, days_ago=3000)],
    [procedure("428571003", 3000), procedure("429400009", 1000)],
    [procedure("428571003", 3000), condition("Z90.11", system=ICD10CM, days_ago=900)],
    [condition("Z90.12", system=ICD10CM, days_ago=900), procedure("429400009", 1000)],
], ids=["bilateral-procedure", "bilateral-history", "left-and-right-procedures",
        "left-procedure-right-history", "left-history-right-procedure"])
def test_mastectomy_excludes(evidence: list[dict[str, Any]]) -> None:
    result = finding("breast-cancer-screening", patient(60, "female"), *evidence)
    assert result.status == Status.EXCLUDED
    assert "mastectomy" in result.explanation


@pytest.mark.parametrize("evidence", [
    procedure("428571003", 3000),
    condition("Z90.11", system=ICD10CM, days_ago=900),
    procedure("428571003", 3000, status="not-done"),
], ids=["left-only", "right-only", "not-done"])
def test_one_sided_mastectomy_does_not_exclude(evidence: dict[str, Any]) -> None:
    assert status("breast-cancer-screening", patient(60, "female"), evidence) == Status.DUE


# --- cervical -----------------------------------------------------------------------------------


def test_hpv_counts_only_when_done_at_30_or_older() -> None:
    hpv = observation("59420-0", 1000, value_code=NEGATIVE)  # 2024-03-06
    person = patient(birth="1994-03-06", sex="female")  # 30 on the day of the test
    assert status("cervical-cancer-screening", person, hpv) == Status.SATISFIED
    person = patient(birth="1994-03-07", sex="female")  # 30 the day after

    assert status("cervical-cancer-screening", person, hpv) == Status.DUE


def test_cytology_is_enough_at_any_age_hpv_not_before_30() -> None:
    assert status("cervical-cancer-screening", patient(25, "female"),
                  observation("59420-0", 200, value_code=NEGATIVE)) == Status.DUE
    assert status("cervical-cancer-screening", patient(25, "female"),
                  observation("10524-7", 200, value_code=NEGATIVE)) == Status.SATISFIED


@pytest.mark.parametrize("evidence", [
    procedure("116140006", 5000),
    condition("Z90.710", system=ICD10CM, days_ago=3000),
    condition("37687000", days_ago=10000),
], ids=["total-hysterectomy", "acquired-absence", "congenital-absence"])
def test_no_cervix_excludes(evidence: dict[str, Any]) -> None:
    assert status("cervical-cancer-screening", patient(45, "female"),
                  evidence) == Status.EXCLUDED


# --- lung ---------------------------------------------------------------------------------------


def smoking(code: str, days_ago: int = 10) -> dict[str, Any]:
    return observation("72166-2", days_ago, value_code=(SNOMED, code))


def pack_years(value: float, code: str = "8664-5", system: str = LOINC) -> dict[str, Any]:
    return observation(code, 10, value, "{pack-years}", system=system)


def quit_on(days_ago: int) -> dict[str, Any]:
    return observation("74010-0", 10,
                       value_date=(VISIT - timedelta(days=days_ago)).isoformat())


def test_lung_current_smoker_with_20_pack_years() -> None:
    assert status("lung-cancer-screening", patient(60, "male"), smoking("449868002"),
                  pack_years(20)) == Status.DUE
    assert status("lung-cancer-screening", patient(60, "male"), smoking("449868002"),
                  pack_years(19.9)) == Status.NOT_APPLICABLE
    assert status("lung-cancer-screening", patient(60, "male"), smoking("449868002"),
                  pack_years(25, "401201003", SNOMED)) == Status.DUE


def test_lung_former_smoker_quit_within_15_years() -> None:
    limit = days("15y")
    person = patient(65, "female")
    assert status("lung-cancer-screening", person, smoking("8517006"), pack_years(30),
                  quit_on(limit)) == Status.DUE
    assert status("lung-cancer-screening", person, smoking("8517006"), pack_years(30),
                  quit_on(limit + 1)) == Status.NOT_APPLICABLE


@pytest.mark.parametrize(("resources", "expected"), [
    ([smoking("449868002")], Status.UNKNOWN),  # no pack-years
    ([pack_years(30)], Status.UNKNOWN),  # no status, no quit date
    ([smoking("8517006"), pack_years(30)], Status.UNKNOWN),  # former, no quit date
    ([smoking("77176002"), pack_years(30)], Status.UNKNOWN),  # smoker, current status unknown
    ([], Status.UNKNOWN),
    ([smoking("266919005")], Status.NOT_APPLICABLE),  # never smoked
    ([pack_years(30), quit_on(1000)], Status.DUE),  # no status, but quit 3 years ago
    ([smoking("8517006"), pack_years(10)], Status.NOT_APPLICABLE),
], ids=["no-pack-years", "no-status", "former-no-quit-date", "smoker-status-unknown",
        "nothing", "never", "quit-date-only", "too-few-pack-years"])
def test_lung_missing_smoking_data_is_unknown_not_a_guess(resources: list[dict[str, Any]],
                                                          expected: Status) -> None:
    assert status("lung-cancer-screening", patient(60, "male"), *resources) == expected


def test_lung_latest_smoking_status_decides() -> None:
    relapsed = [smoking("8517006", 800), smoking("449868002", 10), pack_years(30)]
    assert status("lung-cancer-screening", patient(60, "male"), *relapsed) == Status.DUE


def test_lung_hospice_excludes() -> None:
    assert status("lung-cancer-screening", patient(60, "male"), *SMOKER,
                  hospice_condition()) == Status.EXCLUDED


# --- AAA ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("resources", "expected"), [
    ([smoking("8517006")], Status.DUE),
    ([smoking("449868002")], Status.DUE),
    ([smoking("77176002")], Status.DUE),
    ([condition("8517006", days_ago=3000)], Status.DUE),  # former smoker on the problem list
    ([smoking("266919005")], Status.NOT_APPLICABLE),
    ([], Status.UNKNOWN),
], ids=["former", "current", "smoker", "problem-list", "never", "no-data"])
def test_aaa_ever_smoked(resources: list[dict[str, Any]], expected: Status) -> None:
    assert status("aaa-screening", patient(70, "male"), *resources) == expected


def test_aaa_ultrasound_counts_once_in_a_lifetime() -> None:
    for evidence in (procedure("76706", 5000, system=CPT),
                     procedure("G0389", 4000, system=HCPCS)):
        result = finding("aaa-screening", patient(70, "male"), *FORMER, evidence)
        assert result.status == Status.SATISFIED
        assert result.due_date is None


# --- diabetes -----------------------------------------------------------------------------------


def bmi(value: float, days_ago: int = 30) -> dict[str, Any]:
    return observation("39156-5", days_ago, value, "kg/m2")


def test_diabetes_bmi_threshold_and_lookback() -> None:
    person = patient(50, "female")
    assert status("diabetes-screening", person, bmi(25)) == Status.DUE
    assert status("diabetes-screening", person, bmi(24.9)) == Status.NOT_APPLICABLE
    assert status("diabetes-screening", person) == Status.UNKNOWN
    assert status("diabetes-screening", person, bmi(31, days("2y") - 1)) == Status.DUE
    assert status("diabetes-screening", person, bmi(31, days("2y"))) == Status.UNKNOWN
    # the latest BMI decides
    assert status("diabetes-screening", person, bmi(31, 400), bmi(23, 20)) == \
        Status.NOT_APPLICABLE


@pytest.mark.parametrize("evidence", [
    condition("E11.9", system=ICD10CM, days_ago=2000),
    condition("44054006", days_ago=2000, status="resolved", abated_days_ago=1000),
], ids=["type-2-icd10", "resolved-type-2"])
def test_diagnosed_diabetes_excludes(evidence: dict[str, Any]) -> None:
    assert status("diabetes-screening", patient(50, "female"), bmi(30),
                  evidence) == Status.EXCLUDED


def test_a_recorded_exclusion_wins_over_what_cannot_be_decided() -> None:
    # No BMI in 2 years (or no birth date) leaves applicability unknown, but a diabetes
    # diagnosis on record decides: excluded, not "unknown" (staff would chase a BMI for
    # a known diabetic). Without the diagnosis it stays unknown.
    diabetic = condition("44054006", days_ago=2000)
    no_bmi = finding("diabetes-screening", patient(50, "female"))
    assert no_bmi.status == Status.UNKNOWN
    assert no_bmi.explanation == "no BMI in the last 2 years, so cannot decide"
    assert status("diabetes-screening", patient(50, "female"), diabetic) == Status.EXCLUDED
    assert status("diabetes-screening", patient(None, "female"), bmi(30)) == Status.UNKNOWN
    assert status("diabetes-screening", patient(None, "female"), bmi(30), diabetic) == \
        Status.EXCLUDED


def test_prediabetes_does_not_exclude() -> None:
    assert status("diabetes-screening", patient(50, "female"), bmi(30),
                  condition("15777000", days_ago=500)) == Status.DUE


@pytest.mark.parametrize(("code", "value", "unit"), [
    ("4548-4", 5.7, "%"), ("1558-6", 100, "mg/dL"), ("14771-0", 5.6, "mmol/L"),
], ids=["hba1c", "glucose-mg", "glucose-mmol"])
def test_prediabetes_range_shortens_the_interval_to_a_year(code: str, value: float,
                                                         unit: str) -> None:
    person = patient(50, "female")
    year = days("1y")
    assert status("diabetes-screening", person, bmi(30),
                  observation(code, year, value, unit)) == Status.OVERDUE
    assert status("diabetes-screening", person, bmi(30),
                  observation(code, year - 61, value, unit)) == Status.SATISFIED
    # just below the prediabetes range: the 3-year interval
    normal = observation(code, year, round(value - 0.1, 1), unit)
    assert status("diabetes-screening", person, bmi(30), normal) == Status.SATISFIED


@pytest.mark.parametrize(("code", "value", "unit", "flagged"), [
    ("4548-4", 6.5, "%", True), ("4548-4", 6.4, "%", False),
    ("1558-6", 126, "mg/dL", True), ("1558-6", 125, "mg/dL", False),
    ("14771-0", 7.0, "mmol/L", True), ("14771-0", 6.9, "mmol/L", False),
], ids=["hba1c-6.5", "hba1c-6.4", "glucose-126", "glucose-125", "glucose-7.0", "glucose-6.9"])
def test_result_in_diabetes_range_is_flagged_for_review(code: str, value: float, unit: str,
                                                        flagged: bool) -> None:
    result = finding("diabetes-screening", patient(50, "female"), bmi(30),
                     observation(code, 30, value, unit))
    assert result.status == Status.SATISFIED
    assert result.needs_physician == flagged


def test_explanation_names_each_missing_kind_of_evidence_once() -> None:
    result = finding("osteoporosis-screening", patient(70, "female"))
    assert result.explanation == "no DXA scan on record"


# --- hepatitis C and HIV ------------------------------------------------------------------------


@pytest.mark.parametrize("evidence", [
    observation("13955-0", 7000, value_code=(SNOMED, "260385009")),
    observation("11259-9", 3000, value_code=(SNOMED, "260385009")),
    procedure("104375008", 5000),
], ids=["antibody", "rna", "synthea-procedure"])
def test_hepatitis_c_tested_once_is_enough(evidence: dict[str, Any]) -> None:
    result = finding("hepatitis-c-screening", patient(50, "male"), evidence)
    assert result.status == Status.SATISFIED
    assert result.orders == ()


def test_hepatitis_c_result_entered_in_error_does_not_count() -> None:
    wrong = observation("13955-0", 100, status="entered-in-error")
    assert status("hepatitis-c-screening", patient(50, "male"), wrong) == Status.DUE


@pytest.mark.parametrize("evidence", [
    observation("56888-1", 3000, value_code=(SNOMED, "260385009")),
    observation("75622-1", 200, value_code=NEGATIVE),
    procedure("31676001", 2000),
], ids=["4th-generation", "meaningful-use-set", "synthea-procedure"])
def test_hiv_tested_once_is_enough(evidence: dict[str, Any]) -> None:
    assert status("hiv-screening", patient(40, "female"), evidence) == Status.SATISFIED


def test_hiv_test_before_15_does_not_count() -> None:
    # 16 years old; tested 2 years ago at 14, and again one day after turning 15
    person = patient(16, "female")
    at_14 = observation("56888-1", 730, value_code=NEGATIVE)
    at_15 = observation("56888-1", 364, value_code=NEGATIVE)
    assert status("hiv-screening", person, at_14) == Status.DUE
    assert status("hiv-screening", person, at_15) == Status.SATISFIED


@pytest.mark.parametrize("evidence", [
    condition("B20", system=ICD10CM, days_ago=2000),
    condition("86406008", days_ago=200),
    condition("Z21", system=ICD10CM, days_ago=200),
], ids=["b20", "snomed", "asymptomatic-status"])
def test_known_hiv_infection_excludes(evidence: dict[str, Any]) -> None:
    assert status("hiv-screening", patient(40, "male"), evidence) == Status.EXCLUDED


# --- a positive stool test needs a follow-up colonoscopy (USMSTF), not a repeat test --------

FIT = "29771-3"
FIT_DNA = "77354-9"
V3 = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
CRC = "colorectal-cancer-screening"


def stool(code: str, days_ago: int, *, value: tuple[str, str] | None = None,
          text: str | None = None, flag: str | None = None,
          quantity: float | None = None) -> dict[str, Any]:
    resource = observation(code, days_ago, quantity, "ng/mL", value_code=value)
    if text is not None:
        resource["valueString"] = text
    if flag is not None:
        resource["interpretation"] = [{"coding": [{"system": V3, "code": flag}]}]
    return resource


POSITIVES = {
    "snomed-positive": stool(FIT, 60, value=(SNOMED, "10828004")),
    "loinc-answer-positive": stool(FIT, 60, value=(LOINC, "LA6576-8")),
    "detected": stool(FIT, 60, value=(SNOMED, "260373001")),
    "text-positive": stool(FIT, 60, text="POSITIVE"),
    "text-plus": stool(FIT, 60, text="+"),
    "quantitative-flagged-high": stool("58453-2", 60, quantity=180, flag="H"),
    "abnormal-flag-only": stool(FIT, 60, value=(LOINC, "LA11885-3"), flag="A"),
    "fit-dna-text": stool(FIT_DNA, 400, text="Positive"),
}


@pytest.mark.parametrize("result", list(POSITIVES.values()), ids=list(POSITIVES))
def test_a_positive_stool_test_asks_for_a_colonoscopy(result: dict[str, Any]) -> None:
    f = finding(CRC, patient(60, "male"), result)
    assert (f.status, f.role) == (Status.DUE, Role.PHYSICIAN)
    assert {"positive-result", "physician-review"} <= set(f.flags)
    assert [(o.system, o.code, o.category, o.role) for o in f.orders] == [
        (SNOMED, "73761001", "procedure", Role.PHYSICIAN)]
    assert "needs a follow-up colonoscopy" in f.explanation


@pytest.mark.parametrize("result", [
    stool(FIT, 60, value=NEGATIVE),
    stool(FIT, 60, text="Negative"),
    stool(FIT, 60, value=(LOINC, "LA11885-3")),  # inconclusive: a repeat, not colonoscopy
    stool("58453-2", 60, quantity=12, flag="N"),
], ids=["negative", "negative-text", "inconclusive", "quantitative-normal"])
def test_a_negative_stool_test_screens_for_a_year(result: dict[str, Any]) -> None:
    f = finding(CRC, patient(60, "male"), result)
    assert f.status == Status.SATISFIED and f.role == Role.MA


def test_a_negative_fit_after_a_positive_one_does_not_replace_the_colonoscopy() -> None:
    f = finding(CRC, patient(60, "male"), POSITIVES["snomed-positive"],
                stool(FIT, 20, value=NEGATIVE))
    assert f.status == Status.DUE and f.orders[0].code == "73761001"


@pytest.mark.parametrize(("colonoscopy_days_ago", "expected"), [
    (59, Status.SATISFIED),  # after the positive FIT: resolved, good for 10 years
    (60, Status.SATISFIED),  # the same day
    (61, Status.DUE),  # the day before: the positive FIT still needs its follow-up
    (3000, Status.DUE),  # an older colonoscopy, otherwise still valid for 2 years
])
def test_a_colonoscopy_on_or_after_the_positive_test_resolves_it(colonoscopy_days_ago: int,
                                                                  expected: Status) -> None:
    f = finding(CRC, patient(60, "male"), POSITIVES["snomed-positive"],
                procedure("73761001", colonoscopy_days_ago))
    assert f.status == expected


@pytest.mark.parametrize(("days_ago", "expected"), [
    (364, Status.DUE),  # a positive FIT within its year: pending follow-up
    (365, Status.OVERDUE),  # a year old: the screening has lapsed (a FIT is proposed)
])
def test_a_positive_fit_counts_for_its_lookback(days_ago: int, expected: Status) -> None:
    f = finding(CRC, patient(60, "male"), stool(FIT, days_ago, value=(SNOMED, "10828004")))
    assert f.status == expected
    follow_up = "positive-result" in f.flags
    assert follow_up is (days_ago < 365)
    assert f.orders[0].code == ("73761001" if follow_up else FIT)


@pytest.mark.parametrize("result", [
    observation(FIT, 30),  # no value at all
    {**observation(FIT, 30), "dataAbsentReason": {"coding": [{"code": "not-performed"}]}},
    observation(FIT, 30, value_code=NEGATIVE, status="preliminary"),
    observation(FIT, 30, value_code=NEGATIVE, status="cancelled"),
    observation(FIT, 30, value_code=NEGATIVE, status="entered-in-error"),
], ids=["no-value", "data-absent", "preliminary", "cancelled", "entered-in-error"])
def test_a_stool_test_without_a_usable_result_is_not_screening(result: dict[str, Any]) -> None:
    f = finding(CRC, patient(60, "male"), result)
    assert f.status == Status.DUE and f.orders[0].code == FIT


def test_the_result_without_a_value_is_named() -> None:
    f = finding(CRC, patient(60, "male"), observation(FIT, 30))
    assert f.explanation.endswith("the FIT/gFOBT of 2026-11-01 has no value: not counted")


def test_imaging_studies_count_without_a_value() -> None:
    # a mammogram filed as an Observation with no value (the report is elsewhere)
    assert status("breast-cancer-screening", patient(55, "female"),
                  observation("24606-6", 100)) == Status.SATISFIED
