"""Who does what for a visit: the tasks each role takes from a VisitPlan.

Everything a person relies on — who does it, the draw-by date, whether the patient's other
visit that day does it — is decided here, in plain Python, and tested; the templates only
lay it out.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date

from previsit.plan import (
    Finding,
    FindingFlag,
    Kind,
    Order,
    ProposalOutcome,
    ProposalSummary,
    Role,
    VisitPlan,
)
from previsit.sheets.formatting import FLAG_WORDS, format_short_day


@dataclass(frozen=True)
class Task:
    """One thing one role does for one visit."""

    role: Role
    action: str  # "Draw by Tue Nov 24", "Offer", "Review", …
    subject: str  # what it is done to: the rule's title, with the reason for a review
    finding: Finding
    review: bool = False  # a physician's decision rather than prepared work

    @property
    def what(self) -> str:
        return f"{self.action}: {self.subject}"


def draw_by(plan: VisitPlan, finding: Finding, order: Order) -> date | None:
    """When a pre-visit lab must be drawn: the proposal's occurrence when one was written
    (what the EHR holds), else the visit date less the order's lead time."""
    proposal = proposal_for(plan, finding, order)
    if proposal is not None and proposal.occurrence is not None:
        return proposal.occurrence
    visit_day = plan.visit.day
    return order.latest_draw(visit_day) if visit_day else None


def at_check_in(plan: VisitPlan, finding: Finding, order: Order) -> bool:
    """A pre-visit lab drawn when the patient arrives: dated the visit day (the next clinic
    day's labs not ordered ahead, or not drawn yet; a lab-only appointment's)."""
    return draw_by(plan, finding, order) == plan.visit.day


def draw_words(plan: VisitPlan, finding: Finding, order: Order) -> str:
    """When to draw, as the sheet says it: "draw at check-in", "draw by Sat Nov 28 (from
    Tue Nov 24)" for a window, "draw by Sat Nov 28"."""
    if at_check_in(plan, finding, order):
        return "draw at check-in"
    end = draw_by(plan, finding, order)
    proposal = proposal_for(plan, finding, order)
    start = proposal.occurrence_start if proposal is not None else None
    since = f" (from {format_short_day(start)})" if start and end and start < end else ""
    return f"draw by {format_short_day(end) or 'the visit'}{since}"


def proposal_for(plan: VisitPlan, finding: Finding, order: Order) -> ProposalSummary | None:
    """The proposal written for an order. Proposals are merged per code across rules, so
    the code decides, and the rule id breaks ties (a renewal without an RxNorm coding has
    an empty code: its display has to match as well)."""
    rule_id = finding.rule_id
    same_code = [p for p in plan.proposals if p.code == order.code]
    if order.code:
        for p in same_code:
            if rule_id in p.rule_ids:
                return p
        return same_code[0] if same_code else None
    for p in same_code:
        if rule_id in p.rule_ids and p.display == order.display:
            return p
    return None


def review_reasons(finding: Finding) -> list[str]:
    """Why a physician must look, most pressing first (none for a rule whose role is
    physician, such as lung or cervical screening: that needs no further reason)."""
    return [words for flag, words in FLAG_WORDS.items() if flag in finding.flags]


def with_reason(text: str, finding: Finding) -> str:
    reasons = review_reasons(finding)
    return f"{text} ({reasons[0]})" if reasons else text


def needs_review(finding: Finding) -> bool:
    # A satisfied prescription of a controlled substance keeps its flags but asks for
    # nothing; an abnormal last value is worth a look even when the test is up to date.
    return finding.needs_physician and (finding.status.actionable
                                        or FindingFlag.ABNORMAL in finding.flags)


# The outcomes that mean "the patient's other visit that day does this", with the flag
# the huddle shows for them.
ELSEWHERE = {ProposalOutcome.EARLIER_VISIT: "Prepared for earlier visit",
             ProposalOutcome.LATER_VISIT: "At later visit"}


def handled_elsewhere(plan: VisitPlan, finding: Finding) -> ProposalOutcome | None:
    """For a patient with two appointments the same day (a lab draw, then the physician
    visit): "earlier-visit" or "later-visit" when every order of an actionable finding went
    to the other appointment. That visit's row and role lists carry the work, so it is not
    counted again here. None when the work is this visit's."""
    if not finding.status.actionable or not finding.orders:
        return None
    outcomes = {p.outcome if p else None
                for p in (proposal_for(plan, finding, o) for o in finding.orders)}
    if len(outcomes) == 1:
        outcome = outcomes.pop()
        return outcome if outcome in ELSEWHERE else None
    return None


def prepared_here(plan: VisitPlan) -> list[Finding]:
    """The actionable findings this visit prepares (not those of the patient's other visit)."""
    return [f for f in plan.actionable if handled_elsewhere(plan, f) is None]


def before_orders(finding: Finding) -> list[Order]:
    return [o for o in finding.orders if o.before_visit]


def _task(role: Role, plan: VisitPlan, finding: Finding, orders: Sequence[Order]) -> Task:
    if finding.not_before is not None:
        # due, but not allowed at this visit (a minimum interval, the influenza season)
        return Task(role, f"Schedule from {format_short_day(finding.not_before)}",
                    finding.title, finding)
    if orders and all(o.before_visit for o in orders):
        # The rule's title, not the orders' long LOINC names: the visit sheet has those.
        if all(at_check_in(plan, finding, o) for o in orders):
            return Task(role, "Draw at check-in", finding.title, finding)
        days = sorted({d for d in (draw_by(plan, finding, o) for o in orders) if d})
        action = f"Draw by {format_short_day(days[0])}" if days else "Draw before the visit"
        return Task(role, action, finding.title, finding)
    if finding.kind == Kind.RENEWAL:
        return Task(role, "Prepare for signature", finding.title, finding)
    if finding.kind == Kind.LAB:
        return Task(role, "Order at the visit",
                    ", ".join(o.display for o in orders) or finding.title, finding)
    if finding.role == Role.PHYSICIAN:
        return Task(role, "Decide", with_reason(finding.title, finding), finding)
    return Task(role, "Offer", finding.title, finding)


def _review(finding: Finding) -> Task:
    if finding.kind == Kind.RENEWAL:
        return Task(Role.PHYSICIAN, "Decide on renewal",
                    with_reason(short_title(finding), finding), finding, True)
    return Task(Role.PHYSICIAN, "Review", with_reason(finding.title, finding), finding, True)


def short_title(finding: Finding) -> str:
    """A renewal's title is "Renew <drug>": in a list of renewals the drug is enough."""
    return finding.title.removeprefix("Renew ") if finding.kind == Kind.RENEWAL \
        else finding.title


def tasks(plan: VisitPlan) -> list[Task]:
    """Every task of a planned visit: one per role that acts on an actionable finding
    (orders can name different roles), plus a physician review where one is flagged."""
    if plan.failed:
        return []
    out: list[Task] = []
    for finding in plan.findings:
        roles_done: set[Role] = set()
        if finding.status.actionable and handled_elsewhere(plan, finding) is None:
            by_role: dict[Role, list[Order]] = {}
            for order in finding.orders:
                by_role.setdefault(order.role, []).append(order)
            if not by_role and not finding.needs_physician:
                by_role[finding.role] = []
            for role, orders in by_role.items():
                out.append(_task(role, plan, finding, orders))
                roles_done.add(role)
        if needs_review(finding) and Role.PHYSICIAN not in roles_done:
            out.append(_review(finding))
    return out


def role_counts(plans: Iterable[VisitPlan]) -> dict[Role, int]:
    counts = dict.fromkeys(Role, 0)
    for plan in plans:
        for task in tasks(plan):
            counts[task.role] = counts.get(task.role, 0) + 1
    return counts
