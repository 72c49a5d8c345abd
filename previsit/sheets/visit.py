"""The per-visit planning sheet's view-model: what the sheet shows, decided in Python.

Sections follow the order a team works (AMA STEPS Forward, "Pre-Visit Planning"): labs
drawn before the visit, what to offer or sign at the visit, what only the physician can
decide, what could not be decided from the record, and what is up to date. The printed
sheet, the in-EHR page and anything else that shows one visit render this, never re-derive
it from the findings.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date

from previsit.plan import (
    Finding,
    Kind,
    LabProgress,
    LabState,
    Order,
    ProposalOutcome,
    Role,
    Status,
    VisitPlan,
)
from previsit.sheets.filenames import visit_sheet_filename
from previsit.sheets.formatting import (
    KIND_ORDER,
    NO_PROPOSAL,
    OUTCOME_WORDS,
    STATUS_LABELS,
    STATUS_MARKS,
    format_day,
    format_short_day,
    format_time,
    ref_label,
    sex_label,
)
from previsit.sheets.tasks import (
    before_orders,
    draw_by,
    draw_words,
    needs_review,
    proposal_for,
    review_reasons,
    role_counts,
)


@dataclass(frozen=True)
class OrderLine:
    display: str
    code: str
    when: str | None  # "draw by Mon Nov 23" for a pre-visit lab
    draft: str  # whether a draft order was written, in words
    draft_state: str  # written / open / earlier / dry-run / none (css)
    existing: str | None = None  # the open order that made a draft unnecessary
    # The proposal's idempotency identifier and type, for whoever acts on it (the app).
    identifier: str | None = None
    resource_type: str | None = None
    progress: str | None = None  # what became of the lab ordered on an earlier night


@dataclass(frozen=True)
class DraftLine:
    """The "Draft order" cell: one line when every order of an item fared the same."""

    text: str
    state: str
    of: str | None = None  # the order it is about, when the item's orders differ
    existing: str | None = None


@dataclass(frozen=True)
class Item:
    title: str
    status: str
    status_key: str
    mark: str
    why: str
    role: str
    kind: str
    orders: tuple[OrderLine, ...]
    drafts: tuple[DraftLine, ...]
    tags: tuple[str, ...]  # "Controlled substance", "Abnormal last value", …
    note: str | None  # where else the item is worked, or why there is no draft
    brief: str  # the one-line form for the compact up-to-date list
    rule_id: str = ""  # which rule's finding this is (what a dismissal names)


@dataclass(frozen=True)
class VisitSheet:
    anchor: str
    appointment_id: str
    name: str | None
    age: str | None
    sex: str | None
    mrn: str | None
    day: str | None
    time: str | None
    practitioner: str | None
    location: str | None
    visit_type: str | None
    reason: str | None
    failed: str | None
    issues: tuple[str, ...]
    before: tuple[Item, ...]
    resulted: tuple[str, ...]  # pre-visit labs ordered earlier whose results came back
    at_visit: tuple[Item, ...]
    review: tuple[Item, ...]
    unknown: tuple[Item, ...]
    up_to_date: tuple[Item, ...]
    not_applicable: int
    roles: tuple[tuple[str, int], ...]
    checks: tuple[str, ...] = ()  # "check this value": implausible results, not used
    not_planned: str | None = None  # deliberately not planned (a deceased patient)


def _tags(finding: Finding) -> tuple[str, ...]:
    return tuple(reason.capitalize() for reason in review_reasons(finding))


# What became of a pre-visit lab ordered on an earlier night and not resulted, in words.
_PROGRESS_WORDS = {LabState.TO_DRAW: "ordered {day}, accepted, not resulted yet",
                   LabState.UNSIGNED: "proposed {day}, not signed yet: sign before drawing",
                   LabState.DISMISSED: "proposed {day}, dismissed by a clinician"}


def _progress(plan: VisitPlan, order: Order) -> str | None:
    for lab in plan.labs:
        if lab.code == order.code and lab.state in _PROGRESS_WORDS:
            return _PROGRESS_WORDS[lab.state].format(
                day=format_short_day(lab.ordered_on) or "earlier")
    return None


def _resulted(lab: LabProgress) -> str:
    return (f"{lab.result} ({format_short_day(lab.result_day) or 'date not recorded'}; "
            f"ordered {format_short_day(lab.ordered_on) or 'earlier'})")


def _order_line(plan: VisitPlan, finding: Finding, order: Order) -> OrderLine:
    proposal = proposal_for(plan, finding, order)
    # Only a pre-visit lab has a date of its own, and not one a clinician declined.
    drawn = order.before_visit and (proposal is None or proposal.outcome not in (
        ProposalOutcome.DECLINED, ProposalOutcome.DONE))
    when = draw_words(plan, finding, order) if drawn else None
    if proposal is None:
        draft, state = NO_PROPOSAL
    else:
        draft, state = OUTCOME_WORDS[proposal.outcome]
    return OrderLine(display=order.display, code=order.code, when=when, draft=draft,
                     draft_state=state,
                     existing=proposal.existing if proposal is not None else None,
                     identifier=proposal.identifier if proposal is not None else None,
                     resource_type=proposal.resource_type if proposal is not None else None,
                     progress=_progress(plan, order) if order.before_visit else None)


def _item(plan: VisitPlan, finding: Finding, note: str | None = None) -> Item:
    # The explanation already gives the dates that matter ("due since", "next due").
    # Two requirements of one rule can order the same thing (Td/Tdap): one line each.
    unique = {(o.system, o.code, o.display): o for o in finding.orders}.values()
    orders = tuple(_order_line(plan, finding, o) for o in unique)
    if note is None and finding.not_before is not None:
        note = f"Not before {format_short_day(finding.not_before)}: schedule it then"
    if note is None and finding.status.actionable and not finding.orders:
        note = "Physician decides" if finding.needs_physician else "Nothing to order"
    return Item(title=finding.title, status=STATUS_LABELS[finding.status],
                status_key=finding.status.value, mark=STATUS_MARKS[finding.status],
                why=finding.explanation, role=finding.role.label, kind=finding.kind.value,
                orders=orders, drafts=_drafts(orders), tags=_tags(finding), note=note,
                brief=_brief(finding), rule_id=finding.rule_id)


def _drafts(orders: Sequence[OrderLine]) -> tuple[DraftLine, ...]:
    outcomes = {(o.draft, o.draft_state, o.existing) for o in orders}
    if len(outcomes) == 1:
        draft, state, existing = outcomes.pop()
        return (DraftLine(draft, state, None, existing),)
    return tuple(DraftLine(o.draft, o.draft_state, o.display, o.existing) for o in orders)


def _brief(finding: Finding) -> str:
    """Up to date, in a few words: when it was last done and when it falls due again. An
    exclusion keeps its whole reason: that is the part worth reading."""
    if finding.status != Status.SATISFIED:
        return finding.explanation
    if finding.kind == Kind.RENEWAL:
        return f"runs until {finding.due_date.isoformat()}" if finding.due_date \
            else finding.explanation
    done = [e.day for e in finding.evidence if e.purpose == "result" and e.day]
    parts = [f"last {max(done).isoformat()}"] if done else []
    parts.append(f"next due {finding.due_date.isoformat()}" if finding.due_date
                 else "not repeated")
    return ", ".join(parts)


def _sort_key(finding: Finding) -> tuple[int, int, str]:
    return (KIND_ORDER[finding.kind], -finding.status.severity, finding.title.casefold())


def visit_sheet(plan: VisitPlan) -> VisitSheet:
    """The per-visit sheet as the template shows it.

    What only a physician does (role physician: shared-decision screenings, controlled
    substances) is under physician review alone. Work another role prepares but a
    physician must look at (a lab the MA draws whose last value was abnormal) is in its
    work section and also on the review list, marked as such."""
    before: list[Finding] = []
    at_visit: list[Finding] = []
    review: list[Finding] = []
    for finding in plan.findings:
        if finding.status.actionable:
            if before_orders(finding):
                before.append(finding)
            elif finding.role != Role.PHYSICIAN and (finding.orders or
                                                     not finding.needs_physician):
                at_visit.append(finding)
        if needs_review(finding):
            review.append(finding)

    def draw_key(f: Finding) -> tuple[date, tuple[int, int, str]]:
        days = [d for d in (draw_by(plan, f, o) for o in before_orders(f)) if d]
        return (min(days) if days else date.max, _sort_key(f))

    def review_note(f: Finding) -> str | None:
        if f in before:
            return "Drawn before the visit (see above)"
        if f in at_visit:
            return "Prepared for the visit (see above)"
        return None

    before.sort(key=draw_key)
    at_visit.sort(key=_sort_key)
    review.sort(key=lambda f: (-f.status.severity, f.title.casefold()))
    unknown = sorted(plan.by_status(Status.UNKNOWN), key=_sort_key)
    up_to_date = sorted(plan.by_status(Status.SATISFIED, Status.EXCLUDED),
                        key=lambda f: (-f.status.severity, f.title.casefold()))
    counts = role_counts([plan])
    visit = plan.visit
    return VisitSheet(
        anchor=visit_sheet_filename(plan, "x").removesuffix(".x"),
        appointment_id=visit.appointment_id, name=plan.patient_name,
        age=f"{plan.patient_age} y" if plan.patient_age is not None else None,
        sex=sex_label(plan.patient_sex), mrn=plan.patient_mrn,
        day=format_day(visit.day), time=format_time(visit.start),
        practitioner=ref_label(visit.practitioner), location=ref_label(visit.location),
        visit_type=visit.service_type or visit.description, reason=visit.reason,
        failed=plan.failed, issues=plan.issues,
        before=tuple(_item(plan, f) for f in before),
        resulted=tuple(_resulted(lab) for lab in plan.labs if lab.state == LabState.RESULTED),
        at_visit=tuple(_item(plan, f) for f in at_visit),
        review=tuple(_item(plan, f, review_note(f)) for f in review),
        unknown=tuple(_item(plan, f) for f in unknown),
        up_to_date=tuple(_item(plan, f) for f in up_to_date),
        not_applicable=len(plan.by_status(Status.NOT_APPLICABLE)),
        roles=tuple((r.label, counts[r]) for r in Role), checks=plan.checks,
        not_planned=plan.not_planned)
