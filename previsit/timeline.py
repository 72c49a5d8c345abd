"""The pre-visit timeline: which visits a nightly run prepares, how, and when each
pre-visit lab is drawn (CLINICAL.md "The pre-visit timeline"; AMA STEPS Forward "Pre-Visit
Laboratory Testing" and "Pre-Visit Planning").

A run on the *run day* R works two horizons from one read of the schedule:

- the **huddle horizon**: the clinic day(s) being prepared (by default R + 1, tomorrow).
  Their sheets and huddle are made and everything is proposed — screenings, vaccines,
  renewals — and a pre-visit lab not yet ordered is drawn at check-in (dated the visit day);
- the **labs-ahead horizon**: the visits after the huddle days up to R + `labs_ahead_days`.
  Only their pre-visit labs are proposed, to be drawn from R until the visit less the lab's
  turnaround (`lead_days`), or — a point-of-care or same-day lab such as the INR — no
  earlier than `draw_within_days` before the visit.

No order is ever dated before R, the day it is written. Everything here is pure: the run
day is passed in (the CLI derives it from the clock in the clinic's zone).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, timedelta
from typing import Any

from previsit.codes import ValueSetRegistry
from previsit.context import EvaluationContext, Settings
from previsit.errors import ConfigError
from previsit.identifiers import proposal_identifier
from previsit.plan import (
    Horizon,
    LabProgress,
    LabState,
    Order,
    ProposalOutcome,
    Visit,
    VisitPlan,
)
from previsit.proposals import Dating, SameDay, Where
from previsit.record import ORDER_INTENTS, Observation, OpenRequest, PatientRecord
from previsit.ruleset import EvidenceSpec, RuleSet
from previsit.sources import VisitWindow

# The shipped value set of appointment kinds that are lab draws only (HL7 service-type
# pathology codes, SNOMED phlebotomy / blood specimen collection); a clinic adds its own
# codes with [planning] lab_only_codes.
LAB_ONLY_VALUESET = "https://previsit.dev/fhir/ValueSet/lab-only-appointment"

DEFAULT_LABS_AHEAD_DAYS = 7


@dataclass(frozen=True)
class Timeline:
    """The two horizons of one run."""

    run_day: date  # R: the day the run writes its orders (their authoredOn)
    huddle: VisitWindow  # the clinic day(s) prepared in full
    labs_ahead_days: int = DEFAULT_LABS_AHEAD_DAYS

    def __post_init__(self) -> None:
        if self.huddle.start < self.run_day:
            raise ConfigError(
                f"the clinic day {self.huddle.start.isoformat()} is before the run day "
                f"{self.run_day.isoformat()}: nothing can be ordered for a day that has passed")
        if self.labs_ahead_days < 0:
            raise ConfigError("labs_ahead_days cannot be negative")

    @property
    def ahead_end(self) -> date:
        """The first day after the labs-ahead horizon."""
        return max(self.huddle.end, self.run_day + timedelta(days=self.labs_ahead_days + 1))

    @property
    def read_window(self) -> VisitWindow:
        """One read of the schedule covering both horizons."""
        return replace(self.huddle, end=self.ahead_end)

    def horizon(self, visit: Visit) -> Horizon:
        day = visit.day
        return Horizon.HUDDLE if day is not None and day < self.huddle.end \
            else Horizon.LABS_AHEAD


def run_and_clinic_day(*, clinic_day: date | None, run_day: date | None, today: date
                       ) -> tuple[date, date]:
    """(run day, first clinic day) from what was asked.

    Neither: the run is today and prepares tomorrow (the nightly job). A clinic day alone
    (`--date`, the README's sample day): the run is the night before it, so a back-fill or a
    demonstration behaves as that night's run did. A run day alone: it prepares the next day.
    """
    if run_day is None:
        run_day = clinic_day - timedelta(days=1) if clinic_day is not None else today
    if clinic_day is None:
        clinic_day = run_day + timedelta(days=1)
    return run_day, clinic_day


# --- when a lab is drawn -------------------------------------------------------------------


def draw_window(order: Order, visit_day: date, run_day: date, *,
                at_check_in: bool) -> tuple[date, date]:
    """(from, by) for one order of a visit.

    Only a pre-visit lab ordered ahead has a window: from the run day (or, for a
    point-of-care lab, `draw_within_days` before the visit) until the visit less the lab's
    turnaround. Anything else — a lab drawn at check-in (tomorrow's visits, or a lab-only
    appointment that day), a screening, a vaccine — is the visit day. A window that has no
    room left (the visit is closer than the turnaround) is check-in too: drawn late, but
    never dated before the night it is written."""
    if not order.before_visit or at_check_in:
        return visit_day, visit_day
    latest = order.latest_draw(visit_day)
    earliest = run_day if order.draw_within_days is None else \
        max(run_day, visit_day - timedelta(days=order.draw_within_days))
    if latest < earliest:
        return visit_day, visit_day
    return earliest, latest


def dating(plan: VisitPlan, timeline: Timeline, same_day: SameDay) -> Dating:
    """When each order of this visit is done."""
    visit_day = plan.visit.day
    assert visit_day is not None
    # Drawn at check-in: tomorrow's visits, and labs drawn at a lab appointment that day (a
    # lab-only appointment, or the first of the patient's appointments that day).
    at_check_in = timeline.horizon(plan.visit) == Horizon.HUDDLE or (
        same_day.labs == Where.HERE and same_day.visit_work != Where.HERE)
    return lambda order: draw_window(order, visit_day, timeline.run_day,
                                     at_check_in=at_check_in)


# --- which appointment does what --------------------------------------------------------------


def lab_only_test(valuesets: ValueSetRegistry, codes: Iterable[str] = ()
                  ) -> Callable[[Visit], bool]:
    """Whether an appointment is a lab draw only: one of its codes (service category, service
    type, appointment type, specialty) is in the shipped lab-only set or among the clinic's
    own `codes` ("system|code", or a bare code)."""
    known = valuesets.get(LAB_ONLY_VALUESET).codes if LAB_ONLY_VALUESET in valuesets \
        else frozenset()
    wanted = frozenset(codes)

    def lab_only(visit: Visit) -> bool:
        for text in visit.codes:
            system, _, code = text.rpartition("|")
            if (system, code) in known or text in wanted or code in wanted:
                return True
        return False

    return lab_only


def same_day(visits: Sequence[Visit], lab_only: Callable[[Visit], bool]) -> dict[str, SameDay]:
    """For every appointment (by id), where its pre-visit labs and its visit work are done.

    A patient's appointments on one day share the work: the labs are drawn at the first
    lab-only appointment (else at the first appointment), what is done at a visit —
    screenings, vaccines, renewals — at the last appointment that is not lab-only. A lab
    draw booked after the physician visit still draws the labs and gets nothing else. With
    no appointment recognised as lab-only this is time order: labs first, the rest last."""
    days: dict[tuple[str, date | None], list[Visit]] = {}
    for visit in visits:
        days.setdefault((visit.patient_id, visit.day), []).append(visit)
    out: dict[str, SameDay] = {}
    for group in days.values():
        group.sort(key=lambda v: (v.start is None, v.start.timestamp() if v.start else 0,
                                  v.appointment_id))
        draws = [v for v in group if lab_only(v)]
        drawer = draws[0] if draws else group[0]
        visits_proper = [v for v in group if not lab_only(v)]
        worker = visits_proper[-1] if visits_proper else None
        for position, visit in enumerate(group):
            out[visit.appointment_id] = SameDay(
                labs=_where(position, group.index(drawer)),
                visit_work=Where.NOWHERE if worker is None else
                _where(position, group.index(worker)))
    return out


def _where(position: int, doer: int) -> Where:
    return Where.HERE if position == doer else Where.EARLIER if doer < position else Where.LATER


# --- what became of the labs ordered ahead ---------------------------------------------------


def _accepted(request: OpenRequest, requests: Sequence[OpenRequest]) -> bool:
    """A clinician made our proposal an order: changed it to active or completed, or wrote
    an order based on it (the FHIR request pattern)."""
    if request.status in ("active", "completed"):
        return True
    return any(r.intent in ORDER_INTENTS and r.status in ("active", "completed")
               and any(b == request.ref or b.endswith(f"/{request.ref}") for b in r.based_on)
               for r in requests)


def lab_progress(plan: VisitPlan, record: PatientRecord, ruleset: RuleSet,
                 identifier_system: str, settings: Settings | None = None
                 ) -> tuple[LabProgress, ...]:
    """The pre-visit labs previsit proposed for this appointment (on an earlier night), and
    what became of each: resulted (the latest usable result of that lab since it was
    ordered, with its value), accepted but not resulted (draw at check-in), still an
    unsigned proposal, or dismissed. Pure: from the record and the plan."""
    visit_day = plan.visit.day
    if visit_day is None or plan.not_planned:
        return ()
    evidence: dict[tuple[str, str], list[EvidenceSpec]] = {}
    for rule in ruleset.active:
        for req in rule.requirements:
            if req.order is not None and req.order.before_visit:
                evidence.setdefault((req.order.system, req.order.code), []).extend(
                    ev for ev in req.evidence if ev.resource_kind == "observation")
    ctx = EvaluationContext(record, ruleset.valuesets, visit_day, settings or Settings())
    requests = [r for r in record.requests if r.resource_type == "ServiceRequest"]
    out = []
    for request in requests:
        ours = {value for system, value in request.identifiers if system == identifier_system}
        key = next(((c.system, c.code) for c in request.code.codings
                    if (c.system, c.code) in evidence and proposal_identifier(
                        plan.visit.appointment_id, c.system, c.code) in ours), None)
        if key is None or request.status == "entered-in-error":
            continue
        since = request.authored_on or date.min
        results = [o for ev in evidence[key]
                   for o in ctx.observations.matching(ctx.vs(ev.valueset))
                   if ctx.usable(o, needs_value=ev.value_required) and since <= o.day <= visit_day]
        if results:
            latest = max(results, key=lambda o: o.day)
            state = LabState.RESULTED
            result: str | None = _result_text(latest, record)
            day: date | None = latest.day
        else:
            state = LabState.DISMISSED if request.status == "revoked" else \
                LabState.TO_DRAW if _accepted(request, requests) else LabState.UNSIGNED
            result, day = None, None
        out.append(LabProgress(code=key[1], display=request.code.label(), proposal=request.ref,
                               ordered_on=request.authored_on, state=state, result=result,
                               result_day=day))
    return tuple(sorted(out, key=lambda p: (p.display.casefold(), p.code)))


def _result_text(obs: Observation, record: PatientRecord) -> str:
    """A result as the huddle shows it: "HbA1c 7.9 %"; a panel by its members' values."""
    if obs.value_text() or not obs.members:
        return f"{obs.code.label()} {obs.value_text()}".strip()
    by_ref = {o.ref: o for o in record.observations}
    parts = [f"{m.code.label()} {m.value_text()}".strip()
             for ref in obs.members if (m := by_ref.get(ref)) is not None]
    return f"{obs.code.label()}: {', '.join(parts)}" if parts else obs.code.label()


# --- the labs-ahead horizon in the report ---------------------------------------------------


@dataclass(frozen=True)
class LabsAhead:
    """What the labs-ahead horizon did: visits, their lab proposals, failures."""

    start: date  # first day of the horizon
    end: date  # first day after it
    visits: int
    failures: tuple[tuple[str, str], ...]  # (appointment, reason)
    proposals: Mapping[ProposalOutcome, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"start": self.start.isoformat(), "end": self.end.isoformat(),
                "visits": self.visits,
                "failures": [{"appointment": a, "reason": r} for a, r in self.failures],
                "proposals": {o.value: self.proposals.get(o, 0) for o in ProposalOutcome}}


def labs_ahead(timeline: Timeline, plans: Sequence[VisitPlan]) -> LabsAhead:
    outcomes: Counter[ProposalOutcome] = Counter(p.outcome for plan in plans
                                                 for p in plan.proposals)
    return LabsAhead(start=timeline.huddle.end, end=timeline.ahead_end, visits=len(plans),
                     failures=tuple((p.visit.appointment_id, p.failed) for p in plans
                                    if p.failed),
                     proposals=dict(outcomes))
