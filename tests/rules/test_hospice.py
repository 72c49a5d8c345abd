"""The hospice and palliative-care exclusions, read as the CMS Hospice and PalliativeCare
libraries read them (VSAC value sets, by resource type), in the year before the visit.

CMS-aligned screening and lab rules are excluded by hospice or palliative care; the vaccine
rules by hospice care only. Codes the measures read only from Encounters (hospice admission,
palliative-care consultation) do not exclude when recorded as a Procedure or Condition.
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from builders import (
    ICD10CM,
    LOINC,
    SNOMED,
    condition,
    day,
    finding,
    observation,
    patient,
    procedure,
)

from previsit.plan import Status

CPT = "http://www.ama-assn.org/go/cpt"
YEAR = 365  # 2025-12-01, one year before the visit (2026-12-01)
_ids = itertools.count(1)

SMOKER = [observation("72166-2", 10, value_code=(SNOMED, "449868002")),
          observation("8664-5", 10, 30, "{pack-years}")]


def diabetic(age: int = 60) -> list[dict[str, Any]]:
    return [patient(age, "male"), condition("44054006")]


# rule, what makes it apply and due
CMS_ALIGNED = [
    ("colorectal-cancer-screening", lambda: [patient(60, "male")]),
    ("breast-cancer-screening", lambda: [patient(60, "female")]),
    ("cervical-cancer-screening", lambda: [patient(40, "female")]),
    ("lung-cancer-screening", lambda: [patient(60, "male"), *SMOKER]),
    ("hba1c-monitoring", diabetic),
    ("kidney-health-evaluation", diabetic),
    ("lipid-monitoring", diabetic),
]
VACCINES = [
    ("td-tdap-immunization", lambda: [patient(70, "female")]),
    ("zoster-immunization", lambda: [patient(70, "female")]),
    ("pneumococcal-immunization", lambda: [patient(70, "female")]),
    ("rsv-immunization", lambda: [patient(80, "female")]),
    ("hepatitis-b-immunization", lambda: [patient(40, "female")]),
]
ALL = CMS_ALIGNED + VACCINES


def service_request(code: str, days_ago: int | None, *, status: str = "active",
                    intent: str = "order", system: str = SNOMED) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "ServiceRequest", "id": f"sr{next(_ids)}", "status": status,
        "intent": intent, "code": {"coding": [{"system": system, "code": code}]},
        "subject": {"reference": "Patient/p1"}}
    if days_ago is not None:
        resource["authoredOn"] = day(days_ago)
    return resource


HOSPICE = {
    "hospice-diagnosis": condition("170935008", days_ago=30),  # Full care by hospice
    "hospice-care-procedure": procedure("385763009", 200),
    "hospice-supervision-cpt": procedure("99377", 200, system=CPT),
    "hospice-order-active": service_request("385763009", 30),
    "hospice-order-completed": service_request("385763009", 30, status="completed"),
    "mds-yes": observation("45755-6", 100, value_code=(SNOMED, "373066001")),
}
PALLIATIVE = {
    "palliative-diagnosis-z51.5": condition("Z51.5", system=ICD10CM, days_ago=30),
    "seen-by-palliative-care": condition("305686008", days_ago=30),
    "palliative-care-procedure": procedure("103735009", 100),
    "facit-pal": observation("71007-9", 100, 42, "{score}"),
}
# Codes the measures read only as Encounter types (Hospice Encounter, Palliative Care
# Encounter), or that are in no set the libraries use for that resource type.
NOT_EXCLUDING = {
    "admission-to-hospice-procedure": procedure("305336008", 30),
    "referral-to-hospice-procedure": procedure("306205009", 30),
    "terminal-care-procedure": procedure("182964004", 30),
    "palliative-consultation-procedure": procedure("713281006", 30),
    "referral-to-palliative-care-procedure": procedure("306237005", 30),
    "comfort-measures-procedure": procedure("133918004", 30),
    "palliative-care-regime-as-condition": condition("103735009", days_ago=30),
    "hospice-encounter-hcpcs-as-procedure": procedure(
        "Q5003", 30, system="http://www.nlm.nih.gov/research/umls/hcpcs"),
    "mds-no": observation("45755-6", 100, value_code=(SNOMED, "373067005")),
    "mds-yes-loinc-other-question": observation("45756-4", 100, value_code=(LOINC, "LA33-6")),
}


def status(rule_id: str, base: Any, *extra: dict[str, Any]) -> Status:
    return finding(rule_id, *base(), *extra).status


# --- encounters (the CMS Hospice and PalliativeCare libraries' encounter alternatives) ----

HCPCS = "http://www.nlm.nih.gov/research/umls/hcpcs"
NUBC = "http://www.nubc.org/patient-discharge"
INPATIENT = "183452005"  # Emergency hospital admission (Encounter Inpatient)


def encounter(code: str, start_days_ago: int, end_days_ago: int | None = None, *,
              system: str = SNOMED, status: str = "finished",
              discharge: tuple[str, str] | None = None) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Encounter", "id": f"enc{next(_ids)}", "status": status,
        "type": [{"coding": [{"system": system, "code": code}]}],
        "subject": {"reference": "Patient/p1"}, "period": {"start": day(start_days_ago)}}
    if end_days_ago is not None:
        resource["period"]["end"] = day(end_days_ago)
    if discharge is not None:
        resource["hospitalization"] = {"dischargeDisposition": {
            "coding": [{"system": discharge[0], "code": discharge[1]}]}}
    return resource


HOSPICE_ENCOUNTERS = {
    "hospice-admission-snomed": encounter("305336008", 40, status="in-progress"),
    "seen-in-hospice": encounter("305911006", 200, 199),
    "hospice-hcpcs-q5003": encounter("Q5003", 300, 280, system=HCPCS),
    "inpatient-discharged-home-hospice": encounter(INPATIENT, 60, 55,
                                                   discharge=(SNOMED, "428361000124107")),
    "inpatient-discharged-hospice-facility-nubc": encounter(INPATIENT, 20, 18,
                                                            discharge=(NUBC, "51")),
}


@pytest.mark.parametrize("evidence", list(HOSPICE_ENCOUNTERS.values()),
                         ids=list(HOSPICE_ENCOUNTERS))
@pytest.mark.parametrize(("rule_id", "base"), ALL, ids=[r for r, _ in ALL])
def test_a_hospice_encounter_excludes(rule_id: str, base: Any, evidence: dict[str, Any]) -> None:
    assert status(rule_id, base, evidence) == Status.EXCLUDED


@pytest.mark.parametrize(("rule_id", "base"), ALL, ids=[r for r, _ in ALL])
def test_a_palliative_care_encounter_excludes_screening_and_labs_only(rule_id: str,
                                                                      base: Any) -> None:
    palliative = encounter("713281006", 90, 90)  # Consultation for palliative care
    expected = Status.EXCLUDED if (rule_id, base) in CMS_ALIGNED else Status.DUE
    assert status(rule_id, base, palliative) == expected


@pytest.mark.parametrize(("evidence", "expected"), [
    # overlapping the year before the visit: it ended 364 days ago; it ended 365 days ago
    (encounter("305911006", 400, YEAR - 1), Status.EXCLUDED),
    (encounter("305911006", 400, YEAR), Status.DUE),
    # a stay still going on lasts until the visit; a finished one with no end is one day
    (encounter("305336008", 3 * YEAR, status="in-progress"), Status.EXCLUDED),
    (encounter("305336008", 3 * YEAR), Status.DUE),
    # not performed: planned, cancelled, entered in error
    (encounter("305336008", 30, status="planned"), Status.DUE),
    (encounter("305336008", 30, 29, status="cancelled"), Status.DUE),
    (encounter("305336008", 30, 29, status="entered-in-error"), Status.DUE),
    # starting after the visit
    (encounter("305336008", -5, status="in-progress"), Status.DUE),
])
def test_hospice_encounter_boundaries(evidence: dict[str, Any], expected: Status) -> None:
    assert status("colorectal-cancer-screening", CMS_ALIGNED[0][1], evidence) == expected


@pytest.mark.parametrize(("evidence", "expected"), [
    # an inpatient stay counts only with a discharge to hospice, ending in the year
    (encounter(INPATIENT, 20, 18, discharge=(NUBC, "01")), Status.DUE),  # home
    (encounter(INPATIENT, 20, 18), Status.DUE),  # no disposition
    (encounter(INPATIENT, YEAR + 10, YEAR, discharge=(NUBC, "50")), Status.DUE),
    (encounter(INPATIENT, YEAR + 10, YEAR - 1, discharge=(NUBC, "50")), Status.EXCLUDED),
    # an ambulatory visit discharged "to hospice" is not an inpatient stay
    (encounter("185349003", 20, 20, discharge=(NUBC, "50")), Status.DUE),
])
def test_an_inpatient_stay_excludes_only_when_it_ended_in_a_discharge_to_hospice(
        evidence: dict[str, Any], expected: Status) -> None:
    assert status("hba1c-monitoring", diabetic, evidence) == expected


def test_the_exclusion_cites_the_encounter() -> None:
    stay = encounter("305336008", 40, status="in-progress")
    f = finding("colorectal-cancer-screening", patient(60, "male"), stay)
    assert [e.reference for e in f.evidence] == [f"Encounter/{stay['id']}"]
    assert f.explanation == ("excluded: hospice or palliative care in the year before the "
                             f"visit (305336008 {day(40)})")


@pytest.mark.parametrize("evidence", list(HOSPICE.values()), ids=list(HOSPICE))
@pytest.mark.parametrize(("rule_id", "base"), ALL, ids=[r for r, _ in ALL])
def test_hospice_care_excludes(rule_id: str, base: Any, evidence: dict[str, Any]) -> None:
    assert status(rule_id, base) == Status.DUE
    f = finding(rule_id, *base(), evidence)
    assert f.status == Status.EXCLUDED
    assert f.explanation.startswith("excluded: hospice")
    assert f.orders == ()


@pytest.mark.parametrize("evidence", list(PALLIATIVE.values()), ids=list(PALLIATIVE))
@pytest.mark.parametrize(("rule_id", "base"), ALL, ids=[r for r, _ in ALL])
def test_palliative_care_excludes_screening_and_labs_but_not_vaccines(
        rule_id: str, base: Any, evidence: dict[str, Any]) -> None:
    expected = Status.DUE if (rule_id, base) in VACCINES else Status.EXCLUDED
    assert status(rule_id, base, evidence) == expected


@pytest.mark.parametrize("evidence", list(NOT_EXCLUDING.values()), ids=list(NOT_EXCLUDING))
@pytest.mark.parametrize(("rule_id", "base"), ALL, ids=[r for r, _ in ALL])
def test_encounter_codes_recorded_as_procedures_or_conditions_do_not_exclude(
        rule_id: str, base: Any, evidence: dict[str, Any]) -> None:
    assert status(rule_id, base, evidence) == Status.DUE


@pytest.mark.parametrize(("days_ago", "expected"), [
    (YEAR - 1, Status.EXCLUDED),  # authored 364 days before the visit
    (YEAR, Status.DUE),  # exactly a year before: outside the look-back
    (0, Status.EXCLUDED),  # on the visit day
    (-1, Status.DUE),  # after the visit
    (None, Status.DUE),  # no authored date: cannot place it in the year
])
@pytest.mark.parametrize(("rule_id", "base"), [CMS_ALIGNED[0], VACCINES[0]],
                         ids=["colorectal", "td-tdap"])
def test_hospice_order_lookback(rule_id: str, base: Any, days_ago: int | None,
                                expected: Status) -> None:
    assert status(rule_id, base, service_request("385763009", days_ago)) == expected


@pytest.mark.parametrize(("order_status", "intent", "expected"), [
    ("active", "order", Status.EXCLUDED),
    ("completed", "order", Status.EXCLUDED),
    ("active", "original-order", Status.EXCLUDED),
    ("revoked", "order", Status.DUE),
    ("draft", "order", Status.DUE),
    ("entered-in-error", "order", Status.DUE),
    ("on-hold", "order", Status.DUE),
    ("active", "proposal", Status.DUE),
    ("draft", "proposal", Status.DUE),  # previsit's own write-back
    ("active", "plan", Status.DUE),
])
def test_only_a_standing_or_fulfilled_hospice_order_excludes(order_status: str, intent: str,
                                                            expected: Status) -> None:
    order = service_request("385763009", 30, status=order_status, intent=intent)
    assert status("breast-cancer-screening", CMS_ALIGNED[1][1], order) == expected


def test_an_order_outside_hospice_care_ambulatory_does_not_exclude() -> None:
    referral = service_request("306205009", 30)  # Referral to hospice: not in the set
    assert status("colorectal-cancer-screening", CMS_ALIGNED[0][1], referral) == Status.DUE


@pytest.mark.parametrize(("abated_days_ago", "expected"), [
    (YEAR - 1, Status.EXCLUDED),  # ended inside the year before the visit
    (YEAR, Status.DUE),  # ended exactly a year before the visit
])
@pytest.mark.parametrize(("rule_id", "base"), [CMS_ALIGNED[4], VACCINES[3]],
                         ids=["hba1c", "pneumococcal"])
def test_a_hospice_diagnosis_that_ended_counts_for_a_year(rule_id: str, base: Any,
                                                          abated_days_ago: int,
                                                          expected: Status) -> None:
    ended = condition("170935008", days_ago=YEAR + 200, status="resolved",
                      abated_days_ago=abated_days_ago)
    assert status(rule_id, base, ended) == expected


def test_an_old_active_hospice_diagnosis_still_excludes() -> None:
    # on the problem list for three years and not ended: hospice care overlaps the year
    old = condition("170935008", days_ago=3 * YEAR)
    assert status("td-tdap-immunization", VACCINES[1][1], old) == Status.EXCLUDED


def test_the_exclusion_cites_the_order() -> None:
    order = service_request("385763009", 30)
    f = finding("lipid-monitoring", *diabetic(), order)
    assert [e.reference for e in f.evidence] == [f"ServiceRequest/{order['id']}"]
    assert "ordered" in f.explanation


@pytest.mark.parametrize("evidence", [*HOSPICE.values(), *PALLIATIVE.values()],
                         ids=[*HOSPICE, *PALLIATIVE])
def test_influenza_vaccine_has_no_hospice_or_palliative_exclusion(
        evidence: dict[str, Any]) -> None:
    # CMS147 has no denominator exclusion and ACIP recommends a dose every season for every
    # adult: a patient in hospice is still offered the flu vaccine.
    assert status("influenza-immunization", lambda: [patient(80, "female")], evidence) == \
        Status.DUE
