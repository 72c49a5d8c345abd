"""Criteria: the questions a rule asks of a record (`applies_when`, `excluded_when`).

Each criterion type is one class here: its YAML shape (a pydantic model, registered under
the key that names it in a rule file), how it is evaluated (`evaluate(ctx) -> Truth`:
true, false, or None when the data to decide is missing) and whether missing data can make
it undecidable (`undecidable`). Value-set URLs are fields typed `ValueSetUrl`, found by
`previsit.ruleschema.valueset_urls`, so the loader checks them with no list to maintain.

Adding a criterion type: one class decorated with `@criterion("key")` in this module, and
its test in tests/test_criteria.py. Nothing else dispatches on criterion types.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from datetime import date, timedelta
from typing import Any, ClassVar, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_validator

from previsit.codes import ValueSet
from previsit.context import EvaluationContext, Truth, fmt
from previsit.plan import EvidenceRef
from previsit.record import ORDER_INTENTS, MedicationOrder
from previsit.ruleschema import OptionalDuration, OptionalValueSetUrl, Range, Strict, ValueSetUrl

# An order that stands or was carried out (QI-Core "isInterventionOrder": status active or
# completed, intent order); drafts, proposals (ours included) and revoked orders do not.
_ORDER_STATUSES = frozenset({"active", "completed"})


class Criterion(Strict):
    """The base of every criterion type."""

    key: ClassVar[str]  # the YAML key that names this type ("age", "condition", ...)

    def evaluate(self, ctx: EvaluationContext) -> Truth:
        raise NotImplementedError

    @property
    def undecidable(self) -> bool:
        """Whether missing data can make this criterion evaluate to unknown."""
        return False


CRITERIA: dict[str, type[Criterion]] = {}

C = TypeVar("C", bound=type[Criterion])


def criterion(key: str) -> Callable[[C], C]:
    """Register a criterion type under the rule-file key that selects it."""

    def register(cls: C) -> C:
        cls.key = key
        CRITERIA[key] = cls
        return cls

    return register


def parse_criterion(value: Any) -> Any:
    """Pick the criterion type by its key, so errors speak of one type, not all of them."""
    if isinstance(value, BaseModel):
        return value
    if not isinstance(value, dict):
        raise ValueError("a criterion is a mapping such as {age: {min: 45}}")
    keys = [k for k in CRITERIA if k in value]
    if len(keys) != 1:
        raise ValueError(
            f"a criterion needs exactly one of {', '.join(CRITERIA)}; got "
            f"{', '.join(map(str, value)) or 'nothing'}")
    return CRITERIA[keys[0]].model_validate(value)


def parse_criteria(values: Any) -> Any:
    return tuple(parse_criterion(v) for v in values) if isinstance(values, list) else values


def _join(separator: str, parts: Iterable[Truth]) -> str:
    """The parts' reasons as one clause, each said once: two alternatives with the same
    label (warfarin by clinical-drug set or by ingredient) both read "not on warfarin"."""
    return separator.join(dict.fromkeys(p.reason for p in parts if p.reason))


def all_of(parts: Sequence[Truth]) -> Truth:
    """False if any part is false; else unknown if any is unknown; else true."""
    false = [p for p in parts if p.value is False]
    if false:
        return Truth(False, false[0].reason)
    unknown = [p for p in parts if p.value is None]
    if unknown:
        return Truth(None, _join("; ", unknown))
    return Truth(True, _join("; ", parts), [e for p in parts for e in p.evidence])


def any_of(parts: Sequence[Truth]) -> Truth:
    """True if any part is true; else unknown if any is unknown; else false."""
    true = [p for p in parts if p.value is True]
    if true:
        return Truth(True, true[0].reason, true[0].evidence)
    unknown = [p for p in parts if p.value is None]
    if unknown:
        return Truth(None, _join("; ", unknown))
    return Truth(False, _join(" and ", parts))


# --- demographics ----------------------------------------------------------------------------


@criterion("age")
class AgeCriterion(Criterion):
    """Age in completed years on the visit date."""

    age: Range

    def evaluate(self, ctx: EvaluationContext) -> Truth:
        wanted = f"ages {self.age.describe()}"
        if ctx.age is None:
            return Truth(None, f"no birth date on record, so cannot tell whether {wanted} "
                               "applies")
        return Truth(self.age.contains(ctx.age), f"{wanted}; patient is {ctx.age}")

    @property
    def undecidable(self) -> bool:
        return True


@criterion("sex")
class SexCriterion(Criterion):
    sex: Literal["female", "male"]

    def evaluate(self, ctx: EvaluationContext) -> Truth:
        sex = ctx.record.patient.sex
        if sex not in ("female", "male"):
            return Truth(None, f"sex is {'not recorded' if not sex else repr(sex)}, so "
                               f"cannot tell whether this {self.sex}-specific rule applies")
        return Truth(sex == self.sex, f"{self.sex} patients; patient is {sex}")

    @property
    def undecidable(self) -> bool:
        return True


# --- the chart -------------------------------------------------------------------------------


@criterion("condition")
class ConditionCriterion(Criterion):
    condition: ValueSetUrl
    # active: on the problem list now; ever: recorded at any time (not refuted)
    status: Literal["active", "ever"] = "active"
    lookback: OptionalDuration = None
    label: str | None = None

    def evaluate(self, ctx: EvaluationContext) -> Truth:
        vs = ctx.vs(self.condition)
        since = self.lookback.before(ctx.day) if self.lookback else date.min
        hits = []
        for cond in ctx.conditions.matching(vs):
            if cond.refuted:
                continue
            first = cond.first_known
            if first and first > ctx.day:
                continue
            if self.status == "active" and not (cond.active or
                                                (cond.abatement and cond.abatement > ctx.day)):
                continue
            if self.lookback:
                # ever-recorded within a window: the condition's time must touch the window.
                # A resolved/inactive condition without an abatement date ended, as far as
                # we know, when it was recorded (an old Z51.5 palliative-care diagnosis must
                # not exclude a patient forever).
                end = cond.abatement or (ctx.day if cond.active
                                         else cond.first_known or ctx.day)
                if end <= since:
                    continue
            hits.append(cond)
        label = self.label or vs.title
        if not hits:
            return Truth(False, f"no {'active ' if self.status == 'active' else ''}{label}")
        cond = hits[0]
        return Truth(True, cond.code.label(),
                     [EvidenceRef(cond.ref, cond.first_known, cond.code.label(), "reason")])


class _OnRecord(Criterion):
    """Something dated on the chart, in a value set, within the look-back: the latest one
    decides, and is cited as the reason the rule applies or is excluded."""

    lookback: OptionalDuration = None
    label: str | None = None

    def _within(self, ctx: EvaluationContext, day: date | None) -> bool:
        since = self.lookback.before(ctx.day) if self.lookback else date.min
        return day is not None and since < day <= ctx.day

    def _latest(self, vs: ValueSet, hits: Sequence[tuple[date, str, EvidenceRef]]) -> Truth:
        """From (date, reason, citation) of each hit."""
        if not hits:
            return Truth(False, f"no {self.label or vs.title} on record")
        _, text, cited = max(hits, key=lambda hit: hit[0])
        return Truth(True, text, [cited])


@criterion("procedure")
class ProcedureCriterion(_OnRecord):
    procedure: ValueSetUrl

    def evaluate(self, ctx: EvaluationContext) -> Truth:
        vs = ctx.vs(self.procedure)
        return self._latest(vs, [
            (p.day, f"{p.code.label()} on {fmt(p.day)}",
             EvidenceRef(p.ref, p.day, p.code.label(), "reason"))
            for p in ctx.procedures.matching(vs)
            if p.status == "completed" and self._within(ctx, p.day)])


@criterion("service_request")
class ServiceRequestCriterion(_OnRecord):
    """An order on the chart (ServiceRequest, active or completed, intent order) in the set,
    authored within the look-back: the CMS Hospice library counts a hospice care order."""

    service_request: ValueSetUrl

    def evaluate(self, ctx: EvaluationContext) -> Truth:
        vs = ctx.vs(self.service_request)
        return self._latest(vs, [
            (day, text, EvidenceRef(r.ref, day, text, "reason"))
            for r in ctx.service_requests.matching(vs)
            if r.status in _ORDER_STATUSES and r.intent in ORDER_INTENTS
            and (day := r.authored_on) is not None and self._within(ctx, day)
            for text in (f"{r.code.label()} ordered {fmt(day)}",)])


# Encounters that took place (the CMS Status library's "isEncounterPerformed").
_PERFORMED = frozenset({"finished", "arrived", "triaged", "in-progress", "onleave"})
_ONGOING = frozenset({"arrived", "triaged", "in-progress", "onleave"})


@criterion("encounter")
class EncounterCriterion(_OnRecord):
    """An encounter that took place, of a type in the set (and, with `discharge`,
    discharged to a disposition in that set), whose period overlaps the look-back before
    the visit — or, with `period: ends`, ended in it. These are the CMS Hospice library's
    "Hospice Encounter" (overlaps) and "Encounter Inpatient" discharged to hospice (ends)."""

    encounter: ValueSetUrl  # Encounter.type
    discharge: OptionalValueSetUrl = None  # hospitalization.dischargeDisposition
    period: Literal["overlaps", "ends"] = "overlaps"

    def evaluate(self, ctx: EvaluationContext) -> Truth:
        vs = ctx.vs(self.encounter)
        since = self.lookback.before(ctx.day) if self.lookback else date.min
        hits = []
        for enc in ctx.encounters.matching(vs):
            if enc.status not in _PERFORMED or (
                    self.discharge and not ctx.vs(self.discharge).matches(enc.discharge)):
                continue
            start = enc.start or enc.end
            # An encounter still going on (a hospice stay) lasts until the visit, as far as
            # the chart knows; a finished one without an end ended the day it started.
            end = enc.end or (ctx.day if enc.status in _ONGOING else start)
            if start is None or end is None or start > ctx.day:
                continue
            last = min(end, ctx.day)
            if last <= since or (self.period == "ends" and not since < end <= ctx.day):
                continue
            text = f"{enc.type.label()} {fmt(start)}" + (
                f" to {fmt(enc.end)}" if enc.end and enc.end != start else "")
            hits.append((last, text, EvidenceRef(enc.ref, last, text, "reason")))
        return self._latest(vs, hits)


@criterion("medication")
class MedicationCriterion(Criterion):
    medication: ValueSetUrl  # ingredients and clinical drugs
    names: tuple[str, ...] = ()  # ingredient names for the text fallback, lower case
    min_duration: OptionalDuration = None  # on the drug at least this long at the visit
    label: str | None = None

    def evaluate(self, ctx: EvaluationContext) -> Truth:
        label = self.label or ctx.vs(self.medication).title
        matching = [m for m in ctx.record.medications
                    if ctx.medication_matches(self.medication, self.names, m.medication)]
        active = [m for m in matching if m.active
                  and (m.authored_on is None or m.authored_on <= ctx.day)]
        if not active:
            return Truth(False, f"not on {label}")
        evidence = [EvidenceRef(m.ref, m.authored_on, m.medication.label(), "reason")
                    for m in active]
        name = active[0].medication.label()
        if self.min_duration is None:
            return Truth(True, f"on {name}", evidence)
        start = therapy_start(matching, ctx.day)
        if start is None:
            return Truth(None, f"on {name} but no start date on record, so cannot tell "
                               f"whether for {self.min_duration.words()}")
        if start <= self.min_duration.before(ctx.day):
            return Truth(True, f"on {name} since {fmt(start)}", evidence)
        return Truth(False, f"on {name} only since {fmt(start)} "
                            f"(less than {self.min_duration.words()})")

    @property
    def undecidable(self) -> bool:
        return self.min_duration is not None


# Orders of a chronic drug are renewed at least yearly; a longer gap between two orders
# means the drug was stopped and restarted, and therapy counts from the restart.
_MAX_RENEWAL_GAP = timedelta(days=400)


def therapy_start(orders: Iterable[MedicationOrder], day: date) -> date | None:
    """When the current, continuous course of a drug (class) began.

    Continuous use is read from the chain of orders ending at the latest one: refills and
    renewals appear as new orders with later dates; a gap of more than ~13 months breaks
    the chain. None when no order has a date.
    """
    dates = sorted({m.authored_on for m in orders if m.authored_on and m.authored_on <= day
                    and m.status not in ("entered-in-error", "cancelled", "draft")},
                   reverse=True)
    if not dates:
        return None
    start = dates[0]
    for earlier in dates[1:]:
        if start - earlier > _MAX_RENEWAL_GAP:
            break
        start = earlier
    return start


@criterion("observation")
class ObservationCriterion(Criterion):
    """The latest result in the value set, within the look-back, compared with a value."""

    observation: ValueSetUrl
    value: Range | None = None  # numeric value of the latest result
    value_in: OptionalValueSetUrl = None  # coded value of the latest result in this set
    value_date_within: OptionalDuration = None  # the result's date value (a quit date)
    lookback: OptionalDuration = None
    unit: str | None = None
    label: str | None = None
    # what an absent result means: the rule cannot be decided ("unknown") or the
    # criterion simply does not hold ("false")
    missing: Literal["unknown", "false"] = "false"

    def evaluate(self, ctx: EvaluationContext) -> Truth:
        label = self.label or ctx.vs(self.observation).title
        # A criterion that compares the value looks at the latest result that has one (a
        # BMI entered without a value does not hide the one before it).
        compares = self.value is not None or self.value_in is not None \
            or self.value_date_within is not None
        obs = ctx.latest_observation(self.observation, self.lookback, needs_value=compares)
        missing_value: bool | None = None if self.missing == "unknown" else False
        if obs is None:
            within = f" in the last {self.lookback.words()}" if self.lookback else " on record"
            return Truth(missing_value, f"no {label}{within}" +
                         (", so cannot decide" if missing_value is None else ""))
        ev = [EvidenceRef(obs.ref, obs.day, f"{label} {obs.value_text()}", "reason")]
        if self.value is not None:
            if obs.value_quantity is None:
                return Truth(missing_value, f"{label} on {fmt(obs.day)} has no numeric value")
            ok = self.value.contains(obs.value_quantity.value)
            return Truth(ok, f"{label} {obs.value_quantity} on {fmt(obs.day)}", ev)
        if self.value_in is not None:
            if obs.value_concept is None:
                return Truth(missing_value, f"{label} on {fmt(obs.day)} has no coded value")
            ok = ctx.vs(self.value_in).matches(obs.value_concept)
            return Truth(ok, f"{label}: {obs.value_concept.label()} on {fmt(obs.day)}", ev)
        if self.value_date_within is not None:
            if obs.value_date is None:
                return Truth(missing_value, f"{label} on {fmt(obs.day)} has no date value")
            ok = obs.value_date >= self.value_date_within.before(ctx.day)
            return Truth(ok, f"{label} {fmt(obs.value_date)}", ev)
        return Truth(True, f"{label} on {fmt(obs.day)}", ev)

    @property
    def undecidable(self) -> bool:
        return self.missing == "unknown"


# --- logic -----------------------------------------------------------------------------------


class Junction(Criterion):
    """All or any of a list of criteria (the list is the field named by the key)."""

    def parts(self) -> tuple[Criterion, ...]:
        return tuple(getattr(self, self.key))

    def evaluate(self, ctx: EvaluationContext) -> Truth:
        combine = all_of if self.key == "all" else any_of
        return combine([c.evaluate(ctx) for c in self.parts()])

    @property
    def undecidable(self) -> bool:
        return any(c.undecidable for c in self.parts())


@criterion("all")
class AllCriterion(Junction):
    all: tuple[Criterion, ...] = Field(min_length=1)

    _c = field_validator("all", mode="before")(lambda v: parse_criteria(v))


@criterion("not")
class NotCriterion(Criterion):
    not_: Criterion = Field(alias="not")
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    _c = field_validator("not_", mode="before")(lambda v: parse_criterion(v))

    def evaluate(self, ctx: EvaluationContext) -> Truth:
        inner = self.not_.evaluate(ctx)
        return Truth(None if inner.value is None else not inner.value, inner.reason, [])

    @property
    def undecidable(self) -> bool:
        return self.not_.undecidable


@criterion("any")
class AnyCriterion(Junction):
    any: tuple[Criterion, ...] = Field(min_length=1)

    _c = field_validator("any", mode="before")(lambda v: parse_criteria(v))
