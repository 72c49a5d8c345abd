"""The clinic-day huddle's view-model: one row per appointment, a task list per role, the
flags that change the day, and the clinician time the prepared work saves."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date

from previsit.plan import DayPlan, Kind, LabState, Role, Status, Visit, VisitPlan
from previsit.sheets.filenames import visit_sheet_filename
from previsit.sheets.formatting import (
    KIND_LABELS,
    KIND_ORDER,
    format_day,
    format_short_day,
    format_time,
    ref_label,
    sex_label,
)
from previsit.sheets.selection import scope_labels, select_plans, time_key
from previsit.sheets.tasks import (
    ELSEWHERE,
    Task,
    at_check_in,
    before_orders,
    draw_by,
    handled_elsewhere,
    needs_review,
    prepared_here,
    short_title,
    tasks,
    with_reason,
)


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
    counts: tuple[int, ...]  # per role, in Role order
    flags: tuple[Flag, ...]
    failed: str | None
    appointment_id: str = ""  # which visit the row is (the app links it to its plan)
    not_planned: str | None = None  # a stale booking (deceased patient): an input problem


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


def _age_sex(plan: VisitPlan) -> str | None:
    parts = [f"{plan.patient_age} y" if plan.patient_age is not None else None,
             sex_label(plan.patient_sex)]
    if not any(parts):
        return None
    return " · ".join(p or "—" for p in parts)


def _flags(plan: VisitPlan) -> tuple[Flag, ...]:
    """What changes the day for this visit, most disruptive first."""
    if plan.failed or plan.not_planned:
        return ()
    out: list[Flag] = []
    resulted = [lab for lab in plan.labs if lab.state == LabState.RESULTED]
    if resulted:
        out.append(Flag("Labs back", ", ".join(
            f"{lab.result} ({format_short_day(lab.result_day) or 'undated'})"
            for lab in resulted), "labs-back"))
    here = prepared_here(plan)
    labs = [f for f in here if before_orders(f)]
    if labs:
        if all(at_check_in(plan, f, o) for f in labs for o in before_orders(f)):
            when = " at check-in"
        else:
            days = sorted({d for f in labs for o in before_orders(f)
                           if (d := draw_by(plan, f, o))})
            when = f" by {format_short_day(days[0])}" if days else ""
        out.append(Flag("Labs to draw", f"{', '.join(f.title for f in labs)}{when}", "labs"))
    overdue = [f for f in here if f.status == Status.OVERDUE and f.kind == Kind.SCREENING]
    if overdue:
        out.append(Flag("Overdue screening", ", ".join(f.title for f in overdue), "overdue"))
    renewals = [f for f in here if f.kind == Kind.RENEWAL]
    if renewals:
        names = ", ".join(short_title(f) for f in renewals)
        out.append(Flag(f"Renewal{'s' if len(renewals) > 1 else ''}", names, "renewal"))
    review = [f for f in plan.findings if needs_review(f)]
    if review:
        out.append(Flag("Physician review", ", ".join(
            with_reason(short_title(f), f) for f in review), "review"))
    for outcome, label in ELSEWHERE.items():
        other = [f for f in plan.actionable if handled_elsewhere(plan, f) == outcome]
        if other:
            out.append(Flag(label, ", ".join(short_title(f) for f in other), "elsewhere"))
    unknown = plan.by_status(Status.UNKNOWN)
    if unknown:
        out.append(Flag("Could not decide", ", ".join(f.title for f in unknown), "unknown"))
    if plan.checks:
        out.append(Flag("Check this value", f"{len(plan.checks)} implausible result"
                        f"{'s' if len(plan.checks) > 1 else ''}, not used", "issues"))
    if plan.issues:
        out.append(Flag("Data issues", f"{len(plan.issues)} in the record", "issues"))
    return tuple(out)


def time_saved(plans: Iterable[VisitPlan], minutes_saved: Mapping[str, float],
               scope: str = "the clinic day") -> TimeSaved:
    """Clinician minutes the prepared work saves: actionable findings per kind × the
    configured minutes per task of that kind (config [sheets] minutes_saved). Kinds the
    configuration does not name count zero minutes."""
    return _time_saved((_prepared_kinds(p) for p in plans), minutes_saved, scope)


def _prepared_kinds(plan: VisitPlan) -> tuple[tuple[Kind, int], ...]:
    """The findings prepared at this visit, per kind (a patient's two visits count once)."""
    if plan.failed:
        return ()
    counts: dict[Kind, int] = {}
    for finding in prepared_here(plan):
        counts[finding.kind] = counts.get(finding.kind, 0) + 1
    return tuple(counts.items())


def _time_saved(prepared: Iterable[tuple[tuple[Kind, int], ...]],
                minutes_saved: Mapping[str, float], scope: str) -> TimeSaved:
    counts = dict.fromkeys(Kind, 0)
    for kinds in prepared:
        for kind, count in kinds:
            counts[kind] += count
    lines = []
    for kind in sorted(Kind, key=lambda k: KIND_ORDER[k]):
        each = float(minutes_saved.get(kind.value, 0.0))
        lines.append(TimeSavedLine(KIND_LABELS[kind], counts[kind], each, counts[kind] * each))
    return TimeSaved(tuple(lines), sum(line.minutes for line in lines), scope)


def _huddle_row(plan: VisitPlan, counts: Mapping[Role, int]) -> HuddleRow:
    visit = plan.visit
    return HuddleRow(
        anchor=visit_sheet_filename(plan, "x").removesuffix(".x"), time=format_time(visit.start),
        name=plan.patient_name, age_sex=_age_sex(plan), mrn=plan.patient_mrn,
        visit_type=visit.service_type or visit.description or visit.reason,
        practitioner=ref_label(visit.practitioner), location=ref_label(visit.location),
        counts=tuple(counts[r] for r in Role), flags=_flags(plan), failed=plan.failed,
        appointment_id=visit.appointment_id,
        not_planned=plan.not_planned)


def _role_tasks(plan: VisitPlan) -> tuple[tuple[tuple[Role, RoleTask], ...], dict[Role, int]]:
    """Per role, one line for this visit: its tasks for that role grouped by action
    ("Draw by Tue Nov 24: HbA1c, lipids · Offer: influenza vaccine"); and the count of
    tasks per role."""
    counts: dict[Role, int] = dict.fromkeys(Role, 0)
    by_role: dict[Role, dict[str, list[Task]]] = {}
    for task in tasks(plan):
        by_role.setdefault(task.role, {}).setdefault(task.action, []).append(task)
        counts[task.role] = counts.get(task.role, 0) + 1
    lines = []
    for role, actions in by_role.items():
        what = " · ".join(f"{action}: {', '.join(t.subject for t in group)}"
                          for action, group in actions.items())
        review = any(t.review for group in actions.values() for t in group)
        lines.append((role, RoleTask(format_time(plan.visit.start), plan.patient_name, what,
                                     review)))
    return tuple(lines), counts


@dataclass(frozen=True)
class HuddleEntry:
    """What the huddle needs of one visit: computed as the visit is planned, so that a run
    assembles the huddle of thousands of visits without keeping their plans."""

    visit: Visit
    row: HuddleRow
    roles: tuple[tuple[Role, RoleTask], ...]  # the visit's line in each role's list
    prepared: tuple[tuple[Kind, int], ...]  # findings prepared here, per kind (time saved)
    failed: bool


def huddle_entry(plan: VisitPlan) -> HuddleEntry:
    roles, counts = _role_tasks(plan)
    return HuddleEntry(plan.visit, _huddle_row(plan, counts), roles, _prepared_kinds(plan),
                       bool(plan.failed))


def _role_lists(entries: Sequence[HuddleEntry]) -> tuple[RoleList, ...]:
    lists: dict[Role, list[RoleTask]] = {r: [] for r in Role}
    for entry in entries:
        for role, task in entry.roles:
            lists[role].append(task)
    totals = _role_totals(entries)
    return tuple(RoleList(role.label, role.heading, tuple(items), totals[role])
                 for role, items in lists.items())


def _role_totals(entries: Iterable[HuddleEntry]) -> dict[Role, int]:
    totals = dict.fromkeys(Role, 0)
    for entry in entries:
        for role, count in zip(Role, entry.row.counts, strict=True):
            totals[role] += count
    return totals


def huddle_days(generated_for: date, chosen: Sequence[HuddleEntry],
                scope_entries: Sequence[HuddleEntry], minutes_saved: Mapping[str, float],
                scope: str) -> list[HuddleDay]:
    by_day: dict[date | None, list[HuddleEntry]] = {}
    for entry in chosen:
        by_day.setdefault(entry.visit.day, []).append(entry)
    if not by_day:
        by_day[generated_for] = []
    out = []
    for when in sorted(by_day, key=lambda d: d or date.max):
        entries = by_day[when]
        counts = _role_totals(entries)
        same_day = [e.prepared for e in scope_entries if e.visit.day == when]
        out.append(HuddleDay(
            anchor=f"huddle-{when.isoformat() if when else 'undated'}",
            day=format_day(when), rows=tuple(e.row for e in entries),
            roles=_role_lists(entries), totals=tuple((r.label, counts[r]) for r in Role),
            appointments=len(entries), failed=sum(1 for e in entries if e.failed),
            saved=_time_saved(same_day, minutes_saved, scope)))
    return out


@dataclass(frozen=True)
class Huddle:
    """A huddle document: one HuddleDay per day in the plan, for the chosen scope."""

    days: tuple[HuddleDay, ...]
    location: str  # the chosen location's name, or "all"
    practitioner: str  # the chosen practitioner's name, or "all"
    for_day: str | None


def huddle(day: DayPlan, *, location: str | None = None, practitioner: str | None = None,
           minutes_saved: Mapping[str, float]) -> Huddle:
    """The huddle for the visits at `location` with `practitioner` (None: all).

    The time-saved estimate covers the whole clinic day at the chosen location, whatever
    practitioner is selected, so that it can never be read as one physician's score."""
    chosen = [huddle_entry(p) for p in select_plans(day, location=location,
                                                    practitioner=practitioner)]
    scope_entries = chosen if practitioner is None else [
        huddle_entry(p) for p in select_plans(day, location=location)]
    where, who = scope_labels(day, location, practitioner)
    scope = "the clinic day, all practitioners" + (f", at {where}" if location else "")
    return Huddle(tuple(huddle_days(day.generated_for, chosen, scope_entries, minutes_saved,
                                    scope)),
                  where, who, format_day(day.generated_for))


def whole_day_huddle(generated_for: date, entries: Iterable[HuddleEntry],
                     minutes_saved: Mapping[str, float]) -> Huddle:
    """The huddle of every visit of a run (no location or practitioner chosen), from the
    entries its visits left, in the order of `huddle(day)`: by time, then appointment."""
    chosen = sorted(entries, key=lambda e: time_key(e.visit))
    return Huddle(tuple(huddle_days(generated_for, chosen, chosen, minutes_saved,
                                    "the clinic day, all practitioners")),
                  "all", "all", format_day(generated_for))
