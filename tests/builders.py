"""Small builders for FHIR JSON in tests: patient(age=50, sex="female"), observation(...).

Dates are given relative to a visit date (`days_ago`) so a test reads as the rule does:
"HbA1c 8.1 % 91 days before the visit". The one module test modules share builders
through: a test module never imports another test module.
"""

from __future__ import annotations

import itertools
import json
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import httpx

from previsit.capability import RECORD_TYPES
from previsit.codes import CVX, ICD10CM, LOINC, RXNORM, SNOMED
from previsit.evaluate import Settings, evaluate
from previsit.plan import Finding
from previsit.record import PatientRecord, build_record
from previsit.ruleset import RuleSet, load_ruleset

VISIT = date(2026, 12, 1)
_ids = itertools.count(1)
_RULES: RuleSet | None = None

__all__ = ["CVX", "ICD10CM", "LOINC", "RXNORM", "SNOMED", "VISIT"]


def shipped_rules() -> RuleSet:
    """The shipped rule library, loaded once per test session."""
    global _RULES
    if _RULES is None:
        _RULES = load_ruleset(Path(__file__).resolve().parent.parent / "rules")
    return _RULES


def _id(prefix: str) -> str:
    return f"{prefix}{next(_ids)}"


def day(days_ago: int = 0, *, visit: date = VISIT) -> str:
    return (visit - timedelta(days=days_ago)).isoformat()


def birth_date_for(age: int, *, days: int = 0, visit: date = VISIT) -> str:
    """The birth date of someone exactly `age` on the visit date (+days: turns it later).

    birth_date_for(45) is 45 today (birthday on the visit date); days=1 means the 45th
    birthday is tomorrow, so the patient is still 44.
    """
    # Calendar years by the standard library, not the product's own arithmetic; a visit on
    # 29 February falls back to the 28th in a common year.
    try:
        born = visit.replace(year=visit.year - age)
    except ValueError:
        born = visit.replace(year=visit.year - age, day=28)
    return (born + timedelta(days=days)).isoformat()


def patient(age: int | None = 50, sex: str | None = "female", *, days: int = 0,
            pid: str = "p1", name: str = "Test Patient",
            birth: str | None = None) -> dict[str, Any]:
    resource: dict[str, Any] = {"resourceType": "Patient", "id": pid,
                                "name": [{"family": name.split()[-1],
                                          "given": name.split()[:-1]}]}
    if birth is not None:
        resource["birthDate"] = birth
    elif age is not None:
        resource["birthDate"] = birth_date_for(age, days=days)
    if sex is not None:
        resource["gender"] = sex
    return resource


def coding(system: str, code: str, display: str | None = None) -> dict[str, Any]:
    return {"coding": [{"system": system, "code": code, **({"display": display} if display
                                                           else {})}]}


def observation(code: str, days_ago: int, value: float | None = None, unit: str = "",
                *, system: str = LOINC, status: str = "final", display: str | None = None,
                value_code: tuple[str, str] | None = None, value_date: str | None = None,
                pid: str = "p1") -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Observation", "id": _id("obs"), "status": status,
        "code": coding(system, code, display), "subject": {"reference": f"Patient/{pid}"},
        "effectiveDateTime": day(days_ago)}
    if value is not None:
        resource["valueQuantity"] = {"value": value, "unit": unit}
    if value_code is not None:
        resource["valueCodeableConcept"] = coding(*value_code)
    if value_date is not None:
        resource["valueDateTime"] = value_date
    return resource


def condition(code: str, *, system: str = SNOMED, days_ago: int = 1000,
              status: str = "active", verification: str = "confirmed",
              abated_days_ago: int | None = None, display: str | None = None,
              pid: str = "p1") -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Condition", "id": _id("cond"),
        "clinicalStatus": coding("http://terminology.hl7.org/CodeSystem/condition-clinical",
                                 status),
        "verificationStatus": coding(
            "http://terminology.hl7.org/CodeSystem/condition-ver-status", verification),
        "code": coding(system, code, display), "subject": {"reference": f"Patient/{pid}"},
        "onsetDateTime": day(days_ago)}
    if abated_days_ago is not None:
        resource["abatementDateTime"] = day(abated_days_ago)
    return resource


def procedure(code: str, days_ago: int, *, system: str = SNOMED, status: str = "completed",
              display: str | None = None, pid: str = "p1") -> dict[str, Any]:
    return {"resourceType": "Procedure", "id": _id("proc"), "status": status,
            "code": coding(system, code, display), "subject": {"reference": f"Patient/{pid}"},
            "performedDateTime": day(days_ago)}


def immunization(cvx: str, days_ago: int, *, status: str = "completed",
                 pid: str = "p1") -> dict[str, Any]:
    return {"resourceType": "Immunization", "id": _id("imm"), "status": status,
            "vaccineCode": coding(CVX, cvx), "patient": {"reference": f"Patient/{pid}"},
            "occurrenceDateTime": day(days_ago)}


def medication(rxnorm: str, display: str, *, days_ago: int = 400, status: str = "active",
               supply_days: int | None = 90, repeats: int | None = 3,
               validity_end_days_ahead: int | None = None, text_only: bool = False,
               pid: str = "p1") -> dict[str, Any]:
    med = ({"text": display} if text_only else
           {"coding": [{"system": RXNORM, "code": rxnorm, "display": display}],
            "text": display})
    dispense: dict[str, Any] = {}
    if supply_days is not None:
        dispense["expectedSupplyDuration"] = {"value": supply_days, "unit": "days",
                                              "system": "http://unitsofmeasure.org",
                                              "code": "d"}
    if repeats is not None:
        dispense["numberOfRepeatsAllowed"] = repeats
    if validity_end_days_ahead is not None:
        dispense["validityPeriod"] = {"start": day(days_ago),
                                      "end": day(-validity_end_days_ahead)}
    return {"resourceType": "MedicationRequest", "id": _id("med"), "status": status,
            "intent": "order", "medicationCodeableConcept": med,
            "subject": {"reference": f"Patient/{pid}"}, "authoredOn": day(days_ago),
            "dispenseRequest": dispense}


def appointment(aid: str, start: str, *, status: str = "booked", pid: str = "p1",
                practitioner: str | None = "dr-a", location: str | None = "loc-main",
                service: str | None = None) -> dict[str, Any]:
    """An Appointment with a Patient, a practitioner and a location participant.

    `practitioner` is a Practitioner id, or a whole reference ("PractitionerRole/r1");
    None leaves that participant (or the location) out.
    """
    participants: list[dict[str, Any]] = [
        {"actor": {"reference": f"Patient/{pid}"}, "status": "accepted"}]
    if practitioner is not None:
        reference = practitioner if "/" in practitioner else f"Practitioner/{practitioner}"
        participants.append({"actor": {"reference": reference, "display": "Dr A"},
                             "status": "accepted"})
    if location is not None:
        participants.append({"actor": {"reference": f"Location/{location}",
                                       "display": "Main"}, "status": "accepted"})
    resource: dict[str, Any] = {"resourceType": "Appointment", "id": aid, "status": status,
                                "start": start, "participant": participants}
    if service:
        resource["serviceType"] = [{"coding": [{"system": SNOMED, "code": service}]}]
    return resource


def bundle(*resources: dict[str, Any], kind: str = "collection") -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": kind,
            "entry": [{"resource": r} for r in resources]}


def write(folder: Path, name: str, data: Any) -> None:
    """Write `data` (JSON-encoded unless already text) to folder/name, making folders."""
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data if isinstance(data, str) else json.dumps(data))


def json_response(body: Any, status: int = 200, **headers: str) -> httpx.Response:
    """A FHIR server's JSON answer, for respx routes."""
    return httpx.Response(status, json=body, headers={"Content-Type": "application/fhir+json",
                                                      **headers})


def capability_statement(*, batch: bool = True, search_params: tuple[str, ...] = (
        "date", "status", "practitioner", "location", "service-type", "patient"),
        conditional: bool = True, version: str = "4.0.1") -> dict[str, Any]:
    """A server's CapabilityStatement: by default it offers everything previsit uses
    (read, search, create, conditional create/update on every type it reads or writes;
    batch and transaction)."""
    types = ("Appointment", "Patient", *RECORD_TYPES, "DocumentReference")
    return {"resourceType": "CapabilityStatement", "fhirVersion": version, "rest": [{
        "mode": "server",
        "interaction": [{"code": "transaction"}] + ([{"code": "batch"}] if batch else []),
        "resource": [{"type": t, "interaction": [{"code": c} for c in
                                                 ("read", "search-type", "create", "update")],
                      "conditionalCreate": conditional, "conditionalUpdate": conditional,
                      "searchParam": [{"name": p, "type": "token"} for p in search_params]}
                     for t in types]}]}


def record(*resources: dict[str, Any]) -> PatientRecord:
    return build_record(resources)


def finding(rule_id: str, *resources: dict[str, Any], rules: RuleSet | None = None,
            settings: Settings | None = None, visit: date = VISIT) -> Finding:
    """The finding of one rule for a patient built from `resources` (first is the Patient)."""
    plan = evaluate(record(*resources), rules or shipped_rules(), visit, settings)
    matches = [f for f in plan.findings if f.rule_id == rule_id]
    assert matches, f"rule {rule_id} produced no finding"
    return matches[0]


def findings(rule_id: str, *resources: dict[str, Any], rules: RuleSet | None = None,
             settings: Settings | None = None, visit: date = VISIT) -> list[Finding]:
    """All findings of one rule (renewals produce one per medication)."""
    plan = evaluate(record(*resources), rules or shipped_rules(), visit, settings)
    return [f for f in plan.findings if f.rule_id == rule_id]


FIT_VS = "https://example.org/fhir/ValueSet/fit"


def tiny_rules(folder: Path) -> RuleSet:
    """A one-rule library (FIT every year from 45) for tests that must not depend on the
    shipped clinical content."""
    (folder / "valuesets").mkdir(parents=True, exist_ok=True)
    (folder / "valuesets" / "fit.json").write_text(json.dumps({
        "resourceType": "ValueSet", "url": FIT_VS, "title": "FIT",
        "compose": {"include": [{"system": LOINC, "concept": [{"code": "29771-3"}]}]}}))
    (folder / "fit.yaml").write_text(
        "id: fit\ntitle: FIT\nkind: screening\nrole: medical-assistant\n"
        "citation: {source: test}\napplies_when: [{age: {min: 45}}]\n"
        "requirements:\n  - id: fit\n    label: FIT\n    evidence:\n"
        f"      - {{observation: '{FIT_VS}', label: FIT, lookback: 1y}}\n"
        "    order: {system: 'http://loinc.org', code: 29771-3, display: FIT, "
        "category: laboratory, before_visit: true, lead_days: 7}\n")
    return load_ruleset(folder)
