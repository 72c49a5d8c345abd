"""Proposals: the draft orders previsit writes back, merged, de-duplicated and idempotent.

A lab, screening or vaccine is a ServiceRequest (status=draft, intent=proposal); a renewal
is a MedicationRequest (intent=proposal, priorPrescription = the order it renews). Each
carries an identifier derived only from (appointment, code), so writing it with a
conditional create (`ifNoneExist: identifier=system|value`) can never make a duplicate —
not on a re-run, not when two runs start at once.

What is NOT proposed:
- an equivalent open order already on the chart (same code, status draft/active/on-hold),
  whoever wrote it: outcome `already-open`;
- our own proposal for this appointment, whatever its status now: outcome
  `already-written` while open, `declined` when a clinician revoked it, `done` when
  completed — a clinician's decision is never overridden by re-proposing;
- for a patient with two appointments the same day: the labs where they are drawn, what is
  done at a visit at the physician visit (`earlier-visit` / `later-visit` at the other one;
  `lab-only` at a lone lab-only appointment): which appointment does what is `SameDay`,
  decided by previsit.timeline.

When a pre-visit lab is drawn is decided outside too (previsit.timeline: the run day, the
horizon, the lab's turnaround): `merge_orders` takes it as a function of the order.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date
from enum import StrEnum
from typing import Any

from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.medicationrequest import MedicationRequest
from fhir.resources.R4B.servicerequest import ServiceRequest

from previsit.codes import SNOMED
from previsit.errors import ProposalError
from previsit.identifiers import proposal_identifier
from previsit.intervals import Duration
from previsit.plan import (
    Finding,
    Order,
    OrderCategory,
    ProposalOutcome,
    ProposalSummary,
    Role,
    VisitPlan,
)
from previsit.record import MedicationOrder, OpenRequest, PatientRecord
from previsit.validation import SHAPES

ROLE_SYSTEM = "https://previsit.dev/fhir/CodeSystem/care-team-role"

# FHIR R4 ServiceRequest category example value set (SNOMED CT); 33879002 is
# "Administration of vaccine to produce active immunity".
_CATEGORY = {
    OrderCategory.LABORATORY: ("108252007", "Laboratory procedure"),
    OrderCategory.IMAGING: ("363679005", "Imaging"),
    OrderCategory.PROCEDURE: ("387713003", "Surgical procedure"),
    OrderCategory.COUNSELLING: ("409063005", "Counselling"),
    OrderCategory.IMMUNIZATION: ("33879002",
                                 "Administration of vaccine to produce active immunity"),
}


# When an order is done: (from, by). A pre-visit lab ordered ahead has a window; everything
# else, and a lab drawn at check-in, is one day.
Dating = Callable[[Order], tuple[date, date]]


class Where(StrEnum):
    """Which of the patient's appointments that day does something."""

    HERE = "here"
    EARLIER = "earlier"
    LATER = "later"
    NOWHERE = "nowhere"  # a lab-only appointment with no visit that day: not done today


@dataclass(frozen=True)
class SameDay:
    """Where a visit's pre-visit labs are drawn and where what is done at a visit is done."""

    labs: Where = Where.HERE
    visit_work: Where = Where.HERE


_ELSEWHERE = {Where.EARLIER: ProposalOutcome.EARLIER_VISIT,
              Where.LATER: ProposalOutcome.LATER_VISIT, Where.NOWHERE: ProposalOutcome.LAB_ONLY}


@dataclass
class Proposal:
    """One thing to write for a visit, merged across the rules that want it."""

    order: Order
    findings: list[Finding] = field(default_factory=list)
    identifier: str = ""
    occurrence: date | None = None  # the day it is done by (a lab's "draw by")
    medication: MedicationOrder | None = None
    occurrence_start: date | None = None  # the first day it may be done

    @property
    def rule_ids(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(f.rule_id for f in self.findings))

    @property
    def resource_type(self) -> str:
        return "MedicationRequest" if self.order.category == OrderCategory.MEDICATION \
            else "ServiceRequest"


def merge_orders(plan: VisitPlan, record: PatientRecord, *,
                 dating: Dating | None = None) -> list[Proposal]:
    """One proposal per code for the visit (potassium due under two rules: one order).

    `dating` says when each order is done (default: on the visit day). Two rules that want
    the same lab get the window both can live with: the latest start, the earliest end (the
    longest turnaround wins, so every rule's result is in on time).
    """
    visit_day = plan.visit.day
    assert visit_day is not None
    when = dating or (lambda order: (visit_day, visit_day))
    meds = {m.ref: m for m in record.medications}
    merged: dict[tuple[str, str], Proposal] = {}
    for finding in plan.findings:
        if not finding.status.actionable:
            continue
        for order in finding.orders:
            key = (order.system, order.code or finding.medication_ref or "")
            start, end = when(order)
            proposal = merged.get(key)
            if proposal is None:
                proposal = Proposal(order=order, occurrence=end, occurrence_start=start,
                                    identifier=proposal_identifier(
                                        plan.visit.appointment_id, order.system,
                                        order.code or finding.medication_ref or ""),
                                    medication=meds.get(finding.medication_ref or ""))
                merged[key] = proposal
            else:
                assert proposal.occurrence is not None and proposal.occurrence_start is not None
                proposal.occurrence = min(proposal.occurrence, end)
                proposal.occurrence_start = min(max(proposal.occurrence_start, start),
                                                proposal.occurrence)
            proposal.findings.append(finding)
    return sorted(merged.values(), key=lambda p: (p.resource_type, p.order.display.lower()))


def _same_code(request: OpenRequest, order: Order) -> bool:
    return any(c.system == order.system and c.code == order.code for c in request.code.codings)


def existing_outcome(proposal: Proposal, requests: Iterable[OpenRequest],
                     identifier_system: str) -> tuple[ProposalOutcome, str | None]:
    """Whether to write: (PROPOSED, None) or why not and the resource that says so."""
    for request in requests:
        if (identifier_system, proposal.identifier) in request.identifiers:
            if request.status == "revoked":
                return ProposalOutcome.DECLINED, request.ref
            if request.status == "completed":
                return ProposalOutcome.DONE, request.ref
            if request.status == "entered-in-error":
                continue  # ours, withdrawn as a mistake: propose again
            return ProposalOutcome.ALREADY_WRITTEN, request.ref
    for request in requests:
        if not request.open:
            continue
        if proposal.resource_type == "ServiceRequest" and \
                request.resource_type == "ServiceRequest" and _same_code(request, proposal.order):
            return ProposalOutcome.ALREADY_OPEN, request.ref
        if proposal.resource_type == "MedicationRequest" and \
                request.resource_type == "MedicationRequest" and _same_code(request,
                                                                            proposal.order):
            return ProposalOutcome.ALREADY_OPEN, request.ref
    return ProposalOutcome.PROPOSED, None


def _ours(requests: Iterable[OpenRequest], ref: str | None, identifier_system: str) -> bool:
    """Whether the request `ref` is a previsit proposal (for any appointment)."""
    return any(r.ref == ref and any(system == identifier_system for system, _ in r.identifiers)
               for r in requests)


def _concept(system: str, code: str, display: str) -> dict[str, Any]:
    coding: dict[str, Any] = {"system": system, "code": code, "display": display}
    return {"coding": [coding], "text": display}


def _reference(ref: str, display: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"reference": ref}
    if display:
        out["display"] = display
    return out


def _note(finding: Finding) -> str:
    # A renewal's title is "Renew <drug>" and its explanation "<drug>: runs out ...": name
    # the drug once.
    named, _, rest = finding.explanation.partition(": ")
    if rest and named and finding.title.endswith(f" {named}"):
        return f"{finding.title}: {rest}"
    return f"{finding.title}: {finding.explanation}"


def _notes(proposal: Proposal) -> list[dict[str, Any]]:
    return [{"text": _note(f)} for f in proposal.findings]


def service_request(proposal: Proposal, plan: VisitPlan, *, identifier_system: str,
                    authored: date) -> dict[str, Any]:
    order = proposal.order
    category_code, category_display = _CATEGORY[order.category]
    reasons: list[dict[str, Any]] = []
    supporting: list[dict[str, Any]] = [
        _reference(f"Appointment/{plan.visit.appointment_id}", "the visit this prepares")]
    seen = set()
    for finding in proposal.findings:
        for ev in finding.evidence:
            if ev.reference in seen:
                continue
            seen.add(ev.reference)
            # R4 ServiceRequest.reasonReference admits Condition, Observation,
            # DiagnosticReport and DocumentReference; a drug that needs monitoring is
            # supporting information instead.
            if ev.purpose == "reason" and ev.reference.split("/")[0] in (
                    "Condition", "Observation", "DiagnosticReport"):
                reasons.append(_reference(ev.reference, ev.summary))
            else:
                supporting.append(_reference(ev.reference, ev.summary))
    resource: dict[str, Any] = {
        "resourceType": "ServiceRequest",
        "identifier": [{"system": identifier_system, "value": proposal.identifier}],
        "status": "draft",
        "intent": "proposal",
        "category": [_concept(SNOMED, category_code, category_display)],
        "code": _concept(order.system, order.code, order.display),
        "subject": {"reference": f"Patient/{plan.visit.patient_id}"},
        "authoredOn": authored.isoformat(),
        "performerType": {"coding": [{"system": ROLE_SYSTEM, "code": order.role.value,
                                      "display": order.role.performer}],
                          "text": order.role.performer},
        "reasonCode": [{"text": f.title} for f in proposal.findings],
        "supportingInfo": supporting,
        "note": _notes(proposal),
    }
    start, end = proposal.occurrence_start, proposal.occurrence
    if start and end and start < end:
        # a window: draw from the night it is ordered until the result can still be in
        resource["occurrencePeriod"] = {"start": start.isoformat(), "end": end.isoformat()}
    elif end:
        resource["occurrenceDateTime"] = end.isoformat()
    if reasons:
        resource["reasonReference"] = reasons
    return resource


def medication_request(proposal: Proposal, plan: VisitPlan, *, identifier_system: str,
                       authored: date, renew_for: Duration = Duration(12, "mo")
                       ) -> dict[str, Any]:
    prior = proposal.medication
    visit_day = plan.visit.day
    assert prior is not None and visit_day is not None
    raw = prior.raw
    resource: dict[str, Any] = {
        "resourceType": "MedicationRequest",
        "identifier": [{"system": identifier_system, "value": proposal.identifier}],
        "status": "draft",
        "intent": "proposal",
        "subject": {"reference": f"Patient/{plan.visit.patient_id}"},
        "authoredOn": authored.isoformat(),
        "priorPrescription": _reference(prior.ref, prior.medication.label()),
        "note": [*_notes(proposal), {"text": (
            f"Renewal for {renew_for.words()}: the physician decides and signs."
            if proposal.order.role == Role.PHYSICIAN else
            f"Renewal for {renew_for.words()} under protocol "
            f"({proposal.order.role.performer}).")}],
    }
    for name in ("medicationCodeableConcept", "medicationReference", "dosageInstruction"):
        if name in raw:
            resource[name] = raw[name]
    dispense: dict[str, Any] = {"validityPeriod": {"start": visit_day.isoformat(),
                                                   "end": renew_for.after(visit_day).isoformat()}}
    prior_dispense = raw.get("dispenseRequest") or {}
    for name in ("quantity", "expectedSupplyDuration"):
        if name in prior_dispense:
            dispense[name] = prior_dispense[name]
    if prior.supply_days:
        days = (renew_for.after(visit_day) - visit_day).days
        dispense["numberOfRepeatsAllowed"] = max(0, -(-days // prior.supply_days) - 1)
    resource["dispenseRequest"] = dispense
    return resource


def _validate(resource: dict[str, Any]) -> None:
    model = ServiceRequest if resource["resourceType"] == "ServiceRequest" else MedicationRequest
    if resource.get("status") != "draft" or resource.get("intent") != "proposal":
        raise ProposalError("proposals are always status=draft, intent=proposal")
    try:
        SHAPES.validate(model, resource)
    except ValueError as exc:
        raise ProposalError(f"{resource['resourceType']} proposal does not validate as FHIR "
                            f"R4B: {exc}") from exc


def _full_url(system: str, value: str) -> str:
    """A stable urn:uuid for the entry, so the same plan writes byte-identical Bundles."""
    return f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, f'{system}|{value}')}"


@dataclass(frozen=True)
class VisitProposals:
    summaries: tuple[ProposalSummary, ...]
    bundle: dict[str, Any] | None  # the transaction to write; None when nothing to write


def plan_proposals(plan: VisitPlan, record: PatientRecord, *, identifier_system: str,
                   authored: date, already_this_run: Sequence[tuple[str, str]] = (),
                   same_day: SameDay = SameDay(), dating: Dating | None = None,
                   labs_only: bool = False) -> VisitProposals:
    """Merge, de-duplicate against the chart, build and validate the visit's transaction.

    `already_this_run` holds (resource type, code) handled at an earlier visit of the same
    patient in this run — proposed, already written, declined or done there (two
    appointments the same day: one draw, not two; a revoked proposal is not re-proposed for
    the second visit).

    `same_day`: which of the patient's appointments that day draws the pre-visit labs and
    which does what is done at a visit — screenings, vaccines, renewals. What another
    appointment does is `earlier-visit` / `later-visit` here (an 8:00 lab draw before a 9:20
    physician visit gets the labs, the physician visit the rest); at a lone lab-only
    appointment what is done at a visit is `lab-only`. `dating` dates each order (see
    merge_orders). `labs_only`: propose only pre-visit labs (a visit further out, whose other
    work is proposed the night before it).
    """
    summaries: list[ProposalSummary] = []
    entries: list[dict[str, Any]] = []
    for proposal in merge_orders(plan, record, dating=dating):
        if labs_only and not proposal.order.before_visit:
            continue
        outcome, existing = existing_outcome(proposal, record.requests, identifier_system)
        where = same_day.labs if proposal.order.before_visit else same_day.visit_work
        if where != Where.HERE and (outcome == ProposalOutcome.PROPOSED or (
                outcome == ProposalOutcome.ALREADY_OPEN and (
                    proposal.order.before_visit or _ours(record.requests, existing,
                                                         identifier_system)))):
            # The other appointment's work, whoever's open order it is (ours for it, on a
            # re-run, is that appointment's too): not a second task here.
            outcome, existing = _ELSEWHERE[where], None
        # The earlier visit's order (ours, written by this or an earlier run) is not
        # "someone's open order": say earlier-visit, so that a re-run reads like the first run.
        # Someone's open lab order is drawn at the earlier visit too: not a second task here.
        if (outcome == ProposalOutcome.PROPOSED or (outcome == ProposalOutcome.ALREADY_OPEN
                                                    and proposal.order.before_visit)) \
                and (proposal.resource_type, proposal.order.code) in already_this_run:
            outcome, existing = ProposalOutcome.EARLIER_VISIT, None
        resource = None
        if outcome == ProposalOutcome.PROPOSED:
            if proposal.resource_type == "ServiceRequest":
                resource = service_request(proposal, plan, identifier_system=identifier_system,
                                           authored=authored)
            else:
                resource = medication_request(proposal, plan,
                                              identifier_system=identifier_system,
                                              authored=authored)
            _validate(resource)
            entries.append({
                "fullUrl": _full_url(identifier_system, proposal.identifier),
                "resource": resource,
                "request": {"method": "POST", "url": proposal.resource_type,
                            "ifNoneExist": f"identifier={identifier_system}|"
                                           f"{proposal.identifier}"},
            })
        summaries.append(ProposalSummary(
            resource_type=proposal.resource_type, identifier=proposal.identifier,
            code=proposal.order.code, display=proposal.order.display,
            rule_ids=proposal.rule_ids, occurrence=proposal.occurrence,
            role=proposal.order.role, outcome=outcome, existing=existing,
            occurrence_start=proposal.occurrence_start))
    bundle = None
    if entries:
        bundle = {"resourceType": "Bundle", "type": "transaction", "entry": entries}
        try:
            SHAPES.validate(Bundle, bundle)
        except ValueError as exc:
            raise ProposalError(f"transaction Bundle does not validate: {exc}") from exc
    return VisitProposals(tuple(summaries), bundle)
