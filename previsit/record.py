"""PatientRecord: the clinical picture of one patient, built from raw FHIR R4 JSON.

Reads are parsed by hand into small frozen dataclasses rather than through full
fhir.resources validation: a real record has hundreds to thousands of resources and
model validation costs ~300 µs each (bench/ measures both). What cannot be read is kept
as a `DataIssue` on the record, with the resource it came from, instead of being guessed.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import date
from typing import Any

from previsit.codes import Concept
from previsit.errors import PatientReadError, RecordError
from previsit.intervals import parse_fhir_date
from previsit.jsonio import loads

JSON = Mapping[str, Any]

# What a record is read from: the Patient, then these searches by `patient` (a search
# parameter every one of these types defines in R4), with any extra parameters.
RECORD_SEARCHES: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = (
    ("Condition", ()),
    ("MedicationRequest", (("_include", "MedicationRequest:medication"),)),
    ("Observation", ()),
    ("Procedure", ()),
    ("Immunization", ()),
    ("ServiceRequest", ()),
    # Hospice and palliative care recorded as encounters, inpatient discharges to hospice
    # (the CMS Hospice library reads them); what was dispensed, and what the patient says
    # they take (renewals).
    ("Encounter", ()),
    ("MedicationDispense", ()),
    ("MedicationStatement", ()),
)

# The intents of a request that is an order (FHIR R4 request-intent: order and its
# specialisations), not a proposal or plan.
ORDER_INTENTS = frozenset({"order", "original-order", "reflex-order", "filler-order",
                           "instance-order"})


@dataclass(frozen=True, slots=True)
class Quantity:
    value: float
    unit: str | None = None  # as shown (unit, else the code)
    code: str | None = None  # the coded unit (UCUM), for checks that depend on the unit
    comparator: str | None = None  # "<", "<=", ">=", ">": the value is a bound, not a result

    def __str__(self) -> str:
        value = f"{self.comparator or ''}{self.value:g}"
        return f"{value} {self.unit}" if self.unit else value


@dataclass(frozen=True, slots=True)
class DataIssue:
    """Something in the patient's data that could not be used, said so a person can fix it."""

    resource: str  # "Observation/123", or the resource type when it had no id
    message: str


@dataclass(frozen=True, slots=True)
class Observation:
    ref: str
    code: Concept
    day: date
    status: str
    value_quantity: Quantity | None = None
    value_concept: Concept | None = None
    value_date: date | None = None
    members: tuple[str, ...] = ()
    value_string: str | None = None
    # Whether the result carries a value of any type (and no dataAbsentReason): CMS122 and
    # CMS130 count a result only when it has one ("result is not null").
    has_value: bool = False
    absent_reason: str | None = None  # dataAbsentReason, as a person reads it
    interpretation: Concept = field(default_factory=Concept)  # every coding of every flag

    def value_text(self) -> str:
        """The result's value as a sheet shows it ("8.4 %", "Positive"), or "" (a free-text
        report is not repeated in an explanation)."""
        if self.value_quantity is not None:
            return str(self.value_quantity)
        if self.value_concept is not None:
            return self.value_concept.label()
        return ""


@dataclass(frozen=True, slots=True)
class Condition:
    ref: str
    code: Concept
    clinical_status: str  # active, recurrence, relapse, inactive, remission, resolved, ""
    verification: str  # confirmed, unconfirmed, provisional, refuted, entered-in-error, ""
    onset: date | None
    abatement: date | None
    recorded: date | None

    @property
    def active(self) -> bool:
        return self.clinical_status in ("active", "recurrence", "relapse", "")  and \
            self.abatement is None

    @property
    def refuted(self) -> bool:
        return self.verification in ("refuted", "entered-in-error")

    @property
    def first_known(self) -> date | None:
        return self.onset or self.recorded


@dataclass(frozen=True, slots=True)
class Procedure:
    ref: str
    code: Concept
    day: date
    status: str


@dataclass(frozen=True, slots=True)
class Immunization:
    ref: str
    vaccine: Concept
    day: date
    status: str


@dataclass(frozen=True, slots=True)
class MedicationOrder:
    """A MedicationRequest (order) with what is needed to know what it is and when it runs out."""

    ref: str
    medication: Concept
    status: str
    intent: str
    authored_on: date | None
    validity_start: date | None
    validity_end: date | None
    supply_days: int | None
    repeats: int | None
    identifiers: tuple[tuple[str, str], ...] = ()
    raw: JSON = field(default_factory=dict, compare=False, repr=False)
    # courseOfTherapyType: continuous, acute, seasonal (or a local code), "" when absent
    course: str = ""

    @property
    def active(self) -> bool:
        # A plan is a medication the patient is on, too (a MedicationRequest with intent
        # plan is how some EHRs record a home medication).
        return self.status == "active" and (self.intent in ORDER_INTENTS
                                            or self.intent == "plan")


@dataclass(frozen=True, slots=True)
class Dispense:
    """A MedicationDispense: what the pharmacy actually handed over, and for how long."""

    ref: str
    medication: Concept
    status: str
    handed_over: date | None  # whenHandedOver, else whenPrepared
    days_supply: int | None
    prescription: tuple[str, ...] = ()  # authorizingPrescription references

    @property
    def completed(self) -> bool:
        return self.status == "completed" and self.handed_over is not None


# MedicationStatement statuses that say the patient does not take the drug (any more).
_NOT_TAKING = frozenset({"stopped", "completed", "not-taken"})


@dataclass(frozen=True, slots=True)
class MedicationUse:
    """A MedicationStatement: whether the patient says they take a drug (no supply)."""

    ref: str
    medication: Concept
    status: str  # active, completed, stopped, not-taken, intended, on-hold, ...
    day: date | None  # dateAsserted, else the end (or start) of effective[x]

    @property
    def stopped(self) -> bool:
        return self.status in _NOT_TAKING


@dataclass(frozen=True, slots=True)
class Encounter:
    ref: str
    type: Concept  # the codings of every Encounter.type
    status: str
    start: date | None
    end: date | None
    discharge: Concept = field(default_factory=Concept)  # hospitalization.dischargeDisposition
    diagnoses: tuple[str, ...] = ()  # Encounter.diagnosis.condition references
    class_code: str = ""


@dataclass(frozen=True, slots=True)
class OpenRequest:
    """A ServiceRequest or MedicationRequest already on the chart (ours or anyone's)."""

    ref: str
    resource_type: str
    code: Concept
    status: str
    intent: str
    identifiers: tuple[tuple[str, str], ...]
    authored_on: date | None
    based_on: tuple[str, ...] = ()  # the requests this one fulfils (an order from a proposal)

    @property
    def open(self) -> bool:
        return self.status in ("draft", "active", "on-hold")


@dataclass(frozen=True, slots=True)
class Patient:
    id: str
    birth_date: date | None
    sex: str | None  # FHIR administrative gender: male, female, other, unknown
    name: str | None
    mrn: str | None
    deceased: bool = False
    deceased_on: date | None = None  # deceasedDateTime, when the chart gives the date


@dataclass(frozen=True, slots=True)
class PatientRecord:
    patient: Patient
    conditions: tuple[Condition, ...] = ()
    medications: tuple[MedicationOrder, ...] = ()
    observations: tuple[Observation, ...] = ()
    procedures: tuple[Procedure, ...] = ()
    immunizations: tuple[Immunization, ...] = ()
    requests: tuple[OpenRequest, ...] = ()
    issues: tuple[DataIssue, ...] = ()
    encounters: tuple[Encounter, ...] = ()
    dispenses: tuple[Dispense, ...] = ()
    statements: tuple[MedicationUse, ...] = ()

    @property
    def resource_count(self) -> int:
        return 1 + sum(map(len, (self.conditions, self.medications, self.observations,
                                 self.procedures, self.immunizations, self.requests,
                                 self.encounters, self.dispenses, self.statements)))


# --- parsing -------------------------------------------------------------------------


def _ref(resource: JSON) -> str:
    rid = resource.get("id")
    return f"{resource.get('resourceType')}/{rid}" if rid else str(resource.get("resourceType"))


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _concept(resource: JSON, name: str) -> Concept:
    """A CodeableConcept field; present but not an object is an error, not "uncoded"."""
    value = resource.get(name)
    if value is not None and not isinstance(value, dict):
        raise TypeError(f"{name} is not a CodeableConcept")
    return Concept.from_json(value)


def _status_code(concept: Any) -> str:
    """The code of a status CodeableConcept (Condition.clinicalStatus and friends)."""
    c = Concept.from_json(concept)
    return c.codings[0].code if c.codings else ""


def _finite(value: Any) -> float | None:
    """A JSON number as a float, or None: not a number, or beyond a double (10**400, 1e400)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def _quantity(value: Any) -> Quantity | None:
    number = _finite(value.get("value")) if isinstance(value, dict) else None
    if number is not None:
        return Quantity(number, _str(value.get("unit")) or _str(value.get("code")),
                        code=_str(value.get("code")), comparator=_str(value.get("comparator")))
    return None


# Units of a duration Quantity (UCUM codes and the words EHRs send), in days.
_DAYS_PER_UNIT = {"d": 1, "day": 1, "days": 1, "wk": 7, "week": 7, "weeks": 7, "mo": 30,
                  "month": 30, "months": 30}


# Beyond these a supply or a number of refills is not a prescription but a data error (an
# expectedSupplyDuration of 1e308 months, 10**18 refills): set aside, never computed with.
MAX_SUPPLY_DAYS = 3660
MAX_REPEATS = 1000


def _days(value: Any, issues: list[DataIssue] | None = None, ref: str = "",
          name: str = "expectedSupplyDuration") -> int | None:
    """A duration Quantity (expectedSupplyDuration, daysSupply) in whole days; None, and a
    DataIssue in `issues`, for one beyond MAX_SUPPLY_DAYS or below zero."""
    if not isinstance(value, dict) or not isinstance(value.get("value"), (int, float)) \
            or isinstance(value.get("value"), bool):
        return None
    unit = str(value.get("code") or value.get("unit") or "d").lower()
    factor = _DAYS_PER_UNIT.get(unit)
    if factor is None:
        return None
    amount = _finite(value["value"])
    amount = math.inf if amount is None else amount  # a number beyond a double (10**400)
    days = round(max(min(amount * factor, MAX_SUPPLY_DAYS + 1.0), -1.0))
    if not 0 <= days <= MAX_SUPPLY_DAYS:
        if issues is not None:
            issues.append(DataIssue(ref, f"{name} {amount:g} {unit} is not a plausible "
                                    "supply; not used"))
        return None
    return days


def _references(items: Any, name: str | None = None) -> tuple[str, ...]:
    """The reference strings of a list of References (or of the field `name` of each item)."""
    out = []
    for item in items if isinstance(items, list) else ():
        ref = item.get(name) if name and isinstance(item, dict) else item
        if isinstance(ref, dict) and isinstance(ref.get("reference"), str):
            out.append(ref["reference"])
    return tuple(out)


def _concepts(items: Any) -> Concept:
    """Every coding of a list of CodeableConcepts as one concept (Encounter.type,
    Observation.interpretation), with the first text."""
    if not isinstance(items, list) or not items:
        return Concept.from_json(None)
    concepts = [Concept.from_json(c) for c in items]
    if len(concepts) == 1:
        return concepts[0]  # the same value, and already shared (Concept.from_json)
    return Concept(tuple(c for concept in concepts for c in concept.codings),
                   next((c.text for c in concepts if c.text), None))


# The value[x] types of an Observation other than Quantity, CodeableConcept, string and
# dateTime, which are kept: their presence is what counts ("the result has a value").
_OTHER_VALUES = ("valueBoolean", "valueInteger", "valueRange", "valueRatio",
                 "valueSampledData", "valueTime", "valuePeriod")


def _effective(resource: JSON, *names: str, period_end: bool = False) -> date | None:
    """The day of a dateTime, or of a Period: its start (an onset) or, with `period_end`,
    its end (when a test or procedure was done, as the CMS measures read it: Latest()),
    each falling back to the other bound."""
    for name in names:
        value = resource.get(name)
        if isinstance(value, dict):
            first, second = ("end", "start") if period_end else ("start", "end")
            day = parse_fhir_date(value.get(first)) or parse_fhir_date(value.get(second))
        else:
            day = parse_fhir_date(value)
        if day:
            return day
    return None


def _identifiers(resource: JSON) -> tuple[tuple[str, str], ...]:
    out = []
    for ident in resource.get("identifier") or ():
        if isinstance(ident, dict) and isinstance(ident.get("value"), str):
            out.append((_str(ident.get("system")) or "", ident["value"]))
    return tuple(out)


def _mrn(resource: JSON) -> str | None:
    """The medical record number: the identifier typed MR, else the first identifier."""
    first = None
    for ident in resource.get("identifier") or ():
        if not isinstance(ident, dict) or not isinstance(ident.get("value"), str):
            continue
        first = first or ident["value"]
        kind = ident.get("type")
        for coding in (kind.get("coding") if isinstance(kind, dict) else None) or ():
            if isinstance(coding, dict) and coding.get("code") == "MR":
                return str(ident["value"])
    return first


def human_name(resource: JSON) -> str | None:
    """A display name: official name first, then any; 'Given Family'."""
    names = [n for n in resource.get("name") or () if isinstance(n, dict)]
    names.sort(key=lambda n: 0 if n.get("use") == "official" else 1)
    for name in names:
        if isinstance(name.get("text"), str) and name["text"].strip():
            return str(name["text"]).strip()
        parts = [g for g in name.get("given") or () if isinstance(g, str)]
        if isinstance(name.get("family"), str):
            parts.append(name["family"])
        if parts:
            return " ".join(parts)
    return None


def parse_patient(resource: JSON) -> Patient:
    if resource.get("resourceType") != "Patient" or not isinstance(resource.get("id"), str):
        raise RecordError("expected a Patient resource with an id")
    sex = _str(resource.get("gender"))
    deceased = resource.get("deceasedBoolean") is True or "deceasedDateTime" in resource
    return Patient(id=resource["id"], birth_date=parse_fhir_date(resource.get("birthDate")),
                   sex=sex, name=human_name(resource), mrn=_mrn(resource), deceased=deceased,
                   deceased_on=parse_fhir_date(resource.get("deceasedDateTime")))


def _medication_concept(resource: JSON, medications: Mapping[str, JSON]) -> Concept:
    if "medicationCodeableConcept" in resource:
        return Concept.from_json(resource["medicationCodeableConcept"])
    reference = (resource.get("medicationReference") or {}).get("reference")
    if isinstance(reference, str):
        target = medications.get(reference) or medications.get(reference.lstrip("#"))
        if target is not None:
            return Concept.from_json(target.get("code"))
    display = (resource.get("medicationReference") or {}).get("display")
    return Concept(text=display if isinstance(display, str) else None)


def _parse_medication_request(resource: JSON, medications: Mapping[str, JSON],
                              issues: list[DataIssue]) -> MedicationOrder:
    contained = _contained_medications(resource)
    dispense = resource.get("dispenseRequest") or {}
    validity = dispense.get("validityPeriod") or {}
    supply_days = _days(dispense.get("expectedSupplyDuration"), issues, _ref(resource))
    repeats = dispense.get("numberOfRepeatsAllowed")
    if isinstance(repeats, int) and not 0 <= repeats <= MAX_REPEATS:
        issues.append(DataIssue(_ref(resource), f"numberOfRepeatsAllowed {str(repeats)[:20]} "
                                "is not a plausible number of refills; not used"))
        repeats = None
    return MedicationOrder(
        ref=_ref(resource),
        medication=_medication_concept(resource, {**medications, **contained}),
        status=_str(resource.get("status")) or "",
        intent=_str(resource.get("intent")) or "",
        authored_on=parse_fhir_date(resource.get("authoredOn")),
        validity_start=parse_fhir_date(validity.get("start")),
        validity_end=parse_fhir_date(validity.get("end")),
        supply_days=supply_days,
        repeats=repeats if isinstance(repeats, int) and not isinstance(repeats, bool) else None,
        identifiers=_identifiers(resource),
        raw=resource,
        course=_status_code(resource.get("courseOfTherapyType")),
    )


def _contained_medications(resource: JSON) -> dict[str, JSON]:
    return {f"#{c.get('id')}": c for c in resource.get("contained") or ()
            if isinstance(c, dict) and c.get("resourceType") == "Medication"}


def _drug_fields(resource: JSON, medications: Mapping[str, JSON]) -> dict[str, Any]:
    """What a dispense and a statement share: the reference, the drug and the status."""
    return {"ref": _ref(resource),
            "medication": _medication_concept(resource, {**medications,
                                                         **_contained_medications(resource)}),
            "status": _str(resource.get("status")) or ""}


def _parse_dispense(resource: JSON, medications: Mapping[str, JSON]) -> Dispense:
    return Dispense(
        **_drug_fields(resource, medications),
        handed_over=parse_fhir_date(resource.get("whenHandedOver"))
        or parse_fhir_date(resource.get("whenPrepared")),
        days_supply=_days(resource.get("daysSupply")),
        prescription=_references(resource.get("authorizingPrescription")))


def _parse_statement(resource: JSON, medications: Mapping[str, JSON]) -> MedicationUse:
    return MedicationUse(
        **_drug_fields(resource, medications),
        day=parse_fhir_date(resource.get("dateAsserted"))
        or _effective(resource, "effectiveDateTime", "effectivePeriod", period_end=True))


def _parse_encounter(resource: JSON) -> Encounter:
    period = resource.get("period") or {}
    if not isinstance(period, dict):
        raise TypeError("period is not a Period")
    hospitalization = resource.get("hospitalization") or {}
    klass = resource.get("class")
    return Encounter(
        ref=_ref(resource), type=_concepts(resource.get("type")),
        status=_str(resource.get("status")) or "",
        start=parse_fhir_date(period.get("start")), end=parse_fhir_date(period.get("end")),
        discharge=_concept(hospitalization, "dischargeDisposition"),
        diagnoses=_references(resource.get("diagnosis"), "condition"),
        class_code=_str(klass.get("code")) or "" if isinstance(klass, dict) else "")


def _parse_observation(resource: JSON, ref: str, day: date) -> Observation:
    quantity = _quantity(resource.get("valueQuantity"))
    integer = resource.get("valueInteger")
    if quantity is None and _finite(integer) is not None and isinstance(integer, int):
        quantity = Quantity(float(integer))
    value_concept = resource.get("valueCodeableConcept")
    text = resource.get("valueString")
    value_string = text.strip() if isinstance(text, str) and text.strip() else None
    value_date = parse_fhir_date(resource.get("valueDateTime"))
    absent = resource.get("dataAbsentReason")
    members = _references(resource.get("hasMember"))
    # A panel's values are its members' (a CBC panel has none of its own).
    has_value = absent is None and (
        quantity is not None or isinstance(value_concept, dict) or value_string is not None
        or value_date is not None or bool(members)
        or any(resource.get(n) is not None for n in _OTHER_VALUES))
    return Observation(
        ref=ref, code=_concept(resource, "code"), day=day,
        status=_str(resource.get("status")) or "",
        value_quantity=quantity,
        value_concept=Concept.from_json(value_concept) if value_concept else None,
        value_date=value_date,
        members=members, value_string=value_string, has_value=has_value,
        absent_reason=Concept.from_json(absent).label() if absent is not None else None,
        interpretation=_concepts(resource.get("interpretation")))


_UNUSABLE = ("entered-in-error", "cancelled")
_MEDICATION_USES = frozenset({"MedicationRequest", "MedicationDispense", "MedicationStatement"})


def build_record(resources: Iterable[JSON]) -> PatientRecord:
    """Build a PatientRecord from one patient's resources (any order, any mix).

    Resources that cannot be used (no date on a result, wrong shape) become DataIssues.
    Observations that are cancelled or entered in error are dropped silently: they are
    the chart's own way of saying "this did not happen". A result without a value is kept
    (`has_value` is false): whether that counts is the rule's question, not the reader's.
    """
    patient: Patient | None = None
    conditions: list[Condition] = []
    meds: list[MedicationOrder] = []
    observations: list[Observation] = []
    procedures: list[Procedure] = []
    immunizations: list[Immunization] = []
    requests: list[OpenRequest] = []
    issues: list[DataIssue] = []
    encounters: list[Encounter] = []
    med_uses: list[JSON] = []
    medications: dict[str, JSON] = {}

    for resource in resources:
        if not isinstance(resource, Mapping):
            issues.append(DataIssue("(unknown)", "a resource is not a JSON object"))
            continue
        rtype = resource.get("resourceType")
        ref = _ref(resource)
        try:
            if rtype == "Patient":
                patient = parse_patient(resource)
            elif rtype == "Observation":
                if resource.get("status") in _UNUSABLE:
                    continue
                day = _effective(resource, "effectiveDateTime", "effectivePeriod",
                                 "effectiveInstant", "issued", period_end=True)
                if day is None:
                    issues.append(DataIssue(ref, "result has no date; not used"))
                    continue
                observations.append(_parse_observation(resource, ref, day))
            elif rtype == "Condition":
                conditions.append(Condition(
                    ref=ref, code=_concept(resource, "code"),
                    clinical_status=_status_code(resource.get("clinicalStatus")),
                    verification=_status_code(resource.get("verificationStatus")),
                    onset=_effective(resource, "onsetDateTime", "onsetPeriod"),
                    abatement=_effective(resource, "abatementDateTime", "abatementPeriod"),
                    recorded=parse_fhir_date(resource.get("recordedDate")),
                ))
            elif rtype == "Procedure":
                if resource.get("status") in ("entered-in-error", "not-done"):
                    continue
                day = _effective(resource, "performedDateTime", "performedPeriod",
                                 period_end=True)
                if day is None:
                    issues.append(DataIssue(ref, "procedure has no performed date; not used"))
                    continue
                procedures.append(Procedure(ref, _concept(resource, "code"), day,
                                            _str(resource.get("status")) or ""))
            elif rtype == "Immunization":
                day = _effective(resource, "occurrenceDateTime")
                if day is None:
                    issues.append(DataIssue(ref, "immunization has no date; not used"))
                    continue
                immunizations.append(Immunization(
                    ref, _concept(resource, "vaccineCode"), day,
                    _str(resource.get("status")) or ""))
            elif rtype in _MEDICATION_USES:
                # read once every Medication they may reference has been seen
                med_uses.append(resource)
            elif rtype == "Medication":
                medications[ref] = resource
            elif rtype == "Encounter":
                encounters.append(_parse_encounter(resource))
            elif rtype == "ServiceRequest":
                requests.append(OpenRequest(
                    ref=ref, resource_type="ServiceRequest",
                    code=Concept.from_json(resource.get("code")),
                    status=_str(resource.get("status")) or "",
                    intent=_str(resource.get("intent")) or "",
                    identifiers=_identifiers(resource),
                    authored_on=parse_fhir_date(resource.get("authoredOn")),
                    based_on=_references(resource.get("basedOn"))))
        except (AttributeError, TypeError, ValueError, ArithmeticError) as exc:
            issues.append(DataIssue(ref, f"could not be read ({exc.__class__.__name__}: {exc})"))

    if patient is None:
        raise RecordError("no Patient resource among the resources")
    dispenses: list[Dispense] = []
    statements: list[MedicationUse] = []
    for resource in med_uses:
        rtype = resource.get("resourceType")
        try:
            if rtype == "MedicationDispense":
                dispenses.append(_parse_dispense(resource, medications))
                continue
            if rtype == "MedicationStatement":
                statements.append(_parse_statement(resource, medications))
                continue
            order = _parse_medication_request(resource, medications, issues)
        except (AttributeError, TypeError, ValueError, ArithmeticError) as exc:
            issues.append(DataIssue(_ref(resource), f"could not be read "
                                                    f"({exc.__class__.__name__}: {exc})"))
            continue
        if order.intent == "proposal" or order.status == "draft":
            # A proposal on the chart is a request someone (maybe we) suggested, not a
            # medication the patient takes.
            requests.append(OpenRequest(order.ref, "MedicationRequest", order.medication,
                                        order.status, order.intent, order.identifiers,
                                        order.authored_on,
                                        _references(resource.get("basedOn"))))
        else:
            meds.append(order)
    return PatientRecord(patient=patient, conditions=tuple(conditions), medications=tuple(meds),
                         observations=tuple(observations), procedures=tuple(procedures),
                         immunizations=tuple(immunizations), requests=tuple(requests),
                         issues=tuple(issues), encounters=tuple(encounters),
                         dispenses=tuple(dispenses), statements=tuple(statements))


# Older than anyone has lived (122 years) with a margin: a birth date before this is an
# entry error (0001-01-01 gives an age of 2025), as is one after the visit day.
MAX_AGE_YEARS = 130


def with_plausible_birth_date(record: PatientRecord, on: date) -> PatientRecord:
    """The record as of a visit day: a birth date after that day, or more than
    MAX_AGE_YEARS before it, is set aside as a DataIssue (the age is then unknown and the
    rules that need it say so) instead of giving an age of -4 or 2025."""
    birth = record.patient.birth_date
    if birth is None:
        return record
    if birth > on:
        problem = f"birth date {birth.isoformat()} is after the visit day; age unknown"
    elif on.year - birth.year > MAX_AGE_YEARS:
        problem = (f"birth date {birth.isoformat()} is more than {MAX_AGE_YEARS} years "
                   "before the visit day; age unknown")
    else:
        return record
    return replace(record, patient=replace(record.patient, birth_date=None),
                   issues=(*record.issues, DataIssue(f"Patient/{record.patient.id}", problem)))


@dataclass(frozen=True)
class ResourcesRead:
    """A record's resources as read and checked in the run's process, not yet built: JSON
    text, which the worker process that plans the patient parses and builds (`load`).

    A source that reads over the network offers this to a run with a process pool
    (`HttpSource.fetch_record`): building a Synthea patient's record and pickling it cost
    the run's process, which also does all the reading, about 2.5 ms a patient; writing
    the resources as JSON costs it a quarter of a millisecond. Picklable; `load` raises
    PatientReadError as the source's own read would.
    """

    patient_id: str
    where: str  # what a failure to build names ("Patient/<id>")
    text: bytes  # the resources, a JSON array

    def load(self) -> PatientRecord:
        return build_patient_record(self.patient_id, loads(self.text), self.where)


def build_patient_record(patient_id: str, resources: Iterable[JSON], where: str
                         ) -> PatientRecord:
    """`build_record` of what a source read for one patient: a record that cannot be built
    fails that patient (PatientReadError, the reason after `where`)."""
    try:
        return build_record(resources)
    except RecordError as exc:
        raise PatientReadError(patient_id, f"{where}: {exc}") from None
