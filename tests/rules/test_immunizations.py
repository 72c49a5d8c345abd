"""The immunization rules at their boundaries (CDC/ACIP adult schedule 2025).

Dates are given as calendar dates and turned into "days before the visit" so that season and
look-back edges read as they are specified (a dose on July 31 vs August 1).
"""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

import pytest
from builders import (
    CVX,
    ICD10CM,
    SNOMED,
    VISIT,
    birth_date_for,
    condition,
    finding,
    immunization,
    medication,
    observation,
    patient,
    procedure,
)

from previsit.evaluate import Settings
from previsit.intervals import Duration
from previsit.plan import Finding, Role, Status

CPT = "http://www.ama-assn.org/go/cpt"
FLU = "influenza-immunization"
TD = "td-tdap-immunization"
ZOSTER = "zoster-immunization"
PNEUMO = "pneumococcal-immunization"
RSV = "rsv-immunization"
HEPB = "hepatitis-b-immunization"


def days_before(day: date, visit: date = VISIT) -> int:
    return (visit - day).days


def dose_at_age(cvx: str, age: int, *, days: int = 0, born: date, **kw: Any) -> dict[str, Any]:
    """A dose given on the patient's birthday `age` (+days later)."""
    given = born.replace(year=born.year + age) + timedelta(days=days)
    return immunization(cvx, days_before(given), **kw)


def hospice_yes(days_ago: int = 100) -> dict[str, Any]:
    return observation("45755-6", days_ago, value_code=(SNOMED, "373066001"))


def assert_order(f: Finding, cvx: str) -> None:
    assert [(o.system, o.code, o.category, o.role, o.before_visit) for o in f.orders] \
        and all((o.system, o.code, o.category, o.role, o.before_visit)
                == (CVX, cvx, "immunization", Role.NURSE, False) for o in f.orders)


# --- influenza ---------------------------------------------------------------------------


class TestInfluenza:
    def test_dose_on_august_1_counts_for_the_december_visit(self) -> None:
        f = finding(FLU, patient(age=50), immunization("140", days_before(date(2026, 8, 1))))
        assert f.status == Status.SATISFIED
        assert f.due_date == date(2027, 8, 1)
        assert f.orders == ()

    def test_dose_on_july_31_belongs_to_last_season(self) -> None:
        f = finding(FLU, patient(age=50), immunization("140", days_before(date(2026, 7, 31))))
        assert f.status == Status.OVERDUE
        assert f.due_date == date(2026, 8, 1)
        assert_order(f, "88")

    def test_june_visit_after_an_october_dose_is_satisfied_not_due_soon(self) -> None:
        # Next season's vaccine cannot be given in June: no proposal until August 1.
        june = date(2027, 6, 15)
        f = finding(FLU, patient(age=50),
                    immunization("140", days_before(date(2026, 10, 15))), visit=june)
        assert f.status == Status.SATISFIED
        assert f.due_date == date(2027, 8, 1)
        assert f.orders == ()

    @pytest.mark.parametrize(("visit", "status"), [
        (date(2027, 7, 31), Status.SATISFIED),
        (date(2027, 8, 1), Status.OVERDUE),
    ])
    def test_last_season_dose_runs_out_when_the_new_season_starts(
            self, visit: date, status: Status) -> None:
        dose = immunization("140", days_before(date(2026, 10, 15)))
        assert finding(FLU, patient(age=50), dose, visit=visit).status == status

    def test_no_dose_is_due_with_a_generic_influenza_order(self) -> None:
        f = finding(FLU, patient(age=50))
        assert f.status == Status.DUE
        assert_order(f, "88")

    @pytest.mark.parametrize("status", ["not-done", "entered-in-error"])
    def test_a_dose_not_given_does_not_count(self, status: str) -> None:
        f = finding(FLU, patient(age=50), immunization("140", 30, status=status))
        assert f.status == Status.DUE

    @pytest.mark.parametrize("dose", [
        immunization("140", 30),  # VSAC Influenza Immunization Administered
        immunization("88", 30),  # unspecified formulation (historical record)
        immunization("320", 30),  # 2024/25 trivalent code, in our supplement
        immunization("111", 30),  # LAIV3, reactivated 2024/25
        procedure("90686", 30, system=CPT),  # CMS147 procedure codes
        procedure("86198006", 30),
    ], ids=["cvx140", "cvx88", "cvx320", "cvx111", "cpt90686", "sct86198006"])
    def test_each_kind_of_evidence_counts(self, dose: dict[str, Any]) -> None:
        assert finding(FLU, patient(age=50), dose).status == Status.SATISFIED

    def test_pandemic_h1n1_vaccine_is_not_a_seasonal_dose(self) -> None:
        assert finding(FLU, patient(age=50), immunization("127", 30)).status == Status.DUE

    @pytest.mark.parametrize(("days", "status"), [(1, Status.NOT_APPLICABLE), (0, Status.DUE)])
    def test_adults_from_19(self, days: int, status: Status) -> None:
        assert finding(FLU, patient(age=19, days=days)).status == status

    def test_unknown_without_birth_date(self) -> None:
        assert finding(FLU, patient(age=None)).status == Status.UNKNOWN

    def test_hospice_does_not_withhold_the_vaccine(self) -> None:
        # CMS147 has no denominator exclusion; ACIP: every adult, every season
        f = finding(FLU, patient(age=80), hospice_yes())
        assert f.status == Status.DUE
        assert_order(f, "88")

    def test_palliative_care_alone_does_not_withhold_the_vaccine(self) -> None:
        palliative = condition("Z51.5", system=ICD10CM)
        assert finding(FLU, patient(age=80), palliative).status == Status.DUE


# --- Td/Tdap -------------------------------------------------------------------------------


class TestTdTdap:
    TEN_YEARS = date(2016, 12, 1)  # ten years before the visit

    def test_dose_exactly_ten_years_ago_has_expired(self) -> None:
        f = finding(TD, patient(age=50), immunization("115", days_before(self.TEN_YEARS)))
        assert f.status == Status.OVERDUE
        assert_order(f, "115")

    def test_dose_ten_years_less_a_day_ago_still_counts(self) -> None:
        f = finding(TD, patient(age=50),
                    immunization("115", days_before(self.TEN_YEARS + timedelta(days=1))))
        assert f.status == Status.DUE_SOON
        assert f.due_date == VISIT + timedelta(days=1)

    # Ten years before the 60th and 61st day after the visit (2027-01-30 and -31).
    @pytest.mark.parametrize(("given", "status"), [(date(2017, 1, 30), Status.DUE_SOON),
                                                   (date(2017, 1, 31), Status.SATISFIED)])
    def test_due_soon_window_edge(self, given: date, status: Status) -> None:
        f = finding(TD, patient(age=50), immunization("115", days_before(given)))
        assert f.status == status
        assert bool(f.orders) == (status == Status.DUE_SOON)

    @pytest.mark.parametrize("cvx", ["09", "113", "138", "139", "196"])
    def test_td_keeps_the_booster_current(self, cvx: str) -> None:
        born = date.fromisoformat(birth_date_for(50))
        f = finding(TD, patient(age=50), immunization(cvx, 1000),
                    dose_at_age("115", 12, born=born))
        assert f.status == Status.SATISFIED

    def test_never_had_tdap_is_due_even_with_a_recent_td(self) -> None:
        f = finding(TD, patient(age=50), immunization("113", 1000))
        assert f.status == Status.DUE
        assert "no Tdap on record" in f.explanation
        assert_order(f, "115")

    @pytest.mark.parametrize(("days", "status"), [(-1, Status.DUE), (0, Status.SATISFIED)])
    def test_tdap_counts_from_age_11(self, days: int, status: Status) -> None:
        born = date.fromisoformat(birth_date_for(20))
        f = finding(TD, patient(age=20), immunization("113", 1000),
                    dose_at_age("115", 11, days=days, born=born))
        assert f.status == status

    def test_both_requirements_due_propose_one_tdap(self) -> None:
        f = finding(TD, patient(age=50))
        assert f.status == Status.DUE
        assert [(o.system, o.code) for o in f.orders] == [(CVX, "115")]

    @pytest.mark.parametrize(("extra_days", "status", "codes"), [
        (0, Status.OVERDUE, ["115"]),  # Td expired on the visit date: booster and Tdap, one order
        (1, Status.DUE, ["115"]),  # Td still good (due-soon); the missing Tdap alone is due
    ])
    def test_expired_td_and_missing_tdap_propose_one_tdap(self, extra_days: int, status: Status,
                                                         codes: list[str]) -> None:
        td = immunization("09", days_before(self.TEN_YEARS + timedelta(days=extra_days)))
        f = finding(TD, patient(age=50), td)
        assert f.status == status
        assert [o.code for o in f.orders] == codes

    @pytest.mark.parametrize("cvx", ["35", "112", "20"])
    def test_tetanus_only_and_pediatric_vaccines_are_not_the_adult_booster(self, cvx: str) -> None:
        assert finding(TD, patient(age=50), immunization(cvx, 100)).status == Status.DUE

    def test_not_done_tdap_does_not_count(self) -> None:
        f = finding(TD, patient(age=50), immunization("115", 100, status="not-done"))
        assert f.status == Status.DUE

    @pytest.mark.parametrize(("days", "status"), [(1, Status.NOT_APPLICABLE), (0, Status.DUE)])
    def test_adults_from_19(self, days: int, status: Status) -> None:
        assert finding(TD, patient(age=19, days=days)).status == status

    def test_hospice_excludes(self) -> None:
        assert finding(TD, patient(age=70), hospice_yes()).status == Status.EXCLUDED


# --- zoster --------------------------------------------------------------------------------


class TestZoster:
    def test_one_dose_is_half_a_series(self) -> None:
        f = finding(ZOSTER, patient(age=60), immunization("187", 100))
        assert f.status == Status.DUE
        assert "1 of 2" in f.explanation
        assert_order(f, "187")

    def test_two_doses_complete_the_series_for_life(self) -> None:
        f = finding(ZOSTER, patient(age=60), immunization("187", 400), immunization("187", 300))
        assert f.status == Status.SATISFIED
        assert f.due_date is None
        assert f.orders == ()

    def test_two_records_on_the_same_day_are_one_dose(self) -> None:
        f = finding(ZOSTER, patient(age=60), immunization("187", 300), immunization("187", 300))
        assert f.status == Status.DUE

    @pytest.mark.parametrize("cvx", ["121", "188"])
    def test_live_or_unspecified_zoster_vaccine_does_not_count(self, cvx: str) -> None:
        f = finding(ZOSTER, patient(age=70), immunization(cvx, 800), immunization(cvx, 700))
        assert f.status == Status.DUE

    def test_not_done_dose_does_not_count(self) -> None:
        f = finding(ZOSTER, patient(age=60), immunization("187", 400),
                    immunization("187", 300, status="not-done"))
        assert f.status == Status.DUE

    @pytest.mark.parametrize(("days", "status"), [(1, Status.NOT_APPLICABLE), (0, Status.DUE)])
    def test_everyone_from_50(self, days: int, status: Status) -> None:
        assert finding(ZOSTER, patient(age=50, days=days)).status == status

    @pytest.mark.parametrize(("days", "status"), [(1, Status.NOT_APPLICABLE), (0, Status.DUE)])
    def test_immunocompromised_from_19(self, days: int, status: Status) -> None:
        hiv = condition("B20", system=ICD10CM)
        assert finding(ZOSTER, patient(age=19, days=days), hiv).status == status

    def test_resolved_immunocompromise_does_not_qualify_under_50(self) -> None:
        transplant = condition("Z94.0", system=ICD10CM, status="inactive", abated_days_ago=30)
        assert finding(ZOSTER, patient(age=40), transplant).status == Status.NOT_APPLICABLE

    def test_doses_given_before_50_count(self) -> None:
        born = date.fromisoformat(birth_date_for(55))
        f = finding(ZOSTER, patient(age=55), dose_at_age("187", 45, born=born),
                    dose_at_age("187", 45, days=60, born=born))
        assert f.status == Status.SATISFIED

    @pytest.mark.parametrize(("days", "status"), [(-1, Status.DUE), (0, Status.SATISFIED)])
    def test_doses_count_from_age_18(self, days: int, status: Status) -> None:
        born = date.fromisoformat(birth_date_for(55))
        f = finding(ZOSTER, patient(age=55), dose_at_age("187", 18, days=days, born=born),
                    immunization("187", 100))
        assert f.status == status

    def test_unknown_without_birth_date(self) -> None:
        assert finding(ZOSTER, patient(age=None)).status == Status.UNKNOWN


# --- pneumococcal ------------------------------------------------------------------------


class TestPneumococcal:
    @pytest.mark.parametrize("cvx", ["216", "327"])
    def test_pcv20_or_pcv21_alone_completes(self, cvx: str) -> None:
        f = finding(PNEUMO, patient(age=60), immunization(cvx, 500))
        assert f.status == Status.SATISFIED
        assert f.due_date is None

    def test_pcv15_alone_is_not_enough(self) -> None:
        f = finding(PNEUMO, patient(age=60), immunization("215", 500))
        assert f.status == Status.DUE
        assert "PCV15" in f.explanation and "no PPSV23" in f.explanation
        assert_order(f, "216")
        assert any(e.purpose == "result" for e in f.evidence)

    @pytest.mark.parametrize(("pcv15", "ppsv23"), [(800, 400), (400, 800)],
                             ids=["pcv15-then-ppsv23", "ppsv23-then-pcv15"])
    def test_pcv15_with_ppsv23_completes(self, pcv15: int, ppsv23: int) -> None:
        f = finding(PNEUMO, patient(age=60), immunization("215", pcv15),
                    immunization("33", ppsv23))
        assert f.status == Status.SATISFIED

    def test_ppsv23_alone_is_due(self) -> None:
        f = finding(PNEUMO, patient(age=70), immunization("33", 500))
        assert f.status == Status.DUE

    def test_pcv13_alone_is_due(self) -> None:
        f = finding(PNEUMO, patient(age=70), immunization("133", 500))
        assert f.status == Status.DUE
        assert "no PPSV23" in f.explanation

    @pytest.mark.parametrize(("ppsv23_age_days", "status"), [(-1, Status.DUE),
                                                            (0, Status.SATISFIED)])
    def test_pcv13_and_ppsv23_complete_only_when_both_given_from_65(
            self, ppsv23_age_days: int, status: Status) -> None:
        born = date.fromisoformat(birth_date_for(75))
        f = finding(PNEUMO, patient(age=75), dose_at_age("133", 66, born=born),
                    dose_at_age("33", 65, days=ppsv23_age_days, born=born))
        assert f.status == status

    def test_unspecified_pneumococcal_record_does_not_count(self) -> None:
        assert finding(PNEUMO, patient(age=60), immunization("109", 500)).status == Status.DUE

    def test_not_done_pcv20_does_not_count(self) -> None:
        f = finding(PNEUMO, patient(age=60), immunization("216", 30, status="not-done"))
        assert f.status == Status.DUE

    @pytest.mark.parametrize(("days", "status"), [(1, Status.NOT_APPLICABLE), (0, Status.DUE)])
    def test_from_50(self, days: int, status: Status) -> None:
        assert finding(PNEUMO, patient(age=50, days=days)).status == status

    def test_hospice_excludes(self) -> None:
        assert finding(PNEUMO, patient(age=80), hospice_yes()).status == Status.EXCLUDED


# --- RSV ------------------------------------------------------------------------------------


class TestRsv:
    def test_74_without_risk_is_not_applicable(self) -> None:
        assert finding(RSV, patient(age=74)).status == Status.NOT_APPLICABLE

    @pytest.mark.parametrize("copd", [condition("13645005"), condition("J44.9", system=ICD10CM)],
                             ids=["snomed", "icd10"])
    def test_74_with_copd_applies(self, copd: dict[str, Any]) -> None:
        f = finding(RSV, patient(age=74), copd)
        assert f.status == Status.DUE
        assert_order(f, "314")

    @pytest.mark.parametrize(("days", "status"), [(1, Status.NOT_APPLICABLE), (0, Status.DUE)])
    def test_everyone_from_75(self, days: int, status: Status) -> None:
        assert finding(RSV, patient(age=75, days=days)).status == status

    @pytest.mark.parametrize(("days", "status"), [(1, Status.NOT_APPLICABLE), (0, Status.DUE)])
    def test_risk_conditions_count_from_60(self, days: int, status: Status) -> None:
        hf = condition("I50.9", system=ICD10CM)
        assert finding(RSV, patient(age=60, days=days), hf).status == status

    @pytest.mark.parametrize("risk", [
        condition("53741008"),  # coronary arteriosclerosis (Synthea's "Coronary Heart Disease")
        condition("195967001"),  # asthma
        condition("N18.6", system=ICD10CM),  # ESRD
        condition("E11.22", system=ICD10CM),  # type 2 diabetes with diabetic CKD
        condition("Z68.41", system=ICD10CM),  # BMI 40-44.9
        condition("K74.60", system=ICD10CM),  # cirrhosis
        condition("D57.1", system=ICD10CM),  # sickle cell disease
        condition("Z94.0", system=ICD10CM),  # kidney transplant (immunocompromise)
        medication("999001", "Insulin Lispro 100 UNT/ML Injectable Solution"),
        observation("71802-3", 30, value_code=(SNOMED, "160734000")),  # lives in nursing home
    ], ids=["cad", "asthma", "esrd", "dm-ckd", "bmi40", "cirrhosis", "sickle-cell",
            "transplant", "insulin-by-name", "nursing-home"])
    def test_each_kind_of_risk_qualifies_at_65(self, risk: dict[str, Any]) -> None:
        assert finding(RSV, patient(age=65), risk).status == Status.DUE

    @pytest.mark.parametrize("not_risk", [
        condition("38341003"),  # hypertension alone
        condition("E11.9", system=ICD10CM),  # diabetes without complications
        condition("D57.3", system=ICD10CM),  # sickle-cell trait
        condition("13645005", status="resolved", abated_days_ago=100),  # resolved
    ], ids=["hypertension", "uncomplicated-diabetes", "sickle-trait", "resolved-copd"])
    def test_conditions_outside_the_acip_list_do_not_qualify(
            self, not_risk: dict[str, Any]) -> None:
        assert finding(RSV, patient(age=65), not_risk).status == Status.NOT_APPLICABLE

    @pytest.mark.parametrize("cvx", ["303", "305", "326", "314"])
    def test_one_dose_for_life(self, cvx: str) -> None:
        f = finding(RSV, patient(age=80), immunization(cvx, 700))
        assert f.status == Status.SATISFIED
        assert f.due_date is None

    @pytest.mark.parametrize("cvx", ["306", "307"])
    def test_infant_antibody_is_not_a_vaccine(self, cvx: str) -> None:
        assert finding(RSV, patient(age=80), immunization(cvx, 700)).status == Status.DUE

    def test_a_dose_before_50_is_not_the_older_adult_dose(self) -> None:
        born = date.fromisoformat(birth_date_for(76))
        f = finding(RSV, patient(age=76), dose_at_age("305", 49, born=born))
        assert f.status == Status.DUE

    def test_not_done_dose_does_not_count(self) -> None:
        f = finding(RSV, patient(age=80), immunization("305", 30, status="not-done"))
        assert f.status == Status.DUE

    def test_unknown_without_birth_date(self) -> None:
        assert finding(RSV, patient(age=None)).status == Status.UNKNOWN


# --- hepatitis B ---------------------------------------------------------------------------


class TestHepatitisB:
    @pytest.mark.parametrize(("age", "days", "status"), [
        (19, 1, Status.NOT_APPLICABLE), (19, 0, Status.DUE),
        (60, 1, Status.DUE), (60, 0, Status.NOT_APPLICABLE),
    ], ids=["18", "19", "59", "60"])
    def test_ages_19_to_59(self, age: int, days: int, status: Status) -> None:
        assert finding(HEPB, patient(age=age, days=days)).status == status

    def test_two_doses_of_a_three_dose_vaccine_are_not_enough(self) -> None:
        f = finding(HEPB, patient(age=40), immunization("43", 400), immunization("43", 300))
        assert f.status == Status.DUE
        assert "2 of 3" in f.explanation
        assert_order(f, "45")

    def test_three_doses_complete_the_series(self) -> None:
        f = finding(HEPB, patient(age=40), immunization("43", 500), immunization("43", 470),
                    immunization("43", 300))
        assert f.status == Status.SATISFIED
        assert f.orders == ()

    def test_two_doses_of_heplisav_b_complete_the_series(self) -> None:
        f = finding(HEPB, patient(age=40), immunization("189", 400), immunization("189", 370))
        assert f.status == Status.SATISFIED

    def test_mixed_series_with_heplisav_b_needs_three_doses(self) -> None:
        two = [immunization("189", 400), immunization("43", 370)]
        assert finding(HEPB, patient(age=40), *two).status == Status.DUE
        f = finding(HEPB, patient(age=40), *two, immunization("43", 200))
        assert f.status == Status.SATISFIED

    def test_infant_series_counts(self) -> None:
        born = date.fromisoformat(birth_date_for(25))
        f = finding(HEPB, patient(age=25), dose_at_age("08", 0, born=born),
                    dose_at_age("08", 0, days=30, born=born),
                    dose_at_age("08", 0, days=180, born=born))
        assert f.status == Status.SATISFIED

    def test_not_done_dose_does_not_count(self) -> None:
        f = finding(HEPB, patient(age=40), immunization("189", 400),
                    immunization("189", 370, status="not-done"))
        assert f.status == Status.DUE

    def test_hepatitis_b_immune_globulin_is_not_a_vaccine(self) -> None:
        f = finding(HEPB, patient(age=40), immunization("30", 500), immunization("30", 400),
                    immunization("30", 300))
        assert f.status == Status.DUE


# --- shared behaviour ------------------------------------------------------------------------


@pytest.mark.parametrize("rule_id", [FLU, TD, ZOSTER, PNEUMO, RSV, HEPB])
def test_every_immunization_is_a_nurse_task_given_at_the_visit(rule_id: str) -> None:
    f = finding(rule_id, patient(age=80 if rule_id != HEPB else 40))
    assert f.role == Role.NURSE
    assert f.status == Status.DUE
    assert f.orders and all(o.category == "immunization" and not o.before_visit
                            for o in f.orders)


def test_a_narrower_clinic_due_soon_window_does_not_change_the_season_rule() -> None:
    settings = Settings(due_soon=Duration(30, "d"))
    dose = immunization("140", days_before(date(2026, 10, 15)))
    f = finding(FLU, patient(age=50), dose, settings=settings, visit=date(2027, 7, 20))
    assert f.status == Status.SATISFIED


# --- minimum intervals and the season: "due" only when the dose is allowed --------------------


class TestWhenADoseIsAllowed:
    """CDC/ACIP General Best Practice Guidelines (Table 3-1) and the adult notes: a dose that
    is due but not allowed at the visit is due-soon with its date and is not proposed."""

    @pytest.mark.parametrize(("second", "status"), [
        (76, Status.SATISFIED),  # 24 days after the first: 4 weeks less the 4-day grace
        (77, Status.DUE),  # 23 days after: too soon, does not count, repeat it
    ])
    def test_a_second_zoster_dose_counts_from_4_weeks_less_4_days(self, second: int,
                                                                 status: Status) -> None:
        f = finding(ZOSTER, patient(age=60), immunization("187", 100),
                    immunization("187", second))
        assert f.status == status
        if status == Status.DUE:
            assert "too soon after the one before (minimum 4 weeks) and does not count" \
                in f.explanation
            assert_order(f, "187")

    @pytest.mark.parametrize(("last_dose", "status", "not_before"), [
        (27, Status.DUE_SOON, date(2026, 12, 2)),  # allowed tomorrow: not today
        (28, Status.DUE, None),  # exactly 4 weeks: allowed today (no grace when scheduling)
    ])
    def test_the_next_zoster_dose_is_allowed_4_weeks_after_the_last(
            self, last_dose: int, status: Status, not_before: date | None) -> None:
        f = finding(ZOSTER, patient(age=60), immunization("187", last_dose))
        assert (f.status, f.not_before) == (status, not_before)
        if not_before:
            assert f.orders == ()
            assert f"not before {not_before.isoformat()}" in f.explanation
        else:
            assert_order(f, "187")

    def test_a_too_early_dose_is_repeated_4_weeks_after_it_not_after_the_first(self) -> None:
        # first dose 45 days ago, second 25 days ago (20 days later: invalid)
        f = finding(ZOSTER, patient(age=60), immunization("187", 45), immunization("187", 25))
        assert (f.status, f.not_before, f.orders) == (Status.DUE_SOON, date(2026, 12, 4), ())

    @pytest.mark.parametrize(("cvx", "days_ago", "status"), [
        ("133", 364, Status.DUE_SOON),  # PCV13 a day short of a year
        ("133", 365, Status.DUE),
        ("33", 364, Status.DUE_SOON),  # PPSV23 alone
        ("33", 365, Status.DUE),
        ("215", 364, Status.DUE_SOON),  # PCV15 alone, not immunocompromised
        ("215", 365, Status.DUE),
    ])
    def test_the_next_pneumococcal_dose_is_allowed_a_year_after_the_last(
            self, cvx: str, days_ago: int, status: Status) -> None:
        f = finding(PNEUMO, patient(age=70), immunization(cvx, days_ago))
        assert f.status == status
        if status == Status.DUE_SOON:
            assert (f.not_before, f.orders) == (date(2026, 12, 2), ())
        else:
            assert_order(f, "216")

    @pytest.mark.parametrize(("days_ago", "status"), [(55, Status.DUE_SOON), (56, Status.DUE)])
    def test_after_pcv15_the_immunocompromised_wait_8_weeks(self, days_ago: int,
                                                            status: Status) -> None:
        hiv = condition("B20", system=ICD10CM)
        f = finding(PNEUMO, patient(age=60), hiv, immunization("215", days_ago))
        assert f.status == status

    def test_the_latest_of_several_doses_sets_the_wait(self) -> None:
        # at 60 PCV13 + PPSV23 is not a complete series (both must be from 65)
        f = finding(PNEUMO, patient(age=60), immunization("133", 900), immunization("33", 200))
        assert f.not_before == date(2027, 5, 15)  # a year after the PPSV23 of 2026-05-15
        assert "at least 1 year after PPSV23 on 2026-05-15" in f.explanation

    @pytest.mark.parametrize(("visit", "status", "proposed"), [
        (date(2027, 6, 30), Status.OVERDUE, True),  # last month a season's vaccine is offered
        (date(2027, 7, 1), Status.DUE_SOON, False),  # out of season: from August 1
        (date(2027, 7, 31), Status.DUE_SOON, False),
        (date(2027, 8, 1), Status.OVERDUE, True),  # the new season
    ])
    def test_influenza_is_not_proposed_out_of_season(self, visit: date, status: Status,
                                                     proposed: bool) -> None:
        # last dose in the 2025-26 season: no dose yet in 2026-27 by June 2027
        dose = immunization("140", days_before(date(2025, 10, 15)))
        f = finding(FLU, patient(age=50), dose, visit=visit)
        assert f.status == status
        assert bool(f.orders) is proposed
        if not proposed:
            assert f.not_before == date(2027, 8, 1)

    def test_the_not_before_date_is_on_the_sheet_as_a_task(self) -> None:
        from datetime import datetime

        from previsit import sheets
        from previsit.plan import Visit, VisitPlan
        from previsit.sheets.tasks import tasks

        f = finding(ZOSTER, patient(age=60), immunization("187", 10))
        visit = Visit(appointment_id="a1", patient_id="p1", status="booked",
                      start=datetime(2026, 12, 1, 9, 0))
        plan = VisitPlan(visit=visit, patient_name="A", patient_age=60, patient_sex="female",
                         patient_mrn=None, findings=(f,))
        assert [t.what for t in tasks(plan)] == [
            "Schedule from Sat Dec 19: Shingles vaccine (recombinant, 2 doses)"]
        assert "Not before Sat Dec 19: schedule it then" in sheets.render_visit_sheet(plan)
