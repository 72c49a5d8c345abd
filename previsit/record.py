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
from previsit.errors import RecordError
from previsit.intervals import parse_fhir_date

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
)

# The intents of a request that is an order (FHIR R4 request-intent: order and its
# specialisations), not a proposal or plan.
ORDER_INTENTS = frozenset({"order", "original-order", "reflex-order", "filler-order",
                           "instance-order"})


@dataclass(frozen=True)
class Quantity:
    value: float
    unit: str | None = None

    def __str__(self) -> str:
        value = f"{self.value:g}"
        return f"{value} {self.unit}" if self.unit else value


@dataclass(frozen=True)
class DataIssue:
    """Something in the patient's data that could not be used, said so a person can fix it."""

    resource: str  # "Observation/123", or the resource type when it had no id
    message: str


@dataclass(frozen=True)
class Observation:
    ref: str
    code: Concept
    day: date
    status: str
    value_quantity: Quantity | None = None
    value_concept: Concept | None = None
    value_date: date | None = None
    members: tuple[str, ...] = ()

    def value_text(self) -> str:
        """The result's value as a sheet shows it ("8.4 %", "Positive"), or ""."""
        if self.value_quantity is not None:
            return str(self.value_quantity)
        if self.value_concept is not None:
            return self.value_concept.label()
        return ""


@dataclass(frozen=True)
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


@dataclass(frozen=True)
class Procedure:
    ref: str
    code: Concept
    day: date
    status: str


@dataclass(frozen=True)
class Immunization:
    ref: str
    vaccine: Concept
    day: date
    status: str


@dataclass(frozen=True)
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

    @property
    def active(self) -> bool:
        # A plan is a medication the patient is on, too (a MedicationRequest with intent
        # plan is how some EHRs record a home medication).
        return self.status == "active" and (self.intent in ORDER_INTENTS
                                            or self.intent == "plan")


@dataclass(frozen=True)
class OpenRequest:
    """A ServiceRequest or MedicationRequest already on the chart (ours or anyone's)."""

    ref: str
    resource_type: str
    code: Concept
    status: str
    intent: str
    identifiers: tuple[tuple[str, str], ...]
    authored_on: date | None

    @property
    def open(self) -> bool:
        return self.status in ("draft", "active", "on-hold")


@dataclass(frozen=True)
class Patient:
    id: str
    birth_date: date | None
    sex: str | None  # FHIR administrative gender: male, female, other, unknown
    name: str | None
    mrn: str | None
    deceased: bool = False


@dataclass(frozen=True)
class PatientRecord:
    patient: Patient
    conditions: tuple[Condition, ...] = ()
    medications: tuple[MedicationOrder, ...] = ()
    observations: tuple[Observation, ...] = ()
    procedures: tuple[Procedure, ...] = ()
    immunizations: tuple[Immunization, ...] = ()
    requests: tuple[OpenRequest, ...] = ()
    issues: tuple[DataIssue, ...] = ()

    @property
    def resource_count(self) -> int:
        return 1 + sum(map(len, (self.conditions, self.medications, self.observations,
                                 self.procedures, self.immunizations, self.requests)))




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
        return Quantity(number, _str(value.get("unit")) or _str(value.get("code")))
    return None


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
    deceased = bool(resource.get("deceasedBoolean")) or "deceasedDateTime" in resource
    return Patient(id=resource["id"], birth_date=parse_fhir_date(resource.get("birthDate")),
                   sex=sex, name=human_name(resource), mrn=_mrn(resource), deceased=deceased)


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


# Beyond these a supply or a number of refills is not a prescription but a data error (an
# expectedSupplyDuration of 1e308 months, 10**18 refills): set aside, never computed with.
MAX_SUPPLY_DAYS = 3660
MAX_REPEATS = 1000


def _parse_medication_request(resource: JSON, medications: Mapping[str, JSON],
                              issues: list[DataIssue]) -> MedicationOrder:
    contained = {f"#{c.get('id')}": c for c in resource.get("contained") or ()
                 if isinstance(c, dict) and c.get("resourceType") == "Medication"}
    dispense = resource.get("dispenseRequest") or {}
    validity = dispense.get("validityPeriod") or {}
    supply = dispense.get("expectedSupplyDuration") or {}
    supply_days = None
    value = supply.get("value")
    amount = _finite(value)
    if amount is None and isinstance(value, (int, float)) and not isinstance(value, bool):
        amount = math.inf  # a number, but beyond a double (10**400): implausible, said so
    if amount is not None:
        unit = (supply.get("code") or supply.get("unit") or "d").lower()
        factor = {"d": 1, "day": 1, "days": 1, "wk": 7, "week": 7, "weeks": 7, "mo": 30,
                  "month": 30, "months": 30}.get(unit)
        if factor is not None:
            supply_days = round(min(amount * factor, MAX_SUPPLY_DAYS + 1.0))
            if not 0 <= supply_days <= MAX_SUPPLY_DAYS:
                issues.append(DataIssue(_ref(resource), f"expectedSupplyDuration {amount:g} "
                                        f"{unit} is not a plausible supply; not used"))
                supply_days = None
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
    )


_UNUSABLE = ("entered-in-error", "cancelled")


def build_record(resources: Iterable[JSON]) -> PatientRecord:
    """Build a PatientRecord from one patient's resources (any order, any mix).

    Resources that cannot be used (no date on a result, wrong shape) become DataIssues.
    Observations that are cancelled or entered in error are dropped silently: they are
    the chart's own way of saying "this did not happen".
    """
    patient: Patient | None = None
    conditions: list[Condition] = []
    meds: list[MedicationOrder] = []
    observations: list[Observation] = []
    procedures: list[Procedure] = []
    immunizations: list[Immunization] = []
    requests: list[OpenRequest] = []
    issues: list[DataIssue] = []
    med_requests: list[JSON] = []
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
                value_concept = resource.get("valueCodeableConcept")
                observations.append(Observation(
                    ref=ref, code=_concept(resource, "code"), day=day,
                    status=_str(resource.get("status")) or "",
                    value_quantity=_quantity(resource.get("valueQuantity")),
                    value_concept=Concept.from_json(value_concept) if value_concept else None,
                    value_date=parse_fhir_date(resource.get("valueDateTime")),
                    members=tuple(str(m["reference"]) for m in resource.get("hasMember") or ()
                                  if isinstance(m, dict) and isinstance(m.get("reference"),
                                                                        str)),
                ))
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
            elif rtype == "MedicationRequest":
                med_requests.append(resource)
            elif rtype == "Medication":
                medications[ref] = resource
            elif rtype == "ServiceRequest":
                requests.append(OpenRequest(
                    ref=ref, resource_type="ServiceRequest",
                    code=Concept.from_json(resource.get("code")),
                    status=_str(resource.get("status")) or "",
                    intent=_str(resource.get("intent")) or "",
                    identifiers=_identifiers(resource),
                    authored_on=parse_fhir_date(resource.get("authoredOn"))))
        except (AttributeError, TypeError, ValueError, ArithmeticError) as exc:
            issues.append(DataIssue(ref, f"could not be read ({exc.__class__.__name__}: {exc})"))

    if patient is None:
        raise RecordError("no Patient resource among the resources")
    for resource in med_requests:
        try:
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
                                        order.authored_on))
        else:
            meds.append(order)
    return PatientRecord(patient=patient, conditions=tuple(conditions), medications=tuple(meds),
                         observations=tuple(observations), procedures=tuple(procedures),
                         immunizations=tuple(immunizations), requests=tuple(requests),
                         issues=tuple(issues))


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
