"""Planning sheets: the per-visit sheet and the clinic-day huddle, as HTML (and PDF).

The templates (templates/*.html.j2 and templates/sheet.css) only lay out text. Everything
a person relies on — which section an item belongs to, who does it, the draw-by date,
whether a draft order was written, the task counts and the time estimate — is decided
here, in plain Python, and tested. Jinja2 autoescapes every value, so a FHIR string can
never become markup; `finalize` turns a stray None into a dash rather than "None".

Sections follow the order a team works (AMA STEPS Forward, "Pre-Visit Planning"): labs
drawn before the visit, what to offer or sign at the visit, what only the physician can
decide, what could not be decided from the record, and what is up to date.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import jinja2
from markupsafe import Markup, escape

from previsit.data import shipped_dir
from previsit.errors import PdfUnavailableError
from previsit.pdf import write_pdf
from previsit.plan import (
    DayPlan,
    Finding,
    Kind,
    Order,
    ProposalSummary,
    Ref,
    Role,
    Status,
    VisitPlan,
)

__all__ = [
    "Group",
    "PdfUnavailableError",
    "huddle_sheet_filename",
    "locations",
    "practitioners",
    "render_huddle",
    "render_visit_sheet",
    "render_visit_sheets",
    "select_plans",
    "tasks",
    "time_saved",
    "visit_sheet_filename",
    "write_pdf",
]

Paper = Literal["letter", "a4"]
_PAGE_SIZES: dict[str, str] = {"letter": "letter", "a4": "A4"}

ROLES: tuple[Role, ...] = (Role.MA, Role.NURSE, Role.PHARMACIST, Role.PHYSICIAN)
_KIND_ORDER = {Kind.LAB: 0, Kind.SCREENING: 1, Kind.IMMUNIZATION: 2, Kind.RENEWAL: 3}
_SEVERITY = {Status.OVERDUE: 0, Status.DUE: 1, Status.DUE_SOON: 2, Status.UNKNOWN: 3,
             Status.SATISFIED: 4, Status.EXCLUDED: 5, Status.NOT_APPLICABLE: 6}

# Shown as text and a symbol, never by colour alone: the sheets are printed in black and white.
_STATUS_LABELS = {Status.OVERDUE: "Overdue", Status.DUE: "Due", Status.DUE_SOON: "Due soon",
                  Status.UNKNOWN: "Unknown", Status.SATISFIED: "Up to date",
                  Status.EXCLUDED: "Excluded", Status.NOT_APPLICABLE: "Not applicable"}
_STATUS_MARKS = {Status.OVERDUE: "!!", Status.DUE: "!", Status.DUE_SOON: "›",
                 Status.UNKNOWN: "?", Status.SATISFIED: "✓", Status.EXCLUDED: "–",
                 Status.NOT_APPLICABLE: "·"}
_KIND_LABELS = {Kind.LAB: "Labs", Kind.SCREENING: "Screenings",
                Kind.IMMUNIZATION: "Immunizations", Kind.RENEWAL: "Renewals"}

# ProposalSummary.outcome → what the sheet's "Draft order" column says, and a css token.
_OUTCOMES: dict[str, tuple[str, str]] = {
    "proposed": ("Written", "written"),
    "already-open": ("Already ordered", "open"),
    "already-written": ("Written earlier", "earlier"),
    "earlier-visit": ("At the earlier visit today", "earlier"),
    "later-visit": ("At the later visit today", "later"),
    "declined": ("Declined earlier", "declined"),
    "done": ("Already done", "done"),
    "dry-run": ("Not written (dry run)", "dry-run"),
}
_NO_PROPOSAL = ("No draft", "none")

_WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


# --- formatting ------------------------------------------------------------------------
# Fixed English names rather than strftime("%a"), which follows the process locale.


def format_day(day: date | None) -> str | None:
    if day is None:
        return None
    return f"{_WEEKDAYS[day.weekday()]} {_MONTHS[day.month - 1]} {day.day}, {day.year}"


def format_short_day(day: date | None) -> str | None:
    if day is None:
        return None
    return f"{_WEEKDAYS[day.weekday()]} {_MONTHS[day.month - 1]} {day.day}"


def format_time(start: datetime | None) -> str | None:
    """Clock time as stored (already the clinic's local time): '9:20 AM'."""
    if start is None:
        return None
    hour = start.hour % 12 or 12
    return f"{hour}:{start.minute:02d} {'AM' if start.hour < 12 else 'PM'}"


def _sex_label(sex: str | None) -> str | None:
    if not sex or not sex.strip():
        return None
    # FHIR administrative gender "unknown" is a recorded value, but "Unknown" alone next
    # to an age reads like a missing name: say what is unknown.
    return "sex unknown" if sex.strip().lower() == "unknown" else sex.strip().capitalize()


def _ref_label(ref: Ref | None) -> str | None:
    if ref is None:
        return None
    return ref.display or ref.reference


# --- selecting visits -------------------------------------------------------------------


@dataclass(frozen=True)
class Group:
    """A practitioner or location a huddle can be selected by."""

    key: str  # what to pass as `practitioner=` / `location=`: the reference, e.g. "Location/2"
    label: str  # the display name, or the reference when there is none
    visits: int


def _bare(reference: str) -> str:
    return reference.rsplit("/", 1)[-1]


def _ref_matches(ref: Ref | None, wanted: str) -> bool:
    """A reference ("Location/2"), a bare id ("2") or the display name (any case)."""
    if ref is None:
        return False
    wanted = wanted.strip()
    if ref.reference and (ref.reference == wanted or _bare(ref.reference) == _bare(wanted)):
        return True
    display = ref.display
    return display is not None and display.strip().casefold() == wanted.casefold()


def _groups(plans: Iterable[VisitPlan], pick: Callable[[VisitPlan], Ref | None]) -> list[Group]:
    counts: dict[str, int] = {}
    labels: dict[str, str] = {}
    for plan in plans:
        ref = pick(plan)
        if ref is None or not (ref.reference or ref.display):
            continue
        key = ref.reference or ref.display or ""
        counts[key] = counts.get(key, 0) + 1
        labels.setdefault(key, ref.display or key)
    return sorted((Group(k, labels[k], n) for k, n in counts.items()),
                  key=lambda g: (g.label.casefold(), g.key))


def practitioners(day: DayPlan) -> list[Group]:
    """The practitioners with visits in the day, for choosing a huddle sheet."""
    return _groups(day.plans, lambda p: p.visit.practitioner)


def locations(day: DayPlan) -> list[Group]:
    """The locations with visits in the day, for choosing a huddle sheet."""
    return _groups(day.plans, lambda p: p.visit.location)


def select_plans(day: DayPlan, *, location: str | None = None,
                 practitioner: str | None = None) -> list[VisitPlan]:
    """The day's visits at `location` with `practitioner` (either may be None: all), in
    time order; visits with no recorded time come last."""
    chosen = [p for p in day.plans
              if (location is None or _ref_matches(p.visit.location, location))
              and (practitioner is None or _ref_matches(p.visit.practitioner, practitioner))]
    return sorted(chosen, key=_time_key)


def _time_key(plan: VisitPlan) -> tuple[int, float, str]:
    start = plan.visit.start
    # Aware datetimes from different offsets compare correctly through timestamp().
    stamp = start.timestamp() if start and start.tzinfo else (
        start.replace(tzinfo=None).timestamp() if start else 0.0)
    return (0 if start else 1, stamp, plan.visit.appointment_id)


# --- file names -----------------------------------------------------------------------

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def _safe_part(text: str) -> str:
    cleaned = _UNSAFE.sub("_", text).strip("._") or "none"
    if cleaned != text or len(cleaned) > 64:
        # Two ids that clean to the same text must not overwrite each other's file.
        digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:8]
        cleaned = f"{cleaned[:48]}-{digest}"
    return cleaned


def visit_sheet_filename(plan: VisitPlan, ext: str = "html") -> str:
    """The file name of a visit's sheet: the appointment id, never the patient's name."""
    visit = plan.visit
    key = visit.appointment_id or f"patient-{visit.patient_id}-{visit.day or 'undated'}"
    return f"visit-{_safe_part(key)}.{ext}"


def huddle_sheet_filename(day: DayPlan, *, location: str | None = None,
                     practitioner: str | None = None, ext: str = "html") -> str:
    parts = [f"huddle-{day.generated_for.isoformat()}"]
    if location:
        parts.append(f"location-{_safe_part(_bare(location))}")
    if practitioner:
        parts.append(f"practitioner-{_safe_part(_bare(practitioner))}")
    return "-".join(parts) + f".{ext}"


# --- tasks: who does what --------------------------------------------------------------


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
    return visit_day - timedelta(days=order.lead_days) if visit_day else None


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


def _review_reason(finding: Finding) -> str | None:
    """Why a physician must look, when the plan says so. A rule whose role is physician
    (lung or cervical screening) needs one without a further reason."""
    if "controlled-substance" in finding.flags:
        return "controlled substance"
    if "abnormal" in finding.flags:
        return "abnormal last value"
    if "shared-decision" in finding.flags:
        return "shared decision"
    return None


def _with_reason(text: str, finding: Finding) -> str:
    reason = _review_reason(finding)
    return f"{text} ({reason})" if reason else text


def _needs_review(finding: Finding) -> bool:
    # A satisfied prescription of a controlled substance keeps its flags but asks for
    # nothing; an abnormal last value is worth a look even when the test is up to date.
    return finding.needs_physician and (finding.status.actionable or "abnormal" in finding.flags)


_ELSEWHERE = {"earlier-visit": "Prepared for earlier visit", "later-visit": "At later visit"}


def handled_elsewhere(plan: VisitPlan, finding: Finding) -> str | None:
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
        return outcome if outcome in _ELSEWHERE else None
    return None


def _prepared_here(plan: VisitPlan) -> list[Finding]:
    """The actionable findings this visit prepares (not those of the patient's other visit)."""
    return [f for f in plan.actionable if handled_elsewhere(plan, f) is None]


def _before_orders(finding: Finding) -> list[Order]:
    return [o for o in finding.orders if o.before_visit]


def _task(role: Role, plan: VisitPlan, finding: Finding, orders: Sequence[Order]) -> Task:
    if orders and all(o.before_visit for o in orders):
        # The rule's title, not the orders' long LOINC names: the visit sheet has those.
        days = sorted({d for d in (draw_by(plan, finding, o) for o in orders) if d})
        action = f"Draw by {format_short_day(days[0])}" if days else "Draw before the visit"
        return Task(role, action, finding.title, finding)
    if finding.kind == Kind.RENEWAL:
        return Task(role, "Prepare for signature", finding.title, finding)
    if finding.kind == Kind.LAB:
        return Task(role, "Order at the visit",
                    ", ".join(o.display for o in orders) or finding.title, finding)
    if finding.role == Role.PHYSICIAN:
        return Task(role, "Decide", _with_reason(finding.title, finding), finding)
    return Task(role, "Offer", finding.title, finding)


def _review(finding: Finding) -> Task:
    if finding.kind == Kind.RENEWAL:
        return Task(Role.PHYSICIAN, "Decide on renewal",
                    _with_reason(_short_title(finding), finding), finding, True)
    return Task(Role.PHYSICIAN, "Review", _with_reason(finding.title, finding), finding, True)


def _short_title(finding: Finding) -> str:
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
        if _needs_review(finding) and Role.PHYSICIAN not in roles_done:
            out.append(_review(finding))
    return out


def role_counts(plans: Iterable[VisitPlan]) -> dict[Role, int]:
    counts = dict.fromkeys(ROLES, 0)
    for plan in plans:
        for task in tasks(plan):
            counts[task.role] = counts.get(task.role, 0) + 1
    return counts


# --- the per-visit sheet ----------------------------------------------------------------


@dataclass(frozen=True)
class OrderLine:
    display: str
    code: str
    when: str | None  # "draw by Mon Nov 23" for a pre-visit lab
    draft: str  # whether a draft order was written, in words
    draft_state: str  # written / open / earlier / dry-run / none (css)
    existing: str | None = None  # the open order that made a draft unnecessary


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
    at_visit: tuple[Item, ...]
    review: tuple[Item, ...]
    unknown: tuple[Item, ...]
    up_to_date: tuple[Item, ...]
    not_applicable: int
    roles: tuple[tuple[str, int], ...]


def _tags(finding: Finding) -> tuple[str, ...]:
    tags = []
    if "controlled-substance" in finding.flags:
        tags.append("Controlled substance")
    if "abnormal" in finding.flags:
        tags.append("Abnormal last value")
    if "shared-decision" in finding.flags:
        tags.append("Shared decision")
    return tuple(tags)


def _order_line(plan: VisitPlan, finding: Finding, order: Order) -> OrderLine:
    # Only a pre-visit lab has a date of its own; everything else happens at the visit.
    when = f"draw by {format_short_day(draw_by(plan, finding, order)) or 'the visit'}" \
        if order.before_visit else None
    proposal = proposal_for(plan, finding, order)
    if proposal is None:
        draft, state = _NO_PROPOSAL
    else:
        draft, state = _OUTCOMES.get(proposal.outcome,
                                     (proposal.outcome.replace("-", " ").capitalize(), "other"))
    return OrderLine(display=order.display, code=order.code, when=when, draft=draft,
                     draft_state=state,
                     existing=proposal.existing if proposal is not None else None)


def _item(plan: VisitPlan, finding: Finding, note: str | None = None) -> Item:
    # The explanation already gives the dates that matter ("due since", "next due").
    # Two requirements of one rule can order the same thing (Td/Tdap): one line each.
    unique = {(o.system, o.code, o.display): o for o in finding.orders}.values()
    orders = tuple(_order_line(plan, finding, o) for o in unique)
    if note is None and finding.status.actionable and not finding.orders:
        note = "Physician decides" if finding.needs_physician else "Nothing to order"
    return Item(title=finding.title, status=_STATUS_LABELS[finding.status],
                status_key=finding.status.value, mark=_STATUS_MARKS[finding.status],
                why=finding.explanation, role=finding.role.label, kind=finding.kind.value,
                orders=orders, drafts=_drafts(orders), tags=_tags(finding), note=note,
                brief=_brief(finding))


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
    return (_KIND_ORDER[finding.kind], _SEVERITY[finding.status], finding.title.casefold())


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
            if _before_orders(finding):
                before.append(finding)
            elif finding.role != Role.PHYSICIAN and (finding.orders or
                                                     not finding.needs_physician):
                at_visit.append(finding)
        if _needs_review(finding):
            review.append(finding)

    def draw_key(f: Finding) -> tuple[date, tuple[int, int, str]]:
        days = [d for d in (draw_by(plan, f, o) for o in _before_orders(f)) if d]
        return (min(days) if days else date.max, _sort_key(f))

    def review_note(f: Finding) -> str | None:
        if f in before:
            return "Drawn before the visit (see above)"
        if f in at_visit:
            return "Prepared for the visit (see above)"
        return None

    before.sort(key=draw_key)
    at_visit.sort(key=_sort_key)
    review.sort(key=lambda f: (_SEVERITY[f.status], f.title.casefold()))
    unknown = sorted(plan.by_status(Status.UNKNOWN), key=_sort_key)
    up_to_date = sorted(plan.by_status(Status.SATISFIED, Status.EXCLUDED),
                        key=lambda f: (_SEVERITY[f.status], f.title.casefold()))
    counts = role_counts([plan])
    visit = plan.visit
    return VisitSheet(
        anchor=visit_sheet_filename(plan, "x").removesuffix(".x"),
        appointment_id=visit.appointment_id, name=plan.patient_name,
        age=f"{plan.patient_age} y" if plan.patient_age is not None else None,
        sex=_sex_label(plan.patient_sex), mrn=plan.patient_mrn,
        day=format_day(visit.day), time=format_time(visit.start),
        practitioner=_ref_label(visit.practitioner), location=_ref_label(visit.location),
        visit_type=visit.service_type or visit.description, reason=visit.reason,
        failed=plan.failed, issues=plan.issues,
        before=tuple(_item(plan, f) for f in before),
        at_visit=tuple(_item(plan, f) for f in at_visit),
        review=tuple(_item(plan, f, review_note(f)) for f in review),
        unknown=tuple(_item(plan, f) for f in unknown),
        up_to_date=tuple(_item(plan, f) for f in up_to_date),
        not_applicable=len(plan.by_status(Status.NOT_APPLICABLE)),
        roles=tuple((r.label, counts[r]) for r in ROLES))


# --- the huddle -------------------------------------------------------------------------


@dataclass(frozen=True)
class Flag:
    label: str
    detail: str
    key: str  # css token


@dataclass(frozen=True)
class HuddleRow:
    anchor: str
    time: str | None
    name: str | None
    age_sex: str | None
    mrn: str | None
    visit_type: str | None
    practitioner: str | None
    location: str | None
    counts: tuple[int, ...]  # per role, in ROLES order
    flags: tuple[Flag, ...]
    failed: str | None


@dataclass(frozen=True)
class RoleTask:
    time: str | None
    name: str | None
    what: str
    review: bool


@dataclass(frozen=True)
class RoleList:
    role: str
    title: str
    tasks: tuple[RoleTask, ...]  # one line per visit
    count: int  # tasks, not visits


@dataclass(frozen=True)
class TimeSavedLine:
    kind: str
    tasks: int
    minutes_each: float
    minutes: float


@dataclass(frozen=True)
class TimeSaved:
    lines: tuple[TimeSavedLine, ...]
    total_minutes: float
    scope: str

    @property
    def total_text(self) -> str:
        hours, minutes = divmod(round(self.total_minutes), 60)
        return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min"


@dataclass(frozen=True)
class HuddleDay:
    anchor: str
    day: str | None
    rows: tuple[HuddleRow, ...]
    roles: tuple[RoleList, ...]
    totals: tuple[tuple[str, int], ...]
    appointments: int
    failed: int
    saved: TimeSaved


_ROLE_TITLES = {Role.MA: "Medical assistant", Role.NURSE: "Nurse",
                Role.PHARMACIST: "Pharmacist", Role.PHYSICIAN: "Physician"}
_ROLE_SHORT = {Role.MA: "MA", Role.NURSE: "Nurse", Role.PHARMACIST: "Pharm.",
               Role.PHYSICIAN: "Phys."}


def _age_sex(plan: VisitPlan) -> str | None:
    parts = [f"{plan.patient_age} y" if plan.patient_age is not None else None,
             _sex_label(plan.patient_sex)]
    if not any(parts):
        return None
    return " · ".join(p or "—" for p in parts)


def _flags(plan: VisitPlan) -> tuple[Flag, ...]:
    """What changes the day for this visit, most disruptive first."""
    if plan.failed:
        return ()
    out: list[Flag] = []
    here = _prepared_here(plan)
    labs = [f for f in here if _before_orders(f)]
    if labs:
        days = sorted({d for f in labs for o in _before_orders(f) if (d := draw_by(plan, f, o))})
        by = f" by {format_short_day(days[0])}" if days else ""
        out.append(Flag("Labs to draw", f"{', '.join(f.title for f in labs)}{by}", "labs"))
    overdue = [f for f in here if f.status == Status.OVERDUE and f.kind == Kind.SCREENING]
    if overdue:
        out.append(Flag("Overdue screening", ", ".join(f.title for f in overdue), "overdue"))
    renewals = [f for f in here if f.kind == Kind.RENEWAL]
    if renewals:
        names = ", ".join(_short_title(f) for f in renewals)
        out.append(Flag(f"Renewal{'s' if len(renewals) > 1 else ''}", names, "renewal"))
    review = [f for f in plan.findings if _needs_review(f)]
    if review:
        out.append(Flag("Physician review", ", ".join(
            _with_reason(_short_title(f), f) for f in review), "review"))
    for outcome, label in _ELSEWHERE.items():
        other = [f for f in plan.actionable if handled_elsewhere(plan, f) == outcome]
        if other:
            out.append(Flag(label, ", ".join(_short_title(f) for f in other), "elsewhere"))
    unknown = plan.by_status(Status.UNKNOWN)
    if unknown:
        out.append(Flag("Could not decide", ", ".join(f.title for f in unknown), "unknown"))
    if plan.issues:
        out.append(Flag("Data issues", f"{len(plan.issues)} in the record", "issues"))
    return tuple(out)


def time_saved(plans: Iterable[VisitPlan], minutes_saved: Mapping[str, float],
               scope: str = "the clinic day") -> TimeSaved:
    """Clinician minutes the prepared work saves: actionable findings per kind × the
    configured minutes per task of that kind (config [sheets] minutes_saved). Kinds the
    configuration does not name count zero minutes."""
    counts = dict.fromkeys(Kind, 0)
    for plan in plans:
        if plan.failed:
            continue
        for finding in _prepared_here(plan):  # a patient's two visits count once
            counts[finding.kind] += 1
    lines = []
    for kind in sorted(Kind, key=lambda k: _KIND_ORDER[k]):
        each = float(minutes_saved.get(kind.value, 0.0))
        lines.append(TimeSavedLine(_KIND_LABELS[kind], counts[kind], each, counts[kind] * each))
    return TimeSaved(tuple(lines), sum(line.minutes for line in lines), scope)


def _huddle_row(plan: VisitPlan) -> HuddleRow:
    counts = role_counts([plan])
    visit = plan.visit
    return HuddleRow(
        anchor=visit_sheet_filename(plan, "x").removesuffix(".x"), time=format_time(visit.start),
        name=plan.patient_name, age_sex=_age_sex(plan), mrn=plan.patient_mrn,
        visit_type=visit.service_type or visit.description or visit.reason,
        practitioner=_ref_label(visit.practitioner), location=_ref_label(visit.location),
        counts=tuple(counts[r] for r in ROLES), flags=_flags(plan), failed=plan.failed)


def _role_lists(plans: Sequence[VisitPlan]) -> tuple[RoleList, ...]:
    """Per role, one line per visit: the visit's tasks for that role grouped by action
    ("Draw by Tue Nov 24: HbA1c, lipids · Offer: influenza vaccine")."""
    lists: dict[Role, list[RoleTask]] = {r: [] for r in ROLES}
    counts: dict[Role, int] = dict.fromkeys(ROLES, 0)
    for plan in plans:
        by_role: dict[Role, dict[str, list[Task]]] = {}
        for task in tasks(plan):
            by_role.setdefault(task.role, {}).setdefault(task.action, []).append(task)
            counts[task.role] = counts.get(task.role, 0) + 1
        for role, actions in by_role.items():
            what = " · ".join(f"{action}: {', '.join(t.subject for t in group)}"
                              for action, group in actions.items())
            review = any(t.review for group in actions.values() for t in group)
            lists.setdefault(role, []).append(RoleTask(
                format_time(plan.visit.start), plan.patient_name, what, review))
    return tuple(RoleList(role.label, _ROLE_TITLES.get(role, role.label), tuple(items),
                          counts.get(role, 0))
                 for role, items in lists.items())


def _huddle_days(day: DayPlan, chosen: Sequence[VisitPlan],
                 scope_plans: Sequence[VisitPlan], minutes_saved: Mapping[str, float],
                 scope: str) -> list[HuddleDay]:
    by_day: dict[date | None, list[VisitPlan]] = {}
    for plan in chosen:
        by_day.setdefault(plan.visit.day, []).append(plan)
    if not by_day:
        by_day[day.generated_for] = []
    out = []
    for when in sorted(by_day, key=lambda d: d or date.max):
        plans = by_day[when]
        counts = role_counts(plans)
        same_day = [p for p in scope_plans if p.visit.day == when]
        out.append(HuddleDay(
            anchor=f"huddle-{when.isoformat() if when else 'undated'}",
            day=format_day(when), rows=tuple(_huddle_row(p) for p in plans),
            roles=_role_lists(plans), totals=tuple((r.label, counts[r]) for r in ROLES),
            appointments=len(plans), failed=sum(1 for p in plans if p.failed),
            saved=time_saved(same_day, minutes_saved, scope)))
    return out


# --- rendering --------------------------------------------------------------------------


def templates_dir() -> Path:
    """The shipped templates (package data in a wheel, templates/ in a checkout)."""
    return shipped_dir("templates")


def _or_missing(value: Any, placeholder: str = "—") -> Markup:
    """A value, or a visibly marked placeholder when FHIR did not give one."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return Markup('<span class="missing">{}</span>').format(placeholder)
    return escape(value)


def _finalize(value: Any) -> Any:
    return "—" if value is None else value


def _number(value: float) -> str:
    return f"{value:g}"


_ENV: jinja2.Environment | None = None


def environment() -> jinja2.Environment:
    """The Jinja2 environment: autoescape on for every template whatever its name."""
    global _ENV
    if _ENV is None:
        env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(str(templates_dir())), autoescape=True,
            undefined=jinja2.StrictUndefined, finalize=_finalize, trim_blocks=True,
            lstrip_blocks=True, keep_trailing_newline=True)
        env.filters["or_missing"] = _or_missing
        env.filters["number"] = _number
        _ENV = env
    return _ENV


def _css() -> Markup:
    # Our own stylesheet, inlined so the page needs nothing from outside. It is read as
    # text, not parsed as a template, so CSS braces never meet Jinja syntax.
    return Markup((templates_dir() / "sheet.css").read_text(encoding="utf-8"))


def _page_size(paper: str) -> str:
    try:
        return _PAGE_SIZES[paper.lower()]
    except KeyError:
        raise ValueError(f"paper must be one of {', '.join(_PAGE_SIZES)}, not {paper!r}") \
            from None


def _render(template: str, *, title: str, paper: str, **context: Any) -> str:
    return environment().get_template(template).render(
        title=title, css=_css(), page_size=_page_size(paper), **context)


def _scope(day: DayPlan, location: str | None, practitioner: str | None) -> tuple[str, str]:
    def label(groups: list[Group], wanted: str | None) -> str:
        if wanted is None:
            return "all"
        for g in groups:
            if _ref_matches(Ref(g.key, g.label if g.label != g.key else None), wanted):
                return g.label
        return wanted

    return label(locations(day), location), label(practitioners(day), practitioner)


def render_visit_sheet(plan: VisitPlan, *, paper: Paper = "letter") -> str:
    """One visit's planning sheet as a standalone HTML page."""
    sheet = visit_sheet(plan)
    title = f"Visit plan {plan.visit.appointment_id}".strip()
    return _render("visits.html.j2", title=title, paper=paper, sheets=[sheet],
                   for_day=format_day(plan.visit.day))


def render_visit_sheets(day: DayPlan, *, location: str | None = None,
                        practitioner: str | None = None, paper: Paper = "letter") -> str:
    """Every selected visit's sheet in one printable document, one visit per page."""
    plans = select_plans(day, location=location, practitioner=practitioner)
    where, who = _scope(day, location, practitioner)
    return _render("visits.html.j2", title=f"Visit plans {day.generated_for.isoformat()}",
                   paper=paper, sheets=[visit_sheet(p) for p in plans],
                   for_day=format_day(day.generated_for), scope_location=where,
                   scope_practitioner=who)


def render_huddle(day: DayPlan, *, location: str | None = None,
                  practitioner: str | None = None,
                  minutes_saved: Mapping[str, float], paper: Paper = "letter") -> str:
    """The clinic-day huddle sheet: one page group per day in the plan.

    The time-saved estimate covers the whole clinic day at the chosen location, whatever
    practitioner is selected, so that it can never be read as one physician's score."""
    chosen = select_plans(day, location=location, practitioner=practitioner)
    scope_plans = select_plans(day, location=location)
    where, who = _scope(day, location, practitioner)
    scope = "the clinic day, all practitioners" + (f", at {where}" if location else "")
    days = _huddle_days(day, chosen, scope_plans, minutes_saved, scope)
    return _render("huddle.html.j2", title=f"Huddle {day.generated_for.isoformat()}",
                   paper=paper, days=days, scope_location=where, scope_practitioner=who,
                   role_columns=[(_ROLE_SHORT[r], _ROLE_TITLES[r]) for r in ROLES],
                   for_day=format_day(day.generated_for))
