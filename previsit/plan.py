"""What a run produces for one appointment: a Visit, its Findings and its VisitPlan.

These are the objects the sheets, the write-back and plan.json are rendered from. They
serialise to plain JSON (`to_json`) and back (`visit_plan_from_json`) so that
`previsit sheet` can render from an existing plan.json without re-reading the server.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, is_dataclass
from datetime import date, datetime, timedelta
from enum import StrEnum
from typing import Any


class Status(StrEnum):
    DUE = "due"  # needed at this visit; nothing qualifying on record
    OVERDUE = "overdue"  # was done, and fell due on or before the visit date
    DUE_SOON = "due-soon"  # falls due within the due-soon window after the visit
    SATISFIED = "satisfied"
    EXCLUDED = "excluded"
    NOT_APPLICABLE = "not-applicable"
    UNKNOWN = "unknown"  # data needed to decide was missing or unreadable

    @property
    def actionable(self) -> bool:
        return self in (Status.DUE, Status.OVERDUE, Status.DUE_SOON)

    @property
    def severity(self) -> int:
        """How much this status asks of the team: a rule's requirements report the most
        severe; sheets list the most severe first."""
        return _SEVERITY[self]


_SEVERITY = {Status.OVERDUE: 6, Status.DUE: 5, Status.DUE_SOON: 4, Status.UNKNOWN: 3,
             Status.SATISFIED: 2, Status.EXCLUDED: 1, Status.NOT_APPLICABLE: 0}


class Kind(StrEnum):
    """What a rule is about, in the order a team works through a visit."""

    LAB = "lab"
    SCREENING = "screening"
    IMMUNIZATION = "immunization"
    RENEWAL = "renewal"


class Role(StrEnum):
    """Who does a task (top-of-license work, CLINICAL.md "Roles"), in the order sheets list
    them; each name a person reads is here and nowhere else:

    - `label`: the short name in counts and lists ("MA");
    - `heading`: the heading of the role's task list ("Medical assistant");
    - `column`: the huddle table's narrow column heading ("Phys.");
    - `performer`: ServiceRequest.performerType in a proposal ("Clinical pharmacist").
    """

    label: str
    heading: str
    column: str
    performer: str

    # Defaults only so that a lookup by value, Role("nurse"), type-checks: the lookup never
    # calls __new__.
    def __new__(cls, value: str, label: str = "", heading: str = "", column: str = "",
                performer: str = "") -> Role:
        member = str.__new__(cls, value)
        member._value_ = value
        member.label, member.heading, member.column, member.performer = \
            label, heading, column, performer
        return member

    MA = ("medical-assistant", "MA", "Medical assistant", "MA", "Medical assistant")
    NURSE = ("nurse", "Nurse", "Nurse", "Nurse", "Nurse")
    PHARMACIST = ("pharmacist", "Pharmacist", "Pharmacist", "Pharm.", "Clinical pharmacist")
    PHYSICIAN = ("physician", "Physician", "Physician", "Phys.", "Physician")


class FindingFlag(StrEnum):
    """What a finding asks beyond its status. A rule may declare SHARED_DECISION; the engine
    adds the others."""

    PHYSICIAN_REVIEW = "physician-review"
    CONTROLLED_SUBSTANCE = "controlled-substance"
    HIGH_RISK = "high-risk"  # a high-risk medicine: the physician renews it, not a protocol
    POSITIVE_RESULT = "positive-result"  # a positive screening test needs a follow-up test
    ABNORMAL = "abnormal"  # the latest value was outside the rule's review range
    SHARED_DECISION = "shared-decision"


class OrderCategory(StrEnum):
    LABORATORY = "laboratory"
    IMAGING = "imaging"
    PROCEDURE = "procedure"
    IMMUNIZATION = "immunization"
    COUNSELLING = "counselling"
    MEDICATION = "medication"  # a renewal: a MedicationRequest, not a ServiceRequest


class ProposalOutcome(StrEnum):
    """What became of a proposal in this run (plan.json, sheets, run report)."""

    PROPOSED = "proposed"  # written, or in the transaction file
    DRY_RUN = "dry-run"  # would be written (no --write-back)
    ALREADY_OPEN = "already-open"  # someone's open order for the same code
    ALREADY_WRITTEN = "already-written"  # ours, from an earlier run, still open
    DECLINED = "declined"  # ours, revoked by a clinician: never re-proposed
    DONE = "done"  # ours, completed
    EARLIER_VISIT = "earlier-visit"  # a lab drawn at the patient's earlier visit that day
    LATER_VISIT = "later-visit"  # left to the patient's later visit that day
    LAB_ONLY = "lab-only"  # done at a visit, and this is a lab-only appointment


class Horizon(StrEnum):
    """Which of a nightly run's two horizons a visit is in (CLINICAL.md "The pre-visit
    timeline")."""

    HUDDLE = "huddle"  # the clinic day being prepared: sheets, huddle, every proposal
    LABS_AHEAD = "labs-ahead"  # a visit further out: only its pre-visit labs are ordered


@dataclass(frozen=True)
class Ref:
    """A reference to another resource, with what to call it on a sheet."""

    reference: str | None
    display: str | None = None


@dataclass(frozen=True)
class Visit:
    """One booked appointment in the planning window."""

    appointment_id: str
    patient_id: str
    start: datetime | None
    status: str
    practitioner: Ref | None = None
    location: Ref | None = None
    service_type: str | None = None
    reason: str | None = None
    description: str | None = None
    # Every coding of serviceCategory, serviceType, appointmentType and specialty, as
    # "system|code": what tells a lab-only appointment from a visit.
    codes: tuple[str, ...] = ()

    @property
    def day(self) -> date | None:
        return self.start.date() if self.start else None


@dataclass(frozen=True)
class EvidenceRef:
    """A resource that decided a finding, as it should be cited on a sheet."""

    reference: str
    day: date | None
    summary: str
    purpose: str = "result"  # "result" (it decided satisfaction) or "reason" (why it applies)


@dataclass(frozen=True)
class Order:
    """A coded thing to order at this visit (a lab, a screening, a vaccine, a renewal)."""

    system: str
    code: str
    display: str
    category: OrderCategory
    role: Role
    before_visit: bool  # pre-visit lab: drawn ahead so results are in at the visit
    lead_days: int = 0  # the result takes this long: drawn at the latest visit - lead_days
    # point-of-care or same-day labs (INR): drawn no earlier than visit - draw_within_days
    draw_within_days: int | None = None

    def latest_draw(self, visit_day: date) -> date:
        """The last day the lab can be drawn for its result to be in at the visit."""
        return visit_day - timedelta(days=self.lead_days)


@dataclass(frozen=True)
class Finding:
    rule_id: str
    title: str
    kind: Kind
    status: Status
    explanation: str
    role: Role
    evidence: tuple[EvidenceRef, ...] = ()
    orders: tuple[Order, ...] = ()  # what to propose; empty unless actionable
    due_date: date | None = None
    flags: tuple[FindingFlag, ...] = ()
    measure: str | None = None
    citation: str | None = None
    medication_ref: str | None = None  # renewals: the MedicationRequest to renew
    # A dose due but not allowed yet at the visit (minimum interval, outside the influenza
    # season): the earliest date it may be given. Such a finding is due-soon with no order.
    not_before: date | None = None

    @property
    def needs_physician(self) -> bool:
        return FindingFlag.PHYSICIAN_REVIEW in self.flags


@dataclass(frozen=True)
class ProposalSummary:
    """What was (or would be) written for a visit, as reported in plan.json and sheets."""

    resource_type: str  # ServiceRequest or MedicationRequest
    identifier: str  # the idempotency identifier value
    code: str
    display: str
    rule_ids: tuple[str, ...]
    occurrence: date | None
    role: Role
    outcome: ProposalOutcome
    existing: str | None = None  # the existing resource that suppressed it
    # A pre-visit lab's draw window is [occurrence_start, occurrence]: `occurrence` is the
    # "draw by" day; the two are equal for a lab drawn at check-in.
    occurrence_start: date | None = None


class LabState(StrEnum):
    """What became of a pre-visit lab previsit proposed for a visit, as the huddle sees it."""

    RESULTED = "resulted"  # a result with a value came back since it was ordered
    TO_DRAW = "to-draw"  # accepted (ordered) but not resulted: draw at check-in
    UNSIGNED = "unsigned"  # still our proposal: nobody signed it; sign, then draw
    DISMISSED = "dismissed"  # a clinician revoked the proposal


@dataclass(frozen=True)
class LabProgress:
    """A pre-visit lab previsit proposed for this appointment on an earlier night."""

    code: str
    display: str
    proposal: str  # the proposal on the chart ("ServiceRequest/…")
    ordered_on: date | None  # the proposal's authoredOn
    state: LabState
    result: str | None = None  # "HbA1c 7.9 %" when resulted
    result_day: date | None = None


@dataclass(frozen=True)
class VisitPlan:
    visit: Visit
    patient_name: str | None
    patient_age: int | None
    patient_sex: str | None
    patient_mrn: str | None
    findings: tuple[Finding, ...]
    proposals: tuple[ProposalSummary, ...] = ()
    issues: tuple[str, ...] = ()
    failed: str | None = None  # why this visit could not be planned
    # Why this visit was deliberately not planned (the patient is recorded as deceased):
    # not a failure, an input problem for the scheduler to fix.
    not_planned: str | None = None
    checks: tuple[str, ...] = ()  # "check this value": implausible results, not used
    labs: tuple[LabProgress, ...] = ()  # what became of pre-visit labs proposed earlier

    def by_status(self, *statuses: Status) -> list[Finding]:
        return [f for f in self.findings if f.status in statuses]

    @property
    def actionable(self) -> list[Finding]:
        return [f for f in self.findings if f.status.actionable]


# --- JSON ------------------------------------------------------------------------------


# A plan's dataclasses, each with its fields' names (dataclasses.asdict looked them up and
# deep-copied every value: a third of the cost of a plan's JSON).
_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


def _field_names(kind: type) -> tuple[str, ...] | None:
    """The field names of a dataclass type (looked up once), None for any other type."""
    names = _FIELD_NAMES.get(kind)
    if names is None and is_dataclass(kind):
        names = _FIELD_NAMES.setdefault(kind, tuple(f.name for f in fields(kind)))
    return names


def _encode(value: Any) -> Any:
    kind = type(value)
    if kind is str or kind is int or kind is float or kind is bool or value is None:
        return value
    names = _field_names(kind)
    if names is not None:
        return {name: _encode(getattr(value, name)) for name in names}
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, StrEnum):
        return value.value
    if isinstance(value, dict):
        return {k: _encode(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_encode(v) for v in value]
    return value


def to_json(plan: VisitPlan) -> dict[str, Any]:
    out: dict[str, Any] = _encode(plan)
    return out


_BASES = (str, int, float, dict, list)


def json_default(value: Any) -> Any:
    """The `default` of `jsonio.dumps` for a plan, so that `dumps(plan, default=...)` is
    `dumps(to_json(plan))` without building the dicts first (a tenth of the Python calls):
    a dataclass's fields, a date's isoformat, a subclass (an enum) as its base value."""
    kind = type(value)
    names = _field_names(kind)
    if names is not None:
        return {name: getattr(value, name) for name in names}
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, StrEnum):
        return value.value
    if isinstance(value, tuple):
        return list(value)
    base = next((b for b in _BASES if isinstance(value, b)), None)
    if base is None:
        raise TypeError(f"{kind.__name__} cannot be written as JSON")
    return base(value)


def _day(value: Any) -> date | None:
    return date.fromisoformat(value) if isinstance(value, str) else None


def _ref(value: Any) -> Ref | None:
    return Ref(value.get("reference"), value.get("display")) if isinstance(value, dict) else None


def _lab_from_json(data: dict[str, Any]) -> LabProgress:
    return LabProgress(code=data["code"], display=data["display"], proposal=data["proposal"],
                       ordered_on=_day(data.get("ordered_on")), state=LabState(data["state"]),
                       result=data.get("result"), result_day=_day(data.get("result_day")))


def visit_from_json(data: dict[str, Any]) -> Visit:
    start = data.get("start")
    return Visit(
        appointment_id=data["appointment_id"], patient_id=data["patient_id"],
        start=datetime.fromisoformat(start) if isinstance(start, str) else None,
        status=data.get("status", ""), practitioner=_ref(data.get("practitioner")),
        location=_ref(data.get("location")), service_type=data.get("service_type"),
        reason=data.get("reason"), description=data.get("description"),
        codes=tuple(data.get("codes", ())))


def _finding_from_json(data: dict[str, Any]) -> Finding:
    return Finding(
        rule_id=data["rule_id"], title=data["title"], kind=Kind(data["kind"]),
        status=Status(data["status"]), explanation=data["explanation"], role=Role(data["role"]),
        evidence=tuple(EvidenceRef(e["reference"], _day(e.get("day")), e["summary"],
                                e.get("purpose", "result"))
                       for e in data.get("evidence", ())),
        orders=tuple(Order(**{**o, "role": Role(o["role"]),
                                 "category": OrderCategory(o["category"])})
                     for o in data.get("orders", ())),
        due_date=_day(data.get("due_date")),
        flags=tuple(FindingFlag(f) for f in data.get("flags", ())),
        measure=data.get("measure"), citation=data.get("citation"),
        medication_ref=data.get("medication_ref"), not_before=_day(data.get("not_before")))


def visit_plan_from_json(data: dict[str, Any]) -> VisitPlan:
    return VisitPlan(
        visit=visit_from_json(data["visit"]), patient_name=data.get("patient_name"),
        patient_age=data.get("patient_age"), patient_sex=data.get("patient_sex"),
        patient_mrn=data.get("patient_mrn"),
        findings=tuple(_finding_from_json(f) for f in data.get("findings", ())),
        proposals=tuple(ProposalSummary(**{**p, "rule_ids": tuple(p["rule_ids"]),
                                           "occurrence": _day(p.get("occurrence")),
                                           "occurrence_start": _day(p.get("occurrence_start")),
                                           "role": Role(p["role"]),
                                           "outcome": ProposalOutcome(p["outcome"])})
                        for p in data.get("proposals", ())),
        issues=tuple(data.get("issues", ())), failed=data.get("failed"),
        not_planned=data.get("not_planned"), checks=tuple(data.get("checks", ())),
        labs=tuple(_lab_from_json(lab) for lab in data.get("labs", ())))


@dataclass(frozen=True)
class DayPlan:
    """Every visit planned in one run, in time order: what plan.json holds.

    `plans` are the huddle horizon's visits (the clinic day being prepared: sheets are made
    from them); `ahead` the visits further out whose pre-visit labs the run ordered."""

    generated_for: date
    days: int
    plans: tuple[VisitPlan, ...]
    ruleset: dict[str, Any] = field(default_factory=dict)
    run_day: date | None = None  # the day the run wrote its orders (their authoredOn)
    ahead: tuple[VisitPlan, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"resourceType": "previsit-plan", "version": 1,
                "date": self.generated_for.isoformat(), "days": self.days,
                "run_date": self.run_day.isoformat() if self.run_day else None,
                "ruleset": self.ruleset, "visits": [to_json(p) for p in self.plans],
                "labs_ahead": [to_json(p) for p in self.ahead]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DayPlan:
        if data.get("resourceType") != "previsit-plan":
            raise ValueError("not a previsit plan.json (resourceType is not 'previsit-plan')")
        return cls(generated_for=date.fromisoformat(data["date"]), days=int(data["days"]),
                   plans=tuple(visit_plan_from_json(v) for v in data["visits"]),
                   ruleset=data.get("ruleset", {}), run_day=_day(data.get("run_date")),
                   ahead=tuple(visit_plan_from_json(v) for v in data.get("labs_ahead", ())))
