"""What a clinician does with a proposal, as FHIR: accept, dismiss, propose now.

Each action is one transaction Bundle that changes the chart and records who did it:

- **accept** follows the FHIR request pattern: a new request with `intent=order`,
  `status=draft` (ready for the EHR's signing workflow, never signed by previsit),
  `basedOn` the proposal and `requester` the signed-in user; the proposal becomes
  `completed`. The order carries its own identifier derived from the proposal's, written
  with a conditional create: accepting twice (a double click, two tabs) makes one order.
- **dismiss** sets the proposal `revoked` with the reason (`statusReason`; R4 ServiceRequest
  has no such element, so the core `request-statusReason` extension carries it there). The
  nightly run never re-proposes our revoked proposal, and `previsit.suppressions` keeps it
  from proposing the finding at the patient's next visits for a while.
- **propose now** writes the proposal the nightly run would write (same resource, same
  identifier, conditional create), so the run later finds it already written.

Every action carries a `Provenance` (who, when, what) in the same transaction. An update
names the version it changes (`ifMatch`), so a proposal changed meanwhile by someone else
is refused rather than overwritten.
"""

from __future__ import annotations

import copy
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from fhir.resources.R4B.bundle import Bundle

from previsit.errors import ProposalError
from previsit.identifiers import stable_token
from previsit.suppressions import DECLINE_REASON_SYSTEM, DeclineReason
from previsit.validation import SHAPES

STATUS_REASON_EXTENSION = "http://hl7.org/fhir/StructureDefinition/request-statusReason"
DATA_OPERATION = "http://terminology.hl7.org/CodeSystem/v3-DataOperation"
PARTICIPANT_TYPE = "http://terminology.hl7.org/CodeSystem/provenance-participant-type"
REQUEST_TYPES = ("ServiceRequest", "MedicationRequest")
# Elements of a proposal that belong to it alone and are not copied into the order.
_NOT_COPIED = ("id", "meta", "identifier", "text", "basedOn", "statusReason", "extension",
               "requester")


@dataclass(frozen=True)
class Actor:
    """Who acts: the signed-in user as a reference relative to the FHIR base."""

    reference: str  # "Practitioner/123"
    display: str | None = None


def _urn(*parts: str) -> str:
    return f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, '|'.join(parts))}"


def _ref(resource: Mapping[str, Any]) -> str:
    return f"{resource['resourceType']}/{resource['id']}"


def _if_match(resource: Mapping[str, Any]) -> dict[str, str]:
    version = (resource.get("meta") or {}).get("versionId")
    return {"ifMatch": f'W/"{version}"'} if isinstance(version, str) and version else {}


def _check_proposal(resource: Mapping[str, Any], identifier_system: str) -> str:
    """The proposal's previsit identifier; ProposalError unless it is an open proposal of ours."""
    if resource.get("resourceType") not in REQUEST_TYPES or not resource.get("id"):
        raise ProposalError("only a ServiceRequest or MedicationRequest can be acted on")
    if resource.get("intent") != "proposal":
        raise ProposalError(f"{_ref(resource)} is not a proposal (intent "
                            f"{resource.get('intent')!r})")
    if resource.get("status") not in ("draft", "active"):
        raise ProposalError(f"{_ref(resource)} is already {resource.get('status')}; reload "
                            "the page to see its current state")
    for identifier in resource.get("identifier") or ():
        if isinstance(identifier, Mapping) and identifier.get("system") == identifier_system \
                and isinstance(identifier.get("value"), str):
            return str(identifier["value"])
    raise ProposalError(f"{_ref(resource)} is not a previsit proposal")


def provenance(*, targets: Sequence[str], actor: Actor, when: datetime, activity: str,
               text: str, sources: Sequence[str] = ()) -> dict[str, Any]:
    """A Provenance: the user as author, previsit as the software that assembled it."""
    author: dict[str, Any] = {"reference": actor.reference}
    if actor.display:
        author["display"] = actor.display
    resource: dict[str, Any] = {
        "resourceType": "Provenance",
        "target": [{"reference": t} for t in targets],
        "recorded": when.isoformat(timespec="seconds"),
        "activity": {"coding": [{"system": DATA_OPERATION, "code": activity}], "text": text},
        "agent": [
            {"type": {"coding": [{"system": PARTICIPANT_TYPE, "code": "author"}]},
             "who": author},
            {"type": {"coding": [{"system": PARTICIPANT_TYPE, "code": "assembler"}]},
             "who": {"display": "previsit"}},
        ],
    }
    if sources:
        resource["entity"] = [{"role": "source", "what": {"reference": s}} for s in sources]
    return resource


def _transaction(entries: list[dict[str, Any]]) -> dict[str, Any]:
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": entries}
    try:
        SHAPES.validate(Bundle, bundle)
    except ValueError as exc:
        raise ProposalError(f"the action's transaction does not validate: {exc}") from exc
    return bundle


def order_identifier(proposal_identifier: str) -> str:
    """The identifier of the order made from a proposal: one order per proposal."""
    return stable_token("pv-order", proposal_identifier)


def accept(proposal: Mapping[str, Any], *, actor: Actor, when: datetime,
           identifier_system: str) -> dict[str, Any]:
    """The transaction that turns a proposal into an order-ready draft request."""
    value = _check_proposal(proposal, identifier_system)
    ref = _ref(proposal)
    order = {k: copy.deepcopy(v) for k, v in proposal.items() if k not in _NOT_COPIED}
    order_value = order_identifier(value)
    order.update({
        "identifier": [{"system": identifier_system, "value": order_value}],
        "status": "draft", "intent": "order",
        "basedOn": [{"reference": ref}],
        "requester": {"reference": actor.reference,
                      **({"display": actor.display} if actor.display else {})},
        "authoredOn": when.isoformat(timespec="seconds"),
    })
    done = {**copy.deepcopy(dict(proposal)), "status": "completed"}
    order_url = _urn(identifier_system, order_value)
    return _transaction([
        {"fullUrl": order_url, "resource": order,
         "request": {"method": "POST", "url": proposal["resourceType"],
                     "ifNoneExist": f"identifier={identifier_system}|{order_value}"}},
        {"resource": done, "request": {"method": "PUT", "url": ref, **_if_match(proposal)}},
        {"resource": provenance(targets=[order_url, ref], actor=actor, when=when,
                                activity="CREATE", text="previsit: proposal accepted as an "
                                "order, ready for signature", sources=[ref]),
         "request": {"method": "POST", "url": "Provenance"}},
    ])


def _revoked(resource: Mapping[str, Any], reason: DeclineReason, text: str | None,
             actor: Actor, when: datetime) -> tuple[dict[str, Any], str]:
    """A copy of the proposal, revoked with the reason; and the reason in words."""
    words = f"{reason.display}: {text}" if text else reason.display
    concept = {"coding": [{"system": DECLINE_REASON_SYSTEM, "code": reason.value,
                           "display": reason.display}], "text": words}
    revoked = copy.deepcopy(dict(resource))
    revoked["status"] = "revoked"
    if revoked["resourceType"] == "MedicationRequest":
        revoked["statusReason"] = concept
    else:
        revoked["extension"] = [e for e in revoked.get("extension") or ()
                                if e.get("url") != STATUS_REASON_EXTENSION]
        revoked["extension"].append({"url": STATUS_REASON_EXTENSION,
                                     "valueCodeableConcept": concept})
    revoked["note"] = [*(revoked.get("note") or ()),
                       {"text": f"Dismissed in previsit: {words}",
                        "authorReference": {"reference": actor.reference},
                        "time": when.isoformat(timespec="seconds")}]
    return revoked, words


def dismiss(proposal: Mapping[str, Any], *, reason: DeclineReason, text: str | None,
            actor: Actor, when: datetime, identifier_system: str) -> dict[str, Any]:
    """The transaction that revokes a proposal with the clinician's reason."""
    _check_proposal(proposal, identifier_system)
    ref = _ref(proposal)
    revoked, words = _revoked(proposal, reason, text, actor, when)
    return _transaction([
        {"resource": revoked, "request": {"method": "PUT", "url": ref, **_if_match(proposal)}},
        {"resource": provenance(targets=[ref], actor=actor, when=when, activity="ABORT",
                                text=f"previsit: proposal dismissed ({words})"),
         "request": {"method": "POST", "url": "Provenance"}},
    ])


def dismiss_unwritten(entry: Mapping[str, Any], *, reason: DeclineReason, text: str | None,
                      actor: Actor, when: datetime) -> dict[str, Any]:
    """Dismissing a proposal the nightly run has not written yet: it is written revoked
    (same identifier, conditional create), so the run finds it declined."""
    _check_entry(entry)
    revoked, words = _revoked(entry["resource"], reason, text, actor, when)
    full_url = str(entry["fullUrl"])
    return _transaction([
        {**copy.deepcopy(dict(entry)), "resource": revoked},
        {"resource": provenance(targets=[full_url], actor=actor, when=when, activity="ABORT",
                                text=f"previsit: proposal dismissed before it was written "
                                     f"({words})"),
         "request": {"method": "POST", "url": "Provenance"}},
    ])


def _check_entry(entry: Mapping[str, Any]) -> None:
    request = entry.get("request") or {}
    if request.get("method") != "POST" or not request.get("ifNoneExist") \
            or not entry.get("fullUrl"):
        raise ProposalError("a proposal is written only as a conditional create")


def propose_now(entry: Mapping[str, Any], *, actor: Actor, when: datetime) -> dict[str, Any]:
    """The transaction that writes one proposal ahead of the nightly run: `entry` is the
    run's own transaction entry for it (previsit.proposals.plan_proposals)."""
    _check_entry(entry)
    full_url = str(entry["fullUrl"])
    return _transaction([
        copy.deepcopy(dict(entry)),
        {"resource": provenance(targets=[full_url], actor=actor, when=when,
                                activity="CREATE", text="previsit: proposal written on "
                                "request, ahead of the nightly run"),
         "request": {"method": "POST", "url": "Provenance"}},
    ])
