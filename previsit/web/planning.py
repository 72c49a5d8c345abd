"""The engine, for one patient on demand: which visit to plan, the plan, what to write.

The app (on launch) and the CDS services (on a hook) both come here, so that neither
re-derives what is due: `evaluate()` decides, `plan_proposals()` builds exactly the
resources the nightly write-back builds (same identifiers), and `apply_declines()` sets
aside what clinicians declined. Only the choice of the visit and the date arithmetic of
"now" live here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from previsit.appointments import visit_from_appointment
from previsit.errors import AppointmentError, ProposalError
from previsit.evaluate import Settings, evaluate
from previsit.plan import ProposalOutcome, ProposalSummary, Visit, VisitPlan
from previsit.proposals import plan_proposals
from previsit.record import PatientRecord
from previsit.references import bare_id
from previsit.ruleset import RuleSet
from previsit.sources import BOOKED_STATUSES
from previsit.suppressions import Decline, apply_declines
from previsit.timeline import draw_window
from previsit.web.fhir import FhirSession

# The outcomes whose proposal exists on the server and is still ours to act on.
ACTIONABLE_ON_SERVER = frozenset({ProposalOutcome.ALREADY_WRITTEN})


@dataclass(frozen=True)
class Planner:
    """Everything the engine needs besides the record: the rules and the clinic's settings."""

    ruleset: RuleSet
    settings: Settings
    timezone: str
    identifier_system: str
    statuses: tuple[str, ...] = BOOKED_STATUSES


@dataclass(frozen=True)
class ChosenVisit:
    visit: Visit
    basis: str  # why this visit, in words, for the page
    scheduled: bool  # a real appointment (proposals are keyed by it), not "today"


@dataclass(frozen=True)
class PatientPlan:
    """One patient's plan as the app and the CDS services use it."""

    plan: VisitPlan  # proposals: as the nightly run would report them (PROPOSED: not written)
    chosen: ChosenVisit
    entries: Mapping[str, dict[str, Any]] = field(default_factory=dict)  # identifier → entry
    today: date | None = None

    def summary(self, identifier: str) -> ProposalSummary | None:
        return next((p for p in self.plan.proposals if p.identifier == identifier), None)


def today_visit(patient_id: str, now: datetime, basis: str) -> ChosenVisit:
    """No booked appointment: plan "today" (nothing is proposed for it)."""
    start = datetime.combine(now.date(), time(), now.tzinfo)
    return ChosenVisit(Visit(appointment_id="", patient_id=patient_id, start=start,
                             status="none"), basis, False)


async def choose_visit(fhir: FhirSession, patient_id: str, *, appointment: str | None,
                       encounter: str | None, now: datetime, planner: Planner) -> ChosenVisit:
    """The launched appointment; else the launched encounter's appointment (or its day);
    else the patient's next booked appointment; else today."""
    tz = planner.timezone
    if appointment:
        resource = await fhir.read("Appointment", bare_id(appointment))
        return ChosenVisit(_visit(resource, patient_id, tz), "the appointment the chart was "
                           "opened from", True)
    if encounter:
        resource = await fhir.read("Encounter", bare_id(encounter))
        for ref in resource.get("appointment") or ():
            if isinstance(ref, dict) and isinstance(ref.get("reference"), str) and \
                    ref["reference"].startswith("Appointment/"):
                booked = await fhir.read("Appointment", bare_id(ref["reference"]))
                return ChosenVisit(_visit(booked, patient_id, tz), "the appointment of the "
                                   "encounter the chart was opened from", True)
        return today_visit(patient_id, now, "the encounter the chart was opened from (no "
                           "appointment linked to it)")
    found = await fhir.search("Appointment", [
        ("patient", patient_id), ("date", "ge" + now.date().isoformat()),
        ("status", ",".join(planner.statuses)), ("_sort", "date"), ("_count", "20")])
    upcoming = []
    for resource in found:
        try:
            visit = _visit(resource, patient_id, tz)
        except AppointmentError:
            continue
        if visit.start is not None and visit.start.date() >= now.date():
            upcoming.append(visit)
    if upcoming:
        upcoming.sort(key=lambda v: (v.start or now, v.appointment_id))
        return ChosenVisit(upcoming[0], "the patient's next booked appointment", True)
    return today_visit(patient_id, now, "today: the patient has no booked appointment")


def _visit(resource: Mapping[str, Any], patient_id: str, timezone: str) -> Visit:
    visit = visit_from_appointment(resource, timezone)
    if visit.patient_id != patient_id:
        raise AppointmentError("the appointment belongs to another patient")
    return visit


def plan_patient(record: PatientRecord, chosen: ChosenVisit, planner: Planner, *,
                 today: date, declines: Mapping[str, Decline] | None = None) -> PatientPlan:
    """Evaluate (pure), set declined findings aside, and work out the proposals the nightly
    run would write for this visit — PROPOSED meaning "not written yet"."""
    plan = evaluate(record, planner.ruleset, chosen.visit, planner.settings)
    if declines:
        plan = apply_declines(plan, declines)
    if not chosen.scheduled or plan.visit.day is None:
        return PatientPlan(plan, chosen, {}, today)
    visit_day = plan.visit.day
    # Written today: a lab is drawn from today until the visit less its turnaround — at
    # check-in when the visit is tomorrow or too close (no order is dated before the day it
    # is written). The nightly run dates it the same way, and the identifier is the same.
    at_check_in = visit_day <= today + timedelta(days=1)
    try:
        proposals = plan_proposals(
            plan, record, identifier_system=planner.identifier_system, authored=today,
            dating=lambda order: draw_window(order, visit_day, today, at_check_in=at_check_in))
    except ProposalError as exc:
        return PatientPlan(replace(plan, failed=f"proposals could not be built: {exc}"),
                           chosen, {}, today)
    entries = {entry["resource"]["identifier"][0]["value"]: entry
               for entry in (proposals.bundle or {}).get("entry") or ()}
    return PatientPlan(replace(plan, proposals=proposals.summaries), chosen, entries, today)


def now_in(timezone: str, epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, ZoneInfo(timezone))
