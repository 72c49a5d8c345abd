"""PatientRecord from raw FHIR JSON: what is kept, what is dropped, what becomes a DataIssue."""

from __future__ import annotations

from datetime import date
from typing import Any

import pytest
from builders import (
    CVX,
    LOINC,
    RXNORM,
    SNOMED,
    VISIT,
    coding,
    condition,
    day,
    immunization,
    medication,
    observation,
    patient,
    procedure,
    record,
)

from previsit.codes import Coding
from previsit.errors import RecordError
from previsit.record import build_record

# --- every resource type -------------------------------------------------------------------


def test_every_resource_type_lands_in_its_place() -> None:
    rec = record(
        patient(age=50, sex="female", name="Ada Lovelace"),
        observation("4548-4", 30, 6.8, "%"),
        condition("44054006", days_ago=2000, display="Diabetes mellitus type 2"),
        procedure("73761001", 400, display="Colonoscopy"),
        immunization("187", 100),
        medication("314076", "lisinopril 10 MG Oral Tablet", days_ago=200),
        {"resourceType": "ServiceRequest", "id": "sr1", "status": "active", "intent": "order",
         "code": coding(LOINC, "2823-3", "Potassium"), "authoredOn": day(3),
         "identifier": [{"system": "urn:previsit", "value": "abc"}]},
        {"resourceType": "Encounter", "id": "enc1", "status": "finished"},
    )
    assert rec.patient.id == "p1"
    assert rec.patient.sex == "female"
    assert rec.patient.birth_date == date(1976, 12, 1)
    assert rec.patient.name == "Ada Lovelace"
    assert not rec.patient.deceased

    (obs,) = rec.observations
    assert obs.code.codings[0].key() == (LOINC, "4548-4")
    assert obs.day == date(2026, 11, 1)
    assert obs.value_quantity is not None and obs.value_quantity.value == 6.8
    assert str(obs.value_quantity) == "6.8 %"
    assert obs.status == "final"
    assert obs.ref.startswith("Observation/obs")

    (cond,) = rec.conditions
    assert cond.code.label() == "Diabetes mellitus type 2"
    assert cond.clinical_status == "active" and cond.verification == "confirmed"
    assert cond.onset == date(2021, 6, 10)

    (proc,) = rec.procedures
    assert (proc.code.codings[0].system, proc.day, proc.status) == (
        SNOMED, date(2025, 10, 27), "completed")

    (imm,) = rec.immunizations
    assert imm.vaccine.codings[0].key() == (CVX, "187")
    assert imm.day == date(2026, 8, 23)

    (med,) = rec.medications
    assert med.medication.codings[0].key() == (RXNORM, "314076")
    assert med.active and med.authored_on == date(2026, 5, 15)
    assert (med.supply_days, med.repeats) == (90, 3)

    (req,) = rec.requests
    assert (req.ref, req.resource_type, req.status, req.intent) == (
        "ServiceRequest/sr1", "ServiceRequest", "active", "order")
    assert req.open and req.identifiers == (("urn:previsit", "abc"),)
    assert req.authored_on == date(2026, 11, 28)

    assert rec.issues == ()
    (enc,) = rec.encounters
    assert (enc.ref, enc.status, enc.start) == ("Encounter/enc1", "finished", None)
    assert rec.resource_count == 8


def test_resources_may_come_in_any_order() -> None:
    rec = record(observation("4548-4", 30, 6.8, "%"), patient(age=50))
    assert rec.patient.id == "p1"
    assert len(rec.observations) == 1


# --- observations ----------------------------------------------------------------------------


def test_an_observation_without_a_date_becomes_an_issue_and_is_not_used() -> None:
    undated = observation("4548-4", 0, 9.9, "%")
    del undated["effectiveDateTime"]
    rec = record(patient(), undated, observation("4548-4", 10, 7.1, "%"))
    assert [o.value_quantity.value for o in rec.observations if o.value_quantity] == [7.1]
    (issue,) = rec.issues
    assert issue.resource == f"Observation/{undated['id']}"
    assert "no date" in issue.message


@pytest.mark.parametrize("status", ["cancelled", "entered-in-error"])
def test_cancelled_and_entered_in_error_observations_are_dropped(status: str) -> None:
    rec = record(patient(), observation("4548-4", 5, 9.0, "%", status=status))
    assert rec.observations == ()
    assert rec.issues == ()


def test_a_result_over_a_period_is_dated_by_its_end_as_cms_measures_read_it() -> None:
    obs = observation("4548-4", 0, 6.5, "%")
    del obs["effectiveDateTime"]
    obs["effectivePeriod"] = {"start": "2026-03-01T08:00:00-05:00", "end": "2026-03-03"}
    only_end = observation("2823-3", 0, 4.1, "mmol/L")
    del only_end["effectiveDateTime"]
    only_end["effectivePeriod"] = {"end": "2026-04-02"}
    issued = observation("2160-0", 0, 1.0, "mg/dL")
    del issued["effectiveDateTime"]
    issued["issued"] = "2026-05-05T10:00:00Z"
    rec = record(patient(), obs, only_end, issued)
    assert [o.day for o in rec.observations] == [date(2026, 3, 3), date(2026, 4, 2),
                                                 date(2026, 5, 5)]


def test_observation_coded_and_date_values_and_members() -> None:
    smoking = observation("72166-2", 10, value_code=(SNOMED, "449868002"))
    quit_date = observation("74010-0", 10, value_date="2019-04")
    panel = observation("24323-8", 10)
    panel["hasMember"] = [{"reference": "Observation/a"}, {"display": "no reference"},
                          {"reference": "Observation/b"}]
    rec = record(patient(), smoking, quit_date, panel)
    by_code = {o.code.codings[0].code: o for o in rec.observations}
    assert by_code["72166-2"].value_concept is not None
    assert by_code["72166-2"].value_concept.codings[0].key() == (SNOMED, "449868002")
    assert by_code["72166-2"].value_quantity is None
    assert by_code["74010-0"].value_date == date(2019, 4, 1)
    assert by_code["24323-8"].members == ("Observation/a", "Observation/b")


def test_a_boolean_value_is_not_a_quantity() -> None:
    obs = observation("4548-4", 10)
    obs["valueQuantity"] = {"value": True, "unit": "%"}
    (read,) = record(patient(), obs).observations
    assert read.value_quantity is None


# --- conditions ------------------------------------------------------------------------------


def test_condition_active_abated_and_refuted() -> None:
    rec = record(
        patient(),
        condition("1", status="active"),
        condition("2", status="resolved"),
        condition("3", status="active", abated_days_ago=30),
        condition("4", status="recurrence"),
        condition("5", verification="refuted"),
        condition("6", verification="entered-in-error"),
        condition("7", status="inactive"),
    )
    by_code = {c.code.codings[0].code: c for c in rec.conditions}
    assert by_code["1"].active and not by_code["1"].refuted
    assert not by_code["2"].active
    assert not by_code["3"].active
    assert by_code["3"].abatement == date(2026, 11, 1)
    assert by_code["4"].active
    assert by_code["5"].refuted and by_code["6"].refuted
    assert not by_code["7"].active


def test_a_condition_without_clinical_status_is_active_until_abated() -> None:
    bare = condition("1")
    del bare["clinicalStatus"]
    abated = condition("2", abated_days_ago=5)
    del abated["clinicalStatus"]
    rec = record(patient(), bare, abated)
    assert [c.active for c in rec.conditions] == [True, False]


def test_condition_first_known_is_onset_else_recorded_date() -> None:
    recorded_only = condition("1")
    del recorded_only["onsetDateTime"]
    recorded_only["recordedDate"] = "2020-02-02"
    period = condition("2")
    del period["onsetDateTime"]
    period["onsetPeriod"] = {"start": "2018-07"}
    rec = record(patient(), recorded_only, period)
    assert [c.first_known for c in rec.conditions] == [date(2020, 2, 2), date(2018, 7, 1)]


# --- procedures and immunizations ------------------------------------------------------------


def test_procedures_not_done_are_dropped_and_undated_ones_are_issues() -> None:
    undated = procedure("73761001", 10)
    del undated["performedDateTime"]
    period = procedure("73761001", 10)
    del period["performedDateTime"]
    period["performedPeriod"] = {"start": "2024-09-09T09:00:00Z"}
    overnight = procedure("73761001", 10)
    del overnight["performedDateTime"]
    overnight["performedPeriod"] = {"start": "2024-12-31T23:30:00Z", "end": "2025-01-01T00:40:00Z"}
    rec = record(patient(), procedure("73761001", 10, status="not-done"), undated, period,
                 overnight)
    # only a start: that day; a start and an end: the end (CMS: Latest(performed))
    assert [p.day for p in rec.procedures] == [date(2024, 9, 9), date(2025, 1, 1)]
    (issue,) = rec.issues
    assert issue.resource == f"Procedure/{undated['id']}"
    assert "no performed date" in issue.message


def test_an_undated_immunization_is_an_issue() -> None:
    undated = immunization("140", 10)
    del undated["occurrenceDateTime"]
    rec = record(patient(), undated, immunization("140", 20, status="not-done"))
    # not-done is kept (with its status) so the evaluator can refuse it explicitly
    assert [(i.status, i.day) for i in rec.immunizations] == [("not-done", date(2026, 11, 11))]
    assert "no date" in rec.issues[0].message


# --- medications -----------------------------------------------------------------------------


def _med_request(**fields: Any) -> dict[str, Any]:
    return {"resourceType": "MedicationRequest", "id": "mr1", "status": "active",
            "intent": "order", "authoredOn": "2026-01-10", **fields}


def test_medication_reference_to_a_medication_in_the_list() -> None:
    rec = build_record([
        patient(),
        _med_request(medicationReference={"reference": "Medication/m1"}),
        # the Medication may come after the request that names it
        {"resourceType": "Medication", "id": "m1",
         "code": coding(RXNORM, "314076", "lisinopril 10 MG Oral Tablet")},
    ])
    (med,) = rec.medications
    assert med.medication.codings == (Coding(RXNORM, "314076", "lisinopril 10 MG Oral Tablet"),)


def test_medication_reference_to_a_contained_medication() -> None:
    rec = build_record([patient(), _med_request(
        contained=[{"resourceType": "Medication", "id": "med",
                    "code": coding(RXNORM, "197361", "amlodipine 5 MG Oral Tablet")}],
        medicationReference={"reference": "#med"})])
    (med,) = rec.medications
    assert med.medication.label() == "amlodipine 5 MG Oral Tablet"
    assert med.medication.codings[0].key() == (RXNORM, "197361")


def test_an_unresolvable_medication_reference_keeps_its_display() -> None:
    rec = build_record([patient(), _med_request(
        medicationReference={"reference": "Medication/elsewhere", "display": "Metformin 500"})])
    (med,) = rec.medications
    assert med.medication.codings == ()
    assert med.medication.label() == "Metformin 500"


@pytest.mark.parametrize(("supply", "days"), [
    ({"value": 30, "unit": "days", "system": "http://unitsofmeasure.org", "code": "d"}, 30),
    ({"value": 4, "unit": "weeks", "system": "http://unitsofmeasure.org", "code": "wk"}, 28),
    ({"value": 3, "unit": "months", "system": "http://unitsofmeasure.org", "code": "mo"}, 90),
    ({"value": 2, "unit": "week"}, 14),
    ({"value": 90}, 90),  # no unit at all: days, the only unit pharmacies send bare
    ({"value": 1, "code": "a"}, None),  # a unit we do not convert is not guessed
])
def test_expected_supply_duration_in_days(supply: dict[str, Any], days: int | None) -> None:
    rec = build_record([patient(), _med_request(
        medicationCodeableConcept=coding(RXNORM, "314076"),
        dispenseRequest={"expectedSupplyDuration": supply, "numberOfRepeatsAllowed": 2,
                         "validityPeriod": {"start": "2026-01-10", "end": "2027-01-10"}})])
    (med,) = rec.medications
    assert med.supply_days == days
    assert med.repeats == 2
    assert (med.validity_start, med.validity_end) == (date(2026, 1, 10), date(2027, 1, 10))


@pytest.mark.parametrize(("status", "intent"), [("active", "proposal"), ("draft", "order")])
def test_proposals_and_drafts_are_requests_not_medications(status: str, intent: str) -> None:
    rec = build_record([patient(), _med_request(
        status=status, intent=intent, medicationCodeableConcept=coding(RXNORM, "314076"),
        identifier=[{"system": "urn:previsit", "value": "k1"}])])
    assert rec.medications == ()
    (req,) = rec.requests
    assert (req.resource_type, req.ref, req.status, req.intent) == (
        "MedicationRequest", "MedicationRequest/mr1", status, intent)
    assert req.identifiers == (("urn:previsit", "k1"),)
    assert req.code.codings[0].key() == (RXNORM, "314076")


def test_medication_order_active_needs_active_status_and_an_order_intent() -> None:
    rec = record(patient(), medication("1", "a"), medication("2", "b", status="stopped"),
                 medication("3", "c", status="on-hold"))
    assert [m.active for m in rec.medications] == [True, False, False]


# --- malformed resources ---------------------------------------------------------------------


def test_a_malformed_medication_request_is_an_issue_and_the_rest_is_built() -> None:
    bad = _med_request(medicationCodeableConcept=coding(RXNORM, "314076"),
                       dispenseRequest=[{"numberOfRepeatsAllowed": 1}])
    rec = build_record([patient(), bad, observation("4548-4", 10, 6.1, "%"),
                        medication("197361", "amlodipine 5 MG Oral Tablet")])
    assert [m.medication.label() for m in rec.medications] == ["amlodipine 5 MG Oral Tablet"]
    assert len(rec.observations) == 1
    (issue,) = rec.issues
    assert issue.resource == "MedicationRequest/mr1"
    assert "could not be read" in issue.message


@pytest.mark.parametrize("make", [
    lambda: {**observation("4548-4", 10, 6.1, "%"), "code": "4548-4"},
    lambda: {**condition("44054006"), "code": "44054006"},
    lambda: {**procedure("73761001", 10), "code": "colonoscopy"},
    lambda: {**immunization("140", 10), "vaccineCode": "140"},
], ids=["observation", "condition", "procedure", "immunization"])
def test_a_resource_whose_code_is_a_string_is_an_issue(make: Any) -> None:
    # The chart said something we cannot read; say so instead of keeping an uncoded
    # resource that can never match a rule.
    bad = make()
    rec = build_record([patient(), bad, observation("2823-3", 5, 4.2, "mmol/L")])
    assert [i.resource for i in rec.issues] == [f"{bad['resourceType']}/{bad['id']}"]
    assert [o.code.label() for o in rec.observations] == ["2823-3"]
    assert (rec.conditions, rec.procedures, rec.immunizations) == ((), (), ())


def test_a_medication_reference_that_is_a_string_is_an_issue() -> None:
    bad = _med_request(medicationReference="Medication/m1")
    rec = build_record([patient(), bad, medication("197361", "amlodipine 5 MG Oral Tablet")])
    assert [m.medication.label() for m in rec.medications] == ["amlodipine 5 MG Oral Tablet"]
    assert [i.resource for i in rec.issues] == ["MedicationRequest/mr1"]


def test_an_observation_with_an_unreadable_period_is_an_undated_issue() -> None:
    bad = observation("4548-4", 10, 6.1, "%")
    del bad["effectiveDateTime"]
    bad["effectivePeriod"] = ["2026-01-01"]
    rec = build_record([patient(), bad])
    assert rec.observations == ()
    assert "no date" in rec.issues[0].message


def test_a_non_object_in_the_list_is_an_issue() -> None:
    rec = build_record([patient(), "Observation/1", observation("4548-4", 10, 6.1, "%")])  # type: ignore[list-item]
    assert len(rec.observations) == 1
    assert rec.issues[0].resource == "(unknown)"


# --- patient ---------------------------------------------------------------------------------


def test_no_patient_is_a_record_error() -> None:
    with pytest.raises(RecordError, match="no Patient resource"):
        record(observation("4548-4", 10, 6.1, "%"))
    with pytest.raises(RecordError):
        build_record([])


def test_a_patient_without_id_is_a_record_error() -> None:
    nameless = patient()
    del nameless["id"]
    with pytest.raises(RecordError):
        build_record([nameless])


def test_mrn_prefers_the_identifier_typed_mr() -> None:
    resource = {**patient(), "identifier": [
        {"system": "http://hl7.org/fhir/sid/us-ssn", "value": "999-99-9999"},
        {"system": "urn:oid:1.2.3", "value": "MRN-0042",
         "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                              "code": "MR"}]}},
    ]}
    assert record(resource).patient.mrn == "MRN-0042"


def test_a_malformed_patient_identifier_does_not_lose_the_patient() -> None:
    # One unreadable identifier (type given as a bare string) must not make the whole
    # record fail as if there were no Patient at all.
    resource = {**patient(), "identifier": [
        {"value": "junk", "type": "MR"},
        {"value": "MRN-7", "type": {"coding": [{"code": "MR"}]}},
    ]}
    rec = record(resource, observation("4548-4", 10, 6.1, "%"))
    assert rec.patient.id == "p1"
    assert rec.patient.mrn == "MRN-7"
    assert len(rec.observations) == 1


def test_mrn_falls_back_to_the_first_identifier() -> None:
    resource = {**patient(), "identifier": [{"system": "urn:x", "value": "first"},
                                            {"system": "urn:y", "value": "second"}]}
    assert record(resource).patient.mrn == "first"
    assert record(patient()).patient.mrn is None


def test_name_prefers_official_then_text_then_given_family() -> None:
    resource = {**patient(), "name": [
        {"use": "usual", "given": ["Bob"], "family": "Smith"},
        {"use": "official", "given": ["Robert", "James"], "family": "Smith", "prefix": ["Mr."]},
    ]}
    assert record(resource).patient.name == "Robert James Smith"
    texted = {**patient(), "name": [{"use": "official", "text": "  Dr. R. J. Smith ",
                                     "family": "Smith"}]}
    assert record(texted).patient.name == "Dr. R. J. Smith"
    anonymous = {**patient(), "name": []}
    assert record(anonymous).patient.name is None


def test_deceased_and_partial_birth_date() -> None:
    resource = {**patient(birth="1950-03"), "deceasedDateTime": "2026-01-01"}
    rec = record(resource)
    assert rec.patient.deceased
    assert rec.patient.birth_date == date(1950, 3, 1)
    assert record({**patient(age=None), "deceasedBoolean": False}).patient.birth_date is None


def test_builders_visit_is_what_these_dates_assume() -> None:
    assert date(2026, 12, 1) == VISIT


# --- what the chart situations need ----------------------------------------------------------


@pytest.mark.parametrize(("extra", "has_value"), [
    ({"valueQuantity": {"value": 7.1, "unit": "%"}}, True),
    ({"valueCodeableConcept": coding(SNOMED, "10828004")}, True),
    ({"valueString": "POSITIVE"}, True),
    ({"valueString": "   "}, False),  # blank text is no value
    ({"valueBoolean": False}, True),
    ({"valueInteger": 0}, True),
    ({"hasMember": [{"reference": "Observation/wbc"}]}, True),  # a panel: its members
    ({}, False),
    ({"valueQuantity": {"value": 7.1, "unit": "%"},
      "dataAbsentReason": coding("http://terminology.hl7.org/CodeSystem/data-absent-reason",
                                 "error")}, False),
])
def test_whether_a_result_has_a_value(extra: dict[str, Any], has_value: bool) -> None:
    (obs,) = record(patient(), {**observation("4548-4", 30), **extra}).observations
    assert obs.has_value is has_value


def test_value_details_kept_for_the_checks() -> None:
    resource = {**observation("2823-3", 30), "valueQuantity": {
        "value": 0.01, "unit": "mmol/L", "code": "mmol/L", "comparator": "<"},
        "interpretation": [coding("http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation",
                                  "L"), coding(SNOMED, "281300000")],
        "dataAbsentReason": None}
    (obs,) = record(patient(), resource).observations
    assert obs.value_quantity is not None
    assert (obs.value_quantity.code, obs.value_quantity.comparator) == ("mmol/L", "<")
    assert str(obs.value_quantity) == "<0.01 mmol/L"
    assert [c.code for c in obs.interpretation.codings] == ["L", "281300000"]
    absent = {**observation("2823-3", 30), "dataAbsentReason": {"text": "Haemolysed"}}
    (obs,) = record(patient(), absent).observations
    assert (obs.has_value, obs.absent_reason) == (False, "Haemolysed")


def test_an_encounter_is_read_with_its_type_period_discharge_and_diagnoses() -> None:
    enc = {"resourceType": "Encounter", "id": "e1", "status": "finished",
           "class": {"code": "IMP"},
           "type": [coding(SNOMED, "183452005"), {"text": "Inpatient stay"}],
           "period": {"start": "2026-10-01T10:00:00-05:00", "end": "2026-10-05"},
           "hospitalization": {"dischargeDisposition": coding(
               "http://www.nubc.org/patient-discharge", "51")},
           "diagnosis": [{"condition": {"reference": "Condition/c9"}}, {"rank": 2}]}
    (e,) = record(patient(), enc).encounters
    assert (e.ref, e.status, e.class_code) == ("Encounter/e1", "finished", "IMP")
    assert (e.start, e.end) == (date(2026, 10, 1), date(2026, 10, 5))
    assert [c.code for c in e.type.codings] == ["183452005"] and e.type.text == "Inpatient stay"
    assert e.discharge.codings[0].code == "51"
    assert e.diagnoses == ("Condition/c9",)


def test_an_encounter_with_a_malformed_period_is_an_issue() -> None:
    rec = record(patient(), {"resourceType": "Encounter", "id": "e2", "period": "2026"})
    assert rec.encounters == () and rec.issues[0].resource == "Encounter/e2"


def test_dispenses_and_statements_are_read() -> None:
    dispense = {"resourceType": "MedicationDispense", "id": "d1", "status": "completed",
                "medicationCodeableConcept": coding(RXNORM, "314076"),
                "authorizingPrescription": [{"reference": "MedicationRequest/m1"}],
                "whenPrepared": "2026-09-01", "whenHandedOver": "2026-09-02T17:00:00Z",
                "daysSupply": {"value": 13, "unit": "wk"}}
    prepared_only = {**dispense, "id": "d2", "whenHandedOver": None,
                     "daysSupply": {"value": 90, "code": "d"}}
    statement = {"resourceType": "MedicationStatement", "id": "s1", "status": "stopped",
                 "medicationReference": {"reference": "#med"},
                 "contained": [{"resourceType": "Medication", "id": "med",
                                "code": coding(RXNORM, "314076")}],
                 "effectivePeriod": {"start": "2025-01-01", "end": "2026-08-01"}}
    rec = record(patient(), dispense, prepared_only, statement)
    first, second = rec.dispenses
    assert (first.handed_over, first.days_supply, first.prescription, first.completed) == (
        date(2026, 9, 2), 91, ("MedicationRequest/m1",), True)
    assert (second.handed_over, second.days_supply) == (date(2026, 9, 1), 90)
    (use,) = rec.statements
    assert (use.status, use.day, use.stopped) == ("stopped", date(2026, 8, 1), True)
    assert use.medication.codings[0].code == "314076"
    assert rec.resource_count == 4


def test_course_of_therapy_and_based_on_are_kept() -> None:
    acute = {**medication("308192", "Amoxicillin 500 MG Oral Tablet"),
             "courseOfTherapyType": coding(
                 "http://terminology.hl7.org/CodeSystem/medicationrequest-course-of-therapy",
                 "acute")}
    order = {"resourceType": "ServiceRequest", "id": "o1", "status": "active",
             "intent": "order", "code": coding(LOINC, "4548-4"),
             "basedOn": [{"reference": "ServiceRequest/p1"}, {"display": "no reference"}]}
    rec = record(patient(), acute, order)
    assert rec.medications[0].course == "acute"
    assert rec.requests[0].based_on == ("ServiceRequest/p1",)


def test_the_date_of_death_is_kept_and_deceased_false_is_alive() -> None:
    assert record({**patient(), "deceasedDateTime": "2026-10-19T04:10:00-05:00"}
                  ).patient.deceased_on == date(2026, 10, 19)
    assert record({**patient(), "deceasedBoolean": True}).patient.deceased
    assert not record({**patient(), "deceasedBoolean": False}).patient.deceased
