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
- for a patient with two appointments the same day: the labs at the first (`earlier-visit`
  at the second), everything done at a visit at the last (`later-visit` at the first).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.medicationrequest import MedicationRequest
from fhir.resources.R4B.servicerequest import ServiceRequest

from previsit.codes import SNOMED
from previsit.errors import ProposalError
from previsit.identifiers import proposal_identifier
from previsit.intervals import Duration
from previsit.plan import Finding, Order, OrderCategory, ProposalOutcome, ProposalSummary, VisitPlan
from previsit.record import MedicationOrder, OpenRequest, PatientRecord

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




@dataclass
class Proposal:
    """One thing to write for a visit, merged across the rules that want it."""

    order: Order
    findings: list[Finding] = field(default_factory=list)
    identifier: str = ""
    occurrence: date | None = None
    medication: MedicationOrder | None = None

    @property
    def rule_ids(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(f.rule_id for f in self.findings))

    @property
    def resource_type(self) -> str:
        return "MedicationRequest" if self.order.category == OrderCategory.MEDICATION \
            else "ServiceRequest"


def merge_orders(plan: VisitPlan, record: PatientRecord, *,
                 draw_here: bool = False) -> list[Proposal]:
    """One proposal per code for the visit (potassium due under two rules: one order).

    A pre-visit lab is dated its lead time before the visit; with `draw_here` (the patient
    has a later appointment the same day, which this one prepares: a lab draw before the
    physician visit) it is dated this visit's day, since it is drawn here.
    """
    visit_day = plan.visit.day
    assert visit_day is not None
    meds = {m.ref: m for m in record.medications}
    merged: dict[tuple[str, str], Proposal] = {}
    for finding in plan.findings:
        if not finding.status.actionable:
            continue
        for order in finding.orders:
            key = (order.system, order.code or finding.medication_ref or "")
            proposal = merged.get(key)
            if proposal is None:
                occurrence = (visit_day - timedelta(days=order.lead_days)
                              if order.before_visit and not draw_here else visit_day)
                proposal = Proposal(order=order, occurrence=occurrence,
                                    identifier=proposal_identifier(
                                        plan.visit.appointment_id, order.system,
                                        order.code or finding.medication_ref or ""),
                                    medication=meds.get(finding.medication_ref or ""))
                merged[key] = proposal
            elif order.before_visit and not draw_here and proposal.occurrence and \
                    order.lead_days and \
                    visit_day - timedelta(days=order.lead_days) < proposal.occurrence:
                # the longest lead time wins, so every rule's result is in on time
                proposal.occurrence = visit_day - timedelta(days=order.lead_days)
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
    if proposal.occurrence:
        resource["occurrenceDateTime"] = proposal.occurrence.isoformat()
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
        "note": [*_notes(proposal),
                 {"text": f"Renewal for {renew_for.words()} under protocol "
                          f"({proposal.order.role.performer})."}],
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
        model.model_validate(resource)
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
                   later_visit: bool = False) -> VisitProposals:
    """Merge, de-duplicate against the chart, build and validate the visit's transaction.

    `already_this_run` holds (resource type, code) handled at an earlier visit of the same
    patient in this run — proposed, already written, declined or done there (two
    appointments the same day: one draw, not two; a revoked proposal is not re-proposed for
    the second visit).

    `later_visit`: the patient has a later appointment the same day. This one then draws the
    pre-visit labs (dated today), and what is done at a visit — screenings, vaccines,
    renewals — is left to the later one (outcome `later-visit`): an 8:00 lab draw before a
    9:20 physician visit gets the labs, the physician visit the rest.
    """
    summaries: list[ProposalSummary] = []
    entries: list[dict[str, Any]] = []
    for proposal in merge_orders(plan, record, draw_here=later_visit):
        outcome, existing = existing_outcome(proposal, record.requests, identifier_system)
        if later_visit and not proposal.order.before_visit and (
                outcome == ProposalOutcome.PROPOSED or (
                    outcome == ProposalOutcome.ALREADY_OPEN and _ours(
                    record.requests, existing, identifier_system))):
            # ours for the later visit (a re-run) is that visit's, not someone's order
            outcome, existing = ProposalOutcome.LATER_VISIT, None
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
            role=proposal.order.role, outcome=outcome, existing=existing))
    bundle = None
    if entries:
        bundle = {"resourceType": "Bundle", "type": "transaction", "entry": entries}
        try:
            Bundle.model_validate(bundle)
        except ValueError as exc:
            raise ProposalError(f"transaction Bundle does not validate: {exc}") from exc
    return VisitProposals(tuple(summaries), bundle)
